"""Print batches: the letters waiting for print gathered into one print-ready PDF and a manifest.

- Letters are sorted by country and postal code (what a print house needs for postage discounts), then by
  when they were made.
- Each letter starts on a new sheet: a letter with an odd number of pages is followed by a blank page, so a
  duplex printer never prints one customer's first page on the back of another's last.
- The manifest (CSV) has a row per letter: sequence, delivery id, customer, address, pages, sheets and the
  letter's first page in the batch PDF. Both files are artifacts, hash-checked when read back.
- A batch is created -> handed (to the print house: its letters are `sent`) -> confirmed (printed and posted:
  `delivered`). Each step is logged. A letter is in one batch at most.
"""

from __future__ import annotations

import csv
import enum
import io
import tempfile
from dataclasses import dataclass

from pypdf import PdfReader, PdfWriter
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.channels import Channel
from ccm.channels.artifacts import Artifact, ArtifactStore
from ccm.channels.models import PrintBatch
from ccm.communications import service as communications
from ccm.communications.models import Delivery, new_id
from ccm.communications.status import DeliveryStatus
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.errors import Conflict, NotFound

MANIFEST_COLUMNS = (
    "sequence",
    "delivery_id",
    "customer",
    "name",
    "address",
    "postal_code",
    "country",
    "pages",
    "sheets",
    "first_page",
)


def _cell(value: str) -> str:
    """A spreadsheet opening the manifest must not run a name like '=HYPERLINK(...)' as a formula."""
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


class BatchStatus(enum.StrEnum):
    building = "building"  # letters reserved, the PDF being laid out
    created = "created"
    handed = "handed"  # given to the print house
    confirmed = "confirmed"  # the print house confirmed printing and posting


class NothingToPrint(Conflict):
    slug = "nothing-to-print"
    title = "No letters are waiting for print"


@dataclass(frozen=True)
class _Letter:
    delivery: Delivery
    customer: Customer


def _oldest_waiting(session: Session, page_size: str, limit: int) -> list[str]:
    """The ids of the `limit` letters of this page size that have waited longest: every letter gets its turn,
    whatever its postcode."""
    rows = session.execute(
        select(Delivery.id, Delivery.details)
        .where(
            Delivery.channel == Channel.print.value,
            Delivery.status == DeliveryStatus.queued.value,
            Delivery.print_batch_id.is_(None),
        )
        .order_by(Delivery.created_at, Delivery.id)
    )
    chosen: list[str] = []
    for delivery_id, details in rows:
        if (details or {}).get("page_size", "A4") == page_size:
            chosen.append(delivery_id)
            if len(chosen) == limit:
                break
    return chosen


def _reserve(database: Database, *, page_size: str, actor: str, limit: int) -> tuple[str, list[_Letter]]:
    """A batch row (building) holding the letters chosen, in a short transaction: two batches made at once
    never take the same letter, and other writers wait for milliseconds, not for the PDF."""
    with database.transaction() as session:
        ids = _oldest_waiting(session, page_size, limit)
        rows = session.execute(
            select(Delivery, Customer)
            .join(Customer, Customer.id == Delivery.customer_id)
            .where(
                Delivery.id.in_(ids),
                Delivery.status == DeliveryStatus.queued.value,
                Delivery.print_batch_id.is_(None),
            )
            .with_for_update(of=Delivery)
        ).all()
        if not rows:
            raise NothingToPrint(f"no {page_size} letters are waiting for print")
        batch = PrintBatch(
            id=new_id(),
            status=BatchStatus.building.value,
            page_size=page_size,
            letters=len(rows),
            pages=0,
            sheets=0,
            created_at=utcnow(),
            created_by=actor,
        )
        session.add(batch)
        session.flush()
        letters = [_Letter(d, c) for d, c in rows]
        for item in letters:
            item.delivery.print_batch_id = batch.id
    # Postage: by destination.
    letters.sort(
        key=lambda x: (x.delivery.details.get("country", ""), x.delivery.details.get("postal_code", ""))
    )
    return batch.id, letters


@dataclass(frozen=True)
class _Built:
    pdf: Artifact
    manifest: Artifact
    pages: int
    sheets: int


