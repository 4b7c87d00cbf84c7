"""A communication is one template version sent to one customer with its data; a delivery is that
communication on one channel. Deliveries move through a monotonic state machine (see status.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ccm.db import Base, JSONDocument, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


def new_id() -> str:
    """Ids handed to integrators and customers: random, so one id tells nothing about another."""
    return str(uuid.uuid4())


class Communication(Base):
    __tablename__ = "communications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"), index=True)
    template_version_id: Mapped[int] = mapped_column(ForeignKey("template_versions.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    category: Mapped[str] = mapped_column(String(20))
    locale: Mapped[str] = mapped_column(String(35))
    data: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    # What the sender asked for beyond the content: {"attach_letter": true, "portal_notice": ["email"]}.
    options: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    status: Mapped[str] = mapped_column(String(20))
    # A notice ("a new document is in your portal") names the communication it announces.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("communications.id"), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_channel_status", "channel", "status"),
        Index("ix_deliveries_provider_id", "provider_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    communication_id: Mapped[str] = mapped_column(ForeignKey("communications.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    # Where it went: an email address, a phone number, or a postal address on one line.
    recipient: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # An email's Message-ID, made once with the delivery and reused on every retry.
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The provider's id for it: Twilio's message SID, the SMTP Message-ID, the portal message id.
    provider_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Channel facts: SMS segments and encoding, letter pages and sheets, attachments' hashes...
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    print_batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("print_batches.id"), nullable=True, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A worker sending it holds it until then (CCM_DELIVERY_LEASE), so no two workers send it at once.
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
