"""The review queue: messages a workflow held for people. A reviewer claims one, then approves it (perhaps
editing its editable regions) or rejects it with a reason; the rule may ask for two approvals, by two
people, neither of them whoever triggered the message. Approved, it goes on through routing and is sent;
rejected, it is cancelled and the integrator told. Past its SLA, a task moves to the escalation queue."""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.auth.service import Principal, people
from ccm.channels import Channel
from ccm.communications import queueing, service
from ccm.communications.models import Communication, Delivery, new_id
from ccm.communications.service import CommunicationStatus
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import utcnow
from ccm.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from ccm.templates_engine import editable
from ccm.templates_engine import service as templates
from ccm.templates_engine.models import Template, TemplateVersion
from ccm.templates_engine.preview import customer_context, message_context
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine
from ccm.workflows.models import Task, TaskKind, TaskStatus
from ccm.workflows.schemas import AgentOutcome

ESCALATION_QUEUE = "escalations"
AGENT_CHANNEL = "agent"  # a delivery made by a person: a call or a visit
OPEN = (TaskStatus.open.value, TaskStatus.claimed.value)


class TaskState(Conflict):
    slug = "task-state"
    title = "Not possible in the task's state"


def get_task(session: Session, task_id: str, *, for_update: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id)
    if for_update:
        query = query.with_for_update()
    task = session.scalars(query).one_or_none()
    if task is None:
        raise NotFound(f"there is no task {task_id}")
    return task


def list_tasks(
    session: Session,
    *,
    queue: str | None,
    status: str | None,
    kind: str | None,
    limit: int,
    after: tuple[str, str] | None,
) -> list[Task]:
    """Oldest first (the longest waiting on top), keyset-paged on (created_at, id)."""
    query = select(Task)
    if queue is not None:
        query = query.where(Task.queue == queue)
    if status is not None:
        query = query.where(Task.status == status)
    if kind is not None:
        query = query.where(Task.kind == kind)
    if after is not None:
        created, task_id = after
        moment = dt.datetime.fromisoformat(created)
        query = query.where((Task.created_at > moment) | ((Task.created_at == moment) & (Task.id > task_id)))
    return list(session.scalars(query.order_by(Task.created_at, Task.id).limit(limit)))


def _locked(session: Session, task_id: str) -> tuple[Task, Communication]:
    """The task and its communication, locked in the order every change takes (cancel too): the
    communication first, then its task."""
    communication_id = get_task(session, task_id).communication_id
    communication = service.get_communication(session, communication_id, for_update=True)
    task = session.scalars(
        select(Task).where(Task.id == task_id).with_for_update().execution_options(populate_existing=True)
    ).one()
    return task, communication


def _open(task: Task) -> None:
    if task.status not in OPEN:
        raise TaskState(f"task {task.id} is {task.status}")


def _person(session: Session, actor: str) -> str:
    return next(iter(people(session, [actor])))


def _not_theirs(session: Session, task: Task, principal: Principal) -> None:
    """Another person's claim is theirs to finish (or to release, by reassigning)."""
    me = _person(session, principal.actor)
    if task.status == TaskStatus.claimed.value and task.assignee not in (None, me):
        raise TaskState(f"task {task.id} is claimed by {task.assignee}; reassign it first")


def claim(session: Session, task_id: str, principal: Principal) -> Task:
    task = get_task(session, task_id, for_update=True)
    _open(task)
    _not_theirs(session, task, principal)
    me = _person(session, principal.actor)
    if task.assignee == me:
        return task
    task.status, task.assignee, task.updated_at = TaskStatus.claimed.value, me, utcnow()
    audit.append(
        session,
        actor=principal.actor,
        action="task.claimed",
        subject_type="task",
        subject_id=task.id,
        payload={"communication": task.communication_id, "queue": task.queue},
    )
    return task


def reassign(
    session: Session, task_id: str, principal: Principal, *, queue: str | None, release: bool
) -> Task:
    """Move a task to another queue, and/or release its claim so that anyone may take it."""
    task = get_task(session, task_id, for_update=True)
    _open(task)
    before = {"queue": task.queue, "assignee": task.assignee}
    if queue is not None:
        task.queue = queue
    if release or queue is not None:
        task.status, task.assignee = TaskStatus.open.value, None
    task.updated_at = utcnow()
    audit.append(
        session,
        actor=principal.actor,
        action="task.reassigned",
        subject_type="task",
        subject_id=task.id,
        payload={"communication": task.communication_id, "before": before, "queue": task.queue},
    )
    return task


@dataclass(frozen=True)
class Subject:
    """What a reviewer looks at: the communication, its template version, the customer."""

    communication: Communication
    template: Template
    version: TemplateVersion
    loaded: LoadedVersion
    customer: Customer


def subject(session: Session, task: Task) -> Subject:
    communication = service.get_communication(session, task.communication_id)
    template = session.get_one(Template, communication.template_id)
    version = session.get_one(TemplateVersion, communication.template_version_id)
    customer = session.get_one(Customer, communication.customer_id)
    return Subject(communication, template, version, templates.loaded(session, template, version), customer)


