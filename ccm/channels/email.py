"""Email: the MIME message built once per delivery, and sent over SMTP (or written as .eml files).

- multipart/alternative text + HTML, the HTML's CSS inlined (mail clients drop <style>); attachments make it
  multipart/mixed;
- a Message-ID made once per delivery by the caller and reused on every retry, so receivers can drop repeats;
- List-Unsubscribe and List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058) on marketing mail;
- a CR or LF in any header value is refused: it would let a value inject headers of its own.

SMTP replies: 4xx and lost connections are transient, 5xx permanent. One connection per worker thread is
reused across sends and reopened when it has dropped.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import functools
import os
import re
import smtplib
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from email.header import Header
from pathlib import Path
from typing import Protocol

import css_inline

from ccm.channels import Channel
from ccm.channels.base import (
    Attachment,
    Envelope,
    PermanentDeliveryError,
    Prepared,
    Sent,
    TransientDeliveryError,
)
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings, SmtpSecurity

# Remote stylesheets are never fetched: a template must not make the server reach the network.
_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # "<...@...>", made once per delivery and reused on retry
    to_address: str
    subject: str
    html: str
    text: str
    to_name: str | None = None
    marketing: bool = False
    unsubscribe_url: str | None = None
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)


@functools.lru_cache(maxsize=16)
def _parsed_sender(sender: str) -> tuple[str, str]:
    """The configured sender's name and address: parsed once (email.utils takes ~12 us a parse), not for
    every message."""
    return email.utils.parseaddr(sender)


def make_message_id(sender: str) -> str:
    domain = _parsed_sender(sender)[1].rpartition("@")[2] or "localhost"
    return email.utils.make_msgid(domain=domain)


def _refuse_line_breaks(**headers: str | None) -> None:
    for name, value in headers.items():
        if value is not None and ("\r" in value or "\n" in value):
            raise PermanentDeliveryError(f"a line break in the {name} header is refused")


_CRLF = "\r\n"


def _encoded_words(value: str) -> str:
    """RFC 2047 "B" encoded words of at most 75 characters, one per folded line, never splitting a character
    (the standard library's Header tries quoted-printable first and takes quadratic time over it)."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for character in value:
        width = len(character.encode())
        if size + width > 45:  # 45 bytes: 60 base64 characters, 72 with "=?utf-8?b?" and "?="
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(character)
        size += width
    words.append("".join(chunk))
    return (_CRLF + " ").join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words)


def _header(name: str, value: str) -> str:
    """One header line, folded; text that is not ASCII becomes RFC 2047 encoded words."""
    if value.isascii():
        return f"{name}: " + Header(value, "us-ascii", header_name=name).encode(linesep=_CRLF)
    return f"{name}: {_encoded_words(value)}"


def _address(name: str | None, address: str, header: str) -> str:
    """An address header from a name and an address: the name is quoted or encoded, so that no name (such as
    'Zoë <boss@evil.example>' or 'A, b@c.example') can ever add an addressee."""
    if not address.isascii() or "@" not in address or any(c in address for c in ' <>,;"()'):
        raise PermanentDeliveryError(f"'{address}' cannot be the {header} address of an email")
    return f"{header}: " + email.utils.formataddr((name or "", address), charset="utf-8")


def _text_part(subtype: str, text: str) -> str:
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    body = binascii.b2a_qp(normalised.encode(), istext=True).decode("ascii").replace("\n", _CRLF)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{_CRLF}{_CRLF}{body}"
    )


def _attachment_part(attachment: Attachment) -> str:
    _refuse_line_breaks(attachment_filename=attachment.filename)
    if attachment.filename.isascii():
        filename = f'filename="{email.utils.quote(attachment.filename)}"'
    else:
        filename = "filename*=" + email.utils.encode_rfc2231(attachment.filename, "utf-8")
    body = base64.encodebytes(attachment.content).decode("ascii").replace("\n", _CRLF)
    return (
        f"Content-Type: {attachment.media_type}{_CRLF}"
        f"Content-Transfer-Encoding: base64{_CRLF}"
        f"Content-Disposition: attachment; {filename}{_CRLF}{_CRLF}{body}"
    )


def _multipart(subtype: str, boundary: str, parts: list[str]) -> str:
    inner = "".join(f"--{boundary}{_CRLF}{part}{_CRLF}" for part in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"{_CRLF}{_CRLF}{inner}--{boundary}--{_CRLF}'
    )


