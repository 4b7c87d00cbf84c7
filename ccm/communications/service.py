"""Creating communications and moving their deliveries.

`create_communication` checks everything before it writes anything: the template has a live version, the
data satisfies its schema, and every channel asked for has a part and an address. `move` is the only way a
delivery's status changes: forward only (status.can_move), each change an audit event.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import BindParameter, Select, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from ccm import audit
from ccm.channels import Channel
from ccm.channels.email import make_message_id
from ccm.communications import events, queueing, routing
from ccm.communications.models import Communication, Delivery, new_id
from ccm.communications.status import DeliveryStatus, can_move
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.customers.service import StoredProfile
from ccm.db import lock_name, utcnow
from ccm.errors import CCMError, Conflict, FieldError, InvalidInput, NotFound
from ccm.templates_engine import service as templates
from ccm.templates_engine.models import Category, Template, TemplateKind, TemplateVersion
from ccm.workflows import service as workflows


class CommunicationStatus(enum.StrEnum):
    accepted = "accepted"  # stored; waiting for its send_at or for routing
    in_review = "in_review"  # a workflow gave it to people to review first
    with_agent = "with_agent"  # a workflow gave it to a person to handle (a call, a visit)
    routed = "routed"  # channels decided; deliveries made
    sent = "sent"  # at least one delivery left ccm
    delivered = "delivered"  # at least one delivery reached the customer
    failed = "failed"  # every channel tried failed
    suppressed = "suppressed"  # consent, e-delivery or a frequency cap left no channel
    cancelled = "cancelled"


# Sent never follows delivered: a late SMS "sent" must not step a communication back.
# What a communication's status may not become once it is: nothing replaces delivered but (never) an
# earlier word for it; cancelled and suppressed are final. "failed" may follow "sent": an SMS Twilio accepted
# can still be reported undelivered.
_NOT_AFTER = {
    CommunicationStatus.delivered: {
        CommunicationStatus.sent,
        CommunicationStatus.failed,
        CommunicationStatus.routed,
    },
    CommunicationStatus.cancelled: set(CommunicationStatus),
    CommunicationStatus.suppressed: set(CommunicationStatus),
}


GIVEN_UP = frozenset({DeliveryStatus.failed, DeliveryStatus.undelivered, DeliveryStatus.cancelled})

# The expanding `ids` parameter of every statement over many rows at once (bound as {"ids": [...]}).
IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_DELIVERIES = cast(Table, Delivery.__table__)
_COMMUNICATIONS = cast(Table, Communication.__table__)


class DuplicateReference(Conflict):
    slug = "duplicate-reference"
    title = "This reference was already used"


_ADDRESS = {Channel.email: "email address", Channel.sms: "mobile number", Channel.print: "postal address"}


def postal_address(customer: StoredProfile) -> str | None:
    if not customer.address_line1 or not (customer.address_city or customer.address_postal_code):
        return None
    parts = [
        customer.address_line1,
        customer.address_line2,
        " ".join(p for p in (customer.address_postal_code, customer.address_city) if p),
        customer.address_country,
    ]
    return ", ".join(p for p in parts if p)


def recipient_for(customer: StoredProfile, channel: Channel) -> str | None:
    """Where a delivery on `channel` goes, or None when the customer cannot be reached that way."""
    if channel is Channel.email:
        return customer.email
    if channel is Channel.sms:
        return customer.phone
    if channel is Channel.print:
        return postal_address(customer)
    return customer.external_id  # the portal: every customer has an inbox


@dataclass(frozen=True)
class TemplateFacts:
    """What checking a trigger needs of its template, read once for a run of triggers."""

    template: Template
    version: TemplateVersion
    parts: frozenset[str]
    validator: templates.DataValidator | None


class Checker:
    """Checks triggers before anything is written: the template is a published communication, the data
    satisfies its schema, each channel has a part and an address, the reference is new. Remembers templates
    (and compiled schemas) and the references it has let through, for a batch's run of triggers."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._templates: dict[str, TemplateFacts] = {}
        self._references: set[tuple[int, str]] = set()
        # References looked up ahead for a batch's chunk: the communication holding each, or None if free.
        self._looked_up: dict[tuple[int, str], str | None] = {}

    def look_up_references(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Find which of these (template key, reference) pairs are taken, in one query per template, so
        that check() need not ask row by row. Unknown templates are left for check() to report."""
        by_template: dict[str, set[str]] = {}
        for key, reference in wanted:
            by_template.setdefault(key, set()).add(reference)
        for key, references in by_template.items():
            try:
                template_id = self.template(key).template.id
            except CCMError:
                continue
            taken = dict(
                self.session.execute(
                    select(Communication.reference, Communication.id).where(
                        Communication.template_id == template_id, Communication.reference.in_(references)
                    )
                ).all()
            )
            for reference in references:
                self._looked_up[(template_id, reference)] = taken.get(reference)

    def template(self, key: str, *, pointer: str = "") -> TemplateFacts:
        facts = self._templates.get(key)
        if facts is not None:
            return facts
        template = templates.get_template(self.session, key=key)
        if template.kind is not TemplateKind.communication:
            what = f"'{key}' is a {template.kind.value}, not a communication"
            raise InvalidInput([FieldError("body", f"{pointer}/template", what)])
        version = templates.live_version(self.session, template)
        if version is None:
            what = f"template '{key}' has no published version"
            raise InvalidInput([FieldError("body", f"{pointer}/template", what)])
        schema = version.content.get("schema")
        facts = TemplateFacts(
            template, version, frozenset(version.content.get("parts", {})), templates.data_validator(schema)
        )
        self._templates[key] = facts
        return facts

    def check(
        self,
        *,
        template_key: str,
        customer: Customer,
        data: dict[str, Any],
        channels: Sequence[Channel],
        reference: str | None,
        pointer: str = "",
    ) -> TemplateFacts:
        facts = self.template(template_key, pointer=pointer)
        if facts.validator is not None:
            errors = facts.validator.errors(data, pointer=f"{pointer}/data")
            if errors:
                raise InvalidInput(errors)
        errors = []
        for index, channel in enumerate(channels):
            where = f"{pointer}/channels/{index}"
            if channel.value not in facts.parts:
                errors.append(
                    FieldError("body", where, f"template '{template_key}' has no {channel.value} part")
                )
            elif recipient_for(customer, channel) is None:
                errors.append(FieldError("body", where, f"the customer has no {_ADDRESS[channel]}"))
        if len(set(channels)) != len(channels):
            errors.append(FieldError("body", f"{pointer}/channels", "a channel is listed twice"))
        if errors:
            raise InvalidInput(errors)
        if reference is not None:
            key = (facts.template.id, reference)
            if key in self._looked_up:
                taken = self._looked_up[key]
            else:
                taken = self.session.scalar(
                    select(Communication.id).where(
                        Communication.template_id == facts.template.id, Communication.reference == reference
                    )
                )
            if taken is not None or key in self._references:
                raise DuplicateReference(
                    f"reference '{reference}' was already used for template '{template_key}'"
                    + (f" by communication {taken}" if taken else " earlier in this batch"),
                    communication=taken,
                )
            self._references.add(key)
        return facts


def communication_row(
    facts: TemplateFacts,
    *,
    customer: Customer,
    data: dict[str, Any],
    channels: Sequence[Channel],
    actor: str,
    now: dt.datetime,
    options: dict[str, Any] | None = None,
    parent_id: str | None = None,
    workflow: str | None = None,
    reference: str | None = None,
    send_at: dt.datetime | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """The columns of a new, accepted communication."""
    return {
        "id": new_id(),
        "template_id": facts.template.id,
        "template_version_id": facts.version.id,
        "customer_id": customer.id,
        "category": facts.template.category.value,
        "locale": customer.locale or facts.template.default_locale,
        "data": data,
        "options": dict(options or {}),
        "status": CommunicationStatus.accepted.value,
        "channels": [c.value for c in channels],
        "workflow": workflow,
        "reference": reference,
        "due_at": max(send_at, now) if send_at is not None else now,
        "routing": {},
        "decision": None,
        "batch_id": batch_id,
        "parent_id": parent_id,
        "created_at": now,
        "created_by": actor,
        "updated_at": now,
        "enqueued_at": None,
    }


def accepted_event(row: dict[str, Any], facts: TemplateFacts, customer: Customer) -> audit.NewEvent:
    return audit.NewEvent(
        actor=row["created_by"],
        action="communication.accepted",
        subject_type="communication",
        subject_id=row["id"],
        payload={
            "template": facts.template.key,
            "version": facts.version.number,
            "customer": customer.external_id,
            "category": row["category"],
            "channels": row["channels"],
            "send_at": row["due_at"] if row["due_at"] > row["created_at"] else None,
            "reference": row["reference"],
            "workflow": row["workflow"],
            "batch": row["batch_id"],
            "parent": row["parent_id"],
        },
    )


def decided_event(row: dict[str, Any]) -> audit.NewEvent:
    return audit.NewEvent(
        actor=row["created_by"],
        action="communication.decided",
        subject_type="communication",
        subject_id=row["id"],
        payload=row["decision"],
    )


def create_communication(
    session: Session,
    settings: Settings,
    *,
    template_key: str,
    customer: Customer,
    data: dict[str, Any],
    channels: Sequence[Channel] = (),
    actor: str,
    options: dict[str, Any] | None = None,
    parent_id: str | None = None,
    workflow: str | None = None,
    reference: str | None = None,
    send_at: dt.datetime | None = None,
    batch_id: str | None = None,
    now: dt.datetime | None = None,
    checker: Checker | None = None,
) -> Communication:
    """A communication, accepted and pinned to the template's live version; routing makes its deliveries.
    Everything is checked first: nothing is written for a request that cannot be sent as asked."""
    facts = (checker or Checker(session)).check(
        template_key=template_key, customer=customer, data=data, channels=channels, reference=reference
    )
    row = communication_row(
        facts,
        customer=customer,
        data=data,
        channels=channels,
        actor=actor,
        now=now or utcnow(),
        options=options,
        parent_id=parent_id,
        workflow=workflow,
        reference=reference,
        send_at=send_at,
        batch_id=batch_id,
    )
    return store_communication(session, row, facts, customer)


def store_communication(
    session: Session, row: dict[str, Any], facts: TemplateFacts, customer: Customer
) -> Communication:
    """Writes a checked communication (see communication_row) and its `communication.accepted` event; with
    a workflow's decision, the `communication.decided` event too, and the task it gives people."""
    communication = Communication(**row)
    session.add(communication)
    session.flush()
    events = [accepted_event(row, facts, customer)]
    if row.get("decision") is not None:
        events.append(decided_event(row))
        workflows.open_task(
            session, communication_id=row["id"], decision=row["decision"], now=row["created_at"]
        )
    audit.append_many(session, events)
    if row["status"] != CommunicationStatus.accepted.value:
        # Held for people, or suppressed, by its workflow: the integrator hears of it as of any status change.
        emit_status(session, row["id"], row["status"], row["reference"])
    return communication


def delivery_row(
    settings: Settings, communication_id: str, customer_id: int, recipient: str | None, channel: Channel
) -> dict[str, Any]:
    """The columns of a new, pending delivery (every column a new one sets, so that many insert together)."""
    now = utcnow()
    return {
        "id": new_id(),
        "communication_id": communication_id,
        "customer_id": customer_id,
        "channel": channel.value,
        "status": DeliveryStatus.pending.value,
        "recipient": recipient,
        "message_id": make_message_id(settings.email_from) if channel is Channel.email else None,
        "details": {},
        "attempts": 0,
        "enqueued_at": None,
        "created_at": now,
        "updated_at": now,
    }


def new_delivery(
    session: Session, settings: Settings, communication: Communication, customer: Customer, channel: Channel
) -> Delivery:
    delivery = Delivery(
        **delivery_row(settings, communication.id, customer.id, recipient_for(customer, channel), channel)
    )
    session.add(delivery)
    return delivery


def get_communication(session: Session, communication_id: str, *, for_update: bool = False) -> Communication:
    query = select(Communication).where(Communication.id == communication_id)
    if for_update:
        query = query.with_for_update()
    communication = session.scalars(query).one_or_none()
    if communication is None:
        raise NotFound(f"there is no communication {communication_id}")
    return communication


def set_status(
    session: Session,
    communication: Communication,
    status: CommunicationStatus,
    *,
    actor: str,
    payload: dict[str, Any] | None = None,
) -> None:
    if not may_become(communication.status, status):
        return
    previous = communication.status
    communication.status = status.value
    communication.updated_at = utcnow()
    _log_status(
        session, communication.id, previous, status, communication.reference, actor=actor, payload=payload
    )


def may_become(current: str, status: CommunicationStatus) -> bool:
    """Whether a communication at `current` may take `status` (a change, and not one _NOT_AFTER forbids)."""
    return current != status.value and status not in _NOT_AFTER.get(CommunicationStatus(current), set())


def _log_status(
    session: Session,
    communication_id: str,
    previous: str,
    status: CommunicationStatus,
    reference: str | None,
    *,
    actor: str,
    payload: dict[str, Any] | None,
) -> None:
    """A communication's status change: its log event and its webhook event."""
    audit.append(
        session,
        actor=actor,
        action=f"communication.{status.value}",
        subject_type="communication",
        subject_id=communication_id,
        payload={"from": previous, **(payload or {})},
    )
    emit_status(
        session,
        communication_id,
        status.value,
        reference,
        **({"reason": payload["reason"]} if payload and "reason" in payload else {}),
    )


def emit_status(
    session: Session, communication_id: str, status: str, reference: str | None, **extra: Any
) -> None:
    """The outbound webhook event of a communication's status change (written in the same transaction)."""
    events.emit(
        session,
        f"communication.{status}",
        {"communication": communication_id, "status": status, "reference": reference, **extra},
    )


class RoutableCommunication(routing.Routable, Protocol):
    """What routing reads of an accepted communication: a row of _ROUTE_ROWS."""

    @property
    def customer_id(self) -> int: ...
    @property
    def template_version_id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def reference(self) -> str | None: ...


class RoutableCustomer(routing.Recipient, StoredProfile, Protocol):
    pass


# What routing reads of communications, locked, in the order every lock on more than one takes.
_ROUTE_ROWS = (
    select(
        Communication.id,
        Communication.customer_id,
        Communication.template_version_id,
        Communication.category,
        Communication.status,
        Communication.channels,
        Communication.decision,
        Communication.reference,
        Communication.due_at,
        Communication.batch_id,
    )
    .where(Communication.id.in_(IDS))
    .order_by(Communication.id)
    .with_for_update()
)


_INSERT_DELIVERIES = insert(_DELIVERIES)
_ROUTED = (
    update(_COMMUNICATIONS)
    .where(_COMMUNICATIONS.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        routing=bindparam("b_routing", type_=_COMMUNICATIONS.c.routing.type),
        updated_at=bindparam("b_updated_at", type_=_COMMUNICATIONS.c.updated_at.type),
    )
)
_REQUEUED = (
    update(_COMMUNICATIONS)
    .where(_COMMUNICATIONS.c.id == bindparam("b_id"))
    .values(enqueued_at=bindparam("b_enqueued_at", type_=_COMMUNICATIONS.c.enqueued_at.type))
)
# Whole rows of the customers whose ids are bound as `ids` (routing's, and a delivery chunk's).
CUSTOMER_ROWS = select(*cast(Table, Customer.__table__).c).where(Customer.id.in_(IDS))
_ROUTE_PARTS = select(TemplateVersion.id, TemplateVersion.content).where(TemplateVersion.id.in_(IDS))


@dataclass(frozen=True)
class NewDelivery:
    id: str
    communication_id: str
    channel: str
    bulk: bool  # a batch's


@dataclass
class RoutedMany:
    """What route_many() made, for the caller to hand over once it has committed: the new deliveries (each
    recorded as queued now), and the communications not yet due, as (id, due time, a batch's)."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    later: list[tuple[str, dt.datetime, bool]] = field(default_factory=list)


def route_many(
    session: Session, settings: Settings, communication_ids: Iterable[str], *, actor: str
) -> RoutedMany:
    """Decide the channels of the accepted communications among these that are due, and make their first
    deliveries (all of them, or the first of a fallback chain), with their log and webhook events; the ones
    not yet due are recorded as queued again for their time. The communications are locked here.

    Rows, not ORM objects, read and written with a statement a table for them all: loading, tracking and
    flushing each communication, customer and delivery was most of what routing a batch's chunk cost."""
    now = utcnow()
    result = RoutedMany()
    communications = list(session.execute(_ROUTE_ROWS, {"ids": list(set(communication_ids))}))
    customer_ids = {c.customer_id for c in communications}
    customers = {c.id: c for c in session.execute(CUSTOMER_ROWS, {"ids": list(customer_ids)})}
    versions = {c.template_version_id for c in communications}
    parts = {
        v.id: frozenset(v.content.get("parts", {}))
        for v in session.execute(_ROUTE_PARTS, {"ids": list(versions)})
    }
    consents = routing.consents_of_many(session, customer_ids)
    # Frequency caps lock (customer, category) while routing; for many customers at once, taken up front in
    # one order, so that two chunks never wait on each other's.
    for customer_id, category in sorted(
        {(c.customer_id, c.category) for c in communications if c.category in settings.frequency_caps}
    ):
        lock_name(session, f"cap:{customer_id}:{category}")
    requeued: list[dict[str, Any]] = []
    routed: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    enqueued_at = queueing.enqueued_at(settings, now, now)  # each new delivery's: handed over at once

    def write() -> None:
        for statement, rows in ((_REQUEUED, requeued), (_ROUTED, routed), (_INSERT_DELIVERIES, deliveries)):
            if rows:
                session.execute(statement, rows)
                rows.clear()

    for communication in communications:
        if communication.status != CommunicationStatus.accepted.value:
            continue
        bulk = communication.batch_id is not None
        if communication.due_at > now:
            # Early (a scheduled send, a delay rounded down, clocks apart): queued again till due.
            requeued.append(
                {
                    "b_id": communication.id,
                    "b_enqueued_at": queueing.enqueued_at(settings, communication.due_at, now),
                }
            )
            result.later.append((communication.id, communication.due_at, bulk))
            continue
        if communication.category in settings.frequency_caps:
            write()  # the cap counts what the database says went out: the ones routed before this too
        status, decision, made = _route_one(
            session,
            settings,
            communication,
            customers[communication.customer_id],
            parts[communication.template_version_id],
            actor=actor,
            now=now,
            consents=consents[communication.customer_id],
        )
        routed.append(
            {
                "b_id": communication.id,
                "b_status": status.value,
                "b_routing": {**decision.as_dict(), "decided_at": now.isoformat()},
                "b_updated_at": now,
            }
        )
        for row in made:
            row["enqueued_at"] = enqueued_at
            deliveries.append(row)
            result.deliveries.append(NewDelivery(row["id"], communication.id, row["channel"], bulk))
    write()
    for communication in communications:
        # An ORM object of one in the session (the caller made it) reads its new status, not its old.
        known = session.identity_map.get(identity_key(Communication, communication.id))
        if known is not None:
            session.expire(known)
    return result


def _route_one(
    session: Session,
    settings: Settings,
    communication: RoutableCommunication,
    customer: RoutableCustomer,
    parts: Set[str],
    *,
    actor: str,
    now: dt.datetime,
    consents: Mapping[tuple[str, str], bool],
) -> tuple[CommunicationStatus, routing.Decision, list[dict[str, Any]]]:
    """One communication's decision, its status after it, and the rows of its first deliveries; its log and
    webhook events are written here."""
    reachable = {c for c in Channel if recipient_for(customer, c) is not None}
    decision = routing.decide(
        session,
        settings,
        communication=communication,
        customer=customer,
        parts=parts,
        reachable=reachable,
        now=now,
        consents=consents,
    )
    for suppressed in decision.suppressed:
        audit.append(
            session,
            actor=actor,
            action="communication.suppressed",
            subject_type="communication",
            subject_id=communication.id,
            payload=suppressed,
        )
    first = decision.chain if decision.mode == "all" else decision.chain[:1]
    deliveries = [
        delivery_row(settings, communication.id, customer.id, recipient_for(customer, channel), channel)
        for channel in first
    ]
    if deliveries:
        status = CommunicationStatus.routed
        payload = {
            **decision.as_dict(),
            "deliveries": [{"id": d["id"], "channel": d["channel"]} for d in deliveries],
        }
    else:
        status = CommunicationStatus.suppressed
        payload = decision.as_dict()
    _log_status(
        session,
        communication.id,
        communication.status,
        status,
        communication.reference,
        actor=actor,
        payload=payload,
    )
    return status, decision, deliveries


def fall_back(session: Session, settings: Settings, delivery: Delivery, *, actor: str) -> Delivery | None:
    """After a delivery failed for good: the next channel of the communication's fallback chain, if any.
    Only once per failure, however often it is asked: only when every delivery so far has failed and this is
    the latest (a second worker, or the relay, finds the next delivery already made)."""
    communication = get_communication(session, delivery.communication_id, for_update=True)
    if communication.routing.get("mode") != "fallback":
        return None
    existing = deliveries_of(session, communication.id)
    if any(DeliveryStatus(d.status) not in GIVEN_UP for d in existing) or existing[-1].id != delivery.id:
        return None
    chain = [Channel(c) for c in communication.routing.get("chain", [])]
    tried = {d.channel for d in existing}
    remaining = [c for c in chain if c.value not in tried]
    if not remaining:
        return None
    customer = session.get_one(Customer, communication.customer_id)
    following = new_delivery(session, settings, communication, customer, remaining[0])
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="communication.fallback",
        subject_type="communication",
        subject_id=communication.id,
        payload={
            "failed": {"id": delivery.id, "channel": delivery.channel},
            "next": {"id": following.id, "channel": following.channel},
        },
    )
    return following


