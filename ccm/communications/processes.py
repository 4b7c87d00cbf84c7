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
import queue
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


def _start(settings: Settings, database_url: str) -> None:
    """In each child: its own database engine, template engine and adapters."""
    global _deliverer  # one per process, made once
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the parent lets the chunk in
    # hand finish and then stops the children, so that none is cut short between a send and its record.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from ccm.templates_engine.service import make_engine

    database = Database(database_url)
    _deliverer = make_deliverer(database, settings, make_engine(database, settings))


def _ready() -> None:
    """Nothing: submitted to start a process (and its initializer) ahead of the first chunk."""


def _deliver_chunk(delivery_ids: list[str], deadline: float) -> Chunk:
    """`deadline`: the parent's time.monotonic() after which nothing more may start. Linux's monotonic clock
    is the machine's, the same in every process, and these processes always run beside their parent."""
    if _deliverer is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("the delivery process was not started")
    return _deliverer.deliver_many(delivery_ids, deadline=deadline)


class DeliveryProcesses:
    """CCM_DELIVERY_PROCESSES processes, started with `ccm serve` (otherwise when a batch arrives, or a
    chunk first needs one), each in an executor of its own: a process that dies takes only its own chunk
    with it (an executor whose process dies stops all of its others), and is replaced."""

    def __init__(self, settings: Settings, count: int, database_url: str) -> None:
        self._settings = settings
        self._database_url = database_url
        self._lock = threading.Lock()
        self._pools: list[ProcessPoolExecutor | None] = [None] * count
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(count):
            self._free.put(slot)

    def start(self) -> None:
        """Start every process not yet running, without waiting: a process takes a couple of seconds of CPU
        to import and set up what it delivers with, better spent before a batch comes than by its first
        chunk."""
        for slot in range(len(self._pools)):
            self._executor(slot)

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pools[slot]
            if pool is None:
                pool = self._pools[slot] = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(self._settings, self._database_url),
                )
                pool.submit(_ready)  # an executor starts its process on the first submit
            return pool

    def _replace(self, slot: int, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pools[slot] is pool:
                self._pools[slot] = None
        pool.shutdown(wait=False, cancel_futures=True)

    def deliver_many(self, delivery_ids: list[str], deadline: float) -> Chunk:
        """Deliver the chunk in a free process (waiting for one, while every one is busy); nothing more is
        started after `deadline`, however long the chunk waited for its process."""
        with waiting_on_provider():  # this thread only waits: another may work meanwhile
            slot = self._free.get()
            try:
                return self._deliver_in(slot, delivery_ids, deadline)
            finally:
                self._free.put(slot)

    def _deliver_in(self, slot: int, delivery_ids: list[str], deadline: float) -> Chunk:
        for _ in range(2):
            pool = self._executor(slot)
            try:
                future = pool.submit(_deliver_chunk, delivery_ids, deadline)
            except BrokenProcessPool:  # it died while idle: nothing of this chunk reached it
                self._replace(slot, pool)
                continue
            try:
                return future.result()
            except BrokenProcessPool:
                # It died with the chunk in hand (killed, out of memory): what it had claimed waits for its
                # lease and the relay; a new process takes the next chunk.
                self._replace(slot, pool)
                raise
        raise BrokenProcessPool("a delivery process could not be started")

    def close(self) -> None:
        """Let each process finish the chunk in hand, then stop it."""
        with self._lock:
            pools, self._pools = self._pools, [None] * len(self._pools)
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
