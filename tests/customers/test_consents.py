"""Consents: per channel and purpose, e-delivery, preferences; every change kept with who, when, source."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm.auth.models import Role
from ccm.db import Database
from tests.conftest import count_events


@pytest.fixture
def customer(client: TestClient, admin: dict[str, str]) -> str:
    response = client.put(
        "/v1/customers/C-1", json={"name": "Ann Baker", "email": "ann@example.com"}, headers=admin
    )
    assert response.status_code == 201
    return "C-1"


def put_consents(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return client.put("/v1/customers/C-1/consents", json=body, headers=headers)


def test_consents_are_recorded_and_shown(client: TestClient, admin: dict[str, str], customer: str) -> None:
    response = put_consents(
        client,
        admin,
        {
            "consents": [
                {"channel": "email", "purpose": "marketing", "granted": True},
                {"channel": "sms", "purpose": "service", "granted": False},
            ],
            "e_delivery": True,
            "preferred_channels": ["email", "portal"],
            "source": "web-form",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(c["channel"], c["purpose"], c["granted"], c["source"]) for c in body["consents"]] == [
        ("email", "marketing", True, "web-form"),
        ("sms", "service", False, "web-form"),
    ]
    assert all(c["changed_by"] == "key:bootstrap-admin" for c in body["consents"])
    assert body["e_delivery"] is True
    assert body["preferred_channels"] == ["email", "portal"]
    assert client.get("/v1/customers/C-1/consents", headers=admin).json() == body
    profile = client.get("/v1/customers/C-1", headers=admin).json()
    assert profile["consents"] == body["consents"]
    assert profile["e_delivery"] is True


def test_withdrawal_is_kept_in_the_history_with_who_when_and_source(
    client: TestClient,
    admin: dict[str, str],
    role_keys: dict[Role, dict[str, str]],
    customer: str,
    database: Database,
) -> None:
    grant = {"consents": [{"channel": "sms", "purpose": "marketing", "granted": True}], "source": "branch"}
    withdraw = {
        "consents": [{"channel": "sms", "purpose": "marketing", "granted": False}],
        "source": "call-centre",
    }
    assert put_consents(client, role_keys[Role.sender], grant).status_code == 200
    assert put_consents(client, role_keys[Role.agent], withdraw).status_code == 200

    me = {
        role: client.get("/v1/me", headers=role_keys[role]).json()["key_id"]
        for role in (Role.sender, Role.agent)
    }
    history = client.get("/v1/customers/C-1/consents/history", headers=role_keys[Role.auditor]).json()
    assert [
        (h["topic"], h["granted"], h["previous"], h["source"], h["changed_by"]) for h in history["items"]
    ] == [
        ("sms:marketing", True, None, "branch", f"key:{me[Role.sender]}"),
        ("sms:marketing", False, True, "call-centre", f"key:{me[Role.agent]}"),
    ]
    assert history["items"][0]["changed_at"] <= history["items"][1]["changed_at"]
    assert count_events(database, "customer.consents_changed") == 2


def test_the_same_answers_again_change_nothing(
    client: TestClient, admin: dict[str, str], customer: str, database: Database
) -> None:
    body = {
        "consents": [{"channel": "email", "purpose": "marketing", "granted": True}],
        "e_delivery": True,
        "preferred_channels": ["email"],
    }
    first = put_consents(client, admin, body)
    events = count_events(database)
    again = put_consents(client, admin, body)
    assert again.json() == first.json()
    assert count_events(database) == events
    history = client.get("/v1/customers/C-1/consents/history", headers=admin).json()["items"]
    assert [h["topic"] for h in history] == ["email:marketing", "e_delivery"]


def test_unlisted_consents_keep_their_answer(
    client: TestClient, admin: dict[str, str], customer: str
) -> None:
    put_consents(client, admin, {"consents": [{"channel": "email", "purpose": "marketing", "granted": True}]})
    put_consents(client, admin, {"consents": [{"channel": "sms", "purpose": "marketing", "granted": False}]})
    consents = client.get("/v1/customers/C-1/consents", headers=admin).json()["consents"]
    assert {(c["channel"], c["granted"]) for c in consents} == {("email", True), ("sms", False)}


def test_history_pages_with_a_cursor(client: TestClient, admin: dict[str, str], customer: str) -> None:
    for granted in (True, False, True):
        put_consents(
            client, admin, {"consents": [{"channel": "email", "purpose": "marketing", "granted": granted}]}
        )
    first = client.get("/v1/customers/C-1/consents/history", params={"limit": 2}, headers=admin).json()
    assert [h["granted"] for h in first["items"]] == [True, False]
    second = client.get(
        "/v1/customers/C-1/consents/history",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=admin,
    ).json()
    assert [h["granted"] for h in second["items"]] == [True]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"consents": [{"channel": "fax", "purpose": "service", "granted": True}]}, "/consents/0/channel"),
        ({"consents": [{"channel": "email", "purpose": "sales", "granted": True}]}, "/consents/0/purpose"),
        ({"consents": [{"channel": "email", "purpose": "service"}]}, "/consents/0/granted"),
        (
            {
                "consents": [
                    {"channel": "email", "purpose": "service", "granted": True},
                    {"channel": "email", "purpose": "service", "granted": False},
                ]
            },
            "/consents",
        ),
        ({"preferred_channels": ["email", "email"]}, "/preferred_channels"),
        ({"e_delivery": "sometimes"}, "/e_delivery"),
        ({"marketing": True}, "/marketing"),
    ],
)
def test_bad_consent_bodies_name_the_field(
    client: TestClient,
    admin: dict[str, str],
    customer: str,
    database: Database,
    body: dict[str, Any],
    path: str,
) -> None:
    events = count_events(database)
    response = put_consents(client, admin, body)
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == [path]
    assert count_events(database) == events


def test_consents_of_an_unknown_customer_are_a_404(client: TestClient, admin: dict[str, str]) -> None:
    response = client.put("/v1/customers/NOPE/consents", json={"e_delivery": True}, headers=admin)
    assert response.status_code == 404
    assert response.json()["type"] == "urn:ccm:problem:not-found"
