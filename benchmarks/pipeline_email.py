"""Email end to end: communications/s from a batch file to a local SMTP sink, against plain smtplib.

ccm's side is the whole send pipeline as it runs: `python -m ccm serve` (embedded mode: the Dramatiq worker's
threads and the relay inside the API process, a batch's chunks delivered in CCM_DELIVERY_PROCESSES processes
beside it, 3 by default; the CPU figure counts them all) on a fresh SQLite database with the starter
templates published and N customers with email addresses; a JSON Lines file of N `payment_reminder`
triggers (channels ["email"], each to its own customer, with its own amount) streamed to POST /v1/batches;
the clock stops when GET /v1/batches/{id} says all N are `sent`, each one accepted, routed, rendered, stored
as an artifact, sent to the sink and logged in the audit chain on the way. The floor is a plain `smtplib`
loop on one connection sending the same N messages (rendered and built with `build_mime` beforehand, as ccm
builds them) to the same sink, before and after ccm's run; the faster of the two is the ratio's floor. The
sink (aiosmtpd, counting) runs in a process of its own, so neither side shares a GIL with it. Target: at
least 0.5x on 2 cores.
"""

from __future__ import annotations

import json
import smtplib
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.common import (
    SENDER_EMAIL,
    CcmServer,
    Client,
    PipelineSetup,
    SinkProcess,
    chunked,
    pipeline_setup,
    reminder_data,
)
from ccm.channels import Channel
from ccm.channels.email import OutgoingEmail, build_mime, make_message_id
from ccm.communications.models import Delivery
from ccm.db import Database
from ccm.templates_engine import service
from ccm.templates_engine.render import RenderContext

TEMPLATE = "payment_reminder"


def trigger_lines(customers: list[str]) -> list[bytes]:
    return [
        json.dumps(
            {
                "template": TEMPLATE,
                "customer": external_id,
                "data": reminder_data(index),
                "channels": ["email"],
                "reference": f"INV-{index:07d}",
            }
        ).encode()
        + b"\n"
        for index, external_id in enumerate(customers)
    ]


def floor_messages(setup: PipelineSetup) -> list[tuple[str, bytes]]:
    """The same emails as ccm sends (same template, customer and data), rendered and built beforehand."""
    database = Database(setup.database_url)
    try:
        with database.read() as session:
            template = service.get_template(session, key=TEMPLATE)
            live = service.live_version(session, template)
            assert live is not None
            version = service.loaded(session, template, live)
    finally:
        database.dispose()
    messages = []
    for index, external_id in enumerate(setup.customers):
        address = f"customer{index}@example.co.uk"
        customer = {
            "external_id": external_id,
            "name": f"Customer {index}",
            "email": address,
            "locale": "en-GB",
            "timezone": "Europe/London",
        }
        context = RenderContext(
            customer=customer,
            data=reminder_data(index),
            message={
                "id": f"m-{index}",
                "date": "2026-11-22",
                "unsubscribe_url": f"https://bank.example/unsubscribe/{external_id}",
                "portal_url": f"https://bank.example/portal/{external_id}",
            },
            locale="en-GB",
            timezone="Europe/London",
        )
        rendered = setup.engine.render_channel(version, Channel.email, context)
        assert not rendered.problems, rendered.problems
        email = OutgoingEmail(
            message_id=make_message_id(SENDER_EMAIL),
            to_address=address,
            to_name=customer["name"],
            subject=rendered.fields["subject"],
            html=rendered.fields["html"],
            text=rendered.fields["text"],
        )
        messages.append((address, build_mime(email, sender=SENDER_EMAIL)))
    return messages


