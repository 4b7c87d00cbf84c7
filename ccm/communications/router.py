"""HTTP endpoints for communications: trigger, read, list, cancel."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

from ccm.auth.deps import DatabaseDep, SettingsDep, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.communications import batches, events, trigger, webhooks
from ccm.communications.pipeline import chunks
from ccm.communications.schemas import AcceptedOut, CommunicationOut, TriggerIn
from ccm.communications.service import CommunicationStatus
from ccm.db import background_writes, utcnow
from ccm.errors import CCMError, FieldError, InvalidInput
from ccm.inputs import InputModel
from ccm.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_position, encode_position

router = APIRouter(tags=["communications"])
log = logging.getLogger(__name__)


def _hand_over(request: Request, accepted: list[tuple[str, dt.datetime]], *, bulk: bool = False) -> None:
    """Queue what was just committed. If the queue cannot take it (Redis away), the communication is stored
    all the same and the relay queues it later: the caller still gets its 202, never a 500 that would make it
    send the communication again."""
    queue = request.app.state.runtime.queue
    try:
        now = utcnow()
        if bulk:  # a batch's: what is due now in chunks, a queue message for many
            for ids in chunks([i for i, due_at in accepted if due_at <= now]):
                queue.route_many(ids)
        for communication_id, due_at in accepted:
            if not bulk or due_at > now:
                queue.route(communication_id, due_at, bulk=bulk)
    except Exception:
        log.exception("could not queue %d communications; the relay will", len(accepted))


Sender = Annotated[Principal, Depends(require(Role.sender))]
Reader = Annotated[Principal, Depends(require(Role.sender, Role.agent, Role.auditor))]
CommunicationId = Annotated[str, Path(min_length=36, max_length=36)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key with the same body replays the first answer (kept 7 days).",
    ),
]
COMMUNICATIONS = "communications"


@router.post(
    "/v1/communications",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AcceptedOut,
    responses={409: {"description": "reference or Idempotency-Key already used"}},
)
def trigger_communication(
    body: TriggerIn,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: Sender,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Accept a communication: checked whole (template published, data against its schema, customer,
    channels and their addresses), stored, then handed to the pipeline. 202 with its id."""
    accepted = trigger.trigger(database, settings, body, principal=principal, idempotency_key=idempotency_key)
    if not accepted.replayed:
        _hand_over(request, [(accepted.communication_id, accepted.due_at)])
    headers = {"Location": f"/v1/communications/{accepted.communication_id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(accepted.body, status_code=accepted.status_code, headers=headers)


@router.get("/v1/communications/{communication_id}", response_model=CommunicationOut)
def get_communication(
    communication_id: CommunicationId, database: DatabaseDep, principal: Reader
) -> CommunicationOut:
    """Its status, exact template version, routing decision, deliveries and timeline."""
    # One snapshot: on PostgreSQL, reads in one transaction otherwise each see the latest commit, and a
    # change committed between them showed its log event without the delivery it changed.
    with database.snapshot() as session:
        return trigger.communication_out(session, trigger.get(session, communication_id))


@router.get("/v1/communications", response_model=Page[CommunicationOut])
def list_communications(
    database: DatabaseDep,
    principal: Reader,
    customer: Annotated[str | None, Query(max_length=128)] = None,
    template: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[CommunicationStatus | None, Query(alias="status")] = None,
    reference: Annotated[str | None, Query(max_length=200)] = None,
    batch: Annotated[str | None, Query(max_length=36)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> Page[CommunicationOut]:
    """Newest first, without deliveries and timeline (ask for one communication for those)."""
    position = decode_position(COMMUNICATIONS, cursor, 2)
    after = (dt.datetime.fromisoformat(position[0]), position[1]) if position else None
    where = trigger.CommunicationFilter(
        customer=customer,
        template=template,
        status=status_.value if status_ else None,
        reference=reference,
        batch=batch,
        since=since,
        until=until,
    )
    with database.snapshot() as session:
        rows, following = trigger.list_communications(session, where=where, after=after, limit=limit)
        return Page[CommunicationOut](
            items=[trigger.communication_out(session, row, full=False) for row in rows],
            next_cursor=encode_position(COMMUNICATIONS, [following[0].isoformat(), following[1]])
            if following
            else None,
        )


@router.post("/v1/communications/{communication_id}/cancel", response_model=CommunicationOut)
def cancel_communication(
    communication_id: CommunicationId, database: DatabaseDep, principal: Sender
) -> CommunicationOut:
    """Cancel it while nothing of it has gone out (409 after)."""
    trigger.cancel(database, communication_id, actor=principal.actor)
    with database.read() as session:
        return trigger.communication_out(session, trigger.get(session, communication_id))


# --- webhook endpoints -----------------------------------------------------------------------------------

Admin = Annotated[Principal, Depends(require())]


class WebhookIn(InputModel):
    url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://[^\s]+$")] = Field(
        description="Where status changes are POSTed (http or https)."
    )
    secret: Annotated[str, StringConstraints(min_length=24, max_length=200)] | None = Field(
        default=None, description="Shared secret for the signature; one is made when not given."
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    active: bool
    created_at: dt.datetime
    created_by: str
    secret: str | None = Field(default=None, description="Shown once, when the webhook is registered.")


@router.post("/v1/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookOut)
def create_webhook(body: WebhookIn, database: DatabaseDep, principal: Admin) -> WebhookOut:
    """Register a URL for every status change, signed with HMAC-SHA256 (see docs/webhooks.md)."""
    with database.transaction() as session:
        endpoint = webhooks.create_endpoint(session, url=body.url, secret=body.secret, actor=principal.actor)
    events.forget_endpoints()  # this process sees it at once; workers within events.ENDPOINTS_TTL seconds
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        active=endpoint.active,
        created_at=endpoint.created_at,
        created_by=endpoint.created_by,
        secret=endpoint.secret,
    )


@router.get("/v1/webhooks", response_model=list[WebhookOut])
def list_webhooks(database: DatabaseDep, principal: Admin) -> list[WebhookOut]:
    with database.read() as session:
        return [
            WebhookOut(id=e.id, url=e.url, active=e.active, created_at=e.created_at, created_by=e.created_by)
            for e in webhooks.endpoints(session)
        ]


@router.delete("/v1/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(
    webhook_id: Annotated[str, Path(max_length=36)], database: DatabaseDep, principal: Admin
) -> None:
    """Stop sending to it; what it was sent stays on record."""
    with database.transaction() as session:
        webhooks.deactivate_endpoint(session, endpoint_id=webhook_id, actor=principal.actor)
    events.forget_endpoints()


# --- batches ------------------------------------------------------------------------------------------------

JSONL_TYPES = {"application/x-ndjson", "application/jsonl", "application/json-lines"}


class UnsupportedMediaType(CCMError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


@router.post("/v1/batches", status_code=status.HTTP_201_CREATED)
async def create_batch(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: Sender,
    template: Annotated[
        str | None, Query(max_length=64, description="CSV: the template of every row.")
    ] = None,
    mapping: Annotated[
        str | None, Query(alias="map", max_length=4000, description='CSV: {"customer": "CustomerNo", ...}')
    ] = None,
) -> JSONResponse:
    """A file of triggers, read as it arrives: JSON Lines (`application/x-ndjson`, a trigger body per line)
    or CSV (`text/csv`, with `template` and maybe `map`). Bad rows are reported by number; the rest go on."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in JSONL_TYPES:
        form = "jsonl"
    elif media_type == "text/csv":
        form = "csv"
        if not template:
            raise InvalidInput([FieldError("query", "/template", "a CSV batch needs the template's key")])
    else:
        raise UnsupportedMediaType("send application/x-ndjson (one trigger per line) or text/csv")
    columns = batches.parse_mapping(mapping)
    schema = await anyio.to_thread.run_sync(batches.template_schema, database, template) if template else {}
    await anyio.to_thread.run_sync(request.app.state.runtime.start_processes)
    batch_id = await anyio.to_thread.run_sync(
        functools.partial(batches.start, database, format=form, template=template, actor=principal.actor)
    )
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            yield chunk

    def hand_over(accepted: list[tuple[str, dt.datetime]]) -> None:
        _hand_over(request, accepted, bulk=True)

    def work() -> None:
        lines = batches.split_lines(chunks())
        rows = (
            batches.jsonl_rows(lines)
            if form == "jsonl"
            else batches.csv_rows(lines, template=template or "", mapping=columns, schema=schema)
        )
        with background_writes():  # big chunks: a single trigger waiting goes first
            batches.receive(
                database,
                settings,
                batch_id,
                rows,
                actor=principal.actor,
                hand_over=hand_over,
            )

    await anyio.to_thread.run_sync(work)
    with database.read() as session:
        body = batches.summary(session, batch_id)
    return JSONResponse(
        jsonable_encoder(body), status_code=201, headers={"Location": f"/v1/batches/{batch_id}"}
    )


@router.get("/v1/batches/{batch_id}")
def get_batch(
    batch_id: Annotated[str, Path(max_length=36)], database: DatabaseDep, principal: Reader
) -> JSONResponse:
    """Counts (accepted, rejected, queued, sent, delivered, failed, suppressed, cancelled) and the first
    rejected rows with their problems."""
    with database.read() as session:
        return JSONResponse(jsonable_encoder(batches.summary(session, batch_id)))
