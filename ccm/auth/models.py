"""API key table: only a hash of each key is stored."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Enum, String
from sqlalchemy.orm import Mapped, mapped_column

from ccm.db import Base, UTCDateTime


class Role(enum.StrEnum):
    admin = "admin"
    author = "author"
    approver = "approver"
    sender = "sender"
    agent = "agent"
    auditor = "auditor"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # Who holds the key (an email or employee id). The four-eyes rule compares people, not keys: one
    # person's author key and approver key must not let them approve their own work.
    person: Mapped[str] = mapped_column(String(200), index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=20))
    # First characters of the key, safe to show, so people can tell their keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
