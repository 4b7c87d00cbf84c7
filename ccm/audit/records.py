"""What the database says was sent, checked against the artifact store and the audit log.

Every artifact a row references is read back hash-checked (ArtifactStore.verify): each delivery's
`artifact_sha256` and its `details.attachments[].sha256`, each portal message's `html_sha256`, each portal
document's `sha256`, each print batch's `pdf_sha256` and `manifest_sha256`. A delivery's artifact is also
compared with its `delivery.rendered` event, whose payload logged the hash before anything was sent, and a
print batch's files with its `print_batch.created` event: a row edited behind ccm's back no longer matches the
hash-chained log.

Rows are streamed (yield_per), never loaded whole; an artifact two rows of one delivery share (a portal
message's HTML is its delivery's artifact, its documents are the delivery's attachments) is read once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, and_, cast, exists, or_, select
from sqlalchemy.orm import Session

from ccm.audit.models import AuditEvent
from ccm.channels.artifacts import ArtifactError, ArtifactStore
from ccm.channels.models import PortalDocument, PortalMessage, PrintBatch
from ccm.communications.models import Delivery
from ccm.db import STREAM_ROWS

RENDERED = "delivery.rendered"
BATCH_CREATED = "print_batch.created"
PORTAL_HTML = "text/html; charset=utf-8"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ArtifactProblem:
    """The first artifact (or artifact reference) that does not hold, and the row that references it."""

    problem: str
    referenced_by: str  # "delivery", "portal_message", "portal_document", "print_batch"
    reference_id: str
    field: str  # the column (or JSON path) holding the hash, such as "artifact_sha256"
    sha256: str | None
    seq: int | None = None  # the audit event the row no longer matches, if that is the problem

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "referenced_by": {"type": self.referenced_by, "id": self.reference_id, "field": self.field},
            "seq": self.seq,
            "problem": self.problem,
        }


def _attachment_hashes(details: Any) -> list[str]:
    attachments = details.get("attachments") if isinstance(details, dict) else None
    if not isinstance(attachments, list):
        return []
    return [str(a.get("sha256")) for a in attachments if isinstance(a, dict)]


def _json_object(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _logged(payload: str) -> tuple[str | None, list[str]]:
    """The artifact hash and attachment hashes a delivery.rendered event logged."""
    data = _json_object(payload)
    artifact = data.get("artifact")
    return (artifact if isinstance(artifact, str) else None), _attachment_hashes(data.get("details"))


class _Checker:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.checked = 0

    def check(self, sha256: str, kind: str, reference_id: str, field: str) -> ArtifactProblem | None:
        self.checked += 1
        try:
            self.store.verify(sha256)
        except ArtifactError as exc:  # altered, missing, or not a hash at all
            where = f"{kind} {reference_id}, {field}"
            return ArtifactProblem(f"{exc} ({where})", kind, reference_id, field, sha256)
        return None

    def seen(self) -> None:
        """A reference to an artifact already read back for the same delivery: counted, not read again."""
        self.checked += 1


def _deliveries(session: Session, checker: _Checker, batch_size: int) -> ArtifactProblem | None:
    """Each delivery's artifact and attachments, against its delivery.rendered event and the store."""
    rows = session.execute(
        select(Delivery.id, Delivery.artifact_sha256, Delivery.details, AuditEvent.seq, AuditEvent.payload)
        .outerjoin(
            AuditEvent,
            and_(
                AuditEvent.subject_type == "delivery",
                AuditEvent.subject_id == Delivery.id,
                AuditEvent.action == RENDERED,
            ),
        )
        .where(or_(Delivery.artifact_sha256.is_not(None), AuditEvent.seq.is_not(None)))
        .order_by(Delivery.id, AuditEvent.seq)
        .execution_options(yield_per=batch_size)
    )
    for delivery_id, artifact, details, seq, payload in rows:
        attachments = _attachment_hashes(details)
        if seq is None:
            problem = (
                f"delivery {delivery_id} names artifact {artifact}, which no {RENDERED} event logged: "
                "the row was changed outside ccm"
            )
            return ArtifactProblem(problem, "delivery", delivery_id, "artifact_sha256", artifact)
        logged, logged_attachments = _logged(payload)
        if artifact != logged:
            problem = (
                f"delivery {delivery_id} was changed outside ccm: its artifact_sha256 is {artifact}, "
                f"but event {seq} ({RENDERED}) logged {logged}"
            )
            return ArtifactProblem(problem, "delivery", delivery_id, "artifact_sha256", artifact, seq)
        if attachments != logged_attachments:
            problem = (
                f"delivery {delivery_id} was changed outside ccm: its attachments are "
                f"{', '.join(attachments) or 'none'}, but event {seq} ({RENDERED}) logged "
                f"{', '.join(logged_attachments) or 'none'}"
            )
            field = "details.attachments"
            return ArtifactProblem(problem, "delivery", delivery_id, field, None, seq)
        if artifact is None:
            continue
        if found := checker.check(artifact, "delivery", delivery_id, "artifact_sha256"):
            return found
        for index, sha256 in enumerate(attachments):
            field = f"details.attachments[{index}].sha256"
            if sha256 == artifact or sha256 in attachments[:index]:
                checker.seen()
            elif found := checker.check(sha256, "delivery", delivery_id, field):
                return found
    return None


