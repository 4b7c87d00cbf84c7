"""SMS through the real Twilio SDK against a local fake of Twilio's REST API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccm.channels.base import PermanentDeliveryError, TransientDeliveryError
from ccm.channels.sms import OutgoingSms, RecordedSmsSender, TwilioSmsSender, make_sms_sender
from ccm.channels.sms_segments import SmsEncoding
from ccm.config import Settings
from tests.channels.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

CALLBACK = "https://ccm.example/webhooks/twilio/status"


def settings_for(fake: FakeTwilio, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from_number": "+447400123456",
        "twilio_api_base": fake.base_url,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_the_request_carries_body_to_from_and_status_callback(twilio: FakeTwilio, tmp_path: Path) -> None:
    sender = make_sms_sender(settings_for(twilio, tmp_path))
    assert isinstance(sender, TwilioSmsSender)
    sent = sender.send(OutgoingSms(to="+447911123456", body="Your code is 482913", status_callback=CALLBACK))
    assert sent.provider_id.startswith("SM")
    assert sent.status == "queued"
    assert (sent.segments, sent.encoding) == (1, SmsEncoding.gsm7)
    [request] = twilio.requests
    assert request == {
        "To": "+447911123456",
        "From": "+447400123456",
        "Body": "Your code is 482913",
        "StatusCallback": CALLBACK,
    }


def test_a_messaging_service_instead_of_a_number(twilio: FakeTwilio, tmp_path: Path) -> None:
    service = "MG" + "2" * 32
    sender = TwilioSmsSender(settings_for(twilio, tmp_path, twilio_messaging_service_sid=service))
    sender.send(OutgoingSms(to="+447911123456", body="Hi"))
    assert twilio.requests[0]["MessagingServiceSid"] == service
    assert "From" not in twilio.requests[0]


def test_429_is_transient_and_honours_retry_after(twilio: FakeTwilio, tmp_path: Path) -> None:
    sender = TwilioSmsSender(settings_for(twilio, tmp_path))
    with pytest.raises(TransientDeliveryError) as raised:
        sender.send(OutgoingSms(to="+447911123450", body="Hi"))
    assert raised.value.retry_after == 7
    assert raised.value.provider_code == "20429"
    with pytest.raises(TransientDeliveryError, match="500"):
        sender.send(OutgoingSms(to="+447911123451", body="Hi"))


@pytest.mark.parametrize(
    ("to", "code", "reason"),
    [("+447911123452", "21211", "not a valid phone number"), ("+447911123453", "21610", "unsubscribed")],
)
def test_invalid_or_unsubscribed_numbers_are_permanent(
    twilio: FakeTwilio, tmp_path: Path, to: str, code: str, reason: str
) -> None:
    sender = TwilioSmsSender(settings_for(twilio, tmp_path))
    with pytest.raises(PermanentDeliveryError, match=reason) as raised:
        sender.send(OutgoingSms(to=to, body="Hi"))
    assert raised.value.provider_code == code


def test_numbers_and_lengths_are_checked_before_anything_is_sent(twilio: FakeTwilio, tmp_path: Path) -> None:
    sender = TwilioSmsSender(settings_for(twilio, tmp_path, sms_max_segments=2))
    for to in ("07911 123456", "+44 7911 123456", "+4479111"):
        with pytest.raises(PermanentDeliveryError, match=r"E\.164"):
            sender.send(OutgoingSms(to=to, body="Hi"))
    with pytest.raises(PermanentDeliveryError, match="3 segments"):
        sender.send(OutgoingSms(to="+447911123456", body="x" * 400))
    assert twilio.requests == []


def test_unreachable_twilio_is_transient(tmp_path: Path) -> None:
    fake = FakeTwilio().start()
    settings = settings_for(fake, tmp_path)
    fake.stop()
    with pytest.raises(TransientDeliveryError, match="could not be reached"):
        TwilioSmsSender(settings).send(OutgoingSms(to="+447911123456", body="Hi"))


def test_without_twilio_messages_are_recorded(tmp_path: Path) -> None:
    sender = make_sms_sender(Settings(data_dir=tmp_path))
    assert isinstance(sender, RecordedSmsSender)
    sent = sender.send(OutgoingSms(to="+447911123456", body="Café ☕", status_callback=CALLBACK))
    assert sent.encoding is SmsEncoding.ucs2
    [written] = list((tmp_path / "outbox" / "sms").iterdir())
    assert json.loads(written.read_text()) == {
        "sid": sent.provider_id,
        "to": "+447911123456",
        "body": "Café ☕",
        "status_callback": CALLBACK,
    }
