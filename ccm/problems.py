"""Turning every error into RFC 9457 problem JSON, with field paths for validation errors."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ccm.errors import PROBLEM_PREFIX, CCMError, FieldError, InvalidInput, Unauthorized

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized", 403: "forbidden", 409: "conflict"}


# PostgreSQL's deadlock_detected and serialization_failure: rolled back, and safe to send again.
_TRANSIENT_SQLSTATES = {"40P01", "40001"}


def is_transient_database_error(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def log_unexpected(exc: BaseException, request_id: str | None) -> None:
    """Log a fault with its stack, but never a database's own message: PostgreSQL quotes row values
    ("Failing row contains (...)"), and customer data must not reach the logs."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or "-"
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unhandled error %s (SQLSTATE %s) request_id=%s\n%s",
            type(exc.orig).__name__,
            sqlstate,
            request_id,
            frames,
        )
    else:
        log.error("unhandled error request_id=%s", request_id, exc_info=exc)


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value is not None else None


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail or title,
        "instance": request.url.path,
    }
    body.update(extensions or {})
    request_id = request_id_of(request)
    if request_id:
        body["request_id"] = request_id
    response_headers = dict(headers or {})
    if request_id:
        response_headers["X-Request-ID"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=response_headers)


def _pointer(parts: Sequence[int | str]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def field_errors_from_validation(exc: RequestValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        location = str(loc[0]) if loc else "body"
        parts = loc[1:]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        kind = str(error.get("type", "invalid"))
        if kind == "json_invalid":
            reason = error.get("ctx", {}).get("error", "invalid JSON")
            message = f"the body is not valid JSON: {reason}"
            parts = []
        errors.append(FieldError(location, _pointer(parts), message, kind))
    return errors


def install(app: FastAPI) -> None:
    @app.exception_handler(CCMError)
    async def _ccm_error(request: Request, exc: CCMError) -> JSONResponse:
        extensions = dict(exc.extensions)
        if isinstance(exc, InvalidInput):
            extensions["errors"] = [e.as_dict() for e in exc.errors]
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return problem_response(
            request,
            status=exc.status,
            slug=exc.slug,
            title=exc.title,
            detail=exc.detail,
            extensions=extensions,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors_from_validation(exc)
        return problem_response(
            request,
            status=422,
            slug=InvalidInput.slug,
            title=InvalidInput.title,
            detail="; ".join(f"{e.location} {e.path or '/'}: {e.message}" for e in errors),
            extensions={"errors": [e.as_dict() for e in errors]},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        slug = _SLUGS.get(status, phrase.lower().replace(" ", "-"))
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
        if status == 404 and detail is None:
            detail = f"nothing at {request.method} {request.url.path}"
        if status == 405 and detail is None:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            request, status=status, slug=slug, title=phrase, detail=detail, headers=dict(exc.headers or {})
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_transient_database_error(exc):
            return problem_response(
                request,
                status=503,
                slug="busy",
                title="Busy",
                detail="the request collided with another one; nothing was saved, send it again",
                headers={"Retry-After": "1"},
            )
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(exc, request_id_of(request))
        return problem_response(
            request,
            status=500,
            slug=CCMError.slug,
            title=CCMError.title,
            detail="something went wrong on our side; quote the request id when you report it",
        )
