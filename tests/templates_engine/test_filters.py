"""The formatting filters: money, numbers, dates and times in the customer's locale and time zone."""

from __future__ import annotations

import pytest

from ccm.channels import Channel
from ccm.templates_engine.filters import FilterInputError
from ccm.templates_engine.models import TemplateKind
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine


def render(
    source: str, *, locale: str = "en-GB", timezone: str = "Europe/London", data: dict | None = None
) -> str:
    def no_loader(key: str, number: int | None) -> LoadedVersion:
        raise LookupError(key)

    engine = TemplateEngine(load_version=no_loader, output_limit=100_000, time_limit=2)
    version = LoadedVersion(
        key="t",
        number=1,
        kind=TemplateKind.communication,
        default_locale=locale,
        content={"parts": {"sms": {"body": source}}},
        content_hash=str(hash(source)),
        pins={},
    )
    context = RenderContext(
        customer={"name": "Ann"}, data=data or {}, message={}, locale=locale, timezone=timezone
    )
    result = engine.render_channel(version, Channel.sms, context)
    assert not result.problems, result.problems
    return result.fields["body"]


@pytest.mark.parametrize(
    ("locale", "expected"),
    [("en-GB", "£1,234.50"), ("fr-FR", "1 234,50 £GB"), ("de-DE", "1.234,50 £"), ("en-US", "£1,234.50")],
)
def test_money_follows_the_locale(locale: str, expected: str) -> None:
    assert render("{{ 1234.5|money('GBP') }}", locale=locale) == expected


def test_dates_and_times_in_the_customers_zone() -> None:
    moment = "2026-01-15T23:30:00Z"  # already 16 January in Paris, still the 15th in London
    assert (
        render("{{ data.t|date('long') }}", data={"t": moment}, timezone="Europe/London") == "15 January 2026"
    )
    assert (
        render("{{ data.t|date('long') }}", data={"t": moment}, locale="fr-FR", timezone="Europe/Paris")
        == "16 janvier 2026"
    )
    assert render("{{ data.t|time }}", data={"t": moment}, timezone="America/New_York") == "18:30"
    assert render("{{ '2026-12-15'|date('short') }}", locale="en-US") == "12/15/26"


def test_masking_numbers_phones_and_countries() -> None:
    assert render("{{ '4030 8812 3456 7890'|mask(4, '*') }}") == "************7890"
    assert render("{{ 0.0451|percent(1) }} {{ 1234567.891|number(2) }}") == "4.5% 1,234,567.89"
    assert render("{{ '+447911123456'|phone('national') }}") == "07911 123456"
    assert render("{{ 'CA'|country_name }}", locale="fr-FR") == "Canada"


def test_a_bad_value_is_a_readable_problem() -> None:
    with pytest.raises(AssertionError, match="money: expected a number"):
        render("{{ 'lots'|money('GBP') }}")
    with pytest.raises(AssertionError, match="date: expected an ISO 8601 date"):
        render("{{ 'next tuesday'|date }}")
    assert FilterInputError.__mro__[1] is ValueError


def test_an_amount_is_formatted_the_same_whatever_was_formatted_before() -> None:
    """Formatting is memoised: -0 and 0 are equal numbers that print differently, and each keeps its own."""
    assert render("{{ data.a|money('GBP') }} {{ data.b|money('GBP') }}", data={"a": -0.0, "b": 0}) == (
        "-£0.00 £0.00"
    )
    assert render("{{ data.b|money('GBP') }} {{ data.a|money('GBP') }}", data={"a": -0.0, "b": 0}) == (
        "£0.00 -£0.00"
    )
    assert render("{{ data.a|money('GBP') }}", data={"a": "1.50"}) == render("{{ 1.5|money('GBP') }}")
