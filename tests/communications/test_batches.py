"""Batch files through the API: JSON Lines and CSV, read as a stream, bad rows reported by number."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from ccm.auth.models import Role
from ccm.cli import app as cli
from ccm.communications.models import Communication
from ccm.config import Settings
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import sample


@pytest.fixture
def sender_key(role_keys: dict[Role, dict[str, str]]) -> dict[str, str]:
    return role_keys[Role.sender]


def line(**body: Any) -> str:
    return json.dumps(body)


def wait_until_sent(client: TestClient, headers: dict[str, str], batch_id: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        summary = client.get(f"/v1/batches/{batch_id}", headers=headers).json()
        if summary["sent"] + summary["delivered"] >= count or time.monotonic() > deadline:
            return summary
        time.sleep(0.1)


def test_a_jsonl_batch_reports_bad_rows_and_sends_the_rest(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink
) -> None:
    good = {"template": "payment_reminder", "data": sample("payment_reminder"), "channels": ["email"]}
    rows = [
        line(**good, customer="CUST-1001", reference="R-1"),
        "{not json",
        line(**good, customer="CUST-1005", reference="R-2"),
        line(**{**good, "data": {**good["data"], "amount": -5}}, customer="CUST-1001"),
        "",
        line(**good, customer="CUST-1003", reference="R-1"),  # the reference was used on line 1
        line(**good, customer="CUST-1004", reference="R-3"),
    ]
    response = client.post(
        "/v1/batches",
        content="\n".join(rows).encode(),
        headers={**sender_key, "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["accepted"], batch["rejected"], batch["status"]) == (3, 3, "received")
    errors = {e["row"]: e["errors"] for e in batch["errors"]}
    assert sorted(errors) == [2, 4, 6]
    assert errors[4][0]["path"] == "/data/amount"
    assert "R-1" in errors[6][0]["message"]
    summary = wait_until_sent(client, sender_key, batch["id"], 3)
    assert summary["sent"] == 3
    assert sorted(m.recipients[0] for m in sink.handler.messages) == [
        "amelia.hartley@example.co.uk",
        "k.vogel@example.de",
        "priya.raman@example.co.uk",
    ]
    listed = client.get("/v1/communications", params={"batch": batch["id"]}, headers=sender_key).json()
    assert len(listed["items"]) == 3


def test_a_csv_batch_with_a_column_mapping(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink
) -> None:
    csv_text = (
        "CustomerNo,Amount,Currency,Due,Account,Ref\r\n"
        "CUST-1001,249.90,GBP,2026-12-15,40308812345678,A-1\r\n"
        "CUST-9999,10,GBP,2026-12-15,1,A-2\r\n"
        '"CUST-1005","1,5",GBP,2026-12-15,40308812345678,A-3\r\n'
        "CUST-1004,12,EUR,2026-12-20,DE89370400440532013000,A-4\r\n"
    )
    mapping = {
        "customer": "CustomerNo",
        "reference": "Ref",
        "data.amount": "Amount",
        "data.currency": "Currency",
        "data.due_date": "Due",
        "data.account_number": "Account",
    }

    def chunked() -> Iterator[bytes]:  # sent in pieces that cut rows in two
        data = csv_text.encode()
        for start in range(0, len(data), 17):
            yield data[start : start + 17]

    response = client.post(
        "/v1/batches",
        params={"template": "payment_reminder", "map": json.dumps(mapping)},
        content=chunked(),
        headers={**sender_key, "Content-Type": "text/csv"},
    )
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["accepted"], batch["rejected"]) == (2, 2)
    errors = {e["row"]: e["errors"] for e in batch["errors"]}
    assert errors[3][0]["path"] == "/customer"
    assert errors[4][0]["path"] == "/data/amount"  # "1,5" is not a number
    assert wait_until_sent(client, sender_key, batch["id"], 2)["sent"] == 2
    assert sorted(m.recipients[0] for m in sink.handler.messages) == [
        "amelia.hartley@example.co.uk",
        "k.vogel@example.de",
    ]


def test_a_batchs_ids_are_time_ordered_in_the_order_of_its_rows(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink, database: Database
) -> None:
    """UUID version 7: made now (not run ahead of the clock by a big batch), and sorting as the rows came, so
    that a batch's rows sit together in every index keyed by an id."""
    good = {"template": "payment_reminder", "data": sample("payment_reminder"), "channels": ["email"]}
    customers = ["CUST-1001", "CUST-1002", "CUST-1003", "CUST-1004", "CUST-1005"]
    rows = [line(**good, customer=c, reference=f"ORDER-{n}") for n, c in enumerate(customers * 40)]
    before = time.time()
    response = client.post(
        "/v1/batches",
        content="\n".join(rows).encode(),
        headers={**sender_key, "Content-Type": "application/x-ndjson"},
    )
    after = time.time()
    assert response.status_code == 201, response.text
    with database.read() as session:
        made = list(
            session.execute(
                select(Communication.id, Communication.reference)
                .where(Communication.batch_id == response.json()["id"])
                .order_by(Communication.id)
            )
        )
    assert [reference for _, reference in made] == [f"ORDER-{n}" for n in range(200)]
    for communication_id, _ in made:
        made_at = uuid.UUID(communication_id)
        assert made_at.version == 7
        assert before - 0.002 <= (made_at.int >> 80) / 1000 <= after + 0.002


