"""The communication log for auditors, tested on a copy of the demo database with communications sent through
the real adapters (tests/communications/conftest.py's Sender), on two customers, two channels and two
versions of a template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ccm.auth.models import Role
from ccm.channels import Channel
from tests.communications.conftest import (  # the fixtures, shared rather than copied
    Sender,
    database_url,
    sample,
    sender,
    settings,
)

__all__ = ["Scenario", "client", "database_url", "pages", "scenario", "sender", "settings"]


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    """The API without its lifespan: no embedded worker or relay delivering in the background while a test
    sends, so that what the log holds is exactly what the test did."""
    return TestClient(app, raise_server_exceptions=False)


@dataclass
class Scenario:
    """What was sent: communication id -> its delivery ids by channel."""

    communications: dict[str, dict[Channel, str]]
    names: dict[str, str]  # a name for each communication, such as "amelia_v1"

    def communication(self, name: str) -> str:
        return self.names[name]

    def delivery(self, name: str, channel: Channel) -> str:
        return self.communications[self.names[name]][channel]


def _send(sender: Sender, template: str, customer: str, channels: list[Channel]) -> dict[Channel, str]:
    ids = sender.create(template, customer, sample(template), channels)
    made = {}
    for delivery_id in ids:
        sender.deliverer.deliver(delivery_id)
        made[Channel(sender.delivery(delivery_id).channel)] = delivery_id
    assert set(made) == set(channels)
    return made


def _publish_new_version(client: TestClient, keys: dict[Role, dict[str, str]], template: str) -> int:
    made = client.post(
        f"/v1/templates/{template}/versions",
        json={"copy_from": 1, "notes": "second version"},
        headers=keys[Role.author],
    )
    assert made.status_code == 201, made.text
    number = int(made.json()["number"])
    for step, role, body in (
        ("submit", Role.author, None),
        ("approve", Role.approver, None),
        ("publish", Role.approver, None),
    ):
        answer = client.post(
            f"/v1/templates/{template}/versions/{number}/{step}", json=body, headers=keys[role]
        )
        assert answer.status_code == 200, answer.text
    return number


@pytest.fixture
def scenario(client: TestClient, sender: Sender, role_keys: dict[Role, dict[str, str]]) -> Scenario:
    """Amelia (CUST-1001) and Émile (CUST-1002): payment reminders by email and SMS on version 1, a consent
    change, a second version published, reminders on version 2, and a one-time passcode by SMS."""
    names: dict[str, str] = {}
    communications: dict[str, dict[Channel, str]] = {}

    def send(name: str, template: str, customer: str, channels: list[Channel]) -> None:
        made = _send(sender, template, customer, channels)
        communication_id = sender.delivery(next(iter(made.values()))).communication_id
        names[name] = communication_id
        communications[communication_id] = made

    send("amelia_v1", "payment_reminder", "CUST-1001", [Channel.email, Channel.sms])
    send("emile_v1", "payment_reminder", "CUST-1002", [Channel.email])
    consents = {"consents": [{"channel": "sms", "purpose": "marketing", "granted": True}]}
    changed = client.put("/v1/customers/CUST-1001/consents", json=consents, headers=role_keys[Role.agent])
    assert changed.status_code == 200, changed.text
    assert _publish_new_version(client, role_keys, "payment_reminder") == 2
    send("amelia_v2", "payment_reminder", "CUST-1001", [Channel.email])
    send("emile_otp", "one_time_passcode", "CUST-1002", [Channel.sms])
    return Scenario(communications, names)


def pages(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every event /v1/audit/events gives for these filters, page after page; each page checked."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = client.get("/v1/audit/events", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == int(params.get("limit", 50))
