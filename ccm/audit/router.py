"""HTTP endpoints for auditors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ccm import audit
from ccm.auth.deps import DatabaseDep, require
from ccm.auth.models import Role
from ccm.auth.service import Principal

router = APIRouter(tags=["audit"])

Auditor = Annotated[Principal, Depends(require(Role.auditor))]


@router.get("/v1/audit/verify")
def verify_chain(database: DatabaseDep, principal: Auditor) -> dict[str, Any]:
    """Recompute the whole hash chain; `first_problem` names the first event that does not fit."""
    with database.snapshot() as session:
        return audit.verify(session).as_dict()
