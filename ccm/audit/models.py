"""Audit log tables: the events, and the chain head that serialises appends."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ccm.db import Base

GENESIS_HASH = "0" * 64


class AuditEvent(Base):
    """One thing that happened. Rows are never updated or deleted (database triggers refuse it)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_subject", "subject_type", "subject_id"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # Kept as the exact text that was hashed (YYYY-MM-DDTHH:MM:SS.ffffffZ, which sorts in time order), so
    # that no driver's parsing can hide an edit to the stored value.
    occurred_at: Mapped[str] = mapped_column(String(27), index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(100), index=True)
    subject_type: Mapped[str] = mapped_column(String(50))
    subject_id: Mapped[str] = mapped_column(String(200))
    # The canonical JSON text exactly as hashed; kept as text so no database can re-encode it.
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditChainHead(Base):
    """A single row holding the last event's seq and hash.

    Appenders lock it (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write lock) so concurrent writers
    chain one after another, and verify compares it with the log's last event, which exposes a deleted tail.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))
