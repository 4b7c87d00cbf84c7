"""How many SMS segments a text takes, and in which encoding (GSM 03.38 7-bit, or UCS-2)."""

from __future__ import annotations

import enum
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


def _character_units(text: str) -> tuple[SmsEncoding, list[int]]:
    """Each character's size in its encoding: GSM septets (2 for extension characters such as €), or UTF-16
    code units (2 for characters outside the BMP, such as most emoji)."""
    try:
        sizes = [len(character.encode("gsm03.38")) for character in text]
        return SmsEncoding.gsm7, sizes
    except UnicodeEncodeError:
        return SmsEncoding.ucs2, [len(character.encode("utf-16-le")) // 2 for character in text]


def count_segments(text: str) -> SmsSegments:
    encoding, sizes = _character_units(text)
    units = sum(sizes)
    single, per_part = _LIMITS[encoding]
    if units <= single:
        return SmsSegments(encoding=encoding, units=units, segments=1)
    # Concatenated: a character is never split across two parts (an escape and its character, or the two
    # halves of a surrogate pair, travel together), so a part may end a unit short.
    segments, used = 1, 0
    for size in sizes:
        if used + size > per_part:
            segments, used = segments + 1, 0
        used += size
    return SmsSegments(encoding=encoding, units=units, segments=segments)
