"""Email sending: messages per second through ccm's email adapter, against plain smtplib on one connection.

ccm's path is what each email costs the service: the email parts of a published template rendered by the
template engine (`payment_reminder` in its `brand_email` layout: subject, HTML, and the text made from the
HTML), a Message-ID, `build_mime` (headers checked, CSS inlined, multipart/alternative) and
`SmtpTransport.send` on its reused connection. The adapter alone is `build_mime` and `send` on emails rendered
beforehand. The floor is `smtplib.SMTP.sendmail` on one connection with the bytes ccm builds for the same
emails, built beforehand. All three send the same number of messages to the same local SMTP sink (aiosmtpd,
in this process, counting what it receives), warmed first, in rotating rounds of the same run, and the
breakdown says where ccm's time goes. Target: at least 0.8x.
"""

from __future__ import annotations

import smtplib
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from benchmarks.common import CUSTOMER, publish_starters, starter_database
from ccm.channels import Channel
from ccm.channels.email import OutgoingEmail, SmtpTransport, build_mime, make_message_id
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine import service
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine

TEMPLATE = "payment_reminder"
SENDER = "notices@bank.example"


class CountingSink:
    """An aiosmtpd handler that accepts every message and keeps only the count."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class CcmSender:
    """One email as the service sends it: render, Message-ID, MIME, SMTP."""

    def __init__(self, engine: TemplateEngine, version: LoadedVersion, transport: SmtpTransport) -> None:
        self.engine, self.version, self.transport = engine, version, transport

    def render(self, number: int) -> OutgoingEmail:
        context = RenderContext(
            customer=CUSTOMER,
            data=self.version.content["sample_data"],
            message={
                "id": f"m-{number}",
                "date": "2026-11-22",
                "unsubscribe_url": f"https://bank.example/unsubscribe/m-{number}",
                "portal_url": f"https://bank.example/portal/m-{number}",
            },
            locale="en-GB",
            timezone="Europe/London",
        )
        rendered = self.engine.render_channel(self.version, Channel.email, context)
        assert not rendered.problems, rendered.problems
        return OutgoingEmail(
            message_id=make_message_id(SENDER),
            to_address=CUSTOMER["email"],
            to_name=CUSTOMER["name"],
            subject=rendered.fields["subject"],
            html=rendered.fields["html"],
            text=rendered.fields["text"],
        )

    def send(self, number: int) -> None:
        message = self.render(number)
        mime = build_mime(message, sender=SENDER)
        self.transport.send(
            sender=SENDER, recipient=message.to_address, mime=mime, message_id=message.message_id
        )


def rate(send: Callable[[int], None], numbers: range) -> float:
    started = time.perf_counter()
    for number in numbers:
        send(number)
    return len(numbers) / (time.perf_counter() - started)


def stage_times(sender: CcmSender, plain: smtplib.SMTP, numbers: range) -> tuple[float, float, float, float]:
    """Mean seconds per message in each stage of ccm's path (render, build_mime, send), and for plain
    smtplib sending the same bytes right after, in the same pass."""
    started = time.perf_counter()
    messages = [sender.render(number) for number in numbers]
    render = time.perf_counter() - started
    started = time.perf_counter()
    mimes = [build_mime(message, sender=SENDER) for message in messages]
    build = time.perf_counter() - started
    started = time.perf_counter()
    for message, mime in zip(messages, mimes, strict=True):
        sender.transport.send(
            sender=SENDER, recipient=message.to_address, mime=mime, message_id=message.message_id
        )
    send = time.perf_counter() - started
    started = time.perf_counter()
    for message, mime in zip(messages, mimes, strict=True):
        plain.sendmail(SENDER, [message.to_address], mime)
    plain_send = time.perf_counter() - started
    count = len(numbers)
    return render / count, build / count, send / count, plain_send / count


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    rounds, per_round, warm = (1, 50, 5) if quick else (5, 400, 100)
    handler = CountingSink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    with tempfile.TemporaryDirectory() as directory:
        url = starter_database(Path(directory))
        database = Database(url)
        settings = Settings(
            database_url=url, data_dir=Path(directory), smtp_host="127.0.0.1", smtp_port=controller.port
        )
        transport = SmtpTransport(settings)
        plain = smtplib.SMTP("127.0.0.1", controller.port)
        try:
            engine = publish_starters(database, settings)
            with database.read() as session:
                template = service.get_template(session, key=TEMPLATE)
                live = service.live_version(session, template)
                assert live is not None
                version = service.loaded(session, template, live)
            sender = CcmSender(engine, version, transport)
            total = rounds * per_round
            # The adapter alone gets each email rendered beforehand; the floor gets the bytes ccm builds for
            # the very same emails, built beforehand.
            rendered = [sender.render(number) for number in range(total + warm)]
            mimes = [build_mime(message, sender=SENDER) for message in rendered]

            def adapter_send(number: int) -> None:
                message = rendered[number]
                mime = build_mime(message, sender=SENDER)
                transport.send(
                    sender=SENDER, recipient=message.to_address, mime=mime, message_id=message.message_id
                )

            def plain_send(number: int) -> None:
                plain.sendmail(SENDER, [rendered[number].to_address], mimes[number])

            sides: dict[str, Callable[[int], None]] = {
                "ccm": sender.send,
                "adapter": adapter_send,
                "plain": plain_send,
            }
            for side in sides.values():
                for number in range(total, total + warm):
                    side(number)
            rates: dict[str, list[float]] = {name: [] for name in sides}
            for index in range(rounds):
                numbers = range(index * per_round, (index + 1) * per_round)
                # Rotate which side goes first, so drift on a shared machine falls on all of them.
                names = list(sides)
                for name in names[index % 3 :] + names[: index % 3]:
                    rates[name].append(rate(sides[name], numbers))
            render, build, send, plain_seconds = stage_times(sender, plain, range(per_round))
            expected = 3 * (warm + total) + 2 * per_round
            assert handler.received == expected, (handler.received, expected)
            assert transport.connections_opened == 1
        finally:
            plain.quit()
            transport.close()
            database.dispose()
            controller.stop()

    size = statistics.mean(len(mime) for mime in mimes)
    median = {name: statistics.median(values) for name, values in rates.items()}
    # Each round's ratio is taken within the round, so a slow spell on the machine cancels out.
    ratio = {
        name: statistics.median(
            ours / theirs for ours, theirs in zip(rates[name], rates["plain"], strict=True)
        )
        for name in ("ccm", "adapter")
    }
    print(
        f"   {TEMPLATE} email ({size / 1000:.1f} kB), {rounds} rotating rounds of {per_round}, medians:"
        f" ccm {median['ccm']:,.0f} messages/s, adapter alone {median['adapter']:,.0f} messages/s,"
        f" plain smtplib {median['plain']:,.0f} messages/s"
    )
    print(
        "   medians of the rounds' ratios: the email adapter (build_mime + send)"
        f" ratio {ratio['adapter']:.2f}x (target >= 0.8x);"
        f" with the template rendered too (render + build_mime + send) {ratio['ccm']:.2f}x"
    )
    print(
        f"   ccm per message: render {render * 1e6:,.0f} us, build_mime {build * 1e6:,.0f} us,"
        f" SMTP send {send * 1e6:,.0f} us; plain sendmail of the same bytes {plain_seconds * 1e6:,.0f} us"
    )
