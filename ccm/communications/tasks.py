"""The pipeline's actors on Dramatiq, and the relay loop. The same code runs in embedded mode (a StubBroker
and worker threads inside `ccm serve`) and scaled out (Redis, `ccm worker` processes).

Actors carry ids only and never retry through Dramatiq: the pipeline records attempts and schedules the
next one itself (a delayed message, and the relay behind it), so the database alone says what is left.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import dramatiq

from ccm.communications import queueing, webhooks
from ccm.communications.delivery import make_deliverer
from ccm.communications.gate import Gate
from ccm.communications.pipeline import Pipeline
from ccm.communications.processes import DeliveryProcesses
from ccm.config import Settings
from ccm.db import Database, background_writes, utcnow
from ccm.templates_engine.render import TemplateEngine

log = logging.getLogger(__name__)

QUEUE = "ccm"


def time_limit_ms(settings: Settings) -> int:
    return int(queueing.time_limit(settings) * 1000)


Ids = str | list[str]  # what an actor is given: an id, or a chunk of them


def _delay(at: dt.datetime | None) -> int | None:
    if at is None:
        return None
    milliseconds = math.ceil((at - utcnow()).total_seconds() * 1000)  # up: never before it is due
    return milliseconds if milliseconds > 0 else None


class DramatiqQueue:
    """The Queue the pipeline hands work to: the actors, declared on one broker.

    Each step has a queue of its own, and a batch's work queues of its own, so that every queue is always
    being read and the worker's priorities (lower first) decide what runs next: a single trigger's delivery,
    then its routing and webhooks, then a batch's deliveries, then its routing. A batch's first emails go out
    while the rest is still being routed, and a one-time passcode triggered meanwhile is not queued behind
    the batch."""

    def __init__(self, broker: dramatiq.Broker, runtime: Runtime, settings: Settings) -> None:
        self._settings = settings
        gate = Gate(settings.worker_busy_threads)

        def actor(
            name: str, queue: str, priority: int, function: Callable[[Any], None]
        ) -> dramatiq.Actor[[Any], None]:
            decorate = dramatiq.actor(
                broker=broker,
                actor_name=name,
                queue_name=queue,
                priority=priority,
                max_retries=0,
                time_limit=time_limit_ms(settings),
            )

            def run(identifier: Any) -> None:
                with gate.working(), background_writes():
                    function(identifier)

            return decorate(run)

        def route(communication_id: str) -> None:
            runtime.pipeline().route(communication_id)

        def deliver(delivery_id: str) -> None:
            runtime.pipeline().deliver(delivery_id)

        # A batch's actors take a chunk of ids (or one id, as queued before chunks, or by the relay).
        def route_bulk(communication_ids: Ids) -> None:
            if isinstance(communication_ids, str):
                runtime.pipeline().route(communication_ids)
            else:
                runtime.pipeline().route_many(communication_ids)

        def deliver_bulk(delivery_ids: Ids) -> None:
            if isinstance(delivery_ids, str):
                runtime.pipeline().deliver(delivery_ids, bulk=True)
            else:
                runtime.pipeline().deliver_many(delivery_ids)

        self._deliver = actor("ccm.deliver", f"{QUEUE}.deliver", 0, deliver)
        self._route = actor("ccm.route", QUEUE, 10, route)
        self._webhook = actor("ccm.webhook", f"{QUEUE}.webhook", 10, runtime.send_webhook)
        self._deliver_bulk = actor("ccm.deliver_bulk", f"{QUEUE}.bulk.deliver", 20, deliver_bulk)
        self._route_bulk = actor("ccm.route_bulk", f"{QUEUE}.bulk", 30, route_bulk)

    # Work due beyond the horizon is not queued: the pipeline recorded it as not in the queue's hands
    # (ccm.communications.queueing), and the relay queues it when it falls due.

    def route(self, communication_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None:
        if queueing.soon(self._settings, at):
            actor = self._route_bulk if bulk else self._route
            actor.send_with_options(args=(communication_id,), delay=_delay(at))

    def deliver(self, delivery_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None:
        if queueing.soon(self._settings, at):
            actor = self._deliver_bulk if bulk else self._deliver
            actor.send_with_options(args=(delivery_id,), delay=_delay(at))

    def webhook(self, message_id: str, at: dt.datetime | None = None) -> None:
        if queueing.soon(self._settings, at):
            self._webhook.send_with_options(args=(message_id,), delay=_delay(at))

    def route_many(self, communication_ids: list[str]) -> None:
        self._route_bulk.send(communication_ids)

    def deliver_many(self, delivery_ids: list[str]) -> None:
        self._deliver_bulk.send(delivery_ids)


class Runtime:
    """What the actors of one process work with."""

    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        engine: TemplateEngine,
        broker: dramatiq.Broker,
        threads: int,
    ) -> None:
        """`threads`: the worker's threads in this process, each of which may deliver a chunk."""
        self.database = database
        self.settings = settings
        self.queue = DramatiqQueue(broker, self, settings)
        # Embedded, a batch's chunks are delivered in processes of their own, on the other cores.
        self._processes = (
            DeliveryProcesses(settings, settings.delivery_processes, database.url)
            if settings.embedded and settings.delivery_processes > 0
            else None
        )
        self._pipeline = Pipeline(
            database=database,
            settings=settings,
            deliverer=make_deliverer(database, settings, engine, chunk_threads=threads),
            queue=self.queue,
            deliver_chunk=self._processes.deliver_many if self._processes is not None else None,
        )

    def start_processes(self) -> None:
        """Start the delivery processes not yet running (without waiting for them to be ready): when the
        server starts, and again when a batch arrives (one may have been stopped)."""
        if self._processes is not None:
            self._processes.start()

    def close(self) -> None:
        """After the worker has stopped: stop the delivery processes."""
        if self._processes is not None:
            self._processes.close()

    def pipeline(self) -> Pipeline:
        return self._pipeline

    def send_webhook(self, message_id: str) -> None:
        again = webhooks.send(self.database, self.settings, message_id)
        if again is not None:
            self.queue.webhook(message_id, again)


class RelayLoop:
    """Runs the relay at start and every CCM_RELAY_INTERVAL seconds, in a thread of its own."""

    def __init__(self, pipeline: Pipeline, interval: float) -> None:
        self._pipeline = pipeline
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccm-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with background_writes():
                    self._pipeline.relay()
            except Exception:  # a database hiccup must not end the loop; the next round tries again
                log.exception("the relay failed; trying again in %.0fs", self._interval)
            self._stop.wait(self._interval)
