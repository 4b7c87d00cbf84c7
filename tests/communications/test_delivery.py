"""One delivery at a time through the real adapters: what is sent is what is stored, retries resend the same
bytes, permanent failures fail, and a delivery is never sent twice."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import io
import subprocess
import threading
from email.message import EmailMessage

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from ccm.channels import Channel
from ccm.channels.artifacts import ArtifactMissing, ArtifactStore
from ccm.channels.base import TransientDeliveryError
from ccm.channels.models import PortalDocument, PortalMessage
from ccm.communications import service
from ccm.communications.delivery import artifact_store
from ccm.communications.status import DeliveryStatus
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.errors import InvalidInput
from tests.channels.fake_twilio import FakeTwilio
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import Sender, sample
from tests.conftest import count_events


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_an_email_is_sent_and_the_stored_artifact_is_what_the_server_received(
    sender: Sender, sink: SmtpSink
) -> None:
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email])

    assert delivery.status == DeliveryStatus.sent
    [received] = sink.handler.messages
    assert received.recipients == ["amelia.hartley@example.co.uk"]
    stored = artifact_store(sender.settings).get(delivery.artifact_sha256 or "")
    assert stored == received.data
    assert parse(stored)["Message-ID"] == delivery.message_id == delivery.provider_id
    plain = parse(received.data).get_body(("plain",))
    assert plain is not None
    assert "Amelia Hartley" in plain.get_content()
    assert hashlib.sha256(stored).hexdigest() == delivery.artifact_sha256


def test_a_transient_refusal_keeps_the_delivery_pending_and_the_retry_sends_the_same_message(
    sender: Sender, sink: SmtpSink, database: Database
) -> None:
    sink.handler.busy["amelia.hartley@example.co.uk"] = 1
    [delivery_id] = sender.create(
        "payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email]
    )

    with pytest.raises(TransientDeliveryError, match="451"):
        sender.deliverer.deliver(delivery_id)
    first = sender.delivery(delivery_id)
    assert (first.status, first.attempts) == (DeliveryStatus.pending, 1)
    assert "451" in (first.last_error or "")
    assert count_events(database, "delivery.attempt_failed") == 1

    assert sender.deliverer.deliver(delivery_id) is DeliveryStatus.sent
    [received] = sink.handler.messages
    again = sender.delivery(delivery_id)
    assert again.attempts == 2
    # The very bytes stored (and logged) before the first attempt went out on the second.
    assert artifact_store(sender.settings).get(again.artifact_sha256 or "") == received.data
    assert again.artifact_sha256 == first.artifact_sha256
    assert count_events(database, "delivery.rendered") == 1


def test_a_delivery_is_never_sent_twice(sender: Sender, sink: SmtpSink) -> None:
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email])
    assert sender.deliverer.deliver(delivery.id) is DeliveryStatus.sent
    assert len(sink.handler.messages) == 1


def test_a_permanent_refusal_fails_the_delivery_with_the_reason(
    sender: Sender, sink: SmtpSink, database: Database
) -> None:
    sender.set_email("CUST-1001", "reject.me@example.co.uk")
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email])
    assert delivery.status == DeliveryStatus.failed
    assert "550" in (delivery.last_error or "")
    assert sink.handler.messages == []
    assert count_events(database, "delivery.failed") == 1


def test_marketing_email_carries_a_working_one_click_unsubscribe(sender: Sender, sink: SmtpSink) -> None:
    sender.send("marketing_offer", "CUST-1001", sample("marketing_offer"), [Channel.email])
    [received] = sink.handler.messages
    message = parse(received.data)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<https://ccm.bank.example/unsubscribe/")


def test_an_sms_goes_through_twilio_with_its_status_callback(sender: Sender, twilio: FakeTwilio) -> None:
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    assert delivery.status == DeliveryStatus.queued
    [request] = twilio.requests
    assert request["To"] == "+447911123456"
    assert request["StatusCallback"] == "https://ccm.bank.example/webhooks/twilio/status"
    assert (delivery.provider_id or "").startswith("SM")
    assert delivery.details["segments"] >= 1
    assert delivery.details["encoding"] in {"GSM-7", "UCS-2"}
    stored = artifact_store(sender.settings).get(delivery.artifact_sha256 or "")
    assert stored.decode() == request["Body"]


def test_a_letter_is_stored_as_a_pdf_with_its_page_count_and_queued_for_printing(sender: Sender) -> None:
    delivery = sender.send("claim_decision", "CUST-1001", sample("claim_decision"), [Channel.print])
    assert delivery.status == DeliveryStatus.queued
    assert delivery.media_type == "application/pdf"
    pdf = PdfReader(io.BytesIO(artifact_store(sender.settings).get(delivery.artifact_sha256 or "")))
    assert delivery.details["pages"] == len(pdf.pages)
    assert delivery.details["sheets"] == (len(pdf.pages) + 1) // 2
    assert "Amelia Hartley" in pdf.pages[0].extract_text()
    assert delivery.recipient is not None
    assert "EC1R 4SX" in delivery.recipient


def test_the_portal_gets_the_message_and_the_letter_as_a_document(sender: Sender, database: Database) -> None:
    delivery = sender.send("annual_statement", "CUST-1004", sample("annual_statement"), [Channel.portal])
    assert delivery.status == DeliveryStatus.delivered
    with database.read() as session:
        message = session.scalars(select(PortalMessage).where(PortalMessage.delivery_id == delivery.id)).one()
        [document] = session.scalars(select(PortalDocument).where(PortalDocument.message_id == message.id))
    assert message.id == delivery.provider_id
    assert document.media_type == "application/pdf"
    store = ArtifactStore(sender.settings.data_dir / "artifacts")
    pdf = store.get(document.sha256)
    text = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    assert "Katharina Vogel" in text
    assert document.pages == len(PdfReader(io.BytesIO(pdf)).pages) > 1


def test_a_channel_without_a_part_or_an_address_is_refused_before_anything_is_stored(
    sender: Sender, database: Database
) -> None:
    before = count_events(database)
    with pytest.raises(InvalidInput) as refused:
        sender.create("marketing_offer", "CUST-1006", sample("marketing_offer"), [Channel.sms, Channel.email])
    assert [e.path for e in refused.value.errors] == ["/channels/0"]
    with pytest.raises(InvalidInput) as no_phone:
        sender.create("payment_reminder", "CUST-1006", sample("payment_reminder"), [Channel.sms])
    assert "mobile number" in no_phone.value.errors[0].message
    assert count_events(database) == before


def test_two_workers_delivering_at_once_send_it_once(sender: Sender, twilio: FakeTwilio) -> None:
    [delivery_id] = sender.create("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    start = threading.Barrier(2)
    outcomes: list[DeliveryStatus] = []

    def worker() -> None:
        start.wait()
        outcomes.append(sender.deliverer.deliver(delivery_id))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(twilio.requests) == 1
    delivery = sender.delivery(delivery_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.queued, 1)
    # The second worker either found it held (pending) or found it already sent (queued).
    assert DeliveryStatus.queued in outcomes
    assert set(outcomes) <= {DeliveryStatus.queued, DeliveryStatus.pending}


def test_a_delivery_held_by_another_worker_is_left_alone(
    sender: Sender, twilio: FakeTwilio, database: Database
) -> None:
    [delivery_id] = sender.create("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    with database.transaction() as session:
        service.get_delivery(session, delivery_id).claimed_until = utcnow() + dt.timedelta(minutes=1)
    assert sender.deliverer.deliver(delivery_id) is DeliveryStatus.pending
    assert twilio.requests == []
    with database.transaction() as session:  # the other worker died: its hold runs out
        service.get_delivery(session, delivery_id).claimed_until = utcnow() - dt.timedelta(seconds=1)
    assert sender.deliverer.deliver(delivery_id) is DeliveryStatus.queued
    assert len(twilio.requests) == 1


def test_a_fault_in_an_adapter_counts_as_a_failed_attempt_and_releases_the_delivery(
    sender: Sender, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    [delivery_id] = sender.create("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])

    def broken(envelope: object, prepared: object) -> None:
        raise KeyError("secret body text")

    monkeypatch.setattr(sender.deliverer.adapters[Channel.sms], "send", broken)
    with pytest.raises(KeyError):
        sender.deliverer.deliver(delivery_id)
    delivery = sender.delivery(delivery_id)
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == (DeliveryStatus.pending, 1, None)
    assert delivery.last_error == "unexpected KeyError"  # the type, never the message


def test_a_name_cannot_add_an_addressee_and_an_address_needing_smtputf8_fails_plainly(
    sender: Sender, sink: SmtpSink, database: Database
) -> None:
    with database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == "CUST-1001")).one()
        customer.name = "Zoë <boss@evil.example>, other@evil.example"
    sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email])
    [received] = sink.handler.messages
    to = parse(received.data)["To"]
    assert [address.addr_spec for address in to.addresses] == ["amelia.hartley@example.co.uk"]

    sender.set_email("CUST-1001", "jöhn@exämple.com")
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email])
    assert delivery.status == DeliveryStatus.failed
    assert "SMTPUTF8" in (delivery.last_error or "")


def test_a_failure_after_the_claim_is_counted_and_releases_the_delivery(
    sender: Sender, sink: SmtpSink, database: Database
) -> None:
    sink.handler.busy["amelia.hartley@example.co.uk"] = 1
    [delivery_id] = sender.create(
        "payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email]
    )
    with pytest.raises(TransientDeliveryError):
        sender.deliverer.deliver(delivery_id)
    first = sender.delivery(delivery_id)
    assert first.attempts == 1
    assert first.artifact_sha256

    artifact_store(sender.settings).path_of(first.artifact_sha256).unlink()  # a lost or unreadable store
    with pytest.raises(ArtifactMissing):
        sender.deliverer.deliver(delivery_id)

    again = sender.delivery(delivery_id)
    assert again.status == DeliveryStatus.pending
    assert again.claimed_until is None  # released for the next try, not held till the lease runs out
    assert again.attempts == 2
    assert count_events(database, "delivery.attempt_failed") == 2
