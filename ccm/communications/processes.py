"""Delivering a batch's chunks in processes beside `ccm serve` (embedded mode, CCM_DELIVERY_PROCESSES).

Python runs one thread at a time in a process, so the embedded worker alone uses one core for the API,
batch intake, routing and delivery together. Rendering, building and recording a batch's emails is most of
that work; here it runs in processes of its own (each with its own database connection, template engine and
SMTP connection), on the machine's other cores. The worker's actor still takes the chunk from the queue and
does what follows (retries, fallbacks, the deliveries that need more than the plain steps), so the queue,
the relay and the database say exactly what they say without these processes.

A process that dies mid-chunk leaves its claimed deliveries to their lease (CCM_DELIVERY_LEASE): the relay
queues them again when it runs out, and the pool is started afresh.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ccm.communications.delivery import Chunk, Deliverer, make_deliverer
from ccm.communications.gate import waiting_on_provider
from ccm.config import Settings
from ccm.db import Database

log = logging.getLogger(__name__)

_deliverer: Deliverer | None = None  # the child process's own


def _start(settings: Settings) -> None:
    """In each child: its own database engine, template engine and adapters."""
    global _deliverer  # one per process, made once
    # Ctrl-C reaches the whole process group; the parent stops the children in its own time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from ccm.templates_engine.service import make_engine

    database = Database(settings.resolved_database_url)
    _deliverer = make_deliverer(database, settings, make_engine(database, settings))


def _deliver_chunk(delivery_ids: list[str]) -> Chunk:
    if _deliverer is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("the delivery process was not started")
    return _deliverer.deliver_many(delivery_ids)


class DeliveryProcesses:
    """A pool of CCM_DELIVERY_PROCESSES processes, started when the first chunk comes."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self._count,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(self._settings,),
                )
            return self._pool

    def deliver_many(self, delivery_ids: list[str]) -> Chunk:
        pool = self._executor()
        try:
            future = pool.submit(_deliver_chunk, delivery_ids)
            with waiting_on_provider():  # this thread only waits: another may work meanwhile
                return future.result()
        except BrokenProcessPool:
            # A child died (killed, out of memory): what it had claimed waits for its lease and the relay.
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
