"""What the auditors' endpoints answer."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Row

ARTIFACTS_PATH = "/v1/audit/artifacts/"


class AuditEventOut(BaseModel):
    seq: int
    occurred_at: str = Field(description="UTC, as stored and hashed: YYYY-MM-DDTHH:MM:SS.ffffffZ")
    actor: str
    action: str
    subject_type: str
    subject_id: str
    payload: dict[str, Any] | None = Field(
        description="The payload, parsed; null only if the stored text is no JSON object (an event edited "
        "outside ccm, which verify names). The export gives the exact text that was hashed."
    )
    hash: str
    prev_hash: str

    @classmethod
    def of(cls, row: Row[*tuple[Any, ...]]) -> AuditEventOut:
        try:
            payload = json.loads(row.payload)
        except ValueError:
            payload = None
        return cls(
            seq=row.seq,
            occurred_at=row.occurred_at,
            actor=row.actor,
            action=row.action,
            subject_type=row.subject_type,
            subject_id=row.subject_id,
            payload=payload if isinstance(payload, dict) else None,
            hash=row.hash,
            prev_hash=row.prev_hash,
        )


class ArtifactOut(BaseModel):
    sha256: str
    size: int | None
    media_type: str | None
    url: str = Field(description="Where an auditor downloads it, hash-checked")

    @classmethod
    def of(cls, sha256: str, size: int | None, media_type: str | None) -> ArtifactOut:
        return cls(sha256=sha256, size=size, media_type=media_type, url=ARTIFACTS_PATH + sha256)


class DeliveryRecordOut(BaseModel):
    id: str
    channel: str
    status: str
    recipient: str | None
    provider_id: str | None
    attempts: int
    last_error: str | None
    artifact: ArtifactOut | None = Field(description="Exactly what was sent; null until it was prepared")
    attachments: list[ArtifactOut] = Field(description="Files sent with it, such as the letter PDF")
    details: dict[str, Any]
    print_batch_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class CommunicationRecordOut(BaseModel):
    id: str
    template: str
    version: int
    customer: str = Field(description="The customer's external_id")
    category: str
    locale: str
    data: dict[str, Any]
    options: dict[str, Any]
    status: str
    parent_id: str | None = Field(description="The communication a portal notice announces")
    created_at: dt.datetime
    created_by: str
    deliveries: list[DeliveryRecordOut]
    events: list[AuditEventOut] = Field(description="Every event about it or its deliveries, in order")
