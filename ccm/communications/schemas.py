"""Request and response bodies of the trigger API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, field_validator

from ccm.channels import Channel
from ccm.customers.schemas import EXTERNAL_ID_PATTERN, CustomerIn
from ccm.inputs import InputModel

TemplateKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ExternalId = Annotated[str, StringConstraints(pattern=EXTERNAL_ID_PATTERN)]


class InlineCustomer(CustomerIn):
    """A customer given with the trigger: created, or its profile replaced, before the communication."""

    external_id: ExternalId


class TriggerIn(InputModel):
    template: TemplateKey = Field(description="The template's key; its published version is used.")
    customer: ExternalId | InlineCustomer = Field(
        description="The customer's external_id, or a profile (with external_id) to create or update."
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Checked against the template's schema.")
    channels: list[Channel] = Field(
        default_factory=list,
        max_length=len(Channel),
        description="Send on exactly these channels; empty: the routing decides (preferences, fallback).",
    )
    workflow: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    send_at: AwareDatetime | None = Field(
        default=None, description="Not before this time (with a time zone)."
    )
    reference: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="Your reference: one communication per template and reference, ever."
    )

    @field_validator("send_at")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return value.astimezone(dt.UTC) if value is not None else None


class AcceptedOut(BaseModel):
    id: str
    status: str
    due_at: dt.datetime


class DeliveryOut(BaseModel):
    id: str
    channel: str
    status: str
    recipient: str | None
    attempts: int
    last_error: str | None
    provider_id: str | None
    next_attempt_at: dt.datetime | None
    artifact_sha256: str | None
    details: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class TimelineEntry(BaseModel):
    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str
    payload: dict[str, Any]


class CommunicationOut(BaseModel):
    id: str
    template: str
    version: int
    customer: str
    category: str
    status: str
    channels: list[str]
    workflow: str | None
    reference: str | None
    due_at: dt.datetime
    routing: dict[str, Any]
    decision: dict[str, Any] | None = Field(
        default=None,
        description="The workflow's decision: the rule that matched, its expression, the values"
        " it saw, and the outcome (see docs/workflows.md).",
    )
    parent_id: str | None
    batch_id: str | None
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime
    deliveries: list[DeliveryOut] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
