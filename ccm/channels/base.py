"""What every channel adapter promises: it delivers, or it raises a transient or a permanent delivery error.
It never returns False.

    DeliveryError
    ├── TransientDeliveryError   try again later (connection lost, 4xx, 429, 5xx from a provider)
    └── PermanentDeliveryError   will never work as is (invalid address, unsubscribed, 5xx from SMTP)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ccm.channels import Channel
from ccm.communications.status import DeliveryStatus


class DeliveryError(Exception):
    """A delivery did not happen. The message is safe to log: it never holds a message body."""

    def __init__(self, message: str, *, provider_code: str | None = None) -> None:
        super().__init__(message)
        self.provider_code = provider_code


class TransientDeliveryError(DeliveryError):
    def __init__(
        self, message: str, *, provider_code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider_code=provider_code)
        self.retry_after = retry_after  # seconds the provider asked us to wait, when it said


class PermanentDeliveryError(DeliveryError):
    pass


@dataclass(frozen=True)
class Attachment:
    filename: str
    media_type: str  # "application/pdf"
    content: bytes
    pages: int | None = None


@dataclass(frozen=True)
class Envelope:
    """One delivery as an adapter sees it: the rendered fields of its channel and whom it is for."""

    delivery_id: str
    channel: Channel
    customer: Mapping[str, Any]  # the profile a template sees: name, email, phone, address...
    recipient: str | None  # the email address or phone number; None for print and portal
    fields: Mapping[str, str]  # the rendered part: subject/html/text, body, html, title/html
    locale: str
    title: str  # the template's name: a letter's title, a portal message's fallback title
    marketing: bool = False
    message_id: str | None = None  # email: made once per delivery, reused on every retry
    unsubscribe_url: str | None = None
    css: str | None = None  # print
    page_size: str | None = None  # print
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """Exactly what will be sent, stored as the delivery's artifact before it is sent; a retry sends these
    same bytes again."""

    content: bytes
    media_type: str
    details: dict[str, Any] = field(default_factory=dict)  # segments, encoding, pages, sheets...
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Sent:
    status: DeliveryStatus
    provider_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ChannelAdapter(Protocol):
    channel: Channel

    def prepare(self, envelope: Envelope) -> Prepared:
        """The output to send, built from the rendered part. Raises PermanentDeliveryError if it cannot be
        sent as it is (no address, too many SMS segments, the address outside the envelope window)."""
        ...

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        """Hands the prepared output to the channel. Raises a TransientDeliveryError or a
        PermanentDeliveryError; never returns a failure."""
        ...
