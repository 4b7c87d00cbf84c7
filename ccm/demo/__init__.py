"""Demo data for `make run`: customers of a bank, an insurer and a utility, with their consents."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ccm.customers import service as customers
from ccm.customers.schemas import ConsentsIn, CustomerIn
from ccm.db import Database


@dataclass
class DemoSummary:
    customers_created: int = 0
    customers_updated: int = 0
    customers_unchanged: int = 0


def demo_customers() -> list[dict[str, Any]]:
    text = resources.files("ccm.demo").joinpath("customers.json").read_text(encoding="utf-8")
    records: list[dict[str, Any]] = json.loads(text)
    return records


def load_demo(database: Database, *, actor: str) -> DemoSummary:
    summary = DemoSummary()
    # One transaction per customer: a transaction that locks many customers while holding the audit chain
    # head would deadlock against API requests that lock one customer and then the head.
    for record in demo_customers():
        with database.transaction() as session:
            profile = CustomerIn.model_validate(record["profile"])
            _, outcome = customers.upsert_customer(
                session, external_id=record["external_id"], profile=profile, actor=actor
            )
            if outcome is customers.UpsertOutcome.created:
                summary.customers_created += 1
            elif outcome is customers.UpsertOutcome.updated:
                summary.customers_updated += 1
            else:
                summary.customers_unchanged += 1
            customers.update_consents(
                session,
                external_id=record["external_id"],
                body=ConsentsIn.model_validate({**record["consents"], "source": "demo"}),
                actor=actor,
            )
    return summary
