"""Edges of the pipeline found in review: fallbacks made once and never lost, statuses that follow late
provider news, letters cancelled before printing, caps on what went out, batch files with awkward lines."""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.audit.models import AuditEvent
from ccm.auth.models import Role
from ccm.channels import Channel
from ccm.communications import batches, queueing, service
from ccm.communications.pipeline import Pipeline
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import Sender, sample
from tests.communications.test_pipeline import live_in, zone_where_it_is
from tests.communications.test_twilio_webhooks import status as twilio_status
from tests.conftest import count_events


@dataclass
class ListQueue:
    routed: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)

    def route(self, communication_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None:
        self.routed.append(communication_id)

    def deliver(self, delivery_id: str, at: dt.datetime | None = None, *, bulk: bool = False) -> None:
        self.delivered.append(delivery_id)

    def webhook(self, message_id: str, at: dt.datetime | None = None) -> None:
        return None

    def route_many(self, communication_ids: list[str]) -> None:
        self.routed.extend(communication_ids)

    def deliver_many(self, delivery_ids: list[str]) -> None:
        self.delivered.extend(delivery_ids)


def fallback_communication(sender: Sender, database: Database) -> tuple[str, str]:
    """A welcome (email, SMS, portal) routed as a fallback chain whose first delivery, email, has failed."""
    with database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == "CUST-1001")).one()
        customer.preferred_channels = ["email", "sms", "portal"]
        communication = service.create_communication(
            session,
            sender.settings,
            template_key="welcome",
            customer=customer,
            data=sample("welcome"),
            actor="test",
        )
        [first] = service.route_many(session, sender.settings, [communication.id], actor="test").deliveries
        first = service.get_delivery(session, first.id, for_update=True)
        service.move(session, first, DeliveryStatus.failed, actor="test", payload={"error": "550"})
        return communication.id, first.id


def channels_of(database: Database, communication_id: str) -> list[str]:
    with database.read() as session:
        return [d.channel for d in service.deliveries_of(session, communication_id)]


def test_a_failure_falls_back_once_however_often_it_is_asked(sender: Sender, database: Database) -> None:
    communication_id, failed = fallback_communication(sender, database)
    pipeline = Pipeline(
        database=database, settings=sender.settings, deliverer=sender.deliverer, queue=ListQueue()
    )
    pipeline._fall_back(failed)
    pipeline._fall_back(failed)  # a second worker, a duplicated message
    assert channels_of(database, communication_id) == ["email", "sms"]


def test_a_lost_fallback_is_made_by_the_relay(sender: Sender, database: Database) -> None:
    communication_id, _ = fallback_communication(sender, database)  # the worker died before falling back
    queue = ListQueue()
    settings = Settings(**{**sender.settings.model_dump(), "relay_stale_seconds": 1.0})
    pipeline = Pipeline(database=database, settings=settings, deliverer=sender.deliverer, queue=queue)
    with database.transaction() as session:  # it happened a while ago
        service.get_communication(session, communication_id).updated_at = utcnow() - dt.timedelta(minutes=5)
    pipeline.relay()
    assert channels_of(database, communication_id) == ["email", "sms"]
    assert len(queue.delivered) == 1


