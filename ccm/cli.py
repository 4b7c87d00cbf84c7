"""The `ccm` command: serve, worker, db, keys, demo, audit."""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ccm.config import Settings, SettingsError, load_settings, redact_url

app = typer.Typer(help="ccm: customer communication management.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
templates_app = typer.Typer(help="Templates as code.", no_args_is_help=True)
print_app = typer.Typer(help="Print batches: letters gathered for the print house.", no_args_is_help=True)
batch_app = typer.Typer(help="Batch files of communications.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(templates_app, name="templates")
app.add_typer(print_app, name="print")
app.add_typer(batch_app, name="batch")

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


# The demo's two people, so that its templates pass the four-eyes rule like anyone else's.
DEMO_AUTHOR = "demo:author"
DEMO_APPROVER = "demo:approver"


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
    uvicorn.run(
        create_app(settings, start_processes=True), host=host, port=port, log_config=None, access_log=False
    )


@app.command()
def worker(
    threads: Annotated[int, typer.Option(min=1, max=64, help="Worker threads in this process.")] = 8,
) -> None:
    """Process queued work from Redis (scaled-out mode; needs CCM_BROKER_URL)."""
    import dramatiq

    from ccm.communications.tasks import RelayLoop, Runtime
    from ccm.db import Database
    from ccm.templates_engine.service import make_engine, warm_live_versions
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
    database = Database(settings.resolved_database_url)
    engine = make_engine(database, settings)
    warm_live_versions(database, engine)
    runtime = Runtime(database=database, settings=settings, engine=engine, broker=broker, threads=threads)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = dramatiq.Worker(broker, worker_threads=threads)
    running.start()
    # Every worker runs the relay too: any one of them finds what a dead one left (it is safe to run twice).
    relay = RelayLoop(runtime.pipeline(), settings.relay_interval)
    relay.start()
    out.print(f"ccm worker: {threads} threads on {redact_url(settings.broker_url or '')}", highlight=False)
    stop.wait()
    relay.stop()
    running.stop()
    database.dispose()


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
    person: Annotated[
        str | None,
        typer.Option(help="Who holds it (email or employee id); the four-eyes rule compares people."),
    ] = None,
) -> None:
    """Create an API key and print it, this once."""
    from pydantic import ValidationError

    from ccm.auth.schemas import KeyCreate
    from ccm.auth.service import create_key
    from ccm.db import Database

    settings = _settings()
    try:
        body = KeyCreate.model_validate({"name": name, "role": role, "person": person})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            err.print(f"--{field}: {error['msg']}", highlight=False)
        raise typer.Exit(2) from None
    database = Database(settings.resolved_database_url)
    try:
        with database.transaction() as session:
            row, key = create_key(
                session, name=body.name, role=body.role, person=body.person, actor=_cli_actor()
            )
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


@templates_app.command("sync")
def templates_sync(
    folder: Annotated[Path, typer.Argument(help="The templates folder.")] = Path("templates"),
) -> None:
    """Create a draft for every template whose files changed (nothing when nothing changed)."""
    from ccm.db import Database
    from ccm.templates_engine.service import make_engine
    from ccm.templates_engine.sync import SyncFailed, sync

    settings = _settings()
    database = Database(settings.resolved_database_url)
    try:
        report = sync(database, make_engine(database, settings), folder, actor=_cli_actor())
    except SyncFailed as exc:
        err.print(f"[red]nothing was synced[/red] ({len(exc.problems)} problem(s)):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    for key in report.created:
        out.print(f"created template {key}", highlight=False)
    for key in report.updated:
        out.print(f"updated the name, description or category of {key}", highlight=False)
    for key, number in report.drafts:
        out.print(f"new draft {key} v{number}", highlight=False)
    out.print(
        f"{len(report.drafts)} new draft(s), {len(report.unchanged)} template(s) unchanged",
        highlight=False,
    )


@templates_app.command("export")
def templates_export(
    key: Annotated[str, typer.Argument(help="The template's key.")],
    folder: Annotated[Path, typer.Argument(help="Where to write it: FOLDER/KEY/...")],
    version: Annotated[int | None, typer.Option(help="Default: the live version, else the newest.")] = None,
) -> None:
    """Write a template version in the folder format that `ccm templates sync` reads (a workflow as
    FOLDER/workflows/KEY.yaml)."""
    from ccm.db import Database
    from ccm.errors import CCMError
    from ccm.templates_engine import files, service
    from ccm.templates_engine.models import TemplateVersion

    database = Database(_settings().resolved_database_url)
    try:
        with database.read() as session:
            template = service.get_template(session, key=key)
            chosen: TemplateVersion | None
            if version is not None:
                chosen = service.get_version(session, template=template, number=version)
            else:
                chosen = service.live_version(session, template) or service.newest_version(session, template)
            if chosen is None:
                raise typer.BadParameter(f"template '{key}' has no version yet")
            metadata = service.template_out(session, template).model_dump(mode="json")
            content = chosen.content
            number = chosen.number
    except CCMError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    if metadata["kind"] == "workflow":
        target = folder / files.WORKFLOWS_FOLDER / f"{key}.yaml"
        files.write_workflow(target, template=metadata, content=content)
    else:
        target = folder / key
        files.write_folder(target, template=metadata, content=content)
    out.print(f"wrote {key} v{number} to {target}", highlight=False)


@app.command()
def demo(
    templates: Annotated[Path, typer.Option(help="The starter templates folder.")] = Path("templates"),
) -> None:
    """Load the demo customers and publish the starter templates (running it again changes nothing)."""
    from ccm.db import Database
    from ccm.demo import load_demo
    from ccm.errors import CCMError
    from ccm.templates_engine.service import make_engine
    from ccm.templates_engine.sync import SyncFailed, publish_all, sync

    settings = _settings()
    database = Database(settings.resolved_database_url)
    try:
        summary = load_demo(database, actor=_cli_actor())
        engine = make_engine(database, settings)
        try:
            report = sync(database, engine, templates, actor=DEMO_AUTHOR)
        except SyncFailed as exc:
            err.print("[red]the starter templates did not sync[/red]:", highlight=False)
            for problem in exc.problems:
                err.print(f"  {problem}", highlight=False, markup=False)
            raise typer.Exit(1) from None
        keys = report.created + [key for key, _ in report.drafts] + report.unchanged
        try:
            published = publish_all(
                database, engine, sorted(set(keys)), author=DEMO_AUTHOR, approver=DEMO_APPROVER
            )
        except CCMError as exc:
            err.print(f"[red]the starter templates could not be published[/red]: {exc}", highlight=False)
            raise typer.Exit(1) from None
    finally:
        database.dispose()
    out.print(
        f"demo: {summary.customers_created} customers created, {summary.customers_updated} updated, "
        f"{summary.customers_unchanged} already up to date; {len(published)} template version(s) published"
    )


@audit_app.command("verify")
def audit_verify(
    chain_only: Annotated[
        bool, typer.Option("--chain-only", help="Check the hash chain only, not the artifacts.")
    ] = False,
) -> None:
    """Recompute the audit hash chain, then read back every artifact the database references; exit 1 and
    name the first broken event, or the first missing or altered artifact and what references it."""
    from rich.markup import escape

    from ccm.audit import verify
    from ccm.communications.delivery import artifact_store
    from ccm.db import Database

    settings = _settings()
    database = Database(settings.resolved_database_url)
    try:
        with database.snapshot() as session:
            result = verify(session, artifacts=None if chain_only else artifact_store(settings))
    finally:
        database.dispose()
    if result.first_problem is None:
        out.print(
            f"audit chain intact: {result.events_checked} events, head {result.head_seq} {result.head_hash}",
            highlight=False,
        )
    else:
        err.print(
            f"[red]audit chain broken at event {result.first_problem.seq}[/red]: "
            f"{result.first_problem.problem}\n({result.events_checked} events before it verified)",
            highlight=False,
        )
    if result.artifact_problem is not None:
        problem = result.artifact_problem
        err.print(
            f"[red]artifact check failed at {problem.referenced_by} {escape(problem.reference_id)}[/red] "
            f"({escape(problem.field)}): {escape(problem.problem)}",
            highlight=False,
        )
    elif result.artifacts_checked is not None:
        out.print(f"artifacts intact: {result.artifacts_checked} references checked", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@print_app.command("batch")
def print_batch(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write the batch's PDF and manifest.")
    ] = Path("."),
    page_size: Annotated[str | None, typer.Option(help="A4 or Letter (default CCM_PRINT_PAGE_SIZE).")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=5000, help="At most this many letters (oldest first).")
    ] = 1000,
) -> None:
    """Gather the letters waiting for print into one PDF and a manifest CSV, written to --out."""
    from ccm.channels.print_batches import NothingToPrint, create_batch
    from ccm.communications.delivery import artifact_store
    from ccm.db import Database

    settings = _settings()
    if page_size not in (None, "A4", "Letter"):
        err.print(f"--page-size must be A4 or Letter, not '{page_size}'", highlight=False)
        raise typer.Exit(2)
    database = Database(settings.resolved_database_url)
    store = artifact_store(settings)
    try:
        batch = create_batch(
            database, store, page_size=page_size or settings.print_page_size, actor=_cli_actor(), limit=limit
        )
    except NothingToPrint as exc:
        out.print(str(exc), highlight=False)
        return
    finally:
        database.dispose()
    out_dir.mkdir(parents=True, exist_ok=True)
    pdf_path, manifest_path = out_dir / f"print-batch-{batch.id}.pdf", out_dir / f"print-batch-{batch.id}.csv"
    pdf_path.write_bytes(store.get(batch.pdf_sha256 or ""))
    manifest_path.write_bytes(store.get(batch.manifest_sha256 or ""))
    out.print(
        f"print batch {batch.id}: {batch.letters} letters, {batch.pages} pages on {batch.sheets} sheets "
        "(duplex)\n"
        f"  {pdf_path}\n  {manifest_path}\n"
        f"When the print house has it: ccm print handed {batch.id}",
        highlight=False,
    )


def _advance_batch(batch_id: str, to: str) -> None:
    from ccm.channels.print_batches import BatchStatus, advance_batch
    from ccm.db import Database
    from ccm.errors import CCMError

    database = Database(_settings().resolved_database_url)
    try:
        batch = advance_batch(database, batch_id, BatchStatus(to), actor=_cli_actor())
    except CCMError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    out.print(f"print batch {batch.id} is {batch.status}: {batch.letters} letters", highlight=False)


@print_app.command("handed")
def print_handed(batch_id: Annotated[str, typer.Argument(help="The batch's id.")]) -> None:
    """Record that a batch went to the print house: its letters are sent."""
    _advance_batch(batch_id, "handed")


@print_app.command("confirmed")
def print_confirmed(batch_id: Annotated[str, typer.Argument(help="The batch's id.")]) -> None:
    """Record the print house's confirmation: its letters are delivered."""
    _advance_batch(batch_id, "confirmed")


@batch_app.command("send")
def batch_send(
    file: Annotated[
        Path, typer.Argument(help="A .jsonl file (one trigger per line) or a .csv file.", exists=True)
    ],
    template: Annotated[str | None, typer.Option(help="CSV: the template of every row.")] = None,
    mapping: Annotated[
        str | None, typer.Option("--map", help='CSV: {"customer": "CustomerNo", "data.amount": "Amount"}')
    ] = None,
) -> None:
    """Store every row of a file as a communication (bad rows reported by number); the pipeline (`ccm serve`
    or `ccm worker`) sends them."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from ccm.communications import batches
    from ccm.db import Database
    from ccm.errors import CCMError

    settings = _settings()
    form = "csv" if file.suffix.lower() == ".csv" else "jsonl"
    if form == "csv" and not template:
        err.print("a CSV file needs --template KEY")
        raise typer.Exit(2)
    database = Database(settings.resolved_database_url)
    try:
        columns = batches.parse_mapping(mapping)
        schema = batches.template_schema(database, template) if template else {}
        batch_id = batches.start(database, format=form, template=template, actor=_cli_actor())
        with (
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
            ) as progress,
            file.open("rb") as stream,
        ):
            task = progress.add_task(file.name, total=file.stat().st_size)

            def chunks() -> Iterator[bytes]:
                while chunk := stream.read(1 << 16):
                    progress.update(task, advance=len(chunk))
                    yield chunk

            lines = batches.split_lines(chunks())
            rows = (
                batches.jsonl_rows(lines)
                if form == "jsonl"
                else batches.csv_rows(lines, template=template or "", mapping=columns, schema=schema)
            )
            done = batches.receive(database, settings, batch_id, rows, actor=_cli_actor())
        with database.read() as session:
            summary = batches.summary(session, batch_id)
    except CCMError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False, markup=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    out.print(f"batch {batch_id}: {done.accepted} accepted, {done.rejected} rejected", highlight=False)
    for error in summary["errors"]:
        problems = "; ".join(f"{p['path'] or '/'}: {p['message']}" for p in error["errors"])
        out.print(f"  row {error['row']}: {problems}", highlight=False, markup=False)
    if done.rejected > len(summary["errors"]):
        out.print(f"  ... and {done.rejected - len(summary['errors'])} more: GET /v1/batches/{batch_id}")


def main() -> None:
    app()
