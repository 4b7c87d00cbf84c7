"""How far ahead work is handed to the queue.

Work due soon is queued at once, with a delay; work due later (a send_at next month, an SMS deferred to the
morning, a retry an hour away) is left to the relay, which queues it when it falls due. A queue holding a
million delayed messages costs memory (all of it in the process, in embedded mode) for nothing.
"""

from __future__ import annotations

import datetime as dt

from ccm.config import Settings
from ccm.db import utcnow


def horizon(settings: Settings) -> dt.timedelta:
    """Work due within this is queued now; a few relay rounds, and never under a minute."""
    return dt.timedelta(seconds=max(60.0, 3 * settings.relay_interval))


def soon(settings: Settings, at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    return at is None or at <= (now or utcnow()) + horizon(settings)


def enqueued_at(settings: Settings, at: dt.datetime, now: dt.datetime | None = None) -> dt.datetime | None:
    """What to record as the time work due at `at` was handed to the queue: `at` if it is queued now, None
    (the relay's to queue when due) if it is due beyond the horizon."""
    return at if soon(settings, at, now) else None


# An actor's time limit: well above any one step's (render limits, SMTP and HTTP timeouts, a letter's
# layout), and always below the lease a delivery is claimed for (CCM_DELIVERY_LEASE), so that a send is never
# still running when another worker may take the delivery over.
TIME_LIMIT_SECONDS = 120.0


def time_limit(settings: Settings) -> float:
    """Seconds an actor may run before the worker stops it."""
    return min(TIME_LIMIT_SECONDS, settings.delivery_lease * 0.8)


def chunk_seconds(settings: Settings) -> float:
    """How long a chunk of a batch may go on starting work (a claim, a send, a delivery on its own): half
    the actor's time limit, so that what it has started always ends before the worker would stop it."""
    return time_limit(settings) / 2
