"""The customer portal in real headless Chromium: the signed link opens the inbox, a message and its PDF;
expired and tampered links are refused; another customer's message is 404; opening records `read`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from ccm.channels import Channel
from ccm.channels.models import PortalMessage
from ccm.channels.portal import portal_link
from ccm.communications import service
from ccm.communications.delivery import Deliverer, make_deliverer
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database
from ccm.templates_engine.service import make_engine
from tests.communications.conftest import sample
from tests.conftest import count_events


@pytest.fixture
def database_url(demo_database_url: str) -> str:
    return demo_database_url


@pytest.fixture
def deliverer(database: Database, settings: Settings) -> Deliverer:
    return make_deliverer(database, settings, make_engine(database, settings))


def deliver(
    database: Database, settings: Settings, deliverer: Deliverer, template: str, customer: str
) -> str:
    """Puts a message in the customer's portal inbox; answers its delivery id."""
    with database.transaction() as session:
        row = session.scalars(select(Customer).where(Customer.external_id == customer)).one()
        communication = service.create_communication(
            session,
            settings,
            template_key=template,
            customer=row,
            data=sample(template),
            channels=[Channel.portal],
            actor="test:sender",
        )
        [delivery] = service.route_many(session, settings, [communication.id], actor="test:router").deliveries
    assert deliverer.deliver(delivery.id) is DeliveryStatus.delivered
    return delivery.id


def message_id_of(database: Database, delivery_id: str) -> str:
    with database.read() as session:
        return session.scalars(select(PortalMessage.id).where(PortalMessage.delivery_id == delivery_id)).one()


def test_the_link_opens_the_inbox_the_message_and_its_pdf(
    page: Page, live_server: str, database: Database, settings: Settings, deliverer: Deliverer, tmp_path: Path
) -> None:
    statement = deliver(database, settings, deliverer, "annual_statement", "CUST-1004")
    deliver(database, settings, deliverer, "welcome", "CUST-1004")
    link = portal_link(settings, external_id="CUST-1004")
    assert link.startswith(f"{live_server}/portal/")

    response = page.goto(link)
    assert response is not None
    assert response.status == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    assert (
        "script-src" not in response.headers["content-security-policy"]
    )  # default-src 'none': no script runs
    expect(page.get_by_role("heading", name="Your messages")).to_be_visible()
    items = page.get_by_role("list", name="Messages").get_by_role("listitem")
    expect(items).to_have_count(2)
    expect(page.get_by_text("New", exact=True)).to_have_count(2)

    page.get_by_role("link", name="Your 2025 annual statement").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your 2025 annual statement")
    expect(page.locator(".body")).to_contain_text("Dear Katharina Vogel")
    assert count_events(database, "delivery.read") == 1
    with database.read() as session:
        assert service.get_delivery(session, statement).status == DeliveryStatus.read

    with page.expect_download() as download_info:
        page.get_by_role("link", name="annual_statement.pdf").click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF-")
    text = subprocess.run(["pdftotext", str(saved), "-"], capture_output=True, check=True).stdout.decode()
    assert "Katharina Vogel" in text

    page.get_by_role("link", name="All messages").click()
    expect(page.get_by_text("New", exact=True)).to_have_count(1)  # the statement is read now
    page.reload()
    page.go_back()
    assert count_events(database, "delivery.read") == 1  # read once, however often it is opened


def test_an_expired_or_tampered_link_is_refused(
    page: Page,
    live_server: str,
    database: Database,
    settings: Settings,
    deliverer: Deliverer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deliver(database, settings, deliverer, "welcome", "CUST-1004")
    made_at = time.time() - (settings.portal_link_days * 86400 + 60)
    with monkeypatch.context() as past:
        past.setattr("itsdangerous.timed.time.time", lambda: made_at)
        expired = portal_link(settings, external_id="CUST-1004")
    response = page.goto(expired)
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading")).to_have_text("This link has expired")
    expect(page.get_by_text("Welcome")).to_have_count(0)

    good = portal_link(settings, external_id="CUST-1004")
    token = good.rsplit("/", 1)[1]
    payload, _, signature = token.rpartition(".")
    tampered_signature = (
        f"{live_server}/portal/{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    )
    other_customer = f"{live_server}/portal/{token.replace(token[2], 'x' if token[2] != 'x' else 'y', 1)}"
    for url in (tampered_signature, other_customer, f"{live_server}/portal/not-a-token"):
        response = page.goto(url)
        assert response is not None
        assert response.status == 404, url
        expect(page.get_by_role("heading")).to_have_text("Not found")


def test_another_customers_message_and_document_are_not_found(
    page: Page, live_server: str, database: Database, settings: Settings, deliverer: Deliverer
) -> None:
    theirs = message_id_of(database, deliver(database, settings, deliverer, "annual_statement", "CUST-1001"))
    mine = portal_link(settings, external_id="CUST-1004")

    response = page.goto(f"{mine}/messages/{theirs}")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading")).to_have_text("Not found")
    expect(page.get_by_text("Amelia")).to_have_count(0)

    their_link = portal_link(settings, external_id="CUST-1001")
    page.goto(f"{their_link}/messages/{theirs}")
    document_href = page.get_by_role("link", name="annual_statement.pdf").get_attribute("href")
    assert document_href is not None
    document_id = document_href.rsplit("/", 1)[1]
    response = page.request.get(f"{mine}/messages/{theirs}/documents/{document_id}")
    assert response.status == 404
    assert count_events(database, "delivery.read") == 1  # only the owner's opening counted
