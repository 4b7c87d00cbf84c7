"""SQLite writers queue (ccm.db.WriteLock), in the process and between processes, instead of polling SQLite's
busy handler."""

from __future__ import annotations

import ctypes
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from ccm import db as ccm_db
from ccm.db import Database, WriteLock, background_writes

ROOT = Path(__file__).resolve().parent.parent


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.001)


def _waiter(lock: WriteLock, name: str, order: list[str], *, background: bool) -> threading.Thread:
    def run() -> None:
        if background:
            with background_writes():
                assert lock.acquire(5)
        else:
            assert lock.acquire(5)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _queued(lock: WriteLock) -> int:
    return len(lock._waiting) + len(lock._waiting_background)


def test_writers_get_the_lock_in_the_order_they_asked() -> None:
    lock = WriteLock()
    assert lock.acquire(1)
    order: list[str] = []
    threads = []
    for name in "abcde":
        threads.append(_waiter(lock, name, order, background=False))
        _wait_until(lambda count=len(threads): _queued(lock) == count)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == list("abcde")


def test_an_api_write_goes_before_queued_background_work_but_cannot_starve_it() -> None:
    lock = WriteLock()
    assert lock.acquire(1)
    order: list[str] = []
    threads = [_waiter(lock, "worker-1", order, background=True)]
    _wait_until(lambda: _queued(lock) == 1)
    threads.append(_waiter(lock, "worker-2", order, background=True))
    _wait_until(lambda: _queued(lock) == 2)
    for number in range(1, 8):
        threads.append(_waiter(lock, f"request-{number}", order, background=False))
        _wait_until(lambda count=len(threads): _queued(lock) == count)
    lock.release()
    for thread in threads:
        thread.join(5)
    # Requests first, but every WriteLock.BACKGROUND_TURN-th hand-over goes to the waiting background work.
    assert order == [
        "request-1",
        "request-2",
        "request-3",
        "worker-1",
        "request-4",
        "request-5",
        "request-6",
        "worker-2",
        "request-7",
    ]


def test_a_writer_that_waits_too_long_leaves_the_queue() -> None:
    lock = WriteLock()
    assert lock.acquire(1)
    assert lock.acquire(0.05) is False
    assert _queued(lock) == 0
    lock.release()
    assert lock.acquire(0.05) is True  # free again: the one that gave up took nothing with it


def test_a_transaction_kept_waiting_is_the_database_locked_error_the_api_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ccm_db, "SQLITE_LOCK_TIMEOUT", 0.1)
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    first, second = Database(url), Database(url)  # two objects on one file share the lock
    try:
        with first.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            failure: list[BaseException] = []

            def write() -> None:
                try:
                    with second.transaction() as other:
                        other.execute(text("INSERT INTO t VALUES (1)"))
                except OperationalError as exc:
                    failure.append(exc)

            thread = threading.Thread(target=write)
            thread.start()
            thread.join(5)
        assert len(failure) == 1
        assert "database is locked" in str(failure[0])
        with second.transaction() as session:  # and nothing was left held
            session.execute(text("INSERT INTO t VALUES (2)"))
        with second.read() as session:
            assert session.execute(text("SELECT x FROM t")).scalars().all() == [2]
    finally:
        first.dispose()
        second.dispose()


def _database_with_table(url: str) -> Database:
    """A database with one table t (x INTEGER) to write to."""
    database = Database(url)
    with database.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    return database


