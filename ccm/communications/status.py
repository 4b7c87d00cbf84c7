r"""Delivery status: a monotonic state machine.

Providers call back late, twice, or out of order (Twilio may report `sent` after `delivered`). A status only
ever moves forward: each has a rank, and a change to a lower or equal rank is refused. Outcomes share one
rank, so once a delivery is delivered, failed, undelivered or cancelled, no other outcome replaces it; `read`
comes only after `delivered`.

    pending -> queued -> sending -> sent -> delivered -> read
                                         \-> failed | undelivered
    pending | queued -> cancelled
"""

from __future__ import annotations

import enum


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # created, not yet handed to the channel
    queued = "queued"  # accepted by the provider (or, for print, waiting for a batch)
    sending = "sending"  # the provider is sending it (or the letter is at the print house)
    sent = "sent"  # left the provider; for print: handed to the print house
    delivered = "delivered"  # reached the customer; for print: the print house confirmed it
    read = "read"  # opened (portal)
    failed = "failed"
    undelivered = "undelivered"
    cancelled = "cancelled"


_RANK = {
    DeliveryStatus.pending: 0,
    DeliveryStatus.queued: 1,
    DeliveryStatus.sending: 2,
    DeliveryStatus.sent: 3,
    DeliveryStatus.delivered: 4,
    DeliveryStatus.failed: 4,
    DeliveryStatus.undelivered: 4,
    DeliveryStatus.cancelled: 4,
    DeliveryStatus.read: 5,
}

OUTCOMES = frozenset(
    {
        DeliveryStatus.delivered,
        DeliveryStatus.read,
        DeliveryStatus.failed,
        DeliveryStatus.undelivered,
        DeliveryStatus.cancelled,
    }
)


def can_move(current: DeliveryStatus, new: DeliveryStatus) -> bool:
    """Whether a delivery at `current` may move to `new`: only forward, and `read` only once delivered."""
    if new is DeliveryStatus.read:
        return current is DeliveryStatus.delivered
    if new is DeliveryStatus.cancelled:
        return current in (DeliveryStatus.pending, DeliveryStatus.queued)
    return _RANK[new] > _RANK[current]


# Twilio's message statuses (https://www.twilio.com/docs/messaging/api/message-resource#message-status-values).
TWILIO_STATUSES = {
    "accepted": DeliveryStatus.queued,
    "scheduled": DeliveryStatus.queued,
    "queued": DeliveryStatus.queued,
    "sending": DeliveryStatus.sending,
    "sent": DeliveryStatus.sent,
    "delivered": DeliveryStatus.delivered,
    "read": DeliveryStatus.read,
    "undelivered": DeliveryStatus.undelivered,
    "failed": DeliveryStatus.failed,
    "canceled": DeliveryStatus.cancelled,
}
