"""A workflow definition as business users write it (YAML under templates/workflows/, or JSON over the API).

rules:                       tried in order; the first whose `when` is true decides
  - name: large-or-vulnerable
    when: data.amount > 10000 or customer.attributes.vulnerable
    then: review             # automated | review | agent | suppress
    queue: claims            # review and agent: the queue the task waits in
    sla: 4h                  # review and agent: due this long after the message came in
    approvals: 2             # review: how many people approve it (1 to 3)
    routing: {mode: all, channels: [print, email]}
    delay: 1h                # optional: sent this much later
default:                     # when no rule matches
  then: automated
  routing: {mode: preferred}
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator, model_validator

from ccm.channels import Channel
from ccm.inputs import InputModel

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_DURATION = dt.timedelta(days=366)


def parse_duration(text: str) -> dt.timedelta:
    """'90m', '4h', '1d', '1h30m': a span of days, hours, minutes, seconds; at most a year."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError("a duration such as 30m, 4h, 2d or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    span = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if span > MAX_DURATION:
        raise ValueError("at most a year (366d)")
    return span


Duration = Annotated[str, StringConstraints(max_length=40)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]


class Then(enum.StrEnum):
    automated = "automated"  # sent without anyone looking at it
    review = "review"  # waits for a person to approve (and perhaps edit) it
    agent = "agent"  # a person handles it directly: a call or a visit
    suppress = "suppress"  # not sent, with the reason


class RoutingMode(enum.StrEnum):
    preferred = "preferred"  # the customer's preferred channels first, then the others: a fallback chain
    all = "all"  # every channel listed, each a delivery
    fallback = "fallback"  # the channels listed, in order, each tried when the one before fails


class Routing(InputModel):
    mode: RoutingMode = RoutingMode.preferred
    channels: list[Channel] = Field(
        default_factory=list,
        max_length=4,
        description="For all and fallback: the channels. For preferred: the channels allowed (all if none).",
    )

    @model_validator(mode="after")
    def _channels(self) -> Routing:
        if self.mode is not RoutingMode.preferred and not self.channels:
            raise ValueError(f"routing mode {self.mode.value} needs its channels")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("a channel is listed twice")
        return self


class AgentOutcome(enum.StrEnum):
    """What an agent records after handling a customer in person."""

    reached = "reached"
    no_answer = "no_answer"
    voicemail = "voicemail"
    refused = "refused"


class Outcome(InputModel):
    then: Then
    routing: Routing = Field(default_factory=Routing)
    delay: Duration | None = None
    queue: Name | None = None
    sla: Duration | None = None
    approvals: int | None = Field(default=None, ge=1, le=3)
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)] | None = (
        None
    )
    follow_up: dict[AgentOutcome, Routing] | None = Field(
        default=None,
        description="agent: what is sent after each outcome the agent records, e.g. no_answer: a letter.",
    )

    @field_validator("delay", "sla")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _fits(self) -> Outcome:
        if self.then is Then.suppress and self.reason is None:
            raise ValueError("suppress needs a reason (it is recorded and shown)")
        if self.then is not Then.suppress and self.reason is not None:
            raise ValueError("a reason is given only with suppress")
        person = self.then in (Then.review, Then.agent)
        if not person and (self.queue is not None or self.sla is not None):
            raise ValueError("queue and sla are for review and agent only")
        if self.then is not Then.review and self.approvals is not None:
            raise ValueError("approvals are for review only")
        if self.then is not Then.agent and self.follow_up is not None:
            raise ValueError("follow_up is for agent only")
        return self

    def delay_span(self) -> dt.timedelta | None:
        return parse_duration(self.delay) if self.delay else None

    def sla_span(self) -> dt.timedelta | None:
        return parse_duration(self.sla) if self.sla else None


class Rule(Outcome):
    name: Name
    when: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class WorkflowDefinition(InputModel):
    rules: list[Rule] = Field(default_factory=list, max_length=100)
    default: Outcome

    @model_validator(mode="after")
    def _names(self) -> WorkflowDefinition:
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("two rules have the same name")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
