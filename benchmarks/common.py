"""What the benchmarks share: a database with the starter templates published, and one customer; for the
send pipeline's, `ccm serve` in a process of its own, a counting SMTP sink in another, many customers, and an
HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from ccm import migrations
from ccm.auth.models import Role
from ccm.auth.service import create_key
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.templates_engine import service
from ccm.templates_engine.render import TemplateEngine
from ccm.templates_engine.sync import publish_all, sync

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER: dict[str, Any] = {
    "external_id": "CUST-1001",
    "name": "Amelia Hartley",
    "email": "amelia@example.co.uk",
    "phone": "+447911123456",
    "locale": "en-GB",
    "timezone": "Europe/London",
    "address": {
        "line1": "14 Rosebery Avenue",
        "line2": None,
        "city": "London",
        "region": None,
        "postal_code": "EC1R 4SX",
        "country": "GB",
    },
    "attributes": {},
}


def starter_database(directory: Path) -> str:
    """A SQLite database in `directory`, migrated; answers its URL."""
    url = f"sqlite:///{directory / 'bench.db'}"
    migrations.upgrade(url)
    return url


def publish_starters(database: Database, settings: Settings) -> TemplateEngine:
    """The starter templates synced and published, as `ccm demo` does; answers an engine over them."""
    engine = service.make_engine(database, settings)
    report = sync(database, engine, ROOT / "templates", actor="bench:author")
    publish_all(database, engine, [*report.created], author="bench:author", approver="bench:approver")
    return engine


# --- the send pipeline's benchmarks: `ccm serve` in a process of its own, an SMTP sink in another ----------

SENDER_EMAIL = "notices@bank.example"
# Written as a script rather than imported, so the sink's process starts in a fraction of a second.
_SINK_SCRIPT = r"""
import sys
from aiosmtpd.controller import Controller

class Counting:
    received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        return "250 Message accepted"

