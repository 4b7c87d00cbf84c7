"""Appending to the audit chain and verifying it.

Each event's hash is SHA-256 over `header + "\\n" + payload`, where `header` is the canonical JSON array
`[seq, occurred_at, actor, action, subject_type, subject_id, prev_hash]` and `payload` the canonical JSON
text of the event's payload. Canonical JSON: keys sorted, no insignificant white space, UTF-8, no NaN.
docs/audit.md describes the format so an auditor can check an export without ccm.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from ccm.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
from ccm.db import STREAM_ROWS, utcnow

if TYPE_CHECKING:
    from ccm.audit.records import ArtifactProblem
    from ccm.channels.artifacts import ArtifactStore

CHAIN_HEAD_ID = 1


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} cannot go into an audit payload")


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
)
# What the encoder above writes for a string (quotes, and escapes for `"`, `\\` and control characters only):
# the header's fields are strings, and writing them one by one skips the encoder's walk over a list.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def format_timestamp(value: dt.datetime) -> str:
    """UTC with microseconds, the precision both SQLite and PostgreSQL keep."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_digest(
    *,
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    prev_hash: str,
    payload: str,
) -> str:
    if type(seq) is int:
        # canonical_json of the same list, written directly (verify's cost is mostly this); a field that is
        # not a string raises TypeError, as canonical_json would for what it cannot encode
        fields = (occurred_at, actor, action, subject_type, subject_id, prev_hash)
        header = f"[{seq},{','.join(map(_json_string, fields))}]"
    else:
        header = canonical_json([seq, occurred_at, actor, action, subject_type, subject_id, prev_hash])
    return hashlib.sha256(f"{header}\n{payload}".encode()).hexdigest()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Record an event chained to the previous one, inside the caller's transaction.

    The chain head stays locked until the caller commits, so call this as the last write of a transaction.
    Inside `batched(session)` the event waits to be chained with the others appended there.
    """
    event = NewEvent(actor, action, subject_type, subject_id, payload or {})
    waiting: list[NewEvent] | None = session.info.get(_BATCH)
    if waiting is not None:
        waiting.append(event)
    else:
        append_many(session, [event])


_BATCH = "ccm.audit.batch"


@contextmanager
def batched(session: Session) -> Iterator[None]:
    """Events appended inside are chained and inserted together on leaving (one head lock, one insert,
    in the order they were appended), and not at all if it is left by an exception. For a transaction that
    records the steps of many messages: it must not read its own events back, nor append any inside a
    savepoint it may roll back."""
    if _BATCH in session.info:
        raise RuntimeError("audit.batched() is already open on this session")
    waiting: list[NewEvent] = []
    session.info[_BATCH] = waiting
    try:
        yield
    finally:
        del session.info[_BATCH]
    append_many(session, waiting)


@dataclass(frozen=True)
class NewEvent:
    actor: str
    action: str
    subject_type: str
    subject_id: str
    payload: Mapping[str, Any]


_EVENTS = cast(Table, AuditEvent.__table__)
_HEAD = cast(Table, AuditChainHead.__table__)
# Built once: every transaction that logs runs these, and building a statement costs more than running it.
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == CHAIN_HEAD_ID).with_for_update()
_INSERT_EVENTS = insert(_EVENTS)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == CHAIN_HEAD_ID)
    .values(seq=bindparam("seq", type_=_HEAD.c.seq.type), hash=bindparam("hash", type_=_HEAD.c.hash.type))
)


def append_many(session: Session, events: list[NewEvent]) -> None:
    """Record events in order, chained, with one head lock and one insert. Core statements, read fresh
    from the database each time: never chained onto a head this session read earlier."""
    if not events:
        return
    seq, previous = session.execute(_READ_HEAD).one()
    occurred_at = format_timestamp(utcnow())
    rows = []
    for event in events:
        seq += 1
        payload_text = canonical_json(dict(event.payload))
        digest = event_digest(
            seq=seq,
            occurred_at=occurred_at,
            actor=event.actor,
            action=event.action,
            subject_type=event.subject_type,
            subject_id=event.subject_id,
            prev_hash=previous,
            payload=payload_text,
        )
        rows.append(
            {
                "seq": seq,
                "occurred_at": occurred_at,
                "actor": event.actor,
                "action": event.action,
                "subject_type": event.subject_type,
                "subject_id": event.subject_id,
                "payload": payload_text,
                "prev_hash": previous,
                "hash": digest,
            }
        )
        previous = digest
    session.execute(_INSERT_EVENTS, rows)
    session.execute(_MOVE_HEAD, {"seq": seq, "hash": previous})


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


@dataclass(frozen=True)
class VerifyResult:
    events_checked: int
    head_seq: int
    head_hash: str
    first_problem: ChainProblem | None
    # None when only the chain was verified; else how many artifact references were checked.
    artifacts_checked: int | None = None
    artifact_problem: ArtifactProblem | None = None

    @property
    def ok(self) -> bool:
        return self.first_problem is None and self.artifact_problem is None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_problem": (
                {"seq": self.first_problem.seq, "problem": self.first_problem.problem}
                if self.first_problem
                else None
            ),
        }
        if self.artifacts_checked is not None:
            result["artifacts"] = {
                "checked": self.artifacts_checked,
                "first_problem": self.artifact_problem.as_dict() if self.artifact_problem else None,
            }
        return result


def verify(
    session: Session, *, batch_size: int = STREAM_ROWS, artifacts: ArtifactStore | None = None
) -> VerifyResult:
    """Recompute the whole chain from the first event and report the first event that does not fit; then,
    given the artifact store, check every artifact the database references (ccm.audit.records).

    Give it a session from Database.snapshot(): the head and the events must be read from one state of the
    database, or an event committed in between looks like one added behind ccm's back.
    """
    chain = _verify_chain(session, batch_size=batch_size)
    if artifacts is None:
        return chain
    from ccm.audit import records  # the channel tables; the chain alone needs none of them

    checked, problem = records.verify_artifacts(session, artifacts, batch_size=batch_size)
    return dataclasses.replace(chain, artifacts_checked=checked, artifact_problem=problem)


def _verify_chain(session: Session, *, batch_size: int) -> VerifyResult:
    head = session.get(AuditChainHead, CHAIN_HEAD_ID)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    columns = (
        AuditEvent.seq,
        AuditEvent.occurred_at,
        AuditEvent.actor,
        AuditEvent.action,
        AuditEvent.subject_type,
        AuditEvent.subject_id,
        AuditEvent.payload,
        AuditEvent.prev_hash,
        AuditEvent.hash,
    )
    rows = session.execute(select(*columns).order_by(AuditEvent.seq).execution_options(yield_per=batch_size))
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0

    def result(problem: ChainProblem | None) -> VerifyResult:
        return VerifyResult(checked, head_seq, head_hash, problem)

    for seq, occurred_at, actor, action, subject_type, subject_id, payload, stored_prev, stored_hash in rows:
        if seq != expected_seq:
            if seq > expected_seq:
                missing = (
                    f"event {expected_seq}" if seq == expected_seq + 1 else f"events {expected_seq}-{seq - 1}"
                )
                return result(
                    ChainProblem(
                        expected_seq, f"{missing} missing: event {seq} follows event {expected_seq - 1}"
                    )
                )
            return result(ChainProblem(seq, f"event {seq} appears out of order"))
        if stored_prev != prev_hash:
            return result(
                ChainProblem(seq, f"event {seq} does not link to event {seq - 1}: one of them was altered")
            )
        try:
            digest = event_digest(
                seq=seq,
                occurred_at=occurred_at,
                actor=actor,
                action=action,
                subject_type=subject_type,
                subject_id=subject_id,
                prev_hash=stored_prev,
                payload=payload,
            )
        except (TypeError, ValueError):
            problem = f"event {seq} was altered: a column holds a value ccm never writes"
            return result(ChainProblem(seq, problem))
        if digest != stored_hash:
            return result(ChainProblem(seq, f"event {seq} was altered: its content does not match its hash"))
        checked += 1
        prev_hash = stored_hash
        expected_seq += 1

    last_seq = expected_seq - 1
    if last_seq < head_seq:
        missing = f"event {head_seq}" if head_seq == last_seq + 1 else f"events {last_seq + 1}-{head_seq}"
        return result(
            ChainProblem(last_seq + 1, f"{missing} missing: the chain head records event {head_seq}")
        )
    if last_seq > head_seq:
        return result(
            ChainProblem(
                head_seq + 1, f"event {head_seq + 1} was added outside ccm: the chain head ends at {head_seq}"
            )
        )
    if prev_hash != head_hash:
        return result(
            ChainProblem(last_seq, f"event {last_seq} does not match the hash the chain head records")
        )
    return result(None)
