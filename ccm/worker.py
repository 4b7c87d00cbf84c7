"""The queue: Dramatiq on Redis when CCM_BROKER_URL is set, otherwise a worker inside `ccm serve`."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from ccm.config import Settings

log = logging.getLogger(__name__)


def make_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker_url:
        return RedisBroker(url=settings.broker_url)  # type: ignore[no-untyped-call]
    return StubBroker()


def configure_broker(settings: Settings) -> dramatiq.Broker:
    """Install the broker every actor declared from now on binds to."""
    broker = make_broker(settings)
    dramatiq.set_broker(broker)
    return broker


class EmbeddedWorker:
    """Worker threads inside the API process, for the embedded (single machine) mode."""

    def __init__(self, broker: dramatiq.Broker, *, threads: int = 4) -> None:
        self._worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)

    def start(self) -> None:
        self._worker.start()
        log.info("embedded worker started")

    def stop(self) -> None:
        self._worker.stop()
        log.info("embedded worker stopped")