handler = Counting()
controller = Controller(handler, hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
for line in sys.stdin:
    print(handler.received, flush=True)
controller.stop()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SinkProcess:
    """An SMTP server (aiosmtpd) in a process of its own that accepts every message and keeps only the
    count: ccm's side and the floor both send to it, and neither shares a GIL with it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> SinkProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SINK_SCRIPT, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the SMTP sink did not start")
        return self

    @property
    def received(self) -> int:
        assert self._process is not None and self._process.stdin and self._process.stdout
        self._process.stdin.write("count\n")
        self._process.stdin.flush()
        return int(self._process.stdout.readline())

    def stop(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


class CcmServer:
    """`python -m ccm serve` (migrate, then serve with the worker and the relay inside: embedded mode, the
    default without CCM_BROKER_URL) in a process of its own, as it is run; its log goes to a file."""

    def __init__(self, directory: Path, environment: dict[str, str]) -> None:
        self.directory = directory
        self.environment = environment
        self.port = free_port()
        self.log_path = directory / f"serve-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> CcmServer:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ccm", "serve", "--port", str(self.port)],
                env={**inherited, **self.environment},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"ccm serve exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        self._settle(deadline)
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ccm serve did not answer within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _settle(self, deadline: float) -> None:
        """Wait for the start-up work that goes on after the server answers (its delivery processes
        importing and setting up) to end: nothing measured should pay for it. Settled: under 50 ms of CPU
        in half a second, all processes together."""
        used = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - used < 0.05:
                return
            used = now

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def _status(self, field: str) -> int:
        """A memory figure of the server's process from /proc (Linux), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise LookupError(field)

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The most memory the process has held at once (VmHWM), since it started."""
        return self._status("VmHWM")

    def peak_rss_under(self) -> list[int]:
        """The same of each process under the server's (its delivery processes), while they run."""
        peaks = []
        for pid in self.processes()[1:]:
            try:
                if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue  # multiprocessing's own helper
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            peaks += [int(line.split()[1]) * 1024 for line in lines if line.startswith("VmHWM:")]
        return peaks

    def processes(self) -> list[int]:
        """The server's process and every process under it (CCM_DELIVERY_PROCESSES), from /proc."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
        tree = [self.pid]
        for pid in tree:
            tree.extend(child for child, parent in parents.items() if parent == pid)
        return tree

    def cpu_seconds(self) -> float:
        """User and system CPU time the server's processes (itself and those under it) have used so far."""
        total = 0
        for pid in self.processes():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def written_bytes(self) -> int:
        """Bytes the server's processes have had written to storage so far (write_bytes in /proc/PID/io:
        the database, its log and the artifacts, counted as each process dirties them)."""
        total = 0
        for pid in self.processes():
            try:
                lines = Path(f"/proc/{pid}/io").read_text().splitlines()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in lines if line.startswith("write_bytes:"))
        return total

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop as an operator would (SIGINT: uvicorn's graceful shutdown stops the worker and relay)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


class Client:
    """One keep-alive HTTP/1.1 connection to the server, with a key."""

    def __init__(self, port: int, key: str | None = None, *, timeout: float = 600) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """The answer's status and body. An iterable body goes out chunked, read as it is produced. A GET
        on a connection the server closed while it was idle (uvicorn's keep-alive timeout) is sent again."""
        try:
            self.connection.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            answer = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if method != "GET":
                raise
            self.connection.close()
            self.connection.request(method, path, headers={**self.headers, **(headers or {})})
            answer = self.connection.getresponse()
        return answer.status, answer.read()

    def json(self, method: str, path: str, body: Any = None, *, expect: int = 200) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, answer = self.request(method, path, payload, headers)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {answer[:500]!r}")
        return json.loads(answer)

    def close(self) -> None:
        self.connection.close()


def chunked(lines: Iterable[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    """Lines (each ending in a newline) gathered into pieces of about `size` bytes, as a client streams."""
    pending: list[bytes] = []
    length = 0
    for line in lines:
        pending.append(line)
        length += len(line)
        if length >= size:
            yield b"".join(pending)
            pending, length = [], 0
    if pending:
        yield b"".join(pending)


@dataclass
class PipelineSetup:
    """A fresh database with the starter templates published, customers with email addresses, a sender
    key; and the environment `ccm serve` runs with on it."""

    directory: Path
    database_url: str
    settings: Settings
    engine: TemplateEngine
    key: str
    customers: list[str]
    environment: dict[str, str]


def customer_number(index: int) -> str:
    return f"BENCH-{index:07d}"


def insert_customers(database: Database, count: int) -> list[str]:
    """`count` customers with email addresses, written in bulk (set-up, not measured: no audit events)."""
    now = utcnow()
    ids = []
    with database.transaction() as session:
        for start in range(0, count, 10_000):
            rows = []
            for index in range(start, min(count, start + 10_000)):
                external_id = customer_number(index)
                ids.append(external_id)
                rows.append(
                    {
                        "external_id": external_id,
                        "name": f"Customer {index}",
                        "email": f"customer{index}@example.co.uk",
                        "phone": None,
                        "locale": "en-GB",
                        "timezone": "Europe/London",
                        "address_line1": f"{index % 200 + 1} Rosebery Avenue",
                        "address_line2": None,
                        "address_city": "London",
                        "address_region": None,
                        "address_postal_code": "EC1R 4SX",
                        "address_country": "GB",
                        "attributes": {},
                        "e_delivery": False,
                        "preferred_channels": [],
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            session.execute(insert(Customer), rows)
    return ids


def pipeline_setup(directory: Path, *, customers: int, smtp_port: int | None = None) -> PipelineSetup:
    url = starter_database(directory)
    settings = Settings(
        database_url=url,
        data_dir=directory,
        email_from=SENDER_EMAIL,
        **({"smtp_host": "127.0.0.1", "smtp_port": smtp_port} if smtp_port else {}),
    )
    database = Database(url)
    try:
        engine = publish_starters(database, settings)
        ids = insert_customers(database, customers)
        with database.transaction() as session:
            _, key = create_key(session, name="bench-sender", role=Role.sender, actor="bench:admin")
    finally:
        database.dispose()
    environment = {
        "CCM_DATABASE_URL": url,
        "CCM_DATA_DIR": str(directory),
        "CCM_EMAIL_FROM": SENDER_EMAIL,
        "CCM_LOG_LEVEL": "INFO",
    }
    # A setting tried on the server without editing the benchmark: BENCH_CCM_DELIVERY_PROCESSES=3 runs it
    # with CCM_DELIVERY_PROCESSES=3 (CcmServer passes on none of the shell's own CCM_ variables).
    environment |= {
        name[len("BENCH_") :]: value for name, value in os.environ.items() if name.startswith("BENCH_CCM_")
    }
    if smtp_port:
        environment |= {"CCM_SMTP_HOST": "127.0.0.1", "CCM_SMTP_PORT": str(smtp_port)}
    return PipelineSetup(directory, url, settings, engine, key, ids, environment)


def reminder_data(index: int) -> dict[str, Any]:
    """The payment_reminder's data for one row: its sample data with an amount of its own."""
    return {
        "amount": round(20 + (index % 5000) * 0.37, 2),
        "currency": "GBP",
        "due_date": "2026-12-15",
        "account_number": f"4030{index:010d}",
        "payment_url": "https://bank.example/pay",
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the values fall (nearest rank), of values already sorted."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]
