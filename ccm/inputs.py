"""The base of every request body: unknown fields refused, and values no database stores faithfully refused
at the edge (NUL characters, which PostgreSQL rejects; NaN and infinity, which JSON cannot carry)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError


def _check(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise PydanticCustomError("nul_character", "text must not contain NUL characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("non_finite_number", "numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key)
            _check(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check(item)


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        _check(value)
        return value
