"""Shared fixtures: every database test runs on SQLite and on a real, throwaway PostgreSQL cluster."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ccm import migrations
from ccm.app import create_app
from ccm.audit.models import AuditEvent
from ccm.auth.models import Role
from ccm.cli import DEMO_APPROVER, DEMO_AUTHOR
from ccm.config import Settings
from ccm.db import Database
from ccm.demo import load_demo
from ccm.templates_engine.service import make_engine
from ccm.templates_engine.sync import publish_all, sync
from tests.channels.fake_twilio import FakeTwilio
from tests.channels.smtp_sink import SmtpSink
from tests.pgcluster import PostgresCluster, find_postgres_bindir
from tests.redis_server import RedisServer

ADMIN_KEY = "test-bootstrap-admin-key-0123456789"
BACKENDS = ["sqlite", "postgresql"]
STARTER_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_database_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def _no_ccm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings; a CCM_ variable in the caller's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("CCM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    if find_postgres_bindir() is None:
        pytest.fail(
            "PostgreSQL server binaries are missing: `make test` installs them (Debian package postgresql)"
        )
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def template_database(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> str:
    """A database migrated to head once per session; each test starts from a copy of it."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("template") / "ccm.db"
        migrations.upgrade(f"sqlite:///{path}")
        return str(path)
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    cluster.create_database("ccm_template")
    migrations.upgrade(cluster.url("ccm_template"))
    return "ccm_template"


@pytest.fixture(scope="session")
def demo_template_database(
    backend: str,
    template_database: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> str:
    """A migrated database holding the demo customers and the starter templates, published: made once per
    session; tests that send real communications start from a copy of it (`demo_database_url`)."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("demo") / "ccm.db"
        shutil.copyfile(template_database, path)
        url = f"sqlite:///{path}"
        result = str(path)
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        cluster.create_database("ccm_demo_template", template=template_database)
        url, result = cluster.url("ccm_demo_template"), "ccm_demo_template"
    settings = Settings(data_dir=tmp_path_factory.mktemp("demo-data"), database_url=url)
    database = Database(url)
    try:
        load_demo(database, actor="test:demo")
        engine = make_engine(database, settings)
        report = sync(database, engine, STARTER_TEMPLATES, actor=DEMO_AUTHOR)
        publish_all(database, engine, report.created, author=DEMO_AUTHOR, approver=DEMO_APPROVER)
    finally:
        database.dispose()
    return result


def _copy_of(backend: str, template: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one test, copied from a template database (a file, or a PostgreSQL template)."""
    if backend == "sqlite":
        path = tmp_path / "ccm.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = f"ccm_test_{next(_database_numbers)}"
    cluster.create_database(name, template=template)
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
def demo_database_url(
    backend: str, demo_template_database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    yield from _copy_of(backend, demo_template_database, tmp_path, request)


@pytest.fixture
def database_url(
    backend: str, template_database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    yield from _copy_of(backend, template_database, tmp_path, request)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, admin_api_key=ADMIN_KEY)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings.resolved_database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def app(settings: Settings, database: Database) -> FastAPI:
    return create_app(settings, database=database)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a free port, recording what it receives."""
    server = SmtpSink().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    """A local fake of Twilio's REST API, for the real Twilio SDK to talk to."""
    fake = FakeTwilio().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server (Debian's redis-server) in a temp dir, for the scaled-out mode's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin() -> dict[str, str]:
    return bearer(ADMIN_KEY)


@pytest.fixture
def role_keys(client: TestClient, admin: dict[str, str]) -> dict[Role, dict[str, str]]:
    """Auth headers for a key of every role, made through the API."""
    headers = {}
    for role in Role:
        response = client.post(
            "/v1/keys", json={"name": f"test {role.value}", "role": role.value}, headers=admin
        )
        assert response.status_code == 201, response.text
        headers[role] = bearer(response.json()["key"])
    return headers


def count_events(database: Database, action: str | None = None) -> int:
    query = select(func.count()).select_from(AuditEvent)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    with database.read() as session:
        return int(session.execute(query).scalar_one())


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database with no schema at all, for what must migrate or report that it is not ready."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = f"ccm_empty_{next(_database_numbers)}"
    cluster.create_database(name)
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)
