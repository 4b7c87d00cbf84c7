"""The send pipeline end to end in embedded mode: the trigger API, routing with consent and quiet hours,
retries, fallback, idempotency, all through the real adapters and the in-process Dramatiq worker."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ccm.auth.models import Role
from ccm.communications.routing import next_sms_time
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database
from tests.channels.fake_twilio import FakeTwilio
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import sample
from tests.conftest import count_events

FINAL = {"delivered", "sent", "failed", "suppressed", "cancelled"}


@pytest.fixture
def sender_key(role_keys: dict[Role, dict[str, str]]) -> dict[str, str]:
    return role_keys[Role.sender]


def trigger(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/v1/communications", json=body, headers=headers)


def wait_for(client: TestClient, headers: dict[str, str], communication_id: str, statuses: set[str]) -> Any:
    return wait_until(client, headers, communication_id, lambda found: found["status"] in statuses)


def wait_until(
    client: TestClient, headers: dict[str, str], communication_id: str, done: Callable[[Any], bool]
) -> Any:
    """The communication's record once `done` says so, or as it is after 20 seconds."""
    deadline = time.monotonic() + 20
    while True:
        found = client.get(f"/v1/communications/{communication_id}", headers=headers).json()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_an_email_goes_out_and_its_record_tells_the_story(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink
) -> None:
    response = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        channels=["email"],
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/communications/{response.json()['id']}"
    found = wait_for(client, sender_key, response.json()["id"], {"sent"})
    assert found["status"] == "sent"
    assert (found["template"], found["version"], found["customer"]) == ("payment_reminder", 1, "CUST-1001")
    assert found["routing"]["mode"] == "all"
    [delivery] = found["deliveries"]
    assert (delivery["channel"], delivery["status"]) == ("email", "sent")
    actions = [entry["action"] for entry in found["timeline"]]
    assert actions[:2] == ["communication.accepted", "communication.routed"]
    assert "delivery.rendered" in actions
    assert "delivery.sent" in actions
    assert len(sink.handler.messages) == 1


def test_the_same_idempotency_key_replays_and_another_body_is_refused(
    client: TestClient, sender_key: dict[str, str], database: Database
) -> None:
    body = {"template": "payment_reminder", "customer": "CUST-1001", "data": sample("payment_reminder")}
    headers = {**sender_key, "Idempotency-Key": "order-7781-reminder"}
    first = client.post("/v1/communications", json=body, headers=headers)
    again = client.post("/v1/communications", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert count_events(database, "communication.accepted") == 1

    other = client.post(
        "/v1/communications", json={**body, "data": {**body["data"], "amount": 1}}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["type"] == "urn:ccm:problem:idempotency-key-reused"
    assert count_events(database, "communication.accepted") == 1


def test_a_reference_is_used_once_per_template(client: TestClient, sender_key: dict[str, str]) -> None:
    body = {
        "template": "payment_reminder",
        "customer": "CUST-1001",
        "data": sample("payment_reminder"),
        "reference": "INV-2026-0042",
    }
    first = client.post("/v1/communications", json=body, headers=sender_key)
    second = client.post("/v1/communications", json=body, headers=sender_key)
    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["communication"] == first.json()["id"]


def test_bad_triggers_are_refused_with_field_paths_and_nothing_is_stored(
    client: TestClient, sender_key: dict[str, str], database: Database
) -> None:
    data = {**sample("payment_reminder"), "amount": "lots"}
    bad_data = trigger(client, sender_key, template="payment_reminder", customer="CUST-1001", data=data)
    assert bad_data.status_code == 422
    assert [e["path"] for e in bad_data.json()["errors"]] == ["/data/amount"]

    no_customer = trigger(
        client, sender_key, template="payment_reminder", customer="CUST-9999", data=sample("payment_reminder")
    )
    assert [e["path"] for e in no_customer.json()["errors"]] == ["/customer"]
    no_phone = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1006",
        data=sample("payment_reminder"),
        channels=["sms"],
    )
    assert [e["path"] for e in no_phone.json()["errors"]] == ["/channels/0"]
    no_part = trigger(
        client,
        sender_key,
        template="marketing_offer",
        customer="CUST-1001",
        data=sample("marketing_offer"),
        channels=["print"],
    )
    assert [e["path"] for e in no_part.json()["errors"]] == ["/channels/0"]
    naive = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        send_at="2026-12-01T09:00:00",
    )
    assert naive.status_code == 422
    assert count_events(database, "communication.accepted") == 0


def test_an_inline_customer_is_created_with_the_communication(
    client: TestClient, sender_key: dict[str, str], database: Database
) -> None:
    customer = {
        "external_id": "CUST-NEW-1",
        "name": "Nia Okoye",
        "email": "nia@example.com",
        "timezone": "Europe/London",
    }
    response = trigger(
        client, sender_key, template="payment_reminder", customer=customer, data=sample("payment_reminder")
    )
    assert response.status_code == 202
    with database.read() as session:
        assert (
            session.scalars(select(Customer.name).where(Customer.external_id == "CUST-NEW-1")).one()
            == "Nia Okoye"
        )


