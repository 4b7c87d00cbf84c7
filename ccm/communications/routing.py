"""The routing decision: which channels a communication goes to, in what order, and what is suppressed.

- Channels asked for explicitly all receive it ("all"); otherwise the customer's preferred channels, then
  the template's other channels, form a fallback chain: the first is tried, a permanent failure moves on.
- Consent: marketing needs an opt-in on that channel; a service or regulatory message goes unless the
  customer withdrew that channel for service messages (an SMS STOP, for instance). Regulatory documents go
  electronically (email, SMS, portal) only with e-delivery consent, otherwise by print. Every channel left
  out is said in the log (`communication.suppressed`), never skipped silently.
- Frequency caps (CCM_FREQUENCY_CAPS): at most N communications of a category per customer in a period.
- SMS quiet hours: outside CCM_SMS_SEND_WINDOW in the customer's time zone, an SMS waits for the window.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccm.channels import Channel
from ccm.communications.models import Communication
from ccm.config import Settings, parse_cap
from ccm.customers.models import Consent
from ccm.db import lock_name
from ccm.templates_engine.models import Category

ELECTRONIC = (Channel.email, Channel.sms, Channel.portal)
_ADDRESSES = {
    Channel.email: "email address",
    Channel.sms: "mobile number",
    Channel.print: "postal address",
    Channel.portal: "portal",
}
# The template's channels, when the customer states no preference: cheapest and quickest first.
DEFAULT_ORDER = (Channel.email, Channel.sms, Channel.portal, Channel.print)
COUNTED = ("routed", "sent", "delivered", "failed")  # statuses that count against a frequency cap


class Routable(Protocol):
    """What the decision reads of a communication: an ORM object, or a row read with these columns."""

    @property
    def id(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def channels(self) -> list[str]: ...
    @property
    def decision(self) -> dict[str, Any] | None: ...


class Recipient(Protocol):
    """What the decision reads of a customer (besides the channels that reach them)."""

    @property
    def id(self) -> int: ...
    @property
    def e_delivery(self) -> bool: ...
    @property
    def preferred_channels(self) -> list[str]: ...


@dataclass
class Decision:
    mode: str  # "all" | "fallback"
    chain: list[Channel]
    suppressed: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None  # why nothing goes, when the chain is empty

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "chain": [c.value for c in self.chain],
            "suppressed": self.suppressed,
            **({"reason": self.reason} if self.reason else {}),
        }


def consents_of(session: Session, customer: Recipient) -> dict[tuple[str, str], bool]:
    """The customer's consents: (channel, purpose) -> granted."""
    return consents_of_many(session, [customer.id])[customer.id]


def consents_of_many(session: Session, customer_ids: Iterable[int]) -> dict[int, dict[tuple[str, str], bool]]:
    """Many customers' consents, read at once."""
    found: dict[int, dict[tuple[str, str], bool]] = {i: {} for i in customer_ids}
    for row in session.execute(
        select(Consent.customer_id, Consent.channel, Consent.purpose, Consent.granted).where(
            Consent.customer_id.in_(list(found))
        )
    ):
        found[row.customer_id][(row.channel, row.purpose)] = row.granted
    return found


