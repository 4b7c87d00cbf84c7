"""The `ccm` command: serve, worker, db, keys, demo, audit."""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ccm.config import Settings, SettingsError, load_settings, redact_url

app = typer.Typer(help="ccm: customer communication management.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        err.print(f"[red]ccm cannot start: a setting is wrong[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _upgrade(settings: Settings) -> None:
    from ccm import migrations

    migrations.upgrade(settings.resolved_database_url)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Migrate the database, then serve the API and pages (and, in embedded mode, the worker)."""
    import uvicorn

    from ccm.app import create_app

    settings = _settings()
    _configure_logging(settings)
    _upgrade(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@app.command()
def worker(
    threads: Annotated[int, typer.Option(min=1, max=64, help="Worker threads in this process.")] = 8,
) -> None:
    """Process queued work from Redis (scaled-out mode; needs CCM_BROKER_URL)."""
    import dramatiq

    from ccm.worker import configure_broker

    settings = _settings()
    if settings.embedded:
        err.print(
            "ccm worker needs CCM_BROKER_URL (a redis:// URL). "
            "Without it, `ccm serve` runs the worker inside the API process."
        )
        raise typer.Exit(2)
    _configure_logging(settings)
    broker = configure_broker(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = dramatiq.Worker(broker, worker_threads=threads)
    running.start()
    out.print(f"ccm worker: {threads} threads on {redact_url(settings.broker_url or '')}", highlight=False)
    stop.wait()
    running.stop()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration not applied yet."""
    settings = _settings()
    _upgrade(settings)
    out.print("database schema is up to date")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what will use the key.")],
    role: Annotated[str, typer.Option(help="admin, author, approver, sender, agent or auditor.")],
) -> None:
    """Create an API key and print it, this once."""
    from pydantic import ValidationError

    from ccm.auth.schemas import KeyCreate
    from ccm.auth.service import create_key
    from ccm.db import Database

    settings = _settings()
    try:
        body = KeyCreate.model_validate({"name": name, "role": role})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            err.print(f"--{field}: {error['msg']}", highlight=False)
        raise typer.Exit(2) from None
    database = Database(settings.resolved_database_url)
    try:
        with database.transaction() as session:
            row, key = create_key(session, name=body.name, role=body.role, actor=_cli_actor())
    finally:
        database.dispose()
    err.print(f"Created key {row.id} ({row.name}, role {row.role.value}). It is shown once; keep it safe:")
    print(key)


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Show revoked keys too.")] = False,
) -> None:
    """List API keys (never the keys themselves)."""
    from ccm.auth.service import list_keys
    from ccm.db import Database

    database = Database(_settings().resolved_database_url)
    try:
        with database.read() as session:
            rows = list_keys(session, include_revoked=include_revoked)
    finally:
        database.dispose()
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    for row in rows:
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else ""
        table.add_row(
            row.id,
            row.name,
            row.role.value,
            row.prefix,
            row.created_at.isoformat(timespec="seconds"),
            revoked,
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id, from `ccm keys list`.")]) -> None:
    """Revoke an API key: it stops working at once."""
    from ccm.auth.service import revoke_key
    from ccm.db import Database
    from ccm.errors import CCMError

    database = Database(_settings().resolved_database_url)
    try:
        with database.transaction() as session:
            row = revoke_key(session, key_id=key_id, actor=_cli_actor())
            revoked_by = row.revoked_by
    except CCMError as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    out.print(f"revoked {key_id} (by {revoked_by})", highlight=False)


@app.command()
def demo() -> None:
    """Load the demo customers (idempotent: running it again changes nothing)."""
    from ccm.db import Database
    from ccm.demo import load_demo

    database = Database(_settings().resolved_database_url)
    try:
        summary = load_demo(database, actor=_cli_actor())
    finally:
        database.dispose()
    out.print(
        f"demo: {summary.customers_created} customers created, {summary.customers_updated} updated, "
        f"{summary.customers_unchanged} already up to date"
    )


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit hash chain; exit 1 and name the first broken event if it does not hold."""
    from ccm.audit import verify
    from ccm.db import Database

    database = Database(_settings().resolved_database_url)
    try:
        with database.snapshot() as session:
            result = verify(session)
    finally:
        database.dispose()
    if result.first_problem is None:
        out.print(
            f"audit chain intact: {result.events_checked} events, head {result.head_seq} {result.head_hash}",
            highlight=False,
        )
        return
    err.print(
        f"[red]audit chain broken at event {result.first_problem.seq}[/red]: {result.first_problem.problem}\n"
        f"({result.events_checked} events before it verified)",
        highlight=False,
    )
    raise typer.Exit(1)


def main() -> None:
    app()
