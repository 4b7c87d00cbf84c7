"""Batch files of triggers: JSON Lines (one trigger body per line) or CSV (one row per communication, with
the template and a column mapping given as parameters). Read as a stream, never whole: rows are checked
one by one and stored in chunks; a bad row is recorded with its number and problems and the rest go on.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccm import audit
from ccm.communications import service, trigger
from ccm.communications.models import Batch, BatchError, Communication, new_id
from ccm.communications.schemas import TriggerIn
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.errors import CCMError, FieldError, InvalidInput, NotFound
from ccm.templates_engine import service as templates

CHUNK = 500
MAX_LINE = 1_000_000
TOO_LONG = b"\x00too long\x00"  # what split_lines gives for a line over MAX_LINE
csv.field_size_limit(MAX_LINE)  # a cell may be as long as a line
_TOO_LONG_PROBLEM = {"path": "", "message": f"the line is longer than {MAX_LINE} bytes", "type": "too_long"}
SHOWN_ERRORS = 100


@dataclass
class Progress:
    accepted: int = 0
    rejected: int = 0
    handed: list[tuple[str, dt.datetime]] = field(default_factory=list)  # (id, due_at) to queue


def _pydantic_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"path": "".join(f"/{p}" for p in error["loc"]), "message": str(error["msg"]), "type": error["type"]}
        for error in exc.errors()
    ]


def _field_errors(errors: list[FieldError]) -> list[dict[str, Any]]:
    return [{"path": e.path, "message": e.message, "type": e.type} for e in errors]


def jsonl_rows(lines: Iterable[bytes]) -> Iterator[tuple[int, TriggerIn | list[dict[str, Any]]]]:
    for number, line in enumerate(lines, start=1):
        if line is TOO_LONG:
            yield number, [_TOO_LONG_PROBLEM]
            continue
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a byte order mark some tools write
        if not line.strip():
            continue
        try:
            yield number, TriggerIn.model_validate_json(line)
        except ValidationError as exc:
            yield number, _pydantic_errors(exc)


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    """A CSV cell as the template's schema wants it: numbers, integers and booleans from their text."""
    kind = schema.get("type")
    if value == "" and kind != "string":
        return None
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value) if any(c in value for c in ".eE") else int(value)
        if kind == "boolean" and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
    except ValueError:
        return value  # the schema check names it
    return value


def csv_rows(
    lines: Iterable[bytes], *, template: str, mapping: dict[str, str], schema: dict[str, Any]
) -> Iterator[tuple[int, TriggerIn | list[dict[str, Any]]]]:
    """Each row a trigger of `template`. `mapping` names the column of each field ("customer",
    "reference", "send_at", "channels", or "data.<name>"); unmapped columns go to data under their header."""
    numbers: list[int] = []  # how many lines were read: records may span lines (quoted newlines)

    def decoded() -> Iterator[str]:
        for number, line in enumerate(lines, start=1):
            numbers.append(number)
            if line is TOO_LONG:
                yield "\x00too long\x00\n"
                continue
            # Undecodable bytes are kept as stand-ins, and the row holding them is refused by number.
            yield line.decode("utf-8-sig" if number == 1 else "utf-8", "surrogateescape")

    reader = csv.reader(decoded())
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InvalidInput([FieldError("body", "/", f"the CSV header cannot be read: {exc}")]) from None
    by_field = {target: column for target, column in mapping.items()}
    missing = [column for column in by_field.values() if column not in header]
    if missing:
        raise InvalidInput(
            [FieldError("query", "/map", f"no column named {', '.join(missing)} in the header")]
        )
    mapped_columns = set(by_field.values())
    customer_column = by_field.get("customer") or ("customer" if "customer" in header else "external_id")
    properties = schema.get("properties", {})
    while True:
        number = len(numbers) + 1  # the line this record starts on
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield number, [{"path": "", "message": f"not CSV: {exc}", "type": "csv"}]
            continue
        if not any(values):
            continue
        if any("\x00too long\x00" in v for v in values):
            yield number, [_TOO_LONG_PROBLEM]
            continue
        if any(any("\udc80" <= c <= "\udcff" for c in v) for v in values):
            yield number, [{"path": "", "message": "the row is not UTF-8 text", "type": "encoding"}]
            continue
        row = dict(zip(header, values, strict=False))
        if len(values) != len(header):
            yield (
                number,
                [{"path": "", "message": f"{len(values)} cells for {len(header)} columns", "type": "shape"}],
            )
            continue
        data: dict[str, Any] = {}
        for column, value in row.items():
            if column in mapped_columns or column in {customer_column, "reference", "send_at", "channels"}:
                continue
            data[column] = _coerce(value, properties.get(column, {}))
        for target, column in by_field.items():
            if target.startswith("data."):
                name = target.removeprefix("data.")
                data[name] = _coerce(row[column], properties.get(name, {}))
        body: dict[str, Any] = {"template": template, "customer": row.get(customer_column, ""), "data": data}
        data = {k: v for k, v in data.items() if v is not None}
        body["data"] = data
        for name in ("reference", "send_at", "channels"):
            cell = row.get(by_field.get(name, name), "")
            if cell:
                body[name] = cell.replace(";", " ").split() if name == "channels" else cell
        try:
            yield number, TriggerIn.model_validate(body)
        except ValidationError as exc:
            yield number, _pydantic_errors(exc)


