"""Deciding a message's way with a workflow: the live version's rules, tried in order, the first true one
deciding; the default when none is. The decision is recorded with the communication and in the log."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ccm.errors import FieldError, InvalidInput, NotFound
from ccm.templates_engine import service as templates
from ccm.templates_engine.models import TemplateKind
from ccm.workflows import rules
from ccm.workflows.models import Task, TaskKind, TaskStatus
from ccm.workflows.schemas import Outcome, Rule, Then, WorkflowDefinition


@dataclass(frozen=True)
class LiveWorkflow:
    key: str
    version: int
    definition: WorkflowDefinition


def live_workflow(session: Session, key: str, *, pointer: str = "/workflow") -> LiveWorkflow:
    """The workflow's version in force now; a 422 on the trigger's `workflow` field otherwise."""
    try:
        template = templates.get_template(session, key=key)
    except NotFound:
        template = None
    if template is None or template.kind is not TemplateKind.workflow:
        raise InvalidInput([FieldError("body", pointer, f"there is no workflow '{key}'", "not_found")])
    version = templates.live_version(session, template)
    if version is None:
        raise InvalidInput([FieldError("body", pointer, f"workflow '{key}' has no published version")])
    definition = WorkflowDefinition.model_validate(version.content["workflow"])
    return LiveWorkflow(key=key, version=version.number, definition=definition)


def decide(workflow: LiveWorkflow, context: dict[str, Any], *, pointer: str = "/workflow") -> dict[str, Any]:
    """The decision record: every rule tried (and whether it matched), the deciding rule with its
    expression and the values it saw, and the outcome. A rule that cannot be evaluated for this message
    refuses it (422), rather than letting it pass a rule meant to stop it."""
    tried: list[dict[str, Any]] = []
    chosen: Outcome = workflow.definition.default
    matched: Rule | None = None
    for rule in workflow.definition.rules:
        try:
            result = rules.evaluate(rule.when, context)
        except rules.RuleError as exc:
            raise InvalidInput(
                [
                    FieldError(
                        "body",
                        pointer,
                        f"workflow '{workflow.key}' rule '{rule.name}' ({rule.when}) cannot be decided for "
                        f"this message: {exc}",
                        "rule_error",
                    )
                ]
            ) from None
        tried.append({"rule": rule.name, "matched": result})
        if result:
            chosen, matched = rule, rule
            break
    outcome = chosen.model_dump(mode="json", exclude_none=True, exclude={"name", "when"})
    record: dict[str, Any] = {
        "workflow": workflow.key,
        "version": workflow.version,
        "rule": matched.name if matched else None,
        "default": matched is None,
        "tried": tried,
        "outcome": outcome,
    }
    if matched is not None:
        record["expression"] = matched.when
        record["values"] = {path: rules.value_at(context, path) for path in rules.paths(matched.when)}
    return record


def outcome_of(decision: dict[str, Any]) -> Outcome:
    return Outcome.model_validate(decision["outcome"])


def delay_of(decision: dict[str, Any]) -> dt.timedelta | None:
    return outcome_of(decision).delay_span()


def open_task(
    session: Session, *, communication_id: str, decision: dict[str, Any], now: dt.datetime
) -> Task | None:
    """The task a review or agent outcome gives people, waiting in its queue; None for other outcomes."""
    outcome = outcome_of(decision)
    if outcome.then not in (Then.review, Then.agent):
        return None
    sla = outcome.sla_span()
    task = Task(
        communication_id=communication_id,
        kind=TaskKind.review.value if outcome.then is Then.review else TaskKind.agent.value,
        queue=outcome.queue or "default",
        status=TaskStatus.open.value,
        approvals_required=outcome.approvals or 1,
        due_at=now + sla if sla else None,
        details={"workflow": decision["workflow"], "rule": decision["rule"], "approvals": []},
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    return task
