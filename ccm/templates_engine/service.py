"""Template logic: versions, their validation, the four-eyes lifecycle, publication, diff and usage."""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import jsonschema
import jsonschema_rs
from jinja2 import TemplateSyntaxError
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccm import audit
from ccm.audit.service import canonical_json
from ccm.auth.service import people
from ccm.channels import Channel
from ccm.config import Settings
from ccm.db import Database, utcnow
from ccm.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from ccm.templates_engine import analysis, editable
from ccm.templates_engine.models import (
    Template,
    TemplateDependency,
    TemplateKind,
    TemplatePublication,
    TemplateVersion,
    VersionStatus,
)
from ccm.templates_engine.render import LoadedVersion, TemplateEngine
from ccm.templates_engine.schemas import (
    Parts,
    TemplateCreate,
    TemplateOut,
    TemplateUpdate,
    TemplateWarning,
    VersionBody,
    VersionOut,
    VersionSummary,
)
from ccm.workflows import rules

log = logging.getLogger(__name__)

# Derived states shown for approved versions.
PUBLISHED = "published"
SCHEDULED = "scheduled"
RETIRED = "retired"


class VersionStateConflict(Conflict):
    slug = "version-state"
    title = "Not possible in this version's state"


# --- templates ---------------------------------------------------------------------------------------------


def get_template(session: Session, *, key: str, for_update: bool = False) -> Template:
    query = select(Template).where(Template.key == key)
    if for_update:
        query = query.with_for_update()
    template = session.scalars(query).one_or_none()
    if template is None:
        raise NotFound(f"no template with key '{key}'")
    return template


