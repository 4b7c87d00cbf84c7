"""Audit chain verification: events checked per second, against streaming and hashing the same rows bare.

The baseline reads the same rows through the same driver and hashes the same bytes with no chain checks: the
floor any verifier pays. The ratio says what ccm's verify adds on top, at 10,000, 100,000 and 1,000,000 events
(SQLite): each log built in a fresh process, then measured in three rounds over the sizes, each size in a
fresh process of its own; a last ratio compares verify's throughput at 1,000,000 events with its throughput
at 10,000. Targets: at least 100,000 events/s, and at
1,000,000 events within 20% of the rate at 10,000.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import insert, select

from ccm import audit, migrations
from ccm.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
from ccm.audit.service import canonical_json, event_digest, format_timestamp
from ccm.db import STREAM_ROWS, Database

T = TypeVar("T")


def build_chain(database: Database, count: int) -> None:
    """Write `count` chained events directly (appending one by one would measure appends, not verify), in
    one transaction, 10,000 rows at a time so that a million events never sit in memory at once."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    prev = GENESIS_HASH
    with database.transaction() as session:
        for first in range(1, count + 1, 10_000):
            rows = []
            for seq in range(first, min(count, first + 9_999) + 1):
                occurred_at = format_timestamp(start + dt.timedelta(milliseconds=seq))
                payload = canonical_json(
                    {"customer": f"C-{seq % 5000}", "channel": "email", "template": "welcome"}
                )
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
            session.execute(insert(AuditEvent), rows)
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
            ).execution_options(yield_per=STREAM_ROWS)
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


def build(url: str, count: int) -> None:
    migrations.upgrade(url)
    database = Database(url)
    try:
        build_chain(database, count)
    finally:
        database.dispose()


def measure(url: str, seconds: float) -> tuple[list[float], list[float]]:
    """Bare and verify passes taken in turn, at least three of each and until `seconds` have gone by, so
    that a slow spell on the machine falls on both; answers each side's rates."""
    database = Database(url)
    bare: list[float] = []
    verify: list[float] = []
    started = time.perf_counter()
    try:
        while len(verify) < 3 or time.perf_counter() - started < seconds:
            bare.append(bare_hash_rate(database))
            verify.append(verify_rate(database))
    finally:
        database.dispose()
    return bare, verify


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run it in a new interpreter: each log is built in one and verified in another, so that no size is
    measured in a process whose heap an earlier, larger one has shaped (verifying 10,000 events right
    after building 1,000,000 in the same process ran at half speed)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    counts = (200, 2_000) if quick else (10_000, 100_000, 1_000_000)
    rounds = 1 if quick else 3
    bare: dict[int, list[float]] = {count: [] for count in counts}
    verify: dict[int, list[float]] = {count: [] for count in counts}
    with tempfile.TemporaryDirectory() as directory:
        urls = {count: f"sqlite:///{Path(directory) / f'bench-{count}.db'}" for count in counts}
        for count in counts:
            if quick:
                build(urls[count], count)
            else:
                in_fresh_process(build, urls[count], count)
        # Rounds over every size, the order rotating, so that a slow spell on this shared machine falls on
        # all of them rather than on whichever size it happens to meet.
        for index in range(rounds):
            for count in counts[index % len(counts) :] + counts[: index % len(counts)]:
                if quick:
                    bare_rates, verify_rates = measure(urls[count], 0)
                else:
                    bare_rates, verify_rates = in_fresh_process(measure, urls[count], 3.0)
                bare[count].extend(bare_rates)
                verify[count].extend(verify_rates)
    rates = {count: statistics.median(verify[count]) for count in counts}
    for count in counts:
        baseline = statistics.median(bare[count])
        print(
            f"   {count:>9,} events: verify {rates[count]:>9,.0f} events/s (best {max(verify[count]):,.0f}),"
            f" bare read+hash {baseline:>9,.0f} events/s, ratio {rates[count] / baseline:.2f}x"
            f" (medians of {len(verify[count])} passes each)"
        )
    smallest, largest = counts[0], counts[-1]
    scaling = rates[largest] / rates[smallest]
    slowest = min(rates.values())
    print(
        f"   verify at {largest:,} events against at {smallest:,}: ratio {scaling:.2f}x"
        f" (target >= 0.8x: {'met' if scaling >= 0.8 else 'missed'});"
        f" slowest {slowest:,.0f} events/s (target >= 100,000: {'met' if slowest >= 100_000 else 'missed'})"
    )
