"""Twilio's webhooks: message status callbacks and inbound messages (STOP, START, HELP).

Both check X-Twilio-Signature with the SDK's RequestValidator against the URL Twilio was given, built from
CCM_PUBLIC_BASE_URL (behind a proxy, the URL this server sees is not the one Twilio signed). An unsigned or
forged request is answered 403 and changes nothing. Every signed callback is kept (provider_callbacks),
matched to its delivery or not, applied or not: the state machine decides whether it moves the delivery.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

from ccm.auth.deps import DatabaseDep, SettingsDep
from ccm.channels import Channel
from ccm.channels.models import ProviderCallback
from ccm.communications.delivery import apply_callback
from ccm.communications.models import Delivery
from ccm.config import Settings
from ccm.customers import service as customers
from ccm.customers.models import ConsentChange, Customer, Purpose
from ccm.customers.schemas import ConsentIn, ConsentsIn
from ccm.db import lock_name, utcnow
from ccm.errors import Forbidden

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"], include_in_schema=False)

# Twilio's standard opt-out, opt-in and help keywords: the whole message, in any case.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
STOP_SOURCE = "sms reply STOP"
START_SOURCE = "sms reply START"


async def _signed_params(request: Request, settings: Settings) -> dict[str, str]:
    if not settings.twilio_configured or settings.twilio_auth_token is None:
        raise Forbidden("Twilio is not configured here: its requests cannot be checked")
    # Twilio posts application/x-www-form-urlencoded; blank values count in the signature, so they are kept.
    try:
        params = dict(
            parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        )
    except UnicodeDecodeError:
        raise Forbidden("the request's body is not a Twilio form") from None
    url = str(settings.public_base_url).rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    algorithm = get_signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
    signature = request.headers.get("x-twilio-signature", "")
    if not signature or not validator.validate(url, params, signature, algorithm=algorithm):
        log.warning("refused a Twilio webhook with a missing or wrong signature: %s", request.url.path)
        raise Forbidden("the request's X-Twilio-Signature does not match")
    return params


@router.post("/status", status_code=204)
async def status_callback(request: Request, database: DatabaseDep, settings: SettingsDep) -> Response:
    """A message's status changed at Twilio. Kept in any case; applied if it moves the delivery forward."""
    params = await _signed_params(request, settings)
    sid = params.get("MessageSid") or params.get("SmsSid")
    with database.transaction() as session:
        callback = ProviderCallback(
            provider="twilio",
            kind="status",
            provider_id=sid,
            status=(params.get("MessageStatus") or params.get("SmsStatus") or "").lower() or None,
            applied=False,
            params=params,
            received_at=utcnow(),
        )
        session.add(callback)
        delivery = None
        if sid:
            # The send may be being recorded right now: wait for it, so the callback is either matched here
            # or seen by the recording (which applies early callbacks), never missed by both.
            lock_name(session, f"twilio:{sid}")
            delivery = session.scalars(
                select(Delivery)
                .where(Delivery.provider_id == sid, Delivery.channel == Channel.sms.value)
                .with_for_update()
            ).first()
        if delivery is not None:
            apply_callback(session, delivery, callback)
        # Unmatched: the send may not be recorded yet; recording it applies what arrived first.
    return Response(status_code=204)


def _restore_after_stop(session: Session, customer: Customer) -> list[ConsentIn]:
    """START undoes STOP: SMS service messages again if STOP stopped them, marketing only if STOP took an
    opt-in away."""
    restored = []
    for purpose in (Purpose.service, Purpose.marketing):
        last = session.scalars(
            select(ConsentChange)
            .where(ConsentChange.customer_id == customer.id, ConsentChange.topic == f"sms:{purpose.value}")
            .order_by(ConsentChange.id.desc())
            .limit(1)
        ).first()
        # Only what STOP itself withdrew comes back; an answer given another way (to an agent, on a form)
        # stands. Service messages need no opt-in: STOP from no earlier answer restores them too.
        if last is None or last.source != STOP_SOURCE or last.granted:
            continue
        if last.previous is True or (purpose is Purpose.service and last.previous is None):
            restored.append(ConsentIn(channel=Channel.sms, purpose=purpose, granted=True))
    return restored


@router.post("/inbound")
async def inbound_message(request: Request, database: DatabaseDep, settings: SettingsDep) -> Response:
    """A customer texted us. STOP withdraws SMS consent, START restores it, HELP is answered."""
    params = await _signed_params(request, settings)
    body = params.get("Body", "")
    keyword = body.strip().rstrip(".!").upper()
    sender = params.get("From", "")
    reply = MessagingResponse()
    with database.transaction() as session:
        session.add(
            ProviderCallback(
                provider="twilio",
                kind="inbound",
                provider_id=params.get("MessageSid") or params.get("SmsSid"),
                status=keyword[:30] if keyword in STOP_WORDS | START_WORDS | HELP_WORDS else None,
                applied=False,
                params=params,
                received_at=utcnow(),
            )
        )
        matched = list(session.scalars(select(Customer).where(Customer.phone == sender))) if sender else []
        answers: list[Any] = []
        for customer in matched:
            if keyword in STOP_WORDS:
                answers = [
                    ConsentIn(channel=Channel.sms, purpose=purpose, granted=False)
                    for purpose in (Purpose.service, Purpose.marketing)
                ]
                source = STOP_SOURCE
            elif keyword in START_WORDS:
                answers, source = _restore_after_stop(session, customer), START_SOURCE
            else:
                continue
            customers.update_consents(
                session,
                external_id=customer.external_id,
                body=ConsentsIn(consents=answers, source=source),
                actor=f"customer:{customer.external_id}",
            )
    if keyword in HELP_WORDS:
        reply.message(settings.sms_help_text)
    # STOP and START are confirmed by Twilio itself (Advanced Opt-Out); anything else gets no answer.
    return Response(content=str(reply), media_type="application/xml")
