"""Batch intake: rows/s stored through POST /v1/batches, and the server's peak memory on a 1,000,000-row file.

What is measured is the HTTP endpoint of `python -m ccm serve` (embedded mode, SQLite, the worker's threads
and the relay running inside it), as a client uses it: a JSON Lines file of `payment_reminder` triggers
(channels ["email"], a reference and a far-future `send_at` on every row, so nothing is routed or sent while
it is measured), streamed chunked over one connection, timed until the answer (every row stored, 500 to a
transaction, each with its `communication.accepted` audit event). The floor is the same rows parsed and
validated by pydantic alone (`TriggerIn.model_validate_json` per line, no database, no HTTP): the ratio
shows what storing costs. Then a fresh server takes a 1,000,000-row file made on the fly (the client never
holds it) and its peak resident memory (VmHWM) is read. Targets: at least 5,000 rows/s; under 300 MB.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import CcmServer, Client, chunked, customer_number, pipeline_setup, reminder_data
from ccm.communications.schemas import TriggerIn

TEMPLATE = "payment_reminder"
SEND_AT = "2099-01-01T09:00:00+00:00"
RATE_TARGET = 5_000
MEMORY_TARGET = 300 * 2**20
BIG = 1_000_000
FALLBACK = 200_000  # if BIG would take more than LONGEST at the measured rate
LONGEST = 600.0


def line(index: int, customers: int, prefix: str) -> bytes:
    body = {
        "template": TEMPLATE,
        "customer": customer_number(index % customers),
        "data": reminder_data(index),
        "channels": ["email"],
        "send_at": SEND_AT,
        "reference": f"{prefix}-{index:08d}",
    }
    return json.dumps(body).encode() + b"\n"


def floor_rate(lines: list[bytes]) -> float:
    """Rows/s of pydantic parsing and validating the rows, nothing else: best of three."""
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for row in lines:
            TriggerIn.model_validate_json(row)
        best = max(best, len(lines) / (time.perf_counter() - started))
    return best


def post_batch(client: Client, body: Iterator[bytes]) -> dict[str, object]:
    status, answer = client.request("POST", "/v1/batches", body, {"Content-Type": "application/x-ndjson"})
    if status != 201:
        raise RuntimeError(f"POST /v1/batches: {status} {answer[:500]!r}")
    batch: dict[str, object] = json.loads(answer)
    return batch


def idle_after(server: CcmServer, *, timeout: float) -> float:
    """Seconds until the server's process goes idle (under 5% of a core over half a second)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = server.cpu_seconds()
        time.sleep(0.5)
        if server.cpu_seconds() - before < 0.025:
            return max(0.0, time.perf_counter() - started - 0.5)
    return float("inf")


def big_file(server: CcmServer, client: Client, rows: int, customers: int) -> tuple[float, int, int]:
    """Streams `rows` rows made on the fly, printing progress; answers seconds, peak and start memory."""
    produced = 0
    done = threading.Event()
    started = time.perf_counter()
    start_rss = server.peak_rss()

    def lines() -> Iterator[bytes]:
        nonlocal produced
        for index in range(rows):
            produced = index + 1
            yield line(index, customers, "BIG")

    def progress() -> None:
        while not done.wait(15):
            elapsed = time.perf_counter() - started
            print(
                f"     ... {produced:,} rows sent in {elapsed:.0f}s ({produced / elapsed:,.0f} rows/s),"
                f" server {server.rss() / 2**20:,.0f} MB now, {server.peak_rss() / 2**20:,.0f} MB at most",
                flush=True,
            )

    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    try:
        batch = post_batch(client, chunked(lines()))
    finally:
        done.set()
        reporter.join()
    elapsed = time.perf_counter() - started
    assert batch["accepted"] == rows, batch
    return elapsed, server.peak_rss(), start_rss


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    rows, customers = (200, 200) if quick else (50_000, 10_000)
    with tempfile.TemporaryDirectory() as directory:
        setup = pipeline_setup(Path(directory), customers=customers)
        lines = [line(index, customers, "R") for index in range(rows)]
        floor = floor_rate(lines)

        server = CcmServer(Path(directory), setup.environment).start()
        client = Client(server.port, setup.key)
        try:
            cpu_before = server.cpu_seconds()
            started = time.perf_counter()
            batch = post_batch(client, chunked(lines))
            elapsed = time.perf_counter() - started
            cpu = server.cpu_seconds() - cpu_before
            assert batch["accepted"] == rows and batch["rejected"] == 0, batch
            settle = idle_after(server, timeout=120)
            peak = server.peak_rss()
        finally:
            client.close()
            server.stop()
        rate = rows / elapsed
        print(
            f"   {rows:,} rows through POST /v1/batches: {rate:,.0f} rows/s ({elapsed:.1f}s; the server's"
            f" CPU {cpu / rows * 1e6:,.0f} us a row); pydantic alone {floor:,.0f} rows/s;"
            f" server peak memory {peak / 2**20:,.0f} MB"
        )
        print(f"   after the answer the server's process stayed busy {settle:.1f}s more")
        ratio = rate / floor
        verdict = "met" if rate >= RATE_TARGET else f"missed, {RATE_TARGET / rate:.1f}x too slow"
        print(f"   ratio {ratio:.3f}x against pydantic alone; target >= {RATE_TARGET:,} rows/s: {verdict}")
        if quick:
            return

        big = BIG
        if BIG / rate > LONGEST:
            big = FALLBACK
            print(
                f"   {BIG:,} rows would take about {BIG / rate / 60:.0f} minutes at {rate:,.0f} rows/s:"
                f" measuring {FALLBACK:,} rows instead"
            )
        server = CcmServer(Path(directory), setup.environment).start()
        client = Client(server.port, setup.key)
        try:
            seconds, big_peak, start_peak = big_file(server, client, big, customers)
        finally:
            client.close()
            server.stop()
        verdict = "met" if big_peak < MEMORY_TARGET else "missed"
        print(
            f"   {big:,} rows made on the fly and streamed: {big / seconds:,.0f} rows/s ({seconds:.0f}s);"
            f" the server's peak memory {big_peak / 2**20:,.0f} MB ({start_peak / 2**20:,.0f} MB"
            f" before the file, {(big_peak - start_peak) / big:,.0f} bytes more a row),"
            f" target < 300 MB: {verdict}"
        )
