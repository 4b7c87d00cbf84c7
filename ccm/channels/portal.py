"""The customer portal: each portal delivery puts a message (sanitized HTML, documents such as the letter PDF)
in the customer's inbox; customers reach it through a signed link that expires.

Links carry an itsdangerous token naming one customer, signed with the service's secret (CCM_SECRET_KEY)
and timestamped; CCM_PORTAL_LINK_DAYS bounds their age. A link reaches that customer's inbox and nothing else:
another customer's message id is answered 404, as if it did not exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import nh3
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm.channels import Channel
from ccm.channels.base import Envelope, Prepared, Sent
from ccm.channels.models import PortalDocument, PortalMessage
from ccm.communications import service as communications
from ccm.communications.models import Delivery
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.unsubscribe import timed_tokens
from ccm.db import utcnow
from ccm.errors import CCMError, NotFound

_SALT = "ccm.portal.v1"
# What a portal message may contain. No scripts, styles, forms or frames; links open safely; images only
# from data: URLs (the page's Content-Security-Policy blocks remote ones: no tracking pixels).
_URL_SCHEMES = {"https", "mailto", "tel", "data"}


def _no_remote_images(tag: str, attribute: str, value: str) -> str | None:
    """data: URLs for images only (never a link to download), and images from nowhere else."""
    is_data = value.strip().lower().startswith("data:")
    if tag == "img" and attribute in {"src", "srcset"}:
        return value if is_data else None
    return None if is_data else value


def sanitize(html: str) -> str:
    return nh3.clean(
        html, url_schemes=_URL_SCHEMES, link_rel="noopener noreferrer", attribute_filter=_no_remote_images
    )


class LinkExpired(CCMError):
    status = 403
    slug = "link-expired"
    title = "This link has expired"


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return timed_tokens(settings, _SALT)


def portal_token(settings: Settings, *, external_id: str) -> str:
    return str(_serializer(settings).dumps({"c": external_id}))


def portal_link(settings: Settings, *, external_id: str) -> str:
    base = str(settings.public_base_url).rstrip("/")
    return f"{base}/portal/{portal_token(settings, external_id=external_id)}"


@dataclass(frozen=True)
class PortalLink:
    external_id: str
    expires_at: dt.datetime


def read_portal_link(settings: Settings, token: str) -> PortalLink:
    """The customer a link is for, and when it stops working. Expired: LinkExpired (403). Forged or
    damaged: NotFound (404)."""
    max_age = dt.timedelta(days=settings.portal_link_days)
    try:
        claims, signed_at = _serializer(settings).loads(
            token, max_age=int(max_age.total_seconds()), return_timestamp=True
        )
        return PortalLink(str(claims["c"]), signed_at + max_age)
    except SignatureExpired:
        raise LinkExpired("this portal link has expired: ask us for a new one") from None
    except (BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("this portal link is not valid") from None


def read_portal_token(settings: Settings, token: str) -> str:
    return read_portal_link(settings, token).external_id


class PortalAdapter:
    """The portal channel: the sanitized HTML is the artifact. Sending hands nothing to anyone: the message
    goes into the inbox (put_in_inbox) in the same transaction that records the delivery delivered."""

    channel = Channel.portal

    def prepare(self, envelope: Envelope) -> Prepared:
        title = " ".join((envelope.fields.get("title") or envelope.title).split())[:300]
        return Prepared(
            content=sanitize(envelope.fields.get("html", "")).encode(),
            media_type="text/html; charset=utf-8",
            details={"title": title},
            attachments=envelope.attachments,
        )

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        return Sent(status=DeliveryStatus.delivered)


def put_in_inbox(session: Session, delivery: Delivery, prepared: Prepared, *, title: str) -> str:
    """The delivery's message in its customer's inbox, with its documents; answers the message's id."""
    existing = session.scalars(
        select(PortalMessage.id).where(PortalMessage.delivery_id == delivery.id)
    ).first()
    if existing is not None:
        return existing
    message = PortalMessage(
        customer_id=delivery.customer_id,
        delivery_id=delivery.id,
        title=title,
        html_sha256=hashlib.sha256(prepared.content).hexdigest(),
        created_at=utcnow(),
    )
    session.add(message)
    session.flush()
    for attachment in prepared.attachments:
        session.add(
            PortalDocument(
                message_id=message.id,
                filename=attachment.filename,
                media_type=attachment.media_type,
                sha256=hashlib.sha256(attachment.content).hexdigest(),
                size=len(attachment.content),
                pages=attachment.pages,
            )
        )
    return message.id


# --- the inbox ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxMessage:
    message: PortalMessage
    documents: list[PortalDocument]


def inbox(session: Session, *, customer_id: int, limit: int = 200) -> list[PortalMessage]:
    return list(
        session.scalars(
            select(PortalMessage)
            .where(PortalMessage.customer_id == customer_id)
            .order_by(PortalMessage.created_at.desc(), PortalMessage.id)
            .limit(limit)
        )
    )


def message_for(
    session: Session, *, customer_id: int, message_id: str, for_update: bool = False
) -> InboxMessage:
    """One of this customer's messages; any other id, another customer's included, is NotFound."""
    query = select(PortalMessage).where(
        PortalMessage.id == message_id, PortalMessage.customer_id == customer_id
    )
    if for_update:
        query = query.with_for_update()
    message = session.scalars(query).one_or_none()
    if message is None:
        raise NotFound("there is no such message in your inbox")
    documents = list(
        session.scalars(
            select(PortalDocument)
            .where(PortalDocument.message_id == message.id)
            .order_by(PortalDocument.filename)
        )
    )
    return InboxMessage(message, documents)


def mark_read(session: Session, message: PortalMessage, *, actor: str) -> bool:
    """The first opening of a message records it read: on the message, and as the delivery's `read` event."""
    if message.read_at is not None:
        return False
    message.read_at = utcnow()
    delivery = communications.get_delivery(session, message.delivery_id, for_update=True)
    communications.move(
        session, delivery, DeliveryStatus.read, actor=actor, payload={"portal_message": message.id}
    )
    return True
