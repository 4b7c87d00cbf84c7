"""The four-eyes lifecycle through the API: draft, review, approval, publication, rollback."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from ccm.app import create_app
from ccm.audit.models import AuditEvent
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine import service
from tests.templates_engine.conftest import Studio

SMS: dict[str, Any] = {
    "parts": {"sms": {"body": "Hi {{ customer.name }}, {{ data.amount|money('GBP') }} is due."}},
    "schema": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}},
    "sample_data": {"amount": 12.5},
}


def status_of(studio: Studio, key: str, number: int) -> str:
    response = studio.client.get(f"/v1/templates/{key}/versions/{number}", headers=studio.author)
    return str(response.json()["status"])


def test_draft_review_approve_publish(studio: Studio, database: Database) -> None:
    studio.create("reminder")
    draft = studio.draft("reminder", SMS)
    assert (draft["number"], draft["status"]) == (1, "draft")

    assert studio.act("reminder", 1, "submit", studio.author).json()["status"] == "in_review"
    approved = studio.act("reminder", 1, "approve", studio.approver).json()
    assert approved["status"] == "approved"
    assert approved["approver"] != approved["author"]
    published = studio.act("reminder", 1, "publish", studio.approver).json()
    assert published["status"] == "published"

    detail = studio.client.get("/v1/templates/reminder", headers=studio.author).json()
    assert detail["published_version"] == 1
    assert detail["channels"] == ["sms"]
    with database.read() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == "reminder")))
    assert actions == [
        "template.created",
        "template.version_created",
        "template.version_submitted",
        "template.version_approved",
        "template.version_published",
    ]


def test_the_author_cannot_approve_their_own_version(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    studio.act("reminder", 1, "submit", studio.author)
    # An author key lacks the approver role (the four-eyes rule itself is tested with an admin below).
    assert studio.act("reminder", 1, "approve", studio.author).status_code == 403
    own = studio.client.post("/v1/templates", json={"key": "own", "name": "own"}, headers=studio.approver)
    assert own.status_code == 403  # approvers do not author


def test_admin_who_wrote_a_version_cannot_approve_it(studio: Studio, admin: dict[str, str]) -> None:
    studio.client.post("/v1/templates", json={"key": "mine", "name": "mine"}, headers=admin)
    studio.client.post("/v1/templates/mine/versions", json=SMS, headers=admin)
    studio.act("mine", 1, "submit", admin)
    refused = studio.act("mine", 1, "approve", admin)
    assert refused.status_code == 403
    assert "four-eyes" in refused.json()["detail"]
    assert studio.act("mine", 1, "approve", studio.approver).status_code == 200


def test_an_editor_of_the_draft_cannot_approve_it_either(studio: Studio, admin: dict[str, str]) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    edited = studio.client.patch("/v1/templates/reminder/versions/1", json={"notes": "tone"}, headers=admin)
    assert edited.status_code == 200
    assert edited.json()["contributors"] == ["key:bootstrap-admin"]
    studio.act("reminder", 1, "submit", studio.author)
    assert studio.act("reminder", 1, "approve", admin).status_code == 403


def test_a_submitted_version_cannot_be_edited(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    studio.act("reminder", 1, "submit", studio.author)
    edit = studio.client.patch(
        "/v1/templates/reminder/versions/1",
        json={"parts": {"sms": {"body": "changed"}}},
        headers=studio.author,
    )
    assert edit.status_code == 409
    assert edit.json()["type"] == "urn:ccm:problem:version-state"
    fetched = studio.client.get("/v1/templates/reminder/versions/1", headers=studio.author).json()
    assert fetched["content"]["parts"]["sms"]["body"] == SMS["parts"]["sms"]["body"]


def test_editing_a_draft_merges_and_records_the_editor(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    patched = studio.client.patch(
        "/v1/templates/reminder/versions/1",
        json={
            "parts": {"email": {"subject": "Due", "html": "<p>{{ data.amount }}</p>"}},
            "notes": "added email",
        },
        headers=studio.other_author,
    ).json()
    assert set(patched["content"]["parts"]) == {"sms", "email"}
    assert patched["content"]["notes"] == "added email"
    assert len(patched["contributors"]) == 1
    removed = studio.client.patch(
        "/v1/templates/reminder/versions/1", json={"parts": {"email": None}}, headers=studio.author
    ).json()
    assert set(removed["content"]["parts"]) == {"sms"}


def test_reject_needs_a_reason_and_ends_the_version(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    studio.act("reminder", 1, "submit", studio.author)
    no_reason = studio.act("reminder", 1, "reject", studio.approver, {"reason": "  "})
    assert no_reason.status_code == 422
    assert no_reason.json()["errors"][0]["path"] == "/reason"
    rejected = studio.act("reminder", 1, "reject", studio.approver, {"reason": "wrong tone"}).json()
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "wrong tone")
    assert studio.act("reminder", 1, "approve", studio.approver).status_code == 409
    assert studio.act("reminder", 1, "publish", studio.approver).status_code == 409
    again = studio.client.post(
        "/v1/templates/reminder/versions", json={"copy_from": 1}, headers=studio.author
    )
    assert again.json()["content"] == rejected["content"]
    assert again.json()["copied_from"] == 1


def test_publishing_an_older_version_is_the_rollback(studio: Studio) -> None:
    studio.create("reminder")
    first = studio.live("reminder", SMS)
    second = studio.live(
        "reminder", {**SMS, "parts": {"sms": {"body": "Version two for {{ customer.name }}"}}}
    )
    assert (status_of(studio, "reminder", first), status_of(studio, "reminder", second)) == (
        "retired",
        "published",
    )
    preview = studio.client.post("/v1/templates/reminder/preview", json={}, headers=studio.author).json()
    assert preview["version"] == second
    assert preview["parts"]["sms"]["body"].startswith("Version two")

    rolled_back = studio.act("reminder", first, "publish", studio.approver)
    assert rolled_back.status_code == 200
    assert (status_of(studio, "reminder", first), status_of(studio, "reminder", second)) == (
        "published",
        "retired",
    )
    preview = studio.client.post("/v1/templates/reminder/preview", json={}, headers=studio.author).json()
    assert preview["version"] == first
    # A retired version stays renderable, for audit.
    old = studio.client.post(
        "/v1/templates/reminder/preview", json={"version": second}, headers=studio.author
    )
    assert old.json()["parts"]["sms"]["body"].startswith("Version two")


def test_a_scheduled_publication_takes_effect_at_its_time(studio: Studio, database: Database) -> None:
    studio.create("reminder")
    studio.live("reminder", SMS)
    number = studio.draft("reminder", SMS | {"notes": "next"})["number"]
    studio.act("reminder", number, "submit", studio.author)
    studio.act("reminder", number, "approve", studio.approver)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).isoformat()
    scheduled = studio.act("reminder", number, "publish", studio.approver, {"effective_from": later}).json()
    assert scheduled["status"] == "scheduled"
    assert studio.client.get("/v1/templates/reminder", headers=studio.author).json()["published_version"] == 1
    # What a send at each time would render with: the old version until the schedule, the new one from it.
    moment = dt.datetime.fromisoformat(later)
    with database.read() as session:
        template = service.get_template(session, key="reminder")
        before = service.live_version(session, template, moment - dt.timedelta(seconds=1))
        after = service.live_version(session, template, moment)
    assert (before and before.number, after and after.number) == (1, number)
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    refused = studio.act("reminder", number, "publish", studio.approver, {"effective_from": past})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["path"] == "/effective_from"


def test_syntax_errors_name_part_and_line(studio: Studio, database: Database) -> None:
    studio.create("reminder")
    body = {"parts": {"email": {"subject": "Hi", "html": "<p>one</p>\n<p>{{ customer.name }</p>"}}}
    response = studio.client.post("/v1/templates/reminder/versions", json=body, headers=studio.author)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["part"], error["line"], error["path"]) == ("email.html", 2, "/parts/email/html")
    assert "line 2" in error["message"]
    detail = studio.client.get("/v1/templates/reminder", headers=studio.author).json()
    assert detail["versions"] == []


def test_undeclared_variables_are_warnings_and_sample_data_must_fit(studio: Studio) -> None:
    studio.create("reminder")
    body = {
        **SMS,
        "parts": {"sms": {"body": "{{ data.amount }} {{ data.due_date }}\n{{ data.account.number }}"}},
    }
    warned = studio.client.post("/v1/templates/reminder/versions", json=body, headers=studio.author)
    assert warned.status_code == 201
    assert [(w["variable"], w["line"]) for w in warned.json()["warnings"]] == [
        ("data.due_date", 1),
        ("data.account.number", 2),
    ]
    bad_sample = {**SMS, "sample_data": {"amount": "a lot"}}
    refused = studio.client.post("/v1/templates/reminder/versions", json=bad_sample, headers=studio.author)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["path"] == "/sample_data/amount"
    bad_schema = {**SMS, "schema": {"type": "banana"}}
    assert (
        studio.client.post("/v1/templates/reminder/versions", json=bad_schema, headers=studio.author)
        .json()["errors"][0]["path"]
        .startswith("/schema")
    )


def test_submit_needs_a_channel_and_published_snippets(studio: Studio) -> None:
    studio.create("footer", kind="snippet")
    studio.draft("footer", {"parts": {"body": "<p>Acme plc</p>"}})
    studio.create("reminder")
    studio.draft("reminder", {})
    empty = studio.act("reminder", 1, "submit", studio.author)
    assert empty.status_code == 422
    uses_footer = {"parts": {"email": {"subject": "x", "html": "{% include 'footer' %}"}}}
    studio.draft("reminder", uses_footer)
    unpublished = studio.act("reminder", 2, "submit", studio.author)
    assert unpublished.status_code == 422
    assert "footer" in unpublished.json()["detail"]
    studio.act("footer", 1, "submit", studio.author)
    studio.act("footer", 1, "approve", studio.approver)
    studio.act("footer", 1, "publish", studio.approver)
    assert studio.act("reminder", 2, "submit", studio.author).status_code == 200


def test_unknown_layouts_and_dynamic_includes_are_refused(studio: Studio) -> None:
    studio.create("reminder")
    for html, message in [
        ("{% extends 'nope' %}", "no layout or snippet named 'nope'"),
        ("{% include data.which %}", "must name a layout or snippet in quotes"),
        ("{% include 'reminder' %}", "cannot use itself"),
    ]:
        body = {"parts": {"email": {"subject": "x", "html": html}}}
        response = studio.client.post("/v1/templates/reminder/versions", json=body, headers=studio.author)
        assert response.status_code == 422, html
        assert message in response.json()["errors"][0]["message"]


def test_diff_shows_what_changed_per_part(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", SMS)
    studio.client.post(
        "/v1/templates/reminder/versions",
        json={"copy_from": 1, "parts": {"sms": {"body": "New wording for {{ customer.name }}"}}},
        headers=studio.author,
    )
    diff = studio.client.get("/v1/templates/reminder/versions/2/diff?against=1", headers=studio.author).json()
    assert [c["part"] for c in diff["changes"]] == ["sms.body"]
    text = diff["changes"][0]["diff"]
    assert "-Hi {{ customer.name }}" in text
    assert "+New wording for {{ customer.name }}" in text
    assert (
        studio.client.get("/v1/templates/reminder/versions/1/diff", headers=studio.author).status_code == 422
    )


def test_snippet_versions_are_pinned_and_usage_lists_them(studio: Studio) -> None:
    studio.create("footer", kind="snippet")
    studio.live("footer", {"parts": {"body": "Footer one"}})
    studio.create("reminder")
    studio.live("reminder", {"parts": {"sms": {"body": "Hi. {% include 'footer' %}"}}})
    studio.live("footer", {"parts": {"body": "Footer two"}})
    # The reminder renders with the footer it was approved with, not the newer one.
    preview = studio.client.post("/v1/templates/reminder/preview", json={}, headers=studio.author).json()
    assert preview["parts"]["sms"]["body"] == "Hi. Footer one"
    usage = studio.client.get("/v1/templates/footer/usage", headers=studio.author).json()["items"]
    assert usage == [{"template": "reminder", "version": 1, "status": "published", "pinned": 1}]
    # A draft renders with the live footer.
    studio.draft("reminder", {"parts": {"sms": {"body": "Hi. {% include 'footer' %}"}}})
    draft_preview = studio.client.post(
        "/v1/templates/reminder/preview", json={"version": 2}, headers=studio.author
    )
    assert draft_preview.json()["parts"]["sms"]["body"] == "Hi. Footer two"


def test_a_restarted_service_compiles_live_versions_before_the_first_send(
    studio: Studio, settings: Settings, database: Database
) -> None:
    studio.create("reminder")
    studio.live("reminder", SMS)
    restarted = create_app(settings, database=database)
    engine = restarted.state.engine
    with TestClient(restarted):
        compiled = [name for name in engine.environment.cache if "reminder@1" in str(name)]
    assert compiled, "the live version's parts were not compiled at start-up"


def test_copying_a_version_does_not_make_it_the_copiers_to_approve(
    studio: Studio, admin: dict[str, str]
) -> None:
    studio.client.post("/v1/templates", json={"key": "mine", "name": "mine"}, headers=admin)
    studio.client.post("/v1/templates/mine/versions", json=SMS, headers=admin)  # written by the admin
    copied = studio.client.post(
        "/v1/templates/mine/versions", json={"copy_from": 1}, headers=studio.author
    ).json()
    assert copied["contributors"] == ["key:bootstrap-admin"]
    studio.act("mine", 2, "submit", studio.author)
    assert studio.act("mine", 2, "approve", admin).status_code == 403


def test_copy_from_takes_a_part_given_in_part(studio: Studio) -> None:
    studio.create("reminder")
    studio.draft("reminder", {"parts": {"email": {"subject": "Old", "html": "<p>{{ customer.name }}</p>"}}})
    response = studio.client.post(
        "/v1/templates/reminder/versions",
        json={"copy_from": 1, "parts": {"email": {"subject": "New"}}},
        headers=studio.author,
    )
    assert response.status_code == 201, response.text
    assert response.json()["content"]["parts"]["email"] == {
        "subject": "New",
        "html": "<p>{{ customer.name }}</p>",
    }


def test_publishing_now_overrides_a_pending_schedule(studio: Studio) -> None:
    studio.create("reminder")
    studio.live("reminder", SMS)
    for note in ("scheduled", "urgent"):
        number = studio.draft("reminder", SMS | {"notes": note})["number"]
        studio.act("reminder", number, "submit", studio.author)
        studio.act("reminder", number, "approve", studio.approver)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert (
        studio.act("reminder", 2, "publish", studio.approver, {"effective_from": later}).json()["status"]
        == "scheduled"
    )
    studio.act("reminder", 3, "publish", studio.approver)
    # The later decision wins: version 2's schedule will not take effect, and says so.
    assert [status_of(studio, "reminder", n) for n in (1, 2, 3)] == ["retired", "approved", "published"]


def test_a_published_templates_category_cannot_change(studio: Studio) -> None:
    studio.create("offer", category="marketing")
    assert (
        studio.client.patch(
            "/v1/templates/offer", json={"category": "service"}, headers=studio.author
        ).status_code
        == 200
    )
    studio.client.patch("/v1/templates/offer", json={"category": "marketing"}, headers=studio.author)
    studio.live("offer", SMS)
    refused = studio.client.patch("/v1/templates/offer", json={"category": "service"}, headers=studio.author)
    assert refused.status_code == 409
    assert studio.client.get("/v1/templates/offer", headers=studio.author).json()["category"] == "marketing"


def test_the_demo_publishes_only_its_own_work(studio: Studio, database: Database) -> None:
    from ccm.templates_engine.service import make_engine
    from ccm.templates_engine.sync import publish_all

    engine = make_engine(database, studio.client.app.state.settings)  # type: ignore[attr-defined]
    studio.create("reminder")
    studio.draft("reminder", SMS)  # a real person's draft
    assert publish_all(database, engine, ["reminder"], author="demo:author", approver="demo:approver") == []
    assert status_of(studio, "reminder", 1) == "draft"


def test_racing_creates_of_one_template_are_one_201_and_409s(studio: Studio) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def create(_: int) -> int:
        body = {"key": "raced", "name": "raced"}
        return int(studio.client.post("/v1/templates", json=body, headers=studio.author).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(create, range(8)))
    assert statuses == [201] + [409] * 7


def test_one_persons_two_keys_are_still_one_pair_of_eyes(studio: Studio, admin: dict[str, str]) -> None:
    def key(name: str, role: str, person: str) -> dict[str, str]:
        body = {"name": name, "role": role, "person": person}
        made = studio.client.post("/v1/keys", json=body, headers=admin).json()
        return {"Authorization": f"Bearer {made['key']}"}

    alice_writes = key("alice writing", "author", "alice@bank.example")
    alice_approves = key("alice approving", "approver", "alice@bank.example")
    bob_approves = key("bob approving", "approver", "bob@bank.example")
    assert studio.client.get("/v1/me", headers=alice_approves).json()["person"] == "alice@bank.example"
    studio.client.post("/v1/templates", json={"key": "note", "name": "note"}, headers=alice_writes)
    studio.client.post("/v1/templates/note/versions", json=SMS, headers=alice_writes)
    studio.act("note", 1, "submit", alice_writes)
    refused = studio.act("note", 1, "approve", alice_approves)
    assert refused.status_code == 403
    assert "four-eyes" in refused.json()["detail"]
    assert studio.act("note", 1, "reject", alice_approves, {"reason": "mine"}).status_code == 403
    assert studio.act("note", 1, "approve", bob_approves).status_code == 200
