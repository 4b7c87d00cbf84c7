"""Email against a real SMTP server: structure, headers, RFC 8058, transient and permanent refusals."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from ccm.channels.base import Attachment, PermanentDeliveryError, TransientDeliveryError
from ccm.channels.email import (
    EmlFileTransport,
    OutgoingEmail,
    SmtpTransport,
    build_mime,
    make_message_id,
)
from ccm.config import Settings
from tests.channels.smtp_sink import SmtpSink

SENDER = "Northwind Bank <notices@bank.example>"
HTML = (
    "<html><head><style>p.note { color: #0b3d91; }"
    " @media (max-width: 600px) { p { font-size: 18px; } }</style></head>"
    "<body><p class='note'>Your payment of £249.90 is due.</p></body></html>"
)


@pytest.fixture
def transport(sink: SmtpSink, tmp_path: Path) -> Iterator[SmtpTransport]:
    smtp = SmtpTransport(Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=sink.port), timeout=5)
    try:
        yield smtp
    finally:
        smtp.close()


def outgoing(to: str = "amelia@example.co.uk", **changes: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "message_id": make_message_id("notices@bank.example"),
        "to_address": to,
        "to_name": "Amelia Hartley",
        "subject": "Payment reminder: £249.90 due",
        "html": HTML,
        "text": "Your payment of £249.90 is due.\n",
    }
    fields.update(changes)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def send(transport: SmtpTransport, message: OutgoingEmail) -> bytes:
    mime = build_mime(message, sender=SENDER)
    transport.send(
        sender="notices@bank.example", recipient=message.to_address, mime=mime, message_id=message.message_id
    )
    return mime


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_multipart_alternative_with_inlined_css(sink: SmtpSink, transport: SmtpTransport) -> None:
    message = outgoing()
    send(transport, message)
    [received] = sink.handler.messages
    assert received.recipients == ["amelia@example.co.uk"]
    mime = parsed(received.data)
    assert mime.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in mime.iter_parts()] == ["text/plain", "text/html"]
    assert mime["Subject"] == "Payment reminder: £249.90 due"
    assert mime["To"] == "Amelia Hartley <amelia@example.co.uk>"
    assert mime["From"] == SENDER
    assert mime["Message-ID"] == message.message_id
    assert mime["Date"]
    html = mime.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert '<p class="note" style="color: #0b3d91;">' in html  # inlined for clients that drop <style>
    assert "@media (max-width: 600px)" in html  # responsive rules kept in a <style>
    text = mime.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n") == "Your payment of £249.90 is due.\n"  # sent with SMTP's CRLF
    assert "List-Unsubscribe" not in mime  # a service message


def test_marketing_mail_carries_rfc_8058_headers(sink: SmtpSink, transport: SmtpTransport) -> None:
    url = "https://ccm.example/unsubscribe/abc123"
    send(transport, outgoing(marketing=True, unsubscribe_url=url))
    mime = parsed(sink.handler.messages[0].data)
    assert mime["List-Unsubscribe"] == f"<{url}>"
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with pytest.raises(PermanentDeliveryError, match="needs an unsubscribe link"):
        build_mime(outgoing(marketing=True), sender=SENDER)


def test_a_letter_attached(sink: SmtpSink, transport: SmtpTransport) -> None:
    pdf = b"%PDF-1.7\n% a letter\n"
    send(transport, outgoing(attachments=(Attachment("claim-decision.pdf", "application/pdf", pdf),)))
    mime = parsed(sink.handler.messages[0].data)
    assert mime.get_content_type() == "multipart/mixed"
    [attachment] = list(mime.iter_attachments())
    assert attachment.get_filename() == "claim-decision.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf


def test_the_connection_is_reused_and_reopened_when_it_drops(
    sink: SmtpSink, transport: SmtpTransport
) -> None:
    for _ in range(3):
        send(transport, outgoing())
    assert (len(sink.handler.messages), sink.handler.connections, transport.connections_opened) == (3, 1, 1)
    # The server restarts: the idle connection is dead; the next send reconnects by itself.
    sink.stop()
    sink.start()
    send(transport, outgoing())
    assert transport.connections_opened == 2
    assert len(sink.handler.messages) == 4


def test_4xx_is_transient_and_5xx_permanent(sink: SmtpSink, transport: SmtpTransport) -> None:
    with pytest.raises(TransientDeliveryError, match="451") as transient:
        send(transport, outgoing("tempfail@example.com"))
    assert transient.value.provider_code == "451"
    with pytest.raises(PermanentDeliveryError, match="550") as permanent:
        send(transport, outgoing("reject@example.com"))
    assert permanent.value.provider_code == "550"
    # The refusals left the connection usable.
    send(transport, outgoing())
    assert len(sink.handler.messages) == 1
    assert transport.connections_opened == 1


def test_an_unreachable_server_is_transient(tmp_path: Path) -> None:
    closed_port = SmtpSink().port  # nothing listens there
    smtp = SmtpTransport(Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=closed_port), timeout=2)
    with pytest.raises(TransientDeliveryError, match=r"could not be reached|closed the connection"):
        send(smtp, outgoing())


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hello\r\nBcc: everyone@example.com"},
        {"to_name": "Amelia\nBcc: x@example.com"},
        {"message_id": "<a@b>\nX-Evil: 1"},
    ],
)
def test_a_line_break_in_a_header_is_refused(
    sink: SmtpSink, transport: SmtpTransport, changes: dict[str, str]
) -> None:
    with pytest.raises(PermanentDeliveryError, match="line break"):
        send(transport, outgoing(**changes))
    assert sink.handler.messages == []


def test_without_a_relay_mail_is_written_as_eml(tmp_path: Path) -> None:
    transport = EmlFileTransport(tmp_path / "outbox")
    message = outgoing()
    mime = build_mime(message, sender=SENDER)
    transport.send(
        sender="notices@bank.example", recipient=message.to_address, mime=mime, message_id=message.message_id
    )
    [written] = list((tmp_path / "outbox").iterdir())
    assert written.suffix == ".eml"
    assert written.read_bytes() == mime
    assert parsed(written.read_bytes())["Message-ID"] == message.message_id


def test_what_is_written_reads_back_exactly_with_the_email_package() -> None:
    subject = "Votre relevé annuel 2025 — " + "très important " * 8
    text = "Montant dû : 1 200,00 € = total\nLigne avec espaces en fin   \n" + "x" * 300 + "\n.\nFin"
    html = "<p style='color:red'>Bonjour Zoë, 50% = moitié</p>"
    letter = Attachment("relevé annuel.pdf", "application/pdf", b"%PDF-1.7\n" + bytes(range(256)) * 40)
    mime = build_mime(
        OutgoingEmail(
            message_id="<abc@bank.example>",
            to_address="zoe@example.fr",
            to_name='Zoë "la" Dupont, <boss@evil.example>',
            subject=subject,
            html=html,
            text=text,
            marketing=True,
            unsubscribe_url="https://bank.example/unsubscribe/" + "t" * 120,
            attachments=(letter,),
        ),
        sender="Banque Nordvent <notices@bank.example>",
    )
    assert mime.isascii()
    lines = mime.split(b"\r\n")
    assert b"\n" not in b"".join(lines)  # every line ends in CRLF
    assert max(len(line) for line in lines) <= 998
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == subject
    assert [a.addr_spec for a in message["To"].addresses] == ["zoe@example.fr"]
    assert message["To"].addresses[0].display_name == 'Zoë "la" Dupont, <boss@evil.example>'
    assert message["From"].addresses[0].display_name == "Banque Nordvent"
    assert message["List-Unsubscribe"] == "<https://bank.example/unsubscribe/" + "t" * 120 + ">"
    assert message.get_content_type() == "multipart/mixed"
    plain, rich = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain.get_content().replace("\r\n", "\n") == text  # CRLF on the wire, the same text
    assert '<p style="color:red">Bonjour Zoë, 50% = moitié</p>' in rich.get_content()

    [attached] = list(message.iter_attachments())
    assert attached.get_filename() == "relevé annuel.pdf"
    assert attached.get_content() == letter.content