def settle(session: Session, communication: Communication, *, actor: str) -> None:
    """The communication's status from its deliveries'."""
    deliveries = deliveries_of(session, communication.id)
    status = settled(communication.routing, [(d.channel, d.status, d.print_batch_id) for d in deliveries])
    if status is not None:
        set_status(session, communication, status, actor=actor)


def settled(
    routing: Mapping[str, Any], deliveries: Iterable[tuple[str, str, str | None]]
) -> CommunicationStatus | None:
    """What a communication's deliveries, as (channel, status, print batch), make its status: delivered
    once one is, sent once one left, failed when every one failed and nothing is left to try; None while
    they say nothing yet."""
    statuses: set[DeliveryStatus] = set()
    tried: set[str] = set()
    for channel, status, print_batch_id in deliveries:
        tried.add(channel)
        # A letter waiting for its print batch has not left: it can still be cancelled.
        if (
            channel == Channel.print.value
            and status == DeliveryStatus.queued.value
            and print_batch_id is None
        ):
            statuses.add(DeliveryStatus.pending)
        else:
            statuses.add(DeliveryStatus(status))
    untried = [c for c in routing.get("chain", []) if c not in tried]
    if routing.get("mode") == "fallback" and untried:
        statuses.add(DeliveryStatus.pending)  # the next channel of the chain is still to come
    if statuses & {DeliveryStatus.delivered, DeliveryStatus.read}:
        return CommunicationStatus.delivered
    if statuses & {DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.sent}:
        return CommunicationStatus.sent
    if statuses and statuses <= GIVEN_UP:
        if statuses == {DeliveryStatus.cancelled}:
            return CommunicationStatus.cancelled
        return CommunicationStatus.failed
    return None