def build_mime(message: OutgoingEmail, *, sender: str) -> bytes:
    """The message exactly as it will be sent (and stored as the delivery's artifact).

    Written out directly with the standard library's encoders (RFC 2047 headers, quoted-printable and base64
    bodies, RFC 2231 file names) rather than through `email.message.EmailMessage`, which costs about 1.7 ms a
    message in header-class creation and re-parsing, several times the cost of sending it (see
    docs/benchmarks.md). The tests read every message back with the `email` package."""
    _refuse_line_breaks(
        subject=message.subject,
        to=message.to_address,
        to_name=message.to_name,
        sender=sender,
        message_id=message.message_id,
        unsubscribe_url=message.unsubscribe_url,
    )
    sender_name, sender_address = _parsed_sender(sender)
    headers = [
        _address(sender_name, sender_address, "From"),
        _address(message.to_name, message.to_address, "To"),
        _header("Subject", message.subject),
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Message-ID: {message.message_id}",
    ]
    if message.marketing:
        if not message.unsubscribe_url:
            raise PermanentDeliveryError("marketing email needs an unsubscribe link (RFC 8058)")
        if not message.unsubscribe_url.isascii():
            raise PermanentDeliveryError("the unsubscribe link must be plain ASCII")
        headers.append(f"List-Unsubscribe: <{message.unsubscribe_url}>")
        headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    headers.append("MIME-Version: 1.0")
    # Quoted-printable escapes every "=", and base64 has no "_": the boundary cannot occur in any part.
    boundary = f"=_ccm_{uuid.uuid4().hex}"
    body = _multipart(
        "alternative",
        boundary,
        [_text_part("plain", message.text), _text_part("html", _inliner.inline(message.html))],
    )
    if message.attachments:
        mixed = f"=_ccm_{uuid.uuid4().hex}"
        body = _multipart("mixed", mixed, [body, *(_attachment_part(a) for a in message.attachments)])
    return (_CRLF.join(headers) + _CRLF + body).encode("ascii")


class EmailTransport(Protocol):
    def send(self, *, sender: str, recipient: str, mime: bytes, message_id: str) -> None: ...

    def close(self) -> None: ...


def _reply_error(code: int, reply: bytes | str, what: str) -> TransientDeliveryError | PermanentDeliveryError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"the mail server refused the {what}: {code} {text}".strip()
    if 400 <= code < 500:
        return TransientDeliveryError(message, provider_code=str(code))
    return PermanentDeliveryError(message, provider_code=str(code))


def _transaction(connection: smtplib.SMTP, sender: str, recipient: str, mime: bytes) -> None:
    """One message: smtplib's sendmail() for one recipient, raising the same errors, without parsing both
    addresses again for every message (the sender is parsed once; the recipient was checked when it was
    saved and by build_mime)."""
    if any(c in "<>\r\n" for c in sender + recipient):
        raise PermanentDeliveryError("an address with angle brackets or a line break is refused")
    connection.ehlo_or_helo_if_needed()
    size = f" SIZE={len(mime)}" if connection.does_esmtp and connection.has_extn("size") else ""
    code, reply = connection.docmd("MAIL", f"FROM:<{sender}>{size}")
    if code != 250:
        if code == 421:
            connection.close()
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    code, reply = connection.docmd("RCPT", f"TO:<{recipient}>")
    if code not in (250, 251):
        if code == 421:
            connection.close()
        raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    code, reply = connection.data(mime)
    if code != 250:
        if code == 421:
            connection.close()
        raise smtplib.SMTPDataError(code, reply)


