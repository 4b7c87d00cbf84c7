"""Portal deliveries: sanitized messages, the "new document in your portal" notice, links handed out."""

from __future__ import annotations

import email
import email.policy
import logging
import re
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ccm.auth.models import Role
from ccm.channels import Channel
from ccm.channels.portal import portal_token, read_portal_token, sanitize
from ccm.communications.models import Communication
from ccm.communications.status import DeliveryStatus
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import Sender, sample
from tests.conftest import count_events


def test_sanitize_keeps_the_content_and_drops_what_could_run_or_track() -> None:
    dirty = (
        "<h2 onclick='steal()'>Your statement</h2><script>alert(1)</script>"
        "<p style='x'>Balance <strong>£1,200</strong></p><iframe src='https://evil.example'></iframe>"
        "<a href='javascript:alert(1)'>bad</a><a href='https://bank.example/help'>help</a>"
        "<a href='data:application/octet-stream;base64,TVqQ'>download</a>"
        "<img src='data:image/png;base64,iVBO'>"
        "<img src='https://tracker.example/pixel.gif'><form action='https://evil.example'><input></form>"
    )
    clean = sanitize(dirty)
    assert "<h2>Your statement</h2>" in clean
    assert "<strong>£1,200</strong>" in clean
    for gone in (
        "onclick",
        "<script",
        "alert(1)",
        "<iframe",
        "javascript:",
        "<form",
        "<input",
        "tracker.example",
    ):
        assert gone not in clean, gone
    assert '<a href="https://bank.example/help" rel="noopener noreferrer">help</a>' in clean


def test_a_portal_delivery_can_ask_for_a_notice_by_email_with_the_customers_link(
    sender: Sender, sink: SmtpSink, database: Database
) -> None:
    delivery = sender.send(
        "annual_statement",
        "CUST-1004",
        sample("annual_statement"),
        [Channel.portal],
        options={"portal_notice": ["email"]},
    )
    assert delivery.status == DeliveryStatus.delivered
    with database.read() as session:
        notice = session.scalars(
            select(Communication).where(Communication.parent_id == delivery.communication_id)
        ).one()
    [notice_delivery] = sender.create_for(notice.id)
    assert sender.deliverer.deliver(notice_delivery) is DeliveryStatus.sent

    [received] = sink.handler.messages
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "New in your Northwind Bank inbox: Your 2025 annual statement"
    html = message.get_body(("html",))
    assert html is not None
    link = re.search(r'href="(https://ccm\.bank\.example/portal/[^"]+)"', html.get_content())
    assert link is not None
    assert read_portal_token(sender.settings, link.group(1).rsplit("/", 1)[1]) == "CUST-1004"


def test_a_notice_that_cannot_be_made_is_logged_and_the_portal_message_stays(
    sender: Sender, database: Database
) -> None:
    # CUST-1006 has no mobile number: the SMS notice cannot be made.
    delivery = sender.send(
        "welcome", "CUST-1006", sample("welcome"), [Channel.portal], options={"portal_notice": ["sms"]}
    )
    assert delivery.status == DeliveryStatus.delivered
    assert count_events(database, "communication.notice_failed") == 1
    assert count_events(database, "communication.accepted") == 1


def test_an_agent_gets_a_signed_link_to_the_customers_inbox(
    client: TestClient, sender: Sender, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    response = client.post("/v1/customers/CUST-1004/portal-link", headers=role_keys[Role.agent])
    assert response.status_code == 200
    link = response.json()["url"]
    assert read_portal_token(sender.settings, link.rsplit("/", 1)[1]) == "CUST-1004"
    assert count_events(database, "customer.portal_link_issued") == 1
    assert (
        client.post("/v1/customers/CUST-9999/portal-link", headers=role_keys[Role.agent]).status_code == 404
    )


def test_a_portal_link_never_reaches_the_request_log(
    client: TestClient, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    token = portal_token(sender.settings, external_id="CUST-1004")
    with caplog.at_level(logging.INFO, logger="ccm.requests"):
        assert client.get(f"/portal/{token}").status_code == 200
        client.get(f"/unsubscribe/{token}")
    lines = [record.getMessage() for record in caplog.records if record.name == "ccm.requests"]
    assert lines[0].startswith("GET /portal/<token> 200")
    assert lines[1].startswith("GET /unsubscribe/<token> 404")
    assert not any(token in line or "CUST-1004" in line for line in lines)
