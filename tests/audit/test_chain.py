"""The audit chain: appends chain correctly, even concurrently; any edit to the rows is caught and named."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from ccm import audit
from ccm.audit.models import AuditEvent
from ccm.audit.service import canonical_json, event_digest
from ccm.cli import app as cli
from ccm.db import STREAM_ROWS, Database


def append_events(database: Database, count: int) -> None:
    for n in range(count):
        with database.transaction() as session:
            audit.append(
                session,
                actor="test",
                action="thing.happened",
                subject_type="thing",
                subject_id=f"T-{n}",
                payload={"n": n, "note": "café ☕"},
            )


def tamper(database: Database, *statements: str) -> None:
    """What someone with direct database access could do: switch the triggers off and edit rows."""
    with database.engine.begin() as connection:
        _disable_append_only(connection)
        for statement in statements:
            connection.exec_driver_sql(statement)


def _disable_append_only(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.execute(text("DROP TRIGGER audit_events_no_update"))
        connection.execute(text("DROP TRIGGER audit_events_no_delete"))
    else:
        connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))


def verify_cli(database: Database) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "verify"], env={"CCM_DATABASE_URL": database.url})
    return result.exit_code, result.output


def test_intact_chain_verifies(database: Database, client: TestClient, admin: dict[str, str]) -> None:
    append_events(database, 5)
    code, output = verify_cli(database)
    assert code == 0, output
    assert "audit chain intact: 5 events" in output

    body = client.get("/v1/audit/verify", headers=admin).json()
    assert body["ok"] is True
    assert body["events_checked"] == 5
    assert body["head"]["seq"] == 5
    assert body["first_problem"] is None


def test_empty_chain_verifies(database: Database) -> None:
    code, output = verify_cli(database)
    assert code == 0
    assert "0 events" in output


def test_a_changed_payload_is_named(database: Database, client: TestClient, admin: dict[str, str]) -> None:
    append_events(database, 4)
    tamper(database, """UPDATE audit_events SET payload = '{"n":99}' WHERE seq = 2""")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 2" in output
    assert "altered" in output
    body = client.get("/v1/audit/verify", headers=admin).json()
    assert body["ok"] is False
    assert body["first_problem"]["seq"] == 2
    assert body["events_checked"] == 1


def stored_event(database: Database, seq: int) -> AuditEvent:
    with database.read() as session:
        event = session.get(AuditEvent, seq)
        assert event is not None
        return event


def test_a_changed_field_with_a_recomputed_hash_breaks_the_next_link(database: Database) -> None:
    append_events(database, 4)
    event = stored_event(database, 2)
    forged = event_digest(
        seq=2,
        occurred_at=event.occurred_at,
        actor="someone else",
        action=event.action,
        subject_type=event.subject_type,
        subject_id=event.subject_id,
        prev_hash=event.prev_hash,
        payload=event.payload,
    )
    tamper(database, f"UPDATE audit_events SET actor = 'someone else', hash = '{forged}' WHERE seq = 2")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 3" in output
    assert "does not link to event 2" in output


def append_in_one_transaction(database: Database, count: int) -> None:
    with database.transaction() as session, audit.batched(session):
        for n in range(count):
            audit.append(
                session, actor="test", action="thing.happened", subject_type="thing", subject_id=f"T-{n}"
            )


def test_verify_reads_a_long_chain_fetch_after_fetch_and_names_an_edit_deep_in_it(database: Database) -> None:
    """Verify streams the log STREAM_ROWS rows at a time: every fetch is checked, and the link across each
    fetch's boundary too."""
    count = STREAM_ROWS * 3 + 7
    append_in_one_transaction(database, count)
    code, output = verify_cli(database)
    assert code == 0, output
    assert f"audit chain intact: {count} events" in output

    # The last row of the second fetch edited and its hash recomputed: only the link from the first row of
    # the third fetch, read in another fetch, shows it.
    last = STREAM_ROWS * 2
    event = stored_event(database, last)
    forged = event_digest(
        seq=last,
        occurred_at=event.occurred_at,
        actor=event.actor,
        action=event.action,
        subject_type=event.subject_type,
        subject_id="T-forged",
        prev_hash=event.prev_hash,
        payload=event.payload,
    )
    tamper(database, f"UPDATE audit_events SET subject_id = 'T-forged', hash = '{forged}' WHERE seq = {last}")
    code, output = verify_cli(database)
    assert code == 1
    assert f"broken at event {last + 1}" in output
    assert f"does not link to event {last}" in output


def test_a_deleted_event_is_named(database: Database) -> None:
    append_events(database, 4)
    tamper(database, "DELETE FROM audit_events WHERE seq = 2")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 2" in output
    assert "event 2 missing" in output


