"""Every error is problem JSON with a request id; nothing internal leaks to the client."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ccm import migrations


def test_unknown_route_is_a_404_problem(client: TestClient, admin: dict[str, str]) -> None:
    # Without a key, anything under /v1/ is a 401: routes cannot be probed anonymously.
    assert client.get("/v1/nothing-here").status_code == 401
    response = client.get("/v1/nothing-here", headers=admin)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:ccm:problem:not-found"
    assert body["status"] == 404
    assert body["instance"] == "/v1/nothing-here"
    assert body["request_id"] == response.headers["x-request-id"]


def test_wrong_method_is_a_405_problem_with_allow(client: TestClient) -> None:
    response = client.delete("/health")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["type"] == "urn:ccm:problem:method-not-allowed"


def test_unexpected_error_is_a_500_problem_without_internals(app: FastAPI, client: TestClient) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret connection string postgres://user:hunter2@db")

    response = client.get("/boom", headers={"X-Request-ID": "trace-abc.123"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "trace-abc.123"
    body = response.json()
    assert body["type"] == "urn:ccm:problem:internal-error"
    assert body["request_id"] == "trace-abc.123"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text


def test_request_id_is_taken_when_sane_and_replaced_when_not(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces"
    assert len(replaced) == 32
    first = client.get("/health").headers["x-request-id"]
    assert first != client.get("/health").headers["x-request-id"]


def test_ready_reports_the_schema(client: TestClient, backend: str) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": backend, "schema": migrations.head_revision()}
