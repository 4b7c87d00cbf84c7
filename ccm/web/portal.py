"""The customer portal's pages: the inbox, a message, its documents.

Every page is reached through the customer's signed link (/portal/{token}); the token names one customer
and expires (ccm.channels.portal). A message or document of any other customer is answered 404. Pages are
rendered from ccm's own templates (not business users'); a message's HTML was sanitized with nh3 when it was
delivered and is read back from the artifact store, hash-checked. Headers keep the pages private: no caching,
no referrer (the link is the credential), a Content-Security-Policy that runs no script and loads nothing
from elsewhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

from babel.dates import format_date
from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select

from ccm.auth.deps import DatabaseDep, SettingsDep
from ccm.channels import portal
from ccm.communications.delivery import artifact_store
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database
from ccm.errors import CCMError, NotFound

router = APIRouter(tags=["portal"], include_in_schema=False)

_pages = Environment(
    loader=PackageLoader("ccm.web", "templates"),
    autoescape=select_autoescape(default=True),
    auto_reload=False,
)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
}

Token = Annotated[str, Path(max_length=1000)]
Id = Annotated[str, Path(max_length=36)]


def _html(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(
        _pages.get_template(template).render(**values), status_code=status, headers=SECURITY_HEADERS
    )


def _error_page(exc: CCMError) -> HTMLResponse:
    if exc.status == 403:
        heading = "This link has expired"
        detail = "For your security, links to your inbox work for a limited time. Ask us for a new one."
    else:
        heading = "Not found"
        detail = "This link is not valid, or what it points to is not here."
    return _html("portal/error.html", exc.status, heading=heading, detail=detail)


def _guarded(page: Callable[[], Response]) -> Response:
    """Customers get a readable page, not problem JSON, when a link is expired, damaged or leads nowhere.
    (An artifact that fails its hash check is a 500: what was delivered cannot be shown as it was.)"""
    try:
        return page()
    except CCMError as exc:
        return _error_page(exc)


def _customer(database: Database, settings: Settings, token: str) -> tuple[Customer, str]:
    link = portal.read_portal_link(settings, token)
    with database.read() as session:
        customer = session.scalars(
            select(Customer).where(Customer.external_id == link.external_id)
        ).one_or_none()
    if customer is None:
        raise NotFound("this portal link is not valid")
    return customer, format_date(link.expires_at.date(), "long", locale="en")


def _size(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def _date(moment: dt.datetime) -> str:
    return format_date(moment.date(), "long", locale="en")


@router.get("/portal/{token}", response_class=HTMLResponse)
def inbox(token: Token, database: DatabaseDep, settings: SettingsDep) -> Response:
    def page() -> Response:
        customer, expires = _customer(database, settings, token)
        with database.read() as session:
            messages = portal.inbox(session, customer_id=customer.id)
        return _html(
            "portal/inbox.html",
            brand=settings.brand_name,
            inbox_url=f"/portal/{token}",
            customer_name=customer.name,
            expires=expires,
            messages=[
                {
                    "title": m.title,
                    "url": f"/portal/{token}/messages/{m.id}",
                    "date": _date(m.created_at),
                    "read_at": m.read_at,
                }
                for m in messages
            ],
        )

    return _guarded(page)


@router.get("/portal/{token}/messages/{message_id}", response_class=HTMLResponse)
def message(token: Token, message_id: Id, database: DatabaseDep, settings: SettingsDep) -> Response:
    """Shows one message; the first opening records it read."""

    def page() -> Response:
        customer, expires = _customer(database, settings, token)
        with database.transaction() as session:
            found = portal.message_for(
                session, customer_id=customer.id, message_id=message_id, for_update=True
            )
            portal.mark_read(session, found.message, actor=f"customer:{customer.external_id}")
        body = artifact_store(settings).get(found.message.html_sha256).decode()
        return _html(
            "portal/message.html",
            brand=settings.brand_name,
            inbox_url=f"/portal/{token}",
            customer_name=customer.name,
            expires=expires,
            title=found.message.title,
            date=_date(found.message.created_at),
            body=Markup(body),  # noqa: S704  # sanitized with nh3 when delivered; hash-checked on reading
            documents=[
                {
                    "filename": d.filename,
                    "url": f"/portal/{token}/messages/{message_id}/documents/{d.id}",
                    "pages": d.pages,
                    "size": _size(d.size),
                }
                for d in found.documents
            ],
        )

    return _guarded(page)


@router.get("/portal/{token}/messages/{message_id}/documents/{document_id}")
def document(
    token: Token, message_id: Id, document_id: Id, database: DatabaseDep, settings: SettingsDep
) -> Response:
    def page() -> Response:
        customer, _ = _customer(database, settings, token)
        with database.read() as session:
            found = portal.message_for(session, customer_id=customer.id, message_id=message_id)
        chosen = next((d for d in found.documents if d.id == document_id), None)
        if chosen is None:
            raise NotFound("there is no such document")
        return Response(
            artifact_store(settings).get(chosen.sha256),
            media_type=chosen.media_type,
            headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{chosen.filename}"'},
        )

    return _guarded(page)
