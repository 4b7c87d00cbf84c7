"""Reading the audit log for auditors: events filtered by what they concern, oldest first, by `seq`.

An event concerns a customer, template, version or channel through its subject:

- a `customer` event whose subject_id is the customer's external_id (the customer filter only);
- a `communication` event about a communication of that customer, template or version;
- a `delivery` event about a delivery of such a communication (for `channel`: a delivery on that channel,
  and only delivery events concern a channel).

Each kind of subject is one branch of a UNION ALL, every branch carrying all the filters, the position and
the limit, so that each database can walk its indexes (audit_events by subject, communications by customer
or template, deliveries by communication, customer or channel) and stop after one page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, or_, select, union_all
from sqlalchemy.orm import InstrumentedAttribute, Session

from ccm.audit.models import AuditEvent
from ccm.audit.schemas import ArtifactOut, AuditEventOut, CommunicationRecordOut, DeliveryRecordOut
from ccm.communications.models import Communication, Delivery
from ccm.customers.models import Customer
from ccm.templates_engine.models import Template, TemplateVersion

COLUMNS = (
    AuditEvent.seq,
    AuditEvent.occurred_at,
    AuditEvent.actor,
    AuditEvent.action,
    AuditEvent.subject_type,
    AuditEvent.subject_id,
    AuditEvent.payload,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)
FIELDS = tuple(column.key for column in COLUMNS)

AnyRow = Row[*tuple[Any, ...]]
AnySelect = Select[*tuple[Any, ...]]


def timestamp_bound(value: dt.datetime) -> str:
    """A datetime as the text events' occurred_at is stored as (YYYY-MM-DDTHH:MM:SS.ffffffZ), so that a
    bound compares with it as text. A naive datetime is taken as UTC. OverflowError if it leaves year 1-9999
    once in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"  # isoformat pads the year to four digits


@dataclass(frozen=True)
class EventFilter:
    """Every field optional; those given are combined with AND. `since` and `until` are already in the
    stored text form (timestamp_bound); `since` is inclusive, `until` exclusive."""

    customer: str | None = None  # external_id
    template: str | None = None  # key
    version: int | None = None  # number, with template
    channel: str | None = None
    status: str | None = None  # the status an event moved a delivery or communication to
    actor: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None

    @property
    def by_subject(self) -> bool:
        return any(v is not None for v in (self.customer, self.template, self.version, self.channel))


def _common(filters: EventFilter, after: int | None, *, unindexed: bool = False) -> list[ColumnElement[bool]]:
    """The conditions on the event itself. `unindexed` keeps SQLite off the indexes on actor, action and
    occurred_at (`|| ''`), for the queries that must go by subject or by seq instead (see _branches)."""

    def column(attribute: InstrumentedAttribute[str]) -> ColumnElement[str]:
        return attribute.concat("") if unindexed else attribute.expression

    conditions: list[ColumnElement[bool]] = []
    if after is not None:
        conditions.append(AuditEvent.seq > after)
    if filters.actor is not None:
        conditions.append(column(AuditEvent.actor) == filters.actor)
    if filters.action is not None:
        conditions.append(column(AuditEvent.action) == filters.action)
    if filters.status is not None:
        moved_to = [f"delivery.{filters.status}", f"communication.{filters.status}"]
        conditions.append(column(AuditEvent.action).in_(moved_to))
    if filters.since is not None:
        conditions.append(column(AuditEvent.occurred_at) >= filters.since)
    if filters.until is not None:
        conditions.append(column(AuditEvent.occurred_at) < filters.until)
    return conditions


