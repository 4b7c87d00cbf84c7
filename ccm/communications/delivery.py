"""Delivering one delivery: render its channel's part with the pinned version, prepare the channel's output,
store it as the artifact, send it, record what happened.

The artifact is stored (and its hash logged) before the send; a retry sends the stored bytes again, so what
the log says was sent is what was sent, and an email keeps its Message-ID. A delivery no longer pending is
never sent again. Adapters raise TransientDeliveryError (the delivery stays pending, its attempt counted, the
error raised again for the caller to retry) or PermanentDeliveryError (the delivery fails).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from ccm import audit
from ccm.channels import Channel
from ccm.channels.artifacts import ArtifactStore
from ccm.channels.base import (
    Attachment,
    ChannelAdapter,
    DeliveryError,
    Envelope,
    PermanentDeliveryError,
    Prepared,
    Sent,
    TransientDeliveryError,
)
from ccm.channels.email import EmailAdapter, make_transport
from ccm.channels.models import ProviderCallback
from ccm.channels.portal import PortalAdapter, put_in_inbox
from ccm.channels.print import AddressPlacementError, LetterTooLarge, PrintAdapter, letter
from ccm.channels.sms import SmsAdapter, make_sms_sender
from ccm.communications import queueing, service
from ccm.communications.gate import waiting_on_provider
from ccm.communications.models import Communication, Delivery
from ccm.communications.routing import next_sms_time
from ccm.communications.status import TWILIO_STATUSES, DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.customers.unsubscribe import unsubscribe_url
from ccm.db import Database, lock_name, utcnow
from ccm.errors import CCMError
from ccm.templates_engine import service as templates
from ccm.templates_engine.models import Template, TemplateVersion
from ccm.templates_engine.preview import customer_context, message_context
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine
from ccm.templates_engine.sandbox import RenderLimitError

SYSTEM = "system:delivery"
log = logging.getLogger(__name__)


def make_adapters(settings: Settings, database: Database) -> dict[Channel, ChannelAdapter]:
    """The channel registry, built from settings: SMTP or .eml files, Twilio or recorded SMS."""
    base = str(settings.public_base_url).rstrip("/")
    return {
        Channel.email: EmailAdapter(make_transport(settings), sender=settings.email_from),
        Channel.sms: SmsAdapter(
            make_sms_sender(settings),
            max_segments=settings.sms_max_segments,
            status_callback=f"{base}/webhooks/twilio/status" if settings.twilio_configured else None,
        ),
        Channel.print: PrintAdapter(settings),
        Channel.portal: PortalAdapter(),
    }


class _Claimable(Protocol):
    """What deciding whether a delivery may be taken reads: an ORM Delivery, or a row of _CLAIM_ROWS."""

    @property
    def status(self) -> str: ...
    @property
    def claimed_until(self) -> dt.datetime | None: ...
    @property
    def next_attempt_at(self) -> dt.datetime | None: ...


class _DeliveryFacts(_Claimable, Protocol):
    """What delivering reads of a delivery: an ORM Delivery, or a row of _CHUNK_DELIVERIES."""

    @property
    def id(self) -> str: ...
    @property
    def communication_id(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def artifact_sha256(self) -> str | None: ...
    @property
    def recipient(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...


class _CommunicationFacts(Protocol):
    """What rendering reads of a communication: a row of _CHUNK_COMMUNICATIONS."""

    @property
    def id(self) -> str: ...
    @property
    def customer_id(self) -> int: ...
    @property
    def template_id(self) -> int: ...
    @property
    def template_version_id(self) -> int: ...
    @property
    def category(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def options(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> dt.datetime: ...


@dataclass(frozen=True)
class _Job:
    delivery: _DeliveryFacts
    communication: _CommunicationFacts
    template: Template
    version: LoadedVersion
    customer: dict[str, Any]


@dataclass(frozen=True)
class _Stored:
    """An artifact stored and logged before, to be sent as it is."""

    sha256: str
    media_type: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class _Fresh:
    """Output prepared by this worker, stored but not yet logged."""

    prepared: Prepared
    sha256: str
    size: int


# What one send came to: what the provider took, or the adapter's error.
_Outcome = Sent | TransientDeliveryError | PermanentDeliveryError


@dataclass
class Chunk:
    """What deliver_many() did with each delivery it was given."""

    statuses: dict[str, DeliveryStatus] = field(default_factory=dict)  # sent, failed, or left as they were
    retry: list[str] = field(default_factory=list)  # a transient failure, its attempt recorded
    one_by_one: list[str] = field(default_factory=list)  # for deliver() to take on its own
    again: list[str] = field(default_factory=list)  # not sent in the time there was: to queue again


# Sends recorded a transaction at a time by deliver_many(): at most this many of a worker thread's sends
# are sent again if the worker is killed (each one alone, by deliver()). Each recording transaction costs
# about 4 ms of CPU whatever its size (its queries, its log append, its commit): every 10 sends, that was a
# tenth of an email's whole cost; every 25, a 25th.
RECORD_EVERY = 25


# A chunk's claim (Deliverer.deliver_many), built once.
_DELIVERIES = cast(Table, Delivery.__table__)
_CLAIM_ROWS = service.locking_deliveries(
    Delivery.id,
    Delivery.communication_id,
    Delivery.channel,
    Delivery.status,
    Delivery.claimed_until,
    Delivery.next_attempt_at,
    Delivery.artifact_sha256,
    Delivery.media_type,
    Delivery.details,
)
_UNTIL = bindparam("b_until", type_=_DELIVERIES.c.claimed_until.type)
_CLAIM_FRESH = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"))
    .values(
        claimed_until=_UNTIL,
        artifact_sha256=bindparam("b_sha256"),
        artifact_size=bindparam("b_size"),
        media_type=bindparam("b_media_type"),
        details=bindparam("b_details", type_=_DELIVERIES.c.details.type),
    )
)
_CLAIM_STORED = update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("b_id")).values(claimed_until=_UNTIL)

# What a chunk reads (rows, not ORM objects: loading and tracking 50 of each cost more than the queries).
_CHUNK_DELIVERIES = select(
    Delivery.id,
    Delivery.communication_id,
    Delivery.channel,
    Delivery.status,
    Delivery.claimed_until,
    Delivery.next_attempt_at,
    Delivery.artifact_sha256,
    Delivery.recipient,
    Delivery.message_id,
).where(Delivery.id.in_(service.IDS))
_CHUNK_COMMUNICATIONS = select(
    Communication.id,
    Communication.customer_id,
    Communication.template_id,
    Communication.template_version_id,
    Communication.category,
    Communication.locale,
    Communication.data,
    Communication.options,
    Communication.created_at,
).where(Communication.id.in_(service.IDS))


def _plain(delivery: _DeliveryFacts) -> bool:
    """A delivery deliver_many() takes: new (nothing prepared yet), by email or SMS."""
    return delivery.artifact_sha256 is None and delivery.channel in (Channel.email.value, Channel.sms.value)


class Deliverer:
    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        engine: TemplateEngine,
        adapters: Mapping[Channel, ChannelAdapter],
        artifacts: ArtifactStore,
        chunk_threads: int = 1,
    ) -> None:
        """`chunk_threads`: how many threads of this process may deliver chunks at once (the worker's
        threads; one in a delivery process)."""
        self.database = database
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self.artifacts = artifacts
        # A chunk's sends, CCM_SEND_CONCURRENCY at a time for each thread delivering chunks, each sender
        # thread with a connection of its own (SmtpTransport and TwilioSmsSender keep one per thread). Sized
        # exactly: an executor may start a thread while a finished one has not yet said it is idle.
        self._senders = ThreadPoolExecutor(
            max_workers=settings.send_concurrency * chunk_threads, thread_name_prefix="ccm-send"
        )

    def deliver(self, delivery_id: str) -> DeliveryStatus:
        """Send one delivery if it is still pending and no other worker holds it; answers its status
        afterwards (`pending` while another worker holds it). A transient failure is raised.

        A new delivery is rendered, prepared and stored before it is claimed, so that claiming it and
        logging its artifact are one short write transaction; two workers handed the same delivery may both
        render it, but only the one whose claim commits sends it, and the artifact it logged is what is
        sent, then and on every retry."""
        with self.database.read() as session:
            delivery = service.get_delivery(session, delivery_id)
            status = _unavailable(delivery, utcnow())
            if status is not None:
                return status
            [job] = self._jobs(session, [delivery])
        claimed = False
        try:
            channel = Channel(job.delivery.channel)
            adapter = self.adapters[channel]
            envelope = self._envelope(job, channel)
            fresh = None if job.delivery.artifact_sha256 is not None else self._prepare(adapter, envelope)
            claim = self._claim(delivery_id, fresh)
            if isinstance(claim, DeliveryStatus):
                return claim
            claimed = True  # from here on, ours to release or settle whatever happens
            prepared = claim if isinstance(claim, Prepared) else self._stored(claim)
            with waiting_on_provider():
                sent = adapter.send(envelope, prepared)
        except TransientDeliveryError as exc:
            self._attempt_failed(delivery_id, exc, claimed=claimed)
            raise
        except PermanentDeliveryError as exc:
            return self._failed(delivery_id, exc, claimed=claimed)
        except Exception as exc:
            # Not the adapter contract's: a fault. Counted as a failed attempt (its type only: the message
            # may quote content), released for a retry, and raised for the caller to see.
            error = TransientDeliveryError(f"unexpected {type(exc).__name__}")
            self._attempt_failed(delivery_id, error, claimed=claimed)
            raise
        return self._sent(delivery_id, sent, prepared)

    def deliver_many(self, delivery_ids: Sequence[str], *, deadline: float | None = None) -> Chunk:
        """Deliver a run of new email and SMS deliveries (a batch's) with a transaction a step for all of
        them, instead of one a step for each: read together, each rendered, prepared and stored, claimed
        together with their artifacts logged, each sent, recorded together. The same steps as deliver(),
        in the same order, with the same guarantees.

        What is not that plain case (already prepared before, another channel, an SMS outside its send
        window, a retry not yet due, anything that fails before it is sent) is answered as `one_by_one`,
        for deliver() to take on its own, where every way it can go has its handling. Nothing is claimed or
        sent after `deadline` (a time.monotonic(); by default half the actor's time limit from now): what is
        left then is answered as `again`."""
        if deadline is None:
            deadline = time.monotonic() + queueing.chunk_seconds(self.settings)
        chunk = Chunk()
        now = utcnow()
        with self.database.read() as session:
            found = {d.id: d for d in session.execute(_CHUNK_DELIVERIES, {"ids": list(set(delivery_ids))})}
            plain = []
            for delivery_id in dict.fromkeys(delivery_ids):
                delivery = found.get(delivery_id)
                status = _unavailable(delivery, now) if delivery is not None else None
                if delivery is None or not _plain(delivery):
                    chunk.one_by_one.append(delivery_id)
                elif status is None:
                    plain.append(delivery)
                elif status is DeliveryStatus.pending and not _held(delivery, now):
                    chunk.one_by_one.append(delivery_id)  # not yet due: deliver() queues it for then
                else:
                    chunk.statuses[delivery_id] = status  # finished, or in another worker's hands
            jobs = self._jobs(session, plain)

        made: list[tuple[_Job, ChannelAdapter, Envelope, Prepared]] = []
        for index, job in enumerate(jobs):
            if time.monotonic() > deadline:
                chunk.again.extend(j.delivery.id for j in jobs[index:])
                break
            channel = Channel(job.delivery.channel)
            if channel is Channel.sms and next_sms_time(self.settings, job.customer.get("timezone"), now):
                chunk.one_by_one.append(job.delivery.id)  # deliver() defers it to the send window
                continue
            adapter = self.adapters[channel]
            try:
                envelope = self._envelope(job, channel)
                made.append((job, adapter, envelope, adapter.prepare(envelope)))
            except Exception:  # noqa: BLE001  # found again, and recorded as it should be, by deliver()
                chunk.one_by_one.append(job.delivery.id)
        try:
            stored = self._store([output for *_, output in made])
        except Exception:  # noqa: BLE001  # deliver() stores each again, and records a failure as it should
            chunk.one_by_one.extend(job.delivery.id for job, *_ in made)
            made, stored = [], []
        ready = [
            (job, adapter, envelope, fresh)
            for (job, adapter, envelope, _), fresh in zip(made, stored, strict=True)
        ]

        claimed: list[tuple[str, ChannelAdapter, Envelope, Prepared | _Stored]] = []
        if ready:
            # Claimed with Core statements on rows, as _claim_row() claims one: the ORM's unit of work cost
            # more than the claim itself at a chunk's size.
            with self.database.transaction() as session, audit.batched(session):
                rows = {
                    row.id: row
                    for row in session.execute(_CLAIM_ROWS, {"ids": [j.delivery.id for j, *_ in ready]})
                }
                now = utcnow()
                until = now + dt.timedelta(seconds=self.settings.delivery_lease)
                fresh_rows: list[dict[str, Any]] = []
                stored_rows: list[dict[str, Any]] = []
                for job, adapter, envelope, fresh in ready:
                    row = rows[job.delivery.id]
                    status = _unavailable(row, now)
                    if status is not None:
                        chunk.statuses[row.id] = status
                    elif row.artifact_sha256 is None:
                        fresh_rows.append(
                            {
                                "b_id": row.id,
                                "b_until": until,
                                "b_sha256": fresh.sha256,
                                "b_size": fresh.size,
                                "b_media_type": fresh.prepared.media_type,
                                "b_details": fresh.prepared.details,
                            }
                        )
                        _log_rendered(session, row.id, row.communication_id, row.channel, fresh)
                        claimed.append((row.id, adapter, envelope, fresh.prepared))
                    else:  # prepared meanwhile by a worker whose lease ran out: what it logged is sent
                        stored_rows.append({"b_id": row.id, "b_until": until})
                        claimed.append(
                            (
                                row.id,
                                adapter,
                                envelope,
                                _Stored(row.artifact_sha256, row.media_type, dict(row.details)),
                            )
                        )
                if fresh_rows:
                    session.execute(_CLAIM_FRESH, fresh_rows)
                if stored_rows:
                    session.execute(_CLAIM_STORED, stored_rows)

        # Sent, not yet recorded: what a worker killed now would send again. Recorded every RECORD_EVERY
        # sends, so that at most that many (and those in flight) are; and whatever stops this loop (a
        # database error, the time limit), what was in flight is waited for, what was sent is recorded and
        # what was not is released on the way out.
        sent: list[tuple[str, Channel, Sent]] = []
        waiting = deque(claimed)  # not yet handed to a sender
        in_flight: dict[Future[_Outcome], tuple[str, Channel]] = {}
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < self.settings.send_concurrency:
                    if time.monotonic() > deadline:
                        break
                    delivery_id, adapter, envelope, claim = waiting.popleft()
                    future = self._senders.submit(self._send_one, delivery_id, adapter, envelope, claim)
                    in_flight[future] = (delivery_id, envelope.channel)
                if not in_flight:
                    break  # out of time: the rest is released and queued again
                with waiting_on_provider():  # this thread only waits: another worker may work meanwhile
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcome = future.result()  # raises only what is not an Exception (a time limit)
                    delivery_id, channel = in_flight.pop(future)
                    self._take(delivery_id, channel, outcome, sent, chunk)
                if len(sent) >= RECORD_EVERY:
                    self._record_many(sent, chunk)  # if this fails, the finally tries them again
                    sent = []
        finally:
            # A send cannot be taken back: those in flight are waited for (what interrupts this wait is not
            # caught: they keep their claims till the lease runs out), and taken as in the loop.
            unsent = [c[0] for c in waiting]
            for future, (delivery_id, channel) in in_flight.items():
                if future.exception() is not None:  # the sender itself was stopped: not sent
                    unsent.append(delivery_id)
                    continue
                try:
                    self._take(delivery_id, channel, future.result(), sent, chunk)
                except Exception:  # noqa: BLE001  # its failure not recorded (the database, as for the loop)
                    unsent.append(delivery_id)
            chunk.again.extend(unsent)
            self._record_many(sent, chunk, release=unsent)
        return chunk

    def _take(
        self,
        delivery_id: str,
        channel: Channel,
        outcome: _Outcome,
        sent: list[tuple[str, Channel, Sent]],
        chunk: Chunk,
    ) -> None:
        """One send's outcome: a send kept for the next record, or its failure recorded at once."""
        if isinstance(outcome, Sent):
            sent.append((delivery_id, channel, outcome))
        elif isinstance(outcome, TransientDeliveryError):
            self._attempt_failed(delivery_id, outcome, claimed=True)
            chunk.retry.append(delivery_id)
        else:
            chunk.statuses[delivery_id] = self._failed(delivery_id, outcome, claimed=True)

    def _send_one(
        self, delivery_id: str, adapter: ChannelAdapter, envelope: Envelope, claim: Prepared | _Stored
    ) -> _Outcome:
        """One of a chunk's sends, in a sender thread: what the provider took, or the error it gave."""
        try:
            prepared = claim if isinstance(claim, Prepared) else self._stored(claim)
            return adapter.send(envelope, prepared)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001  # one message's fault must not stop the others'
            # A fault, as in deliver(): its type only (the message may quote content).
            log.error("delivery %s: unexpected %s while sending", delivery_id, type(exc).__name__)
            return TransientDeliveryError(f"unexpected {type(exc).__name__}")

    def _record_many(
        self, sent: list[tuple[str, Channel, Sent]], chunk: Chunk, *, release: Sequence[str] = ()
    ) -> None:
        """Record sends in one transaction, their log events chained together (service.record_answers);
        release the claims of deliveries left unsent. Twilio callbacks that came before an SMS's send was
        recorded apply after the chunk's moves: the same events as one by one, later in the log."""
        if not sent and not release:
            return
        with self.database.transaction() as session, audit.batched(session):
            answers = [
                service.Answer(i, result.status, result.provider_id, result.details) for i, _, result in sent
            ]
            recorded = service.record_answers(session, answers, release=release, actor=SYSTEM)
            for delivery_id, channel, result in sent:
                status, moved = recorded[delivery_id]
                if moved and result.provider_id and channel is Channel.sms:
                    # Twilio may have called back before this: what it said applies now (as _record_sent).
                    lock_name(session, f"twilio:{result.provider_id}")
                    delivery = session.get_one(Delivery, delivery_id)
                    apply_early_callbacks(session, delivery)
                    status = DeliveryStatus(delivery.status)
                chunk.statuses[delivery_id] = status

    def _prepare(self, adapter: ChannelAdapter, envelope: Envelope) -> _Fresh:
        """The channel's output and its attachments, stored (content-addressed) but not yet logged."""
        return self._store([adapter.prepare(envelope)])[0]

    def _store(self, outputs: Sequence[Prepared]) -> list[_Fresh]:
        """Outputs and their attachments kept in the artifact store together, in order; not yet logged."""
        contents = [output.content for output in outputs]
        contents += [attachment.content for output in outputs for attachment in output.attachments]
        artifacts = self.artifacts.put_many(contents)
        stored_attachments = iter(artifacts[len(outputs) :])
        fresh = []
        for output, artifact in zip(outputs, artifacts, strict=False):
            attachments = [
                {
                    "filename": attachment.filename,
                    "media_type": attachment.media_type,
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "pages": attachment.pages,
                }
                for attachment, stored in zip(output.attachments, stored_attachments, strict=False)
            ]
            details = {**output.details, **({"attachments": attachments} if attachments else {})}
            fresh.append(
                _Fresh(
                    Prepared(output.content, output.media_type, details, output.attachments),
                    artifact.sha256,
                    artifact.size,
                )
            )
        return fresh

    def _claim(self, delivery_id: str, fresh: _Fresh | None) -> Prepared | _Stored | DeliveryStatus:
        """Reserve a pending delivery for this worker for CCM_DELIVERY_LEASE seconds, so that two workers
        never send it at once, and log a freshly prepared artifact (`delivery.rendered`) in the same
        transaction. Answers what to send (prepared here, or stored before), or the status to answer
        without sending."""
        with self.database.transaction() as session:
            row = service.get_delivery(session, delivery_id, for_update=True)
            return self._claim_row(session, row, fresh, utcnow())

    def _claim_row(
        self, session: Session, row: Delivery, fresh: _Fresh | None, now: dt.datetime
    ) -> Prepared | _Stored | DeliveryStatus:
        status = _unavailable(row, now)
        if status is not None:
            return status
        row.claimed_until = now + dt.timedelta(seconds=self.settings.delivery_lease)
        if row.artifact_sha256 is None and fresh is not None:
            row.artifact_sha256 = fresh.sha256
            row.artifact_size = fresh.size
            row.media_type = fresh.prepared.media_type
            row.details = fresh.prepared.details
            _log_rendered(session, row.id, row.communication_id, row.channel, fresh)
            return fresh.prepared
        if row.artifact_sha256 is None:  # read with an artifact, or prepared here: cannot happen
            raise RuntimeError(f"delivery {row.id} has no artifact to send")
        # Prepared before (a retry), or meanwhile by a worker whose lease ran out: what was stored and
        # logged is what is sent.
        return _Stored(row.artifact_sha256, row.media_type, dict(row.details))

    def _stored(self, stored: _Stored) -> Prepared:
        """A stored artifact read back (checked against its hash) to be sent again."""
        sha256, media_type, details = stored.sha256, stored.media_type, stored.details
        return Prepared(
            content=self.artifacts.get(sha256),
            media_type=media_type or "application/octet-stream",
            details=details,
            attachments=tuple(
                Attachment(a["filename"], a["media_type"], self.artifacts.get(a["sha256"]), a.get("pages"))
                for a in details.get("attachments", [])
            ),
        )

    # --- steps ---------------------------------------------------------------------------------------------

    def _jobs(self, session: Session, deliveries: Sequence[_DeliveryFacts]) -> list[_Job]:
        """What rendering each delivery needs, read with a query a table whatever their number."""
        communications: dict[str, _CommunicationFacts] = {
            c.id: c
            for c in session.execute(
                _CHUNK_COMMUNICATIONS, {"ids": list({d.communication_id for d in deliveries})}
            )
        }
        customers = {
            c.id: customer_context(c)
            for c in session.execute(
                service.CUSTOMER_ROWS, {"ids": list({c.customer_id for c in communications.values()})}
            )
        }
        versions: dict[int, tuple[Template, LoadedVersion]] = {}
        for communication in communications.values():
            if communication.template_version_id not in versions:
                template = session.get_one(Template, communication.template_id)
                version = session.get_one(TemplateVersion, communication.template_version_id)
                versions[version.id] = (template, templates.loaded(session, template, version))
        jobs = []
        for delivery in deliveries:
            communication = communications[delivery.communication_id]
            template, loaded = versions[communication.template_version_id]
            jobs.append(_Job(delivery, communication, template, loaded, customers[communication.customer_id]))
        return jobs

    def _context(self, job: _Job, channel: Channel) -> RenderContext:
        external_id = str(job.customer["external_id"])
        return RenderContext(
            customer=job.customer,
            data=job.communication.data,
            message=message_context(
                self.settings,
                job.communication.id,
                external_id=external_id,
                channel=channel,
                date=job.communication.created_at.date(),
                edits=job.communication.options.get("edits", {}),
            ),
            locale=job.communication.locale,
            timezone=str(job.customer.get("timezone") or "UTC"),
        )

    def _render(self, job: _Job, channel: Channel) -> tuple[dict[str, str], str]:
        rendered = self.engine.render_channel(job.version, channel, self._context(job, channel))
        if rendered.problems:
            problem = rendered.problems[0]
            where = problem.part + (f" line {problem.line}" if problem.line else "")
            raise PermanentDeliveryError(f"the template did not render: {where}: {problem.message}")
        return rendered.fields, rendered.locale

    def _letter(self, job: _Job) -> Attachment:
        fields, locale = self._render(job, Channel.print)
        css, page_size = job.version.letter_style(job.communication.locale)
        try:
            pdf = letter(
                self.settings,
                fields.get("html", ""),
                css=css,
                page_size=page_size,
                title=job.template.name,
                language=locale,
            )
        except (AddressPlacementError, LetterTooLarge, RenderLimitError) as exc:
            raise PermanentDeliveryError(f"the letter could not be made: {exc}") from None
        return Attachment(f"{job.template.key}.pdf", "application/pdf", pdf.content, pdf.pages)

    def _envelope(self, job: _Job, channel: Channel) -> Envelope:
        if job.delivery.artifact_sha256 is not None:
            # Already prepared: the stored artifact is what gets sent; nothing is rendered again.
            fields: dict[str, str] = {}
            locale = job.communication.locale
        else:
            fields, locale = self._render(job, channel)
        attachments: tuple[Attachment, ...] = ()
        has_letter = Channel.print.value in job.version.content.get("parts", {})
        wants_letter = channel is Channel.portal or job.communication.options.get("attach_letter", False)
        if (
            has_letter
            and wants_letter
            and channel is not Channel.print
            and job.delivery.artifact_sha256 is None
        ):
            attachments = (self._letter(job),)
        css, page_size = job.version.letter_style(job.communication.locale)
        marketing = service.is_marketing(job.communication)
        return Envelope(
            delivery_id=job.delivery.id,
            channel=channel,
            customer=job.customer,
            recipient=job.delivery.recipient,
            fields=fields,
            locale=locale,
            title=job.template.name,
            marketing=marketing,
            message_id=job.delivery.message_id,
            unsubscribe_url=(
                unsubscribe_url(self.settings, external_id=str(job.customer["external_id"]), channel=channel)
                if marketing
                else None
            ),
            css=css,
            page_size=page_size,
            attachments=attachments,
        )

    def _attempt_failed(self, delivery_id: str, error: TransientDeliveryError, *, claimed: bool) -> None:
        """Counts the attempt and schedules the next (exponential backoff, the provider's Retry-After if
        longer); past CCM_RETRY_MAX_ATTEMPTS or CCM_RETRY_MAX_AGE_HOURS the delivery fails. Unclaimed (it
        failed while being prepared), it leaves alone a delivery another worker has taken meanwhile."""
        with self.database.transaction() as session:
            delivery = service.get_delivery(session, delivery_id, for_update=True)
            if not claimed and _unavailable(delivery, utcnow()) is not None:
                return
            delivery.attempts += 1
            delivery.last_error = str(error)[:500]
            delivery.claimed_until = None
            now = utcnow()
            settings = self.settings
            age = now - delivery.created_at
            if delivery.attempts >= settings.retry_max_attempts or age > dt.timedelta(
                hours=settings.retry_max_age_hours
            ):
                reason = (
                    f"gave up after {delivery.attempts} attempts over {age.total_seconds():.0f}s: {error}"
                )
                delivery.last_error = reason[:500]
                service.move(
                    session,
                    delivery,
                    DeliveryStatus.failed,
                    actor=SYSTEM,
                    payload=_error_payload(delivery, error) | {"error": reason},
                )
                return
            wait = min(settings.retry_base_seconds * 2 ** (delivery.attempts - 1), settings.retry_max_seconds)
            wait = max(wait * random.uniform(0.8, 1.2), error.retry_after or 0)  # noqa: S311  # jitter, not crypto
            delivery.next_attempt_at = now + dt.timedelta(seconds=wait)
            delivery.enqueued_at = queueing.enqueued_at(settings, delivery.next_attempt_at, now)
            audit.append(
                session,
                actor=SYSTEM,
                action="delivery.attempt_failed",
                subject_type="delivery",
                subject_id=delivery_id,
                payload=_error_payload(
                    delivery, error, retry_after=error.retry_after, next_attempt_at=delivery.next_attempt_at
                ),
            )

    def _failed(self, delivery_id: str, error: PermanentDeliveryError, *, claimed: bool) -> DeliveryStatus:
        with self.database.transaction() as session:
            delivery = service.get_delivery(session, delivery_id, for_update=True)
            if not claimed:
                status = _unavailable(delivery, utcnow())
                if status is not None:
                    return status  # taken (or finished) by another worker meanwhile: theirs to settle
            delivery.attempts += 1
            delivery.last_error = str(error)[:500]
            delivery.claimed_until = None
            service.move(
                session,
                delivery,
                DeliveryStatus.failed,
                actor=SYSTEM,
                payload=_error_payload(delivery, error),
            )
            return DeliveryStatus(delivery.status)

    def _sent(self, delivery_id: str, sent: Sent, prepared: Prepared) -> DeliveryStatus:
        with self.database.transaction() as session:
            delivery = service.get_delivery(session, delivery_id, for_update=True)
            return self._record_sent(session, delivery, sent, prepared)

    def _record_sent(
        self,
        session: Session,
        delivery: Delivery,
        sent: Sent,
        prepared: Prepared,
    ) -> DeliveryStatus:
        """What the provider took, recorded on the delivery (locked by the caller) and in the log."""
        delivery.attempts += 1
        delivery.last_error = None
        delivery.claimed_until = None
        provider_id = sent.provider_id
        if delivery.channel == Channel.portal.value:
            # The inbox message and the delivery's move commit together: no message on a pending
            # delivery, and no opening before it counts as delivered.
            provider_id = put_in_inbox(session, delivery, prepared, title=str(prepared.details.get("title")))
        if not service.move(
            session, delivery, sent.status, actor=SYSTEM, payload={"provider_id": provider_id}
        ):
            return DeliveryStatus(delivery.status)
        delivery.provider_id = provider_id
        if sent.details:
            delivery.details = {**delivery.details, **sent.details}
        if provider_id and delivery.channel == Channel.sms.value:
            lock_name(session, f"twilio:{provider_id}")
            apply_early_callbacks(session, delivery)
        if delivery.channel == Channel.portal.value:
            self._portal_notice(session, delivery, provider_id or "")
        return DeliveryStatus(delivery.status)

    def _portal_notice(self, session: Session, delivery: Delivery, portal_message: str) -> None:
        """When asked ({"portal_notice": ["email"]}), tell the customer a message is waiting in their portal:
        a communication of its own (template CCM_PORTAL_NOTICE_TEMPLATE), made with the portal message."""
        communication = session.get_one(Communication, delivery.communication_id)
        channels = communication.options.get("portal_notice") or []
        if not channels:
            return
        customer = session.get_one(Customer, delivery.customer_id)
        title = str(delivery.details.get("title") or "")
        try:
            with session.begin_nested():
                service.create_communication(
                    session,
                    self.settings,
                    template_key=self.settings.portal_notice_template,
                    customer=customer,
                    data={"title": title},
                    channels=[Channel(c) for c in channels],
                    actor=SYSTEM,
                    parent_id=communication.id,
                )
        except CCMError as exc:
            # The portal message is delivered; the notice could not be made. Said in the log, not hidden.
            audit.append(
                session,
                actor=SYSTEM,
                action="communication.notice_failed",
                subject_type="communication",
                subject_id=communication.id,
                payload={"portal_message": portal_message, "channels": channels, "error": str(exc)},
            )


def _log_rendered(
    session: Session, delivery_id: str, communication_id: str, channel: str, fresh: _Fresh
) -> None:
    """A freshly prepared artifact logged as the delivery's, as it is claimed."""
    audit.append(
        session,
        actor=SYSTEM,
        action="delivery.rendered",
        subject_type="delivery",
        subject_id=delivery_id,
        payload={
            "communication": communication_id,
            "channel": channel,
            "artifact": fresh.sha256,
            "size": fresh.size,
            "media_type": fresh.prepared.media_type,
            "details": fresh.prepared.details,
        },
    )


def _held(delivery: _Claimable, now: dt.datetime) -> bool:
    """In a worker's hands: claimed, and its lease not run out."""
    return delivery.claimed_until is not None and delivery.claimed_until > now


def _unavailable(delivery: _Claimable, now: dt.datetime) -> DeliveryStatus | None:
    """Why this worker may not take the delivery (its status: finished, or `pending` in another worker's
    hands or waiting for its next attempt), or None if it may."""
    if delivery.status != DeliveryStatus.pending.value:
        return DeliveryStatus(delivery.status)
    if _held(delivery, now):
        return DeliveryStatus.pending
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return DeliveryStatus.pending  # a failed attempt's backoff (or Retry-After) is not cut short
    return None


def _error_payload(delivery: Delivery, error: DeliveryError, **extra: Any) -> dict[str, Any]:
    return {
        "attempt": delivery.attempts,
        "error": str(error),
        "provider_code": error.provider_code,
        **{k: v for k, v in extra.items() if v is not None},
    }


def apply_callback(session: Session, delivery: Delivery, callback: ProviderCallback) -> bool:
    """Apply a provider's status callback to its delivery, if it moves it forward."""
    status = TWILIO_STATUSES.get(callback.status or "")
    callback.delivery_id = delivery.id
    if status is None:
        return False
    payload: dict[str, Any] = {"provider_id": callback.provider_id, "provider_status": callback.status}
    if callback.params.get("ErrorCode"):
        payload["provider_code"] = callback.params["ErrorCode"]
    callback.applied = service.move(session, delivery, status, actor="provider:twilio", payload=payload)
    return callback.applied


def apply_early_callbacks(session: Session, delivery: Delivery) -> None:
    """Twilio may call back before the send is recorded: those callbacks, kept unmatched, apply now."""
    early = session.scalars(
        select(ProviderCallback)
        .where(ProviderCallback.provider_id == delivery.provider_id, ProviderCallback.delivery_id.is_(None))
        .order_by(ProviderCallback.id)
    )
    for callback in early:
        apply_callback(session, delivery, callback)


def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.data_dir / "artifacts")


def make_deliverer(
    database: Database, settings: Settings, engine: TemplateEngine, *, chunk_threads: int = 1
) -> Deliverer:
    return Deliverer(
        database=database,
        settings=settings,
        engine=engine,
        adapters=make_adapters(settings, database),
        artifacts=artifact_store(settings),
        chunk_threads=chunk_threads,
    )
