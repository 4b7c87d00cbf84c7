"""GET /v1/audit/export: CSV and JSON Lines hold the same events as the listing, streamed in batches, and
every hash recomputes from the export alone, as docs/audit.md describes."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm import audit
from ccm.audit import export
from ccm.audit.models import GENESIS_HASH
from ccm.audit.service import event_digest
from ccm.auth.models import Role
from ccm.db import Database
from tests.audit_log.conftest import Scenario, pages

COLUMNS = [
    "seq",
    "occurred_at",
    "actor",
    "action",
    "subject_type",
    "subject_id",
    "payload",
    "prev_hash",
    "hash",
]


def download(client: TestClient, headers: dict[str, str], export_format: str, **params: Any) -> str:
    answer = client.get("/v1/audit/export", params={"format": export_format, **params}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    assert answer.headers["content-disposition"].endswith(f'.{export_format}"')
    return answer.text


def from_csv(text: str) -> list[dict[str, Any]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == COLUMNS
    for row in rows[1:]:
        for cell in row:
            # Nothing a spreadsheet would run: such cells start with the quote ccm puts in front.
            assert not cell.startswith(("=", "+", "-", "@")), cell
    # The recipe in docs/audit.md: a cell starting with a quote had one put in front of it.
    events = [
        dict(zip(COLUMNS, [c[1:] if c.startswith("'") else c for c in row], strict=True)) for row in rows[1:]
    ]
    for event in events:
        event["seq"] = int(event["seq"])
    return events


def from_jsonl(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def assert_chain_recomputes(events: list[dict[str, Any]]) -> None:
    previous = GENESIS_HASH
    for event in events:
        assert event["prev_hash"] == previous, event["seq"]
        digest = event_digest(
            seq=event["seq"],
            occurred_at=event["occurred_at"],
            actor=event["actor"],
            action=event["action"],
            subject_type=event["subject_type"],
            subject_id=event["subject_id"],
            prev_hash=event["prev_hash"],
            payload=event["payload"],
        )
        assert digest == event["hash"], event["seq"]
        previous = event["hash"]


def test_csv_and_jsonl_hold_the_same_events_and_every_hash_recomputes(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with database.transaction() as session:  # values a spreadsheet would run as formulas
        audit.append(
            session,
            actor='=HYPERLINK("https://evil.example","click")',
            action="@thing.happened",
            subject_type="+thing",
            subject_id="-1",
            payload={"note": "=1+1", "quote": "'kept'"},
        )
        audit.append(session, actor="'quoted", action="thing.happened", subject_type="thing", subject_id="1")
    monkeypatch.setattr(export, "BATCH_SIZE", 7)  # several batches, and one cut short
    auditor = role_keys[Role.auditor]

    raw_csv = download(client, auditor, "csv")
    assert '\'=HYPERLINK(""https://evil.example"",""click"")' in raw_csv
    assert ",'-1," in raw_csv
    assert "''quoted" in raw_csv
    in_csv, in_jsonl = from_csv(raw_csv), from_jsonl(download(client, auditor, "jsonl"))
    assert in_csv == in_jsonl
    assert_chain_recomputes(in_jsonl)

    listed = pages(client, auditor, limit=500)
    assert [e["seq"] for e in in_jsonl] == [e["seq"] for e in listed] == list(range(1, len(listed) + 1))
    for exported, shown in zip(in_jsonl, listed, strict=True):
        assert json.loads(exported.pop("payload")) == shown.pop("payload")
        assert exported == shown
    assert in_csv[-2]["actor"] == '=HYPERLINK("https://evil.example","click")'
    assert in_csv[-1]["actor"] == "'quoted"


@pytest.mark.parametrize("export_format", ["csv", "jsonl"])
def test_an_export_takes_the_listings_filters(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    export_format: str,
) -> None:
    monkeypatch.setattr(export, "BATCH_SIZE", 3)
    auditor = role_keys[Role.auditor]
    parse = from_csv if export_format == "csv" else from_jsonl
    for params in (
        {"customer": "CUST-1001"},
        {"channel": "sms"},
        {"template": "payment_reminder", "version": 2},
        {"action": "delivery.rendered"},
    ):
        exported = parse(download(client, auditor, export_format, **params))
        listed = pages(client, auditor, **params)
        assert exported
        assert [e["seq"] for e in exported] == [e["seq"] for e in listed], params
        assert [e["hash"] for e in exported] == [e["hash"] for e in listed]
    assert parse(download(client, auditor, export_format, customer="CUST-9999")) == []


def test_csv_is_the_default_and_an_unknown_format_is_refused(
    client: TestClient, role_keys: dict[Role, dict[str, str]]
) -> None:
    auditor = role_keys[Role.auditor]
    answer = client.get("/v1/audit/export", headers=auditor)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.text.startswith(",".join(COLUMNS) + "\r\n")
    jsonl = client.get("/v1/audit/export", params={"format": "jsonl"}, headers=auditor)
    assert jsonl.headers["content-type"] == "application/jsonl; charset=utf-8"
    refused = client.get("/v1/audit/export", params={"format": "xlsx"}, headers=auditor)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["in"] == "query"
    assert refused.json()["errors"][0]["path"] == "/format"