def get_delivery(session: Session, delivery_id: str, *, for_update: bool = False) -> Delivery:
    query = select(Delivery).where(Delivery.id == delivery_id)
    if for_update:
        query = query.with_for_update()
    delivery = session.scalars(query).one_or_none()
    if delivery is None:
        raise NotFound(f"there is no delivery {delivery_id}")
    return delivery


def lock_deliveries(session: Session, delivery_ids: Iterable[str]) -> dict[str, Delivery]:
    """Several deliveries locked for update, in the order of their ids: the order every lock on more than
    one delivery takes (a cancel here; a chunk's claim and record in their own Core statements), so that
    two never wait on each other."""
    return {
        delivery.id: delivery for delivery in session.scalars(_LOCK_DELIVERIES, {"ids": set(delivery_ids)})
    }


# The statements over many rows at once (above and below) are built once: they run in every chunk's
# transactions, and building a statement costs more than running it.


def locking_deliveries(*columns: Any) -> Select[Any]:
    """A statement locking the deliveries whose ids are bound as `ids`, in the order of their ids (the
    order every lock on more than one delivery takes), and reading `columns` of them."""
    return select(*columns).where(Delivery.id.in_(IDS)).order_by(Delivery.id).with_for_update()


_LOCK_DELIVERIES = locking_deliveries(Delivery)
_DELIVERY_ROWS = locking_deliveries(
    Delivery.id,
    Delivery.communication_id,
    Delivery.channel,
    Delivery.status,
    Delivery.print_batch_id,
    Delivery.attempts,
    Delivery.details,
)
_COMMUNICATION_ROWS = (
    select(Communication.id, Communication.status, Communication.routing, Communication.reference)
    .where(Communication.id.in_(IDS))
    .order_by(Communication.id)
    .with_for_update()
)
_OTHER_DELIVERY_ROWS = select(
    Delivery.id, Delivery.communication_id, Delivery.channel, Delivery.status, Delivery.print_batch_id
).where(Delivery.communication_id.in_(IDS), Delivery.id.not_in(bindparam("known", expanding=True)))
_RECORD_MOVE = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"))
    .values(
        attempts=bindparam("b_attempts"),
        last_error=None,
        claimed_until=None,
        status=bindparam("b_status"),
        provider_id=bindparam("b_provider_id"),
        details=bindparam("b_details", type_=_DELIVERIES.c.details.type),
        updated_at=bindparam("b_updated_at", type_=_DELIVERIES.c.updated_at.type),
    )
)
_RECORD_ATTEMPT = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"))
    .values(attempts=bindparam("b_attempts"), last_error=None, claimed_until=None)
)
_SETTLE_COMMUNICATION = (
    update(_COMMUNICATIONS)
    .where(_COMMUNICATIONS.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        updated_at=bindparam("b_updated_at", type_=_COMMUNICATIONS.c.updated_at.type),
    )
)
_RELEASE = update(_DELIVERIES).where(_DELIVERIES.c.id.in_(IDS)).values(claimed_until=None)


