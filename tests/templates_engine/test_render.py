"""The render engine under load and over time: threads, evicted versions, includes, languages, schemas."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ccm.channels import Channel
from ccm.channels.portal import read_portal_token
from ccm.config import Settings
from ccm.customers.unsubscribe import unsubscribe_url
from ccm.templates_engine import service
from ccm.templates_engine.models import TemplateKind
from ccm.templates_engine.preview import message_context
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine
from tests.templates_engine.conftest import Studio


def version(
    key: str,
    content: dict[str, Any],
    *,
    number: int = 1,
    kind: TemplateKind = TemplateKind.communication,
    pins: dict[str, int] | None = None,
) -> LoadedVersion:
    return LoadedVersion(
        key=key,
        number=number,
        kind=kind,
        default_locale="en-GB",
        content=content,
        content_hash=f"{abs(hash((key, number, str(content)))):016x}",
        pins=pins,
    )


def standalone_engine() -> TemplateEngine:
    """An engine rendering only the versions it is given: no layouts or snippets to load."""
    return TemplateEngine(
        load_version=lambda k, n: (_ for _ in ()).throw(LookupError(k)), output_limit=10**6, time_limit=5
    )


def context(name: str, locale: str = "en-GB") -> RenderContext:
    return RenderContext(customer={"name": name}, data={}, message={}, locale=locale, timezone="UTC")


def test_concurrent_emails_never_mix_their_texts() -> None:
    engine = standalone_engine()
    versions = [
        version(
            f"t{i}",
            {
                "parts": {
                    "email": {"subject": "s", "html": "<p>Dear {{ customer.name }},</p>" + "<p>line</p>" * 50}
                }
            },
        )
        for i in range(8)
    ]

    def render(n: int) -> tuple[int, str]:
        result = engine.render_channel(versions[n % 8], Channel.email, context(f"Customer {n}"))
        assert not result.problems, result.problems
        return n, result.fields["text"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, text in pool.map(render, range(400)):
            assert text.startswith(f"Dear Customer {n},"), (n, text[:40])


def test_the_plain_text_of_an_html_email_keeps_what_a_reader_needs() -> None:
    engine = standalone_engine()
    html = (
        "<html><head><title>Not shown</title><style>p { color: red; }</style></head><body>"
        "<script>alert(1)</script><p>Dear {{ customer.name }},</p>"
        "<p>Your <strong>statement</strong> is ready.</p>"
        "<ul><li>Balance: &pound;20.37</li><li>Due: 15 December</li></ul>"
        '<p><a href="https://bank.example/pay">Pay now</a> <img src="x.png" alt="logo"></p></body></html>'
    )
    result = engine.render_channel(
        version("t", {"parts": {"email": {"subject": "s", "html": html}}}), Channel.email, context("Amelia")
    )
    assert not result.problems, result.problems
    text = result.fields["text"]
    assert text.startswith("Dear Amelia,\n\nYour statement is ready.")
    assert "\u2022 Balance: \u00a320.37" in text  # list items keep a bullet; entities decoded
    assert "Pay now (https://bank.example/pay)" in text  # a link keeps its address
    for hidden in ("Not shown", "color", "alert", "logo", "<", "**"):
        assert hidden not in text
    assert text.endswith("\n")


def test_an_evicted_version_is_loaded_again_by_its_name() -> None:
    footer = version("footer", {"parts": {"body": "Footer one"}}, kind=TemplateKind.snippet)
    loads: list[tuple[str, int | None]] = []

    def load(key: str, number: int | None) -> LoadedVersion:
        loads.append((key, number))
        if key == "footer":
            return footer
        raise LookupError(key)

    engine = TemplateEngine(load_version=load, output_limit=10**6, time_limit=5, max_versions=3)
    letter = version("letter", {"parts": {"sms": {"body": "Hi. {% include 'footer' %}"}}}, pins={"footer": 1})
    assert engine.render_channel(letter, Channel.sms, context("Ann")).fields["body"] == "Hi. Footer one"
    for n in range(10):  # push both out of the engine's registry
        engine.render_channel(
            version(f"other{n}", {"parts": {"sms": {"body": "x"}}}), Channel.sms, context("Ann")
        )
    engine.environment.cache.clear()
    engine.environment._compiled.clear()  # as if Jinja's LRU had dropped them too
    again = engine.render_channel(letter, Channel.sms, context("Ann"))
    assert again.problems == []
    assert again.fields["body"] == "Hi. Footer one"
    assert loads.count(("footer", 1)) >= 2


def test_layouts_and_snippets_are_compiled_with_the_template(studio: Studio) -> None:
    studio.create("footer", kind="snippet")
    studio.live("footer", {"parts": {"body": "Footer"}})
    studio.create("reminder")
    studio.live("reminder", {"parts": {"sms": {"body": "Hi. {% include 'footer' %}"}}})
    engine: TemplateEngine = studio.client.app.state.engine  # type: ignore[attr-defined]
    names = [str(key[1]) for key in engine.environment.cache]
    assert any(name.startswith("footer@1") for name in names), names


def test_a_translation_keeps_its_language_through_an_untranslated_layout(
    studio: Studio, admin: dict[str, str]
) -> None:
    studio.create("footer", kind="snippet")
    studio.live(
        "footer",
        {"parts": {"body": "Regulated in England"}, "locales": {"fr": {"body": "Réglementée en Angleterre"}}},
    )
    studio.create("frame", kind="layout")
    studio.live("frame", {"parts": {"body": "{% block content %}{% endblock %} | {% include 'footer' %}"}})
    studio.create("welcome")
    studio.live(
        "welcome",
        {
            "parts": {
                "email": {
                    "subject": "Welcome",
                    "html": "{% extends 'frame' %}{% block content %}Hello{% endblock %}",
                }
            },
            "locales": {
                "fr": {
                    "email": {
                        "subject": "Bienvenue",
                        "html": "{% extends 'frame' %}{% block content %}Bonjour{% endblock %}",
                    }
                }
            },
        },
    )
    french = studio.client.post(
        "/v1/templates/welcome/preview", json={"locale": "fr-CA"}, headers=admin
    ).json()
    assert french["parts"]["email"]["html"] == "Bonjour | Réglementée en Angleterre"
    english = studio.client.post(
        "/v1/templates/welcome/preview", json={"locale": "de-DE"}, headers=admin
    ).json()
    assert english["parts"]["email"]["html"] == "Hello | Regulated in England"


def test_a_translations_problem_names_its_locale_and_path(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft(
        "reminder",
        {"parts": {"sms": {"body": "ok"}}, "locales": {"fr": {"sms": {"body": "{{ data.nope }}"}}}},
    )
    problem = studio.client.post(
        "/v1/templates/reminder/preview", json={"locale": "fr"}, headers=studio.author
    ).json()
    [error] = problem["errors"]
    assert (error["part"], error["path"], error["variable"]) == (
        "fr:sms.body",
        "/locales/fr/sms/body",
        "data.nope",
    )


def test_a_schema_cannot_reach_files_or_the_network(studio: Studio, tmp_path: Any) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"const": "s3cr3t-from-the-server"}')
    studio.create("reminder")
    for reference in (f"file://{secret}", "http://127.0.0.1:9/schema.json"):
        body = {"parts": {"sms": {"body": "hi"}}, "schema": {"$ref": reference}, "sample_data": {}}
        response = studio.client.post("/v1/templates/reminder/versions", json=body, headers=studio.author)
        assert response.status_code == 422
        assert response.json()["errors"][0]["path"] == "/schema/$ref"
        assert "s3cr3t" not in response.text
    dangling = {"parts": {"sms": {"body": "hi"}}, "schema": {"$ref": "#/$defs/nope"}, "sample_data": {}}
    refused = studio.client.post("/v1/templates/reminder/versions", json=dangling, headers=studio.author)
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert error["path"] == "/schema"
    assert error["message"].startswith("the schema cannot be used")
    assert "nope" in error["message"]


def test_data_errors_name_every_field_in_order_and_check_formats() -> None:
    schema = {
        "type": "object",
        "required": ["amount"],
        "properties": {
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "due_date": {"type": "string", "format": "date"},
            "payment_url": {"type": "string", "format": "uri"},
            "lines": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        },
    }
    validator = service.data_validator(schema)
    assert validator is not None
    good = {"amount": 1.5, "due_date": "2026-12-15", "payment_url": "https://bank.example/pay"}
    assert validator.errors(good, pointer="/data") == []
    lines = [{"n": 1}, {"n": "x"}] + [{"n": 1}] * 8 + [{"n": "y"}]
    bad = {"amount": -1, "due_date": "2026-13-01", "payment_url": "bank/pay", "lines": lines}
    errors = validator.errors(bad, pointer="/rows/3/data")
    assert [e.path for e in errors] == [
        "/rows/3/data/amount",
        "/rows/3/data/due_date",
        "/rows/3/data/lines/1/n",
        "/rows/3/data/lines/10/n",  # in the data's order, not the text's
        "/rows/3/data/payment_url",
    ]
    assert "date" in errors[1].message
    assert "uri" in errors[4].message
    assert service.data_validator(None) is None


def test_a_schema_stored_before_the_compile_check_is_still_checked() -> None:
    """A version published before schemas were compiled at publication (a dangling reference): its data
    is checked by the pure-Python validator, which says what is wrong instead of failing."""
    validator = service.DataValidator({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}})
    assert validator.errors({}, pointer="/data") == []
    [error] = validator.errors({"a": 1}, pointer="/data")
    assert error.path == "/schema"
    assert "does not define" in error.message


def test_a_templates_message_links_are_signed_for_the_customer_however_they_are_read(tmp_path: Any) -> None:
    """`message` makes its signed links only when a template reads them; read as an attribute, an item,
    with get(), `in` or as a whole, it is the same mapping."""
    settings = Settings(data_dir=tmp_path)
    engine = standalone_engine()
    body = (
        "{{ message.unsubscribe_url }}|{{ message.get('portal_url') }}|{{ 'portal_url' in message }}"
        "|{{ message['edits'].greeting }}|{{ message|join(',') }}|{{ message.get('fax', 'none') }}"
        "|{{ message|tojson }}"
    )
    message = message_context(
        settings, "m-1", external_id="CUST-1001", channel=Channel.sms, edits={"greeting": "Hello"}
    )
    rendered = engine.render_channel(
        version("links", {"parts": {"sms": {"body": body}}}),
        Channel.sms,
        RenderContext(customer={}, data={}, message=message, locale="en-GB", timezone="UTC"),
    )
    assert not rendered.problems, rendered.problems
    unsubscribe, portal, present, greeting, names, missing, whole = rendered.fields["body"].split("|")
    assert unsubscribe == unsubscribe_url(settings, external_id="CUST-1001", channel=Channel.sms)
    assert read_portal_token(settings, portal.rpartition("/")[2]) == "CUST-1001"
    assert (present, greeting, missing) == ("True", "Hello", "none")
    assert names == "id,date,unsubscribe_url,portal_url,edits"
    as_json = json.loads(whole)
    assert as_json["unsubscribe_url"] == unsubscribe
    assert read_portal_token(settings, as_json["portal_url"].rpartition("/")[2]) == "CUST-1001"
    assert as_json["edits"] == {"greeting": "Hello"}