def test_a_deleted_last_event_is_named(database: Database) -> None:
    append_events(database, 4)
    tamper(database, "DELETE FROM audit_events WHERE seq = 4")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 4" in output
    assert "chain head records event 4" in output


def test_an_inserted_event_is_named_even_with_a_valid_hash(database: Database) -> None:
    append_events(database, 3)
    last = stored_event(database, 3)
    payload = canonical_json({"forged": True})
    digest = event_digest(
        seq=4,
        occurred_at=last.occurred_at,
        actor="intruder",
        action="customer.created",
        subject_type="customer",
        subject_id="X",
        prev_hash=last.hash,
        payload=payload,
    )
    stamp = last.occurred_at
    tamper(
        database,
        "INSERT INTO audit_events"
        " (seq, occurred_at, actor, action, subject_type, subject_id, payload, prev_hash, hash)"
        f" VALUES (4, '{stamp}', 'intruder', 'customer.created', 'customer', 'X',"
        f" '{payload}', '{last.hash}', '{digest}')",
    )
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 4" in output
    assert "added outside ccm" in output


def test_the_database_refuses_updates_and_deletes(database: Database) -> None:
    append_events(database, 2)
    for statement in (
        "UPDATE audit_events SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 2",
    ):
        with pytest.raises(DBAPIError, match="append-only"), database.engine.begin() as connection:
            connection.execute(text(statement))
    assert verify_cli(database)[0] == 0


def test_concurrent_appends_chain_one_after_another(database: Database) -> None:
    writers, per_writer = 8, 15

    def write(writer: int) -> None:
        for n in range(per_writer):
            with database.transaction() as session:
                audit.append(
                    session,
                    actor=f"writer-{writer}",
                    action="thing.happened",
                    subject_type="thing",
                    subject_id=str(n),
                )

    with ThreadPoolExecutor(max_workers=writers) as pool:
        list(pool.map(write, range(writers)))

    with database.read() as session:
        result = audit.verify(session)
        seqs = [row[0] for row in session.execute(text("SELECT seq FROM audit_events ORDER BY seq"))]
    assert result.ok, result.first_problem
    assert seqs == list(range(1, writers * per_writer + 1))


def test_canonical_json_is_independent_of_key_order() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, "é"], "c": None}}) == '{"a":{"c":null,"d":[1,"é"]},"b":1}'
    assert canonical_json({"a": 1, "b": 2}) == canonical_json(json.loads('{"b": 2, "a": 1}'))
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and backslash \\', "é ü 漢字 \u2028", "tab\tnew\nline\x01\x1f", "</script>", ""],
)
def test_an_event_hash_covers_the_canonical_header_whatever_its_text(text: str) -> None:
    """The hash an auditor recomputes from docs/audit.md (canonical JSON of the header) is the one ccm writes,
    for any text a field may hold."""
    fields = {
        "occurred_at": "2026-01-01T00:00:00.000001Z",
        "actor": f"key:{text}",
        "action": "thing.happened",
        "subject_type": "thing",
        "subject_id": text,
        "prev_hash": "0" * 64,
    }
    header = canonical_json([42, *fields.values()])
    expected = hashlib.sha256(f"{header}\n{{}}".encode()).hexdigest()
    assert event_digest(seq=42, payload="{}", **fields) == expected


def test_an_edited_timestamp_is_named(database: Database) -> None:
    append_events(database, 3)
    stamp = stored_event(database, 2).occurred_at  # ...HH:MM:SS.ffffffZ
    edited = stamp[:-2] + ("1" if stamp[-2] != "1" else "2") + "Z"  # one microsecond off, always a change
    tamper(database, f"UPDATE audit_events SET occurred_at = '{edited}' WHERE seq = 2")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 2" in output


def test_a_garbage_value_is_named_not_a_crash(database: Database) -> None:
    append_events(database, 3)
    tamper(database, "UPDATE audit_events SET occurred_at = 'garbage', prev_hash = '' WHERE seq = 2")
    code, output = verify_cli(database)
    assert code == 1
    assert "broken at event 2" in output


def test_verify_holds_while_others_append(database: Database) -> None:
    """Verify reads the head and the events from one snapshot: concurrent appends are never 'tampering'."""
    append_events(database, 20)
    stop = threading.Event()

    def keep_appending() -> None:
        while not stop.is_set():
            append_events(database, 1)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        results = []
        for _ in range(40):
            with database.snapshot() as session:
                results.append(audit.verify(session))
    finally:
        stop.set()
        writer.join()
    assert [r.first_problem for r in results if not r.ok] == []
    assert results[-1].events_checked > 20