def test_a_late_undelivered_fails_a_communication_that_was_sent(
    client: TestClient, sender: Sender, database: Database
) -> None:
    delivery = sender.send("payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.sms])
    with database.read() as session:
        assert service.get_communication(session, delivery.communication_id).status == "sent"
    assert twilio_status(client, delivery.provider_id or "", "undelivered", ErrorCode="30005") == 204
    with database.read() as session:
        assert service.get_communication(session, delivery.communication_id).status == "failed"


def test_a_letter_waiting_for_its_print_batch_can_be_cancelled(
    client: TestClient, sender: Sender, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    delivery = sender.send("claim_decision", "CUST-1001", sample("claim_decision"), [Channel.print])
    assert delivery.status == DeliveryStatus.queued
    response = client.post(
        f"/v1/communications/{delivery.communication_id}/cancel", headers=role_keys[Role.sender]
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert sender.delivery(delivery.id).status == DeliveryStatus.cancelled


def marketing_offers(
    sender: Sender, session: Session, count: int, *, send_at: dt.datetime | None = None
) -> list[str]:
    """`count` marketing offers to CUST-1001 (who opted in to marketing by email), accepted, not routed."""
    customer = session.scalars(select(Customer).where(Customer.external_id == "CUST-1001")).one()
    return [
        service.create_communication(
            session,
            sender.settings,
            template_key="marketing_offer",
            customer=customer,
            data=sample("marketing_offer"),
            actor="test",
            send_at=send_at,
        ).id
        for _ in range(count)
    ]


def test_the_frequency_cap_counts_what_went_out_not_what_is_scheduled(
    sender: Sender, database: Database
) -> None:
    with database.transaction() as session:
        marketing_offers(sender, session, 3, send_at=utcnow() + dt.timedelta(days=30))
        today = marketing_offers(sender, session, 1)
        deliveries = service.route_many(session, sender.settings, today, actor="test").deliveries
    assert [d.channel for d in deliveries] == ["email"]


def test_the_frequency_cap_holds_within_one_chunk(sender: Sender, database: Database) -> None:
    """Routed together (a batch's chunk), the fourth marketing message to one customer in a week is still
    the fourth: the cap (3/7d) counts the ones routed before it in the same transaction."""
    with database.transaction() as session:
        ids = marketing_offers(sender, session, 4)
        routed = service.route_many(session, sender.settings, ids, actor="test")
    assert sorted(d.communication_id for d in routed.deliveries) == sorted(ids[:3])
    with database.read() as session:
        statuses = [service.get_communication(session, i).status for i in ids]
        last = service.get_communication(session, ids[3])
        suppressed = session.scalars(
            select(AuditEvent.payload).where(
                AuditEvent.subject_id == ids[3], AuditEvent.action == "communication.suppressed"
            )
        ).all()
    assert statuses == ["routed", "routed", "routed", "suppressed"]
    assert last.routing["chain"] == []
    assert {"channel": "email", "reason": "frequency cap: 3/7d marketing communications"} in [
        json.loads(payload) for payload in suppressed
    ]


def test_batch_lines_too_long_quoted_newlines_byte_order_marks_and_bad_bytes() -> None:
    long = b'{"x": "' + b"y" * (batches.MAX_LINE + 10) + b'"}\n'
    chunks = [long[i : i + 65536] for i in range(0, len(long), 65536)] + [b'{"template": "a"}\n']
    lines = list(batches.split_lines(chunks))
    assert lines == [batches.TOO_LONG, b'{"template": "a"}\n']

    jsonl = list(batches.jsonl_rows([b'\xef\xbb\xbf{"template": "payment_reminder", "customer": "C-1"}\n']))
    assert [n for n, row in jsonl if not isinstance(row, list)] == [1]

    csv_text = b'customer,note\nC-1,"line one\r\nline two"\nC-2,caf\xe9\nC-3,ok\n'
    rows = list(batches.csv_rows(batches.split_lines([csv_text]), template="t", mapping={}, schema={}))
    assert [(n, r.data if not isinstance(r, list) else r[0]["type"]) for n, r in rows] == [
        (2, {"note": "line one\r\nline two"}),
        (4, "encoding"),
        (5, {"note": "ok"}),
    ]


def test_a_send_window_must_be_a_time_of_day() -> None:
    with pytest.raises(ValidationError, match="sms_send_window"):
        Settings(sms_send_window="08:00-24:30")
    assert Settings(sms_send_window="08:00-24:00").sms_send_window == "08:00-24:00"


def test_a_batch_chunk_is_sent_together_and_each_delivery_still_takes_its_own_way(
    sender: Sender, database: Database, sink: SmtpSink
) -> None:
    """Pipeline.deliver_many: plain emails sent with a transaction a step for the lot; a 451, a 550, an SMS
    at night, a letter and a delivery already sent each end as they would on their own."""
    data = sample("payment_reminder")

    def email_to(address: str) -> str:
        sender.set_email("CUST-1001", address)
        [delivery_id] = sender.create("payment_reminder", "CUST-1001", data, [Channel.email])
        return delivery_id

    plain = [email_to(f"amelia.{n}@example.co.uk") for n in range(3)]
    busy = email_to("busy.amelia@example.co.uk")
    sink.handler.busy["busy.amelia@example.co.uk"] = 1
    rejected = email_to("reject.amelia@example.co.uk")
    sender.set_email("CUST-1001", "amelia.hartley@example.co.uk")
    already = sender.send("payment_reminder", "CUST-1001", data, [Channel.email])
    assert already.status == "sent"
    [letter] = sender.create("claim_decision", "CUST-1001", sample("claim_decision"), [Channel.print])
    [sms] = sender.create("payment_reminder", "CUST-1001", data, [Channel.sms])
    live_in(database, "CUST-1001", zone_where_it_is(23))  # whatever time the test runs, 23:xx there
    received_before = len(sink.handler.messages)
    events_before = count_events(database)

    queue = ListQueue()
    pipeline = Pipeline(database=database, settings=sender.settings, deliverer=sender.deliverer, queue=queue)
    pipeline.deliver_many([*plain, busy, rejected, already.id, letter, sms])

    status = {d: sender.delivery(d).status for d in [*plain, busy, rejected, already.id, letter, sms]}
    assert [status[d] for d in plain] == ["sent"] * 3
    assert status[busy] == "pending"
    assert sender.delivery(busy).attempts == 1
    assert busy in queue.delivered  # its next attempt queued
    assert status[rejected] == "failed"
    assert "550" in (sender.delivery(rejected).last_error or "")
    assert status[already.id] == "sent"
    assert sender.delivery(already.id).attempts == 1  # not sent again
    assert status[letter] == "queued"  # made one by one, waiting for its print batch
    assert status[sms] == "pending"
    assert sender.delivery(sms).next_attempt_at is not None  # deferred to the morning, not sent
    received = sink.handler.messages[received_before:]
    assert sorted(m.recipients[0] for m in received) == sorted(f"amelia.{n}@example.co.uk" for n in range(3))
    with database.read() as session:
        for delivery_id in plain:
            delivery = service.get_delivery(session, delivery_id)
            assert delivery.provider_id
            assert service.get_communication(session, delivery.communication_id).status == "sent"
        # Every step of every delivery in the log, in one chain that still holds.
        timeline = list(
            session.scalars(
                select(AuditEvent.action).where(AuditEvent.subject_id.in_(plain)).order_by(AuditEvent.seq)
            )
        )
        assert timeline.count("delivery.rendered") == 3
        assert timeline.count("delivery.sent") == 3
        assert audit.verify(session).ok
    assert count_events(database, "delivery.deferred") == 1
    assert count_events(database) > events_before


def accepted_reminders(sender: Sender, count: int, **extra: Any) -> list[str]:
    """Payment reminders by email to CUST-1001, accepted and not yet routed."""
    with sender.database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == "CUST-1001")).one()
        return [
            service.create_communication(
                session,
                sender.settings,
                template_key="payment_reminder",
                customer=customer,
                data=sample("payment_reminder"),
                channels=[Channel.email],
                actor="test",
                **extra,
            ).id
            for _ in range(count)
        ]


def test_a_chunk_of_communications_is_routed_in_one_go(sender: Sender, database: Database) -> None:
    """Pipeline.route_many: the due ones routed with their deliveries handed over, one scheduled for
    later put back, one routed before left alone."""
    due = accepted_reminders(sender, 3)
    [later] = accepted_reminders(sender, 1, send_at=utcnow() + dt.timedelta(minutes=30))
    [routed_before] = sender.create(
        "payment_reminder", "CUST-1001", sample("payment_reminder"), [Channel.email]
    )
    with database.read() as session:
        routed_before_communication = service.get_delivery(session, routed_before).communication_id
    queue = ListQueue()
    pipeline = Pipeline(database=database, settings=sender.settings, deliverer=sender.deliverer, queue=queue)
    pipeline.route_many([*due, later, routed_before_communication])
    with database.read() as session:
        assert [service.get_communication(session, c).status for c in due] == ["routed"] * 3
        assert service.get_communication(session, later).status == "accepted"
        handed = [d.id for c in due for d in service.deliveries_of(session, c)]
        assert service.deliveries_of(session, routed_before_communication)[0].id == routed_before
        assert audit.verify(session).ok
    assert sorted(queue.delivered) == sorted(handed)
    assert queue.routed == [later]


def test_a_chunk_out_of_time_claims_nothing_more_and_queues_the_rest_again(
    sender: Sender, database: Database, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk stops half-way through the actor's time limit (here: none at all), so that the worker never
    cuts a send short; what is left is neither claimed nor sent, and queued again on its own."""
    data = sample("payment_reminder")
    ids = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(3)]
    monkeypatch.setattr(queueing, "time_limit", lambda settings: 0.0)
    received_before = len(sink.handler.messages)
    queue = ListQueue()
    pipeline = Pipeline(database=database, settings=sender.settings, deliverer=sender.deliverer, queue=queue)
    pipeline.deliver_many(ids)
    assert len(sink.handler.messages) == received_before
    for delivery_id in ids:
        delivery = sender.delivery(delivery_id)
        assert (delivery.status, delivery.attempts, delivery.claimed_until) == ("pending", 0, None)
    assert queue.delivered == ids
    monkeypatch.undo()
    pipeline.deliver_many(queue.delivered)
    assert [sender.delivery(d).status for d in ids] == ["sent"] * 3
    assert len(sink.handler.messages) == received_before + 3


def test_a_chunk_interrupted_mid_send_records_what_went_and_releases_the_rest(
    sender: Sender, database: Database, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's time limit (or anything else) stopping the chunk between sends: the sends in flight
    then are waited for, what reached the server is recorded as sent, what did not is released at once
    instead of waiting out its lease."""
    data = sample("payment_reminder")
    ids = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(6)]
    adapter = sender.deliverer.adapters[Channel.email]
    send = adapter.send
    calls: list[str] = []
    went: list[str] = []
    lock = threading.Lock()

    def interrupted(envelope: Any, prepared: Any) -> Any:
        with lock:
            calls.append(envelope.delivery_id)
            third = len(calls) == 3
        if third:
            raise TimeLimitExceeded()  # as Dramatiq interrupts an actor: not an Exception
        result = send(envelope, prepared)
        with lock:
            went.append(envelope.delivery_id)
        return result

    monkeypatch.setattr(adapter, "send", interrupted)
    received_before = len(sink.handler.messages)
    with pytest.raises(TimeLimitExceeded):
        sender.deliverer.deliver_many(ids)
    assert len(went) >= 2
    assert len(sink.handler.messages) == received_before + len(went)
    statuses = {d: sender.delivery(d) for d in ids}
    assert [statuses[d].status for d in went] == ["sent"] * len(went)
    left = [d for d in ids if d not in went]
    assert calls[2] in left  # the interrupted send
    for delivery_id in left:
        assert (statuses[delivery_id].status, statuses[delivery_id].claimed_until) == ("pending", None)
    with database.read() as session:
        assert audit.verify(session).ok


def test_a_chunk_has_several_sends_in_flight_each_on_a_connection_of_its_own(
    sender: Sender, database: Database, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CCM_SEND_CONCURRENCY sends of a chunk wait for the mail server at once: each send here waits until
    that many are under way (sent one after another, the first would wait in vain and fail), each on a
    connection of its own; every one is recorded once."""
    data = sample("payment_reminder")
    concurrency = sender.settings.send_concurrency
    assert concurrency > 1
    ids = [
        sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0]
        for _ in range(2 * concurrency)
    ]
    adapter = sender.deliverer.adapters[Channel.email]
    send = adapter.send
    together = threading.Barrier(concurrency, timeout=10)

    def all_at_once(envelope: Any, prepared: Any) -> Any:
        together.wait()
        return send(envelope, prepared)

    monkeypatch.setattr(adapter, "send", all_at_once)
    received_before, connections_before = len(sink.handler.messages), sink.handler.connections
    chunk = sender.deliverer.deliver_many(ids)

    assert chunk.statuses == dict.fromkeys(ids, DeliveryStatus.sent)
    assert (chunk.retry, chunk.again, chunk.one_by_one) == ([], [], [])
    assert len(sink.handler.messages) == received_before + len(ids)
    assert sink.handler.connections - connections_before == concurrency
    with database.read() as session:
        sent_events = session.scalars(
            select(AuditEvent.subject_id).where(
                AuditEvent.subject_id.in_(ids), AuditEvent.action == "delivery.sent"
            )
        )
        assert sorted(sent_events) == sorted(ids)
        assert audit.verify(session).ok


def test_one_communication_that_cannot_be_routed_does_not_hold_up_its_chunk(
    sender: Sender, database: Database
) -> None:
    ids = accepted_reminders(sender, 3)
    with database.transaction() as session:
        # A row no routing can read (a workflow outcome naming a channel ccm has not got).
        service.get_communication(session, ids[1]).decision = {"outcome": {"routing": {"channels": ["fax"]}}}
    queue = ListQueue()
    pipeline = Pipeline(database=database, settings=sender.settings, deliverer=sender.deliverer, queue=queue)
    pipeline.route_many(ids)
    assert queue.routed == ids  # the chunk failed as a whole: each queued again on its own
    for communication_id in (ids[0], ids[2]):
        pipeline.route(communication_id)
    with pytest.raises(ValueError, match="fax"):
        pipeline.route(ids[1])
    with database.read() as session:
        assert [service.get_communication(session, c).status for c in ids] == ["routed", "accepted", "routed"]
        assert audit.verify(session).ok


def test_a_chunk_records_a_communication_of_two_deliveries_once_and_a_send_recorded_meanwhile_once(
    sender: Sender, database: Database, sink: SmtpSink, twilio: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's sends are recorded together (service.record_answers): an email and an SMS of one
    communication both move, and the communication is logged as sent once; a delivery another worker sent
    and recorded while this one was sending it (its lease ran out) is not moved or logged again."""
    live_in(database, "CUST-1001", zone_where_it_is(12))  # the SMS inside its send window
    data = sample("payment_reminder")
    both = sender.create("payment_reminder", "CUST-1001", data, [Channel.email, Channel.sms])
    assert len(both) == 2
    [overtaken] = sender.create("payment_reminder", "CUST-1001", data, [Channel.email])
    adapter = sender.deliverer.adapters[Channel.email]
    send = adapter.send

    def overtaken_while_sending(envelope: Any, prepared: Any) -> Any:
        sent = send(envelope, prepared)
        if envelope.delivery_id == overtaken:  # another worker records it first
            with database.transaction() as session:
                delivery = service.get_delivery(session, overtaken, for_update=True)
                service.move(session, delivery, DeliveryStatus.sent, actor="test:other-worker")
        return sent

    monkeypatch.setattr(adapter, "send", overtaken_while_sending)
    chunk = sender.deliverer.deliver_many([*both, overtaken])

    assert chunk.statuses == {
        both[0]: DeliveryStatus.sent,
        both[1]: DeliveryStatus.queued,  # Twilio's answer to a new message
        overtaken: DeliveryStatus.sent,
    }
    with database.read() as session:
        [email, sms] = (service.get_delivery(session, d) for d in both)
        communication = service.get_communication(session, email.communication_id)
        assert communication.status == "sent"
        assert (email.attempts, email.claimed_until, sms.attempts, sms.claimed_until) == (1, None, 1, None)
        assert email.provider_id
        assert (sms.provider_id or "").startswith("SM")
        actions = list(
            session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.subject_id.in_([*both, communication.id]))
                .order_by(AuditEvent.seq)
            )
        )
        assert actions.count("communication.sent") == 1
        assert [a for a in actions if a.startswith("delivery.")].count("delivery.rendered") == 2
        assert sorted(a for a in actions if a in ("delivery.sent", "delivery.queued")) == [
            "delivery.queued",
            "delivery.sent",
        ]
        late = service.get_delivery(session, overtaken)
        assert (late.status, late.attempts, late.claimed_until, late.provider_id) == ("sent", 1, None, None)
        moves = session.scalars(
            select(AuditEvent.actor).where(
                AuditEvent.subject_id == overtaken, AuditEvent.action == "delivery.sent"
            )
        )
        assert list(moves) == ["test:other-worker"]
        assert audit.verify(session).ok


