"""Filters business users format values with, in the customer's locale and time zone (Babel, phonenumbers)."""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import zoneinfo
from collections.abc import Callable
from typing import Any, Literal

import phonenumbers
from babel import Locale, UnknownLocaleError, dates, numbers
from jinja2 import pass_context
from jinja2.runtime import Context

LOCALE_VAR = "_locale"
TIMEZONE_VAR = "_timezone"


class FilterInputError(ValueError):
    """A filter was given a value it cannot format; the message says which and why."""


def _locale(context: Context) -> Locale | str:
    return _parsed_locale(str(context.get(LOCALE_VAR) or "en").replace("-", "_"))


@functools.lru_cache(maxsize=256)
def _parsed_locale(name: str) -> Locale | str:
    """Babel's locale, parsed once per name rather than in every filter call (a third of formatting an
    amount); a name Babel cannot parse is left as it was, for the formatter to refuse as before."""
    try:
        return Locale.parse(name)
    except (ValueError, TypeError, UnknownLocaleError):
        return name


def _timezone(context: Context) -> zoneinfo.ZoneInfo:
    name = context.get(TIMEZONE_VAR) or "UTC"
    return zoneinfo.ZoneInfo(str(name))


def _decimal(value: Any, filter_name: str) -> decimal.Decimal:
    if isinstance(value, bool):
        raise FilterInputError(f"{filter_name}: expected a number, got {value!r}")
    try:
        # str() first, so that 0.1 becomes Decimal("0.1") and not its binary approximation.
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise FilterInputError(f"{filter_name}: expected a number, got {value!r}") from None


@pass_context
def money(context: Context, value: Any, currency: str, accounting: bool = False) -> str:
    """`{{ data.amount|money('EUR') }}` -> `1 234,50 €` for fr, `€1,234.50` for en."""
    amount = _decimal(value, "money")
    style: Literal["standard", "accounting"] = "accounting" if accounting else "standard"
    try:
        return _currency(str(amount), currency.upper(), _locale(context), style)
    except (numbers.UnknownCurrencyFormatError, ValueError) as exc:
        raise FilterInputError(f"money: {exc}") from None


# Formatting is pure, and Babel takes 20-30 us for an amount: a message shows the same amount or date more
# than once (a subject and a body), and a batch's messages often share a due date.
# Keyed on the amount's text: -0 and 0 are equal Decimals that Babel formats differently.
@functools.lru_cache(maxsize=4096)
def _currency(amount: str, currency: str, locale: Locale | str, style: str) -> str:
    return numbers.format_currency(
        decimal.Decimal(amount),
        currency,
        locale=locale,
        format_type=style,  # type: ignore[arg-type]
    )


@functools.lru_cache(maxsize=4096)
def _date(moment: dt.date, format: str, locale: Locale | str) -> str:
    return dates.format_date(moment, format=format, locale=locale)


@pass_context
def number(context: Context, value: Any, decimals: int | None = None) -> str:
    amount = _decimal(value, "number")
    if decimals is not None:
        pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "")
        return numbers.format_decimal(amount, format=pattern, locale=_locale(context))
    return numbers.format_decimal(amount, locale=_locale(context))


@pass_context
def percent(context: Context, value: Any, decimals: int = 0) -> str:
    pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "") + "%"
    return numbers.format_percent(_decimal(value, "percent"), format=pattern, locale=_locale(context))


def _as_datetime(value: Any, filter_name: str) -> dt.datetime | dt.date:
    if isinstance(value, dt.datetime | dt.date):
        return value
    if isinstance(value, str):
        try:
            if "T" in value or " " in value.strip():
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise FilterInputError(f"{filter_name}: expected an ISO 8601 date or date-time, got {value!r}")


@pass_context
def date(context: Context, value: Any, format: str = "long") -> str:
    """`{{ data.due_date|date }}` -> `15 March 2026`. Formats: short, medium, long, full or a CLDR pattern."""
    moment = _as_datetime(value, "date")
    if isinstance(moment, dt.datetime):
        aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        moment = aware.astimezone(_timezone(context)).date()
    return _date(moment, format, _locale(context))


@pass_context
def datetime(context: Context, value: Any, format: str = "medium") -> str:
    """A moment shown in the customer's time zone: `{{ data.appointment|datetime('short') }}`."""
    moment = _as_datetime(value, "datetime")
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.combine(moment, dt.time(), tzinfo=dt.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return dates.format_datetime(moment, format=format, tzinfo=_timezone(context), locale=_locale(context))


@pass_context
def time(context: Context, value: Any, format: str = "short") -> str:
    moment = _as_datetime(value, "time")
    if not isinstance(moment, dt.datetime):
        raise FilterInputError(f"time: expected a date-time, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return dates.format_time(moment, format=format, tzinfo=_timezone(context), locale=_locale(context))


def mask(value: Any, visible: int = 4, char: str = "•") -> str:
    """`{{ data.account_number|mask }}` -> `••••••••••5678`: all but the last `visible` characters hidden."""
    text = "".join(str(value).split())
    if visible <= 0:
        return char * len(text)
    hidden = max(0, len(text) - visible)
    return char * hidden + text[hidden:]


@pass_context
def phone(context: Context, value: Any, format: str = "international") -> str:
    """`{{ customer.phone|phone('national') }}` -> `07911 123456`."""
    styles = {
        "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        "national": phonenumbers.PhoneNumberFormat.NATIONAL,
        "e164": phonenumbers.PhoneNumberFormat.E164,
    }
    if format not in styles:
        raise FilterInputError(f"phone: format must be one of {', '.join(styles)}")
    try:
        parsed = phonenumbers.parse(str(value), None)
    except phonenumbers.NumberParseException:
        raise FilterInputError(f"phone: {value!r} is not a phone number in international form") from None
    return phonenumbers.format_number(parsed, styles[format])


@pass_context
def country_name(context: Context, code: Any, locale: str | None = None) -> str:
    """`{{ customer.address.country|country_name }}` -> `Canada` (in the template's locale, or `locale`)."""
    chosen = _parsed_locale(locale.replace("-", "_")) if locale else _locale(context)
    territories = Locale.parse(chosen).territories
    name = territories.get(str(code).upper())
    if name is None:
        raise FilterInputError(f"country_name: {code!r} is not a country code")
    return str(name)


FILTERS: dict[str, Callable[..., Any]] = {
    "country_name": country_name,
    "money": money,
    "number": number,
    "percent": percent,
    "date": date,
    "datetime": datetime,
    "time": time,
    "mask": mask,
    "phone": phone,
}
