"""One-click unsubscribe (RFC 8058): from the header of a mail a real SMTP server received to the consent."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeSerializer

from ccm.channels.email import OutgoingEmail, SmtpTransport, build_mime, make_message_id
from ccm.config import Settings
from ccm.customers.unsubscribe import signing_secret, unsubscribe_token, unsubscribe_url
from ccm.db import Database
from tests.channels.smtp_sink import SmtpSink
from tests.conftest import count_events


@pytest.fixture
def subscribed(client: TestClient, admin: dict[str, str]) -> str:
    client.put(
        "/v1/customers/CUST-1", json={"name": "Amelia", "email": "amelia@example.co.uk"}, headers=admin
    )
    consent = {
        "consents": [{"channel": "email", "purpose": "marketing", "granted": True}],
        "source": "web-form",
    }
    assert client.put("/v1/customers/CUST-1/consents", json=consent, headers=admin).status_code == 200
    return "CUST-1"


def marketing_consent(client: TestClient, admin: dict[str, str]) -> bool | None:
    consents = client.get("/v1/customers/CUST-1/consents", headers=admin).json()["consents"]
    return next(
        (c["granted"] for c in consents if (c["channel"], c["purpose"]) == ("email", "marketing")), None
    )


def test_the_link_in_a_received_mail_unsubscribes_with_one_click(
    client: TestClient,
    admin: dict[str, str],
    settings: Settings,
    subscribed: str,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    message = OutgoingEmail(
        message_id=make_message_id("offers@bank.example"),
        to_address="amelia@example.co.uk",
        subject="4.5% fixed for a year",
        html="<p>Our offer</p>",
        text="Our offer\n",
        marketing=True,
        unsubscribe_url=unsubscribe_url(settings, external_id=subscribed),
    )
    transport = SmtpTransport(
        Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=sink.port), timeout=5
    )
    try:
        mime = build_mime(message, sender="offers@bank.example")
        transport.send(
            sender="offers@bank.example",
            recipient=message.to_address,
            mime=mime,
            message_id=message.message_id,
        )
    finally:
        transport.close()
    received = email.message_from_bytes(sink.handler.messages[0].data, policy=email.policy.default)
    link = str(received["List-Unsubscribe"]).strip("<>")
    path = urlsplit(link).path

    page = client.get(path)  # a mail scanner following the link changes nothing
    assert page.status_code == 200
    assert "<form method='post'>" in page.text
    assert marketing_consent(client, admin) is True

    done = client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    assert "unsubscribed" in done.text
    assert marketing_consent(client, admin) is False
    history = client.get("/v1/customers/CUST-1/consents/history", headers=admin).json()["items"]
    assert (
        history[-1]["topic"],
        history[-1]["granted"],
        history[-1]["source"],
        history[-1]["changed_by"],
    ) == (
        "email:marketing",
        False,
        "one-click unsubscribe",
        "customer:CUST-1",
    )


def test_unsubscribing_twice_changes_nothing_more(
    client: TestClient, settings: Settings, subscribed: str, database: Database
) -> None:
    path = f"/unsubscribe/{unsubscribe_token(settings, external_id=subscribed)}"
    assert client.post(path).status_code == 200
    events = count_events(database)
    assert client.post(path).status_code == 200
    assert count_events(database) == events


def test_a_link_from_an_older_mail_with_a_compressed_token_still_unsubscribes(
    client: TestClient, admin: dict[str, str], settings: Settings, subscribed: str
) -> None:
    """Tokens are no longer zlib-compressed; one that was (itsdangerous compresses whenever it is shorter)
    must keep working: an old mail's link does not expire."""
    compressed = URLSafeSerializer(signing_secret(settings), salt="ccm.unsubscribe.v1").dumps(
        {"c": subscribed, "ch": "email", "p": "marketing", "pad": "x" * 200}
    )
    assert compressed.startswith(".")  # itsdangerous' mark of a compressed payload
    assert client.post(f"/unsubscribe/{compressed}").status_code == 200
    assert marketing_consent(client, admin) is False


def test_a_forged_or_altered_link_is_refused(
    client: TestClient, admin: dict[str, str], settings: Settings, subscribed: str
) -> None:
    token = unsubscribe_token(settings, external_id=subscribed)
    other = Settings(data_dir=settings.data_dir, secret_key="another-secret-of-at-least-32-characters!")
    for bad in (
        token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1],
        unsubscribe_token(other, external_id=subscribed),
        "x",
    ):
        response = client.post(f"/unsubscribe/{bad}")
        assert response.status_code == 404
        assert response.json()["type"] == "urn:ccm:problem:not-found"
    assert marketing_consent(client, admin) is True


def test_the_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = unsubscribe_token(settings, external_id="C-1")
    assert unsubscribe_token(Settings(data_dir=tmp_path), external_id="C-1") == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
