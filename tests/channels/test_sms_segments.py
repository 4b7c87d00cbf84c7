"""SMS segments: GSM-7 or UCS-2, and how many parts a text takes."""

from __future__ import annotations

import pytest

from ccm.channels.sms_segments import SmsEncoding, count_segments


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("x" * 160, SmsEncoding.gsm7, 160, 1),
        ("x" * 161, SmsEncoding.gsm7, 161, 2),
        ("x" * 306, SmsEncoding.gsm7, 306, 2),
        ("x" * 307, SmsEncoding.gsm7, 307, 3),
        ("€" * 80, SmsEncoding.gsm7, 160, 1),  # extension characters take two septets
        ("x" * 152 + "€" + "x" * 152, SmsEncoding.gsm7, 306, 3),  # the € cannot be split across parts
        ("Ça coûte 5 €", SmsEncoding.ucs2, 12, 1),  # û is not in the GSM alphabet
        ("☕" * 70, SmsEncoding.ucs2, 70, 1),
        ("x" * 66 + "😀" + "x" * 66, SmsEncoding.ucs2, 134, 3),  # a surrogate pair stays whole
    ],
)
def test_segments(text: str, encoding: SmsEncoding, units: int, segments: int) -> None:
    counted = count_segments(text)
    assert (counted.encoding, counted.units, counted.segments) == (encoding, units, segments)
