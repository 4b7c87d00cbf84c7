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
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.unsubscribe import signing_secret
from ccm.db import Database, utcnow
from ccm.errors import CCMError, NotFound

_SALT = "ccm.portal.v1"
# What a portal message may contain. No scripts, styles, forms or frames; links open safely; images only
# from data: URLs (the page's Content-Security-Policy blocks remote ones: no tracking pixels).
_URL_SCHEMES = {"https", "mailto", "tel", "data"}


def _no_remote_images(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute in {"src", "srcset"} and not value.strip().lower().startswith("data:"):
        return None
    return value


def sanitize(html: str) -> str:
    return nh3.clean(
        html, url_schemes=_URL_SCHEMES, link_rel="noopener noreferrer", attribute_filter=_no_remote_images
    )


class LinkExpired(CCMError):
    status = 403
    slug = "link-expired"
    title = "This link has expired"


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_secret(settings), salt=_SALT)


def portal_token(settings: Settings, *, external_id: str) -> str:
    return str(_serializer(settings).dumps({"c": external_id}))


def portal_link(settings: Settings, *, external_id: str) -> str:
    base = str(settings.public_base_url).rstrip("/")
    return f"{base}/portal/{portal_token(settings, external_id=external_id)}"


def read_portal_token(settings: Settings, token: str) -> str:
    """The customer a link is for. Expired: LinkExpired (403). Forged or damaged: NotFound (404)."""
    max_age = int(dt.timedelta(days=settings.portal_link_days).total_seconds())
    try:
        claims = _serializer(settings).loads(token, max_age=max_age)
        return str(claims["c"])
    except SignatureExpired:
        raise LinkExpired("this portal link has expired: ask us for a new one") from None
    except (BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("this portal link is not valid") from None


class PortalAdapter:
    """The portal channel: the sanitized HTML is the artifact; sending puts the message in the inbox."""

    channel = Channel.portal

    def __init__(self, database: Database) -> None:
        self.database = database

    def prepare(self, envelope: Envelope) -> Prepared:
        title = " ".join((envelope.fields.get("title") or envelope.title).split())[:300]
        return Prepared(
            content=sanitize(envelope.fields.get("html", "")).encode(),
            media_type="text/html; charset=utf-8",
            details={"title": title},
            attachments=envelope.attachments,
        )

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        with self.database.transaction() as session:
            message = session.scalars(
                select(PortalMessage).where(PortalMessage.delivery_id == envelope.delivery_id)
            ).one_or_none()
            if message is None:  # a retry after a crash finds the message already there
                delivery = communications.get_delivery(session, envelope.delivery_id)
                message = PortalMessage(
                    customer_id=delivery.customer_id,
                    delivery_id=delivery.id,
                    title=str(prepared.details.get("title") or envelope.title),
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
            message_id = message.id
        return Sent(status=DeliveryStatus.delivered, provider_id=message_id)


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
