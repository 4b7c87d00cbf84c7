"""Triggering, reading, listing and cancelling communications: what the HTTP API and batches call."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccm.audit.models import AuditEvent
from ccm.auth.service import Principal
from ccm.channels import Channel
from ccm.communications import queueing, service
from ccm.communications.models import Communication, IdempotencyKey
from ccm.communications.schemas import (
    AcceptedOut,
    CommunicationOut,
    DeliveryOut,
    InlineCustomer,
    TimelineEntry,
    TriggerIn,
)
from ccm.communications.service import CommunicationStatus
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers import service as customers
from ccm.customers.models import Customer
from ccm.customers.schemas import CustomerIn
from ccm.db import Database, utcnow
from ccm.errors import Conflict, FieldError, InvalidInput, NotFound
from ccm.templates_engine.models import Template, TemplateVersion
from ccm.templates_engine.preview import customer_context
from ccm.workflows import service as workflows
from ccm.workflows.models import Task, TaskStatus
from ccm.workflows.schemas import Then

IDEMPOTENCY_DAYS = 7


class IdempotencyConflict(Conflict):
    slug = "idempotency-key-reused"
    title = "This Idempotency-Key was used with another request"


class NotCancellable(Conflict):
    slug = "not-cancellable"
    title = "The communication has gone out already"


@dataclass(frozen=True)
class Accepted:
    status_code: int
    body: dict[str, Any]
    replayed: bool
    communication_id: str
    due_at: dt.datetime


def request_hash(body: TriggerIn) -> str:
    text = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_customer(session: Session, given: str | InlineCustomer, *, actor: str, pointer: str) -> Customer:
    if isinstance(given, str):
        found = session.scalars(select(Customer).where(Customer.external_id == given)).one_or_none()
        if found is None:
            raise InvalidInput([FieldError("body", pointer, f"there is no customer '{given}'", "not_found")])
        return found
    profile = CustomerIn.model_validate(given.model_dump(exclude={"external_id"}))
    customer, _ = customers.upsert_customer(
        session, external_id=given.external_id, profile=profile, actor=actor
    )
    return customer


def checked_row(
    session: Session,
    settings: Settings,
    body: TriggerIn,
    customer: Customer,
    *,
    actor: str,
    now: dt.datetime,
    pointer: str = "",
    batch_id: str | None = None,
    checker: service.Checker | None = None,
) -> tuple[dict[str, Any], service.TemplateFacts]:
    """The row of a trigger checked in every way, with its workflow's decision applied."""
    workflow = (
        workflows.live_workflow(session, body.workflow, pointer=f"{pointer}/workflow")
        if body.workflow
        else None
    )
    facts = (checker or service.Checker(session)).check(
        template_key=body.template,
        customer=customer,
        data=body.data,
        channels=body.channels,
        reference=body.reference,
        pointer=pointer,
    )
    row = service.communication_row(
        facts,
        customer=customer,
        data=body.data,
        channels=body.channels,
        actor=actor,
        now=now,
        reference=body.reference,
        send_at=body.send_at,
        batch_id=batch_id,
        workflow=body.workflow,
    )
    if workflow is not None:
        context = {
            "customer": customer_context(customer),
            "data": body.data,
            "template": {
                "key": facts.template.key,
                "name": facts.template.name,
                "category": facts.template.category.value,
                "version": facts.version.number,
            },
        }
        decision = workflows.decide(workflow, context, pointer=f"{pointer}/workflow")
        row["decision"] = decision
        delay = workflows.delay_of(decision)
        if delay is not None:
            row["due_at"] = row["due_at"] + delay
        row["status"] = _STATUS_AFTER[workflows.outcome_of(decision).then].value
    if row["status"] == CommunicationStatus.accepted.value:
        row["enqueued_at"] = queueing.enqueued_at(settings, row["due_at"], now)
    return row, facts


_STATUS_AFTER = {
    Then.automated: CommunicationStatus.accepted,
    Then.review: CommunicationStatus.in_review,
    Then.agent: CommunicationStatus.with_agent,
    Then.suppress: CommunicationStatus.suppressed,
}


def accept(
    session: Session,
    settings: Settings,
    body: TriggerIn,
    *,
    actor: str,
    batch_id: str | None = None,
    pointer: str = "",
    queued: bool = True,
    checker: service.Checker | None = None,
) -> Communication:
    """Check and store one trigger; nothing is stored if anything in it is wrong. `queued`: the caller hands
    it to the queue once committed; otherwise the relay finds it on its next round."""
    customer = resolve_customer(session, body.customer, actor=actor, pointer=f"{pointer}/customer")
    row, facts = checked_row(
        session,
        settings,
        body,
        customer,
        actor=actor,
        now=utcnow(),
        pointer=pointer,
        batch_id=batch_id,
        checker=checker,
    )
    if not queued:
        row["enqueued_at"] = None
    return service.store_communication(session, row, facts, customer)


