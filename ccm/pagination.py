"""Cursor pagination: opaque cursors that carry the last seen position, tagged with what they page through."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Generic, TypeVar

from pydantic import BaseModel

from ccm.errors import FieldError, InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_MAX_ID = 2**63 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(kind: str, after: int) -> str:
    raw = json.dumps({"k": kind, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def next_cursor(kind: str, last_id: int | None) -> str | None:
    return encode_cursor(kind, last_id) if last_id is not None else None


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """The id a cursor of this `kind` carries; any other string is a 422 on `cursor`."""
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    after = position.get("after") if isinstance(position, dict) else None
    valid = (
        isinstance(position, dict)
        and position.get("k") == kind
        and type(after) is int
        and 0 <= after <= _MAX_ID
    )
    if not valid or not isinstance(after, int):
        raise InvalidInput([FieldError("query", "/cursor", "not a cursor this endpoint gave out")])
    return after


def encode_position(kind: str, position: list[str]) -> str:
    """A cursor for keyset pagination over several columns (a time and an id, say), as text."""
    raw = json.dumps({"k": kind, "at": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(kind: str, cursor: str | None, size: int) -> list[str] | None:
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        decoded = None
    position = decoded.get("at") if isinstance(decoded, dict) else None
    if (
        not isinstance(decoded, dict)
        or decoded.get("k") != kind
        or not isinstance(position, list)
        or len(position) != size
        or not all(isinstance(p, str) for p in position)
    ):
        raise InvalidInput([FieldError("query", "/cursor", "not a cursor this endpoint gave out")])
    return position