def _build(artifacts: ArtifactStore, letters: list[_Letter]) -> _Built:
    writer = PdfWriter()
    manifest = io.StringIO()
    table = csv.writer(manifest, lineterminator="\r\n")
    table.writerow(MANIFEST_COLUMNS)
    total_sheets = 0
    for sequence, item in enumerate(letters, start=1):
        delivery = item.delivery
        reader = PdfReader(io.BytesIO(artifacts.get(delivery.artifact_sha256 or "")))
        first_page = len(writer.pages) + 1
        for page in reader.pages:
            writer.add_page(page)
        if len(reader.pages) % 2:
            last = reader.pages[-1].mediabox
            writer.add_blank_page(width=float(last.width), height=float(last.height))
        sheets = (len(reader.pages) + 1) // 2
        total_sheets += sheets
        table.writerow(
            [
                sequence,
                delivery.id,
                _cell(item.customer.external_id),
                _cell(delivery.details.get("name") or item.customer.name),
                _cell(delivery.recipient or ""),
                _cell(delivery.details.get("postal_code", "")),
                _cell(delivery.details.get("country", "")),
                len(reader.pages),
                sheets,
                first_page,
            ]
        )
    writer.add_metadata({"/Title": f"Print batch ({len(letters)} letters)", "/Producer": "ccm"})
    with tempfile.TemporaryFile() as file:
        writer.write(file)
        file.seek(0)
        pdf = artifacts.put(file.read())
    return _Built(pdf, artifacts.put(manifest.getvalue().encode()), len(writer.pages), total_sheets)


def create_batch(
    database: Database, artifacts: ArtifactStore, *, page_size: str, actor: str, limit: int = 1000
) -> PrintBatch:
    """Gather the letters waiting longest (of one page size) into a batch: reserved, then laid out into one
    PDF and a manifest outside any transaction, then recorded. If the layout fails, the letters are released
    and no batch remains. NothingToPrint if none wait."""
    batch_id, letters = _reserve(database, page_size=page_size, actor=actor, limit=limit)
    try:
        built = _build(artifacts, letters)
    except BaseException:
        with database.transaction() as session:
            for delivery in session.scalars(select(Delivery).where(Delivery.print_batch_id == batch_id)):
                delivery.print_batch_id = None
            session.delete(get_batch(session, batch_id))
        raise
    with database.transaction() as session:
        batch = get_batch(session, batch_id, for_update=True)
        batch.status = BatchStatus.created.value
        batch.pages, batch.sheets = built.pages, built.sheets
        batch.pdf_sha256, batch.manifest_sha256 = built.pdf.sha256, built.manifest.sha256
        audit.append(
            session,
            actor=actor,
            action="print_batch.created",
            subject_type="print_batch",
            subject_id=batch.id,
            payload={
                "letters": batch.letters,
                "pages": batch.pages,
                "sheets": batch.sheets,
                "pdf": batch.pdf_sha256,
                "manifest": batch.manifest_sha256,
                "deliveries": [item.delivery.id for item in letters],
            },
        )
        return batch


def get_batch(session: Session, batch_id: str, *, for_update: bool = False) -> PrintBatch:
    query = select(PrintBatch).where(PrintBatch.id == batch_id)
    if for_update:
        query = query.with_for_update()
    batch = session.scalars(query).one_or_none()
    if batch is None:
        raise NotFound(f"there is no print batch {batch_id}")
    return batch


def list_batches(session: Session, *, limit: int = 100) -> list[PrintBatch]:
    return list(session.scalars(select(PrintBatch).order_by(PrintBatch.created_at.desc()).limit(limit)))


_NEXT = {
    BatchStatus.handed: (BatchStatus.created, DeliveryStatus.sent),
    BatchStatus.confirmed: (BatchStatus.handed, DeliveryStatus.delivered),
}


def advance_batch(database: Database, batch_id: str, to: BatchStatus, *, actor: str) -> PrintBatch:
    """Hand a created batch to the print house, or confirm a handed one; its letters move with it. Doing
    the same step again changes nothing; skipping or reversing a step is a conflict."""
    required, delivery_status = _NEXT[to]
    with database.transaction() as session:
        batch = get_batch(session, batch_id, for_update=True)
        if batch.status == to.value:
            return batch
        if batch.status != required.value:
            raise Conflict(
                f"print batch {batch_id} is {batch.status}: it must be {required.value} to be {to.value}"
            )
        now = utcnow()
        batch.status = to.value
        if to is BatchStatus.handed:
            batch.handed_at, batch.handed_by = now, actor
        else:
            batch.confirmed_at, batch.confirmed_by = now, actor
        deliveries = session.scalars(
            select(Delivery)
            .where(Delivery.print_batch_id == batch.id)
            .order_by(Delivery.id)
            .with_for_update()
        )
        for delivery in deliveries:
            communications.move(
                session, delivery, delivery_status, actor=actor, payload={"print_batch": batch.id}
            )
        audit.append(
            session,
            actor=actor,
            action=f"print_batch.{to.value}",
            subject_type="print_batch",
            subject_id=batch.id,
            payload={"letters": batch.letters},
        )
        return batch