def _communication_conditions(filters: EventFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.customer is not None:
        customer = select(Customer.id).where(Customer.external_id == filters.customer).scalar_subquery()
        conditions.append(Communication.customer_id == customer)
    if filters.template is not None:
        template = select(Template.id).where(Template.key == filters.template).scalar_subquery()
        conditions.append(Communication.template_id == template)
        if filters.version is not None:
            version = (
                select(TemplateVersion.id)
                .join(Template, Template.id == TemplateVersion.template_id)
                .where(Template.key == filters.template, TemplateVersion.number == filters.version)
                .scalar_subquery()
            )
            conditions.append(Communication.template_version_id == version)
    return conditions


def _subjects(filters: EventFilter) -> list[tuple[str, Select[str]]]:
    """For each kind of subject the filters can concern: its subject_type, and the ids of those concerned."""
    about_communications = _communication_conditions(filters)
    deliveries = select(Delivery.id)
    if filters.channel is not None:
        deliveries = deliveries.where(Delivery.channel == filters.channel)
    if filters.template is not None:
        deliveries = deliveries.join(Communication, Communication.id == Delivery.communication_id).where(
            *about_communications
        )
    elif filters.customer is not None:
        customer = select(Customer.id).where(Customer.external_id == filters.customer).scalar_subquery()
        deliveries = deliveries.where(Delivery.customer_id == customer)
    subjects = [("delivery", deliveries)]
    if filters.channel is None:  # only deliveries are on a channel
        subjects.append(("communication", select(Communication.id).where(*about_communications)))
    return subjects


def _branches(filters: EventFilter, dialect: str) -> list[AnySelect]:
    """One query per kind of subject the filters can concern."""
    branches: list[AnySelect] = []
    for kind, ids in _subjects(filters):
        if dialect == "sqlite" and filters.customer is not None:
            # SQLite plans without statistics (unless ANALYZE ran) and would read every event of the kind;
            # a customer's subjects are few, so their events are looked up by subject.
            branches.append(
                select(*COLUMNS).where(AuditEvent.subject_type == kind, AuditEvent.subject_id.in_(ids))
            )
            continue
        subject_type: ColumnElement[str] = AuditEvent.subject_type.expression
        if dialect == "sqlite":
            # A template's or a channel's subjects are many: walk the log by seq and look each event's subject
            # up, stopping after a page. (`|| ''` keeps SQLite off the subject index, which would have it read
            # every event of the kind first.) PostgreSQL chooses by its statistics.
            subject_type = subject_type.concat("")
        concerned = ids.subquery()
        branches.append(
            select(*COLUMNS).join(
                concerned, and_(subject_type == kind, AuditEvent.subject_id == concerned.c.id)
            )
        )
    if filters.template is None and filters.channel is None and filters.customer is not None:
        branches.append(
            select(*COLUMNS).where(
                AuditEvent.subject_type == "customer", AuditEvent.subject_id == filters.customer
            )
        )
    return branches


def events_query(filters: EventFilter, *, after: int | None, limit: int, dialect: str) -> AnySelect:
    """The first `limit` events after `after` that pass the filters, by seq."""
    if not filters.by_subject:
        return select(*COLUMNS).where(*_common(filters, after)).order_by(AuditEvent.seq).limit(limit)
    common = _common(filters, after, unindexed=dialect == "sqlite")
    pages = [
        branch.where(*common).order_by(AuditEvent.seq).limit(limit).subquery()
        for branch in _branches(filters, dialect)
    ]
    if len(pages) == 1:
        return select(pages[0]).order_by(pages[0].c.seq)
    merged = union_all(*(select(page) for page in pages)).subquery()
    return select(merged).order_by(merged.c.seq).limit(limit)


def events(session: Session, filters: EventFilter, *, after: int | None, limit: int) -> Sequence[AnyRow]:
    dialect = session.get_bind().dialect.name
    return session.execute(events_query(filters, after=after, limit=limit, dialect=dialect)).all()


def events_about_communication(session: Session, communication_id: str) -> Sequence[AnyRow]:
    """Every event about a communication or one of its deliveries, in order."""
    deliveries = select(Delivery.id).where(Delivery.communication_id == communication_id)
    return session.execute(
        select(*COLUMNS)
        .where(
            or_(
                and_(AuditEvent.subject_type == "communication", AuditEvent.subject_id == communication_id),
                and_(AuditEvent.subject_type == "delivery", AuditEvent.subject_id.in_(deliveries)),
            )
        )
        .order_by(AuditEvent.seq)
    ).all()


def communication_record(session: Session, communication_id: str) -> CommunicationRecordOut | None:
    """One communication as sent: its content, its deliveries and their artifacts, every event about them."""
    found = session.execute(
        select(
            Communication.id,
            Template.key,
            TemplateVersion.number,
            Customer.external_id,
            Communication.category,
            Communication.locale,
            Communication.data,
            Communication.options,
            Communication.status,
            Communication.parent_id,
            Communication.created_at,
            Communication.created_by,
        )
        .join(Template, Template.id == Communication.template_id)
        .join(TemplateVersion, TemplateVersion.id == Communication.template_version_id)
        .join(Customer, Customer.id == Communication.customer_id)
        .where(Communication.id == communication_id)
    ).one_or_none()
    if found is None:
        return None
    deliveries = session.execute(
        select(
            Delivery.id,
            Delivery.channel,
            Delivery.status,
            Delivery.recipient,
            Delivery.provider_id,
            Delivery.attempts,
            Delivery.last_error,
            Delivery.artifact_sha256,
            Delivery.artifact_size,
            Delivery.media_type,
            Delivery.details,
            Delivery.print_batch_id,
            Delivery.created_at,
            Delivery.updated_at,
        )
        .where(Delivery.communication_id == communication_id)
        .order_by(Delivery.created_at, Delivery.id)
    ).all()
    return CommunicationRecordOut(
        id=found.id,
        template=found.key,
        version=found.number,
        customer=found.external_id,
        category=found.category,
        locale=found.locale,
        data=found.data,
        options=found.options,
        status=found.status,
        parent_id=found.parent_id,
        created_at=found.created_at,
        created_by=found.created_by,
        deliveries=[_delivery_record(d) for d in deliveries],
        events=[AuditEventOut.of(e) for e in events_about_communication(session, communication_id)],
    )


def _delivery_record(row: AnyRow) -> DeliveryRecordOut:
    details = row.details if isinstance(row.details, dict) else {}
    attachments = [
        ArtifactOut.of(str(a.get("sha256")), a.get("size"), a.get("media_type"))
        for a in details.get("attachments") or []
        if isinstance(a, dict)
    ]
    return DeliveryRecordOut(
        id=row.id,
        channel=row.channel,
        status=row.status,
        recipient=row.recipient,
        provider_id=row.provider_id,
        attempts=row.attempts,
        last_error=row.last_error,
        artifact=(
            ArtifactOut.of(row.artifact_sha256, row.artifact_size, row.media_type)
            if row.artifact_sha256 is not None
            else None
        ),
        attachments=attachments,
        details=details,
        print_batch_id=row.print_batch_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
