"""Customer logic: idempotent upserts, consent changes with their history, listing."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccm import audit
from ccm.audit.service import canonical_json
from ccm.customers.models import Consent, ConsentChange, Customer
from ccm.customers.schemas import (
    Address,
    ConsentOut,
    ConsentsIn,
    CustomerConsentsOut,
    CustomerIn,
    CustomerOut,
)
from ccm.db import utcnow
from ccm.errors import NotFound

E_DELIVERY = "e_delivery"


class UpsertOutcome(enum.Enum):
    created = "created"
    updated = "updated"
    unchanged = "unchanged"


def _profile_columns(profile: CustomerIn) -> dict[str, Any]:
    address = profile.address
    return {
        "name": profile.name,
        "email": profile.email,
        "phone": profile.phone,
        "locale": profile.locale,
        "timezone": profile.timezone,
        "address_line1": address.line1 if address else None,
        "address_line2": address.line2 if address else None,
        "address_city": address.city if address else None,
        "address_region": address.region if address else None,
        "address_postal_code": address.postal_code if address else None,
        "address_country": address.country if address else None,
        "attributes": profile.attributes,
    }


def get_customer(session: Session, *, external_id: str, for_update: bool = False) -> Customer:
    query = select(Customer).where(Customer.external_id == external_id)
    if for_update:
        query = query.with_for_update()
    customer = session.scalars(query).one_or_none()
    if customer is None:
        raise NotFound(f"no customer with external_id '{external_id}'")
    return customer


def upsert_customer(
    session: Session, *, external_id: str, profile: CustomerIn, actor: str
) -> tuple[Customer, UpsertOutcome]:
    """Create or replace a profile. The same profile twice writes nothing and logs nothing."""
    columns = _profile_columns(profile)
    existing = session.scalars(
        select(Customer).where(Customer.external_id == external_id).with_for_update()
    ).one_or_none()
    if existing is None:
        now = utcnow()
        customer = Customer(external_id=external_id, created_at=now, updated_at=now, **columns)
        try:
            with session.begin_nested():
                session.add(customer)
        except IntegrityError:
            # Another request created it between our read and our insert (PostgreSQL): update theirs.
            return upsert_customer(session, external_id=external_id, profile=profile, actor=actor)
        audit.append(
            session,
            actor=actor,
            action="customer.created",
            subject_type="customer",
            subject_id=external_id,
            payload={"profile": columns},
        )
        return customer, UpsertOutcome.created

    # Compared as canonical JSON: in Python True == 1 == 1.0, but a change from true to 1 is a change.
    changed = {
        name: value
        for name, value in columns.items()
        if canonical_json(getattr(existing, name)) != canonical_json(value)
    }
    if not changed:
        return existing, UpsertOutcome.unchanged
    for name, value in changed.items():
        setattr(existing, name, value)
    existing.updated_at = utcnow()
    audit.append(
        session,
        actor=actor,
        action="customer.updated",
        subject_type="customer",
        subject_id=external_id,
        payload={"changed": changed},
    )
    return existing, UpsertOutcome.updated


def _consents(session: Session, customer: Customer) -> list[Consent]:
    return list(
        session.scalars(
            select(Consent)
            .where(Consent.customer_id == customer.id)
            .order_by(Consent.channel, Consent.purpose)
        )
    )


def _consent_out(consent: Consent) -> ConsentOut:
    return ConsentOut.model_validate(
        {
            "channel": consent.channel,
            "purpose": consent.purpose,
            "granted": consent.granted,
            "source": consent.source,
            "changed_at": consent.changed_at,
            "changed_by": consent.changed_by,
        }
    )


def customers_out(session: Session, customers: list[Customer]) -> list[CustomerOut]:
    """Many profiles with their consents, in two queries whatever the page size."""
    consents: dict[int, list[Consent]] = {c.id: [] for c in customers}
    if customers:
        rows = session.scalars(
            select(Consent)
            .where(Consent.customer_id.in_(list(consents)))
            .order_by(Consent.channel, Consent.purpose)
        )
        for consent in rows:
            consents[consent.customer_id].append(consent)
    return [_customer_out(customer, consents[customer.id]) for customer in customers]


def customer_out(session: Session, customer: Customer) -> CustomerOut:
    return _customer_out(customer, _consents(session, customer))


class StoredProfile(Protocol):
    """A customer's stored profile as read: an ORM Customer, or a row of the customers table."""

    @property
    def external_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def locale(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def address_line1(self) -> str | None: ...
    @property
    def address_line2(self) -> str | None: ...
    @property
    def address_city(self) -> str | None: ...
    @property
    def address_region(self) -> str | None: ...
    @property
    def address_postal_code(self) -> str | None: ...
    @property
    def address_country(self) -> str | None: ...
    @property
    def attributes(self) -> dict[str, Any]: ...


def address_of(customer: StoredProfile) -> dict[str, str | None] | None:
    """The stored postal address (checked and normalised when it was saved), or None without one."""
    if not (customer.address_line1 and customer.address_city and customer.address_country):
        return None
    return {
        "line1": customer.address_line1,
        "line2": customer.address_line2,
        "city": customer.address_city,
        "region": customer.address_region,
        "postal_code": customer.address_postal_code,
        "country": customer.address_country,
    }


def public_profile(customer: StoredProfile) -> dict[str, Any]:
    """The profile's public fields as stored (checked and normalised when saved): what a template sees as
    `customer`, and the API shows with the consents and the rest."""
    return {
        "external_id": customer.external_id,
        "name": customer.name,
        "email": customer.email,
        "phone": customer.phone,
        "locale": customer.locale,
        "timezone": customer.timezone,
        "address": address_of(customer),
        "attributes": customer.attributes,
    }


def _customer_out(customer: Customer, consents: list[Consent]) -> CustomerOut:
    profile = public_profile(customer)
    if profile["address"] is not None:
        profile["address"] = Address.model_validate(profile["address"])
    return CustomerOut.model_validate(
        {
            **profile,
            "consents": [_consent_out(c) for c in consents],
            "e_delivery": customer.e_delivery,
            "preferred_channels": customer.preferred_channels,
            "created_at": customer.created_at,
            "updated_at": customer.updated_at,
        }
    )


def consents_out(session: Session, customer: Customer) -> CustomerConsentsOut:
    return CustomerConsentsOut.model_validate(
        {
            "consents": [_consent_out(c) for c in _consents(session, customer)],
            "e_delivery": customer.e_delivery,
            "preferred_channels": customer.preferred_channels,
        }
    )


@dataclass(frozen=True)
class _Change:
    topic: str
    granted: bool
    previous: bool | None


def update_consents(session: Session, *, external_id: str, body: ConsentsIn, actor: str) -> Customer:
    """Apply the answers given; each real change is kept with who, when and source, and logged once."""
    customer = get_customer(session, external_id=external_id, for_update=True)
    current = {(c.channel, c.purpose): c for c in _consents(session, customer)}
    now = utcnow()
    changes: list[_Change] = []

    for item in body.consents:
        key = (item.channel.value, item.purpose.value)
        consent = current.get(key)
        if consent is not None and consent.granted == item.granted:
            continue
        changes.append(_Change(f"{key[0]}:{key[1]}", item.granted, consent.granted if consent else None))
        if consent is None:
            consent = Consent(customer_id=customer.id, channel=key[0], purpose=key[1])
            session.add(consent)
        consent.granted = item.granted
        consent.source = body.source
        consent.changed_at = now
        consent.changed_by = actor

    if body.e_delivery is not None and body.e_delivery != customer.e_delivery:
        changes.append(_Change(E_DELIVERY, body.e_delivery, customer.e_delivery))
        customer.e_delivery = body.e_delivery

    preferred = [c.value for c in body.preferred_channels] if body.preferred_channels is not None else None
    preferences_changed = preferred is not None and preferred != customer.preferred_channels
    if preferred is not None and preferences_changed:
        customer.preferred_channels = preferred

    if not changes and not preferences_changed:
        return customer

    for change in changes:
        session.add(
            ConsentChange(
                customer_id=customer.id,
                topic=change.topic,
                granted=change.granted,
                previous=change.previous,
                source=body.source,
                changed_at=now,
                changed_by=actor,
            )
        )
    customer.updated_at = now
    payload: dict[str, Any] = {
        "source": body.source,
        "changes": [{"topic": c.topic, "granted": c.granted, "previous": c.previous} for c in changes],
    }
    if preferences_changed:
        payload["preferred_channels"] = preferred
    audit.append(
        session,
        actor=actor,
        action="customer.consents_changed",
        subject_type="customer",
        subject_id=external_id,
        payload=payload,
    )
    return customer


def consent_history(
    session: Session, *, external_id: str, after_id: int | None, limit: int
) -> tuple[list[ConsentChange], int | None]:
    customer = get_customer(session, external_id=external_id)
    query = select(ConsentChange).where(ConsentChange.customer_id == customer.id).order_by(ConsentChange.id)
    if after_id is not None:
        query = query.where(ConsentChange.id > after_id)
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


@dataclass(frozen=True)
class CustomerFilter:
    email: str | None = None
    phone: str | None = None
    name_contains: str | None = None
    locale: str | None = None
    country: str | None = None
    updated_after: dt.datetime | None = None

    def apply(self, query: Select[Customer]) -> Select[Customer]:
        if self.email is not None:
            query = query.where(func.lower(Customer.email) == self.email.lower())
        if self.phone is not None:
            query = query.where(Customer.phone == self.phone)
        if self.name_contains:
            query = query.where(Customer.name.icontains(self.name_contains, autoescape=True))
        if self.locale is not None:
            query = query.where(Customer.locale == self.locale)
        if self.country is not None:
            query = query.where(Customer.address_country == self.country)
        if self.updated_after is not None:
            query = query.where(Customer.updated_at > self.updated_after)
        return query


def list_customers(
    session: Session, *, filters: CustomerFilter, after_id: int | None, limit: int
) -> tuple[list[Customer], int | None]:
    query = filters.apply(select(Customer)).order_by(Customer.id)
    if after_id is not None:
        query = query.where(Customer.id > after_id)
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)
