"""Who may read the log, and inputs checked at the edge: a bad value is a 422 naming its query parameter."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm.auth.models import Role

NOBODY = "00000000-0000-0000-0000-000000000000"
ENDPOINTS = {
    "/v1/audit/events": 200,
    "/v1/audit/export": 200,
    "/v1/audit/verify": 200,
    f"/v1/audit/communications/{NOBODY}": 404,
    f"/v1/audit/artifacts/{'0' * 64}": 404,
}


def test_only_auditors_and_admins_read_the_log(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]]
) -> None:
    for path, allowed in ENDPOINTS.items():
        for role in Role:
            answer = client.get(path, headers=role_keys[role])
            expected = allowed if role in (Role.auditor, Role.admin) else 403
            assert answer.status_code == expected, (path, role, answer.text)
            if expected == 403:
                assert answer.json()["type"] == "urn:ccm:problem:forbidden"
        assert client.get(path, headers=admin).status_code == allowed  # the bootstrap key
        assert client.get(path).status_code == 401


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"since": "yesterday"}, "/since"),
        ({"until": "2026-13-01T00:00:00Z"}, "/until"),
        ({"since": "0001-01-01T00:30:00+01:00"}, "/since"),  # before year 1 once in UTC
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "/until"),
        ({"version": 2}, "/version"),
        ({"template": "payment_reminder", "version": 0}, "/version"),
        ({"channel": "fax"}, "/channel"),
        ({"customer": "not an id!"}, "/customer"),
        ({"template": "Not-A-Key"}, "/template"),
        ({"status": "DELIVERED;"}, "/status"),
        ({"actor": "key:\x00"}, "/actor"),
        ({"limit": 0}, "/limit"),
        ({"limit": 501}, "/limit"),
        ({"cursor": "garbage"}, "/cursor"),
    ],
)
def test_bad_filters_are_refused_naming_the_parameter(
    client: TestClient, role_keys: dict[Role, dict[str, str]], params: dict[str, Any], parameter: str
) -> None:
    auditor = role_keys[Role.auditor]
    paths = (
        ["/v1/audit/events"]
        if parameter in ("/limit", "/cursor")
        else ["/v1/audit/events", "/v1/audit/export"]
    )
    for path in paths:
        answer = client.get(path, params=params, headers=auditor)
        assert answer.status_code == 422, (path, params, answer.text)
        body = answer.json()
        assert answer.headers["content-type"] == "application/problem+json"
        assert body["type"] == "urn:ccm:problem:validation-error"
        assert [(e["in"], e["path"]) for e in body["errors"]] == [("query", parameter)], body


def test_a_communication_id_and_an_artifact_hash_are_checked(
    client: TestClient, role_keys: dict[Role, dict[str, str]]
) -> None:
    auditor = role_keys[Role.auditor]
    assert client.get("/v1/audit/communications/short", headers=auditor).status_code == 422
    answer = client.get("/v1/audit/artifacts/ABCDEF", headers=auditor)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["in"] == "path"
