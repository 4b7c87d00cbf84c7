"""SMS through Twilio (the official SDK), or recorded in the data dir when Twilio is not configured.

The SDK is pointed at CCM_TWILIO_API_BASE when set (a Twilio-compatible gateway, or the tests' local fake of
Twilio's REST API). Replies: 429 (honouring Retry-After) and 5xx are transient; an invalid number (21211), an
unsubscribed recipient (21610) and other 4xx are permanent.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import phonenumbers
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from ccm.channels import Channel
from ccm.channels.base import Envelope, PermanentDeliveryError, Prepared, Sent, TransientDeliveryError
from ccm.channels.sms_segments import SmsEncoding, count_segments
from ccm.communications.status import TWILIO_STATUSES, DeliveryStatus
from ccm.config import Settings

# Twilio error codes that will not change on a retry.
PERMANENT_CODES = {
    21211: "not a valid phone number",
    21408: "no permission to send to this region",
    21610: "the recipient has unsubscribed (replied STOP)",
    21612: "the number cannot receive messages from this sender",
    21614: "not a mobile number",
}


@dataclass(frozen=True)
class OutgoingSms:
    to: str  # E.164
    body: str
    status_callback: str | None = None


@dataclass(frozen=True)
class SentSms:
    provider_id: str  # Twilio's message SID
    status: str
    segments: int
    encoding: SmsEncoding


class SmsSender(Protocol):
    def send(self, message: OutgoingSms) -> SentSms: ...


def _checked(message: OutgoingSms, max_segments: int) -> tuple[int, SmsEncoding]:
    try:
        number = phonenumbers.parse(message.to, None)
    except phonenumbers.NumberParseException:
        raise PermanentDeliveryError(f"'{message.to}' is not a phone number in E.164 form") from None
    if (
        not phonenumbers.is_valid_number(number)
        or phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != message.to
    ):
        raise PermanentDeliveryError(f"'{message.to}' is not a valid phone number in E.164 form")
    counted = count_segments(message.body)
    if counted.segments > max_segments:
        raise PermanentDeliveryError(
            f"the message takes {counted.segments} segments ({counted.encoding.value}); at most "
            f"{max_segments} are allowed (CCM_SMS_MAX_SEGMENTS)"
        )
    return counted.segments, counted.encoding


class _HeaderKeepingHttpClient(TwilioHttpClient):  # type: ignore[misc]  # the twilio package is untyped
    """Keeps the last response's headers: a 429's Retry-After is not on the SDK's exception."""

    last_headers: Any = None

    def request(self, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().request(*args, **kwargs)
        self.last_headers = response.headers
        return response


class TwilioSmsSender:
    """One SDK client per worker thread (the SDK's HTTP session is not shared across threads)."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise ValueError("TwilioSmsSender needs CCM_TWILIO_ACCOUNT_SID and CCM_TWILIO_AUTH_TOKEN")
        self._account_sid = settings.twilio_account_sid
        self._auth_token = settings.twilio_auth_token.get_secret_value()
        self._from_number = settings.twilio_from_number
        self._messaging_service_sid = settings.twilio_messaging_service_sid
        self._api_base = str(settings.twilio_api_base).rstrip("/") if settings.twilio_api_base else None
        self._max_segments = settings.sms_max_segments
        self._local = threading.local()

    def _client(self) -> tuple[Client, _HeaderKeepingHttpClient]:
        client = getattr(self._local, "client", None)
        if client is None:
            http = _HeaderKeepingHttpClient(timeout=30)
            client = Client(self._account_sid, self._auth_token, http_client=http)
            if self._api_base:
                client.api.base_url = self._api_base
            self._local.client, self._local.http = client, http
        return client, self._local.http

    def send(self, message: OutgoingSms) -> SentSms:
        segments, encoding = _checked(message, self._max_segments)
        client, http = self._client()
        arguments: dict[str, Any] = {"to": message.to, "body": message.body}
        if self._messaging_service_sid:
            arguments["messaging_service_sid"] = self._messaging_service_sid
        else:
            arguments["from_"] = self._from_number
        if message.status_callback:
            arguments["status_callback"] = message.status_callback
        try:
            sent = client.messages.create(**arguments)
        except TwilioRestException as exc:
            raise self._classify(exc, http.last_headers) from None
        except (TwilioException, OSError) as exc:
            raise TransientDeliveryError(f"Twilio could not be reached: {type(exc).__name__}") from None
        return SentSms(
            provider_id=str(sent.sid), status=str(sent.status), segments=segments, encoding=encoding
        )

    @staticmethod
    def _classify(exc: TwilioRestException, headers: Any) -> TransientDeliveryError | PermanentDeliveryError:
        code = str(exc.code) if exc.code is not None else str(exc.status)
        if exc.status == 429 or exc.status >= 500:
            retry_after = None
            value = (headers or {}).get("Retry-After") if headers is not None else None
            if value is not None and str(value).strip().isdigit():
                retry_after = float(value)
            return TransientDeliveryError(
                f"Twilio answered {exc.status} (error {code}): try again later",
                provider_code=code,
                retry_after=retry_after,
            )
        reason = PERMANENT_CODES.get(exc.code or 0, "refused")
        return PermanentDeliveryError(
            f"Twilio refused the message (error {code}): {reason}", provider_code=code
        )


class RecordedSmsSender:
    """Without Twilio credentials: each message is written as a JSON file in the data dir, to look at."""

    def __init__(self, folder: Path, *, max_segments: int) -> None:
        self.folder = folder
        self._max_segments = max_segments

    def send(self, message: OutgoingSms) -> SentSms:
        segments, encoding = _checked(message, self._max_segments)
        provider_id = "REC" + uuid.uuid4().hex
        record = {
            "sid": provider_id,
            "to": message.to,
            "body": message.body,
            "status_callback": message.status_callback,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".incoming-")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(record, file, ensure_ascii=False, indent=2)
        os.replace(temporary, self.folder / f"{re.sub(r'[^A-Za-z0-9]', '', provider_id)}.json")
        return SentSms(provider_id=provider_id, status="recorded", segments=segments, encoding=encoding)


def make_sms_sender(settings: Settings) -> SmsSender:
    if settings.twilio_configured:
        return TwilioSmsSender(settings)
    return RecordedSmsSender(settings.data_dir / "outbox" / "sms", max_segments=settings.sms_max_segments)


class SmsAdapter:
    """The SMS channel: the text is the artifact; each message asks Twilio to call back with its status."""

    channel = Channel.sms

    def __init__(self, sender: SmsSender, *, max_segments: int, status_callback: str | None) -> None:
        self.sender = sender
        self.max_segments = max_segments
        self.status_callback = status_callback

    def prepare(self, envelope: Envelope) -> Prepared:
        if not envelope.recipient:
            raise PermanentDeliveryError("the customer has no mobile number")
        body = envelope.fields.get("body", "")
        segments, encoding = _checked(OutgoingSms(to=envelope.recipient, body=body), self.max_segments)
        return Prepared(
            content=body.encode(),
            media_type="text/plain; charset=utf-8",
            details={"segments": segments, "encoding": encoding.value},
        )

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        to = envelope.recipient or ""  # prepare() checked it
        sent = self.sender.send(
            OutgoingSms(to=to, body=prepared.content.decode(), status_callback=self.status_callback)
        )
        # Twilio answers "queued" or "accepted"; a recorded message has gone as far as it ever will.
        status = TWILIO_STATUSES.get(sent.status, DeliveryStatus.sent)
        return Sent(status=status, provider_id=sent.provider_id)