def create_template(session: Session, *, body: TemplateCreate, actor: str) -> Template:
    if session.scalars(select(Template.id).where(Template.key == body.key)).first() is not None:
        raise Conflict(f"a template with key '{body.key}' exists already")
    now = utcnow()
    template = Template(
        key=body.key,
        name=body.name,
        description=body.description,
        kind=body.kind,
        category=body.category,
        default_locale=body.default_locale,
        created_at=now,
        created_by=actor,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(template)
    except IntegrityError:
        raise Conflict(f"a template with key '{body.key}' exists already") from None
    audit.append(
        session,
        actor=actor,
        action="template.created",
        subject_type="template",
        subject_id=body.key,
        payload=body.model_dump(mode="json"),
    )
    return template


def update_template(session: Session, *, key: str, body: TemplateUpdate, actor: str) -> Template:
    template = get_template(session, key=key, for_update=True)
    changes = {
        name: value
        for name, value in body.model_dump(exclude_unset=True, mode="json").items()
        if value is not None and getattr(template, name) != value
    }
    if not changes:
        return template
    if "category" in changes and _publications(session, template):
        # The category decides the consent rules a message is sent under; once a version went out under one,
        # changing it would change what was approved without a review.
        raise VersionStateConflict(
            f"'{key}' has been published as {template.category.value}: its category can no longer change; "
            "create a new template instead"
        )
    for name, value in changes.items():
        setattr(template, name, value)
    template.updated_at = utcnow()
    audit.append(
        session,
        actor=actor,
        action="template.updated",
        subject_type="template",
        subject_id=key,
        payload=changes,
    )
    return template


def list_templates(session: Session) -> list[Template]:
    return list(session.scalars(select(Template).order_by(Template.key)))


def live_version(
    session: Session, template: Template, at: dt.datetime | None = None
) -> TemplateVersion | None:
    """The version in force at `at` (default now): of the publications in effect by then, the last decided.
    A later decision wins over an earlier one, so publishing now (a rollback) overrides a pending schedule."""
    moment = at or utcnow()
    return session.scalars(
        select(TemplateVersion)
        .join(TemplatePublication, TemplatePublication.version_id == TemplateVersion.id)
        .where(TemplatePublication.template_id == template.id, TemplatePublication.effective_from <= moment)
        .order_by(TemplatePublication.id.desc())
        .limit(1)
    ).first()


def newest_version(session: Session, template: Template) -> TemplateVersion | None:
    return session.scalars(
        select(TemplateVersion)
        .where(TemplateVersion.template_id == template.id)
        .order_by(TemplateVersion.number.desc())
        .limit(1)
    ).first()


def template_out(session: Session, template: Template) -> TemplateOut:
    live = live_version(session, template)
    newest = live or newest_version(session, template)
    channels = [c for c in Channel if newest is not None and c.value in newest.content.get("parts", {})]
    return TemplateOut(
        key=template.key,
        name=template.name,
        description=template.description,
        kind=template.kind,
        category=template.category,
        default_locale=template.default_locale,
        channels=channels,
        published_version=live.number if live else None,
        created_at=template.created_at,
        created_by=template.created_by,
        updated_at=template.updated_at,
    )


# --- versions ---------------------------------------------------------------------------------------------


def get_version(
    session: Session, *, template: Template, number: int, for_update: bool = False
) -> TemplateVersion:
    query = select(TemplateVersion).where(
        TemplateVersion.template_id == template.id, TemplateVersion.number == number
    )
    if for_update:
        query = query.with_for_update()
    version = session.scalars(query).one_or_none()
    if version is None:
        raise NotFound(f"template '{template.key}' has no version {number}")
    return version


def _publications(session: Session, template: Template) -> list[TemplatePublication]:
    return list(
        session.scalars(
            select(TemplatePublication)
            .where(TemplatePublication.template_id == template.id)
            .order_by(TemplatePublication.id)
        )
    )


@dataclass(frozen=True)
class _Shown:
    status: str
    effective_from: dt.datetime | None


def _shown_states(session: Session, template: Template) -> dict[int, _Shown]:
    """Version id -> the state shown to users (approved versions become published, scheduled or retired)."""
    now = utcnow()
    publications = _publications(session, template)
    in_effect = [p for p in publications if p.effective_from <= now]
    live = in_effect[-1] if in_effect else None
    shown: dict[int, _Shown] = {}
    for publication in in_effect:
        shown[publication.version_id] = _Shown(RETIRED, publication.effective_from)
    for publication in publications:
        # Pending only while no later decision takes effect at or before its time (which would override it).
        overridden = any(
            later.id > publication.id and later.effective_from <= publication.effective_from
            for later in publications
        )
        if publication.effective_from > now and not overridden:
            shown[publication.version_id] = _Shown(SCHEDULED, publication.effective_from)
    if live is not None:
        shown[live.version_id] = _Shown(PUBLISHED, live.effective_from)
    return shown


def _summary(version: TemplateVersion, shown: dict[int, _Shown]) -> dict[str, Any]:
    state = shown.get(version.id) if version.status is VersionStatus.approved else None
    return {
        "number": version.number,
        "status": state.status if state else version.status.value,
        "author": version.author,
        "approver": version.approver,
        "content_hash": version.content_hash,
        "created_at": version.created_at,
        "submitted_at": version.submitted_at,
        "decided_at": version.decided_at,
        "effective_from": state.effective_from if state else None,
    }


def version_summaries(session: Session, template: Template) -> list[VersionSummary]:
    shown = _shown_states(session, template)
    versions = session.scalars(
        select(TemplateVersion)
        .where(TemplateVersion.template_id == template.id)
        .order_by(TemplateVersion.number)
    )
    return [VersionSummary(**_summary(v, shown)) for v in versions]


def version_out(
    session: Session,
    template: Template,
    version: TemplateVersion,
    warnings: list[TemplateWarning] | None = None,
) -> VersionOut:
    shown = _shown_states(session, template)
    uses = {
        d.key: d.number
        for d in session.scalars(
            select(TemplateDependency).where(TemplateDependency.version_id == version.id)
        )
    }
    return VersionOut(
        **_summary(version, shown),
        template=template.key,
        contributors=version.contributors,
        rejection_reason=version.rejection_reason,
        copied_from=version.copied_from,
        content=version.content,
        uses=uses,
        warnings=warnings or [],
    )


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


# --- validation on save -----------------------------------------------------------------------------------


@dataclass
class Checked:
    body: VersionBody
    references: set[str]
    warnings: list[TemplateWarning]


def _all_parts(body: VersionBody) -> Iterator[tuple[str, str, Parts]]:
    """(label, JSON pointer prefix, parts) for the default content and each translation."""
    yield "", "/parts", body.parts
    for locale, parts in body.locales.items():
        yield f"{locale}:", f"/locales/{locale}", parts


def _source_error(sub: analysis.SubPart, part: str, line: int | None, message: str) -> FieldError:
    where = f"line {line}: " if line is not None else ""
    return FieldError("body", sub.pointer, f"{where}{message}", "template", line=line, part=part)


def _check_workflow(template: Template, body: VersionBody) -> Checked:
    """A workflow version holds rules and nothing else; every rule's expression must compile."""
    errors: list[FieldError] = []
    if template.kind is not TemplateKind.workflow:
        errors.append(FieldError("body", "/workflow", f"a {template.kind.value} has no workflow rules"))
        raise InvalidInput(errors)
    if body.workflow is None:
        errors.append(FieldError("body", "/workflow", "a workflow needs its rules and a default", "missing"))
    if body.parts.channels() or body.parts.body is not None or body.locales or body.variables_schema:
        errors.append(
            FieldError("body", "/parts", "a workflow has rules only: no parts, translations or schema")
        )
    for index, rule in enumerate(body.workflow.rules if body.workflow else []):
        problem = rules.check(rule.when)
        if problem is not None:
            where = f"column {problem.column}: " if problem.column else ""
            errors.append(
                FieldError(
                    "body",
                    f"/workflow/rules/{index}/when",
                    f"rule '{rule.name}': {where}{problem.message}",
                    "expression",
                    column=problem.column,
                )
            )
    if errors:
        raise InvalidInput(errors)
    return Checked(body=body, references=set(), warnings=[])


def check_version(session: Session, engine: TemplateEngine, template: Template, body: VersionBody) -> Checked:
    """Everything that must hold for a version to be saved; every problem found is reported at once."""
    if template.kind is TemplateKind.workflow or body.workflow is not None:
        return _check_workflow(template, body)
    errors: list[FieldError] = []
    warnings: list[TemplateWarning] = []
    references: set[str] = set()
    schema = body.variables_schema

    for label, pointer, parts in _all_parts(body):
        has_channels = bool(parts.channels())
        if template.kind is TemplateKind.communication and parts.body is not None:
            errors.append(
                FieldError("body", f"{pointer}/body", "a communication has parts per channel, not a body")
            )
        if template.kind is not TemplateKind.communication and has_channels:
            errors.append(
                FieldError("body", pointer, f"a {template.kind.value} has a body only, not parts per channel")
            )
        for sub in analysis.sub_parts(parts, pointer):
            part = f"{label}{sub.name}"
            try:
                tree = analysis.parse(engine.environment, sub.source)
                if template.kind is not TemplateKind.communication and editable.regions(
                    engine.environment, sub.source
                ):
                    errors.append(
                        _source_error(
                            sub,
                            part,
                            None,
                            "only a communication's own parts may have editable regions: a layout's or "
                            "snippet's text is shared, so it stays locked",
                        )
                    )
                    continue
                analysis.check_safety(tree)
                found = analysis.references(tree)
                paths = analysis.data_paths(tree)
                # Compiling now reports what parsing cannot (an unknown filter or test) before anything runs.
                engine.environment.compile(sub.source)
            except analysis.TemplateProblem as problem:
                errors.append(_source_error(sub, part, problem.finding.line, problem.finding.message))
                continue
            except TemplateSyntaxError as exc:
                errors.append(_source_error(sub, part, exc.lineno, exc.message or "cannot be compiled"))
                continue
            except RecursionError:
                errors.append(_source_error(sub, part, None, "expressions are nested too deeply to be read"))
                continue
            for name, line in found:
                if name == template.key:
                    errors.append(
                        FieldError(
                            "body",
                            sub.pointer,
                            f"line {line}: a template cannot use itself",
                            "template",
                            line=line,
                            part=part,
                        )
                    )
                    continue
                target = session.scalars(select(Template).where(Template.key == name)).one_or_none()
                if target is None or target.kind not in (TemplateKind.layout, TemplateKind.snippet):
                    errors.append(
                        FieldError(
                            "body",
                            sub.pointer,
                            f"line {line}: there is no layout or snippet named '{name}'",
                            "template",
                            line=line,
                            part=part,
                        )
                    )
                    continue
                references.add(name)
            for path, line in paths:
                if analysis.undeclared(path, schema):
                    warnings.append(
                        TemplateWarning(
                            part=part,
                            line=line,
                            variable=path,
                            message=f"{path} is not declared in the schema",
                        )
                    )

    if schema is not None:
        schema_problem = schema_error(schema)
        if schema_problem is not None:
            errors.append(schema_problem)
        else:
            for error in data_errors(schema, body.sample_data, pointer="/sample_data"):
                errors.append(error)

    if errors:
        raise InvalidInput(errors)
    return Checked(body=body, references=references, warnings=warnings)


def _refuse_retrieval(uri: str) -> Resource[Any]:
    raise NoSuchResource(uri)


# No $ref may leave the schema itself: jsonschema would otherwise fetch http: and file: URLs, so an
# author could read the server's files into error messages or make the server call any address.
# (attrs makes `retrieve` an __init__ argument, which the type stubs do not show.)
_NO_REMOTE_REFERENCES: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def _local_references_only(schema: Any, path: str = "/schema") -> FieldError | None:
    if isinstance(schema, dict):
        for keyword in ("$ref", "$dynamicRef"):
            reference = schema.get(keyword)
            if isinstance(reference, str) and not reference.startswith("#"):
                return FieldError(
                    "body", f"{path}/{keyword}", "a schema may only refer to itself (#/...)", "schema"
                )
        for name, value in schema.items():
            found = _local_references_only(value, f"{path}/{name}")
            if found:
                return found
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found = _local_references_only(value, f"{path}/{index}")
            if found:
                return found
    return None


def schema_error(schema: dict[str, Any]) -> FieldError | None:
    """What is wrong with a version's JSON Schema, if anything: against the draft's meta-schema (with the
    path of what is wrong), then compiled as triggers' data will be checked with."""
    remote = _local_references_only(schema)
    if remote is not None:
        return remote
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"/{p}" for p in exc.absolute_path)
        return FieldError("body", f"/schema{where}", f"not a valid JSON Schema: {exc.message}")
    try:
        _compiled(schema)
    except _UNUSABLE_SCHEMA as exc:
        # A reference to a part the schema does not define, or a pattern no regular expression engine
        # can compile: valid against the meta-schema, yet no data could be checked with it.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FieldError("body", "/schema", f"the schema cannot be used: {first}", "schema")
    return None