def deliveries_of(session: Session, communication_id: str) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.communication_id == communication_id)
            .order_by(Delivery.created_at)
        )
    )


def move(
    session: Session,
    delivery: Delivery,
    status: DeliveryStatus,
    *,
    actor: str,
    payload: dict[str, Any] | None = None,
) -> bool:
    """Move a delivery forward to `status` and log it; a move backwards or sideways changes nothing and
    answers False. The caller holds the delivery's row lock (get_delivery(for_update=True))."""
    current = DeliveryStatus(delivery.status)
    if not can_move(current, status):
        return False
    delivery.status = status.value
    delivery.updated_at = utcnow()
    _log_move(
        session, delivery.id, delivery.communication_id, delivery.channel, current, status, actor, payload
    )
    settle(session, get_communication(session, delivery.communication_id, for_update=True), actor=actor)
    return True


def _log_move(
    session: Session,
    delivery_id: str,
    communication_id: str,
    channel: str,
    current: DeliveryStatus,
    status: DeliveryStatus,
    actor: str,
    payload: dict[str, Any] | None,
) -> None:
    """A delivery's move: its log event and its webhook event."""
    audit.append(
        session,
        actor=actor,
        action=f"delivery.{status.value}",
        subject_type="delivery",
        subject_id=delivery_id,
        payload={
            "communication": communication_id,
            "channel": channel,
            "from": current.value,
            **(payload or {}),
        },
    )
    events.emit(
        session,
        f"delivery.{status.value}",
        {
            "communication": communication_id,
            "delivery": delivery_id,
            "channel": channel,
            "status": status.value,
            **({"reason": payload["error"]} if payload and payload.get("error") else {}),
        },
    )


