"""Audit chain verification: events checked per second, against streaming and hashing the same rows bare.

The baseline reads the same rows through the same driver and hashes the same bytes with no chain checks: the
floor any verifier pays. The ratio says what ccm's verify adds on top, at 10,000 and 100,000 events (SQLite).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

from ccm import audit, migrations
from ccm.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
from ccm.audit.service import canonical_json, event_digest, format_timestamp
from ccm.db import Database


def build_chain(database: Database, count: int) -> None:
    """Write `count` chained events directly (appending one by one would measure appends, not verify)."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    prev = GENESIS_HASH
    rows = []
    for seq in range(1, count + 1):
        occurred_at = format_timestamp(start + dt.timedelta(milliseconds=seq))
        payload = canonical_json({"customer": f"C-{seq % 5000}", "channel": "email", "template": "welcome"})
        subject_id = f"comm-{seq}"
        digest = event_digest(
            seq=seq,
            occurred_at=occurred_at,
            actor="key:benchmark",
            action="delivery.sent",
            subject_type="communication",
            subject_id=subject_id,
            prev_hash=prev,
            payload=payload,
        )
        rows.append(
            {
                "seq": seq,
                "occurred_at": occurred_at,
                "actor": "key:benchmark",
                "action": "delivery.sent",
                "subject_type": "communication",
                "subject_id": subject_id,
                "payload": payload,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    with database.transaction() as session:
        for offset in range(0, len(rows), 10_000):
            session.execute(insert(AuditEvent), rows[offset : offset + 10_000])
        head = session.get(AuditChainHead, 1)
        assert head is not None
        head.seq, head.hash = count, prev


def bare_hash_rate(database: Database) -> float:
    started = time.perf_counter()
    count = 0
    with database.read() as session:
        rows = session.execute(
            select(
                AuditEvent.seq,
                AuditEvent.occurred_at,
                AuditEvent.actor,
                AuditEvent.payload,
                AuditEvent.prev_hash,
            ).execution_options(yield_per=5000)
        )
        for seq, occurred_at, actor, payload, prev_hash in rows:
            hashlib.sha256(f"{seq}{occurred_at}{actor}{prev_hash}\n{payload}".encode()).hexdigest()
            count += 1
    return count / (time.perf_counter() - started)


def verify_rate(database: Database) -> float:
    started = time.perf_counter()
    with database.snapshot() as session:
        result = audit.verify(session)
    assert result.ok, result.first_problem
    return result.events_checked / (time.perf_counter() - started)


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    for count in (200,) if quick else (10_000, 100_000):
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{Path(directory) / 'bench.db'}"
            migrations.upgrade(url)
            database = Database(url)
            try:
                build_chain(database, count)
                baseline = max(bare_hash_rate(database) for _ in range(3))
                verify = max(verify_rate(database) for _ in range(3))
            finally:
                database.dispose()
        print(
            f"   {count:>7,} events: verify {verify:>9,.0f} events/s, "
            f"bare read+hash {baseline:>9,.0f} events/s, ratio {verify / baseline:.2f}x"
        )
