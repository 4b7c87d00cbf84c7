"""How many SMS segments a text takes, and in which encoding (GSM 03.38 7-bit, or UCS-2)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import gsm0338  # noqa: F401  # registers the "gsm03.38" codec


class SmsEncoding(enum.StrEnum):
    gsm7 = "GSM-7"
    ucs2 = "UCS-2"


# Characters per segment: one segment alone, or each part of a concatenated message (whose header takes room).
_LIMITS = {SmsEncoding.gsm7: (160, 153), SmsEncoding.ucs2: (70, 67)}


@dataclass(frozen=True)
class SmsSegments:
    encoding: SmsEncoding
    units: int  # GSM septets (extension characters such as € count two) or UTF-16 code units
    segments: int


def count_segments(text: str) -> SmsSegments:
    try:
        units = len(text.encode("gsm03.38"))
        encoding = SmsEncoding.gsm7
    except UnicodeEncodeError:
        units = len(text.encode("utf-16-le")) // 2
        encoding = SmsEncoding.ucs2
    single, multi = _LIMITS[encoding]
    segments = 1 if units <= single else math.ceil(units / multi)
    return SmsSegments(encoding=encoding, units=units, segments=segments)