@dataclass(frozen=True)
class Answer:
    """What a provider answered when a delivery was sent."""

    delivery_id: str
    status: DeliveryStatus
    provider_id: str | None
    details: Mapping[str, Any]


@dataclass
class _Settling:
    """A communication locked by record_answers(): its status as it goes, and its deliveries' (channel,
    status, print batch) by id."""

    status: str
    previous: str
    routing: dict[str, Any]
    reference: str | None
    deliveries: dict[str, tuple[str, str, str | None]]


def record_answers(
    session: Session, answers: Sequence[Answer], *, release: Sequence[str] = (), actor: str
) -> dict[str, tuple[DeliveryStatus, bool]]:
    """Record the sends of many claimed deliveries at once (a chunk of a batch's email and SMS), as move()
    and settle() record one: each attempt counted and its claim released, each delivery moved forward and
    logged, then its communication settled and logged, in that order. The claims of `release` (left unsent)
    are released. Answers each delivery's status afterwards, and whether it moved.

    Core statements on rows, not the ORM's unit of work: at a chunk's size, loading, tracking and flushing
    the objects was most of this transaction's cost. The locks are taken as lock_deliveries() and move()
    take them: the deliveries, then their communications, each in the order of their ids."""
    ids = [answer.delivery_id for answer in answers] + list(release)
    rows = {row.id: row for row in session.execute(_DELIVERY_ROWS, {"ids": ids})}
    communication_ids = sorted({rows[answer.delivery_id].communication_id for answer in answers})
    held: dict[str, _Settling] = {}
    if communication_ids:
        held = {
            row.id: _Settling(row.status, row.status, row.routing, row.reference, {})
            for row in session.execute(_COMMUNICATION_ROWS, {"ids": communication_ids})
        }
        for row in [
            *rows.values(),
            *session.execute(_OTHER_DELIVERY_ROWS, {"ids": communication_ids, "known": ids}),
        ]:
            if row.communication_id in held:
                held[row.communication_id].deliveries[row.id] = (row.channel, row.status, row.print_batch_id)
    now = utcnow()  # once the locks are held: no earlier than a change committed while waiting for them
    moves: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    answered: dict[str, tuple[DeliveryStatus, bool]] = {}
    for answer in answers:
        row = rows[answer.delivery_id]
        current = DeliveryStatus(row.status)
        if not can_move(current, answer.status):
            attempts.append({"b_id": row.id, "b_attempts": row.attempts + 1})
            answered[row.id] = (current, False)
            continue
        moves.append(
            {
                "b_id": row.id,
                "b_attempts": row.attempts + 1,
                "b_status": answer.status.value,
                "b_provider_id": answer.provider_id,
                "b_details": {**row.details, **answer.details},
                "b_updated_at": now,
            }
        )
        answered[row.id] = (answer.status, True)
        payload = {"provider_id": answer.provider_id}
        _log_move(session, row.id, row.communication_id, row.channel, current, answer.status, actor, payload)
        communication = held[row.communication_id]
        communication.deliveries[row.id] = (row.channel, answer.status.value, row.print_batch_id)
        status = settled(communication.routing, communication.deliveries.values())
        if status is not None and may_become(communication.status, status):
            previous, communication.status = communication.status, status.value
            _log_status(
                session,
                row.communication_id,
                previous,
                status,
                communication.reference,
                actor=actor,
                payload=None,
            )
    if moves:
        session.execute(_RECORD_MOVE, moves)
    if attempts:
        session.execute(_RECORD_ATTEMPT, attempts)
    changed = [
        {"b_id": communication_id, "b_status": c.status, "b_updated_at": now}
        for communication_id, c in held.items()
        if c.status != c.previous
    ]
    if changed:
        session.execute(_SETTLE_COMMUNICATION, changed)
    if release:
        session.execute(_RELEASE, {"ids": list(release)})
    return answered


class _Categorised(Protocol):
    @property
    def category(self) -> str: ...


def is_marketing(communication: _Categorised) -> bool:
    return communication.category == Category.marketing.value