class SmtpTransport:
    """SMTP with one connection per worker thread, reused across sends and reopened after it drops."""

    def __init__(self, settings: Settings, *, timeout: float = 30) -> None:
        if not settings.smtp_host:
            raise ValueError("SmtpTransport needs CCM_SMTP_HOST")
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._security = settings.smtp_security
        self._username = settings.smtp_username
        self._password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _open(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        connection: smtplib.SMTP
        if self._security is SmtpSecurity.ssl:
            connection = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=context)
        else:
            connection = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
            if self._security is SmtpSecurity.starttls:
                connection.starttls(context=context)
        if self._username:
            connection.login(self._username, self._password or "")
        with self._lock:
            self._all.append(connection)
            self.connections_opened += 1
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                connection.close()
            with self._lock, contextlib.suppress(ValueError):
                self._all.remove(connection)

    def send(self, *, sender: str, recipient: str, mime: bytes, message_id: str) -> None:
        reused = getattr(self._local, "connection", None) is not None
        try:
            self._send_once(sender, recipient, mime)
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            self._drop()
            if not reused:
                raise TransientDeliveryError(f"the mail server closed the connection: {exc}") from None
            # A reused connection may simply have gone stale while idle: one fresh attempt.
            try:
                self._send_once(sender, recipient, mime)
            except (smtplib.SMTPServerDisconnected, OSError) as again:
                self._drop()
                raise TransientDeliveryError(f"the mail server could not be reached: {again}") from None

    def _send_once(self, sender: str, recipient: str, mime: bytes) -> None:
        connection = getattr(self._local, "connection", None)
        try:
            if connection is None:
                connection = self._open()
                self._local.connection = connection
            _transaction(connection, _parsed_sender(sender)[1] or sender, recipient, mime)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(recipient, (550, b"refused"))
            self._reset(connection)
            raise _reply_error(code, reply, "recipient") from None
        except smtplib.SMTPSenderRefused as exc:
            self._reset(connection)
            raise _reply_error(exc.smtp_code, exc.smtp_error, "sender") from None
        except smtplib.SMTPDataError as exc:
            self._reset(connection)
            raise _reply_error(exc.smtp_code, exc.smtp_error, "message") from None
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            raise
        except smtplib.SMTPAuthenticationError as exc:
            self._drop()
            raise PermanentDeliveryError(
                f"the mail server refused our credentials: {exc.smtp_code}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TransientDeliveryError(f"the mail server could not be reached: {exc}") from None

    def _reset(self, connection: smtplib.SMTP | None) -> None:
        """After a refusal the connection stays usable once its transaction is reset."""
        if connection is None:
            return
        try:
            connection.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                connection.quit()


class EmlFileTransport:
    """Without an SMTP relay (CCM_SMTP_HOST unset): each message is written as an .eml file to look at."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, *, sender: str, recipient: str, mime: bytes, message_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>")) + ".eml"
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".incoming-")
        with os.fdopen(handle, "wb") as file:
            file.write(mime)
        os.replace(temporary, self.folder / name)

    def close(self) -> None:
        return None


def make_transport(settings: Settings) -> EmailTransport:
    if settings.smtp_host:
        return SmtpTransport(settings)
    return EmlFileTransport(settings.data_dir / "outbox" / "email")


class EmailAdapter:
    """The email channel: the MIME message is the artifact, sent as stored."""

    channel = Channel.email

    def __init__(self, transport: EmailTransport, *, sender: str) -> None:
        self.transport = transport
        self.sender = sender

    def prepare(self, envelope: Envelope) -> Prepared:
        if not envelope.recipient:
            raise PermanentDeliveryError("the customer has no email address")
        if not envelope.message_id:
            raise PermanentDeliveryError("an email delivery needs its Message-ID")
        if not envelope.recipient.isascii():
            # jöhn@exämple.com needs SMTPUTF8 (RFC 6531), which ccm does not speak to relays yet.
            raise PermanentDeliveryError(
                "the email address is not plain ASCII: it needs an SMTPUTF8 mail server"
            )
        fields = envelope.fields
        mime = build_mime(
            OutgoingEmail(
                message_id=envelope.message_id,
                to_address=envelope.recipient,
                to_name=str(envelope.customer.get("name") or "") or None,
                subject=fields.get("subject", envelope.title),
                html=fields.get("html", ""),
                text=fields.get("text", ""),
                marketing=envelope.marketing,
                unsubscribe_url=envelope.unsubscribe_url,
                attachments=envelope.attachments,
            ),
            sender=self.sender,
        )
        return Prepared(content=mime, media_type="message/rfc822")

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        message_id = envelope.message_id or ""  # prepare() checked it and the recipient
        self.transport.send(
            sender=self.sender,
            recipient=envelope.recipient or "",
            mime=prepared.content,
            message_id=message_id,
        )
        return Sent(status=DeliveryStatus.sent, provider_id=message_id)
