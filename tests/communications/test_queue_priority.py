"""A single trigger's work is not queued behind a batch's (ccm.communications.tasks.DramatiqQueue)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dramatiq.brokers.stub import StubBroker

from ccm.communications.tasks import DramatiqQueue, Runtime
from ccm.config import Settings
from ccm.worker import EmbeddedWorker


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

    def deliver(self, delivery_id: str) -> None:
        self._record(f"deliver {delivery_id}")


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