def test_withdrawn_marketing_consent_is_suppressed_and_said(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink
) -> None:
    # CUST-1002 said no to email offers.
    response = trigger(
        client, sender_key, template="marketing_offer", customer="CUST-1002", data=sample("marketing_offer")
    )
    found = wait_for(client, sender_key, response.json()["id"], {"suppressed"})
    assert found["status"] == "suppressed"
    assert found["deliveries"] == []
    suppressed = [e for e in found["timeline"] if e["action"] == "communication.suppressed"]
    assert suppressed[0]["payload"] == {"channel": "email", "reason": "marketing consent withdrawn on email"}
    assert sink.handler.messages == []


def test_a_regulatory_document_goes_by_print_without_e_delivery_consent(
    client: TestClient, sender_key: dict[str, str]
) -> None:
    # CUST-1002 has not agreed to electronic documents: the statement is printed, not put in the portal.
    response = trigger(
        client, sender_key, template="annual_statement", customer="CUST-1002", data=sample("annual_statement")
    )
    # Routed: the letter waits for a print batch (nothing is sent till one is made).
    found = wait_for(client, sender_key, response.json()["id"], {"routed", "sent", "failed"})
    assert [d["channel"] for d in found["deliveries"]] == ["print"]
    assert {
        "channel": "portal",
        "reason": "a regulatory document goes electronically only with e-delivery consent",
    } in found["routing"]["suppressed"]


def test_an_sms_outside_waking_hours_waits_for_the_morning() -> None:
    settings = Settings()
    late = dt.datetime(2026, 11, 22, 23, 0, tzinfo=dt.UTC)  # 23:00 in London, in winter
    assert next_sms_time(settings, "Europe/London", late) == dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
    early = dt.datetime(2026, 11, 23, 6, 30, tzinfo=dt.UTC)
    assert next_sms_time(settings, "Europe/London", early) == dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
    assert next_sms_time(settings, "Europe/London", dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)) is None
    # 23:00 in New York is 04:00 UTC the next day; 08:00 there is 13:00 UTC.
    new_york_late = dt.datetime(2026, 11, 23, 4, 0, tzinfo=dt.UTC)
    assert next_sms_time(settings, "America/New_York", new_york_late) == dt.datetime(
        2026, 11, 23, 13, 0, tzinfo=dt.UTC
    )


def zone_where_it_is(hour: int) -> str:
    """A fixed-offset IANA zone whose local time now is `hour` o'clock (Etc/GMT signs are inverted)."""
    offset = (hour - dt.datetime.now(dt.UTC).hour) % 24
    offset = offset - 24 if offset > 12 else offset
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def live_in(database: Database, external_id: str, zone: str, **profile: Any) -> None:
    with database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == external_id)).one()
        customer.timezone = zone
        for name, value in profile.items():
            setattr(customer, name, value)


def test_an_sms_triggered_at_night_is_deferred_not_dropped(
    client: TestClient, sender_key: dict[str, str], twilio: FakeTwilio, database: Database
) -> None:
    live_in(database, "CUST-1001", zone_where_it_is(23))  # whatever time the test runs, it is 23:xx there
    response = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        channels=["sms"],
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = client.get(f"/v1/communications/{response.json()['id']}", headers=sender_key).json()
        if "delivery.deferred" in [e["action"] for e in found["timeline"]]:
            break
        time.sleep(0.05)
    assert "delivery.deferred" in [e["action"] for e in found["timeline"]], found
    [delivery] = found["deliveries"]
    assert delivery["status"] == "pending"
    waits = dt.datetime.fromisoformat(delivery["next_attempt_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=8) < waits <= dt.timedelta(hours=9)  # from 23:xx to 08:00
    assert twilio.requests == []


def test_an_smtp_4xx_is_retried_then_delivered(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink
) -> None:
    sink.handler.busy["amelia.hartley@example.co.uk"] = 2
    response = trigger(
        client,
        sender_key,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        channels=["email"],
    )
    found = wait_for(client, sender_key, response.json()["id"], {"sent", "failed"})
    assert found["status"] == "sent"
    [delivery] = found["deliveries"]
    assert delivery["attempts"] == 3
    actions = [e["action"] for e in found["timeline"]]
    assert actions.count("delivery.attempt_failed") == 2
    assert actions.count("delivery.rendered") == 1  # rendered once, the same bytes sent on the third try
    assert len(sink.handler.messages) == 1


def test_an_smtp_5xx_fails_over_to_sms(
    client: TestClient, sender_key: dict[str, str], sink: SmtpSink, twilio: FakeTwilio, database: Database
) -> None:
    live_in(
        database,
        "CUST-1001",
        zone_where_it_is(12),  # midday there: the SMS may go at once
        email="reject.amelia@example.co.uk",
        preferred_channels=["email", "sms"],
    )
    response = trigger(
        client, sender_key, template="payment_reminder", customer="CUST-1001", data=sample("payment_reminder")
    )
    found = wait_for(client, sender_key, response.json()["id"], {"sent", "failed"})
    assert found["routing"]["mode"] == "fallback"
    assert found["routing"]["chain"][:2] == ["email", "sms"]
    assert [(d["channel"], d["status"]) for d in found["deliveries"]] == [
        ("email", "failed"),
        ("sms", "queued"),
    ]
    assert "550" in found["deliveries"][0]["last_error"]
    assert [r["To"] for r in twilio.requests] == ["+447911123456"]
    assert "communication.fallback" in [e["action"] for e in found["timeline"]]
