"""Customer and consent bodies, validated at the edge: each bad field is named in the 422."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from functools import lru_cache
from typing import Annotated, Any

import phonenumbers
from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from ccm.channels import Channel
from ccm.customers.models import Purpose
from ccm.inputs import InputModel

EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$"
MAX_ATTRIBUTES_BYTES = 16 * 1024
# CLDR territories that are no country: unknown region, groupings, pseudo-locales.
_NOT_COUNTRIES = frozenset({"ZZ", "QO", "EU", "EZ", "UN", "XA", "XB"})

Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text100 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    codes = (code for code in Locale("en").territories if isinstance(code, str))
    return frozenset(code for code in codes if len(code) == 2 and code.isalpha()) - _NOT_COUNTRIES


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def normalize_email(value: str) -> str:
    try:
        # No DNS lookup: deliverability is the mail server's business, and look-ups would slow every upsert.
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email", "not a valid email address: {reason}", {"reason": str(exc)}
        ) from None


def normalize_phone(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise PydanticCustomError(
            "phone", "not a phone number in international form, such as +44 7911 123456"
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise PydanticCustomError("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_locale(value: str) -> str:
    try:
        locale = Locale.parse(value.replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError):
        raise PydanticCustomError(
            "locale", "not a known locale (use a language tag such as 'en', 'fr-CA' or 'de-CH')"
        ) from None
    return str(locale).replace("_", "-")


def check_timezone(value: str) -> str:
    if value not in _timezones():
        raise PydanticCustomError(
            "timezone", "not an IANA time zone (such as 'Europe/Paris' or 'America/Toronto')"
        )
    return value


def normalize_country(value: str) -> str:
    code = value.strip().upper()
    if code not in _countries():
        raise PydanticCustomError("country", "not an ISO 3166-1 alpha-2 country code (such as 'GB' or 'CA')")
    return code


class Address(InputModel):
    line1: Text200
    line2: Text200 | None = None
    city: Text100
    region: Text100 | None = None
    postal_code: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)] | None
    ) = None
    country: str

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        return normalize_country(value)


class CustomerIn(InputModel):
    """A customer profile as other systems send it. A PUT replaces the whole profile."""

    name: Text200
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    address: Address | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return normalize_email(value) if value else None

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return normalize_phone(value) if value else None

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return normalize_locale(value) if value else None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return check_timezone(value) if value else None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not key or len(key) > 64:
                raise PydanticCustomError("attributes", "attribute names must have 1 to 64 characters")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_ATTRIBUTES_BYTES:
            raise PydanticCustomError(
                "attributes",
                "attributes take {size} bytes as JSON; at most {limit} are allowed",
                {"size": size, "limit": MAX_ATTRIBUTES_BYTES},
            )
        return value


class ConsentOut(BaseModel):
    channel: Channel
    purpose: Purpose
    granted: bool
    source: str
    changed_at: dt.datetime
    changed_by: str


class CustomerOut(BaseModel):
    external_id: str
    name: str
    email: str | None
    phone: str | None
    locale: str | None
    timezone: str | None
    address: Address | None
    attributes: dict[str, Any]
    consents: list[ConsentOut]
    e_delivery: bool
    preferred_channels: list[Channel]
    created_at: dt.datetime
    updated_at: dt.datetime


class ConsentIn(InputModel):
    channel: Channel
    purpose: Purpose
    granted: bool


class ConsentsIn(InputModel):
    """Consents to set. Channels and purposes not listed keep their current answer; omitted fields too."""

    consents: list[ConsentIn] = Field(default_factory=list, max_length=len(Channel) * len(Purpose))
    e_delivery: bool | None = None
    preferred_channels: list[Channel] | None = Field(default=None, max_length=len(Channel))
    source: Text100 = Field(
        default="api", description="Where the customer gave this answer: web form, call..."
    )

    @field_validator("consents")
    @classmethod
    def _one_answer_each(cls, value: list[ConsentIn]) -> list[ConsentIn]:
        seen: set[tuple[Channel, Purpose]] = set()
        for item in value:
            pair = (item.channel, item.purpose)
            if pair in seen:
                raise PydanticCustomError(
                    "duplicate",
                    "{channel}/{purpose} is listed twice",
                    {"channel": item.channel.value, "purpose": item.purpose.value},
                )
            seen.add(pair)
        return value

    @field_validator("preferred_channels")
    @classmethod
    def _no_repeats(cls, value: list[Channel] | None) -> list[Channel] | None:
        if value is not None and len(set(value)) != len(value):
            raise PydanticCustomError("duplicate", "a channel is listed more than once")
        return value


class CustomerConsentsOut(BaseModel):
    consents: list[ConsentOut]
    e_delivery: bool
    preferred_channels: list[Channel]


class ConsentChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    topic: str
    granted: bool
    previous: bool | None
    source: str
    changed_at: dt.datetime
    changed_by: str
