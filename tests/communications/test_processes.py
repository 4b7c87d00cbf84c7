"""Delivery processes (embedded mode, CCM_DELIVERY_PROCESSES): a batch's chunks delivered in processes of
their own, with the real adapters, database and SMTP sink."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from fastapi.testclient import TestClient

from ccm.app import create_app
from ccm.channels import Channel
from ccm.communications.processes import DeliveryProcesses
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import Sender, sample


def soon() -> float:
    """A chunk's deadline: a minute from now."""
    return time.monotonic() + 60


def test_a_chunk_is_delivered_in_another_process_and_a_killed_one_is_replaced(
    sender: Sender, database: Database, sink: SmtpSink
) -> None:
    data = sample("payment_reminder")
    first = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(3)]
    before = set(multiprocessing.active_children())
    processes = DeliveryProcesses(sender.settings, 1, database.url)
    try:
        chunk = processes.deliver_many(first, soon())
        assert chunk.statuses == dict.fromkeys(first, DeliveryStatus.sent)
        assert [sender.delivery(d).status for d in first] == ["sent"] * 3
        [child] = [p for p in multiprocessing.active_children() if p not in before and p.pid != os.getpid()][
            -1:
        ]
        assert child.pid is not None
        assert child.pid != os.getpid()  # sent from a process of its own

        os.kill(child.pid, signal.SIGKILL)  # out of memory, or an operator's kill -9
        deadline = time.monotonic() + 10
        while child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(2)]
        try:
            # The dead process seen before submitting: a new one.
            chunk = processes.deliver_many(second, soon())
        except BrokenProcessPool:
            # Seen only once the chunk was handed to it: the actor fails, nothing of the chunk was claimed,
            # and the next chunk goes to a new process.
            assert [sender.delivery(d).status for d in second] == ["pending"] * 2
            chunk = processes.deliver_many(second, soon())
        assert chunk.statuses == dict.fromkeys(second, DeliveryStatus.sent)
        [replacement] = [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]
        assert replacement.pid != child.pid
    finally:
        processes.close()
    assert len(sink.handler.messages) == 5


def test_chunks_given_at_once_wait_for_the_process_and_keep_the_callers_deadline(
    sender: Sender, database: Database, sink: SmtpSink
) -> None:
    """Two chunks handed to one process at once are each delivered, once, one after the other; a chunk
    whose deadline (the caller's clock) passed while it waited sends nothing and answers every delivery as
    to queue again."""
    data = sample("payment_reminder")
    chunks = [
        [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(3)]
        for _ in range(2)
    ]
    late = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(2)]
    processes = DeliveryProcesses(sender.settings, 1, database.url)
    try:
        with ThreadPoolExecutor(2) as callers:
            answers = list(callers.map(lambda ids: processes.deliver_many(ids, soon()), chunks))
        expired = processes.deliver_many(late, time.monotonic() - 1)
    finally:
        processes.close()
    for ids, chunk in zip(chunks, answers, strict=True):
        assert chunk.statuses == dict.fromkeys(ids, DeliveryStatus.sent)
    assert sorted(expired.again) == sorted(late)
    assert [sender.delivery(d).status for d in late] == ["pending"] * 2
    assert len(sink.handler.messages) == 6


def test_the_server_starts_its_delivery_processes_with_it_and_stops_them_with_it(
    settings: Settings, database: Database
) -> None:
    """`ccm serve` starts them at start-up (create_app(start_processes=True)), so that a batch's first
    chunk does not wait for a process to import and set up; they end with the app."""
    before = set(multiprocessing.active_children())
    two = settings.model_copy(update={"delivery_processes": 2})
    with TestClient(create_app(two, database=database, start_processes=True)):
        deadline = time.monotonic() + 30
        while len(started := set(multiprocessing.active_children()) - before) < 2:
            assert time.monotonic() < deadline, "the delivery processes did not start"
            time.sleep(0.05)
        assert all(process.is_alive() for process in started)
    assert not any(process.is_alive() for process in started)