def start(database: Database, *, format: str, template: str | None, actor: str) -> str:
    with database.transaction() as session:
        batch = Batch(
            id=new_id(),
            status="receiving",
            format=format,
            template_key=template,
            accepted=0,
            rejected=0,
            created_at=utcnow(),
            created_by=actor,
        )
        session.add(batch)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="batch.started",
            subject_type="batch",
            subject_id=batch.id,
            payload={"format": format, "template": template},
        )
        return batch.id


def template_schema(database: Database, template: str) -> dict[str, Any]:
    with database.read() as session:
        found = templates.get_template(session, key=template)
        live = templates.live_version(session, found)
        if live is None:
            raise InvalidInput(
                [FieldError("query", "/template", f"template '{template}' has no published version")]
            )
        schema: dict[str, Any] = live.content.get("schema") or {}
        return schema


def _store_chunk(
    database: Database,
    settings: Settings,
    batch_id: str,
    rows: list[tuple[int, TriggerIn | list[dict[str, Any]]]],
    actor: str,
    queued: bool,
) -> Progress:
    try:
        return _store(database, settings, batch_id, rows, actor, queued, bulk=True)
    except IntegrityError:
        # A reference taken meanwhile by another request: store this chunk row by row, so only that row fails.
        return _store(database, settings, batch_id, rows, actor, queued, bulk=False)


def _store(
    database: Database,
    settings: Settings,
    batch_id: str,
    rows: list[tuple[int, TriggerIn | list[dict[str, Any]]]],
    actor: str,
    queued: bool,
    *,
    bulk: bool,
) -> Progress:
    """One chunk in one transaction. Rows naming a known customer are checked in Python and inserted
    together, with their audit events chained in one go; rows with a customer profile to upsert go one by
    one. Templates, schemas and customers are read once per chunk."""
    progress = Progress()
    with database.transaction() as session:
        checker = service.Checker(session)
        now = utcnow()
        wanted = {r.customer for _, r in rows if isinstance(r, TriggerIn) and isinstance(r.customer, str)}
        # Plain rows, not ORM objects: a chunk reads hundreds of customers, and checking a row needs only
        # their columns (addresses, locale, ids), read the same way.
        table = cast(Table, Customer.__table__)
        known = {
            row.external_id: cast(Customer, row)
            for row in (
                session.execute(select(table).where(table.c.external_id.in_(wanted))) if wanted else []
            )
        }
        if bulk:
            checker.look_up_references(
                (r.template, r.reference) for _, r in rows if isinstance(r, TriggerIn) and r.reference
            )
        inserts: list[dict[str, Any]] = []
        events: list[audit.NewEvent] = []
        problems_by_row: list[BatchError] = []
        for number, row in rows:
            if isinstance(row, list):
                problems_by_row.append(BatchError(batch_id=batch_id, row=number, errors=row))
                continue
            try:
                if bulk and isinstance(row.customer, str) and row.workflow is None:
                    customer = known.get(row.customer)
                    if customer is None:
                        what = f"there is no customer '{row.customer}'"
                        raise InvalidInput([FieldError("body", "/customer", what, "not_found")])
                    values, facts = trigger.checked_row(
                        session,
                        settings,
                        row,
                        customer,
                        actor=actor,
                        now=now,
                        batch_id=batch_id,
                        checker=checker,
                    )
                    if not queued:
                        values["enqueued_at"] = None
                    inserts.append(values)
                    events.append(service.accepted_event(values, facts, customer))
                    progress.handed.append((values["id"], values["due_at"]))
                else:
                    with session.begin_nested():
                        communication = trigger.accept(
                            session,
                            settings,
                            row,
                            actor=actor,
                            batch_id=batch_id,
                            queued=queued,
                            checker=checker,
                        )
                    progress.handed.append((communication.id, communication.due_at))
                progress.accepted += 1
            except InvalidInput as exc:
                problems_by_row.append(
                    BatchError(batch_id=batch_id, row=number, errors=_field_errors(exc.errors))
                )
            except CCMError as exc:
                problem = {"path": "", "message": str(exc), "type": exc.slug}
                problems_by_row.append(BatchError(batch_id=batch_id, row=number, errors=[problem]))
        if inserts:
            session.execute(
                insert(cast(Table, Communication.__table__)), inserts
            )  # Core: no ORM bookkeeping per row
        audit.append_many(session, events)
        session.add_all(problems_by_row)
        progress.rejected = len(problems_by_row)
        batch = session.get_one(Batch, batch_id, with_for_update=True)
        batch.accepted += progress.accepted
        batch.rejected += progress.rejected
    return progress


