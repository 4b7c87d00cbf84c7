"""HTTP endpoints for API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from ccm.auth import service
from ccm.auth.deps import DatabaseDep, any_role, require
from ccm.auth.models import Role
from ccm.auth.schemas import KeyCreate, KeyCreated, KeyList, KeyOut, WhoAmI
from ccm.auth.service import Principal

router = APIRouter(tags=["keys"])

Admin = Annotated[Principal, Depends(require(Role.admin))]
AnyKey = Annotated[Principal, Depends(any_role())]


@router.post("/v1/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, database: DatabaseDep, principal: Admin) -> KeyCreated:
    """Create an API key. The key is in the answer's `key` field, this once only."""
    with database.transaction() as session:
        row, key = service.create_key(
            session, name=body.name, role=body.role, person=body.person, actor=principal.actor
        )
        return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=key)


@router.get("/v1/keys", response_model=KeyList)
def list_keys(database: DatabaseDep, principal: Admin, include_revoked: bool = False) -> KeyList:
    with database.read() as session:
        rows = service.list_keys(session, include_revoked=include_revoked)
        return KeyList(items=[KeyOut.model_validate(row) for row in rows])


@router.delete("/v1/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, database: DatabaseDep, principal: Admin) -> KeyOut:
    """Revoke a key: it stops working at once and stays listed, for the record."""
    with database.transaction() as session:
        return KeyOut.model_validate(service.revoke_key(session, key_id=key_id, actor=principal.actor))


@router.get("/v1/me", response_model=WhoAmI)
def who_am_i(principal: AnyKey) -> WhoAmI:
    """The key this request was made with: handy for checking an integration's credentials."""
    return WhoAmI(key_id=principal.key_id, name=principal.name, person=principal.person, role=principal.role)
