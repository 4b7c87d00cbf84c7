"""A communication is one template version sent to one customer with its data; a delivery is that
communication on one channel. Deliveries move through a monotonic state machine (see status.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import uuid_utils
from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ccm.db import Base, JSONDocument, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


def new_id() -> str:
    """Ids handed to integrators and customers: UUID version 7 (RFC 9562): the millisecond it was made, a
    counter that keeps one millisecond's ids in order (started at random each millisecond), 32 random bits.
    Rows made together sit together in every index keyed by an id (a random UUID put each of a commit's rows
    on a page of its own: half as much again written to disk an email, docs/benchmarks.md). An id is no
    secret: every endpoint checks its caller's key or the portal's signed link, never an id alone; the time
    it shows is the row's `created_at`, shown anyway."""
    return str(uuid_utils.uuid7())


class Communication(Base):
    __tablename__ = "communications"
    __table_args__ = (
        # A business reference names one communication per template, for good.
        UniqueConstraint("template_id", "reference"),
        # The relay's question: which accepted communications are due?
        Index("ix_communications_status_due_at", "status", "due_at"),
    )

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
    # What the sender asked for: channels (empty: the routing decides), a workflow, a business reference.
    channels: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    workflow: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # When it may go out (the sender's send_at, else when it was accepted).
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The routing decision: mode, the channel chain, what was suppressed and why.
    routing: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    # The workflow's decision: which rule matched, its expression, the values it saw, the outcome.
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), nullable=True, index=True)
    # When it was last handed to the queue: the relay hands again what stays unfinished too long after.
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # A notice ("a new document is in your portal") names the communication it announces.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("communications.id"), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_channel_status", "channel", "status"),
        Index("ix_deliveries_provider_id", "provider_id"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
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
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
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
    # When the next attempt may be made (a retry's backoff, quiet hours); None: now.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    """The first answer to a request made with an Idempotency-Key, replayed for the same key and body."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)  # the API key's id
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class Batch(Base):
    """A file of triggers: each row accepted (a communication) or rejected (with its problem)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(20))  # receiving | received
    format: Mapped[str] = mapped_column(String(10))  # jsonl | csv
    template_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchError(Base):
    __tablename__ = "batch_errors"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)


class WebhookEndpoint(Base):
    """An integrator's URL that every status change is POSTed to, signed with its secret."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(String(2000))
    # Kept as given: ccm signs with it (HMAC-SHA256), so it cannot be stored as a one-way hash.
    secret: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class WebhookMessage(Base):
    """One event for one endpoint: written with the change it reports (an outbox), then POSTed until it is
    accepted or given up."""

    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    event_type: Mapped[str] = mapped_column(String(60))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON that is signed and sent
    status: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id"), index=True)
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
