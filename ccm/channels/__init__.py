"""Channel adapters: email, SMS, print and portal. The channel names are the product's shared vocabulary."""

from __future__ import annotations

import enum


class Channel(enum.StrEnum):
    email = "email"
    sms = "sms"
    print = "print"
    portal = "portal"
