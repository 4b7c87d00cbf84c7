"""HTTP endpoints for customers and their consents."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import AfterValidator, BaseModel

from ccm import audit
from ccm.auth.deps import DatabaseDep, SettingsDep, require
from ccm.auth.models import Role
from ccm.auth.service import Principal
from ccm.channels import portal
from ccm.customers import service
from ccm.customers.schemas import (
    EXTERNAL_ID_PATTERN,
    ConsentChangeOut,
    ConsentsIn,
    CustomerConsentsOut,
    CustomerIn,
    CustomerOut,
    normalize_country,
    normalize_email,
    normalize_locale,
    normalize_phone,
)
from ccm.db import utcnow
from ccm.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, next_cursor

router = APIRouter(tags=["customers"])

ExternalId = Annotated[
    str,
    Path(
        pattern=EXTERNAL_ID_PATTERN, description="The customer's id in the calling system (1-128 characters)."
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(description="next_cursor from the previous page")]

Writer = Annotated[Principal, Depends(require(Role.sender))]
ConsentWriter = Annotated[Principal, Depends(require(Role.sender, Role.agent))]
Reader = Annotated[Principal, Depends(require(Role.sender, Role.agent, Role.auditor))]

CUSTOMERS = "customers"
CONSENT_HISTORY = "consent-history"


@router.put(
    "/v1/customers/{external_id}",
    response_model=CustomerOut,
    responses={201: {"model": CustomerOut, "description": "Created"}},
)
def upsert_customer(
    external_id: ExternalId, body: CustomerIn, response: Response, database: DatabaseDep, principal: Writer
) -> CustomerOut:
    """Create or replace a customer profile: 201 when created, else 200. The same body twice is a no-op."""
    with database.transaction() as session:
        customer, outcome = service.upsert_customer(
            session, external_id=external_id, profile=body, actor=principal.actor
        )
        if outcome is service.UpsertOutcome.created:
            response.status_code = status.HTTP_201_CREATED
        return service.customer_out(session, customer)


@router.get("/v1/customers/{external_id}", response_model=CustomerOut)
def get_customer(external_id: ExternalId, database: DatabaseDep, principal: Reader) -> CustomerOut:
    with database.read() as session:
        return service.customer_out(session, service.get_customer(session, external_id=external_id))


@router.get("/v1/customers", response_model=Page[CustomerOut])
def list_customers(
    database: DatabaseDep,
    principal: Reader,
    email: Annotated[Annotated[str, AfterValidator(normalize_email)] | None, Query()] = None,
    phone: Annotated[Annotated[str, AfterValidator(normalize_phone)] | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200, description="Part of the name, any case")] = None,
    locale: Annotated[Annotated[str, AfterValidator(normalize_locale)] | None, Query()] = None,
    country: Annotated[Annotated[str, AfterValidator(normalize_country)] | None, Query()] = None,
    updated_after: Annotated[dt.datetime | None, Query()] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[CustomerOut]:
    if updated_after is not None and updated_after.tzinfo is None:
        updated_after = updated_after.replace(tzinfo=dt.UTC)
    filters = service.CustomerFilter(
        email=email, phone=phone, name_contains=q, locale=locale, country=country, updated_after=updated_after
    )
    with database.read() as session:
        after = decode_cursor(CUSTOMERS, cursor)
        rows, last_id = service.list_customers(session, filters=filters, after_id=after, limit=limit)
        return Page[CustomerOut](
            items=service.customers_out(session, rows), next_cursor=next_cursor(CUSTOMERS, last_id)
        )


@router.put("/v1/customers/{external_id}/consents", response_model=CustomerConsentsOut)
def update_consents(
    external_id: ExternalId, body: ConsentsIn, database: DatabaseDep, principal: ConsentWriter
) -> CustomerConsentsOut:
    """Record the customer's answers. Consents not listed keep their current answer."""
    with database.transaction() as session:
        customer = service.update_consents(session, external_id=external_id, body=body, actor=principal.actor)
        return service.consents_out(session, customer)


@router.get("/v1/customers/{external_id}/consents", response_model=CustomerConsentsOut)
def get_consents(external_id: ExternalId, database: DatabaseDep, principal: Reader) -> CustomerConsentsOut:
    with database.read() as session:
        return service.consents_out(session, service.get_customer(session, external_id=external_id))


@router.get("/v1/customers/{external_id}/consents/history", response_model=Page[ConsentChangeOut])
def consent_history(
    external_id: ExternalId,
    database: DatabaseDep,
    principal: Reader,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[ConsentChangeOut]:
    """Every change to this customer's consents, oldest first, with who, when and source."""
    with database.read() as session:
        after = decode_cursor(CONSENT_HISTORY, cursor)
        rows, last_id = service.consent_history(session, external_id=external_id, after_id=after, limit=limit)
        return Page[ConsentChangeOut](
            items=[ConsentChangeOut.model_validate(row) for row in rows],
            next_cursor=next_cursor(CONSENT_HISTORY, last_id),
        )


class PortalLinkOut(BaseModel):
    url: str
    expires_at: dt.datetime


@router.post("/v1/customers/{external_id}/portal-link", response_model=PortalLinkOut)
def portal_link(
    external_id: ExternalId, database: DatabaseDep, settings: SettingsDep, principal: ConsentWriter
) -> PortalLinkOut:
    """A signed link to the customer's portal inbox, for an agent or a back-office system to hand on.
    It expires after CCM_PORTAL_LINK_DAYS; issuing it is logged."""
    with database.transaction() as session:
        service.get_customer(session, external_id=external_id)
        issued = utcnow()
        audit.append(
            session,
            actor=principal.actor,
            action="customer.portal_link_issued",
            subject_type="customer",
            subject_id=external_id,
            payload={"valid_days": settings.portal_link_days},
        )
    return PortalLinkOut(
        url=portal.portal_link(settings, external_id=external_id),
        expires_at=issued + dt.timedelta(days=settings.portal_link_days),
    )
