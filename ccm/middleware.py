"""Request context: a request id on every response, and one log line per request (never a body)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccm.errors import Unauthorized
from ccm.problems import problem_response

log = logging.getLogger("ccm.requests")

# Customers' links carry their credential in the path: a log line must not hand it to whoever reads logs.
_SIGNED_LINK = re.compile(r"^/(portal|unsubscribe)/[^/?]+")


def redact_path(path: str) -> str:
    return _SIGNED_LINK.sub(r"/\1/<token>", path)


_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


class RequestContextMiddleware:
    """Takes the caller's X-Request-ID when it is sane, else makes one; echoes it and logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        # In scope["state"] so that request.state.request_id works, including in the 500 handler.
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            principal = scope["state"].get("principal")
            # The raw path, still percent-encoded: a decoded %0A would let a caller forge log lines.
            raw_path = scope.get("raw_path") or scope["path"].encode()
            log.info(
                "%s %s %s %.1fms key=%s request_id=%s",
                scope["method"],
                redact_path(raw_path.decode("ascii", "backslashreplace")),
                status,
                (time.perf_counter() - started) * 1000,
                principal.key_id if principal is not None else "-",
                request_id,
            )


# Endpoints that read their body as a stream, as large as it comes (batch files); they bound it themselves.
STREAMED = {"/v1/batches"}


async def _buffered(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The body read whole (stopping once past `limit`), and a receive that replays it."""
    body = bytearray()
    more = True
    while more and len(body) <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break
        body.extend(message.get("body", b""))
        more = message.get("more_body", False)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    return bytes(body), replay


class RequestGuard:
    """Refuses, before any body is read or parsed: API calls without credentials (401) and bodies over the
    size limit (413). The key itself is checked by the endpoint's dependency."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = None
        if scope["path"].startswith("/v1/") and b"authorization" not in headers:
            problem = (
                Unauthorized.status,
                Unauthorized.slug,
                Unauthorized.title,
                _NO_KEY,
                {"WWW-Authenticate": "Bearer"},
            )
        elif scope["path"] not in STREAMED:
            length = headers.get(b"content-length")
            if length is None and scope["method"] in {"POST", "PUT", "PATCH"}:
                # No declared length (chunked): read up to the limit first, and refuse beyond it.
                body, receive = await _buffered(receive, self.max_body_bytes)
                length = str(len(body)).encode()
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                detail = f"the body is larger than the limit of {self.max_body_bytes} bytes"
                problem = (413, "body-too-large", "Content too large", detail, {})
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, slug, title, detail, extra_headers = problem
        response = problem_response(
            Request(scope), status=status, slug=slug, title=title, detail=detail, headers=extra_headers
        )
        await response(scope, receive, send)


_NO_KEY = "send an API key as 'Authorization: Bearer <key>'"