def _rendered_without_delivery(session: Session) -> ArtifactProblem | None:
    """A delivery.rendered event whose delivery row is gone."""
    row = session.execute(
        select(AuditEvent.seq, AuditEvent.subject_id)
        .where(
            AuditEvent.action == RENDERED,
            AuditEvent.subject_type == "delivery",
            ~exists().where(Delivery.id == AuditEvent.subject_id),
        )
        .order_by(AuditEvent.seq)
        .limit(1)
    ).first()
    if row is None:
        return None
    seq, delivery_id = row
    problem = f"event {seq} ({RENDERED}) logs delivery {delivery_id}, which is no longer in the database"
    return ArtifactProblem(problem, "delivery", delivery_id, "id", None, seq)


def _portal(session: Session, checker: _Checker, batch_size: int) -> ArtifactProblem | None:
    messages = session.execute(
        select(PortalMessage.id, PortalMessage.html_sha256, Delivery.artifact_sha256)
        .outerjoin(Delivery, Delivery.id == PortalMessage.delivery_id)
        .order_by(PortalMessage.id)
        .execution_options(yield_per=batch_size)
    )
    for message_id, html, delivered in messages:
        if html == delivered:
            checker.seen()  # the delivery's artifact, read back above
        elif found := checker.check(html, "portal_message", message_id, "html_sha256"):
            return found
    documents = session.execute(
        select(PortalDocument.id, PortalDocument.sha256, Delivery.details)
        .join(PortalMessage, PortalMessage.id == PortalDocument.message_id)
        .outerjoin(Delivery, Delivery.id == PortalMessage.delivery_id)
        .order_by(PortalDocument.id)
        .execution_options(yield_per=batch_size)
    )
    for document_id, sha256, details in documents:
        if sha256 in _attachment_hashes(details):
            checker.seen()
        elif found := checker.check(sha256, "portal_document", document_id, "sha256"):
            return found
    return None


