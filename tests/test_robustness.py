"""Edges a demanding integrator or an attacker reaches: odd input, oversized bodies, races, and logs."""

from __future__ import annotations

import json
import logging
import threading

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ccm.app import create_app
from ccm.config import Settings
from ccm.customers import service as customers
from ccm.customers.schemas import CustomerIn
from ccm.db import Database
from ccm.pagination import encode_cursor
from tests.conftest import count_events


def test_no_credentials_is_401_before_the_body_is_parsed(client: TestClient) -> None:
    response = client.put(
        "/v1/customers/C-1", content=b'{"broken', headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json()["type"] == "urn:ccm:problem:unauthorized"


def test_oversized_body_is_413_before_it_is_read(client: TestClient, admin: dict[str, str]) -> None:
    body = json.dumps({"name": "x", "attributes": {"blob": "y" * (1024 * 1024)}})
    response = client.put(
        "/v1/customers/C-1", content=body, headers={**admin, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["type"] == "urn:ccm:problem:body-too-large"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "Ann\x00Baker"}, "/name"),
        ({"name": "Ann", "attributes": {"note": "a\x00b"}}, "/attributes"),
    ],
)
def test_nul_characters_are_refused_on_every_backend(
    client: TestClient, admin: dict[str, str], body: dict[str, object], path: str
) -> None:
    response = client.put("/v1/customers/C-1", json=body, headers=admin)
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == [path]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(client: TestClient, admin: dict[str, str], number: str) -> None:
    raw = '{"name": "Ann", "attributes": {"score": NUMBER}}'.replace("NUMBER", number)
    response = client.put(
        "/v1/customers/C-1", content=raw, headers={**admin, "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "/attributes"


def test_a_change_of_type_alone_is_a_change(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    client.put("/v1/customers/C-1", json={"name": "Ann", "attributes": {"vip": True}}, headers=admin)
    changed = client.put("/v1/customers/C-1", json={"name": "Ann", "attributes": {"vip": 1}}, headers=admin)
    assert changed.json()["attributes"] == {"vip": 1}
    assert count_events(database, "customer.updated") == 1


@pytest.mark.parametrize(
    "cursor",
    [
        encode_cursor("consent-history", 5),  # another endpoint's cursor
        "eyJrIjoiY3VzdG9tZXJzIiwiYWZ0ZXIiOiJhYmMifQ",  # {"k":"customers","after":"abc"}
        "eyJrIjoiY3VzdG9tZXJzIiwiYWZ0ZXIiOm51bGx9",  # {"k":"customers","after":null}
        "eyJrIjoiY3VzdG9tZXJzIiwiYWZ0ZXIiOjFlMzB9",  # {"k":"customers","after":1e30}
        "eyJrIjoiY3VzdG9tZXJzIiwiYWZ0ZXIiOi0xfQ",  # {"k":"customers","after":-1}
    ],
)
def test_foreign_or_forged_cursors_are_422(client: TestClient, admin: dict[str, str], cursor: str) -> None:
    response = client.get("/v1/customers", params={"cursor": cursor}, headers=admin)
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "/cursor"


def test_email_filter_ignores_case(client: TestClient, admin: dict[str, str]) -> None:
    client.put("/v1/customers/C-1", json={"name": "Bob", "email": "Bob@Example.com"}, headers=admin)
    for query in ("bob@example.com", "BOB@EXAMPLE.COM", "Bob@example.com"):
        items = client.get("/v1/customers", params={"email": query}, headers=admin).json()["items"]
        assert [item["external_id"] for item in items] == ["C-1"], query


def test_ready_is_503_until_the_schema_is_migrated(empty_database_url: str, tmp_path: object) -> None:
    settings = Settings(database_url=empty_database_url)
    database = Database(settings.resolved_database_url)
    try:
        with TestClient(create_app(settings, database=database)) as client:
            response = client.get("/ready")
    finally:
        database.dispose()
    assert response.status_code == 503
    assert response.json()["type"] == "urn:ccm:problem:not-ready"
    assert "ccm db upgrade" in response.json()["detail"]


def test_log_lines_cannot_be_forged_through_the_path(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ccm.requests"):
        client.get("/x%0AGET%20/v1/keys%20200%20key=bootstrap-admin")
    lines = [r.getMessage() for r in caplog.records if r.name == "ccm.requests"]
    assert lines
    assert all("\n" not in line for line in lines)
    assert "%0A" in lines[-1]


def test_bodies_and_database_errors_stay_out_of_logs(
    app: FastAPI,
    client: TestClient,
    admin: dict[str, str],
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Zanzibar-7731-private-note"
    with caplog.at_level(logging.DEBUG):
        client.put("/v1/customers/C-1", json={"name": "Ann", "attributes": {"note": secret}}, headers=admin)
    assert secret not in caplog.text

    # A failing statement: SQLAlchemy hides its parameters, but PostgreSQL's own message quotes the row.
    with pytest.raises(DBAPIError) as raised, database.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO customers (id, external_id, name) VALUES (1, :value, NULL)"), {"value": secret}
        )
    assert "[SQL parameters hidden" in str(raised.value)

    @app.get("/fails")
    def fails() -> None:
        raise raised.value

    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        response = client.get("/fails")
    assert response.status_code == 500
    assert "unhandled error" in caplog.text
    assert secret not in caplog.text
    assert secret not in response.text


# Row-lock interleavings that only PostgreSQL has: SQLite serialises writers, so they cannot happen there.
postgres_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@postgres_only
def test_racing_creates_of_one_customer_end_as_create_then_update(database: Database) -> None:
    """Two requests both find no customer and both insert: the second must update, not fail."""
    first = CustomerIn(name="First Writer")
    second = CustomerIn(name="Second Writer")
    outcome: list[customers.UpsertOutcome] = []
    with database.transaction() as session:
        customers.upsert_customer(session, external_id="RACE", profile=first, actor="a")

        def racer() -> None:
            with database.transaction() as other:
                outcome.append(
                    customers.upsert_customer(other, external_id="RACE", profile=second, actor="b")[1]
                )

        thread = threading.Thread(target=racer)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # blocked on our uncommitted insert of the same external_id
    thread.join(timeout=10)
    assert outcome == [customers.UpsertOutcome.updated]
    with database.read() as session:
        assert customers.get_customer(session, external_id="RACE").name == "Second Writer"
    assert count_events(database, "customer.created") == 1
    assert count_events(database, "customer.updated") == 1


@pytest.fixture
def deadlock_error(database: Database) -> DBAPIError:
    """A real deadlock between two PostgreSQL transactions, as SQLAlchemy raises it."""
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE deadlock_demo (id int primary key)"))
        connection.execute(text("INSERT INTO deadlock_demo VALUES (1), (2)"))
    barrier = threading.Barrier(2)
    errors: list[DBAPIError] = []

    def lock(first: int, second: int) -> None:
        try:
            with database.engine.begin() as connection:
                connection.execute(
                    text("SELECT 1 FROM deadlock_demo WHERE id = :id FOR UPDATE"), {"id": first}
                )
                barrier.wait()
                connection.execute(
                    text("SELECT 1 FROM deadlock_demo WHERE id = :id FOR UPDATE"), {"id": second}
                )
        except DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 1
    assert isinstance(errors[0].orig, psycopg.errors.DeadlockDetected)
    return errors[0]


@postgres_only
def test_a_deadlock_is_a_503_to_retry(app: FastAPI, client: TestClient, deadlock_error: DBAPIError) -> None:
    @app.get("/deadlock")
    def collide() -> None:
        raise deadlock_error

    response = client.get("/deadlock")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "urn:ccm:problem:busy"
