"""Status changes for integrators: each is written, in the transaction that makes the change, as a message
for every active webhook endpoint (an outbox); ccm.communications.webhooks POSTs them."""

from __future__ import annotations

import json
import threading
import time
import uuid
import weakref
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccm.communications.models import WebhookEndpoint, WebhookMessage
from ccm.db import utcnow

# The active endpoints, per database, re-read at most every few seconds: every status change asks, and
# endpoints change seldom. A change made in this process is seen at once (forget_endpoints); one made in
# another process within ENDPOINTS_TTL seconds.
ENDPOINTS_TTL = 5.0
# Kept per engine object, weakly (an entry goes when its engine is garbage-collected); naming the database
# by its URL took longer than the lookup it keyed.
_endpoints: weakref.WeakKeyDictionary[Engine, tuple[float, list[str]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def forget_endpoints() -> None:
    with _lock:
        _endpoints.clear()


def _active_endpoints(session: Session) -> list[str]:
    key = session.get_bind().engine
    now = time.monotonic()
    with _lock:
        cached = _endpoints.get(key)
    if cached is not None and now - cached[0] < ENDPOINTS_TTL:
        return cached[1]
    found = list(session.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.active.is_(True))))
    with _lock:
        _endpoints[key] = (now, found)
    return found


def emit(session: Session, event_type: str, data: dict[str, Any]) -> None:
    endpoints = _active_endpoints(session)
    if not endpoints:
        return
    now = utcnow()
    body = json.dumps(
        {"id": str(uuid.uuid4()), "type": event_type, "created_at": now.isoformat(), "data": data},
        separators=(",", ":"),
        sort_keys=True,
    )
    for endpoint_id in endpoints:
        session.add(
            WebhookMessage(
                endpoint_id=endpoint_id,
                event_type=event_type,
                body=body,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