def _print_batches(session: Session, checker: _Checker, batch_size: int) -> ArtifactProblem | None:
    """Each batch's PDF and manifest, against its print_batch.created event (which logged both), and read
    back from the store."""
    batches = session.execute(
        select(
            PrintBatch.id,
            PrintBatch.pdf_sha256,
            PrintBatch.manifest_sha256,
            AuditEvent.seq,
            AuditEvent.payload,
        )
        .outerjoin(
            AuditEvent,
            and_(
                AuditEvent.subject_type == "print_batch",
                AuditEvent.subject_id == PrintBatch.id,
                AuditEvent.action == BATCH_CREATED,
            ),
        )
        .order_by(PrintBatch.created_at, PrintBatch.id, AuditEvent.seq)
        .execution_options(yield_per=batch_size)
    )
    for batch_id, pdf, manifest, seq, payload in batches:
        logged = _json_object(payload) if seq is not None else {}
        for field, key, sha256 in (("pdf_sha256", "pdf", pdf), ("manifest_sha256", "manifest", manifest)):
            if sha256 is None and seq is None:
                continue  # still being laid out: nothing stored or logged yet
            if seq is None:
                problem = (
                    f"print batch {batch_id} names {key} {sha256}, which no {BATCH_CREATED} event logged: "
                    "the row was changed outside ccm"
                )
                return ArtifactProblem(problem, "print_batch", batch_id, field, sha256)
            if sha256 != logged.get(key):
                problem = (
                    f"print batch {batch_id} was changed outside ccm: its {field} is {sha256}, "
                    f"but event {seq} ({BATCH_CREATED}) logged {logged.get(key)}"
                )
                return ArtifactProblem(problem, "print_batch", batch_id, field, sha256, seq)
            if sha256 is not None and (found := checker.check(sha256, "print_batch", batch_id, field)):
                return found
    return None


def verify_artifacts(
    session: Session, store: ArtifactStore, *, batch_size: int = STREAM_ROWS
) -> tuple[int, ArtifactProblem | None]:
    """How many artifact references were checked, and the first that does not hold (None: all hold)."""
    checker = _Checker(store)
    problem = (
        _deliveries(session, checker, batch_size)
        or _rendered_without_delivery(session)
        or _portal(session, checker, batch_size)
        or _print_batches(session, checker, batch_size)
    )
    return checker.checked, problem


# --- which row references an artifact (for downloading it) ---------------------------------------------


@dataclass(frozen=True)
class ArtifactReference:
    kind: str  # "delivery", "portal_message", "portal_document", "print_batch"
    id: str
    media_type: str | None


_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(; ?[\w.+-]+=[\w.+-]+)*$")


def safe_media_type(value: str | None) -> str | None:
    """A stored media type fit for a Content-Type header, or None."""
    return value if value and len(value) <= 100 and _MEDIA_TYPE.match(value) else None


def find_reference(session: Session, sha256: str) -> ArtifactReference | None:
    """A row that references the artifact `sha256`, with the media type it was stored as; None when nothing
    does (the store may still hold the file, but nothing entitles anyone to it)."""
    if not _SHA256.match(sha256):
        return None
    delivery = session.execute(
        select(Delivery.id, Delivery.media_type).where(Delivery.artifact_sha256 == sha256).limit(1)
    ).first()
    if delivery is not None:
        return ArtifactReference("delivery", delivery.id, delivery.media_type)
    document = session.execute(
        select(PortalDocument.id, PortalDocument.media_type).where(PortalDocument.sha256 == sha256).limit(1)
    ).first()
    if document is not None:
        return ArtifactReference("portal_document", document.id, document.media_type)
    message = session.scalar(select(PortalMessage.id).where(PortalMessage.html_sha256 == sha256).limit(1))
    if message is not None:
        return ArtifactReference("portal_message", message, PORTAL_HTML)
    batch = session.execute(
        select(PrintBatch.id, PrintBatch.pdf_sha256)
        .where(or_(PrintBatch.pdf_sha256 == sha256, PrintBatch.manifest_sha256 == sha256))
        .limit(1)
    ).first()
    if batch is not None:
        media_type = "application/pdf" if batch.pdf_sha256 == sha256 else "text/csv; charset=utf-8"
        return ArtifactReference("print_batch", batch.id, media_type)
    # An attachment (an email's letter PDF) is named only inside a delivery's details: the text is searched
    # for the hash (hex: nothing LIKE treats specially), and the match confirmed on the parsed details.
    candidates = session.execute(
        select(Delivery.id, Delivery.details).where(cast(Delivery.details, Text).contains(sha256))
    )
    for delivery_id, details in candidates:
        for attachment in (details or {}).get("attachments") or []:
            if isinstance(attachment, dict) and attachment.get("sha256") == sha256:
                return ArtifactReference("delivery", delivery_id, attachment.get("media_type"))
    return None