def regions(engine: TemplateEngine, version: TemplateVersion) -> list[str]:
    """Every editable region the version's parts declare, in any language."""
    found: dict[str, None] = {}
    content = version.content
    for parts in [content.get("parts", {}), *content.get("locales", {}).values()]:
        for channel_part in parts.values():
            if not isinstance(channel_part, dict):
                continue
            for source in channel_part.values():
                if isinstance(source, str):
                    for name in editable.regions(engine.environment, source):
                        found[name] = None
    return list(found)


def rendered(
    session: Session, settings: Settings, engine: TemplateEngine, item: Subject, edits: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Each channel's fields as they would go out, with these edits."""
    customer = customer_context(item.customer)
    out: dict[str, dict[str, str]] = {}
    for name in item.version.content.get("parts", {}):
        channel = Channel(name)
        message = message_context(
            settings,
            item.communication.id,
            external_id=item.customer.external_id,
            channel=channel,
            date=item.communication.created_at.date(),
            edits=edits,
        )
        context = RenderContext(
            customer=customer,
            data=item.communication.data,
            message=message,
            locale=item.communication.locale,
            timezone=str(customer.get("timezone") or "UTC"),
        )
        result = engine.render_channel(item.loaded, channel, context)
        out[name] = dict(result.fields)
    return out


def _diffs(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, str]:
    """A unified diff per changed field (`email.html`, `sms.body`...): what the edits changed, kept."""
    diffs = {}
    for channel, fields in after.items():
        for field, text in fields.items():
            old = before.get(channel, {}).get(field, "")
            if old != text:
                diffs[f"{channel}.{field}"] = "".join(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        fromfile="template",
                        tofile="edited",
                    )
                )
    return diffs


def _release(
    session: Session,
    settings: Settings,
    communication: Communication,
    principal: Principal,
    now: dt.datetime,
    payload: dict[str, Any],
) -> None:
    """A message a person held goes on: accepted again, due now at the earliest, routed next."""
    communication.due_at = max(communication.due_at, now)
    communication.enqueued_at = queueing.enqueued_at(settings, communication.due_at, now)
    service.set_status(
        session, communication, CommunicationStatus.accepted, actor=principal.actor, payload=payload
    )


@dataclass(frozen=True)
class Approved:
    task: Task
    released: bool  # enough approvals: the communication goes on to routing
    due_at: dt.datetime


def approve(
    session: Session,
    settings: Settings,
    engine: TemplateEngine,
    task_id: str,
    principal: Principal,
    *,
    edits: dict[str, str] | None,
) -> Approved:
    task, communication = _locked(session, task_id)
    if task.kind != TaskKind.review.value:
        raise TaskState(f"task {task.id} is for an agent to handle, not to review")
    _open(task)
    _not_theirs(session, task, principal)
    item = subject(session, task)
    me = _person(session, principal.actor)
    if me in people(session, [item.communication.created_by]):
        raise Forbidden("whoever triggered a message cannot review it")
    approvals: list[dict[str, Any]] = list(task.details.get("approvals", []))
    current: dict[str, str] = dict(task.details.get("edits", {}))
    changed = edits is not None and edits != current
    if not changed and any(a["person"] == me for a in approvals):
        raise TaskState("you have approved this message already; another person must give the next approval")
    details = dict(task.details)
    if edits is not None and changed:
        allowed = set(regions(engine, item.version))
        locked = [name for name in edits if name not in allowed]
        if locked:
            raise InvalidInput(
                [
                    FieldError(
                        "body",
                        f"/edits/{name}",
                        f"'{name}' is not an editable region of this message: everything outside the "
                        f"regions ({', '.join(sorted(allowed)) or 'none'}) is locked",
                        "locked",
                    )
                    for name in locked
                ]
            )
        before = rendered(session, settings, engine, item, {})
        after = rendered(session, settings, engine, item, edits)
        details["edits"], details["diffs"] = edits, _diffs(before, after)
        approvals = []  # an approval counts for the content it saw: changed content starts again
        current = edits
    approvals.append({"person": me, "actor": principal.actor, "at": utcnow().isoformat()})
    details["approvals"] = approvals
    task.details = details
    now = utcnow()
    task.updated_at = now
    released = len(approvals) >= task.approvals_required
    audit.append(
        session,
        actor=principal.actor,
        action="review.approved",
        subject_type="task",
        subject_id=task.id,
        payload={
            "communication": task.communication_id,
            "approvals": len(approvals),
            "required": task.approvals_required,
            "edits": current,
            "diffs": details.get("diffs", {}),
        },
    )
    if released:
        task.status = TaskStatus.approved.value
        communication.options = {**communication.options, "edits": current}
        _release(
            session,
            settings,
            communication,
            principal,
            now,
            {"review": task.id, "approvals": [a["person"] for a in approvals]},
        )
    else:
        task.status, task.assignee = TaskStatus.open.value, None  # for the next person
    return Approved(task, released, communication.due_at)