def test_many_threads_writing_at_once_all_commit(tmp_path: Path) -> None:
    database = _database_with_table(f"sqlite:///{tmp_path / 'busy.db'}")
    try:

        def write(number: int) -> None:
            for index in range(20):
                if number % 2:
                    with background_writes(), database.transaction() as session:
                        session.execute(text("INSERT INTO t VALUES (:x)"), {"x": number * 100 + index})
                else:
                    with database.transaction() as session:
                        session.execute(text("INSERT INTO t VALUES (:x)"), {"x": number * 100 + index})

        threads = [threading.Thread(target=write, args=(number,)) for number in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        with database.read() as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 16 * 20
    finally:
        database.dispose()


class TimeLimitExceeded(Exception):
    """What Dramatiq's time limit raises in an actor's thread, from outside it."""


def test_a_writer_interrupted_as_the_lock_reaches_it_hands_it_on(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'interrupted.db'}")
    lock = database._write_lock
    assert lock is not None
    caught: list[BaseException] = []

    def writer() -> None:
        try:
            with database.transaction():
                pass
        except TimeLimitExceeded as exc:
            caught.append(exc)

    try:
        holder = database.transaction()
        holder.__enter__()
        thread = threading.Thread(target=writer)
        thread.start()
        _wait_until(lambda: _queued(lock) == 1)
        # Pending until the writer's blocking wait returns, which is when the lock is handed to it.
        assert thread.ident is not None
        raised = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(TimeLimitExceeded)
        )
        assert raised == 1
        holder.__exit__(None, None, None)
        thread.join(5)
        assert caught
        assert lock.acquire(1.0)  # free again, not held by a thread that is gone
        lock.release()
    finally:
        database.dispose()


_HOLD_A_WRITE = """
import sys, time
from sqlalchemy import text
from ccm.db import Database
database = Database(sys.argv[1])
with database.transaction() as session:
    session.execute(text("INSERT INTO t VALUES (1)"))
    print("holding", flush=True)
    time.sleep(60)
"""


def _writer_file_is_free(path: Path) -> bool:
    """Whether another process could take the writers' flock now (asked from a process of its own)."""
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(path)], check=False).returncode == 0


def test_a_write_transaction_holds_the_lock_other_processes_queue_on(tmp_path: Path) -> None:
    """Between processes (ccm serve and its delivery processes, the CLI), writers queue on a flock beside the
    database, tried every 0.2-2 ms, instead of SQLite's busy handler sleeping up to 100 ms between tries."""
    path = tmp_path / "shared.db"
    database = Database(f"sqlite:///{path}")
    writer_file = Path(f"{path}-writer")
    try:
        with database.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            assert not _writer_file_is_free(writer_file)
        assert _writer_file_is_free(writer_file)
        with database.read():
            assert _writer_file_is_free(writer_file)  # reading takes no write lock
    finally:
        database.dispose()


def test_a_process_killed_inside_a_write_leaves_the_database_writable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    database = _database_with_table(url)
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_A_WRITE, url], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding"
            holder.send_signal(signal.SIGKILL)  # out of memory, kill -9: no commit, no unlock
        finally:
            holder.wait(10)
            if holder.stdout is not None:
                holder.stdout.close()
        done: list[bool] = []

        def write() -> None:
            with database.transaction() as session:
                session.execute(text("INSERT INTO t VALUES (2)"))
            done.append(True)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(10)
        assert done, "the write still waits on a dead process's lock"
        with database.read() as session:
            assert session.execute(text("SELECT x FROM t")).scalars().all() == [2]  # its row rolled back
    finally:
        database.dispose()


_HOLD_THE_WRITER_FILE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(60)
"""


def test_a_writer_kept_waiting_by_another_process_gets_the_database_locked_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting on another process is bounded like waiting on a thread: 'database is locked' (503, retried by
    callers) after SQLITE_LOCK_TIMEOUT, never a thread stuck for good."""
    monkeypatch.setattr(ccm_db, "SQLITE_LOCK_TIMEOUT", 0.3)
    path = tmp_path / "held.db"
    database = Database(f"sqlite:///{path}")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_WRITER_FILE, f"{path}-writer"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OperationalError, match="database is locked"), database.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    with database.transaction() as session:  # free again once the other process is gone
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    database.dispose()


def test_the_lock_file_has_the_databases_permissions(tmp_path: Path) -> None:
    """As SQLite does for its -wal and -shm files: whoever can write the database can take its lock."""
    path = tmp_path / "shared.db"
    sqlite3.connect(path).close()
    path.chmod(0o660)
    database = Database(f"sqlite:///{path}")
    try:
        with database.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
        assert Path(f"{path}-writer").stat().st_mode & 0o777 == 0o660
    finally:
        database.dispose()
