"""The audit log as a file an auditor can check without ccm: CSV or JSON Lines, streamed.

Events are read in batches by `seq` inside one snapshot (Database.snapshot), so an export is one consistent
state of the log however long the download takes, and never holds more than a batch in memory. Each event
carries its payload as the exact text that was hashed, so docs/audit.md's recipe recomputes every hash.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterable, Iterator, Sequence

from ccm.audit.events import FIELDS, AnyRow, EventFilter, events
from ccm.db import Database

BATCH_SIZE = 1000
# Cells a spreadsheet would run as a formula (and a leading quote, so that the quote ccm adds can always be
# told from one that was there: a cell starting with a quote has had one quote put in front of it).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


class ExportFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


MEDIA_TYPES = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.jsonl: "application/jsonl; charset=utf-8",
}


def csv_cell(value: object) -> str:
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def batches(
    database: Database, filters: EventFilter, *, size: int | None = None
) -> Iterator[Sequence[AnyRow]]:
    """The events that pass `filters`, `size` (BATCH_SIZE) at a time, oldest first, all from one snapshot."""
    size = size or BATCH_SIZE
    with database.snapshot() as session:
        after: int | None = None
        while True:
            rows = events(session, filters, after=after, limit=size)
            if rows:
                yield rows
            if len(rows) < size:
                return
            after = rows[-1].seq


def csv_chunks(batches: Iterable[Sequence[AnyRow]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for rows in batches:
        for row in rows:
            writer.writerow([csv_cell(getattr(row, field)) for field in FIELDS])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()  # the header of an empty export


def jsonl_chunks(batches: Iterable[Sequence[AnyRow]]) -> Iterator[bytes]:
    for rows in batches:
        lines = (
            json.dumps({field: getattr(row, field) for field in FIELDS}, ensure_ascii=False) + "\n"
            for row in rows
        )
        yield "".join(lines).encode()


def stream(database: Database, filters: EventFilter, export_format: ExportFormat) -> Iterator[bytes]:
    chunks = csv_chunks if export_format is ExportFormat.csv else jsonl_chunks
    return chunks(batches(database, filters))