def test_what_a_batch_must_say_about_itself(client: TestClient, sender_key: dict[str, str]) -> None:
    wrong_type = client.post(
        "/v1/batches", content=b"{}", headers={**sender_key, "Content-Type": "application/json"}
    )
    assert wrong_type.status_code == 415
    no_template = client.post(
        "/v1/batches", content=b"a,b\n", headers={**sender_key, "Content-Type": "text/csv"}
    )
    assert no_template.status_code == 422
    assert no_template.json()["errors"][0]["path"] == "/template"
    bad_map = client.post(
        "/v1/batches",
        params={"template": "payment_reminder", "map": '{"nonsense": "A"}'},
        content=b"A\n1\n",
        headers={**sender_key, "Content-Type": "text/csv"},
    )
    assert bad_map.status_code == 422
    assert (
        client.get("/v1/batches/00000000-0000-0000-0000-000000000000", headers=sender_key).status_code == 404
    )


def test_a_chunked_body_over_the_limit_is_refused(client: TestClient, sender_key: dict[str, str]) -> None:
    """Elsewhere than batches, a body without a declared length is still held to CCM_MAX_REQUEST_BYTES."""

    def endless() -> Iterator[bytes]:
        yield b'{"template": "payment_reminder", "customer": "CUST-1001", "data": {"x": "'
        for _ in range(2000):
            yield b"x" * 1024
        yield b'"}}'

    response = client.post(
        "/v1/communications", content=endless(), headers={**sender_key, "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_ccm_batch_send_stores_a_file_and_reports_bad_rows(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    good = {"template": "payment_reminder", "data": sample("payment_reminder")}
    file = tmp_path / "reminders.jsonl"
    file.write_text(
        "\n".join(
            [
                line(**good, customer="CUST-1001"),
                line(**good, customer="CUST-0000"),
                line(**good, customer="CUST-1005"),
            ]
        )
    )
    env = {"CCM_DATABASE_URL": database.url, "CCM_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(cli, ["batch", "send", str(file)], env=env)
    assert result.exit_code == 0, result.output
    assert "2 accepted, 1 rejected" in result.output
    assert "row 2: /customer: there is no customer 'CUST-0000'" in result.output
    with database.read() as session:
        stored = list(session.scalars(select(Communication).where(Communication.batch_id.is_not(None))))
    # Stored and left to the relay of `ccm serve` or `ccm worker`, which finds them at once.
    assert [(c.status, c.enqueued_at) for c in stored] == [("accepted", None), ("accepted", None)]
    (tmp_path / "x.csv").write_text("customer\nCUST-1001\n")
    csv_without_template = CliRunner().invoke(cli, ["batch", "send", str(tmp_path / "x.csv")], env=env)
    assert csv_without_template.exit_code == 2
