"""One communication's whole record, its artifacts downloaded hash-checked, and verify covering every artifact
the database references: a flipped byte, a missing file or a row edited behind ccm's back is named."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from ccm.auth.models import Role
from ccm.channels import Channel
from ccm.channels.models import PortalDocument, PortalMessage
from ccm.cli import app as cli
from ccm.communications.delivery import artifact_store
from ccm.communications.models import Delivery
from ccm.config import Settings
from ccm.db import Database
from tests.audit_log.conftest import Scenario
from tests.audit_log.reference import read_log
from tests.communications.conftest import Sender, sample

NOBODY = "00000000-0000-0000-0000-000000000000"


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


def verify(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    answer = client.get("/v1/audit/verify", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def verify_cli(settings: Settings) -> tuple[int, str]:
    env = {"CCM_DATABASE_URL": settings.resolved_database_url, "CCM_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(cli, ["audit", "verify"], env=env)
    return result.exit_code, result.output


def delivery_row(database: Database, delivery_id: str) -> Delivery:
    with database.read() as session:
        return session.get_one(Delivery, delivery_id)


def test_a_communications_whole_record(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    auditor = role_keys[Role.auditor]
    communication_id = scenario.communication("amelia_v1")
    answer = client.get(f"/v1/audit/communications/{communication_id}", headers=auditor)
    assert answer.status_code == 200, answer.text
    record = answer.json()

    assert (record["id"], record["template"], record["version"], record["customer"]) == (
        communication_id,
        "payment_reminder",
        1,
        "CUST-1001",
    )
    assert record["category"] == "service"
    assert record["data"] == sample("payment_reminder")
    assert record["created_by"] == "test:sender"
    by_channel = {d["channel"]: d for d in record["deliveries"]}
    assert set(by_channel) == {"email", "sms"}
    for channel, shown in by_channel.items():
        row = delivery_row(database, scenario.delivery("amelia_v1", Channel(channel)))
        assert shown["id"] == row.id
        assert (shown["status"], shown["recipient"], shown["provider_id"]) == (
            row.status,
            row.recipient,
            row.provider_id,
        )
        assert shown["attempts"] == 1
        assert shown["last_error"] is None
        assert shown["artifact"] == {
            "sha256": row.artifact_sha256,
            "size": row.artifact_size,
            "media_type": row.media_type,
            "url": f"/v1/audit/artifacts/{row.artifact_sha256}",
        }
        assert shown["details"] == row.details

        # What was sent, downloaded and checked against its hash.
        download = client.get(shown["artifact"]["url"], headers=auditor)
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == row.artifact_sha256
        assert len(download.content) == row.artifact_size
        assert download.headers["content-type"].startswith(row.media_type or "?")
        assert download.headers["content-disposition"].startswith("attachment")
        assert download.headers["x-content-type-options"] == "nosniff"
    assert "amelia.hartley@example.co.uk" in by_channel["email"]["recipient"]

    log = read_log(database)
    assert [e["seq"] for e in record["events"]] == log.about_communication(communication_id)
    actions = [e["action"] for e in record["events"]]
    assert actions[0] == "communication.accepted"
    assert actions.count("delivery.rendered") == 2
    assert {"delivery.sent", "delivery.queued"} <= set(actions)
    shown_events = {e["seq"]: e for e in log.events}
    assert all(event == shown_events[event["seq"]] for event in record["events"])

    missing = client.get(f"/v1/audit/communications/{NOBODY}", headers=auditor)
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:ccm:problem:not-found"


def test_verify_checks_every_artifact_and_names_a_flipped_byte(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auditor = role_keys[Role.auditor]
    intact = verify(client, auditor)
    assert intact["ok"] is True
    assert intact["first_problem"] is None
    assert intact["artifacts"] == {"checked": 5, "first_problem": None}  # five deliveries, no attachments
    code, output = verify_cli(settings)
    assert code == 0, output
    assert "audit chain intact" in output
    assert "artifacts intact: 5 references checked" in output

    victim = delivery_row(database, scenario.delivery("emile_v1", Channel.email))
    assert victim.artifact_sha256 is not None
    flip_a_byte(artifact_store(settings).path_of(victim.artifact_sha256))

    body = verify(client, auditor)
    assert body["ok"] is False
    assert body["first_problem"] is None  # the chain itself holds
    problem = body["artifacts"]["first_problem"]
    assert problem["sha256"] == victim.artifact_sha256
    assert problem["referenced_by"] == {"type": "delivery", "id": victim.id, "field": "artifact_sha256"}
    assert "altered" in problem["problem"]
    assert victim.artifact_sha256 in problem["problem"]

    code, output = verify_cli(settings)
    assert code == 1
    assert f"delivery {victim.id}" in output
    assert victim.artifact_sha256 in output

    caplog.set_level(logging.ERROR, logger="ccm.audit.router")
    answer = client.get(f"/v1/audit/artifacts/{victim.artifact_sha256}", headers=auditor)
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:ccm:problem:artifact-corrupted"
    assert answer.json()["sha256"] == victim.artifact_sha256
    assert victim.artifact_sha256 in answer.json()["detail"]
    [logged] = [r for r in caplog.records if r.name == "ccm.audit.router"]
    assert logged.levelno == logging.ERROR
    assert victim.artifact_sha256 in logged.getMessage()

    # Chain only, as the benchmark measures it, still holds.
    chain_only = client.get("/v1/audit/verify", params={"artifacts": "false"}, headers=auditor).json()
    assert chain_only["ok"] is True
    assert "artifacts" not in chain_only


def test_a_missing_artifact_is_named(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    settings: Settings,
) -> None:
    victim = delivery_row(database, scenario.delivery("emile_otp", Channel.sms))
    assert victim.artifact_sha256 is not None
    artifact_store(settings).path_of(victim.artifact_sha256).unlink()
    problem = verify(client, role_keys[Role.auditor])["artifacts"]["first_problem"]
    assert problem["sha256"] == victim.artifact_sha256
    assert problem["referenced_by"]["id"] == victim.id
    assert "not in the store" in problem["problem"]
    answer = client.get(f"/v1/audit/artifacts/{victim.artifact_sha256}", headers=role_keys[Role.auditor])
    assert answer.status_code == 409
    assert answer.json()["type"] == "urn:ccm:problem:artifact-missing"


def test_a_delivery_row_edited_behind_ccms_back_is_named(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    settings: Settings,
) -> None:
    edited = delivery_row(database, scenario.delivery("amelia_v2", Channel.email))
    other = delivery_row(database, scenario.delivery("amelia_v1", Channel.email))
    # Pointing the row at another artifact that is intact in the store: only the log can tell.
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE deliveries SET artifact_sha256 = :other WHERE id = :id"),
            {"other": other.artifact_sha256, "id": edited.id},
        )
    log = read_log(database)
    [rendered] = [e for e in log.events if (e["action"], e["subject_id"]) == ("delivery.rendered", edited.id)]
    assert rendered["payload"]["artifact"] == edited.artifact_sha256

    body = verify(client, role_keys[Role.auditor])
    assert body["ok"] is False
    assert body["first_problem"] is None
    problem = body["artifacts"]["first_problem"]
    assert problem["referenced_by"] == {"type": "delivery", "id": edited.id, "field": "artifact_sha256"}
    assert problem["seq"] == rendered["seq"]
    assert problem["sha256"] == other.artifact_sha256
    assert "changed outside ccm" in problem["problem"]
    assert str(edited.artifact_sha256) in problem["problem"]
    code, output = verify_cli(settings)
    assert code == 1
    assert edited.id in output


def test_only_referenced_artifacts_can_be_downloaded(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]], settings: Settings
) -> None:
    auditor = role_keys[Role.auditor]
    stray = artifact_store(settings).put(b"a file in the store that nothing references")
    assert artifact_store(settings).get(stray.sha256)
    for sha256 in (stray.sha256, "0" * 64):
        answer = client.get(f"/v1/audit/artifacts/{sha256}", headers=auditor)
        assert answer.status_code == 404
        assert answer.json()["type"] == "urn:ccm:problem:not-found"
    for malformed in ("abc", "../../etc/passwd", "A" * 64, stray.sha256 + "0"):
        answer = client.get(f"/v1/audit/artifacts/{malformed}", headers=auditor)
        assert answer.status_code in (404, 422), malformed
        assert answer.headers["content-type"] == "application/problem+json"


def test_verify_covers_attachments_portal_messages_documents_and_print_batches(
    client: TestClient,
    sender: Sender,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    settings: Settings,
) -> None:
    auditor = role_keys[Role.auditor]
    portal = sender.send("annual_statement", "CUST-1001", sample("annual_statement"), [Channel.portal])
    sender.send("claim_decision", "CUST-1002", sample("claim_decision"), [Channel.print])
    made = client.post("/v1/print-batches", json={}, headers=role_keys[Role.sender])
    assert made.status_code == 201, made.text
    batch = made.json()

    with database.read() as session:
        message = session.scalars(select(PortalMessage).where(PortalMessage.delivery_id == portal.id)).one()
        [document] = session.scalars(select(PortalDocument).where(PortalDocument.message_id == message.id))
    [attachment] = portal.details["attachments"]  # the letter, kept with the portal delivery
    assert attachment["sha256"] == document.sha256
    assert message.html_sha256 == portal.artifact_sha256
    # Two deliveries and the portal one's letter, the portal message and its document (the same two files,
    # not read twice), the batch's PDF and manifest.
    assert verify(client, auditor)["artifacts"] == {"checked": 7, "first_problem": None}

    for sha256, media_type in (
        (portal.artifact_sha256, "text/html; charset=utf-8"),
        (document.sha256, "application/pdf"),
        (batch["pdf_sha256"], "application/pdf"),
        (batch["manifest_sha256"], "text/csv; charset=utf-8"),
    ):
        answer = client.get(f"/v1/audit/artifacts/{sha256}", headers=auditor)
        assert answer.status_code == 200, sha256
        assert answer.headers["content-type"] == media_type
        assert hashlib.sha256(answer.content).hexdigest() == sha256
        # An email or a portal page never runs as a page of the API's origin.
        assert answer.headers["content-security-policy"] == "default-src 'none'; sandbox"

    store = artifact_store(settings)
    flip_a_byte(store.path_of(batch["manifest_sha256"]))
    problem = verify(client, auditor)["artifacts"]["first_problem"]
    assert problem["referenced_by"] == {"type": "print_batch", "id": batch["id"], "field": "manifest_sha256"}
    assert problem["sha256"] == batch["manifest_sha256"]
    flip_a_byte(store.path_of(batch["manifest_sha256"]))  # back as it was
    assert verify(client, auditor)["ok"] is True

    # The batch row pointed at another intact file (the letter): its print_batch.created event tells.
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE print_batches SET pdf_sha256 = :other WHERE id = :id"),
            {"other": document.sha256, "id": batch["id"]},
        )
    problem = verify(client, auditor)["artifacts"]["first_problem"]
    assert problem["referenced_by"] == {"type": "print_batch", "id": batch["id"], "field": "pdf_sha256"}
    assert problem["seq"] is not None
    assert "changed outside ccm" in problem["problem"]
    assert batch["pdf_sha256"] in problem["problem"]
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE print_batches SET pdf_sha256 = :pdf WHERE id = :id"),
            {"pdf": batch["pdf_sha256"], "id": batch["id"]},
        )

    flip_a_byte(store.path_of(attachment["sha256"]))
    problem = verify(client, auditor)["artifacts"]["first_problem"]
    assert problem["sha256"] == attachment["sha256"]
    assert problem["referenced_by"] == {
        "type": "delivery",
        "id": portal.id,
        "field": "details.attachments[0].sha256",
    }
    flip_a_byte(store.path_of(attachment["sha256"]))

    elsewhere = "ab" * 32
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE portal_documents SET sha256 = :sha256 WHERE id = :id"),
            {"sha256": elsewhere, "id": document.id},
        )
    problem = verify(client, auditor)["artifacts"]["first_problem"]
    assert problem["referenced_by"] == {"type": "portal_document", "id": document.id, "field": "sha256"}
    assert problem["sha256"] == elsewhere
    # The letter is still the portal delivery's attachment (named only in its details): still downloadable.
    answer = client.get(f"/v1/audit/artifacts/{attachment['sha256']}", headers=auditor)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/pdf"
