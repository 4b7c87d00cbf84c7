"""`ccm templates sync`: folders under templates/ become drafts where content changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from ccm.db import Database
from ccm.errors import CCMError, InvalidInput
from ccm.templates_engine import files, service
from ccm.templates_engine.models import (
    Template,
    TemplateDependency,
    VersionStatus,
)
from ccm.templates_engine.render import TemplateEngine
from ccm.templates_engine.schemas import TemplateUpdate


class SyncFailed(CCMError):
    status = 422
    slug = "sync-failed"
    title = "Templates not synced"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    drafts: list[tuple[str, int]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def sync(database: Database, engine: TemplateEngine, root: Path, *, actor: str) -> SyncReport:
    """Read every folder first; then, in one transaction, create templates and new drafts. Any problem in any
    folder rolls everything back and is reported with its file."""
    try:
        folders = files.read_tree(root)
    except files.FolderError as exc:
        raise SyncFailed([str(exc)]) from None
    report = SyncReport()
    problems: list[str] = []
    with database.transaction() as session:
        for folder in folders:
            key = folder.template.key
            existing = session.scalars(select(Template).where(Template.key == key)).one_or_none()
            if existing is None:
                service.create_template(session, body=folder.template, actor=actor)
                report.created.append(key)
                continue
            if existing.default_locale != folder.template.default_locale:
                where = folder.path / files.METADATA_FILE
                problems.append(
                    f"{where}: default_locale is {existing.default_locale} in ccm; versions depend on it, "
                    "so it cannot change"
                )
                continue
            if existing.kind is not folder.template.kind:
                where = folder.path / files.METADATA_FILE
                problems.append(f"{where}: kind is {existing.kind.value} in ccm, and a kind cannot change")
                continue
            update = TemplateUpdate(
                name=folder.template.name,
                description=folder.template.description,
                category=folder.template.category,
            )
            before = existing.updated_at
            service.update_template(session, key=key, body=update, actor=actor)
            if existing.updated_at != before:
                report.updated.append(key)
        for folder in folders:
            key = folder.template.key
            template = service.get_template(session, key=key)
            stored = folder.body.stored()
            latest = service.newest_version(session, template)
            if latest is not None and latest.content_hash == service.content_hash(stored):
                report.unchanged.append(key)
                continue
            try:
                version, _ = service.create_version(session, engine, key=key, body=stored, actor=actor)
            except InvalidInput as exc:
                problems.extend(files.describe_invalid(folder.path, exc))
                continue
            report.drafts.append((key, version.number))
        if problems:
            raise SyncFailed(problems)
    return report


def publish_all(
    database: Database, engine: TemplateEngine, keys: list[str], *, author: str, approver: str
) -> list[tuple[str, int]]:
    """For the demo only: take each template that has nothing live through review to live, as two demo people
    (author, approver), and only a newest version that the demo author itself wrote. So it never publishes
    anyone else's work, and never undoes a publication or rollback made since. A template goes after every
    layout and snippet it uses, since submitting pins their live versions."""
    published = []
    for key in _dependency_order(database, keys):
        with database.transaction() as session:
            template = service.get_template(session, key=key)
            latest = service.newest_version(session, template)
            if latest is None:
                continue
            if service.live_version(session, template) is not None or latest.author != author:
                continue
            number = latest.number
            if latest.status is VersionStatus.draft:
                service.submit_version(session, engine, key=key, number=number, actor=author)
            if latest.status in (VersionStatus.draft, VersionStatus.in_review):
                service.approve_version(session, key=key, number=number, actor=approver)
            if latest.status is VersionStatus.approved:
                service.publish_version(
                    session, engine, key=key, number=number, effective_from=None, actor=approver
                )
                published.append((key, number))
    return published


def _dependency_order(database: Database, keys: list[str]) -> list[str]:
    """`keys` ordered so that each comes after the layouts and snippets its newest version uses."""
    uses: dict[str, set[str]] = {}
    with database.read() as session:
        for key in keys:
            template = service.get_template(session, key=key)
            latest = service.newest_version(session, template)
            uses[key] = set()
            if latest is not None:
                uses[key] = set(
                    session.scalars(
                        select(TemplateDependency.key).where(TemplateDependency.version_id == latest.id)
                    )
                )
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(key: str) -> None:
        if key in ordered:
            return
        if key in visiting:
            raise SyncFailed([f"templates use each other in a circle through '{key}'"])
        visiting.add(key)
        for used in sorted(uses.get(key, ())):
            if used in uses:
                visit(used)
        visiting.discard(key)
        ordered.append(key)

    for key in sorted(keys):
        visit(key)
    return ordered
