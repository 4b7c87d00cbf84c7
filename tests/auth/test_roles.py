"""Every endpoint x every role: no key is 401, the wrong role is 403, the right role gets through.

ROLES is the access policy written out by hand. A route the app serves that is missing here fails the test,
so a new endpoint cannot ship without someone deciding who may call it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute, Route

from ccm.auth.models import Role

ALL = frozenset(Role)
READERS = frozenset({Role.admin, Role.sender, Role.agent, Role.auditor})

# Public routes, and what an anonymous request gets (the unsubscribe links are signed: a made-up one is 404).
PUBLIC = {
    ("GET", "/health"): 200,
    ("GET", "/ready"): 200,
    ("GET", "/docs"): 200,
    ("GET", "/docs/oauth2-redirect"): 200,
    ("GET", "/openapi.json"): 200,
    ("GET", "/unsubscribe/{token}"): 404,
    ("POST", "/unsubscribe/{token}"): 404,
    # Twilio's webhooks are checked by their signature instead: unsigned, they are refused.
    ("POST", "/webhooks/twilio/status"): 403,
    ("POST", "/webhooks/twilio/inbound"): 403,
    # The portal's pages are reached through a customer's signed link; a made-up one is not found.
    ("GET", "/portal/{token}"): 404,
    ("GET", "/portal/{token}/messages/{message_id}"): 404,
    ("GET", "/portal/{token}/messages/{message_id}/documents/{document_id}"): 404,
}

AUTHORS = frozenset({Role.admin, Role.author})
APPROVERS = frozenset({Role.admin, Role.approver})
REVIEWERS = frozenset({*AUTHORS, *APPROVERS, Role.auditor})
PRINT_OPERATORS = frozenset({Role.admin, Role.sender})
PRINT_READERS = frozenset({*PRINT_OPERATORS, Role.auditor})

# route -> (roles let through, the status those roles get for the request made below)
ROLES: dict[tuple[str, str], tuple[frozenset[Role], int]] = {
    ("POST", "/v1/keys"): (frozenset({Role.admin}), 201),
    ("GET", "/v1/keys"): (frozenset({Role.admin}), 200),
    ("DELETE", "/v1/keys/{key_id}"): (frozenset({Role.admin}), 404),  # the key id below does not exist
    ("GET", "/v1/me"): (ALL, 200),
    ("PUT", "/v1/customers/{external_id}"): (frozenset({Role.admin, Role.sender}), 200),
    ("GET", "/v1/customers/{external_id}"): (READERS, 200),
    ("GET", "/v1/customers"): (READERS, 200),
    ("PUT", "/v1/customers/{external_id}/consents"): (frozenset({Role.admin, Role.sender, Role.agent}), 200),
    ("GET", "/v1/customers/{external_id}/consents"): (READERS, 200),
    ("GET", "/v1/customers/{external_id}/consents/history"): (READERS, 200),
    ("POST", "/v1/customers/{external_id}/portal-link"): (
        frozenset({Role.admin, Role.sender, Role.agent}),
        200,
    ),
    ("GET", "/v1/audit/verify"): (frozenset({Role.admin, Role.auditor}), 200),
    ("GET", "/v1/audit/events"): (frozenset({Role.admin, Role.auditor}), 200),
    ("GET", "/v1/audit/export"): (frozenset({Role.admin, Role.auditor}), 200),
    # No communication has the id below, and no row references the all-zero hash.
    ("GET", "/v1/audit/communications/{communication_id}"): (frozenset({Role.admin, Role.auditor}), 404),
    ("GET", "/v1/audit/artifacts/{sha256}"): (frozenset({Role.admin, Role.auditor}), 404),
    ("POST", "/v1/templates"): (AUTHORS, 201),
    ("GET", "/v1/templates"): (ALL, 200),
    ("GET", "/v1/templates/{key}"): (ALL, 200),
    ("PATCH", "/v1/templates/{key}"): (AUTHORS, 200),
    ("POST", "/v1/templates/{key}/versions"): (AUTHORS, 201),
    ("GET", "/v1/templates/{key}/versions/{number}"): (ALL, 200),
    ("PATCH", "/v1/templates/{key}/versions/{number}"): (AUTHORS, 200),
    ("POST", "/v1/templates/{key}/versions/{number}/submit"): (AUTHORS, 200),
    ("POST", "/v1/templates/{key}/versions/{number}/approve"): (APPROVERS, 200),
    ("POST", "/v1/templates/{key}/versions/{number}/reject"): (APPROVERS, 200),
    ("POST", "/v1/templates/{key}/versions/{number}/publish"): (APPROVERS, 200),
    ("GET", "/v1/templates/{key}/versions/{number}/diff"): (REVIEWERS, 200),
    ("GET", "/v1/templates/{key}/usage"): (REVIEWERS, 200),
    ("POST", "/v1/templates/{key}/preview"): (frozenset({*AUTHORS, *APPROVERS}), 200),
    # The keys below name communication templates, not workflows: 404 for those let through.
    ("GET", "/v1/workflows"): (ALL, 200),
    ("POST", "/v1/workflows"): (AUTHORS, 201),
    ("GET", "/v1/workflows/{key}"): (ALL, 404),
    ("POST", "/v1/workflows/{key}/versions"): (AUTHORS, 404),
    ("GET", "/v1/workflows/{key}/versions/{number}"): (ALL, 404),
    ("POST", "/v1/workflows/{key}/versions/{number}/submit"): (AUTHORS, 404),
    ("POST", "/v1/workflows/{key}/versions/{number}/approve"): (APPROVERS, 404),
    ("POST", "/v1/workflows/{key}/versions/{number}/reject"): (APPROVERS, 404),
    ("POST", "/v1/workflows/{key}/versions/{number}/publish"): (APPROVERS, 404),
    # No task has the id below (404).
    ("GET", "/v1/reviews"): (frozenset({Role.admin, Role.agent, Role.auditor}), 200),
    ("GET", "/v1/reviews/{task_id}"): (frozenset({Role.admin, Role.agent, Role.auditor}), 404),
    ("POST", "/v1/reviews/{task_id}/claim"): (frozenset({Role.admin, Role.agent}), 404),
    ("POST", "/v1/reviews/{task_id}/approve"): (frozenset({Role.admin, Role.agent}), 404),
    ("POST", "/v1/reviews/{task_id}/reject"): (frozenset({Role.admin, Role.agent}), 404),
    ("POST", "/v1/reviews/{task_id}/reassign"): (frozenset({Role.admin, Role.agent}), 404),
    ("POST", "/v1/reviews/{task_id}/outcome"): (frozenset({Role.admin, Role.agent}), 404),
    # The communication id below does not exist (404); a trigger with no body is refused (422).
    ("POST", "/v1/communications"): (frozenset({Role.admin, Role.sender}), 422),
    ("GET", "/v1/communications"): (READERS, 200),
    ("GET", "/v1/communications/{communication_id}"): (READERS, 404),
    ("POST", "/v1/communications/{communication_id}/cancel"): (frozenset({Role.admin, Role.sender}), 404),
    ("POST", "/v1/batches"): (frozenset({Role.admin, Role.sender}), 415),  # the test sends JSON, not a file
    ("GET", "/v1/batches/{batch_id}"): (READERS, 404),
    ("POST", "/v1/webhooks"): (frozenset({Role.admin}), 422),
    ("GET", "/v1/webhooks"): (frozenset({Role.admin}), 200),
    ("DELETE", "/v1/webhooks/{webhook_id}"): (frozenset({Role.admin}), 404),
    # No letter waits for print here (409), and the batch id below does not exist (404).
    ("POST", "/v1/print-batches"): (PRINT_OPERATORS, 409),
    ("GET", "/v1/print-batches"): (PRINT_READERS, 200),
    ("GET", "/v1/print-batches/{batch_id}"): (PRINT_READERS, 404),
    ("GET", "/v1/print-batches/{batch_id}/pdf"): (PRINT_READERS, 404),
    ("GET", "/v1/print-batches/{batch_id}/manifest"): (PRINT_READERS, 404),
    ("POST", "/v1/print-batches/{batch_id}/handed"): (PRINT_OPERATORS, 404),
    ("POST", "/v1/print-batches/{batch_id}/confirmed"): (PRINT_OPERATORS, 404),
}

# Each role works on a template of its own, whose versions are in the states the calls need:
# 1 a draft (edit, submit), 2 and 3 in review (approve, reject), 4 approved (publish, preview).
VERSION_FOR = {"submit": 1, "approve": 2, "reject": 3, "publish": 4, "diff": 2}
SMS = {"parts": {"sms": {"body": "Hello {{ customer.name }}"}}}


def body_for(method: str, path: str, role: Role) -> dict[str, Any] | None:
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/keys"): {"name": "made in the role test", "role": "auditor"},
        ("PUT", "/v1/customers/{external_id}"): {"name": "Role Test"},
        ("PUT", "/v1/customers/{external_id}/consents"): {
            "consents": [{"channel": "email", "purpose": "marketing", "granted": True}]
        },
        ("POST", "/v1/templates"): {"key": f"made_by_{role.value}", "name": "Role test"},
        ("PATCH", "/v1/templates/{key}"): {"description": f"edited by {role.value}"},
        ("POST", "/v1/templates/{key}/versions"): {},
        ("PATCH", "/v1/templates/{key}/versions/{number}"): {"notes": f"edited by {role.value}"},
        ("POST", "/v1/templates/{key}/versions/{number}/reject"): {"reason": "not clear enough"},
        ("POST", "/v1/templates/{key}/preview"): {"version": 4},
        ("POST", "/v1/workflows"): {"key": f"workflow_by_{role.value}", "name": "Role test"},
        ("POST", "/v1/workflows/{key}/versions"): {"default": {"then": "automated"}},
        ("POST", "/v1/workflows/{key}/versions/{number}/reject"): {"reason": "not clear enough"},
        ("POST", "/v1/reviews/{task_id}/reject"): {"reason": "not clear enough"},
        ("POST", "/v1/reviews/{task_id}/reassign"): {"release": True},
        ("POST", "/v1/reviews/{task_id}/outcome"): {"outcome": "reached"},
    }
    return bodies.get((method, path))


def url_for(path: str, role: Role) -> str:
    verb = path.rsplit("/", 1)[-1]
    values = {
        "external_id": "CUST-ROLES",
        "key_id": "00000000-0000-0000-0000-000000000000",
        "batch_id": "00000000-0000-0000-0000-000000000000",
        "communication_id": "00000000-0000-0000-0000-000000000000",
        "task_id": "00000000-0000-0000-0000-000000000000",
        "webhook_id": "00000000-0000-0000-0000-000000000000",
        "sha256": "0" * 64,
        "key": f"roles_{role.value}",
        "number": VERSION_FOR.get(verb, 1),
    }
    return path.format(**values)


def prepare_templates(client: TestClient, author: dict[str, str], approver: dict[str, str]) -> None:
    for role in Role:
        key = f"roles_{role.value}"
        assert client.post("/v1/templates", json={"key": key, "name": key}, headers=author).status_code == 201
        for number in (1, 2, 3, 4):
            assert client.post(f"/v1/templates/{key}/versions", json=SMS, headers=author).status_code == 201
            if number > 1:
                submitted = client.post(f"/v1/templates/{key}/versions/{number}/submit", headers=author)
                assert submitted.status_code == 200
        approved = client.post(f"/v1/templates/{key}/versions/4/approve", headers=approver)
        assert approved.status_code == 200


def _walk(routes: Sequence[BaseRoute]) -> Iterator[tuple[str, str]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers unflattened
        if included is not None:
            yield from _walk(included.routes)
        elif isinstance(route, APIRoute | Route):
            for method in route.methods or ():
                if method != "HEAD":
                    yield (method, route.path)


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    routes = set(_walk(app.routes))
    # The walk must see at least everything the OpenAPI document lists, or it is not walking what is served.
    documented = {(m.upper(), path) for path, item in app.openapi()["paths"].items() for m in item}
    assert documented <= routes
    return routes


def call(client: TestClient, method: str, path: str, role: Role, headers: dict[str, str]) -> int:
    return client.request(
        method, url_for(path, role), json=body_for(method, path, role), headers=headers
    ).status_code


def test_every_served_route_has_a_declared_policy(app: FastAPI) -> None:
    assert served_routes(app) == set(PUBLIC) | set(ROLES)


@pytest.mark.parametrize("route", sorted(ROLES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_needs_a_key(client: TestClient, route: tuple[str, str]) -> None:
    method, path = route
    for headers in (
        {},
        {"Authorization": "Bearer ccm_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ):
        url = url_for(path, Role.admin)
        response = client.request(method, url, json=body_for(method, path, Role.admin), headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["type"] == "urn:ccm:problem:unauthorized"


def test_every_route_for_every_role(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]]
) -> None:
    assert (
        client.put("/v1/customers/CUST-ROLES", json={"name": "Role Test"}, headers=admin).status_code == 201
    )
    prepare_templates(client, role_keys[Role.author], role_keys[Role.approver])
    for (method, path), (allowed, expected) in sorted(ROLES.items()):
        for role in Role:
            status = call(client, method, path, role, role_keys[role])
            assert status == (expected if role in allowed else 403), (method, path, role, status)


@pytest.mark.parametrize("route", sorted(PUBLIC), ids=lambda r: f"{r[0]} {r[1]}")
def test_public_routes_need_no_key(client: TestClient, route: tuple[str, str]) -> None:
    method, path = route
    url = path.format(token="made-up", message_id="made-up", document_id="made-up")
    assert client.request(method, url).status_code == PUBLIC[route]
