"""GET /v1/audit/events: each filter returns exactly the events it concerns, and paging visits every event of
a listing exactly once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ccm.auth.models import Role
from ccm.channels import Channel
from ccm.db import Database
from tests.audit_log.conftest import Scenario, pages
from tests.audit_log.reference import moment, read_log

FILTERS: list[dict[str, Any]] = [
    {},
    {"customer": "CUST-1001"},
    {"customer": "CUST-1002"},
    {"customer": "CUST-1003"},  # sent nothing: her own events only
    {"template": "payment_reminder"},
    {"template": "payment_reminder", "version": 1},
    {"template": "payment_reminder", "version": 2},
    {"template": "one_time_passcode"},
    {"channel": "email"},
    {"channel": "sms"},
    {"customer": "CUST-1001", "channel": "sms"},
    {"customer": "CUST-1002", "template": "one_time_passcode"},
    {"customer": "CUST-1001", "template": "payment_reminder", "version": 2, "channel": "email"},
    {"status": "sent"},
    {"status": "queued"},
    {"status": "accepted"},
    {"customer": "CUST-1001", "status": "sent"},
    {"action": "delivery.rendered"},
    {"action": "delivery.rendered", "channel": "sms"},
    {"actor": "test:sender"},
    {"actor": "test:sender", "customer": "CUST-1002"},
]
EMPTY: list[dict[str, Any]] = [
    {"customer": "CUST-9999"},
    {"template": "no_such_template"},
    {"template": "payment_reminder", "version": 9},
    {"template": "one_time_passcode", "channel": "email"},
    {"customer": "CUST-1003", "channel": "email"},  # her events are about her, not a channel
    {"customer": "CUST-1003", "template": "payment_reminder"},
    {"status": "read"},
]


def test_each_filter_returns_exactly_the_events_it_concerns(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    auditor = role_keys[Role.auditor]
    log = read_log(database)
    assert pages(client, auditor) == log.events  # every field, payload parsed

    for params in FILTERS:
        expected = log.seqs(**params)
        assert expected, f"the scenario has no event for {params}: the case tests nothing"
        assert [e["seq"] for e in pages(client, auditor, **params)] == expected, params
    for params in EMPTY:
        assert pages(client, auditor, **params) == [], params


def test_what_a_customer_template_version_and_channel_concern(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]]
) -> None:
    """The same expectations written out by hand, so the reference cannot be wrong the same way."""
    auditor = role_keys[Role.auditor]

    def subjects(**params: Any) -> set[tuple[str, str]]:
        return {(e["subject_type"], e["subject_id"]) for e in pages(client, auditor, **params)}

    sms = {
        ("delivery", scenario.delivery("amelia_v1", Channel.sms)),
        ("delivery", scenario.delivery("emile_otp", Channel.sms)),
    }
    assert subjects(channel="sms") == sms
    second = {
        ("communication", scenario.communication("amelia_v2")),
        ("delivery", scenario.delivery("amelia_v2", Channel.email)),
    }
    assert subjects(template="payment_reminder", version=2) == second
    assert subjects(customer="CUST-1001", template="payment_reminder", version=2) == second

    amelia = subjects(customer="CUST-1001")
    assert ("customer", "CUST-1001") in amelia  # her consent change (and her creation, in the demo)
    assert {
        ("communication", scenario.communication("amelia_v1")),
        ("delivery", scenario.delivery("amelia_v1", Channel.email)),
        ("delivery", scenario.delivery("amelia_v1", Channel.sms)),
    } <= amelia
    assert not any(subject in amelia for subject in subjects(customer="CUST-1002"))

    sent = pages(
        client, auditor, customer="CUST-1001", template="payment_reminder", channel="email", status="sent"
    )
    assert [(e["action"], e["subject_id"]) for e in sent] == [
        ("delivery.sent", scenario.delivery("amelia_v1", Channel.email)),
        ("delivery.sent", scenario.delivery("amelia_v2", Channel.email)),
    ]


def test_since_and_until_bound_the_time_in_any_offset(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    auditor = role_keys[Role.auditor]
    log = read_log(database)
    first, last = log.events[len(log.events) // 3], log.events[2 * len(log.events) // 3]
    paris = dt.timezone(dt.timedelta(hours=2))
    since = moment(first["occurred_at"]).astimezone(paris).isoformat()
    until = moment(last["occurred_at"]).astimezone(paris).isoformat()
    assert "+02:00" in since

    within = [e["seq"] for e in pages(client, auditor, since=since, until=until)]
    assert within == log.seqs(since=since, until=until)
    assert within[0] <= first["seq"]  # since is inclusive
    assert last["seq"] not in within  # until is not
    assert [e["seq"] for e in pages(client, auditor, since=since)] == log.seqs(since=since)
    assert [e["seq"] for e in pages(client, auditor, until=until)] == log.seqs(until=until)
    naive = moment(first["occurred_at"]).replace(tzinfo=None).isoformat()  # taken as UTC
    assert [e["seq"] for e in pages(client, auditor, since=naive)] == log.seqs(since=since)
    combined = {"since": since, "customer": "CUST-1001", "channel": "email"}
    assert [e["seq"] for e in pages(client, auditor, **combined)] == log.seqs(**combined)


@pytest.mark.parametrize(
    "params",
    [{}, {"customer": "CUST-1001"}, {"channel": "email"}, {"template": "payment_reminder", "status": "sent"}],
    ids=["everything", "customer", "channel", "template-status"],
)
def test_paging_visits_every_event_exactly_once(
    client: TestClient,
    scenario: Scenario,
    role_keys: dict[Role, dict[str, str]],
    database: Database,
    params: dict[str, Any],
) -> None:
    auditor = role_keys[Role.auditor]
    expected = read_log(database).seqs(**params)
    for limit in (1, 2, 7, 500):
        seqs = [e["seq"] for e in pages(client, auditor, limit=limit, **params)]
        assert seqs == expected, limit
        assert len(set(seqs)) == len(seqs)


def test_a_page_ends_where_the_next_begins(
    client: TestClient, scenario: Scenario, role_keys: dict[Role, dict[str, str]]
) -> None:
    auditor = role_keys[Role.auditor]
    first = client.get("/v1/audit/events", params={"limit": 5}, headers=auditor).json()
    assert [e["seq"] for e in first["items"]] == [1, 2, 3, 4, 5]
    second = client.get(
        "/v1/audit/events", params={"limit": 5, "cursor": first["next_cursor"]}, headers=auditor
    ).json()
    assert [e["seq"] for e in second["items"]] == [6, 7, 8, 9, 10]
    # A cursor is tied to its listing: another endpoint's is refused, naming the parameter.
    customers = client.get("/v1/customers", params={"limit": 1}, headers=auditor).json()["next_cursor"]
    refused = client.get("/v1/audit/events", params={"cursor": customers}, headers=auditor)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["path"] == "/cursor"
