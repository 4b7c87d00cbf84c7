"""Channel tables: provider callbacks as received, print batches, and the portal's messages and documents."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ccm.communications.models import new_id
from ccm.db import Base, JSONDocument, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class ProviderCallback(Base):
    """Every callback a provider made, kept as received (signature checked), whether or not it moved a
    delivery: late, repeated and out-of-order callbacks are part of the record."""

    __tablename__ = "provider_callbacks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(20))  # "twilio"
    kind: Mapped[str] = mapped_column(String(20))  # "status" | "inbound"
    provider_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    delivery_id: Mapped[str | None] = mapped_column(ForeignKey("deliveries.id"), nullable=True, index=True)
    status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    applied: Mapped[bool] = mapped_column(Boolean, default=False)  # did it move the delivery?
    params: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PrintBatch(Base):
    """Pending letters gathered into one print-ready PDF and a manifest; building -> created -> handed ->
    confirmed."""

    __tablename__ = "print_batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(20))
    page_size: Mapped[str] = mapped_column(String(10))
    letters: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int] = mapped_column(Integer)
    sheets: Mapped[int] = mapped_column(Integer)
    pdf_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # None: building
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    handed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    handed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    confirmed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class PortalMessage(Base):
    """A message in a customer's portal inbox. Its HTML (sanitized) is an artifact, read back hash-checked."""

    __tablename__ = "portal_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id"), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    html_sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    read_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PortalDocument(Base):
    __tablename__ = "portal_documents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("portal_messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
