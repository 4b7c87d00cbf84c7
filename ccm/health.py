"""Liveness and readiness probes: the only endpoints that need no API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ccm import migrations
from ccm.auth.deps import DatabaseDep
from ccm.problems import problem_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
def ready(request: Request, database: DatabaseDep) -> dict[str, Any] | JSONResponse:
    """The database answers and its schema is at the newest migration."""
    head = migrations.head_revision()
    try:
        with database.read_connection() as connection:
            connection.execute(text("SELECT 1"))
            current = migrations.current_revision(connection)
    except SQLAlchemyError as exc:
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            title="Not ready",
            detail=f"the database does not answer ({type(exc).__name__})",
        )
    if current != head:
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            title="Not ready",
            detail=f"the database schema is at {current or 'nothing'}, not {head}: run `ccm db upgrade`",
        )
    return {"status": "ready", "database": database.dialect, "schema": current}
