"""One-click unsubscribe (RFC 8058): the link in a marketing email's List-Unsubscribe header.

The link carries a token signed with the service's secret, naming the customer, channel and purpose. It does
not expire: a link in an old email must keep working. GET shows a page with a button, and changes nothing
(mail scanners follow links); POST, which is what a mail client's one-click sends
(`List-Unsubscribe=One-Click`), withdraws the consent and records it like any other consent change.
"""

from __future__ import annotations

import contextlib
import functools
import html
import os
import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from itsdangerous import BadSignature, Serializer, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from ccm.auth.deps import DatabaseDep, SettingsDep
from ccm.channels import Channel
from ccm.config import Settings
from ccm.customers import service
from ccm.customers.models import Purpose
from ccm.customers.schemas import ConsentIn, ConsentsIn
from ccm.errors import NotFound

SOURCE = "one-click unsubscribe"
_SALT = "ccm.unsubscribe.v1"

router = APIRouter(tags=["unsubscribe"])


def signing_secret(settings: Settings) -> str:
    """CCM_SECRET_KEY, or (on a single machine) a secret made once and kept in the data dir."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path: Path = settings.data_dir / "secret_key"
    with contextlib.suppress(FileNotFoundError):
        return _secret_in(path)  # read once per process: no look at the disk for every token
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked into place: a reader never sees a half-written
        # secret, and if another process got there first its secret stands (link fails on an existing name).
        handle, temporary = tempfile.mkstemp(dir=settings.data_dir, prefix=".secret-")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return _secret_in(path)


@functools.lru_cache(maxsize=8)
def _secret_in(path: Path) -> str:
    # Read once per process: the file is written once and never changes, and tokens are made for every
    # marketing email and checked on every unsubscribe.
    return path.read_text().strip()


class _Uncompressed(URLSafeSerializer):
    """URL-safe tokens whose payload is never zlib-compressed. A token's few dozen bytes of JSON gain
    nothing from it, and the attempt (a fresh deflate state) cost 15 us, twice in every email. A token made
    compressed still loads."""

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class _UncompressedTimed(URLSafeTimedSerializer):
    """The same, with the time it was signed (for links that expire)."""

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


@functools.lru_cache(maxsize=16)
def _tokens(secret: str, salt: str) -> URLSafeSerializer:
    return _Uncompressed(secret, salt=salt)


@functools.lru_cache(maxsize=16)
def _timed_tokens(secret: str, salt: str) -> URLSafeTimedSerializer:
    return _UncompressedTimed(secret, salt=salt)


def tokens(settings: Settings, salt: str) -> URLSafeSerializer:
    """Signed tokens with the service's secret, for one purpose (`salt`); made once per secret."""
    return _tokens(signing_secret(settings), salt)


def timed_tokens(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    """Signed tokens that carry the time they were made, for links that expire."""
    return _timed_tokens(signing_secret(settings), salt)


def _serializer(settings: Settings) -> URLSafeSerializer:
    return tokens(settings, _SALT)


def unsubscribe_token(settings: Settings, *, external_id: str, channel: Channel = Channel.email) -> str:
    return str(
        _serializer(settings).dumps({"c": external_id, "ch": channel.value, "p": Purpose.marketing.value})
    )


def unsubscribe_url(settings: Settings, *, external_id: str, channel: Channel = Channel.email) -> str:
    base = str(settings.public_base_url).rstrip("/")
    return f"{base}/unsubscribe/{unsubscribe_token(settings, external_id=external_id, channel=channel)}"


def _read(settings: Settings, token: str) -> tuple[str, Channel]:
    try:
        claims = _serializer(settings).loads(token)
        return str(claims["c"]), Channel(claims["ch"])
    except (BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("this unsubscribe link is not valid") from None


Token = Annotated[str, PathParam(max_length=1000)]


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family: sans-serif; max-width: 36em; margin: 3em auto; line-height: 1.5'>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def confirm_page(token: Token, settings: SettingsDep) -> HTMLResponse:
    """A page with a button: following a link changes nothing (mail scanners follow links)."""
    _, channel = _read(settings, token)
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving offers by {html.escape(channel.value)}? Messages about your accounts and "
        "services will still reach you.</p>"
        "<form method='post'><button type='submit'>Unsubscribe</button></form>",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: Token, database: DatabaseDep, settings: SettingsDep) -> HTMLResponse:
    """One-click unsubscribe: withdraws marketing consent on the channel; doing it again changes nothing."""
    external_id, channel = _read(settings, token)
    body = ConsentsIn(
        consents=[ConsentIn(channel=channel, purpose=Purpose.marketing, granted=False)], source=SOURCE
    )
    with database.transaction() as session:
        service.update_consents(session, external_id=external_id, body=body, actor=f"customer:{external_id}")
    return _page("You are unsubscribed", "<p>You will no longer receive our offers this way.</p>")
