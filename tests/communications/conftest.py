"""Deliveries are tested on a copy of the demo database (demo customers, starter templates published), with
the real channel adapters pointed at a real SMTP server, a local fake of Twilio's REST API, WeasyPrint and
the portal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccm.channels import Channel
from ccm.communications import service
from ccm.communications.delivery import Deliverer, make_deliverer
from ccm.communications.models import Communication, Delivery
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database, utcnow
from ccm.templates_engine.service import make_engine
from tests.channels.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.channels.smtp_sink import SmtpSink
from tests.conftest import STARTER_TEMPLATES


@pytest.fixture
def database_url(demo_database_url: str) -> str:
    return demo_database_url


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink, twilio: FakeTwilio) -> Settings:
    """The test settings with every channel pointed at a real local counterpart."""
    return Settings(
        **{
            **settings.model_dump(),
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "email_from": "Northwind Bank <notices@bank.example>",
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_from_number": "+447400123456",
            "twilio_api_base": twilio.base_url,
            "public_base_url": "https://ccm.bank.example",
            # Retries at once and a quick relay: tests wait for outcomes, not for backoff.
            "retry_base_seconds": 0.0,
            "relay_interval": 0.2,
        }
    )


@dataclass
class Sender:
    """Creates communications as the trigger API will, and delivers them with the real adapters."""

    database: Database
    settings: Settings
    deliverer: Deliverer

    def create(
        self,
        template: str,
        customer: str,
        data: dict[str, Any],
        channels: list[Channel],
        options: dict[str, Any] | None = None,
    ) -> list[str]:
        with self.database.transaction() as session:
            row = session.scalars(select(Customer).where(Customer.external_id == customer)).one()
            communication = service.create_communication(
                session,
                self.settings,
                template_key=template,
                customer=row,
                data=data,
                channels=channels,
                actor="test:sender",
                options=options,
            )
            return self._routed(session, communication)

    def _routed(self, session: Session, communication: Communication) -> list[str]:
        """Routes it here (unless the app's relay got there first), and marks its deliveries as in the queue's
        hands, so that the pipeline running in a test's app leaves them to this test."""
        if communication.status == "accepted":  # its deliveries made as queued now
            routed = service.route_many(session, self.settings, [communication.id], actor="test:router")
            return [d.id for d in routed.deliveries]
        deliveries = service.deliveries_of(session, communication.id)
        for delivery in deliveries:
            delivery.enqueued_at = utcnow()
        return [d.id for d in deliveries]

    def create_for(self, communication_id: str) -> list[str]:
        """The deliveries of a communication made by ccm itself (a portal notice), once routed."""
        with self.database.transaction() as session:
            communication = service.get_communication(session, communication_id, for_update=True)
            return self._routed(session, communication)

    def send(self, *args: Any, **kwargs: Any) -> Delivery:
        [delivery_id] = self.create(*args, **kwargs)
        self.deliverer.deliver(delivery_id)
        return self.delivery(delivery_id)

    def set_email(self, external_id: str, address: str) -> None:
        with self.database.transaction() as session:
            session.scalars(select(Customer).where(Customer.external_id == external_id)).one().email = address

    def delivery(self, delivery_id: str) -> Delivery:
        with self.database.read() as session:
            return service.get_delivery(session, delivery_id)


@pytest.fixture
def sender(database: Database, settings: Settings) -> Iterator[Sender]:
    deliverer = make_deliverer(database, settings, make_engine(database, settings))
    yield Sender(database, settings, deliverer)
    for adapter in deliverer.adapters.values():
        transport = getattr(adapter, "transport", None)
        if transport is not None:
            transport.close()


def sample(key: str) -> dict[str, Any]:
    """A starter template's own sample data."""
    metadata = yaml.safe_load((STARTER_TEMPLATES / key / "template.yaml").read_text(encoding="utf-8"))
    return dict(metadata["sample_data"])
