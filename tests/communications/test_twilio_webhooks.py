"""Twilio's callbacks, signed as Twilio signs them (the SDK's RequestValidator): status callbacks move an SMS
delivery forward only, every one is kept, forged ones are refused; STOP, START and HELP from customers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from ccm.channels import Channel
from ccm.channels.models import ProviderCallback
from ccm.communications import service
from ccm.communications.status import DeliveryStatus
from ccm.customers.models import Consent, ConsentChange, Customer
from ccm.db import Database
from tests.channels.fake_twilio import ACCOUNT_SID, AUTH_TOKEN
from tests.communications.conftest import Sender, sample
from tests.communications.test_pipeline import live_in, zone_where_it_is
from tests.conftest import ADMIN_KEY, bearer, count_events

STATUS_URL = "https://ccm.bank.example/webhooks/twilio/status"
INBOUND_URL = "https://ccm.bank.example/webhooks/twilio/inbound"


def admin_headers() -> dict[str, str]:
    return bearer(ADMIN_KEY)


def signed(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


def status(client: TestClient, sid: str, value: str, **extra: str) -> int:
    params = {"MessageSid": sid, "MessageStatus": value, "AccountSid": ACCOUNT_SID, **extra}
    path = STATUS_URL.removeprefix("https://ccm.bank.example")
    return client.post(path, data=params, headers=signed(STATUS_URL, params)).status_code


def callbacks(database: Database) -> list[ProviderCallback]:
    with database.read() as session:
        return list(session.scalars(select(ProviderCallback).order_by(ProviderCallback.id)))


@pytest.fixture
def sms(sender: Sender) -> str:
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    assert delivery.provider_id is not None
    return delivery.id


def test_signed_callbacks_move_the_delivery_forward_and_never_back(
    client: TestClient, sender: Sender, sms: str, database: Database
) -> None:
    sid = sender.delivery(sms).provider_id or ""
    assert status(client, sid, "sent") == 204
    assert sender.delivery(sms).status == DeliveryStatus.sent
    assert status(client, sid, "delivered") == 204
    assert sender.delivery(sms).status == DeliveryStatus.delivered
    # Late and repeated callbacks: kept, not applied.
    assert status(client, sid, "sent") == 204
    assert status(client, sid, "delivered") == 204
    assert status(client, sid, "failed", ErrorCode="30003") == 204
    assert sender.delivery(sms).status == DeliveryStatus.delivered

    kept = callbacks(database)
    assert [(c.status, c.applied) for c in kept] == [
        ("sent", True),
        ("delivered", True),
        ("sent", False),
        ("delivered", False),
        ("failed", False),
    ]
    assert all(c.delivery_id == sms for c in kept)
    assert count_events(database, "delivery.delivered") == 1


def test_unsigned_or_forged_callbacks_are_refused_and_change_nothing(
    client: TestClient, sender: Sender, sms: str, database: Database
) -> None:
    sid = sender.delivery(sms).provider_id or ""
    params = {"MessageSid": sid, "MessageStatus": "delivered"}
    path = "/webhooks/twilio/status"
    unsigned = client.post(path, data=params)
    forged = client.post(path, data=params, headers=signed(STATUS_URL, params, token="not-the-auth-token"))
    elsewhere = client.post(
        path, data=params, headers=signed("https://evil.example/webhooks/twilio/status", params)
    )
    altered = client.post(
        path, data={**params, "MessageStatus": "failed"}, headers=signed(STATUS_URL, params)
    )
    for response in (unsigned, forged, elsewhere, altered):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
    assert callbacks(database) == []
    assert sender.delivery(sms).status == DeliveryStatus.queued


def test_a_callback_that_arrives_before_the_send_is_recorded_applies_when_it_is(
    client: TestClient, sender: Sender, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sms_adapter = sender.deliverer.adapters[Channel.sms]
    real_send = sms_adapter.send

    def send_and_be_called_back_at_once(envelope, prepared):  # type: ignore[no-untyped-def]
        sent = real_send(envelope, prepared)
        assert status(client, sent.provider_id or "", "delivered") == 204
        return sent

    monkeypatch.setattr(sms_adapter, "send", send_and_be_called_back_at_once)
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    assert delivery.status == DeliveryStatus.delivered
    [callback] = callbacks(database)
    assert (callback.delivery_id, callback.applied) == (delivery.id, True)


def test_a_callback_before_a_chunk_records_its_send_applies_when_it_does(
    client: TestClient, sender: Sender, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a batch's chunk (Deliverer.deliver_many), whose sends are recorded together."""
    live_in(database, "CUST-1001", zone_where_it_is(12))  # inside the SMS send window
    sms_adapter = sender.deliverer.adapters[Channel.sms]
    real_send = sms_adapter.send

    def send_and_be_called_back_at_once(envelope, prepared):  # type: ignore[no-untyped-def]
        sent = real_send(envelope, prepared)
        assert status(client, sent.provider_id or "", "delivered") == 204
        return sent

    monkeypatch.setattr(sms_adapter, "send", send_and_be_called_back_at_once)
    data = sample("payment_reminder")
    ids = [sender.create("payment_reminder", "CUST-1001", data, [Channel.sms])[0] for _ in range(2)]
    chunk = sender.deliverer.deliver_many(ids)
    assert chunk.statuses == dict.fromkeys(ids, DeliveryStatus.delivered)
    assert [sender.delivery(d).status for d in ids] == ["delivered", "delivered"]
    assert sorted((c.delivery_id or "", c.applied) for c in callbacks(database)) == sorted(
        (d, True) for d in ids
    )
    with database.read() as session:
        communication = service.get_communication(session, sender.delivery(ids[0]).communication_id)
        assert communication.status == "delivered"


