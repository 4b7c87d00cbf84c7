"""Previews: every part rendered, problems per part, SMS counted, letters as real PDFs read back."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from typer.testing import CliRunner

from ccm.cli import app as cli
from ccm.db import Database
from ccm.demo import demo_customers
from tests.templates_engine.conftest import Studio

ROOT = Path(__file__).resolve().parents[2]


def pdf_text(content: bytes) -> str:
    """The letter's text as pdftotext (poppler) reads it: what a print house or an archive would get."""
    result = subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=content, capture_output=True, check=True, timeout=60
    )
    return result.stdout.decode()


def test_a_missing_variable_names_variable_part_and_line(studio: Studio) -> None:
    studio.create("reminder")
    html = "<p>Dear {{ customer.name }},</p>\n<p>Your balance:</p>\n<p>{{ data.account.balance }}</p>"
    studio.draft(
        "reminder",
        {"parts": {"email": {"subject": "Hi", "html": html}, "sms": {"body": "Hi {{ customer.name }}"}}},
    )
    response = studio.client.post(
        "/v1/templates/reminder/preview", json={"data": {"account": {}}}, headers=studio.author
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:ccm:problem:render-error"
    assert problem["errors"] == [
        {
            "part": "email.html",
            "line": 3,
            "variable": "data.account.balance",
            "message": "data.account.balance is not defined",
            "path": "/parts/email/html",
        }
    ]
    # The other parts still rendered, each on its own.
    assert problem["parts"]["sms"]["body"] == "Hi Alex Sample"
    assert "email.html line 3" in problem["detail"]


def test_a_missing_variable_in_a_snippet_names_the_snippet(studio: Studio) -> None:
    studio.create("footer", kind="snippet")
    studio.live("footer", {"parts": {"body": "Call {{ data.phone_number }}"}})
    studio.create("reminder")
    studio.draft("reminder", {"parts": {"sms": {"body": "Hello.\n{% include 'footer' %}"}}})
    problem = studio.client.post("/v1/templates/reminder/preview", json={}, headers=studio.author).json()
    [error] = problem["errors"]
    assert (error["part"], error["variable"], error["line"]) == ("sms.body", "data.phone_number", 1)
    assert "(in footer)" in error["message"]


def test_data_that_breaks_the_schema_is_422_with_its_path(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft(
        "reminder",
        {
            "parts": {"sms": {"body": "{{ data.amount }}"}},
            "schema": {
                "type": "object",
                "properties": {"amount": {"type": "number"}},
                "required": ["amount"],
            },
            "sample_data": {"amount": 1},
        },
    )
    response = studio.client.post(
        "/v1/templates/reminder/preview", json={"data": {"amount": "ten"}}, headers=studio.author
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "/data/amount"


def test_preview_for_a_stored_or_an_inline_customer(studio: Studio, admin: dict[str, str]) -> None:
    studio.client.put(
        "/v1/customers/C-7",
        json={"name": "Émile Tremblay", "locale": "fr-CA", "timezone": "America/Toronto"},
        headers=admin,
    )
    studio.create("reminder")
    studio.draft(
        "reminder",
        {
            "parts": {"sms": {"body": "Hello {{ customer.name }}: {{ data.amount|money('CAD') }}"}},
            "locales": {
                "fr": {"sms": {"body": "Bonjour {{ customer.name }} : {{ data.amount|money('CAD') }}"}}
            },
            "sample_data": {"amount": 1234.5},
        },
    )
    stored = studio.client.post(
        "/v1/templates/reminder/preview", json={"customer": "C-7"}, headers=studio.author
    ).json()
    assert stored["locale"] == "fr-CA"
    sms = stored["parts"]["sms"]
    assert (sms["locale"], sms["body"]) == (
        "fr",
        "Bonjour Émile Tremblay : 1 234,50 $",
    )  # no-break spaces made plain
    assert (sms["encoding"], sms["characters"], sms["segments"]) == ("GSM-7", len(sms["body"]), 1)
    inline = studio.client.post(
        "/v1/templates/reminder/preview",
        json={"customer": {"name": "Ann Baker", "locale": "de-DE"}, "data": {"amount": 2}},
        headers=studio.author,
    ).json()
    assert (
        inline["parts"]["sms"]["body"] == "Hello Ann Baker: CA$2.00"
    )  # no German text: the default's format
    unknown = studio.client.post(
        "/v1/templates/reminder/preview", json={"customer": "NOPE"}, headers=studio.author
    )
    assert unknown.status_code == 404


def test_a_template_sees_the_customer_the_api_shows(studio: Studio, admin: dict[str, str]) -> None:
    """`customer` in a template is the stored profile's public fields, exactly as GET /v1/customers/{id}
    gives them (address normalised, attributes as saved), without the consents."""
    profile = {
        "name": "Zoë O'Brien",
        "email": "Zoe.OBrien@Example.IE",
        "phone": "+353 1 555 0100",
        "locale": "en-IE",
        "timezone": "Europe/Dublin",
        "address": {"line1": " 1 Quay St ", "city": "Galway", "postal_code": " H91 ", "country": "ie"},
        "attributes": {"tier": "gold", "since": 2019, "tags": ["a", "é"], "nested": {"x": None}},
    }
    assert studio.client.put("/v1/customers/C-9", json=profile, headers=admin).status_code in (200, 201)
    shown = studio.client.get("/v1/customers/C-9", headers=admin).json()
    studio.create("echo")
    studio.draft(
        "echo",
        {"parts": {"sms": {"body": "{{ customer|tojson }}"}}, "sample_data": {}},
    )
    seen = studio.client.post(
        "/v1/templates/echo/preview", json={"customer": "C-9"}, headers=studio.author
    ).json()["parts"]["sms"]["body"]
    fields = ("external_id", "name", "email", "phone", "locale", "timezone", "address", "attributes")
    assert json.loads(seen) == {name: shown[name] for name in fields}
    assert shown["address"]["country"] == "IE"  # normalised on save, and seen so
    assert shown["address"]["line1"] == "1 Quay St"


def test_sms_encoding_and_segments(studio: Studio) -> None:
    studio.create("long")
    studio.draft("long", {"parts": {"sms": {"body": "{{ 'x' * 200 }}"}}})
    gsm = studio.client.post("/v1/templates/long/preview", json={}, headers=studio.author).json()["parts"][
        "sms"
    ]
    assert (gsm["encoding"], gsm["characters"], gsm["segments"]) == ("GSM-7", 200, 2)
    studio.client.patch(
        "/v1/templates/long/versions/1",
        json={"parts": {"sms": {"body": "Café ☕ " * 12}}},
        headers=studio.author,
    )
    ucs = studio.client.post("/v1/templates/long/preview", json={}, headers=studio.author).json()["parts"][
        "sms"
    ]
    assert (ucs["encoding"], ucs["segments"]) == ("UCS-2", 2)


@pytest.fixture
def starter(client: TestClient, database: Database) -> TestClient:
    """The demo exactly as `make run` loads it: customers, and the starter templates published."""
    result = CliRunner().invoke(
        cli, ["demo", "--templates", str(ROOT / "templates")], env={"CCM_DATABASE_URL": database.url}
    )
    assert result.exit_code == 0, result.output
    return client


def test_every_starter_template_previews_on_every_channel(starter: TestClient, admin: dict[str, str]) -> None:
    templates = starter.get("/v1/templates", headers=admin).json()["items"]
    communications = [t for t in templates if t["kind"] == "communication"]
    assert {t["key"] for t in communications} == {
        "welcome",
        "payment_reminder",
        "annual_statement",
        "claim_decision",
        "one_time_passcode",
        "marketing_offer",
        "portal_notice",
    }
    customers: list[Any] = [None, *(c["external_id"] for c in demo_customers())]
    for template in communications:
        assert template["published_version"] is not None
        for customer in customers:
            body = {"customer": customer} if customer else {}
            response = starter.post(f"/v1/templates/{template['key']}/preview", json=body, headers=admin)
            assert response.status_code == 200, (template["key"], customer, response.text[:500])
            parts = response.json()["parts"]
            assert set(parts) == set(template["channels"]), template["key"]
            for channel, part in parts.items():
                if channel == "email":
                    assert part["subject"]
                    assert "<html" in part["html"]
                    assert part["text"].strip()
                elif channel == "sms":
                    assert part["segments"] >= 1
                    assert part["body"]
                elif channel == "portal":
                    assert part["title"]
                    assert part["html"]
                elif channel == "print":
                    check_letter(part, template["key"], customer)


def check_letter(part: dict[str, Any], key: str, customer: str | None) -> None:
    content = base64.b64decode(part["pdf_base64"])
    assert content.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(content))
    assert len(reader.pages) == part["pages"]
    text = pdf_text(content)
    name = next(
        (c["profile"]["name"] for c in demo_customers() if c["external_id"] == customer), "Alex Sample"
    )
    assert name in text, key
    assert "Northwind Bank" in text
    assert f"Page {part['pages']} of {part['pages']}" in text


def test_starter_templates_speak_the_customers_language(starter: TestClient, admin: dict[str, str]) -> None:
    french = starter.post(
        "/v1/templates/welcome/preview", json={"customer": "CUST-1002"}, headers=admin
    ).json()
    assert french["locale"] == "fr-CA"
    assert french["parts"]["email"]["subject"] == "Bienvenue chez Northwind Bank, Émile Tremblay"
    assert (
        "Agréée par la Prudential Regulation Authority" in french["parts"]["email"]["html"]
    )  # the footer too
    assert french["parts"]["sms"]["encoding"] == "GSM-7"
    german = starter.post(
        "/v1/templates/welcome/preview", json={"customer": "CUST-1004"}, headers=admin
    ).json()
    assert (
        german["parts"]["email"]["subject"] == "Welcome to Northwind Bank, Katharina Vogel"
    )  # no German: default


def test_the_statement_runs_over_several_pages(starter: TestClient, admin: dict[str, str]) -> None:
    part = starter.post(
        "/v1/templates/annual_statement/preview", json={"customer": "CUST-1001"}, headers=admin
    ).json()["parts"]["print"]
    assert part["pages"] >= 3
    text = pdf_text(base64.b64decode(part["pdf_base64"]))
    # The table's header repeats on every page the table runs over (all but, at most, the last).
    assert text.count("Description") >= part["pages"] - 1
    assert "Amelia Hartley" in text
    assert "£8,624.57" in text  # the closing balance of the sample data


def test_letters_have_their_own_size_and_time_limits(
    studio: Studio, settings: Any, database: Database, admin: dict[str, str]
) -> None:
    from ccm.app import create_app

    studio.create("letter_test")
    studio.draft(
        "letter_test",
        {
            "parts": {
                "print": {"html": "<p>{{ 'word ' * 5000 }}</p>"},
                "sms": {"body": "Hi {{ customer.name }}"},
            }
        },
    )
    small = create_app(settings.model_copy(update={"print_max_html": 10_000}), database=database)
    with TestClient(small) as client:
        problem = client.post("/v1/templates/letter_test/preview", json={}, headers=admin).json()
    assert [e["part"] for e in problem["errors"]] == ["print.html"]
    assert "CCM_PRINT_MAX_HTML" in problem["errors"][0]["message"]
    assert problem["parts"]["sms"]["body"] == "Hi Alex Sample"  # the other parts still rendered

    slow = create_app(settings.model_copy(update={"print_time_limit": 0.05}), database=database)
    with TestClient(slow) as client:
        problem = client.post("/v1/templates/letter_test/preview", json={}, headers=admin).json()
    assert "time limit" in problem["errors"][0]["message"]


def test_an_inline_customers_errors_name_their_fields(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", {"parts": {"sms": {"body": "Hi {{ customer.name }}"}}})
    response = studio.client.post(
        "/v1/templates/reminder/preview",
        json={"customer": {"name": "Ann", "email": "nope"}},
        headers=studio.author,
    )
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["/customer/email"]
