"""Outbound event webhooks: every status change POSTed as JSON to each integrator's URL, signed.

Signature header: `CCM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the endpoint's
secret>`. Receivers recompute it, compare in constant time, and refuse timestamps older than a few minutes
(replays). 2xx is success; anything else, or no answer, is retried with exponential backoff up to
CCM_WEBHOOK_MAX_ATTEMPTS; every attempt is recorded (status code, error, duration).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
import urllib.error
import urllib.request

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.communications import queueing
from ccm.communications.gate import waiting_on_provider
from ccm.communications.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from ccm.config import Settings, redact_url
from ccm.db import Database, utcnow
from ccm.errors import NotFound

log = logging.getLogger(__name__)


def signature(secret: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def create_endpoint(session: Session, *, url: str, secret: str | None, actor: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        url=url,
        secret=secret or secrets.token_urlsafe(32),
        active=True,
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(endpoint)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="webhook.created",
        subject_type="webhook",
        subject_id=endpoint.id,
        payload={"url": redact_url(url)},  # a URL may carry a token: the log keeps none
    )
    return endpoint


def deactivate_endpoint(session: Session, *, endpoint_id: str, actor: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None:
        raise NotFound(f"there is no webhook {endpoint_id}")
    if endpoint.active:
        endpoint.active = False
        audit.append(
            session, actor=actor, action="webhook.deactivated", subject_type="webhook", subject_id=endpoint.id
        )
    return endpoint


def send(database: Database, settings: Settings, message_id: str) -> dt.datetime | None:
    """POST one message once; answers when to try again, or None when it is done (delivered or given up)."""
    with database.read() as session:
        message = session.get(WebhookMessage, message_id)
        if message is None or message.status != "pending":
            return None
        if message.next_attempt_at is not None and message.next_attempt_at > utcnow():
            return message.next_attempt_at
        endpoint = session.get_one(WebhookEndpoint, message.endpoint_id)
        url, secret, body, event_type = endpoint.url, endpoint.secret, message.body, message.event_type
        active = endpoint.active
    if not active:  # the endpoint was deleted: what was still waiting for it is not sent
        with database.transaction() as session:
            session.get_one(WebhookMessage, message_id, with_for_update=True).status = "failed"
        return None
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310  # the URL's scheme is checked (http/https) when registered
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "ccm-webhooks",
            "CCM-Event-Type": event_type,
            "CCM-Message-Id": message_id,
            "CCM-Signature": signature(secret, timestamp, body),
        },
    )
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        with (
            waiting_on_provider(),
            urllib.request.urlopen(request, timeout=settings.webhook_timeout) as response,  # noqa: S310
        ):
            status_code = response.status
    except urllib.error.HTTPError as exc:
        status_code, error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:500]
    duration = int((time.perf_counter() - started) * 1000)
    ok = status_code is not None and 200 <= status_code < 300
    with database.transaction() as session:
        message = session.get_one(WebhookMessage, message_id, with_for_update=True)
        if message.status != "pending":
            return None
        message.attempts += 1
        session.add(
            WebhookAttempt(
                message_id=message_id,
                attempted_at=utcnow(),
                status_code=status_code,
                error=None if ok else (error or f"HTTP {status_code}"),
                duration_ms=duration,
            )
        )
        if ok:
            message.status, message.delivered_at, message.next_attempt_at = "delivered", utcnow(), None
            return None
        if message.attempts >= settings.webhook_max_attempts:
            message.status, message.next_attempt_at = "failed", None
            log.warning("gave up on webhook message %s after %d attempts", message_id, message.attempts)
            return None
        wait = min(settings.retry_base_seconds * 2 ** (message.attempts - 1), settings.retry_max_seconds)
        message.next_attempt_at = utcnow() + dt.timedelta(seconds=wait)
        message.enqueued_at = queueing.enqueued_at(settings, message.next_attempt_at)
        return message.next_attempt_at


def endpoints(session: Session) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)))