def test_a_chunk_sends_what_another_worker_logged_for_a_delivery_and_logs_no_second_artifact(
    sender: Sender, database: Database, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a chunk reading a delivery and claiming it, another worker claimed it, logged its artifact
    and was killed (its lease run out): the chunk sends the artifact that worker logged, read back from the
    store, and logs no second one."""
    data = sample("payment_reminder")
    ids = [sender.create("payment_reminder", "CUST-1001", data, [Channel.email])[0] for _ in range(2)]
    taken = ids[1]
    deliverer = sender.deliverer
    store = deliverer._store  # the moment between the chunk's read and its claim

    def another_worker_first(outputs: Any) -> Any:
        stored = store(outputs)
        with database.transaction() as session:
            delivery = service.get_delivery(session, taken, for_update=True)
            [other] = store([deliverer.adapters[Channel.email].prepare(envelope_of(taken))])
            deliverer._claim_row(session, delivery, other, utcnow())
            delivery.claimed_until = utcnow() - dt.timedelta(seconds=1)  # then killed: its lease ran out
            logged.append(other.sha256)
        return stored

    def envelope_of(delivery_id: str) -> Any:
        with database.read() as session:
            [job] = deliverer._jobs(session, [service.get_delivery(session, delivery_id)])
        return deliverer._envelope(job, Channel.email)

    logged: list[str] = []
    monkeypatch.setattr(deliverer, "_store", another_worker_first)
    received_before = len(sink.handler.messages)
    chunk = deliverer.deliver_many(ids)

    assert chunk.statuses == dict.fromkeys(ids, DeliveryStatus.sent)
    assert len(sink.handler.messages) == received_before + 2
    with database.read() as session:
        delivery = service.get_delivery(session, taken)
        assert (delivery.artifact_sha256, delivery.claimed_until, delivery.attempts) == (logged[0], None, 1)
        rendered = session.scalars(
            select(AuditEvent.payload).where(
                AuditEvent.subject_id == taken, AuditEvent.action == "delivery.rendered"
            )
        )
        assert [json.loads(payload)["artifact"] for payload in rendered] == logged
        assert audit.verify(session).ok
