"""Template tables: templates, their numbered versions, publications, and the snippets each version uses."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ccm.db import Base, JSONDocument, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class TemplateKind(enum.StrEnum):
    communication = "communication"
    layout = "layout"  # used with {% extends "key" %}
    snippet = "snippet"  # used with {% include "key" %} or {% import "key" as x %}
    workflow = "workflow"  # rules deciding how a message goes out (ccm.workflows); no content of its own


class Category(enum.StrEnum):
    service = "service"
    marketing = "marketing"
    regulatory = "regulatory"


class VersionStatus(enum.StrEnum):
    """Stored lifecycle states. An approved version is shown as published, scheduled or retired
    according to its publications."""

    draft = "draft"
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"


def _enum(kind: type[enum.Enum]) -> Enum:
    return Enum(kind, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[TemplateKind] = mapped_column(_enum(TemplateKind))
    category: Mapped[Category] = mapped_column(_enum(Category))
    default_locale: Mapped[str] = mapped_column(String(35))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class TemplateVersion(Base):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[VersionStatus] = mapped_column(_enum(VersionStatus))
    # The version body as validated: parts, locales, schema, sample_data, notes.
    content: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    content_hash: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(200))
    # Everyone who edited the draft besides its author: none of them may approve it.
    contributors: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    approver: Mapped[str | None] = mapped_column(String(200), nullable=True)
    rejection_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    copied_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TemplatePublication(Base):
    """A version made the live one from `effective_from` on. The live version at time t is the publication
    with the latest effective_from <= t; publishing an older version again is the rollback."""

    __tablename__ = "template_publications"
    __table_args__ = (Index("ix_template_publications_live", "template_id", "effective_from"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("template_versions.id", ondelete="CASCADE"))
    effective_from: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    published_by: Mapped[str] = mapped_column(String(200))


class TemplateDependency(Base):
    """A layout or snippet a version uses; `number` is the version pinned when it was submitted
    (None while the version is a draft, which renders with the live one)."""

    __tablename__ = "template_dependencies"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("template_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)
