"""Customer profiles through the API: round trip, idempotence, validation, listing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm.db import Database
from tests.conftest import count_events

PROFILE: dict[str, Any] = {
    "name": "Amelia Hartley",
    "email": "Amelia.Hartley@Example.CO.UK",
    "phone": "+44 7911 123456",
    "locale": "en_GB",
    "timezone": "Europe/London",
    "address": {
        "line1": "14 Rosebery Avenue",
        "line2": "Flat 3",
        "city": "London",
        "postal_code": "EC1R 4SX",
        "country": "gb",
    },
    "attributes": {"segment": "retail", "vulnerable": False, "limits": [1, 2.5]},
}


def put(client: TestClient, headers: dict[str, str], external_id: str, body: dict[str, Any]) -> Any:
    return client.put(f"/v1/customers/{external_id}", json=body, headers=headers)


def test_upsert_round_trips_normalised_profile(client: TestClient, admin: dict[str, str]) -> None:
    created = put(client, admin, "CUST-1", PROFILE)
    assert created.status_code == 201, created.text

    fetched = client.get("/v1/customers/CUST-1", headers=admin)
    assert fetched.status_code == 200
    body = fetched.json()
    assert body == created.json()
    assert body["external_id"] == "CUST-1"
    assert body["name"] == "Amelia Hartley"
    assert body["email"] == "Amelia.Hartley@example.co.uk"  # domain lower-cased, local part kept
    assert body["phone"] == "+447911123456"
    assert body["locale"] == "en-GB"
    assert body["timezone"] == "Europe/London"
    assert body["address"] == {
        "line1": "14 Rosebery Avenue",
        "line2": "Flat 3",
        "city": "London",
        "region": None,
        "postal_code": "EC1R 4SX",
        "country": "GB",
    }
    assert body["attributes"] == {"segment": "retail", "vulnerable": False, "limits": [1, 2.5]}
    assert body["consents"] == []
    assert body["e_delivery"] is False


def test_same_body_twice_changes_nothing_and_logs_once(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    first = put(client, admin, "CUST-1", PROFILE)
    assert first.status_code == 201
    events = count_events(database)

    again = put(client, admin, "CUST-1", PROFILE)
    assert again.status_code == 200
    assert again.json() == first.json()  # updated_at too
    assert count_events(database) == events
    assert count_events(database, "customer.created") == 1
    assert count_events(database, "customer.updated") == 0


def test_a_change_is_saved_and_logged_with_what_changed(
    client: TestClient, admin: dict[str, str], database: Database
) -> None:
    put(client, admin, "CUST-1", PROFILE)
    changed = put(client, admin, "CUST-1", {**PROFILE, "email": "amelia@example.org"})
    assert changed.status_code == 200
    assert changed.json()["email"] == "amelia@example.org"
    assert changed.json()["updated_at"] > changed.json()["created_at"]
    with database.read() as session:
        from sqlalchemy import text

        payload = session.execute(
            text("SELECT payload FROM audit_events WHERE action = 'customer.updated'")
        ).scalar_one()
    assert payload == '{"changed":{"email":"amelia@example.org"}}'


def test_put_replaces_the_whole_profile(client: TestClient, admin: dict[str, str]) -> None:
    put(client, admin, "CUST-1", PROFILE)
    replaced = put(client, admin, "CUST-1", {"name": "Amelia Hartley"})
    assert replaced.status_code == 200
    assert replaced.json()["email"] is None
    assert replaced.json()["address"] is None
    assert replaced.json()["attributes"] == {}


@pytest.mark.parametrize(
    ("field", "value", "message_part"),
    [
        ("email", "amelia@", "not a valid email address"),
        ("email", "amelia hartley@example.com", "not a valid email address"),
        ("phone", "07911 123456", "international form"),
        ("phone", "+44 7700 900123", "not a valid phone number"),
        ("locale", "xx-QQ", "not a known locale"),
        ("locale", "english", "not a known locale"),
        ("timezone", "Mars/Olympus_Mons", "not an IANA time zone"),
        ("timezone", "../../etc/passwd", "not an IANA time zone"),
    ],
)
def test_invalid_field_is_named_in_the_422(
    client: TestClient, admin: dict[str, str], database: Database, field: str, value: str, message_part: str
) -> None:
    events = count_events(database)
    response = put(client, admin, "CUST-1", {**PROFILE, field: value})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:ccm:problem:validation-error"
    [error] = problem["errors"]
    assert (error["in"], error["path"], error["type"]) == ("body", f"/{field}", field)
    assert message_part in error["message"]
    assert field in problem["detail"]
    assert client.get("/v1/customers/CUST-1", headers=admin).status_code == 404
    assert count_events(database) == events


def test_nested_and_unknown_fields_are_named(client: TestClient, admin: dict[str, str]) -> None:
    body = {**PROFILE, "address": {**PROFILE["address"], "country": "ZZ"}, "mobile": "+447911123456"}
    del body["name"]
    response = put(client, admin, "CUST-1", body)
    assert response.status_code == 422
    paths = {(e["in"], e["path"]) for e in response.json()["errors"]}
    assert paths == {("body", "/name"), ("body", "/address/country"), ("body", "/mobile")}


def test_bad_external_id_and_bad_json(client: TestClient, admin: dict[str, str]) -> None:
    bad_id = put(client, admin, "has space", PROFILE)
    assert bad_id.status_code == 422
    assert bad_id.json()["errors"][0]["in"] == "path"
    assert bad_id.json()["errors"][0]["path"] == "/external_id"

    bad_json = client.put(
        "/v1/customers/CUST-1",
        content=b'{"name": "x",',
        headers={**admin, "content-type": "application/json"},
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["errors"][0]["message"].startswith("the body is not valid JSON")


def test_oversized_attributes_are_refused(client: TestClient, admin: dict[str, str]) -> None:
    response = put(client, admin, "CUST-1", {**PROFILE, "attributes": {"notes": "x" * 20_000}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "/attributes"


def test_unknown_customer_is_a_404_problem(client: TestClient, admin: dict[str, str]) -> None:
    response = client.get("/v1/customers/NOPE", headers=admin)
    assert response.status_code == 404
    assert response.json()["type"] == "urn:ccm:problem:not-found"
    assert "NOPE" in response.json()["detail"]


def test_list_filters_and_pages_with_a_cursor(client: TestClient, admin: dict[str, str]) -> None:
    people = [
        ("C-1", "Ann Baker", "ann@example.com", "GB"),
        ("C-2", "Bob Carter", "bob@example.com", "CA"),
        ("C-3", "Anna Dale", "anna@example.com", "GB"),
        ("C-4", "Cyd Evans", "cyd@example.com", "GB"),
        ("C-5", "Dee Fox", "dee@example.com", "FR"),
    ]
    for external_id, name, email, country in people:
        address = {"line1": "1 High Street", "city": "Town", "country": country}
        assert (
            put(client, admin, external_id, {"name": name, "email": email, "address": address}).status_code
            == 201
        )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/customers", params=params, headers=admin).json()
        seen += [item["external_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["C-1", "C-2", "C-3", "C-4", "C-5"]
    assert pages == 3

    def ids(**params: Any) -> list[str]:
        response = client.get("/v1/customers", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [item["external_id"] for item in response.json()["items"]]

    assert ids(country="gb") == ["C-1", "C-3", "C-4"]
    assert ids(q="ann") == ["C-1", "C-3"]
    assert ids(email="BOB@EXAMPLE.COM") == ["C-2"]
    assert ids(q="%") == []  # wildcards are literal
    assert ids(country="GB", limit=1) == ["C-1"]


def test_list_rejects_bad_filters_and_cursors(client: TestClient, admin: dict[str, str]) -> None:
    bad_cursor = client.get("/v1/customers", params={"cursor": "not-a-cursor"}, headers=admin)
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["errors"][0] == {
        "in": "query",
        "path": "/cursor",
        "message": "not a cursor this endpoint gave out",
        "type": "invalid",
    }
    bad_limit = client.get("/v1/customers", params={"limit": 0}, headers=admin)
    assert bad_limit.json()["errors"][0]["path"] == "/limit"
    bad_country = client.get("/v1/customers", params={"country": "Narnia"}, headers=admin)
    assert bad_country.json()["errors"][0]["path"] == "/country"


def test_concurrent_creates_of_one_customer_never_fail(client: TestClient, admin: dict[str, str]) -> None:
    def create(_: int) -> int:
        return int(put(client, admin, "CUST-RACE", PROFILE).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(create, range(16)))
    assert statuses.count(201) == 1
    assert statuses.count(200) == 15
