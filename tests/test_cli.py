"""The `ccm` command line: keys, demo, db upgrade, worker, and the real server process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ccm import migrations
from ccm.cli import app as cli
from ccm.config import Settings, redact_url
from ccm.db import Database
from ccm.demo import demo_customers
from tests.conftest import count_events
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def run(database: Database, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"CCM_DATABASE_URL": database.url})


def test_keys_create_list_revoke(database: Database) -> None:
    created = run(database, "keys", "create", "--name", "ops team", "--role", "auditor")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ccm_")

    listed = run(database, "keys", "list")
    assert "ops team" in listed.output
    assert "auditor" in listed.output
    assert key not in listed.output
    key_id = re.search(r"Created key (\S+)", created.output)
    assert key_id is not None

    assert run(database, "keys", "revoke", key_id.group(1)).exit_code == 0
    assert "ops team" not in run(database, "keys", "list").output
    again = run(database, "keys", "revoke", key_id.group(1))
    assert again.exit_code == 0
    assert count_events(database, "key.revoked") == 1
    unknown = run(database, "keys", "revoke", "no-such-key")
    assert unknown.exit_code == 1
    assert "no API key with id no-such-key" in unknown.output


def test_keys_create_refuses_an_unknown_role(database: Database) -> None:
    result = run(database, "keys", "create", "--name", "x", "--role", "root")
    assert result.exit_code == 2
    assert "--role" in result.output
    assert count_events(database) == 0


def test_demo_loads_customers_once(database: Database) -> None:
    first = run(database, "demo")
    assert first.exit_code == 0, first.output
    expected = len(demo_customers())
    assert f"{expected} customers created" in first.output
    events = count_events(database)
    second = run(database, "demo")
    assert f"{expected} already up to date" in second.output
    assert count_events(database) == events


def test_worker_needs_a_broker(database: Database) -> None:
    result = run(database, "worker")
    assert result.exit_code == 2
    assert "CCM_BROKER_URL" in result.output


def test_db_upgrade_creates_the_schema_in_the_default_place(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"CCM_DATA_DIR": str(tmp_path / "fresh")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fresh" / "ccm.db").exists()


def test_db_upgrade_migrates_an_empty_database(empty_database_url: str) -> None:
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"CCM_DATABASE_URL": empty_database_url})
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(cli, ["db", "upgrade"], env={"CCM_DATABASE_URL": empty_database_url})
    assert again.exit_code == 0
    database = Database(Settings(database_url=empty_database_url).resolved_database_url)
    try:
        with database.read_connection() as connection:
            assert migrations.current_revision(connection) == migrations.head_revision()
    finally:
        database.dispose()


def test_printed_urls_hide_passwords() -> None:
    assert redact_url("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("redis://localhost:6379") == "redis://localhost:6379"


def wait_for(url: str, process: subprocess.Popen[str], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"server exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback URL we built
                return int(response.status)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout}s")


def get_json(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def test_serve_migrates_and_answers_health(tmp_path: Path, empty_database_url: str) -> None:
    port = free_port()
    env = {**os.environ, "CCM_DATA_DIR": str(tmp_path / "data"), "CCM_DATABASE_URL": empty_database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "ccm", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{port}/health", process) == 200
        assert wait_for(f"http://127.0.0.1:{port}/ready", process) == 200
    finally:
        output = stop(process)
    assert "embedded worker started" in output


def test_make_run_script_serves_the_demo_with_the_printed_key(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CCM_DATA_DIR": str(tmp_path / "var"),
        "CCM_PORT": str(port),
        "VENV_BIN": str(Path(sys.executable).parent),
    }
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{port}/health", process) == 200
        key = (tmp_path / "var" / "demo-admin-key").read_text().strip()
        customers = get_json(f"http://127.0.0.1:{port}/v1/customers", key)
        assert {c["external_id"] for c in customers["items"]} == {c["external_id"] for c in demo_customers()}
    finally:
        output = stop(process)
    assert f"http://127.0.0.1:{port}" in output
    assert f"Demo admin key (keep it private): {key}" in output