def sms_consents(database: Database, external_id: str) -> dict[str, bool]:
    with database.read() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == external_id)).one()
        rows = session.scalars(
            select(Consent).where(Consent.customer_id == customer.id, Consent.channel == "sms")
        )
        return {row.purpose: row.granted for row in rows}


def inbound(client: TestClient, sender_number: str, body: str) -> tuple[int, str]:
    params = {"MessageSid": "SM" + "9" * 32, "From": sender_number, "To": "+447400123456", "Body": body}
    response = client.post("/webhooks/twilio/inbound", data=params, headers=signed(INBOUND_URL, params))
    return response.status_code, response.text


def test_stop_withdraws_sms_consent_and_start_restores_it(client: TestClient, database: Database) -> None:
    # CUST-1003 has SMS service and marketing consent.
    assert sms_consents(database, "CUST-1003") == {"service": True, "marketing": True}

    code, reply = inbound(client, "+12125550178", " stop ")
    assert code == 200
    assert "<Message>" not in reply  # Twilio confirms an opt-out itself
    assert sms_consents(database, "CUST-1003") == {"service": False, "marketing": False}
    with database.read() as session:
        change = session.scalars(select(ConsentChange).order_by(ConsentChange.id.desc())).first()
        assert change is not None
        assert (change.source, change.changed_by) == ("sms reply STOP", "customer:CUST-1003")

    assert inbound(client, "+12125550178", "Start")[0] == 200
    assert sms_consents(database, "CUST-1003") == {"service": True, "marketing": True}


def test_start_does_not_grant_marketing_that_was_never_given(client: TestClient, database: Database) -> None:
    # CUST-1001 said no to SMS marketing before replying STOP.
    inbound(client, "+447911123456", "STOP")
    inbound(client, "+447911123456", "START")
    assert sms_consents(database, "CUST-1001") == {"service": True, "marketing": False}


def test_help_is_answered_and_other_texts_change_nothing(client: TestClient, database: Database) -> None:
    before = sms_consents(database, "CUST-1003")
    code, reply = inbound(client, "+12125550178", "help")
    assert code == 200
    assert "Reply STOP to stop text messages" in reply
    assert inbound(client, "+12125550178", "please stop calling me about my loan")[1].count("<Message>") == 0
    assert sms_consents(database, "CUST-1003") == before
    assert [c.kind for c in callbacks(database)] == ["inbound", "inbound"]


def test_start_never_undoes_an_answer_given_another_way(client: TestClient, database: Database) -> None:
    # CUST-1003 told an agent: no more service texts. A START from the number must not turn them back on.
    response = client.put(
        "/v1/customers/CUST-1003/consents",
        json={
            "consents": [{"channel": "sms", "purpose": "service", "granted": False}],
            "source": "phone call",
        },
        headers=admin_headers(),
    )
    assert response.status_code == 200
    inbound(client, "+12125550178", "START")
    assert sms_consents(database, "CUST-1003") == {"service": False, "marketing": True}