def receive(
    database: Database,
    settings: Settings,
    batch_id: str,
    rows: Iterable[tuple[int, TriggerIn | list[dict[str, Any]]]],
    *,
    actor: str,
    hand_over: Callable[[list[tuple[str, dt.datetime]]], None] | None = None,
) -> Progress:
    """Store every row, a chunk at a time; each chunk's communications are handed to the pipeline as soon as
    they are committed (without `hand_over`, the relay finds them). If reading fails half-way, what was
    stored stays, and the batch says it was cut short."""
    total = Progress()
    chunk: list[tuple[int, TriggerIn | list[dict[str, Any]]]] = []

    def flush() -> None:
        done = _store_chunk(database, settings, batch_id, chunk, actor, queued=hand_over is not None)
        total.accepted += done.accepted
        total.rejected += done.rejected
        if hand_over is not None:
            hand_over(done.handed)
        chunk.clear()

    try:
        for item in rows:
            chunk.append(item)
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    except BaseException:
        with database.transaction() as session:
            batch = session.get_one(Batch, batch_id, with_for_update=True)
            batch.status, batch.finished_at = "cut_short", utcnow()
        raise
    with database.transaction() as session:
        batch = session.get_one(Batch, batch_id, with_for_update=True)
        batch.status, batch.finished_at = "received", utcnow()
        audit.append(
            session,
            actor=actor,
            action="batch.received",
            subject_type="batch",
            subject_id=batch_id,
            payload={"accepted": batch.accepted, "rejected": batch.rejected},
        )
    return total


def summary(session: Session, batch_id: str) -> dict[str, Any]:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"there is no batch {batch_id}")
    statuses: dict[str, int] = {
        status: count
        for status, count in session.execute(
            select(Communication.status, func.count())
            .where(Communication.batch_id == batch_id)
            .group_by(Communication.status)
        )
    }
    errors = session.scalars(
        select(BatchError).where(BatchError.batch_id == batch_id).order_by(BatchError.row).limit(SHOWN_ERRORS)
    )
    return {
        "id": batch.id,
        "status": batch.status,
        "format": batch.format,
        "template": batch.template_key,
        "accepted": batch.accepted,
        "rejected": batch.rejected,
        "queued": statuses.get("accepted", 0) + statuses.get("routed", 0),
        "sent": statuses.get("sent", 0),
        "delivered": statuses.get("delivered", 0),
        "failed": statuses.get("failed", 0),
        "suppressed": statuses.get("suppressed", 0),
        "cancelled": statuses.get("cancelled", 0),
        "created_at": batch.created_at,
        "created_by": batch.created_by,
        "finished_at": batch.finished_at,
        "errors": [{"row": e.row, "errors": e.errors} for e in errors],
    }


def parse_mapping(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        mapping = json.loads(raw)
    except ValueError:
        mapping = None
    allowed = {"customer", "reference", "send_at", "channels"}
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and (k in allowed or k.startswith("data."))
        for k, v in mapping.items()
    ):
        raise InvalidInput(
            [
                FieldError(
                    "query",
                    "/map",
                    "a JSON object of field -> column, fields being customer, reference, send_at, channels "
                    'or data.<name>: {"customer": "CustomerNo", "data.amount": "Amount"}',
                )
            ]
        )
    return mapping


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (each with its newline) from a stream of byte chunks, however the chunks cut them. A line longer
    than MAX_LINE is not kept: it comes out as TOO_LONG, and reading goes on at the next line."""
    partial = bytearray()
    skipping = False
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if skipping:
                skipping = False
            else:
                partial += chunk[start : end + 1]
                yield TOO_LONG if len(partial) > MAX_LINE else bytes(partial)
            partial.clear()
            start = end + 1
        if not skipping:
            partial += chunk[start:]
            if len(partial) > MAX_LINE:
                yield TOO_LONG
                partial.clear()
                skipping = True
    if partial and not skipping:
        yield bytes(partial)
