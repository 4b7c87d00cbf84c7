"""HTTP endpoints for templates: authoring, the four-eyes lifecycle, diff, usage and preview."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, status

from ccm.auth.deps import DatabaseDep, SettingsDep, any_role, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.errors import FieldError, InvalidInput
from ccm.templates_engine import preview as previews
from ccm.templates_engine import service
from ccm.templates_engine.render import TemplateEngine
from ccm.templates_engine.schemas import (
    KEY_PATTERN,
    PartDiff,
    PreviewOut,
    PreviewRequest,
    Publish,
    Reason,
    TemplateCreate,
    TemplateDetail,
    TemplateOut,
    TemplateUpdate,
    Usage,
    VersionDiff,
    VersionOut,
)

router = APIRouter(tags=["templates"])

Key = Annotated[str, Path(pattern=KEY_PATTERN, description="The template's key, such as `payment_reminder`.")]
Number = Annotated[int, Path(ge=1)]
Author = Annotated[Principal, Depends(require(Role.author))]
Approver = Annotated[Principal, Depends(require(Role.approver))]
Reviewer = Annotated[Principal, Depends(require(Role.author, Role.approver, Role.auditor))]
Previewer = Annotated[Principal, Depends(require(Role.author, Role.approver))]
Anyone = Annotated[Principal, Depends(any_role())]


def get_engine(request: Request) -> TemplateEngine:
    engine: TemplateEngine = request.app.state.engine
    return engine


EngineDep = Annotated[TemplateEngine, Depends(get_engine)]


@router.post("/v1/templates", status_code=status.HTTP_201_CREATED, response_model=TemplateOut)
def create_template(body: TemplateCreate, database: DatabaseDep, principal: Author) -> TemplateOut:
    with database.transaction() as session:
        template = service.create_template(session, body=body, actor=principal.actor)
        return service.template_out(session, template)


@router.get("/v1/templates")
def list_templates(database: DatabaseDep, principal: Anyone) -> dict[str, list[TemplateOut]]:
    with database.read() as session:
        return {"items": [service.template_out(session, t) for t in service.list_templates(session)]}


@router.get("/v1/templates/{key}", response_model=TemplateDetail)
def get_template(key: Key, database: DatabaseDep, principal: Anyone) -> TemplateDetail:
    with database.read() as session:
        template = service.get_template(session, key=key)
        return TemplateDetail(
            **service.template_out(session, template).model_dump(),
            versions=service.version_summaries(session, template),
        )


@router.patch("/v1/templates/{key}", response_model=TemplateOut)
def update_template(key: Key, body: TemplateUpdate, database: DatabaseDep, principal: Author) -> TemplateOut:
    with database.transaction() as session:
        template = service.update_template(session, key=key, body=body, actor=principal.actor)
        return service.template_out(session, template)


@router.post("/v1/templates/{key}/versions", status_code=status.HTTP_201_CREATED, response_model=VersionOut)
def create_version(
    key: Key,
    database: DatabaseDep,
    engine: EngineDep,
    principal: Author,
    body: Annotated[
        dict[str, Any],
        Body(
            description="A version body ({parts, locales, schema, sample_data, notes}), or `copy_from` "
            "(a version number) with the fields to change, merged in as in PATCH."
        ),
    ],
) -> VersionOut:
    """A new draft: empty, with the content given, or copied from `copy_from` with the fields given on top."""
    with database.transaction() as session:
        version, warnings = service.create_version(session, engine, key=key, body=body, actor=principal.actor)
        template = service.get_template(session, key=key)
        return service.version_out(session, template, version, warnings)


@router.get("/v1/templates/{key}/versions/{number}", response_model=VersionOut)
def get_version(key: Key, number: Number, database: DatabaseDep, principal: Anyone) -> VersionOut:
    with database.read() as session:
        template = service.get_template(session, key=key)
        return service.version_out(
            session, template, service.get_version(session, template=template, number=number)
        )


@router.patch("/v1/templates/{key}/versions/{number}", response_model=VersionOut)
def patch_version(
    key: Key,
    number: Number,
    database: DatabaseDep,
    engine: EngineDep,
    principal: Author,
    patch: Annotated[dict[str, Any], Body(description="A JSON merge patch (RFC 7396) of the version body.")],
) -> VersionOut:
    """Edit a draft: given fields replace, objects merge, null removes. A submitted version is 409."""
    with database.transaction() as session:
        version, warnings = service.patch_version(
            session, engine, key=key, number=number, patch=patch, actor=principal.actor
        )
        template = service.get_template(session, key=key)
        return service.version_out(session, template, version, warnings)


@router.post("/v1/templates/{key}/versions/{number}/submit", response_model=VersionOut)
def submit_version(
    key: Key, number: Number, database: DatabaseDep, engine: EngineDep, principal: Author
) -> VersionOut:
    with database.transaction() as session:
        version = service.submit_version(session, engine, key=key, number=number, actor=principal.actor)
        return service.version_out(session, service.get_template(session, key=key), version)


@router.post("/v1/templates/{key}/versions/{number}/approve", response_model=VersionOut)
def approve_version(key: Key, number: Number, database: DatabaseDep, principal: Approver) -> VersionOut:
    """Approve a version in review. Whoever wrote or edited it cannot (403)."""
    with database.transaction() as session:
        version = service.approve_version(session, key=key, number=number, actor=principal.actor)
        return service.version_out(session, service.get_template(session, key=key), version)


@router.post("/v1/templates/{key}/versions/{number}/reject", response_model=VersionOut)
def reject_version(
    key: Key, number: Number, body: Reason, database: DatabaseDep, principal: Approver
) -> VersionOut:
    with database.transaction() as session:
        version = service.reject_version(
            session, key=key, number=number, reason=body.reason, actor=principal.actor
        )
        return service.version_out(session, service.get_template(session, key=key), version)


@router.post("/v1/templates/{key}/versions/{number}/publish", response_model=VersionOut)
def publish_version(
    key: Key,
    number: Number,
    database: DatabaseDep,
    engine: EngineDep,
    principal: Approver,
    body: Publish | None = None,
) -> VersionOut:
    """Make an approved version live now, or at `effective_from`. Publishing an older one is the rollback."""
    with database.transaction() as session:
        version = service.publish_version(
            session,
            engine,
            key=key,
            number=number,
            effective_from=body.effective_from if body else None,
            actor=principal.actor,
        )
        return service.version_out(session, service.get_template(session, key=key), version)


@router.get("/v1/templates/{key}/versions/{number}/diff", response_model=VersionDiff)
def diff_versions(
    key: Key,
    number: Number,
    database: DatabaseDep,
    principal: Reviewer,
    against: Annotated[int | None, Query(ge=1, description="Default: the version before.")] = None,
) -> VersionDiff:
    other = against if against is not None else number - 1
    if other < 1:
        raise InvalidInput(
            [FieldError("query", "/against", "version 1 has no version before it: give `against`")]
        )
    with database.read() as session:
        changes = service.diff_versions(session, key=key, number=number, against=other)
    return VersionDiff(
        template=key, version=number, against=other, changes=[PartDiff(part=p, diff=d) for p, d in changes]
    )


@router.get("/v1/templates/{key}/usage")
def template_usage(key: Key, database: DatabaseDep, principal: Reviewer) -> dict[str, list[Usage]]:
    """Which template versions use this layout or snippet, and the version of it each one pinned."""
    with database.read() as session:
        rows = service.usage(session, key=key)
    return {"items": [Usage(template=t, version=v, status=s, pinned=p) for t, v, s, p in rows]}


@router.post("/v1/templates/{key}/preview", response_model=PreviewOut)
def preview_template(
    key: Key,
    body: PreviewRequest,
    database: DatabaseDep,
    engine: EngineDep,
    settings: SettingsDep,
    principal: Previewer,
) -> PreviewOut:
    """Every part rendered; the SMS with its segments, the letter as a PDF. A part that fails is reported on
    its own: the answer is then a 422 that still carries the parts that rendered."""
    with database.read() as session:
        return previews.preview(session, engine, settings, key=key, request=body)
