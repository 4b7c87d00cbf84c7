"""Database engine, sessions and column types shared by every domain."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's own busy handler between processes
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import JSON, Connection, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can refer to them on both SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

READ_ONLY = "ccm_read_only"

# Rows fetched at a time when a whole table is streamed (verify). Small on purpose: rows still waiting in a
# fetch buffer outlive Python's young-generation collections and are promoted to the old one, and once
# enough are, every collection walks the whole heap. With 5,000 rows a fetch, verifying 1,000,000 events
# ran at half the rate of 10,000 (SQLite); with 200 at the same rate. On PostgreSQL each fetch is a round
# trip on the server-side cursor: 5,000 for a million events, a fraction of a second on a local socket,
# more across a network (not measured).
STREAM_ROWS = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every backend (SQLite stores no offset; we add UTC back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSON documents: JSONB on PostgreSQL (indexable), JSON text on SQLite.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


WAL_CHECKPOINT_PAGES = 10_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Copy the log into the database every 10,000 pages (40 MB) rather than SQLite's 1,000: a busy
        # pipeline rewrites the same index pages in one commit after another, and each copy writes them
        # again and syncs the file; ten times fewer copies took a tenth off the machine's CPU an email.
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A write transaction takes SQLite's write lock up front: otherwise a transaction that read first
        # fails with SQLITE_BUSY_SNAPSHOT when another writer committed in between, instead of waiting.
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


SQLITE_LOCK_TIMEOUT = 30.0
log = logging.getLogger(__name__)


_background = threading.local()


@contextmanager
def background_writes() -> Iterator[None]:
    """Marks this thread's write transactions as background work (the pipeline's actors, the relay, batch
    intake): on SQLite they give way to a waiting API request (see WriteLock)."""
    before = getattr(_background, "on", False)
    _background.on = True
    try:
        yield
    finally:
        _background.on = before


class WriteLock:
    """One SQLite database's write lock, taken before BEGIN IMMEDIATE and handed straight to the next
    waiting thread, then to the next waiting process.

    SQLite itself makes a second writer poll: its busy handler sleeps up to 100 ms between tries, and
    whoever happens to try just after a commit wins, so under load some writers wait seconds while others
    pass straight through, and the database sits unused while they sleep. Queued here instead, a writer
    starts the moment the one before it commits. Inside a process, in the order they came; an API request
    waiting goes before background work (background_writes), except that every BACKGROUND_TURN-th
    hand-over goes to the background, so a steady stream of requests cannot starve the worker. Between
    processes (`ccm serve` and its delivery processes, the CLI, a second server on the same file), the
    holder also holds an exclusive flock on a file beside the database (`<database>-writer`), which a
    waiting process tries for every 0.2-2 ms (SQLite's busy handler sleeps 1 to 100 ms between tries) and
    which the kernel lets go of when its process dies. Anything else writing the file still meets SQLite's
    own lock and busy timeout."""

    BACKGROUND_TURN = 4

    def __init__(self, path: str | None = None) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Lock] = deque()
        self._waiting_background: deque[threading.Lock] = deque()
        self._handed_over = 0
        self._database = path
        self._path = f"{path}-writer" if path and fcntl is not None else None  # the lock file
        self._file: tuple[int, int] | None = None  # (process id, descriptor): a forked child opens its own

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._acquire_here(timeout):
            return False
        try:
            if not self._lock_file(deadline):
                self._release_here()
                return False
        except BaseException:
            # Interrupted (Dramatiq's time limit raises in the thread), maybe just after the flock was had:
            # unlocking a flock not held does nothing.
            with contextlib.suppress(OSError):
                self._unlock_file()
            self._release_here()
            raise
        return True

    def release(self) -> None:
        try:
            self._unlock_file()
        finally:
            self._release_here()

    def _lock_file(self, deadline: float) -> bool:
        """Called by the thread holding the lock inside this process, so by one thread at a time. Tried
        without blocking, then again after a short sleep (0.2 ms, doubling to 2 ms) until `deadline`: a
        blocking flock could not be given up, nor interrupted by a worker's time limit."""
        if self._path is None or self._database is None or fcntl is None:
            return True
        if self._file is None or self._file[0] != os.getpid():
            handle = self._open_file(self._path, self._database)
            if handle is None:
                return True
            self._file = (os.getpid(), handle)
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self._file[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.002)

    def _open_file(self, path: str, database: str) -> int | None:
        """The lock file, with the database's permissions and (as root) its owner, as SQLite gives its -wal
        and -shm files; None, and a warning, when it cannot be opened (writers in other processes then
        meet SQLite's own lock, as before)."""
        try:
            stat = os.stat(database)
        except OSError:
            stat = None
        mode = stat.st_mode & 0o666 if stat is not None else 0o600
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            log.warning(
                "%s cannot be opened (%s): writers in other processes wait on SQLite instead", path, exc
            )
            self._path = None
            return None
        if stat is not None:
            with contextlib.suppress(OSError):
                if os.fstat(handle).st_uid == os.geteuid():
                    os.fchmod(handle, mode)
                if os.geteuid() == 0:
                    os.fchown(handle, stat.st_uid, stat.st_gid)
        return handle

    def _unlock_file(self) -> None:
        if self._file is not None and fcntl is not None and self._file[0] == os.getpid():
            fcntl.flock(self._file[1], fcntl.LOCK_UN)

    def _acquire_here(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            line = self._waiting_background if getattr(_background, "on", False) else self._waiting
            line.append(turn)
        try:
            if turn.acquire(timeout=timeout):
                return True
        except BaseException:
            # Interrupted while waiting (Dramatiq's time limit raises in the thread): leave the line, or, if
            # the lock was handed over meanwhile, hand it on, so that nobody is left holding it.
            with self._mutex:
                try:
                    line.remove(turn)
                except ValueError:
                    self._hand_over()
            raise
        with self._mutex:
            try:
                line.remove(turn)
            except ValueError:
                return True  # handed over between the timeout and now: ours after all
            return False

    def _release_here(self) -> None:
        with self._mutex:
            self._hand_over()

    def _hand_over(self) -> None:
        """To the next in line, or free; the caller holds the mutex."""
        self._handed_over += 1
        background_turn = self._handed_over % self.BACKGROUND_TURN == 0
        if self._waiting_background and (background_turn or not self._waiting):
            self._waiting_background.popleft().release()  # handed over: still held
        elif self._waiting:
            self._waiting.popleft().release()
        else:
            self._held = False


_write_locks: dict[str, WriteLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(url: str, path: str | None) -> WriteLock:
    """The lock of one database file, shared by every Database object of this process that opens it."""
    with _write_locks_guard:
        return _write_locks.setdefault(url, WriteLock(path))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )
        _configure_sqlite(engine)
        return engine
    # hide_parameters: a failed statement's error must never carry customer data into a log.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)


def _database_file(engine: Engine) -> str | None:
    """The SQLite database's file, or None for one in memory."""
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return os.path.abspath(name)


class Database:
    """The engine plus two session factories: read-write (the default) and read-only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write_lock = (
            _write_lock(url, _database_file(self.engine)) if self.engine.dialect.name == "sqlite" else None
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        lock = self._write_lock
        if lock is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        acquired = False
        try:
            acquired = lock.acquire(SQLITE_LOCK_TIMEOUT)
            if not acquired:
                # What SQLite says when its own busy timeout runs out (answered 503 and retried by callers).
                raise OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
                )
            with self._sessions() as session, session.begin():
                yield session
        finally:
            if acquired:
                lock.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only; it never holds SQLite's write lock."""
        with self._read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only session that sees one consistent state of the database for all its queries
        (REPEATABLE READ on PostgreSQL; on SQLite every read transaction already is one)."""
        with self._read_sessions() as session, session.begin():
            if self.dialect == "postgresql":
                session.connection(
                    execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
                )
            yield session

    def read_connection(self) -> Connection:
        """A plain connection that never takes SQLite's write lock."""
        return self.engine.execution_options(**{READ_ONLY: True}).connect()

    def dispose(self) -> None:
        self.engine.dispose()


def lock_name(session: Session, name: str) -> None:
    """Serialise transactions on a name until this one ends: a PostgreSQL advisory lock. SQLite needs none:
    its write transactions (BEGIN IMMEDIATE) already run one at a time."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
