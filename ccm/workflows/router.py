"""/v1/workflows: workflows are kept as templates of kind `workflow`, so they are versioned, reviewed by a
second person and published exactly as templates are; these endpoints take and show their rules typed."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.orm import Session

from ccm.auth.deps import DatabaseDep, SettingsDep, any_role, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.communications.models import Communication
from ccm.customers.models import Customer
from ccm.errors import NotFound
from ccm.inputs import InputModel
from ccm.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_position, encode_position
from ccm.templates_engine import router as templates_router
from ccm.templates_engine import service as templates
from ccm.templates_engine.editable import MAX_EDIT
from ccm.templates_engine.models import Template, TemplateKind
from ccm.templates_engine.schemas import KEY_PATTERN, Publish, Reason, TemplateCreate, VersionOut
from ccm.workflows import reviews
from ccm.workflows.models import Task, TaskKind, TaskStatus
from ccm.workflows.schemas import AgentOutcome, Outcome, Rule

router = APIRouter(tags=["workflows"])
log = logging.getLogger(__name__)

Key = Annotated[str, Path(pattern=KEY_PATTERN, description="The workflow's key, such as `claim_decision`.")]
Number = Annotated[int, Path(ge=1)]
Author = Annotated[Principal, Depends(require(Role.author))]
Approver = Annotated[Principal, Depends(require(Role.approver))]
Anyone = Annotated[Principal, Depends(any_role())]
EngineDep = templates_router.EngineDep


class WorkflowCreate(InputModel):
    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=5000)] = ""


class WorkflowVersionIn(InputModel):
    rules: list[Rule] = Field(default_factory=list, max_length=100)
    default: Outcome
    notes: Annotated[str, StringConstraints(max_length=10_000)] = ""


class WorkflowOut(BaseModel):
    key: str
    name: str
    description: str
    published_version: int | None
    definition: dict[str, Any] | None = Field(description="The rules of the published version, if any.")
    versions: list[dict[str, Any]] = Field(default_factory=list)


def _workflow(session: Session, key: str) -> Template:
    template = templates.get_template(session, key=key)
    if template.kind is not TemplateKind.workflow:
        raise NotFound(f"no workflow with key '{key}' ('{key}' is a {template.kind.value} template)")
    return template


def _out(session: Session, template: Template, *, versions: bool = False) -> WorkflowOut:
    live = templates.live_version(session, template)
    return WorkflowOut(
        key=template.key,
        name=template.name,
        description=template.description,
        published_version=live.number if live else None,
        definition=live.content.get("workflow") if live else None,
        versions=(
            [v.model_dump(mode="json") for v in templates.version_summaries(session, template)]
            if versions
            else []
        ),
    )


@router.get("/v1/workflows")
def list_workflows(database: DatabaseDep, principal: Anyone) -> dict[str, list[WorkflowOut]]:
    with database.read() as session:
        return {
            "items": [
                _out(session, t) for t in templates.list_templates(session) if t.kind is TemplateKind.workflow
            ]
        }


@router.post("/v1/workflows", status_code=status.HTTP_201_CREATED, response_model=WorkflowOut)
def create_workflow(body: WorkflowCreate, database: DatabaseDep, principal: Author) -> WorkflowOut:
    with database.transaction() as session:
        template = templates.create_template(
            session,
            body=TemplateCreate(
                key=body.key, name=body.name, description=body.description, kind=TemplateKind.workflow
            ),
            actor=principal.actor,
        )
        return _out(session, template)


@router.get("/v1/workflows/{key}", response_model=WorkflowOut)
def get_workflow(key: Key, database: DatabaseDep, principal: Anyone) -> WorkflowOut:
    with database.read() as session:
        return _out(session, _workflow(session, key), versions=True)


@router.post("/v1/workflows/{key}/versions", status_code=status.HTTP_201_CREATED, response_model=VersionOut)
def create_workflow_version(
    key: Key, body: WorkflowVersionIn, database: DatabaseDep, engine: EngineDep, principal: Author
) -> VersionOut:
    """A new draft of the rules. A `when` that cannot be read is 422 with the rule, its pointer and the
    column of the problem."""
    content = {
        "workflow": body.model_dump(mode="json", exclude_none=True, exclude={"notes"}),
        "notes": body.notes,
    }
    with database.transaction() as session:
        _workflow(session, key)
        version, warnings = templates.create_version(
            session, engine, key=key, body=content, actor=principal.actor
        )
        return templates.version_out(session, templates.get_template(session, key=key), version, warnings)


@router.get("/v1/workflows/{key}/versions/{number}", response_model=VersionOut)
def get_workflow_version(key: Key, number: Number, database: DatabaseDep, principal: Anyone) -> VersionOut:
    with database.read() as session:
        template = _workflow(session, key)
        return templates.version_out(
            session, template, templates.get_version(session, template=template, number=number)
        )


def _must_be_workflow(database: DatabaseDep, key: str) -> None:
    with database.read() as session:
        _workflow(session, key)


@router.post("/v1/workflows/{key}/versions/{number}/submit", response_model=VersionOut)
def submit_workflow_version(
    key: Key, number: Number, database: DatabaseDep, engine: EngineDep, principal: Author
) -> VersionOut:
    _must_be_workflow(database, key)
    return templates_router.submit_version(key, number, database, engine, principal)


@router.post("/v1/workflows/{key}/versions/{number}/approve", response_model=VersionOut)
def approve_workflow_version(
    key: Key, number: Number, database: DatabaseDep, principal: Approver
) -> VersionOut:
    """Approve rules in review. Whoever wrote or edited them cannot (403)."""
    _must_be_workflow(database, key)
    return templates_router.approve_version(key, number, database, principal)


@router.post("/v1/workflows/{key}/versions/{number}/reject", response_model=VersionOut)
def reject_workflow_version(
    key: Key, number: Number, body: Reason, database: DatabaseDep, principal: Approver
) -> VersionOut:
    _must_be_workflow(database, key)
    return templates_router.reject_version(key, number, body, database, principal)


@router.post("/v1/workflows/{key}/versions/{number}/publish", response_model=VersionOut)
def publish_workflow_version(
    key: Key,
    number: Number,
    database: DatabaseDep,
    engine: EngineDep,
    principal: Approver,
    body: Publish | None = None,
) -> VersionOut:
    _must_be_workflow(database, key)
    return templates_router.publish_version(key, number, database, engine, principal, body)


# --- the review queue -------------------------------------------------------------------------------------

Reviewer = Annotated[Principal, Depends(require(Role.agent))]
Watcher = Annotated[Principal, Depends(require(Role.agent, Role.auditor))]
TaskId = Annotated[str, Path(min_length=1, max_length=36)]


class TaskOut(BaseModel):
    id: str
    kind: str
    queue: str
    status: str
    communication: str
    template: str
    customer: str
    approvals_required: int
    approvals: list[str] = Field(description="The people who approved it so far.")
    due_at: dt.datetime | None = Field(description="The SLA: when it should be done by.")
    assignee: str | None
    rule: str | None
    edits: dict[str, str] = Field(default_factory=dict)
    diffs: dict[str, str] = Field(default_factory=dict, description="What the edits changed, per field.")
    escalated_from: str | None = None
    created_at: dt.datetime


class TaskDetail(TaskOut):
    decision: dict[str, Any] | None
    editable_regions: list[str]
    rendered: dict[str, dict[str, str]] = Field(description="Each channel's fields as they would go out now.")
    script: str | None = Field(
        description="For an agent: the message as plain text, to read to the customer."
    )


class Approval(InputModel):
    edits: (
        dict[
            Annotated[str, StringConstraints(max_length=64)],
            Annotated[str, StringConstraints(max_length=MAX_EDIT)],
        ]
        | None
    ) = Field(default=None, description="New text for editable regions, by name; everything else is locked.")


class OutcomeIn(InputModel):
    outcome: AgentOutcome
    notes: Annotated[str, StringConstraints(max_length=5000)] = ""


class Reassign(InputModel):
    queue: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")] | None = None
    release: bool = Field(default=False, description="Release the claim, so that anyone may take it.")


def _task_out(session: Session, task: Task) -> TaskOut:
    communication = session.get_one(Communication, task.communication_id)
    template = session.get_one(Template, communication.template_id)
    customer = session.get_one(Customer, communication.customer_id)
    details = task.details
    return TaskOut(
        id=task.id,
        kind=task.kind,
        queue=task.queue,
        status=task.status,
        communication=communication.id,
        template=template.key,
        customer=customer.external_id,
        approvals_required=task.approvals_required,
        approvals=[a["person"] for a in details.get("approvals", [])],
        due_at=task.due_at,
        assignee=task.assignee,
        rule=details.get("rule"),
        edits=details.get("edits", {}),
        diffs=details.get("diffs", {}),
        escalated_from=details.get("escalated_from"),
        created_at=task.created_at,
    )


@router.get("/v1/reviews", tags=["reviews"], response_model=Page[TaskOut])
def list_reviews(
    database: DatabaseDep,
    principal: Watcher,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[TaskStatus | None, Query()] = None,
    kind: Annotated[TaskKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[TaskOut]:
    """Tasks by queue, status and kind, the longest waiting first."""
    after = decode_position("tasks", cursor, 2)
    with database.read() as session:
        tasks = reviews.list_tasks(
            session,
            queue=queue,
            status=status.value if status else None,
            kind=kind.value if kind else None,
            limit=limit + 1,
            after=(after[0], after[1]) if after else None,
        )
        items = [_task_out(session, t) for t in tasks[:limit]]
    more = len(tasks) > limit
    last = tasks[limit - 1] if more else None
    return Page(
        items=items,
        next_cursor=encode_position("tasks", [last.created_at.isoformat(), last.id]) if last else None,
    )


@router.get("/v1/reviews/{task_id}", tags=["reviews"], response_model=TaskDetail)
def get_review(
    task_id: TaskId, database: DatabaseDep, settings: SettingsDep, engine: EngineDep, principal: Watcher
) -> TaskDetail:
    """A task with the message as it would go out now (with the edits so far) and its editable regions."""
    with database.read() as session:
        task = reviews.get_task(session, task_id)
        item = reviews.subject(session, task)
        edits = task.details.get("edits", {})
        fields = reviews.rendered(session, settings, engine, item, edits)
        return TaskDetail(
            **_task_out(session, task).model_dump(),
            decision=item.communication.decision,
            editable_regions=reviews.regions(engine, item.version),
            rendered=fields,
            script=reviews.script(fields) if task.kind == TaskKind.agent.value else None,
        )


@router.post("/v1/reviews/{task_id}/claim", tags=["reviews"], response_model=TaskOut)
def claim_review(task_id: TaskId, database: DatabaseDep, principal: Reviewer) -> TaskOut:
    with database.transaction() as session:
        return _task_out(session, reviews.claim(session, task_id, principal))


@router.post("/v1/reviews/{task_id}/approve", tags=["reviews"], response_model=TaskOut)
def approve_review(
    task_id: TaskId,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    engine: EngineDep,
    principal: Reviewer,
    body: Approval | None = None,
) -> TaskOut:
    """Approve, perhaps with edits to the editable regions (an edit restarts the approvals: each counts for
    the content it saw). With the approvals the rule asks for, the message goes on and is sent."""
    with database.transaction() as session:
        approved = reviews.approve(
            session, settings, engine, task_id, principal, edits=body.edits if body else None
        )
        out = _task_out(session, approved.task)
    if approved.released:
        _hand_on(request, out.communication, approved.due_at)
    return out


def _hand_on(request: Request, communication_id: str, due_at: dt.datetime) -> None:
    try:
        request.app.state.runtime.queue.route(communication_id, due_at)
    except Exception:  # the relay queues it if the queue cannot take it now
        log.exception("could not queue a communication released by a person; the relay will")


@router.post("/v1/reviews/{task_id}/outcome", tags=["reviews"], response_model=TaskOut)
def record_outcome(
    task_id: TaskId,
    body: OutcomeIn,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: Reviewer,
) -> TaskOut:
    """An agent's outcome (reached, no_answer, voicemail, refused), kept as a delivery on channel `agent`;
    the rule's follow-up for it, if any (no answer -> a letter), is sent."""
    with database.transaction() as session:
        done = reviews.record_outcome(
            session, settings, task_id, principal, outcome=body.outcome, notes=body.notes
        )
        out = _task_out(session, done.task)
    if done.released:
        _hand_on(request, out.communication, done.due_at)
    return out


@router.post("/v1/reviews/{task_id}/reject", tags=["reviews"], response_model=TaskOut)
def reject_review(task_id: TaskId, body: Reason, database: DatabaseDep, principal: Reviewer) -> TaskOut:
    """Reject with a reason: the message is cancelled, and the integrator told (webhook event)."""
    with database.transaction() as session:
        return _task_out(session, reviews.reject(session, task_id, principal, reason=body.reason))


@router.post("/v1/reviews/{task_id}/reassign", tags=["reviews"], response_model=TaskOut)
def reassign_review(task_id: TaskId, body: Reassign, database: DatabaseDep, principal: Reviewer) -> TaskOut:
    with database.transaction() as session:
        task = reviews.reassign(session, task_id, principal, queue=body.queue, release=body.release)
        return _task_out(session, task)
