"""Creating communications and moving their deliveries.

`create_communication` checks everything before it writes anything: the template has a live version, the
data satisfies its schema, and every channel asked for has a part and an address. `move` is the only way a
delivery's status changes: forward only (status.can_move), each change an audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.channels import Channel
from ccm.channels.email import make_message_id
from ccm.communications.models import Communication, Delivery, new_id
from ccm.communications.status import DeliveryStatus, can_move
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import utcnow
from ccm.errors import FieldError, InvalidInput, NotFound
from ccm.templates_engine import service as templates
from ccm.templates_engine.models import Category, TemplateKind

ACCEPTED = "accepted"
_ADDRESS = {Channel.email: "email address", Channel.sms: "mobile number", Channel.print: "postal address"}


def postal_address(customer: Customer) -> str | None:
    if not customer.address_line1 or not (customer.address_city or customer.address_postal_code):
        return None
    parts = [
        customer.address_line1,
        customer.address_line2,
        " ".join(p for p in (customer.address_postal_code, customer.address_city) if p),
        customer.address_country,
    ]
    return ", ".join(p for p in parts if p)


def recipient_for(customer: Customer, channel: Channel) -> str | None:
    """Where a delivery on `channel` goes, or None when the customer cannot be reached that way."""
    if channel is Channel.email:
        return customer.email
    if channel is Channel.sms:
        return customer.phone
    if channel is Channel.print:
        return postal_address(customer)
    return customer.external_id  # the portal: every customer has an inbox


def create_communication(
    session: Session,
    settings: Settings,
    *,
    template_key: str,
    customer: Customer,
    data: dict[str, Any],
    channels: Sequence[Channel],
    actor: str,
    options: dict[str, Any] | None = None,
    parent_id: str | None = None,
) -> Communication:
    """One communication with a pending delivery per channel, pinned to the template's live version."""
    template = templates.get_template(session, key=template_key)
    if template.kind is not TemplateKind.communication:
        raise InvalidInput(
            [
                FieldError(
                    "body", "/template", f"'{template_key}' is a {template.kind.value}, not a communication"
                )
            ]
        )
    version = templates.live_version(session, template)
    if version is None:
        raise InvalidInput(
            [FieldError("body", "/template", f"template '{template_key}' has no published version")]
        )
    templates.validate_data(version.content.get("schema"), data)
    parts = version.content.get("parts", {})
    errors = []
    for index, channel in enumerate(channels):
        if channel.value not in parts:
            errors.append(
                FieldError(
                    "body", f"/channels/{index}", f"template '{template_key}' has no {channel.value} part"
                )
            )
        elif recipient_for(customer, channel) is None:
            what = {"email": "email address", "sms": "mobile number", "print": "postal address"}[
                channel.value
            ]
            errors.append(FieldError("body", f"/channels/{index}", f"the customer has no {what}"))
    if len(set(channels)) != len(channels):
        errors.append(FieldError("body", "/channels", "a channel is listed twice"))
    if errors:
        raise InvalidInput(errors)

    now = utcnow()
    communication = Communication(
        id=new_id(),
        template_id=template.id,
        template_version_id=version.id,
        customer_id=customer.id,
        category=template.category.value,
        locale=customer.locale or template.default_locale,
        data=data,
        options=dict(options or {}),
        status=ACCEPTED,
        parent_id=parent_id,
        created_at=now,
        created_by=actor,
    )
    session.add(communication)
    deliveries = []
    for channel in channels:
        delivery = Delivery(
            id=new_id(),
            communication_id=communication.id,
            customer_id=customer.id,
            channel=channel.value,
            status=DeliveryStatus.pending.value,
            recipient=recipient_for(customer, channel),
            details={},
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        if channel is Channel.email:
            delivery.message_id = make_message_id(settings.email_from)
        deliveries.append(delivery)
    session.add_all(deliveries)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="communication.accepted",
        subject_type="communication",
        subject_id=communication.id,
        payload={
            "template": template_key,
            "version": version.number,
            "customer": customer.external_id,
            "category": template.category.value,
            "deliveries": [{"id": d.id, "channel": d.channel} for d in deliveries],
            "parent": parent_id,
        },
    )
    return communication


def get_delivery(session: Session, delivery_id: str, *, for_update: bool = False) -> Delivery:
    query = select(Delivery).where(Delivery.id == delivery_id)
    if for_update:
        query = query.with_for_update()
    delivery = session.scalars(query).one_or_none()
    if delivery is None:
        raise NotFound(f"there is no delivery {delivery_id}")
    return delivery


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
    audit.append(
        session,
        actor=actor,
        action=f"delivery.{status.value}",
        subject_type="delivery",
        subject_id=delivery.id,
        payload={
            "communication": delivery.communication_id,
            "channel": delivery.channel,
            "from": current.value,
            **(payload or {}),
        },
    )
    return True


def is_marketing(communication: Communication) -> bool:
    return communication.category == Category.marketing.value
