"""HTTP endpoints for print batches: create one from the letters waiting, fetch its PDF and manifest, and
record that it was handed to the print house and that the print house confirmed it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, Field

from ccm.auth.deps import DatabaseDep, SettingsDep, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.channels import print_batches
from ccm.channels.models import PrintBatch
from ccm.communications.delivery import artifact_store
from ccm.errors import Conflict
from ccm.inputs import InputModel

router = APIRouter(tags=["print"])

Operator = Annotated[Principal, Depends(require(Role.sender))]
Reader = Annotated[Principal, Depends(require(Role.sender, Role.auditor))]
BatchId = Annotated[str, Path(min_length=36, max_length=36, description="The batch's id")]


class PrintBatchIn(InputModel):
    page_size: Literal["A4", "Letter"] | None = Field(
        default=None, description="Which letters to gather; default CCM_PRINT_PAGE_SIZE."
    )
    limit: int = Field(
        default=1000,
        ge=1,
        le=5000,
        description="At most this many letters (those waiting longest) in the batch.",
    )


class PrintBatchOut(BaseModel):
    id: str
    status: print_batches.BatchStatus
    page_size: str
    letters: int
    pages: int
    sheets: int
    pdf_sha256: str | None
    manifest_sha256: str | None
    created_at: dt.datetime
    created_by: str
    handed_at: dt.datetime | None
    handed_by: str | None
    confirmed_at: dt.datetime | None
    confirmed_by: str | None

    @classmethod
    def of(cls, batch: PrintBatch) -> PrintBatchOut:
        return cls.model_validate(batch, from_attributes=True)


@router.post("/v1/print-batches", status_code=status.HTTP_201_CREATED, response_model=PrintBatchOut)
def create_batch(
    database: DatabaseDep, settings: SettingsDep, principal: Operator, body: PrintBatchIn | None = None
) -> PrintBatchOut:
    """Gather the letters waiting for print into one print-ready PDF and a manifest (409 if none wait)."""
    body = body or PrintBatchIn()
    batch = print_batches.create_batch(
        database,
        artifact_store(settings),
        page_size=body.page_size or settings.print_page_size,
        actor=principal.actor,
        limit=body.limit,
    )
    return PrintBatchOut.of(batch)


@router.get("/v1/print-batches", response_model=list[PrintBatchOut])
def list_batches(database: DatabaseDep, principal: Reader) -> list[PrintBatchOut]:
    """The latest 100 batches, newest first."""
    with database.read() as session:
        return [PrintBatchOut.of(b) for b in print_batches.list_batches(session)]


@router.get("/v1/print-batches/{batch_id}", response_model=PrintBatchOut)
def get_batch(batch_id: BatchId, database: DatabaseDep, principal: Reader) -> PrintBatchOut:
    with database.read() as session:
        return PrintBatchOut.of(print_batches.get_batch(session, batch_id))


def _file(database: DatabaseDep, settings: SettingsDep, batch_id: str, which: str) -> Response:
    with database.read() as session:
        batch = print_batches.get_batch(session, batch_id)
    if batch.pdf_sha256 is None or batch.manifest_sha256 is None:
        raise Conflict(f"print batch {batch_id} is still being laid out")
    store = artifact_store(settings)
    if which == "pdf":
        return Response(
            store.get(batch.pdf_sha256),
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="print-batch-{batch.id}.pdf"'},
        )
    return Response(
        store.get(batch.manifest_sha256),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="print-batch-{batch.id}.csv"'},
    )


@router.get("/v1/print-batches/{batch_id}/pdf", response_class=Response)
def batch_pdf(batch_id: BatchId, database: DatabaseDep, settings: SettingsDep, principal: Reader) -> Response:
    """The print-ready PDF, checked against its hash."""
    return _file(database, settings, batch_id, "pdf")


@router.get("/v1/print-batches/{batch_id}/manifest", response_class=Response)
def batch_manifest(
    batch_id: BatchId, database: DatabaseDep, settings: SettingsDep, principal: Reader
) -> Response:
    """The manifest CSV, checked against its hash."""
    return _file(database, settings, batch_id, "manifest")


@router.post("/v1/print-batches/{batch_id}/handed", response_model=PrintBatchOut)
def batch_handed(batch_id: BatchId, database: DatabaseDep, principal: Operator) -> PrintBatchOut:
    """The batch went to the print house: its letters are sent."""
    batch = print_batches.advance_batch(
        database, batch_id, print_batches.BatchStatus.handed, actor=principal.actor
    )
    return PrintBatchOut.of(batch)


@router.post("/v1/print-batches/{batch_id}/confirmed", response_model=PrintBatchOut)
def batch_confirmed(batch_id: BatchId, database: DatabaseDep, principal: Operator) -> PrintBatchOut:
    """The print house confirmed printing and posting: its letters are delivered."""
    batch = print_batches.advance_batch(
        database, batch_id, print_batches.BatchStatus.confirmed, actor=principal.actor
    )
    return PrintBatchOut.of(batch)
