"""API keys: shown once, stored hashed, revocable, every use attributed."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import select

from ccm.app import create_app
from ccm.audit.models import AuditEvent
from ccm.auth.models import ApiKey
from ccm.config import Settings
from ccm.db import Database
from tests.conftest import ADMIN_KEY, bearer


def test_created_key_is_shown_once_and_works(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    created = client.post("/v1/keys", json={"name": "billing system", "role": "sender"}, headers=admin)
    assert created.status_code == 201
    body = created.json()
    key = body["key"]
    assert key.startswith("ccm_")
    assert len(key) > 40
    assert body["role"] == "sender"
    assert key.startswith(body["prefix"])

    me = client.get("/v1/me", headers=bearer(key))
    assert me.json() == {
        "key_id": body["id"],
        "name": "billing system",
        "person": "billing system",
        "role": "sender",
    }

    listing = client.get("/v1/keys", headers=admin).json()["items"]
    assert [item["id"] for item in listing] == [body["id"]]
    assert "key" not in listing[0]
    assert key not in str(listing)

    with database.read() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (stored.key_hash, stored.prefix)


def test_revoked_key_stops_working_and_stays_listed(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    body = client.post("/v1/keys", json={"name": "temp", "role": "auditor"}, headers=admin).json()
    assert client.get("/v1/me", headers=bearer(body["key"])).status_code == 200

    revoked = client.delete(f"/v1/keys/{body['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_by"] == "key:bootstrap-admin"
    assert client.get("/v1/me", headers=bearer(body["key"])).status_code == 401

    assert client.get("/v1/keys", headers=admin).json()["items"] == []
    everything = client.get("/v1/keys", params={"include_revoked": True}, headers=admin).json()["items"]
    assert [item["id"] for item in everything] == [body["id"]]

    again = client.delete(f"/v1/keys/{body['id']}", headers=admin)
    assert again.status_code == 200  # a retried DELETE gets the same answer
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert client.delete("/v1/keys/no-such-key", headers=admin).status_code == 404

    with database.read() as session:
        events = session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.subject_id)).all()
    assert [tuple(e) for e in events] == [
        ("key.created", "key:bootstrap-admin", body["id"]),
        ("key.revoked", "key:bootstrap-admin", body["id"]),
    ]


def test_key_body_is_validated(client: TestClient, admin: dict[str, str]) -> None:
    response = client.post("/v1/keys", json={"name": "  ", "role": "superuser"}, headers=admin)
    assert response.status_code == 422
    assert {e["path"] for e in response.json()["errors"]} == {"/name", "/role"}


def test_actions_are_attributed_to_the_key_that_made_them(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    sender = client.post("/v1/keys", json={"name": "crm", "role": "sender"}, headers=admin).json()
    client.put("/v1/customers/C-9", json={"name": "Zoe"}, headers=bearer(sender["key"]))
    with database.read() as session:
        actor = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "customer.created")).one()
    assert actor == f"key:{sender['id']}"


def test_bootstrap_key_works_only_while_configured(settings: Settings, database: Database) -> None:
    with TestClient(create_app(settings, database=database)) as configured:
        assert configured.get("/v1/me", headers=bearer(ADMIN_KEY)).json()["role"] == "admin"
        assert configured.get("/v1/me", headers={"Authorization": "Bearer "}).status_code == 401
    unset = settings.model_copy(update={"admin_api_key": None})
    with TestClient(create_app(unset, database=database)) as unconfigured:
        assert unconfigured.get("/v1/me", headers=bearer(ADMIN_KEY)).status_code == 401