def reject(session: Session, task_id: str, principal: Principal, *, reason: str) -> Task:
    task, communication = _locked(session, task_id)
    _open(task)
    _not_theirs(session, task, principal)
    item = subject(session, task)
    me = _person(session, principal.actor)
    if me in people(session, [item.communication.created_by]):
        raise Forbidden("whoever triggered a message cannot review it")
    task.status, task.updated_at = TaskStatus.rejected.value, utcnow()
    task.details = {**task.details, "rejected_by": me, "reason": reason}
    service.set_status(
        session,
        communication,
        CommunicationStatus.cancelled,
        actor=principal.actor,
        payload={"review": task.id, "reason": reason},
    )
    return task


def escalate_overdue(session: Session, *, now: dt.datetime | None = None, limit: int = 1000) -> int:
    """Tasks past their SLA move to the escalation queue, each as a `task.escalated` event; once each."""
    moment = now or utcnow()
    overdue = list(
        session.scalars(
            select(Task)
            .where(
                Task.status.in_(OPEN),
                Task.escalated_at.is_(None),
                Task.due_at.is_not(None),
                Task.due_at <= moment,
            )
            .order_by(Task.due_at)
            .limit(limit)
            .with_for_update()
        )
    )
    escalated = 0
    for task in overdue:
        task.escalated_at = moment
        task.details = {**task.details, "escalated_at": moment.isoformat(), "escalated_from": task.queue}
        before = task.queue
        task.queue, task.status, task.assignee, task.updated_at = (
            ESCALATION_QUEUE,
            TaskStatus.open.value,
            None,
            moment,
        )
        audit.append(
            session,
            actor="system:workflows",
            action="task.escalated",
            subject_type="task",
            subject_id=task.id,
            payload={
                "communication": task.communication_id,
                "from": before,
                "due_at": task.due_at.isoformat() if task.due_at else None,
            },
        )
        escalated += 1
    return escalated


# What an agent's outcome makes of the delivery on channel "agent".
OUTCOME_STATUS = {
    AgentOutcome.reached: DeliveryStatus.delivered,
    AgentOutcome.refused: DeliveryStatus.delivered,  # reached; the customer's answer is the outcome
    AgentOutcome.voicemail: DeliveryStatus.sent,  # a message left, not known to be heard
    AgentOutcome.no_answer: DeliveryStatus.undelivered,
}


def script(fields: dict[str, dict[str, str]]) -> str | None:
    """What an agent reads to the customer: the message as plain text (the email's text, else the SMS)."""
    return fields.get("email", {}).get("text") or fields.get("sms", {}).get("body") or None


def record_outcome(
    session: Session,
    settings: Settings,
    task_id: str,
    principal: Principal,
    *,
    outcome: AgentOutcome,
    notes: str,
) -> Approved:
    """The agent's outcome, kept as a delivery on channel `agent`; when the rule names a follow-up for
    it (no answer -> a letter), the message goes on to routing with that follow-up's channels."""
    task, communication = _locked(session, task_id)
    if task.kind != TaskKind.agent.value:
        raise TaskState(f"task {task.id} is a review, not for an agent to handle")
    _open(task)
    _not_theirs(session, task, principal)
    me = _person(session, principal.actor)
    now = utcnow()
    customer = session.get_one(Customer, communication.customer_id)
    status = OUTCOME_STATUS[outcome]
    delivery = Delivery(
        id=new_id(),
        communication_id=communication.id,
        customer_id=customer.id,
        channel=AGENT_CHANNEL,
        status=status.value,
        recipient=customer.phone or service.postal_address(customer),
        details={"outcome": outcome.value, "notes": notes, "agent": me, "task": task.id},
        attempts=1,
        created_at=now,
        updated_at=now,
    )
    session.add(delivery)
    session.flush()
    audit.append(
        session,
        actor=principal.actor,
        action=f"delivery.{status.value}",
        subject_type="delivery",
        subject_id=delivery.id,
        payload={
            "communication": communication.id,
            "channel": AGENT_CHANNEL,
            "outcome": outcome.value,
            "notes": notes,
        },
    )
    task.status, task.assignee, task.updated_at = TaskStatus.done.value, me, now
    task.details = {**task.details, "outcome": outcome.value, "notes": notes, "delivery": delivery.id}
    decision = communication.decision or {}
    follow_up = (decision.get("outcome", {}).get("follow_up") or {}).get(outcome.value)
    if follow_up is None:
        service.settle(session, communication, actor=principal.actor)
        return Approved(task, False, communication.due_at)
    communication.decision = {**decision, "follow_up": {"after": outcome.value, "routing": follow_up}}
    _release(
        session, settings, communication, principal, now, {"follow_up": outcome.value, "routing": follow_up}
    )
    return Approved(task, True, communication.due_at)
