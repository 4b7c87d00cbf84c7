"""API key request and response bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ccm.auth.models import Role
from ccm.inputs import InputModel

KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
PersonName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class KeyCreate(InputModel):
    name: KeyName
    role: Role
    person: PersonName | None = Field(
        default=None,
        description="Who holds the key (an email or employee id); default: its name. Give all of one "
        "person's keys the same person: the four-eyes rule compares people.",
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    person: str
    role: Role
    prefix: str
    created_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None
    revoked_by: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself. It is shown this once and cannot be recovered.")


class KeyList(BaseModel):
    items: list[KeyOut]


class WhoAmI(BaseModel):
    key_id: str
    name: str
    person: str
    role: Role
