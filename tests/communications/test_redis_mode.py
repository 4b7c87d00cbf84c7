"""Scaled out: PostgreSQL, Redis and `ccm worker` processes. A worker killed with SIGKILL in the middle of a
batch, then a fresh one: every communication ends sent, none is lost, a message is sent twice only if it was
in flight when the worker died, and the log shows every send."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ccm.audit.models import AuditEvent
from ccm.communications import batches
from ccm.communications.delivery import RECORD_EVERY
from ccm.communications.models import Communication
from ccm.communications.schemas import TriggerIn
from ccm.config import Settings
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import sample

postgres_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
COUNT = 240
THREADS = 4


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "ccm", "worker", "--threads", str(THREADS)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def statuses(database: Database) -> Counter[str]:
    with database.read() as session:
        rows = session.execute(select(Communication.status, func.count()).group_by(Communication.status))
        return Counter({status: count for status, count in rows})


@postgres_only
def test_a_worker_killed_mid_batch_loses_nothing(
    database: Database, settings: Settings, sink: SmtpSink, redis_url: str, tmp_path: Path
) -> None:
    rows = [
        (
            number,
            TriggerIn(
                template="payment_reminder",
                customer=customer,
                data=sample("payment_reminder"),
                channels=["email"],
            ),
        )
        for number, customer in enumerate(
            ["CUST-1001", "CUST-1003", "CUST-1005", "CUST-1004"] * (COUNT // 4), start=1
        )
    ]
    batch_id = batches.start(database, format="jsonl", template=None, actor="test:batch")
    stored = batches.receive(database, settings, batch_id, rows, actor="test:batch")  # left to the relay
    assert stored.accepted == COUNT

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCM_")},
        "CCM_DATABASE_URL": database.url,
        "CCM_BROKER_URL": redis_url,
        "CCM_DATA_DIR": str(settings.data_dir),
        "CCM_SMTP_HOST": "127.0.0.1",
        "CCM_SMTP_PORT": str(sink.port),
        "CCM_RELAY_INTERVAL": "0.5",
        "CCM_RELAY_STALE_SECONDS": "3",
        "CCM_DELIVERY_LEASE": "10",
        "CCM_RETRY_BASE_SECONDS": "0",
        "CCM_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "workers.log"
    first = start_worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while len(sink.handler.messages) < COUNT // 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sink.handler.messages) >= COUNT // 4, log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)  # mid-batch, mid-send: no chance to tidy up
        first.wait(timeout=10)
        sent_when_killed = len(sink.handler.messages)
        assert sent_when_killed < COUNT, "the worker finished before it could be killed: raise COUNT"

        second = start_worker(env, log)
        try:
            deadline = time.monotonic() + 120
            while statuses(database)["sent"] < COUNT and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    assert statuses(database) == Counter({"sent": COUNT}), log.read_text()[-3000:]
    received = Counter(
        email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"]
        for m in sink.handler.messages
    )
    assert len(received) == COUNT  # every communication reached the server
    twice = [message_id for message_id, times in received.items() if times > 1]
    # Only what the killed worker had sent and not yet recorded could go twice: a batch's sends are
    # recorded RECORD_EVERY at a time, with CCM_SEND_CONCURRENCY in flight, so at most that many per
    # worker thread.
    assert len(twice) <= THREADS * (RECORD_EVERY + settings.send_concurrency)
    with database.read() as session:
        sent_events = session.scalar(select(func.count()).where(AuditEvent.action == "delivery.sent"))
        rendered = session.scalar(select(func.count()).where(AuditEvent.action == "delivery.rendered"))
    assert sent_events == COUNT  # the log records one send per delivery
    assert rendered == COUNT  # and one rendering: a retry sends the stored message again
