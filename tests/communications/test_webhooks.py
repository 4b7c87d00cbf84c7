"""Outbound webhooks against a real HTTP receiver: every status change POSTed, signed, retried, recorded."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ccm.auth.models import Role
from ccm.communications.models import WebhookAttempt, WebhookMessage
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import sample

SECRET = "integrator-secret-0123456789abcdef"


@dataclass
class Receiver:
    """An integrator's endpoint: records what it is sent; answers 503 to the first `failures` requests."""

    failures: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ccm"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    assert running.server is not None
    running.server.shutdown()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """What an integrator does with the signature header."""
    parts = dict(item.split("=", 1) for item in headers["ccm-signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


def events_until(receiver: Receiver, wanted: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = [json.loads(body) for _, body in receiver.received]
        if wanted in [e["type"] for e in events]:
            return events
        time.sleep(0.05)
    raise AssertionError(f"no {wanted} event; got {[json.loads(b)['type'] for _, b in receiver.received]}")


def test_status_changes_are_posted_signed_and_retried(
    client: TestClient,
    admin: dict[str, str],
    role_keys: dict[Role, dict[str, str]],
    receiver: Receiver,
    sink: SmtpSink,
    database: Database,
) -> None:
    registered = client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET}, headers=admin)
    assert registered.status_code == 201
    assert registered.json()["secret"] == SECRET
    assert (
        "secret" not in client.get("/v1/webhooks", headers=admin).json()[0]
        or client.get("/v1/webhooks", headers=admin).json()[0]["secret"] is None
    )
    receiver.failures = 1  # the first POST meets an outage

    response = client.post(
        "/v1/communications",
        json={
            "template": "payment_reminder",
            "customer": "CUST-1001",
            "data": sample("payment_reminder"),
            "channels": ["email"],
            "reference": "INV-1",
        },
        headers=role_keys[Role.sender],
    )
    events_until(receiver, "communication.sent")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the message that met the outage got through on its retry
        with database.read() as session:
            pending = session.scalar(select(func.count()).where(WebhookMessage.status != "delivered"))
            attempts = list(session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))
        if pending == 0:
            break
        time.sleep(0.05)
    assert pending == 0
    events = [json.loads(body) for _, body in receiver.received]
    types = [e["type"] for e in events]
    assert {"communication.routed", "delivery.sent", "communication.sent"} <= set(types)
    sent = next(e for e in events if e["type"] == "delivery.sent")
    assert sent["data"]["communication"] == response.json()["id"]
    assert sent["data"]["channel"] == "email"
    assert next(e for e in events if e["type"] == "communication.sent")["data"]["reference"] == "INV-1"
    assert all(verify(headers, body) for headers, body in receiver.received)
    failed = [a for a in attempts if a.status_code == 503]
    assert len(failed) == 1
    assert failed[0].error == "HTTP 503"
    # The message that met the outage was tried again and got through: one attempt more than deliveries.
    assert len(attempts) == len(receiver.received) + 1
    assert failed[0].message_id in {a.message_id for a in attempts if a.status_code == 204}


def test_a_forged_body_does_not_verify() -> None:
    body = b'{"type":"delivery.sent"}'
    headers = {"ccm-signature": f"t={int(time.time())},v1=" + "0" * 64}
    assert not verify(headers, body)


def test_only_admins_manage_webhooks_and_urls_are_checked(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]]
) -> None:
    assert (
        client.post(
            "/v1/webhooks", json={"url": "https://x.example/h"}, headers=role_keys[Role.sender]
        ).status_code
        == 403
    )
    bad = client.post("/v1/webhooks", json={"url": "file:///etc/passwd"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["path"] == "/url"
    made = client.post("/v1/webhooks", json={"url": "https://x.example/h"}, headers=admin).json()
    assert len(made["secret"]) >= 32
    assert client.delete(f"/v1/webhooks/{made['id']}", headers=admin).status_code == 204
    assert client.get("/v1/webhooks", headers=admin).json()[0]["active"] is False
