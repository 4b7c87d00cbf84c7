"""What goes in the queue and in what order (ccm.communications.tasks.DramatiqQueue, .queueing): a single
trigger's work is not queued behind a batch's, and work due far ahead is left to the relay."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

from dramatiq.brokers.stub import StubBroker
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ccm.auth.models import Role
from ccm.communications import service
from ccm.communications.pipeline import Pipeline
from ccm.communications.tasks import DramatiqQueue
from ccm.config import Settings
from ccm.db import Database, utcnow
from ccm.worker import EmbeddedWorker
from tests.communications.conftest import Sender, sample
from tests.communications.test_pipeline import trigger, wait_for
from tests.communications.test_pipeline_edges import ListQueue


class RecordingPipeline:
    """Stands in for the pipeline (named so: a recorder, not the real thing), to see the order the worker
    takes queued work in; each step takes a little time, as real ones do."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    def _record(self, what: str) -> None:
        time.sleep(0.005)
        with self.lock:
            self.order.append(what)

    def route(self, communication_id: str) -> None:
        self._record(f"route {communication_id}")

    def deliver(self, delivery_id: str, *, bulk: bool = False) -> None:
        self._record(f"deliver {delivery_id}")

    def route_many(self, communication_ids: list[str]) -> None:
        self._record(f"route {communication_ids}")

    def deliver_many(self, delivery_ids: list[str]) -> None:
        self._record(f"deliver {delivery_ids}")


class RecordingRuntime:
    def __init__(self) -> None:
        self.recorded = RecordingPipeline()

    def pipeline(self) -> RecordingPipeline:
        return self.recorded

    def send_webhook(self, message_id: str) -> None:
        self.recorded._record(f"webhook {message_id}")


def test_a_single_trigger_overtakes_a_queued_batch_and_batch_emails_go_out_while_routing(
    tmp_path: Path,
) -> None:
    broker = StubBroker()
    runtime = RecordingRuntime()
    queue = DramatiqQueue(broker, runtime, Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    for number in range(100):
        queue.route(f"batch-{number}", bulk=True)
    queue.route("one-time-passcode")
    queue.deliver("batch-delivery", bulk=True)
    queue.deliver("passcode-delivery")
    worker = EmbeddedWorker(broker, threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(runtime.recorded.order) < 103 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    order = runtime.recorded.order
    assert len(order) == 103
    # The worker may have started on a few batch rows before it saw the rest of the queues; no more.
    assert order.index("deliver passcode-delivery") < 5
    assert order.index("route one-time-passcode") < 5
    assert order.index("deliver batch-delivery") < 10  # a batch's emails before the rest of its routing


def test_work_due_beyond_the_horizon_is_not_held_in_the_queue(tmp_path: Path) -> None:
    broker = StubBroker()
    queue = DramatiqQueue(broker, RecordingRuntime(), Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    queue.route("next-month", utcnow() + dt.timedelta(days=30))
    queue.deliver("sms-in-the-morning", utcnow() + dt.timedelta(hours=9))
    assert sum(q.qsize() for q in broker.queues.values()) == 0
    queue.route("in-ten-seconds", utcnow() + dt.timedelta(seconds=10))
    assert broker.queues["ccm.DQ"].qsize() == 1


def test_a_send_next_month_is_left_to_the_relay_which_queues_it_when_due(
    app: FastAPI,
    client: TestClient,
    role_keys: dict[Role, dict[str, str]],
    sender: Sender,
    database: Database,
) -> None:
    sender_key = role_keys[Role.sender]
    later = utcnow() + dt.timedelta(days=30)
    response = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        channels=["email"],
        send_at=later.isoformat(),
    )
    assert response.status_code == 202, response.text
    communication_id = response.json()["id"]
    with database.read() as session:
        assert service.get_communication(session, communication_id).enqueued_at is None
    relay_queue = ListQueue()
    relay = Pipeline(
        database=database, settings=sender.settings, deliverer=sender.deliverer, queue=relay_queue
    )
    relay.relay()
    assert relay_queue.routed == []  # not due yet
    with database.transaction() as session:  # a month later
        service.get_communication(session, communication_id).due_at = utcnow() - dt.timedelta(seconds=1)
    relay.relay()
    assert relay_queue.routed == [communication_id]
    app.state.runtime.queue.route(communication_id)  # what the relay of the running service does
    assert wait_for(client, sender_key, communication_id, {"sent"})["status"] == "sent"
