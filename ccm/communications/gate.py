"""How many worker threads may be busy on the CPU at once.

A worker thread spends its time two ways: working (rendering, building the MIME, recording in the database),
which holds Python's GIL, and waiting on a provider (an SMTP server, Twilio, a webhook receiver), which does
not. Many threads help with the waiting; several working at once only take turns at the GIL, and an API
request waits behind every turn (a trigger's p99 at 50 requests/s with the worker sending: 75 ms with 8
working threads, 61 ms with 2, 37 ms with 1, for the same emails a second). So every thread may wait, but
only CCM_WORKER_BUSY_THREADS (default 1) work at a time; with the database across a network (PostgreSQL),
where each query waits on it, 2 to 4 can do more.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


class Gate:
    def __init__(self, slots: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)

    @contextmanager
    def working(self) -> Iterator[None]:
        """Around an actor's whole run: a slot held, except while waiting_on_provider() lets it go."""
        self._slots.acquire()
        _local.gate, _local.held = self, True
        try:
            yield
        finally:
            _local.gate = None
            if _local.held:  # not if interrupted while taking it back after a wait
                _local.held = False
                self._slots.release()

    def leave(self) -> None:
        _local.held = False
        self._slots.release()

    def come_back(self) -> None:
        self._slots.acquire()
        _local.held = True


@contextmanager
def waiting_on_provider() -> Iterator[None]:
    """Give this thread's slot to another worker while it waits on the network; a no-op outside a gate
    (a test calling the deliverer directly, the CLI)."""
    gate: Gate | None = getattr(_local, "gate", None)
    if gate is None or not getattr(_local, "held", False):
        yield
        return
    gate.leave()
    try:
        yield
    finally:
        gate.come_back()