# What compiling a schema raises (jsonschema_rs.ValidationError is a ValueError; the type stubs do not show
# that ReferencingError is an Exception).
_UNUSABLE_SCHEMA: tuple[type[Exception], ...] = (
    ValueError,
    cast(type[Exception], jsonschema_rs.ReferencingError),
)


def _compiled(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, retriever=_refuse_retrieval_rs)


def _refuse_retrieval_rs(uri: str) -> Any:
    raise ValueError(f"{uri}: a schema may only refer to itself")


class DataValidator:
    """A version's schema compiled once, to check many triggers' data with.

    jsonschema-rs checks a batch row's data in under a microsecond, where the pure-Python validator took
    about 28 us, an eighth of what accepting a row costs in all. A schema published before this check
    that jsonschema-rs cannot compile is checked by the pure-Python validator instead."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._validator: jsonschema_rs.Draft202012Validator | jsonschema.protocols.Validator
        try:
            self._validator = _compiled(schema)
        except _UNUSABLE_SCHEMA:
            self._validator = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.FormatChecker(), registry=_NO_REMOTE_REFERENCES
            )

    def errors(self, data: dict[str, Any], *, pointer: str) -> list[FieldError]:
        """Each way the data breaks the schema, with its JSON pointer, in the data's order."""
        validator = self._validator
        if isinstance(validator, jsonschema_rs.Draft202012Validator):
            if validator.is_valid(data):
                return []
            found = [(list(e.instance_path), e.message) for e in validator.iter_errors(data)]
        else:
            try:
                found = [(list(e.absolute_path), e.message) for e in validator.iter_errors(data)]
            except (Unresolvable, NoSuchResource) as exc:
                return [
                    FieldError(
                        "body",
                        "/schema",
                        f"the schema refers to something it does not define: {exc}",
                        "schema",
                    )
                ]
        # In the data's order: /lines/2 before /lines/10.
        found.sort(
            key=lambda error: [(0, part, "") if isinstance(part, int) else (1, 0, part) for part in error[0]]
        )
        return [
            FieldError("body", pointer + "".join(f"/{part}" for part in path), message, "schema")
            for path, message in found
        ]


