"""Workflows: rules saved with four eyes, a bad expression refused at save with its position, the first rule
that matches deciding (else the default), the decision recorded with the communication and in the log, and
the starter workflows synced from templates/workflows/ without duplicates."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from ccm.auth.models import Role
from ccm.cli import DEMO_AUTHOR, app
from ccm.communications.models import WebhookMessage
from ccm.customers.models import Customer
from ccm.db import Database
from ccm.templates_engine import files
from ccm.templates_engine.service import make_engine
from ccm.templates_engine.sync import sync
from ccm.workflows import reviews
from ccm.workflows.models import Task
from tests.channels.smtp_sink import SmtpSink
from tests.communications.conftest import sample
from tests.communications.test_pipeline import trigger, wait_until
from tests.communications.test_pipeline import wait_for as found
from tests.conftest import STARTER_TEMPLATES, count_events

CLAIM = {
    "claim_number": "CLM-1",
    "policy_number": "HOME-1",
    "decision": "approved",
    "amount": 1200.0,
    "currency": "GBP",
    "reason": "Covered in full.",
}


def flag(database: Database, external_id: str, **attributes: Any) -> None:
    with database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == external_id)).one()
        customer.attributes = {**customer.attributes, **attributes}


def test_a_bad_expression_is_refused_at_save_with_its_position(
    client: TestClient, role_keys: dict[Role, dict[str, str]]
) -> None:
    author = role_keys[Role.author]
    created = client.post("/v1/workflows", json={"key": "checks", "name": "Checks"}, headers=author)
    assert created.status_code == 201, created.text
    body = {
        "rules": [
            {"name": "fine", "when": "data.amount > 100", "then": "automated"},
            {"name": "broken", "when": "data.amount >> 100", "then": "review", "queue": "q"},
            {"name": "stranger", "when": "secrets.key", "then": "automated"},
        ],
        "default": {"then": "automated"},
    }
    response = client.post("/v1/workflows/checks/versions", json=body, headers=author)
    assert response.status_code == 422
    errors = {e["path"]: e for e in response.json()["errors"]}
    assert set(errors) == {"/workflow/rules/1/when", "/workflow/rules/2/when"}
    broken = errors["/workflow/rules/1/when"]
    assert broken["column"] == 14  # the second '>'
    assert "rule 'broken'" in broken["message"]
    assert "unknown name 'secrets'" in errors["/workflow/rules/2/when"]["message"]
    # An outcome that does not fit is refused too, with its field.
    wrong = {"rules": [], "default": {"then": "suppress"}}
    response = client.post("/v1/workflows/checks/versions", json=wrong, headers=author)
    assert response.status_code == 422
    assert "suppress needs a reason" in response.text


def test_the_first_matching_rule_decides_and_the_default_catches_the_rest(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database, sink: SmtpSink
) -> None:
    sender = role_keys[Role.sender]
    flag(database, "CUST-1002", vulnerable=True)
    large = trigger(
        client,
        sender,
        template="claim_decision",
        customer="CUST-1001",
        data={**CLAIM, "amount": 25000.0},
        workflow="claims",
    )
    vulnerable = trigger(
        client, sender, template="claim_decision", customer="CUST-1002", data=CLAIM, workflow="claims"
    )
    small = trigger(
        client,
        sender,
        template="claim_decision",
        customer="CUST-1001",
        data=CLAIM,
        workflow="claims",
        reference="small",
    )
    assert {r.status_code for r in (large, vulnerable, small)} == {202}, [large.text, vulnerable.text]

    by_large = found(client, sender, large.json()["id"], {"in_review"})
    assert by_large["status"] == "in_review"
    assert by_large["decision"]["rule"] == "large-claim"
    assert by_large["decision"]["expression"] == "data.amount is defined and data.amount > 10000"
    assert by_large["decision"]["values"] == {"data.amount": 25000.0}
    assert by_large["decision"]["tried"] == [
        {"rule": "vulnerable-and-declined", "matched": False},
        {"rule": "vulnerable-customer", "matched": False},
        {"rule": "large-claim", "matched": True},
    ]
    assert by_large["deliveries"] == []  # nothing goes out before the review

    by_vulnerable = found(client, sender, vulnerable.json()["id"], {"in_review"})
    assert by_vulnerable["decision"]["rule"] == "vulnerable-customer"
    assert by_vulnerable["decision"]["values"] == {"customer.attributes.vulnerable": True}
    assert by_vulnerable["decision"]["outcome"]["approvals"] == 2
    with database.read() as session:
        tasks = {t.communication_id: t for t in session.scalars(select(Task))}
    assert tasks[by_large["id"]].queue == "claims"
    assert tasks[by_vulnerable["id"]].approvals_required == 2
    assert tasks[by_vulnerable["id"]].due_at is not None  # the 4h SLA

    by_default = found(client, sender, small.json()["id"], {"sent", "delivered"})
    assert by_default["decision"]["rule"] is None
    assert by_default["decision"]["default"] is True
    assert by_default["routing"]["mode"] == "all"
    assert sorted(d["channel"] for d in by_default["deliveries"]) == ["email", "print"]
    assert small.json()["id"] not in tasks


def test_the_decision_is_in_the_timeline_and_the_auditors_export(
    client: TestClient, role_keys: dict[Role, dict[str, str]]
) -> None:
    sender, auditor = role_keys[Role.sender], role_keys[Role.auditor]
    response = trigger(
        client,
        sender,
        template="claim_decision",
        customer="CUST-1001",
        data={**CLAIM, "amount": 50000.0},
        workflow="claims",
    )
    communication_id = response.json()["id"]
    answer = found(client, sender, communication_id, {"in_review"})
    assert "communication.decided" in [e["action"] for e in answer["timeline"]]
    export = client.get(
        "/v1/audit/export", params={"format": "jsonl", "action": "communication.decided"}, headers=auditor
    )
    assert export.status_code == 200, export.text
    decided = [json.loads(line) for line in export.text.splitlines() if line]
    mine = [e for e in decided if e["subject_id"] == communication_id]
    assert len(mine) == 1
    payload = json.loads(mine[0]["payload"])  # exported as logged: the exact text that was hashed
    assert payload["rule"] == "large-claim"
    assert payload["values"] == {"data.amount": 50000.0}


def test_a_suppress_rule_stops_the_message_with_its_reason(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender = role_keys[Role.sender]
    flag(database, "CUST-1001", no_marketing=True)
    response = trigger(
        client,
        sender,
        template="marketing_offer",
        customer="CUST-1001",
        data=sample("marketing_offer"),
        workflow="marketing",
    )
    assert response.status_code == 202, response.text
    answer = found(client, sender, response.json()["id"], {"suppressed"})
    assert answer["status"] == "suppressed"
    assert answer["decision"]["outcome"]["reason"] == "the customer asked for no marketing at all"
    assert answer["deliveries"] == []


def test_a_rule_that_cannot_be_decided_refuses_the_message(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    author, approver, sender = role_keys[Role.author], role_keys[Role.approver], role_keys[Role.sender]
    assert (
        client.post("/v1/workflows", json={"key": "strict", "name": "Strict"}, headers=author).status_code
        == 201
    )
    body = {
        "rules": [{"name": "big", "when": "data.limit > 100", "then": "review", "queue": "limits"}],
        "default": {"then": "automated"},
    }
    assert client.post("/v1/workflows/strict/versions", json=body, headers=author).status_code == 201
    assert client.post("/v1/workflows/strict/versions/1/submit", headers=author).status_code == 200
    assert (
        client.post("/v1/workflows/strict/versions/1/approve", headers=author).status_code == 403
    )  # four eyes
    assert client.post("/v1/workflows/strict/versions/1/approve", headers=approver).status_code == 200
    assert client.post("/v1/workflows/strict/versions/1/publish", headers=approver).status_code == 200
    # payment_reminder's data has no `limit`: comparing a missing value is an error, never a quiet "no".
    response = trigger(
        client,
        sender,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        workflow="strict",
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["path"] == "/workflow"
    assert "rule 'big'" in error["message"]
    unknown = trigger(
        client,
        sender,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        workflow="nowhere",
    )
    assert unknown.status_code == 422


def test_a_fallback_chain_skips_what_the_customer_cannot_receive_and_says_so(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender = role_keys[Role.sender]
    with database.transaction() as session:
        customer = session.scalars(select(Customer).where(Customer.external_id == "CUST-1001")).one()
        customer.phone = None
    response = trigger(
        client,
        sender,
        template="payment_reminder",
        customer="CUST-1001",
        data=sample("payment_reminder"),
        workflow="reminders",
    )
    assert response.status_code == 202, response.text
    answer = found(client, sender, response.json()["id"], {"sent", "delivered"})
    assert answer["routing"]["mode"] == "fallback"
    assert answer["routing"]["chain"] == ["email", "print"]
    assert answer["routing"]["suppressed"] == [
        {"channel": "sms", "reason": "the customer has no mobile number"}
    ]
    assert [d["channel"] for d in answer["deliveries"]] == ["email"]


def test_syncing_the_same_workflow_files_twice_creates_nothing(database: Database, settings: Any) -> None:
    engine = make_engine(database, settings)
    first = sync(database, engine, STARTER_TEMPLATES, actor=DEMO_AUTHOR)
    assert not any(key in ("claims", "reminders", "marketing") for key, _ in first.drafts)  # already there
    second = sync(database, engine, STARTER_TEMPLATES, actor=DEMO_AUTHOR)
    assert second.created == []
    assert second.drafts == []
    assert {"claims", "reminders", "marketing"} <= set(second.unchanged)


def test_a_workflow_exports_to_the_file_sync_reads(tmp_path: Path, database_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["templates", "export", "claims", str(tmp_path)], env={"CCM_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    written = tmp_path / "workflows" / "claims.yaml"
    assert (
        files.read_workflow(written).body
        == files.read_workflow(STARTER_TEMPLATES / "workflows" / "claims.yaml").body
    )


# --- the review queue -----------------------------------------------------------------------------------


def new_key(client: TestClient, admin: dict[str, str], role: str, name: str) -> dict[str, str]:
    response = client.post("/v1/keys", json={"name": name, "role": role}, headers=admin)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def held(client: TestClient, sender: dict[str, str], customer: str, amount: float, **extra: Any) -> str:
    response = trigger(
        client,
        sender,
        template="claim_decision",
        customer=customer,
        data={**CLAIM, "amount": amount},
        workflow="claims",
        **extra,
    )
    assert response.status_code == 202, response.text
    assert found(client, sender, response.json()["id"], {"in_review"})["status"] == "in_review"
    return str(response.json()["id"])


def task_of(client: TestClient, agent: dict[str, str], communication_id: str) -> dict[str, Any]:
    page = client.get("/v1/reviews", params={"status": "open", "limit": 500}, headers=agent).json()
    [task] = [t for t in page["items"] if t["communication"] == communication_id]
    return dict(task)


def task_of_any(client: TestClient, agent: dict[str, str], communication_id: str) -> dict[str, Any]:
    page = client.get("/v1/reviews", params={"limit": 500}, headers=agent).json()
    [task] = [t for t in page["items"] if t["communication"] == communication_id]
    return dict(task)


def test_approved_unchanged_the_message_goes_out(
    client: TestClient, role_keys: dict[Role, dict[str, str]], sink: SmtpSink
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    communication_id = held(client, sender, "CUST-1001", 30000.0)
    task = task_of(client, agent, communication_id)
    assert task["queue"] == "claims"
    assert task["rule"] == "large-claim"
    claimed = client.post(f"/v1/reviews/{task['id']}/claim", headers=agent)
    assert claimed.status_code == 200
    assert claimed.json()["status"] == "claimed"
    approved = client.post(f"/v1/reviews/{task['id']}/approve", headers=agent)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    answer = found(client, sender, communication_id, {"sent", "delivered"})
    assert sorted(d["channel"] for d in answer["deliveries"]) == ["email", "print"]
    actions = [e["action"] for e in answer["timeline"]]
    assert actions.index("communication.decided") < actions.index("communication.accepted", 1)


def test_an_edited_region_is_sent_sanitized_and_kept_as_a_diff_while_locked_text_is_refused(
    client: TestClient, role_keys: dict[Role, dict[str, str]], sink: SmtpSink
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    communication_id = held(client, sender, "CUST-1001", 40000.0)
    task = task_of(client, agent, communication_id)
    detail = client.get(f"/v1/reviews/{task['id']}", headers=agent).json()
    assert set(detail["editable_regions"]) == {"opening", "reason"}
    assert "We have made a decision on your claim CLM-1" in detail["rendered"]["email"]["html"]

    locked = client.post(
        f"/v1/reviews/{task['id']}/approve", json={"edits": {"subject": "Good news!"}}, headers=agent
    )
    assert locked.status_code == 422
    assert locked.json()["errors"][0]["path"] == "/edits/subject"

    note = 'I reviewed your claim myself.\n<script>alert(1)</script><a href="javascript:x()">x</a>'
    approved = client.post(
        f"/v1/reviews/{task['id']}/approve", json={"edits": {"opening": note}}, headers=agent
    )
    assert approved.status_code == 200, approved.text
    diff = approved.json()["diffs"]["email.html"]
    assert "+" in diff
    assert "I reviewed your claim myself." in diff
    assert "-" in diff
    assert "We have made a decision on your claim" in diff
    found(client, sender, communication_id, {"sent", "delivered"})
    received = email.message_from_bytes(sink.handler.messages[-1].data, policy=email.policy.default)
    body = received.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "I reviewed your claim myself.<br>" in html  # text, its line breaks kept
    assert "<script" not in html  # escaped: shown as text, never markup
    assert "&lt;script&gt;" in html
    assert '<a href="javascript' not in html
    assert "We have made a decision on your claim" not in html  # the region was replaced...
    assert "Dear " in html  # ...and the locked text around it was not


def test_whoever_triggered_a_message_cannot_review_it(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]]
) -> None:
    communication_id = held(client, admin, "CUST-1001", 60000.0)  # admin may trigger and may review
    task = task_of(client, role_keys[Role.agent], communication_id)
    response = client.post(f"/v1/reviews/{task['id']}/approve", headers=admin)
    assert response.status_code == 403
    assert (
        client.post(f"/v1/reviews/{task['id']}/reject", json={"reason": "x"}, headers=admin).status_code
        == 403
    )


def test_two_approvals_by_two_people_when_the_rule_asks(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender, first = role_keys[Role.sender], role_keys[Role.agent]
    second = new_key(client, admin, "agent", "second reviewer")
    flag(database, "CUST-1002", vulnerable=True)
    communication_id = held(client, sender, "CUST-1002", 500.0)
    task = task_of(client, first, communication_id)
    assert task["approvals_required"] == 2
    one = client.post(f"/v1/reviews/{task['id']}/approve", headers=first)
    assert one.status_code == 200
    assert one.json()["status"] == "open"
    assert len(one.json()["approvals"]) == 1
    again = client.post(f"/v1/reviews/{task['id']}/approve", headers=first)
    assert again.status_code == 409  # the same person twice is still one approval
    same_edits = client.post(f"/v1/reviews/{task['id']}/approve", json={"edits": {}}, headers=first)
    assert same_edits.status_code == 409  # "editing" nothing does not make it a new approval
    assert found(client, sender, communication_id, {"in_review"})["status"] == "in_review"
    two = client.post(f"/v1/reviews/{task['id']}/approve", headers=second)
    assert two.status_code == 200
    assert two.json()["status"] == "approved"
    assert found(client, sender, communication_id, {"sent", "delivered"})["status"] in {"sent", "delivered"}


def test_a_rejected_message_is_cancelled_with_the_reason_and_the_integrator_told(
    client: TestClient, admin: dict[str, str], role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    hook = client.post(
        "/v1/webhooks", json={"url": "https://integrator.example/hooks", "secret": "s" * 32}, headers=admin
    )
    assert hook.status_code == 201, hook.text
    communication_id = held(client, sender, "CUST-1001", 70000.0)
    task = task_of(client, agent, communication_id)
    assert client.post(f"/v1/reviews/{task['id']}/reject", json={}, headers=agent).status_code == 422
    rejected = client.post(
        f"/v1/reviews/{task['id']}/reject", json={"reason": "the amount is wrong"}, headers=agent
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    answer = found(client, sender, communication_id, {"cancelled"})
    assert answer["status"] == "cancelled"
    assert answer["deliveries"] == []
    with database.read() as session:
        bodies = [
            json.loads(m.body)
            for m in session.scalars(
                select(WebhookMessage).where(WebhookMessage.event_type == "communication.cancelled")
            )
        ]
    assert any(
        b["data"]["communication"] == communication_id and b["data"]["reason"] == "the amount is wrong"
        for b in bodies
    )


def test_a_task_past_its_sla_moves_to_the_escalation_queue_once(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    communication_id = held(client, sender, "CUST-1001", 80000.0)
    task = task_of(client, agent, communication_id)
    due = dt.datetime.fromisoformat(task["due_at"])
    with database.transaction() as session:
        assert reviews.escalate_overdue(session, now=due - dt.timedelta(minutes=1)) == 0  # not yet
    with database.transaction() as session:
        assert reviews.escalate_overdue(session, now=due + dt.timedelta(minutes=1)) == 1
    with database.transaction() as session:
        assert reviews.escalate_overdue(session, now=due + dt.timedelta(hours=5)) == 0  # once
    later = held(client, sender, "CUST-1001", 90000.0)
    with database.transaction() as session:
        # Escalated tasks stay open and overdue; they must not crowd out the next one (one task a round).
        assert reviews.escalate_overdue(session, now=due + dt.timedelta(days=3), limit=1) == 1
    assert task_of_any(client, agent, later)["queue"] == "escalations"
    moved = client.get(f"/v1/reviews/{task['id']}", headers=agent).json()
    assert moved["queue"] == "escalations"
    assert moved["escalated_from"] == "claims"
    assert count_events(database, "task.escalated") == 2  # each task once


def test_an_agent_records_the_outcome_and_no_answer_sends_the_follow_up_letter(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    flag(database, "CUST-1002", vulnerable=True)
    declined = {**CLAIM, "decision": "declined", "amount": 0.0}
    response = trigger(
        client, sender, template="claim_decision", customer="CUST-1002", data=declined, workflow="claims"
    )
    assert response.status_code == 202, response.text
    communication_id = response.json()["id"]
    answer = found(client, sender, communication_id, {"with_agent"})
    assert answer["status"] == "with_agent"
    assert answer["decision"]["rule"] == "vulnerable-and-declined"
    page = client.get("/v1/reviews", params={"kind": "agent", "queue": "claims-calls"}, headers=agent).json()
    [task] = [t for t in page["items"] if t["communication"] == communication_id]
    detail = client.get(f"/v1/reviews/{task['id']}", headers=agent).json()
    assert detail["script"] is not None
    assert "cannot pay this claim" in detail["script"]  # the message, as text for the call
    assert client.post(f"/v1/reviews/{task['id']}/approve", headers=agent).status_code == 409  # not a review
    bad = client.post(f"/v1/reviews/{task['id']}/outcome", json={"outcome": "maybe"}, headers=agent)
    assert bad.status_code == 422
    done = client.post(
        f"/v1/reviews/{task['id']}/outcome",
        json={"outcome": "no_answer", "notes": "rang twice, 10:05 and 14:30"},
        headers=agent,
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "done"
    # The follow-up letter is made, then waits for its print batch (nothing is sent till one is made).
    answer = wait_until(
        client,
        sender,
        communication_id,
        lambda r: any(d["channel"] == "print" and d["status"] == "queued" for d in r["deliveries"]),
    )
    by_channel = {d["channel"]: d for d in answer["deliveries"]}
    assert by_channel["agent"]["status"] == "undelivered"
    assert by_channel["agent"]["details"]["outcome"] == "no_answer"
    assert by_channel["agent"]["details"]["notes"] == "rang twice, 10:05 and 14:30"
    assert by_channel["print"]["status"] == "queued"  # the follow-up letter, waiting for its print batch
    assert answer["decision"]["follow_up"] == {
        "after": "no_answer",
        "routing": {"mode": "all", "channels": ["print"]},
    }


def test_an_agent_reaching_the_customer_delivers_it_with_nothing_more_sent(
    client: TestClient, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    sender, agent = role_keys[Role.sender], role_keys[Role.agent]
    flag(database, "CUST-1002", vulnerable=True)
    declined = {**CLAIM, "decision": "declined", "amount": 0.0}
    response = trigger(
        client, sender, template="claim_decision", customer="CUST-1002", data=declined, workflow="claims"
    )
    communication_id = response.json()["id"]
    found(client, sender, communication_id, {"with_agent"})
    page = client.get("/v1/reviews", params={"kind": "agent"}, headers=agent).json()
    [task] = [t for t in page["items"] if t["communication"] == communication_id]
    done = client.post(f"/v1/reviews/{task['id']}/outcome", json={"outcome": "reached"}, headers=agent)
    assert done.status_code == 200
    answer = found(client, sender, communication_id, {"delivered"})
    assert answer["status"] == "delivered"
    assert [d["channel"] for d in answer["deliveries"]] == ["agent"]


def test_a_layout_cannot_have_editable_regions(
    client: TestClient, role_keys: dict[Role, dict[str, str]]
) -> None:
    author = role_keys[Role.author]
    made = client.post(
        "/v1/templates", json={"key": "shared_footer", "name": "F", "kind": "snippet"}, headers=author
    )
    assert made.status_code == 201
    body = {"parts": {"body": '{% editable "legal" %}Regulated by the FCA.{% endeditable %}'}}
    response = client.post("/v1/templates/shared_footer/versions", json=body, headers=author)
    assert response.status_code == 422
    assert "only a communication's own parts may have editable regions" in response.text


def test_an_edit_cannot_leave_the_attribute_it_sits_in() -> None:
    from ccm.workflows.rules import _ENVIRONMENT

    source = '<a href="https://bank.example/{% editable "path" %}help{% endeditable %}">help</a>'
    template = _ENVIRONMENT.from_string(source)
    template.name = "x/email.html/en"  # what the engine names an HTML part
    out = template.render(message={"edits": {"path": 'x" onmouseover="alert(1)'}})
    assert 'onmouseover="' not in out
    assert "&#34;" in out or "&quot;" in out
