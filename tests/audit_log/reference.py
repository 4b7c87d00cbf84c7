"""A reference for what each filter of the auditors' endpoints must return, computed in Python over the whole
(small) log of a test database, independently of the SQL the endpoints run."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ccm.audit.models import AuditEvent
from ccm.communications.models import Communication, Delivery
from ccm.customers.models import Customer
from ccm.db import Database
from ccm.templates_engine.models import Template, TemplateVersion


@dataclass
class Log:
    events: list[dict[str, Any]]  # as the API shows them (payload parsed)
    communications: dict[str, tuple[str, str, int]]  # id -> customer external_id, template key, version
    deliveries: dict[str, tuple[str, str]]  # id -> communication id, channel

    def seqs(self, **filters: Any) -> list[int]:
        return [event["seq"] for event in self.events if self.passes(event, **filters)]

    def about_communication(self, communication_id: str) -> list[int]:
        return [
            event["seq"]
            for event in self.events
            if (event["subject_type"], event["subject_id"]) == ("communication", communication_id)
            or (
                event["subject_type"] == "delivery"
                and self.deliveries.get(event["subject_id"], ("", ""))[0] == communication_id
            )
        ]

    def concerns(
        self,
        event: dict[str, Any],
        customer: str | None,
        template: str | None,
        version: int | None,
        channel: str | None,
    ) -> bool:
        if customer is None and template is None and version is None and channel is None:
            return True
        kind, subject = event["subject_type"], event["subject_id"]
        if kind == "customer":
            return subject == customer and template is None and channel is None
        if kind == "communication" and subject in self.communications and channel is None:
            communication = self.communications[subject]
        elif kind == "delivery" and subject in self.deliveries:
            communication_id, on = self.deliveries[subject]
            if channel is not None and on != channel:
                return False
            communication = self.communications[communication_id]
        else:
            return False
        return all(
            wanted is None or wanted == actual
            for wanted, actual in zip((customer, template, version), communication, strict=True)
        )

    def passes(
        self,
        event: dict[str, Any],
        *,
        customer: str | None = None,
        template: str | None = None,
        version: int | None = None,
        channel: str | None = None,
        status: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> bool:
        at = moment(event["occurred_at"])
        return (
            self.concerns(event, customer, template, version, channel)
            and (status is None or event["action"] in (f"delivery.{status}", f"communication.{status}"))
            and (actor is None or event["actor"] == actor)
            and (action is None or event["action"] == action)
            and (since is None or at >= moment(since))
            and (until is None or at < moment(until))
        )


def moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_log(database: Database) -> Log:
    with database.read() as session:
        events = [
            {
                "seq": e.seq,
                "occurred_at": e.occurred_at,
                "actor": e.actor,
                "action": e.action,
                "subject_type": e.subject_type,
                "subject_id": e.subject_id,
                "payload": json.loads(e.payload),
                "hash": e.hash,
                "prev_hash": e.prev_hash,
            }
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
        ]
        communications = {
            row.id: (row.external_id, row.key, row.number)
            for row in session.execute(
                select(Communication.id, Customer.external_id, Template.key, TemplateVersion.number)
                .join(Customer, Customer.id == Communication.customer_id)
                .join(Template, Template.id == Communication.template_id)
                .join(TemplateVersion, TemplateVersion.id == Communication.template_version_id)
            )
        }
        deliveries = {
            row.id: (row.communication_id, row.channel)
            for row in session.execute(select(Delivery.id, Delivery.communication_id, Delivery.channel))
        }
    return Log(events, communications, deliveries)
