"""Template and version bodies as other systems send them, and what the API answers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ccm.channels import Channel
from ccm.customers.schemas import CustomerIn, normalize_locale
from ccm.inputs import InputModel
from ccm.templates_engine.models import Category, TemplateKind
from ccm.workflows.schemas import WorkflowDefinition

KEY_PATTERN = r"^[a-z][a-z0-9_\-]{0,63}$"
TemplateKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Source = Annotated[str, StringConstraints(max_length=200_000)]
PageSize = Literal["A4", "Letter"]


class EmailPart(InputModel):
    subject: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    html: Source
    text: Source | None = Field(default=None, description="Plain-text body; made from the HTML when absent.")


class SmsPart(InputModel):
    body: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class PrintPart(InputModel):
    html: Source
    css: Source | None = None
    page_size: PageSize | None = Field(default=None, description="A4 or Letter; else the print setting.")


class PortalPart(InputModel):
    title: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    html: Source


class Parts(InputModel):
    """One locale's content: a part per channel (communications) or a body (layouts and snippets)."""

    email: EmailPart | None = None
    sms: SmsPart | None = None
    print: PrintPart | None = None
    portal: PortalPart | None = None
    body: Source | None = Field(default=None, description="The source of a layout or snippet.")

    def channels(self) -> list[Channel]:
        return [channel for channel in Channel if getattr(self, channel.value) is not None]


class VersionBody(InputModel):
    parts: Parts = Field(default_factory=Parts)
    locales: dict[str, Parts] = Field(default_factory=dict, description="Translations: locale -> parts.")
    variables_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="JSON Schema that the trigger's `data` must satisfy."
    )
    sample_data: dict[str, Any] = Field(default_factory=dict)
    notes: Annotated[str, StringConstraints(max_length=10_000)] = ""
    workflow: WorkflowDefinition | None = Field(
        default=None, description="A workflow's rules (kind workflow only; see docs/workflows.md)."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("locales")
    @classmethod
    def _locales(cls, value: dict[str, Parts]) -> dict[str, Parts]:
        return {normalize_locale(locale): parts for locale, parts in value.items()}

    def stored(self) -> dict[str, Any]:
        """The JSON kept in the database and hashed: nulls dropped, `schema` under its public name."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TemplateCreate(InputModel):
    key: TemplateKey
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=5000)] = ""
    kind: TemplateKind = TemplateKind.communication
    category: Category = Category.service
    default_locale: str = "en"

    @field_validator("default_locale")
    @classmethod
    def _default_locale(cls, value: str) -> str:
        return normalize_locale(value)


class TemplateUpdate(InputModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None
    category: Category | None = None


class Reason(InputModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000)]


class Publish(InputModel):
    effective_from: dt.datetime | None = Field(
        default=None, description="Publish at this time instead of now (a scheduled publish)."
    )


class TemplateWarning(BaseModel):
    part: str
    line: int | None
    variable: str | None = None
    message: str


class VersionSummary(BaseModel):
    number: int
    status: str
    author: str
    approver: str | None
    content_hash: str
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    decided_at: dt.datetime | None
    effective_from: dt.datetime | None = None


class VersionOut(VersionSummary):
    template: str
    contributors: list[str]
    rejection_reason: str | None
    copied_from: int | None
    content: dict[str, Any]
    uses: dict[str, int | None] = Field(description="Layouts and snippets used: key -> pinned version.")
    warnings: list[TemplateWarning] = Field(default_factory=list)


class TemplateOut(BaseModel):
    key: str
    name: str
    description: str
    kind: TemplateKind
    category: Category
    default_locale: str
    channels: list[Channel]
    published_version: int | None
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime


class TemplateDetail(TemplateOut):
    versions: list[VersionSummary]


class PartDiff(BaseModel):
    part: str
    diff: str


class VersionDiff(BaseModel):
    template: str
    version: int
    against: int
    changes: list[PartDiff]


class Usage(BaseModel):
    template: str
    version: int
    status: str
    pinned: int | None


class InlineCustomer(CustomerIn):
    external_id: str | None = None


class PreviewRequest(InputModel):
    version: int | None = Field(default=None, ge=1, description="Default: the live version, else the newest.")
    locale: str | None = None
    data: dict[str, Any] | None = Field(default=None, description="Default: the version's sample data.")
    customer: str | dict[str, Any] | None = Field(
        default=None, description="An external_id, or an inline profile; default: a sample customer."
    )

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return normalize_locale(value) if value else None


class RenderProblem(BaseModel):
    part: str
    line: int | None
    variable: str | None
    message: str
    path: str | None = None


class PreviewOut(BaseModel):
    template: str
    version: int
    locale: str
    parts: dict[str, dict[str, Any]]
    errors: list[RenderProblem]
