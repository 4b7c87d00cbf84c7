"""ccm's errors; each maps to one RFC 9457 problem type.

    CCMError                  500 internal-error
    ├── BadRequest            400 bad-request
    ├── Unauthorized          401 unauthorized
    ├── Forbidden             403 forbidden
    ├── NotFound              404 not-found
    ├── Conflict              409 conflict
    └── InvalidInput          422 validation-error (carries field errors)

Problem `type` values are URNs (`urn:ccm:problem:<slug>`), listed in docs/errors.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

PROBLEM_PREFIX = "urn:ccm:problem:"


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one input field. `path` is a JSON pointer into the part named by `location`."""

    location: str  # "body", "query", "path", "header"
    path: str
    message: str
    type: str = "invalid"
    line: int | None = None  # for template sources: the line the problem is on
    part: str | None = None  # for template sources: the part, such as "email.html" or "fr:sms.body"
    column: int | None = None  # for expressions: the character (from 1) the problem is at

    def as_dict(self) -> dict[str, str | int]:
        result: dict[str, str | int] = {
            "in": self.location,
            "path": self.path,
            "message": self.message,
            "type": self.type,
        }
        if self.part is not None:
            result["part"] = self.part
        if self.line is not None:
            result["line"] = self.line
        if self.column is not None:
            result["column"] = self.column
        return result


class CCMError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extensions = extensions

    @property
    def problem_type(self) -> str:
        return PROBLEM_PREFIX + self.slug


class BadRequest(CCMError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(CCMError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(CCMError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(CCMError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(CCMError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidInput(CCMError):
    status = 422
    slug = "validation-error"
    title = "Invalid input"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e.path or '/'}: {e.message}" for e in errors))
        self.errors = errors
