"""Creating, listing, revoking and checking API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm import audit
from ccm.auth.models import ApiKey, Role
from ccm.db import utcnow
from ccm.errors import NotFound

KEY_PREFIX = "ccm_"
BOOTSTRAP_KEY_ID = "bootstrap-admin"


@dataclass(frozen=True)
class Principal:
    """Who is making a request: every request is attributed to one key."""

    key_id: str
    name: str
    role: Role
    person: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe here; a slow KDF would only slow every request.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session, *, name: str, role: Role, actor: str, person: str | None = None
) -> tuple[ApiKey, str]:
    """Make a key; returns the stored row and the key itself, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        person=person or name,
        role=role,
        prefix=key[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(key),
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="key.created",
        subject_type="api_key",
        subject_id=row.id,
        payload={"name": name, "person": row.person, "role": role.value, "prefix": row.prefix},
    )
    return row, key


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(session: Session, *, key_id: str, actor: str) -> ApiKey:
    row = session.get(ApiKey, key_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    if row.revoked_at is not None:
        return row  # already revoked: a retried DELETE gets the same answer, and logs nothing new
    row.revoked_at = utcnow()
    row.revoked_by = actor
    audit.append(
        session,
        actor=actor,
        action="key.revoked",
        subject_type="api_key",
        subject_id=row.id,
        payload={"name": row.name, "role": row.role.value},
    )
    return row


def authenticate(session: Session, *, key: str, bootstrap_key: str | None) -> Principal | None:
    if bootstrap_key is not None and hmac.compare_digest(key.encode(), bootstrap_key.encode()):
        return Principal(
            key_id=BOOTSTRAP_KEY_ID,
            name="bootstrap admin (CCM_ADMIN_API_KEY)",
            role=Role.admin,
            person=BOOTSTRAP_KEY_ID,
        )
    row = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    return Principal(key_id=row.id, name=row.name, role=row.role, person=row.person)


def people(session: Session, actors: list[str]) -> set[str]:
    """The people behind actors: a key's person; any other actor (cli:..., demo:...) stands for itself."""
    key_ids = [actor.removeprefix("key:") for actor in actors if actor.startswith("key:")]
    rows = session.execute(select(ApiKey.id, ApiKey.person).where(ApiKey.id.in_(key_ids)))
    persons = {key_id: person for key_id, person in rows}
    found = set()
    for actor in actors:
        key_id = actor.removeprefix("key:")
        found.add(f"person:{persons[key_id]}" if actor.startswith("key:") and key_id in persons else actor)
    return found