@dataclass(frozen=True)
class _Checked:
    """A trigger checked in a read transaction, ready to be written."""

    row: dict[str, Any]
    facts: service.TemplateFacts
    customer: Customer


def _check(
    session: Session, settings: Settings, body: TriggerIn, *, actor: str, now: dt.datetime
) -> _Checked:
    customer = resolve_customer(session, body.customer, actor=actor, pointer="/customer")
    row, facts = checked_row(session, settings, body, customer, actor=actor, now=now)
    return _Checked(row, facts, customer)


def trigger(
    database: Database,
    settings: Settings,
    body: TriggerIn,
    *,
    principal: Principal,
    idempotency_key: str | None,
) -> Accepted:
    digest = request_hash(body)
    try:
        return _trigger_once(database, settings, body, principal, idempotency_key, digest)
    except IntegrityError:
        # A concurrent request won a race: the same Idempotency-Key (answered as it was answered), or the same
        # reference (now seen, so refused as a duplicate).
        return _trigger_once(database, settings, body, principal, idempotency_key, digest)


def _replay(kept: IdempotencyKey | None, digest: str, now: dt.datetime) -> Accepted | None:
    """The first answer to this Idempotency-Key, if it is still kept; 409 for another body."""
    if kept is None or kept.expires_at <= now:
        return None
    if kept.request_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was first used with a different request body; use a new key "
            "for a new request"
        )
    return Accepted(
        kept.status_code,
        kept.response,
        True,
        str(kept.response["id"]),
        dt.datetime.fromisoformat(str(kept.response["due_at"])),
    )


def _trigger_once(
    database: Database,
    settings: Settings,
    body: TriggerIn,
    principal: Principal,
    idempotency_key: str | None,
    digest: str,
) -> Accepted:
    now = utcnow()
    checked = None
    # Everything that only reads is done before the write transaction, so that the write lock (one writer
    # at a time on SQLite) is held for the inserts alone. What changes in between is caught at the write: a
    # reused key or reference by their unique indexes (the retry in trigger() then answers as above).
    with database.read() as session:
        if idempotency_key is not None:
            kept = session.get(IdempotencyKey, (principal.key_id, idempotency_key))
            replayed = _replay(kept, digest, now)
            if replayed is not None:
                return replayed
        if isinstance(body.customer, str):  # an inline customer is upserted, so checked in the write
            checked = _check(session, settings, body, actor=principal.actor, now=now)
    with database.transaction() as session:
        if idempotency_key is not None:
            kept = session.get(IdempotencyKey, (principal.key_id, idempotency_key), with_for_update=True)
            replayed = _replay(kept, digest, now)
            if replayed is not None:
                return replayed
            if kept is not None:
                session.delete(kept)
                session.flush()
        if checked is not None:
            communication = service.store_communication(session, checked.row, checked.facts, checked.customer)
        else:
            communication = accept(session, settings, body, actor=principal.actor)
        response = AcceptedOut(
            id=communication.id, status=communication.status, due_at=communication.due_at
        ).model_dump(mode="json")
        if idempotency_key is not None:
            session.add(
                IdempotencyKey(
                    owner=principal.key_id,
                    key=idempotency_key,
                    request_hash=digest,
                    status_code=202,
                    response=response,
                    created_at=now,
                    expires_at=now + dt.timedelta(days=IDEMPOTENCY_DAYS),
                )
            )
            session.flush()
        return Accepted(202, response, False, communication.id, communication.due_at)


