"""FastAPI dependencies: the database, and the key and role a request must carry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from ccm.auth.models import Role
from ccm.auth.service import Principal, authenticate
from ccm.config import Settings
from ccm.db import Database
from ccm.errors import Forbidden, Unauthorized


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings_from_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]


def _bearer_key(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")  # also in RequestGuard
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return key


def require(*roles: Role) -> Callable[[Request, Database, Settings], Principal]:
    """A dependency that admits a valid key whose role is one of `roles` (admin is always admitted)."""
    allowed = frozenset(roles) | {Role.admin}

    def dependency(request: Request, database: DatabaseDep, settings: SettingsDep) -> Principal:
        key = _bearer_key(request)
        bootstrap = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
        with database.read() as session:
            principal = authenticate(session, key=key, bootstrap_key=bootstrap)
        if principal is None:
            raise Unauthorized("this API key is unknown or revoked")
        request.state.principal = principal
        if principal.role not in allowed:
            wanted = ", ".join(sorted(role.value for role in allowed))
            raise Forbidden(f"this needs one of the roles {wanted}; the key has role {principal.role.value}")
        return principal

    return dependency


def any_role() -> Callable[[Request, Database, Settings], Principal]:
    return require(*Role)