def floor_rate(sink: SinkProcess, messages: list[tuple[str, bytes]]) -> float:
    """Messages per second of plain `sendmail` on one connection, until the sink has counted them all."""
    before = sink.received
    connection = smtplib.SMTP("127.0.0.1", sink.port)
    try:
        started = time.perf_counter()
        for recipient, mime in messages:
            connection.sendmail(SENDER_EMAIL, [recipient], mime)
        elapsed = time.perf_counter() - started
    finally:
        connection.quit()
    assert sink.received - before == len(messages)
    return len(messages) / elapsed


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    count = 50 if quick else 20_000
    poll = 0.02 if quick else 0.1
    sink = SinkProcess().start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            setup = pipeline_setup(Path(directory), customers=count, smtp_port=sink.port)
            lines = trigger_lines(setup.customers)
            messages = floor_messages(setup)
            if not quick:
                print(f"   set-up (not measured): {time.perf_counter() - started:.0f}s")
            floors = [floor_rate(sink, messages)]

            server = CcmServer(Path(directory), setup.environment).start()
            client = Client(server.port, setup.key)
            try:
                before = sink.received
                cpu_before = server.cpu_seconds()
                written_before = server.written_bytes()
                started = time.perf_counter()
                status, body = client.request(
                    "POST", "/v1/batches", chunked(lines), {"Content-Type": "application/x-ndjson"}
                )
                accepted_after = time.perf_counter() - started
                if status != 201:
                    raise RuntimeError(f"POST /v1/batches: {status} {body[:500]!r}")
                batch = json.loads(body)
                assert batch["accepted"] == count, batch
                sent_at_acceptance = sink.received - before
                # The sink's count costs the server nothing; the batch's counts (a query over its rows) are
                # asked only once the sink has every message, for the last few to be recorded as sent.
                last_change, last_count = time.perf_counter(), -1
                reported, reported_count = time.perf_counter(), sent_at_acceptance
                while (received := sink.received - before) < count:
                    now = time.perf_counter()
                    if not quick and now - reported >= 30:
                        print(
                            f"     ... {received:,} sent after {now - started:.0f}s,"
                            f" {(received - reported_count) / (now - reported):,.0f}/s over the last"
                            f" {now - reported:.0f}s",
                            flush=True,
                        )
                        reported, reported_count = now, received
                    if received != last_count:
                        last_change, last_count = now, received
                    elif now - last_change > 60:
                        summary = client.json("GET", f"/v1/batches/{batch['id']}")
                        raise RuntimeError(f"nothing was sent for 60s: {summary}\n{server.log_tail()}")
                    time.sleep(poll)
                while (summary := client.json("GET", f"/v1/batches/{batch['id']}"))["sent"] < count:
                    if summary["failed"] or summary["suppressed"] or time.perf_counter() - last_change > 60:
                        raise RuntimeError(f"not every communication was recorded as sent: {summary}")
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
                cpu = server.cpu_seconds() - cpu_before
                written = server.written_bytes() - written_before
                assert sink.received - before == count, (sink.received - before, count)
                peak = server.peak_rss()
                peaks_under = server.peak_rss_under()
            finally:
                client.close()
                server.stop()
            database = Database(setup.database_url)
            try:
                with database.read() as session:
                    ccm_size = session.scalar(select(func.avg(Delivery.artifact_size)))
            finally:
                database.dispose()
            floors.append(floor_rate(sink, messages))
    finally:
        sink.stop()

    rate = count / elapsed
    floor = max(floors)
    floor_size = sum(len(mime) for _, mime in messages) / len(messages)
    print(
        f"   {count:,} communications ({TEMPLATE}, email, {ccm_size / 1000:.1f} kB each; the floor's"
        f" {floor_size / 1000:.1f} kB): ccm {rate:,.0f} communications/s ({elapsed:.1f}s),"
        f" plain smtplib {floors[0]:,.0f} before and {floors[1]:,.0f} after"
    )
    print(
        f"   where the time went: the batch answered (all {count:,} stored) after {accepted_after:.1f}s"
        f" ({count / accepted_after:,.0f} rows/s) with {sent_at_acceptance:,} sent meanwhile; the other"
        f" {count - sent_at_acceptance:,} sent in the {elapsed - accepted_after:.1f}s after;"
        f" the server used {cpu:.1f}s of CPU ({cpu / count * 1e3:.2f} ms a communication) and wrote"
        f" {written / count / 1000:,.0f} kB a communication to disk,"
        f" peak memory {peak / 2**20:,.0f} MB"
        + "".join(f", a delivery process {under / 2**20:,.0f} MB" for under in peaks_under)
    )
    ratio = rate / floor
    verdict = "met" if ratio >= 0.5 else "missed"
    print(f"   ratio {ratio:.2f}x against the faster plain smtplib run (target >= 0.5x: {verdict})")
