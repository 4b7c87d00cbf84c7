"""At most CCM_WORKER_BUSY_THREADS worker threads work at once; a thread waiting on a provider lets another
work (ccm.communications.gate)."""

from __future__ import annotations

import threading
import time

from ccm.communications.gate import Gate, waiting_on_provider


def test_only_so_many_work_at_once_but_waiting_on_a_provider_frees_a_slot() -> None:
    gate = Gate(2)
    lock = threading.Lock()
    working = peak = 0
    waited_together = threading.Barrier(4, timeout=5)  # all four are waiting on "the network" at once

    def actor() -> None:
        nonlocal working, peak
        with gate.working():
            with lock:
                working += 1
                peak = max(peak, working)
            time.sleep(0.05)  # rendering, recording...
            with lock:
                working -= 1
            with waiting_on_provider():
                waited_together.wait()  # impossible unless the slots are given up while waiting
            with lock:
                working += 1
                peak = max(peak, working)
            time.sleep(0.01)
            with lock:
                working -= 1

    threads = [threading.Thread(target=actor) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peak == 2


def test_outside_a_gate_waiting_is_a_no_op() -> None:
    with waiting_on_provider():
        pass
