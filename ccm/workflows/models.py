"""Tasks a workflow gives people: a message to review, a customer to call."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ccm.communications.models import new_id
from ccm.db import Base, JSONDocument, UTCDateTime


class TaskKind(enum.StrEnum):
    review = "review"
    agent = "agent"


class TaskStatus(enum.StrEnum):
    open = "open"  # waiting in its queue
    claimed = "claimed"  # a person is on it
    approved = "approved"
    rejected = "rejected"
    done = "done"  # an agent recorded the outcome
    cancelled = "cancelled"  # its communication was cancelled


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_queue_status", "queue", "status"),
        Index("ix_tasks_status_due_at", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    communication_id: Mapped[str] = mapped_column(ForeignKey("communications.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    approvals_required: Mapped[int] = mapped_column(Integer)
    # The SLA: when it should be done by (None: no SLA).
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    assignee: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # When it went past its SLA to the escalation queue (once).
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The rule that made it, approvals and edits so far, an agent's script and outcome.
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