def decide(
    session: Session,
    settings: Settings,
    *,
    communication: Routable,
    customer: Recipient,
    parts: Set[str],
    reachable: set[Channel],
    now: dt.datetime,
    consents: Mapping[tuple[str, str], bool] | None = None,
) -> Decision:
    asked = [Channel(c) for c in communication.channels]
    decided = communication.decision or {}
    # An agent's outcome may have named a follow-up (no answer -> a letter); else the rule's own routing.
    workflow = decided.get("follow_up", {}).get("routing") or decided.get("outcome", {}).get("routing")
    unusable: list[dict[str, str]] = []
    if workflow is not None:
        # The workflow's rule decides: all of its channels, or its fallback chain, or the customer's
        # preferences among its channels (the sender's channels first, when it named some).
        listed = [Channel(c) for c in workflow.get("channels", [])]
        if workflow.get("mode") == "preferred":
            allowed = [c for c in (listed or DEFAULT_ORDER)]
            first = asked or [Channel(c) for c in customer.preferred_channels]
            listed = [c for c in first if c in allowed] + [c for c in allowed if c not in first]
        for channel in listed:
            if channel.value not in parts:
                unusable.append({"channel": channel.value, "reason": f"the template has no {channel} part"})
            elif channel not in reachable:
                unusable.append(
                    {"channel": channel.value, "reason": f"the customer has no {_ADDRESSES[channel]}"}
                )
        usable = [c for c in listed if c.value in parts and c in reachable]
        decision = Decision("all" if workflow.get("mode") == "all" else "fallback", usable, unusable)
    elif asked:
        decision = Decision("all", list(asked))
    else:
        preferred = [Channel(c) for c in customer.preferred_channels if c in parts]
        rest = [c for c in DEFAULT_ORDER if c.value in parts and c not in preferred]
        decision = Decision("fallback", [c for c in preferred + rest if c in reachable])

    def drop(channel: Channel, reason: str) -> None:
        if channel in decision.chain:
            decision.chain.remove(channel)
            decision.suppressed.append({"channel": channel.value, "reason": reason})

    category = communication.category
    if consents is None:
        consents = consents_of(session, customer)
    if category == Category.regulatory.value and not customer.e_delivery:
        for channel in ELECTRONIC:
            drop(channel, "a regulatory document goes electronically only with e-delivery consent")
        if (
            Channel.print not in decision.chain
            and Channel.print.value in parts
            and Channel.print in reachable
        ):
            decision.chain.append(Channel.print)
    for channel in list(decision.chain):
        if category == Category.marketing.value:
            if consents.get((channel.value, "marketing")) is not True:
                withdrawn = consents.get((channel.value, "marketing")) is False
                drop(
                    channel,
                    f"marketing {'consent withdrawn' if withdrawn else 'needs an opt-in'} on {channel}",
                )
        elif consents.get((channel.value, "service")) is False:
            drop(channel, f"the customer withdrew {channel} for service messages")

    cap = settings.frequency_caps.get(category)
    if cap and decision.chain:
        count, seconds = parse_cap(cap)
        # Two routings for one customer at once must not both slip under the cap.
        lock_name(session, f"cap:{customer.id}:{category}")
        recent = session.scalar(
            select(func.count())
            .select_from(Communication)
            .where(
                Communication.customer_id == customer.id,
                Communication.category == category,
                Communication.id != communication.id,
                # What went out (was routed) in the period; not what is scheduled for later.
                Communication.status.in_(COUNTED),
                Communication.due_at >= now - dt.timedelta(seconds=seconds),
                Communication.due_at <= now,
            )
        )
        if (recent or 0) >= count:
            for channel in list(decision.chain):
                drop(channel, f"frequency cap: {cap} {category} communications")
    if not decision.chain:
        decision.reason = (
            "; ".join(s["reason"] for s in decision.suppressed) or "no channel can reach the customer"
        )
    return decision


def _window(settings: Settings) -> tuple[dt.time, dt.time]:
    start, end = settings.sms_send_window.split("-")
    end_time = dt.time.max if end == "24:00" else dt.time.fromisoformat(end)
    return dt.time.fromisoformat(start), end_time


def next_sms_time(settings: Settings, timezone: str | None, now: dt.datetime) -> dt.datetime | None:
    """When an SMS may go out, in UTC, if not now: the next opening of the send window in the customer's
    time zone. None: now is inside the window."""
    zone = zoneinfo.ZoneInfo(timezone or "UTC")
    local = now.astimezone(zone)
    start, end = _window(settings)
    if start <= local.time() < end:
        return None
    day = local.date() if local.time() < start else local.date() + dt.timedelta(days=1)
    opening = dt.datetime.combine(day, start, tzinfo=zone)
    return opening.astimezone(dt.UTC)