def communication_out(
    session: Session, communication: Communication, *, full: bool = True
) -> CommunicationOut:
    template = session.get_one(Template, communication.template_id)
    version = session.get_one(TemplateVersion, communication.template_version_id)
    customer = session.get_one(Customer, communication.customer_id)
    deliveries = service.deliveries_of(session, communication.id) if full else []
    timeline: list[TimelineEntry] = []
    if full:
        subjects = or_(
            (AuditEvent.subject_type == "communication") & (AuditEvent.subject_id == communication.id),
            (AuditEvent.subject_type == "delivery") & AuditEvent.subject_id.in_([d.id for d in deliveries]),
        )
        timeline = [
            TimelineEntry(
                seq=event.seq,
                occurred_at=event.occurred_at,
                actor=event.actor,
                action=event.action,
                subject=f"{event.subject_type}:{event.subject_id}",
                payload=json.loads(event.payload),
            )
            for event in session.scalars(select(AuditEvent).where(subjects).order_by(AuditEvent.seq))
        ]
    return CommunicationOut(
        id=communication.id,
        template=template.key,
        version=version.number,
        customer=customer.external_id,
        category=communication.category,
        status=communication.status,
        channels=communication.channels,
        workflow=communication.workflow,
        reference=communication.reference,
        due_at=communication.due_at,
        routing=communication.routing,
        decision=communication.decision,
        parent_id=communication.parent_id,
        batch_id=communication.batch_id,
        created_at=communication.created_at,
        created_by=communication.created_by,
        updated_at=communication.updated_at,
        deliveries=[DeliveryOut.model_validate(d, from_attributes=True) for d in deliveries],
        timeline=timeline,
    )


@dataclass(frozen=True)
class CommunicationFilter:
    customer: str | None = None
    template: str | None = None
    status: str | None = None
    reference: str | None = None
    batch: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def list_communications(
    session: Session, *, where: CommunicationFilter, after: tuple[dt.datetime, str] | None, limit: int
) -> tuple[list[Communication], tuple[dt.datetime, str] | None]:
    """Newest first; keyset pagination on (created_at, id)."""
    query = select(Communication)
    if where.customer is not None:
        query = query.join(Customer, Customer.id == Communication.customer_id).where(
            Customer.external_id == where.customer
        )
    if where.template is not None:
        query = query.join(Template, Template.id == Communication.template_id).where(
            Template.key == where.template
        )
    if where.status is not None:
        query = query.where(Communication.status == where.status)
    if where.reference is not None:
        query = query.where(Communication.reference == where.reference)
    if where.batch is not None:
        query = query.where(Communication.batch_id == where.batch)
    if where.since is not None:
        query = query.where(Communication.created_at >= where.since)
    if where.until is not None:
        query = query.where(Communication.created_at < where.until)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                Communication.created_at < at, (Communication.created_at == at) & (Communication.id < last_id)
            )
        )
    rows = list(
        session.scalars(
            query.order_by(Communication.created_at.desc(), Communication.id.desc()).limit(limit + 1)
        )
    )
    page = rows[:limit]
    following = (page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, following


CANCELLABLE = {
    CommunicationStatus.accepted.value,
    CommunicationStatus.in_review.value,
    CommunicationStatus.with_agent.value,
    CommunicationStatus.routed.value,
}


def cancel(database: Database, communication_id: str, *, actor: str) -> None:
    """Cancel a communication that has not gone out: nothing of it sent, handed over or being sent."""
    with database.transaction() as session:
        # Deliveries first, then the communication: the order every status change takes (move -> settle).
        existing = service.deliveries_of(session, communication_id)
        locked = service.lock_deliveries(session, [d.id for d in existing])
        deliveries = [locked[d.id] for d in existing]
        communication = service.get_communication(session, communication_id, for_update=True)
        if communication.status == CommunicationStatus.cancelled.value:
            return
        if communication.status not in CANCELLABLE:
            raise NotCancellable(
                f"communication {communication_id} is {communication.status}: too late to cancel"
            )
        now = utcnow()
        for delivery in deliveries:
            in_flight = delivery.claimed_until is not None and delivery.claimed_until > now
            waiting_for_print = (
                delivery.channel == Channel.print.value
                and delivery.status == DeliveryStatus.queued.value
                and delivery.print_batch_id is None
            )
            if (delivery.status != DeliveryStatus.pending.value and not waiting_for_print) or in_flight:
                raise NotCancellable(
                    f"its {delivery.channel} delivery is {'being sent' if in_flight else delivery.status}: "
                    "too late to cancel"
                )
        for delivery in deliveries:
            service.move(session, delivery, DeliveryStatus.cancelled, actor=actor)
        session.execute(  # a review or a call waiting for it is no longer anyone's to do
            update(Task)
            .where(
                Task.communication_id == communication_id,
                Task.status.in_([TaskStatus.open.value, TaskStatus.claimed.value]),
            )
            .values(status=TaskStatus.cancelled.value, updated_at=now)
        )
        service.set_status(session, communication, CommunicationStatus.cancelled, actor=actor)


def get(session: Session, communication_id: str) -> Communication:
    communication = session.get(Communication, communication_id)
    if communication is None:
        raise NotFound(f"there is no communication {communication_id}")
    return communication
