"""HTTP endpoints for auditors: the log (filtered, paged, exported), one communication's whole record, the
artifacts that were sent, and verification of the chain and the artifacts."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from ccm import audit
from ccm.audit import events, export, records
from ccm.audit.schemas import AuditEventOut, CommunicationRecordOut
from ccm.auth.deps import DatabaseDep, SettingsDep, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.channels import Channel
from ccm.channels.artifacts import ArtifactCorrupted, ArtifactMissing
from ccm.communications.delivery import artifact_store
from ccm.customers.schemas import EXTERNAL_ID_PATTERN
from ccm.db import utcnow
from ccm.errors import Conflict, FieldError, InvalidInput, NotFound
from ccm.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor
from ccm.templates_engine.schemas import KEY_PATTERN

log = logging.getLogger(__name__)

router = APIRouter(tags=["audit"])

Auditor = Annotated[Principal, Depends(require(Role.auditor))]

AUDIT_EVENTS = "audit-events"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Text without control characters (NUL included, which PostgreSQL refuses in a query).
_PLAIN = r"^[^\x00-\x1f\x7f]+$"


class ArtifactCorruptedProblem(Conflict):
    slug = "artifact-corrupted"
    title = "An artifact was altered in the store"


class ArtifactMissingProblem(Conflict):
    slug = "artifact-missing"
    title = "An artifact is missing from the store"


def _bound(name: str, value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    try:
        return events.timestamp_bound(value)
    except (OverflowError, ValueError):
        raise InvalidInput([FieldError("query", f"/{name}", "the date is out of range")]) from None


def event_filter(
    customer: Annotated[
        str | None, Query(pattern=EXTERNAL_ID_PATTERN, description="A customer's external_id")
    ] = None,
    template: Annotated[str | None, Query(pattern=KEY_PATTERN, description="A template's key")] = None,
    version: Annotated[int | None, Query(ge=1, description="A version number of `template`")] = None,
    channel: Annotated[Channel | None, Query(description="Delivery events on this channel")] = None,
    status: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z_]{1,30}$",
            description="Events that moved a delivery or a communication to this status (`delivered`...)",
        ),
    ] = None,
    actor: Annotated[
        str | None, Query(max_length=200, pattern=_PLAIN, description="Such as `key:<id>`")
    ] = None,
    action: Annotated[
        str | None, Query(max_length=100, pattern=_PLAIN, description="Such as `delivery.sent`")
    ] = None,
    since: Annotated[dt.datetime | None, Query(description="ISO 8601; events at or after it")] = None,
    until: Annotated[dt.datetime | None, Query(description="ISO 8601; events before it")] = None,
) -> events.EventFilter:
    """The filters of the log's listing and export, checked at the edge."""
    if version is not None and template is None:
        raise InvalidInput(
            [FieldError("query", "/version", "a version needs its template: give `template` too")]
        )
    lower, upper = _bound("since", since), _bound("until", until)
    if lower is not None and upper is not None and upper <= lower:
        raise InvalidInput([FieldError("query", "/until", "`until` must be later than `since`")])
    return events.EventFilter(
        customer=customer,
        template=template,
        version=version,
        channel=channel.value if channel is not None else None,
        status=status,
        actor=actor,
        action=action,
        since=lower,
        until=upper,
    )


Filters = Annotated[events.EventFilter, Depends(event_filter)]


@router.get("/v1/audit/events", response_model=Page[AuditEventOut])
def list_events(
    database: DatabaseDep,
    principal: Auditor,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> Page[AuditEventOut]:
    """The audit events, oldest first, filtered (all filters combined with AND) and paged by `seq`."""
    after = decode_cursor(AUDIT_EVENTS, cursor)
    with database.read() as session:
        rows = events.events(session, filters, after=after, limit=limit + 1)
    last = rows[limit - 1].seq if len(rows) > limit else None
    return Page[AuditEventOut](
        items=[AuditEventOut.of(row) for row in rows[:limit]], next_cursor=next_cursor(AUDIT_EVENTS, last)
    )


@router.get("/v1/audit/export", response_class=StreamingResponse)
def export_events(
    database: DatabaseDep,
    principal: Auditor,
    filters: Filters,
    export_format: Annotated[export.ExportFormat, Query(alias="format")] = export.ExportFormat.csv,
) -> StreamingResponse:
    """Every event that passes the filters, oldest first, as CSV or JSON Lines with each payload as the
    exact text that was hashed; streamed from one consistent snapshot of the log."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        export.stream(database, filters, export_format),
        media_type=export.MEDIA_TYPES[export_format],
        headers={
            "Content-Disposition": f'attachment; filename="audit-events-{stamp}.{export_format.value}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/v1/audit/communications/{communication_id}", response_model=CommunicationRecordOut)
def communication_record(
    communication_id: Annotated[
        str, Path(min_length=36, max_length=36, description="The communication's id")
    ],
    database: DatabaseDep,
    principal: Auditor,
) -> CommunicationRecordOut:
    """Everything about one communication: what was asked, each delivery with the artifact that was sent, and
    every audit event about the communication or its deliveries, in order."""
    with database.snapshot() as session:
        record = events.communication_record(session, communication_id)
    if record is None:
        raise NotFound(f"there is no communication {communication_id}")
    return record


@router.get(
    "/v1/audit/artifacts/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact's bytes"}},
)
def get_artifact(
    sha256: Annotated[str, Path(pattern=SHA256_PATTERN, description="The artifact's SHA-256, in hex")],
    database: DatabaseDep,
    settings: SettingsDep,
    principal: Auditor,
) -> Response:
    """An artifact a delivery, portal message, portal document or print batch references, checked against its
    hash; 404 for any other file, 409 when the stored bytes no longer match the hash."""
    with database.read() as session:
        reference = records.find_reference(session, sha256)
    if reference is None:
        raise NotFound(f"no delivery, portal document or print batch references artifact {sha256}")
    where = f"{reference.kind} {reference.id}"
    try:
        content = artifact_store(settings).get(sha256)
    except ArtifactCorrupted:
        log.error("artifact %s (referenced by %s) failed its hash check: it was altered", sha256, where)
        raise ArtifactCorruptedProblem(
            f"artifact {sha256} was altered: the stored bytes no longer match their hash", sha256=sha256
        ) from None
    except ArtifactMissing:
        log.error("artifact %s (referenced by %s) is missing from the store", sha256, where)
        raise ArtifactMissingProblem(
            f"artifact {sha256} is referenced by {where} but missing from the store", sha256=sha256
        ) from None
    return Response(
        content,
        media_type=records.safe_media_type(reference.media_type) or "application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{sha256}"',
            "ETag": f'"{sha256}"',
            "Cache-Control": "private, no-store",
            # An email or portal HTML must never run as a page of the API's origin.
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/v1/audit/verify")
def verify_chain(
    database: DatabaseDep,
    settings: SettingsDep,
    principal: Auditor,
    artifacts: Annotated[
        bool, Query(description="Also read back every artifact the database references (default)")
    ] = True,
) -> dict[str, Any]:
    """Recompute the whole hash chain, then check every referenced artifact: `first_problem` names the first
    event that does not fit, `artifacts.first_problem` the first artifact (or row) that does not."""
    store = artifact_store(settings) if artifacts else None
    with database.snapshot() as session:
        return audit.verify(session, artifacts=store).as_dict()