def _in_data_order(path: list[Any]) -> list[tuple[int, int, str]]:
    """A sort key for error paths: /lines/2 before /lines/10."""
    return [(0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path]


def data_validator(schema: dict[str, Any] | None) -> DataValidator | None:
    """A version's schema compiled once, to check many triggers' data with."""
    return DataValidator(schema) if schema is not None else None


def data_errors(schema: dict[str, Any], data: dict[str, Any], *, pointer: str) -> list[FieldError]:
    return DataValidator(schema).errors(data, pointer=pointer)


def validate_data(schema: dict[str, Any] | None, data: dict[str, Any], *, pointer: str = "/data") -> None:
    """A trigger's or preview's data against the version's schema: 422 with each field's path."""
    if schema is None:
        return
    errors = data_errors(schema, data, pointer=pointer)
    if errors:
        raise InvalidInput(errors)


def _body_from(content: dict[str, Any]) -> VersionBody:
    try:
        return VersionBody.model_validate(content)
    except ValidationError as exc:
        raise InvalidInput(
            [
                FieldError(
                    "body", "".join(f"/{p}" for p in error["loc"]), str(error["msg"]), str(error["type"])
                )
                for error in exc.errors()
            ]
        ) from None


def _set_dependencies(session: Session, version: TemplateVersion, references: set[str]) -> None:
    existing = {
        d.key: d
        for d in session.scalars(
            select(TemplateDependency).where(TemplateDependency.version_id == version.id)
        )
    }
    for key, dependency in existing.items():
        if key not in references:
            session.delete(dependency)
    for key in references - set(existing):
        session.add(TemplateDependency(version_id=version.id, key=key, number=None))


def create_version(
    session: Session, engine: TemplateEngine, *, key: str, body: dict[str, Any], actor: str
) -> tuple[TemplateVersion, list[TemplateWarning]]:
    """A new draft from `body` (a version body), or from version `copy_from` with `body`'s fields merged in
    (as a merge patch, so a part may be given in part). Whoever wrote the copied version stays among its
    contributors: copying a version does not make it someone else's work to approve."""
    template = get_template(session, key=key, for_update=True)
    given = dict(body)
    copy_from = given.pop("copy_from", None)
    contributors: list[str] = []
    if copy_from is not None:
        if not isinstance(copy_from, int) or isinstance(copy_from, bool) or copy_from < 1:
            raise InvalidInput([FieldError("body", "/copy_from", "a version number (1 or more)")])
        source = get_version(session, template=template, number=copy_from)
        given = merge_patch(source.content, given)
        contributors = [name for name in (source.author, *source.contributors) if name != actor]
    checked = check_version(session, engine, template, _body_from(given))
    number = (
        session.scalar(
            select(func.max(TemplateVersion.number)).where(TemplateVersion.template_id == template.id)
        )
        or 0
    ) + 1
    now = utcnow()
    stored = checked.body.stored()
    version = TemplateVersion(
        template_id=template.id,
        number=number,
        status=VersionStatus.draft,
        content=stored,
        content_hash=content_hash(stored),
        author=actor,
        contributors=list(dict.fromkeys(contributors)),
        copied_from=copy_from,
        created_at=now,
        updated_at=now,
    )
    session.add(version)
    session.flush()
    _set_dependencies(session, version, checked.references)
    audit.append(
        session,
        actor=actor,
        action="template.version_created",
        subject_type="template",
        subject_id=key,
        payload={"version": number, "content_hash": version.content_hash, "copied_from": copy_from},
    )
    return version, checked.warnings


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def patch_version(
    session: Session, engine: TemplateEngine, *, key: str, number: int, patch: dict[str, Any], actor: str
) -> tuple[TemplateVersion, list[TemplateWarning]]:
    template = get_template(session, key=key)
    version = get_version(session, template=template, number=number, for_update=True)
    if version.status is not VersionStatus.draft:
        state = version.status.value
        raise VersionStateConflict(
            f"version {number} is {state}: only a draft can be edited; copy it to a new one"
        )
    checked = check_version(session, engine, template, _body_from(merge_patch(version.content, patch)))
    stored = checked.body.stored()
    new_hash = content_hash(stored)
    if new_hash == version.content_hash:
        return version, checked.warnings
    version.content = stored
    version.content_hash = new_hash
    version.updated_at = utcnow()
    if actor != version.author and actor not in version.contributors:
        version.contributors = [*version.contributors, actor]
    _set_dependencies(session, version, checked.references)
    audit.append(
        session,
        actor=actor,
        action="template.version_edited",
        subject_type="template",
        subject_id=key,
        payload={"version": number, "content_hash": new_hash},
    )
    return version, checked.warnings


def _transition(
    session: Session, *, key: str, number: int, expected: VersionStatus, verb: str
) -> tuple[Template, TemplateVersion]:
    template = get_template(session, key=key, for_update=True)
    version = get_version(session, template=template, number=number, for_update=True)
    if version.status is not expected:
        raise VersionStateConflict(
            f"version {number} is {version.status.value}; only a {expected.value} version can be {verb}"
        )
    return template, version


def submit_version(
    session: Session, engine: TemplateEngine, *, key: str, number: int, actor: str
) -> TemplateVersion:
    """draft -> in_review: checked again, and the layouts and snippets it uses pinned as now live."""
    template, version = _transition(
        session, key=key, number=number, expected=VersionStatus.draft, verb="submitted"
    )
    body = _body_from(version.content)
    checked = check_version(session, engine, template, body)
    if template.kind is TemplateKind.communication and not body.parts.channels():
        raise InvalidInput(
            [FieldError("body", "/parts", "a communication needs at least one channel's part")]
        )
    if template.kind in (TemplateKind.layout, TemplateKind.snippet) and body.parts.body is None:
        raise InvalidInput([FieldError("body", "/parts/body", f"a {template.kind.value} needs a body")])
    pins: dict[str, int] = {}
    unpublished = []
    for reference in sorted(checked.references):
        target = get_template(session, key=reference)
        live = live_version(session, target)
        if live is None:
            unpublished.append(reference)
        else:
            pins[reference] = live.number
    if unpublished:
        raise InvalidInput(
            [
                FieldError("body", "/parts", f"'{name}' has no published version to pin")
                for name in unpublished
            ]
        )
    for dependency in session.scalars(
        select(TemplateDependency).where(TemplateDependency.version_id == version.id)
    ):
        dependency.number = pins.get(dependency.key)
    version.status = VersionStatus.in_review
    version.submitted_at = utcnow()
    audit.append(
        session,
        actor=actor,
        action="template.version_submitted",
        subject_type="template",
        subject_id=key,
        payload={"version": number, "content_hash": version.content_hash, "pins": pins},
    )
    return version


def _four_eyes(session: Session, version: TemplateVersion, actor: str, verb: str) -> None:
    """Whoever wrote or edited a version may not decide on it: compared by person, not by key, so that one
    person's author key and approver key do not add up to two pairs of eyes."""
    writers = people(session, [version.author, *version.contributors])
    if people(session, [actor]) & writers:
        raise Forbidden(f"you wrote this version, so someone else must {verb} it (four-eyes rule)")


def approve_version(session: Session, *, key: str, number: int, actor: str) -> TemplateVersion:
    _, version = _transition(
        session, key=key, number=number, expected=VersionStatus.in_review, verb="approved"
    )
    _four_eyes(session, version, actor, "approve")
    version.status = VersionStatus.approved
    version.approver = actor
    version.decided_at = utcnow()
    audit.append(
        session,
        actor=actor,
        action="template.version_approved",
        subject_type="template",
        subject_id=key,
        payload={"version": number, "content_hash": version.content_hash},
    )
    return version


def reject_version(session: Session, *, key: str, number: int, reason: str, actor: str) -> TemplateVersion:
    _, version = _transition(
        session, key=key, number=number, expected=VersionStatus.in_review, verb="rejected"
    )
    _four_eyes(session, version, actor, "reject")
    version.status = VersionStatus.rejected
    version.approver = actor
    version.rejection_reason = reason
    version.decided_at = utcnow()
    audit.append(
        session,
        actor=actor,
        action="template.version_rejected",
        subject_type="template",
        subject_id=key,
        payload={"version": number, "reason": reason},
    )
    return version


def publish_version(
    session: Session,
    engine: TemplateEngine,
    *,
    key: str,
    number: int,
    effective_from: dt.datetime | None,
    actor: str,
) -> TemplateVersion:
    """Make an approved version live, now or at `effective_from`. Publishing an older one is the rollback."""
    template = get_template(session, key=key, for_update=True)
    version = get_version(session, template=template, number=number)
    if version.status is not VersionStatus.approved:
        raise VersionStateConflict(
            f"version {number} is {version.status.value}; only an approved version can be published"
        )
    now = utcnow()
    if effective_from is not None:
        if effective_from.tzinfo is None:
            raise InvalidInput(
                [FieldError("body", "/effective_from", "give a time zone (such as Z or +01:00)")]
            )
        if effective_from < now - dt.timedelta(minutes=1):
            raise InvalidInput([FieldError("body", "/effective_from", "must not be in the past")])
    when = max(effective_from or now, now)
    previous = live_version(session, template, when)
    session.add(
        TemplatePublication(
            template_id=template.id,
            version_id=version.id,
            effective_from=when,
            published_at=now,
            published_by=actor,
        )
    )
    session.flush()
    engine.warm(loaded(session, template, version))
    audit.append(
        session,
        actor=actor,
        action="template.version_published",
        subject_type="template",
        subject_id=key,
        payload={
            "version": number,
            "content_hash": version.content_hash,
            "effective_from": when,
            "replaces": previous.number if previous else None,
        },
    )
    return version


def loaded(session: Session, template: Template, version: TemplateVersion) -> LoadedVersion:
    pins = None
    if version.status is not VersionStatus.draft:
        pins = {
            d.key: d.number
            for d in session.scalars(
                select(TemplateDependency).where(TemplateDependency.version_id == version.id)
            )
            if d.number is not None
        }
    return LoadedVersion(
        key=template.key,
        number=version.number,
        kind=template.kind,
        default_locale=template.default_locale,
        content=version.content,
        content_hash=version.content_hash,
        pins=pins,
    )


# --- diff and usage --------------------------------------------------------------------------------------


def _flatten(content: dict[str, Any]) -> dict[str, str]:
    """Each diffable piece of a version as text: parts per locale, schema, sample data, notes."""
    pieces: dict[str, str] = {}
    for label, parts in [("", content.get("parts", {}))] + [
        (f"{locale}:", parts) for locale, parts in sorted(content.get("locales", {}).items())
    ]:
        for channel, fields in parts.items():
            if isinstance(fields, str):
                pieces[f"{label}{channel}"] = fields
                continue
            for field_name, value in fields.items():
                pieces[f"{label}{channel}.{field_name}"] = str(value)
    for name in ("schema", "sample_data"):
        if name in content:
            pieces[name] = json.dumps(content[name], indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if content.get("notes"):
        pieces["notes"] = str(content["notes"])
    return pieces


def diff_versions(session: Session, *, key: str, number: int, against: int) -> list[tuple[str, str]]:
    template = get_template(session, key=key)
    new = _flatten(get_version(session, template=template, number=number).content)
    old = _flatten(get_version(session, template=template, number=against).content)
    changes = []
    for piece in sorted(set(new) | set(old)):
        before, after = old.get(piece, ""), new.get(piece, "")
        if before == after:
            continue
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"{key} v{against} {piece}",
            tofile=f"{key} v{number} {piece}",
        )
        changes.append((piece, "".join(line if line.endswith("\n") else line + "\n" for line in lines)))
    return changes


def usage(session: Session, *, key: str) -> list[tuple[str, int, str, int | None]]:
    """Where a layout or snippet is used: (template, version, status, pinned version)."""
    get_template(session, key=key)
    rows = session.execute(
        select(Template, TemplateVersion, TemplateDependency.number)
        .join(TemplateVersion, TemplateVersion.template_id == Template.id)
        .join(TemplateDependency, TemplateDependency.version_id == TemplateVersion.id)
        .where(TemplateDependency.key == key)
        .order_by(Template.key, TemplateVersion.number)
    ).all()
    result = []
    shown_by_template: dict[int, dict[int, _Shown]] = {}
    for template, version, pinned in rows:
        shown = shown_by_template.setdefault(template.id, _shown_states(session, template))
        result.append((template.key, version.number, str(_summary(version, shown)["status"]), pinned))
    return result


def version_loader(database: Database) -> Callable[[str, int | None], LoadedVersion]:
    """What the engine calls the first time it needs a layout or snippet version (None: the live one)."""

    def load(key: str, number: int | None) -> LoadedVersion:
        with database.read() as session:
            template = session.scalars(select(Template).where(Template.key == key)).one_or_none()
            if template is None:
                raise LookupError(key)
            version = (
                live_version(session, template)
                if number is None
                else session.scalars(
                    select(TemplateVersion).where(
                        TemplateVersion.template_id == template.id, TemplateVersion.number == number
                    )
                ).one_or_none()
            )
            if version is None:
                raise LookupError(f"{key} {number}")
            return loaded(session, template, version)

    return load


def make_engine(database: Database, settings: Settings) -> TemplateEngine:
    return TemplateEngine(
        load_version=version_loader(database),
        output_limit=settings.render_output_limit,
        time_limit=settings.render_time_limit,
    )


def warm_live_versions(database: Database, engine: TemplateEngine) -> int:
    """Compile every live version's parts, so that the first send after a start compiles nothing.
    A version that fails to compile is logged and skipped: it will report its problem when used."""
    warmed = 0
    with database.read() as session:
        for template in list_templates(session):
            version = live_version(session, template)
            if version is None:
                continue
            try:
                engine.warm(loaded(session, template, version))
            except Exception:  # noqa: BLE001 - start-up must not fail on one template
                log.warning("template %s v%s did not compile", template.key, version.number)
                continue
            warmed += 1
    return warmed
