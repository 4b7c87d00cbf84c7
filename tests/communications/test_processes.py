"""Delivery processes (embedded mode, CCM_DELIVERY_PROCESSES): a batch's chunks delivered in processes of
their own, with the real adapters, database and SMTP sink."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
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


def test_a_chunk_is_delivered_in_another_process_and_a_killed_one_is_replaced(
    sender: Sender, database: Database, sink: SmtpSink
) -> None:
    data = sample("payment_reminder")
    first = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(3)]
    before = set(multiprocessing.active_children())
    processes = DeliveryProcesses(sender.settings, 1, database.url)
    try:
        chunk = processes.deliver_many(first)
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
            chunk = processes.deliver_many(second)  # the dead process seen before submitting: a new one
        except BrokenProcessPool:
            # Seen only once the chunk was handed to it: the actor fails, nothing of the chunk was claimed,
            # and the next chunk goes to a new process.
            assert [sender.delivery(d).status for d in second] == ["pending"] * 2
            chunk = processes.deliver_many(second)
        assert chunk.statuses == dict.fromkeys(second, DeliveryStatus.sent)
        [replacement] = [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]
        assert replacement.pid != child.pid
    finally:
        processes.close()
    assert len(sink.handler.messages) == 5


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
