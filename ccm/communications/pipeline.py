"""The send pipeline: route an accepted communication, deliver its deliveries with retries and fallback, and
the relay that hands due or lost work to the queue again.

The database is the source of truth. A communication is committed (accepted, with its due time) before it
is queued; a delivery is made pending before it is queued. The queue only says "look at this id now": the
actors re-read state, do nothing for work that is done or not yet due, and a delivery is claimed before it
is sent (ccm.communications.delivery). The relay looks for accepted communications that are due and
pending deliveries whose time has come, whose last queuing is older than CCM_RELAY_STALE_SECONDS, and
queues them again: a lost queue message or a killed worker loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, or_, select, update

from ccm import audit
from ccm.channels import Channel
from ccm.channels.base import TransientDeliveryError
from ccm.communications import queueing, routing, service
from ccm.communications.delivery import SYSTEM, Chunk, Deliverer
from ccm.communications.models import Communication, Delivery, IdempotencyKey, WebhookMessage
from ccm.communications.service import GIVEN_UP, CommunicationStatus
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.workflows import reviews

log = logging.getLogger(__name__)


class Queue(Protocol):
    """Where work is handed over: Dramatiq actors (ccm.communications.tasks), or a test's own list. `bulk`:
    work of a batch, taken after single triggers' so that one message is never stuck behind a big batch."""

    def route(self, communication_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None: ...

    def deliver(self, delivery_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None: ...

    def webhook(self, message_id: str, at: dt.datetime | None = None) -> None: ...

    # A batch's work due now, in chunks (CHUNK at most): one queue message, and a transaction a step, for
    # many communications.

    def route_many(self, communication_ids: list[str]) -> None: ...

    def deliver_many(self, delivery_ids: list[str]) -> None: ...


# How many of a batch's communications are routed, or its deliveries delivered, a queue message at a time.
# More makes fewer transactions; fewer keeps each short (SQLite's write lock is held for a whole chunk's
# routing, and an API request's write waits for it) and gets a batch's first messages out sooner.
CHUNK = 50


def chunks(ids: list[str], size: int = CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


@dataclass
class RelayCount:
    communications: int = 0
    deliveries: int = 0
    webhooks: int = 0


class Pipeline:
    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        deliverer: Deliverer,
        queue: Queue,
        deliver_chunk: Callable[[list[str], float], Chunk] | None = None,
    ) -> None:
        """`deliver_chunk`: where a batch's chunks are delivered (processes of their own,
        ccm.communications.processes), given the ids and the time.monotonic() after which nothing more may
        start; by default the deliverer, in this process."""
        self.database = database
        self.settings = settings
        self.deliverer = deliverer
        self.queue = queue
        self.deliver_chunk = deliver_chunk or (
            lambda ids, deadline: deliverer.deliver_many(ids, deadline=deadline)
        )

    # --- routing --------------------------------------------------------------------------------------------

    def route(self, communication_id: str) -> None:
        self.route_many([communication_id])

    def route_many(self, communication_ids: list[str]) -> None:
        """Decide the channels of accepted communications that are due and make their deliveries, all in
        one transaction (their log events chained together), then hand the deliveries over: a batch's in
        chunks, a single trigger's one by one. If the chunk fails as a whole (one communication whose
        routing fails, a database error), each is queued again on its own, so that one cannot hold up the
        others."""
        if len(communication_ids) == 1:
            self._route_chunk(communication_ids)
            return
        try:
            self._route_chunk(communication_ids)
        except Exception as exc:  # noqa: BLE001  # each again on its own, where a failure is its own
            log.error(
                "routing %d communications together failed (%s); queued one by one",
                len(communication_ids),
                type(exc).__name__,
            )
            for communication_id in communication_ids:
                self.queue.route(communication_id, bulk=True)

    def _route_chunk(self, communication_ids: list[str]) -> None:
        with self.database.transaction() as session, audit.batched(session):
            routed = service.route_many(session, self.settings, communication_ids, actor=SYSTEM)
        for communication_id, due_at, bulk in routed.later:
            self.queue.route(communication_id, due_at, bulk=bulk)
        for ids in chunks([d.id for d in routed.deliveries if d.bulk]):
            self.queue.deliver_many(ids)
        for delivery in routed.deliveries:
            if not delivery.bulk:
                self.queue.deliver(delivery.id)

    # --- delivering -----------------------------------------------------------------------------------------

    def deliver(self, delivery_id: str, *, bulk: bool = False) -> None:
        """`bulk`: a batch's delivery; whatever it queues again (a retry, a deferral, the next channel)
        stays behind single triggers' work, as it came."""
        now = utcnow()
        with self.database.read() as session:
            delivery = service.get_delivery(session, delivery_id)
            if delivery.status != DeliveryStatus.pending.value:
                return
            if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
                early = delivery.next_attempt_at
            else:
                early = None
            timezone = None
            if delivery.channel == Channel.sms.value:
                timezone = session.get_one(Customer, delivery.customer_id).timezone
        if early is not None:
            self.queue.deliver(delivery_id, early, bulk=bulk)  # early: back in the queue till its time
            return
        if delivery.channel == Channel.sms.value:
            later = routing.next_sms_time(self.settings, timezone, now)
            if later is not None:
                self._defer(delivery_id, later, bulk=bulk)
                return
        try:
            status = self.deliverer.deliver(delivery_id)
        except TransientDeliveryError:
            status = self._after_transient(delivery_id, bulk=bulk)
        except Exception:
            # A fault: the attempt is counted (and the delivery given up after the last); fall back if so.
            if self._after_transient(delivery_id, bulk=bulk) is DeliveryStatus.failed:
                self._fall_back(delivery_id, bulk=bulk)
            raise
        if status is DeliveryStatus.failed:
            self._fall_back(delivery_id, bulk=bulk)

    def deliver_many(self, delivery_ids: list[str]) -> None:
        """A batch's deliveries, a chunk at a time (Deliverer.deliver_many); what needs more than the
        plain steps is delivered one by one, and failures are retried or fall back as deliver() does. All
        within half the actor's time limit, counted from here (however long the chunk waits for a delivery
        process): what is left then is queued again, each on its own."""
        deadline = time.monotonic() + queueing.chunk_seconds(self.settings)
        try:
            chunk = self.deliver_chunk(delivery_ids, deadline)
        except Exception as exc:  # noqa: BLE001  # each again on its own, where a failure is its own
            # A database error, a delivery process lost: what the chunk had claimed waits for its lease.
            log.error(
                "delivering %d together failed (%s); queued one by one", len(delivery_ids), type(exc).__name__
            )
            for delivery_id in delivery_ids:
                self.queue.deliver(delivery_id, bulk=True)
            return
        for delivery_id in chunk.retry:
            if self._after_transient(delivery_id, bulk=True) is DeliveryStatus.failed:
                self._fall_back(delivery_id, bulk=True)
        for delivery_id, status in chunk.statuses.items():
            if status is DeliveryStatus.failed:
                self._fall_back(delivery_id, bulk=True)
        left = list(chunk.again)
        for index, delivery_id in enumerate(chunk.one_by_one):
            if time.monotonic() > deadline:
                left += chunk.one_by_one[index:]
                break
            try:
                self.deliver(delivery_id, bulk=True)
            except Exception as exc:  # noqa: BLE001  # recorded by deliver(); the rest of the chunk goes on
                log.error("delivery %s: unexpected %s", delivery_id, type(exc).__name__)
        for delivery_id in left:
            self.queue.deliver(delivery_id, bulk=True)

    def _defer(self, delivery_id: str, until: dt.datetime, *, bulk: bool = False) -> None:
        with self.database.transaction() as session:
            delivery = service.get_delivery(session, delivery_id, for_update=True)
            delivery.next_attempt_at = until
            delivery.enqueued_at = queueing.enqueued_at(self.settings, until)
            audit.append(
                session,
                actor=SYSTEM,
                action="delivery.deferred",
                subject_type="delivery",
                subject_id=delivery_id,
                payload={
                    "communication": delivery.communication_id,
                    "channel": delivery.channel,
                    "until": until,
                    "reason": f"outside the SMS window {self.settings.sms_send_window}, customer's time",
                },
            )
        self.queue.deliver(delivery_id, until, bulk=bulk)

    def _after_transient(self, delivery_id: str, *, bulk: bool = False) -> DeliveryStatus:
        with self.database.read() as session:
            delivery = service.get_delivery(session, delivery_id)
        if delivery.status == DeliveryStatus.pending.value:
            self.queue.deliver(delivery_id, delivery.next_attempt_at, bulk=bulk)
        return DeliveryStatus(delivery.status)

    def _fall_back(self, delivery_id: str, *, bulk: bool = False) -> None:
        with self.database.transaction() as session:
            delivery = service.get_delivery(session, delivery_id, for_update=True)
            following = service.fall_back(session, self.settings, delivery, actor=SYSTEM)
            if following is None:
                return
            following.enqueued_at = queueing.enqueued_at(
                self.settings, max(following.next_attempt_at or utcnow(), utcnow())
            )
            handed = (following.id, following.next_attempt_at)
        self.queue.deliver(*handed, bulk=bulk)

    # --- the relay ------------------------------------------------------------------------------------------

    def _resume_fallbacks(self, now: dt.datetime, limit: int) -> None:
        """A failure whose next channel was never made (a worker killed between the two, a provider's late
        "undelivered"): make it now. fall_back does nothing where the next one exists."""
        quiet = now - dt.timedelta(seconds=min(self.settings.relay_stale_seconds, 30))
        alive = select(Delivery.id).where(
            Delivery.communication_id == Communication.id, Delivery.status.not_in([s.value for s in GIVEN_UP])
        )
        with self.database.read() as session:
            candidates = list(
                session.scalars(
                    select(Communication.id)
                    .where(
                        Communication.status.in_(
                            [CommunicationStatus.routed.value, CommunicationStatus.sent.value]
                        ),
                        Communication.updated_at < quiet,
                        ~alive.exists(),
                    )
                    .limit(limit)
                )
            )
        for communication_id in candidates:
            with self.database.read() as session:
                deliveries = service.deliveries_of(session, communication_id)
            if deliveries:
                self._fall_back(deliveries[-1].id)

    def relay(self, *, limit: int = 5000) -> RelayCount:
        """Queue again what is due and not in the queue's hands any more (never queued, or queued more than
        CCM_RELAY_STALE_SECONDS ago and unfinished). Safe to run anywhere, any number of times."""
        now = utcnow()
        stale = now - dt.timedelta(seconds=self.settings.relay_stale_seconds)
        count = RelayCount()
        with self.database.transaction() as session:
            communications = list(
                session.execute(
                    select(Communication.id, Communication.batch_id)
                    .where(
                        Communication.status == CommunicationStatus.accepted.value,
                        Communication.due_at <= now,
                        or_(Communication.enqueued_at.is_(None), Communication.enqueued_at < stale),
                    )
                    .order_by(Communication.due_at)
                    .limit(limit)
                )
            )
            deliveries = list(
                session.execute(
                    select(Delivery.id, Communication.batch_id)
                    .join(Communication, Communication.id == Delivery.communication_id)
                    .where(
                        Delivery.status == DeliveryStatus.pending.value,
                        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                        or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at < stale),
                        or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now),
                    )
                    .limit(limit)
                )
            )
            messages = list(
                session.scalars(
                    select(WebhookMessage.id)
                    .where(
                        WebhookMessage.status == "pending",
                        or_(WebhookMessage.next_attempt_at.is_(None), WebhookMessage.next_attempt_at <= now),
                        or_(WebhookMessage.enqueued_at.is_(None), WebhookMessage.enqueued_at < stale),
                    )
                    .limit(limit)
                )
            )
            # Idempotency keys are kept for their 7 days, then forgotten.
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
            if communications:
                session.execute(
                    update(Communication)
                    .where(Communication.id.in_([i for i, _ in communications]))
                    .values(enqueued_at=now)
                )
            if deliveries:
                session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_([i for i, _ in deliveries]))
                    .values(enqueued_at=now)
                )
            if messages:
                session.execute(
                    update(WebhookMessage).where(WebhookMessage.id.in_(messages)).values(enqueued_at=now)
                )
            reviews.escalate_overdue(session, now=now)  # tasks past their SLA
        self._resume_fallbacks(now, limit)
        # A batch's work in chunks, as it was first handed over; a single trigger's on its own.
        for ids in chunks([i for i, batch_id in communications if batch_id is not None]):
            self.queue.route_many(ids)
        for communication_id, batch_id in communications:
            if batch_id is None:
                self.queue.route(communication_id)
        for ids in chunks([i for i, batch_id in deliveries if batch_id is not None]):
            self.queue.deliver_many(ids)
        for delivery_id, batch_id in deliveries:
            if batch_id is None:
                self.queue.deliver(delivery_id)
        for message_id in messages:
            self.queue.webhook(message_id)
        count.communications, count.deliveries, count.webhooks = (
            len(communications),
            len(deliveries),
            len(messages),
        )
        if communications or deliveries or messages:
            log.info(
                "relay queued %d communications, %d deliveries, %d webhook messages",
                count.communications,
                count.deliveries,
                count.webhooks,
            )
        return count
