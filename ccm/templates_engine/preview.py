"""Previewing a version: every channel rendered for a customer and data; the SMS counted, the letter a PDF."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from ccm.channels import Channel
from ccm.channels.portal import portal_link
from ccm.channels.print import LetterTooLarge, letter
from ccm.channels.sms_segments import count_segments
from ccm.config import Settings
from ccm.customers.service import StoredProfile, get_customer, public_profile
from ccm.customers.unsubscribe import signing_secret, unsubscribe_url
from ccm.errors import CCMError, FieldError, InvalidInput
from ccm.templates_engine import service
from ccm.templates_engine.models import Template, TemplateKind, TemplateVersion
from ccm.templates_engine.render import RenderContext, RenderedChannel, RenderProblem, TemplateEngine
from ccm.templates_engine.sandbox import RenderLimitError
from ccm.templates_engine.schemas import InlineCustomer, PreviewOut, PreviewRequest
from ccm.templates_engine.schemas import RenderProblem as RenderProblemOut

SAMPLE_CUSTOMER: dict[str, Any] = {
    "external_id": "SAMPLE",
    "name": "Alex Sample",
    "email": "alex.sample@example.com",
    "phone": "+447911123456",
    "locale": None,
    "timezone": "Europe/London",
    "address": {
        "line1": "1 Sample Street",
        "line2": None,
        "city": "London",
        "region": None,
        "postal_code": "SW1A 1AA",
        "country": "GB",
    },
    "attributes": {},
}


@dataclass(frozen=True)
class _Signed:
    """A link signed the first time a template reads it."""

    make: Callable[[], str]


class MessageFields(Mapping[str, Any]):
    """The `message` a template sees, a mapping like a dict. Its signed links are made the first time the
    template reads them: most templates use neither, and signing both costs an email about 1.5% of its
    instructions (docs/benchmarks.md)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> Any:
        value = self._values[name]
        if isinstance(value, _Signed):
            value = self._values[name] = value.make()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr(dict(self))


def message_context(
    settings: Settings,
    message_id: str,
    *,
    external_id: str | None = None,
    channel: Channel = Channel.email,
    date: dt.date | None = None,
    edits: dict[str, str] | None = None,
) -> MessageFields:
    """The `message` a template sees. For a real customer (external_id) the links are signed for them (the
    unsubscribe link for the channel being rendered); in a preview they lead to placeholder pages. `edits`:
    a reviewer's edits to the template's editable regions (ccm.templates_engine.editable)."""
    base = str(settings.public_base_url).rstrip("/")
    links: dict[str, Any]
    if external_id is None:
        links = {"unsubscribe_url": f"{base}/unsubscribe/preview", "portal_url": f"{base}/portal/preview"}
    else:
        customer = external_id  # a str from here on, for the closures too
        # The secret now (it may be read or made in the data dir: an OSError is a delivery's transient
        # failure, not a template's); only the signing waits for a template to read the link.
        signing_secret(settings)
        links = {
            "unsubscribe_url": _Signed(
                lambda: unsubscribe_url(settings, external_id=customer, channel=channel)
            ),
            "portal_url": _Signed(lambda: portal_link(settings, external_id=customer)),
        }
    values = {"id": message_id, "date": (date or dt.date.today()).isoformat(), **links}
    if edits is not None:
        values["edits"] = edits
    return MessageFields(values)


class RenderFailed(CCMError):
    status = 422
    slug = "render-error"
    title = "The template did not render"


_CUSTOMER_FIELDS = ("external_id", "name", "email", "phone", "locale", "timezone", "address", "attributes")


def customer_context(customer: StoredProfile) -> dict[str, Any]:
    """The `customer` a template sees: the profile's public fields, as stored (built directly, not through
    the API's model, for every message of a batch)."""
    return public_profile(customer)


def inline_customer_context(customer: InlineCustomer) -> dict[str, Any]:
    profile = customer.model_dump(mode="json")
    return {name: profile.get(name) for name in _CUSTOMER_FIELDS}


def channel_result(
    rendered: RenderedChannel,
    *,
    settings: Settings,
    title: str,
    page_size: str | None,
    css: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"locale": rendered.locale, **rendered.fields}
    if rendered.channel is Channel.sms and "body" in rendered.fields:
        counted = count_segments(rendered.fields["body"])
        result.update(encoding=counted.encoding.value, characters=counted.units, segments=counted.segments)
    if rendered.channel is Channel.print and "html" in rendered.fields:
        try:
            pdf = letter(
                settings,
                rendered.fields["html"],
                css=css,
                page_size=page_size,
                title=title,
                language=rendered.locale,
            )
        except LetterTooLarge as exc:
            raise RenderFailed(str(exc)) from None
        result.update(pages=pdf.pages, pdf_base64=base64.b64encode(pdf.content).decode())
    return result


def preview(
    session: Session, engine: TemplateEngine, settings: Settings, *, key: str, request: PreviewRequest
) -> PreviewOut:
    template = service.get_template(session, key=key)
    if template.kind is not TemplateKind.communication:
        raise RenderFailed(f"'{key}' is a {template.kind.value}: preview a communication that uses it")
    version = _chosen_version(session, template, number=request.version)
    if version is None:
        raise RenderFailed(f"template '{key}' has no version to preview yet")

    data = request.data if request.data is not None else dict(version.content.get("sample_data", {}))
    service.validate_data(version.content.get("schema"), data)

    if isinstance(request.customer, str):
        customer = customer_context(get_customer(session, external_id=request.customer))
    elif request.customer is not None:
        try:
            inline = InlineCustomer.model_validate(request.customer)
        except ValidationError as exc:
            raise InvalidInput(
                [
                    FieldError(
                        "body", "/customer" + "".join(f"/{p}" for p in e["loc"]), str(e["msg"]), e["type"]
                    )
                    for e in exc.errors()
                ]
            ) from None
        customer = inline_customer_context(inline)
    else:
        customer = dict(SAMPLE_CUSTOMER)
    locale = request.locale or customer.get("locale") or template.default_locale
    context = RenderContext(
        customer=customer,
        data=data,
        message=message_context(settings, f"preview-{uuid.uuid4()}"),
        locale=locale,
        timezone=customer.get("timezone") or "UTC",
    )
    loaded = service.loaded(session, template, version)
    parts: dict[str, dict[str, Any]] = {}
    problems = []
    for channel in loaded.channels():
        rendered = engine.render_channel(loaded, channel, context)
        problems.extend(rendered.problems)
        if not rendered.fields:
            continue
        css, page_size = loaded.letter_style(locale)
        try:
            parts[channel.value] = channel_result(
                rendered, settings=settings, title=template.name, page_size=page_size, css=css
            )
        except (RenderFailed, RenderLimitError) as exc:
            problems.append(
                RenderProblem(part=f"{channel.value}.html", line=None, variable=None, message=str(exc))
            )
    result = PreviewOut(
        template=key,
        version=version.number,
        locale=locale,
        parts=parts,
        errors=[
            RenderProblemOut(part=p.part, line=p.line, variable=p.variable, message=p.message, path=p.path)
            for p in problems
        ],
    )
    if problems:
        raise RenderFailed(
            "; ".join(
                f"{p.part}" + (f" line {p.line}" if p.line else "") + f": {p.message}" for p in problems
            ),
            **result.model_dump(mode="json"),
        )
    return result


def _chosen_version(session: Session, template: Template, *, number: int | None) -> TemplateVersion | None:
    if number is not None:
        return service.get_version(session, template=template, number=number)
    return service.live_version(session, template) or service.newest_version(session, template)
