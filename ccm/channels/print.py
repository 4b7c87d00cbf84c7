"""Letters as PDF (WeasyPrint): page size, document metadata, PDF/A for archiving, the address checked to lie
inside the envelope window, and no fetching from the network.

The address block is the element with class `recipient`. Window envelopes:

- A4 in a DL or C5 window envelope: DIN 5008 form B, the field 20 mm from the left edge, 45 mm from the top,
  85 x 45 mm;
- US Letter tri-folded into a #10 window envelope: the window 7/8 in from the left edge, 2 in from the top of
  the sheet, 4 1/2 x 1 1/8 in.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

from ccm.channels import Channel
from ccm.channels.base import Envelope, PermanentDeliveryError, Prepared, Sent
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.templates_engine.sandbox import RenderLimitError, run_with_time_limit

PageSize = Literal["A4", "Letter"]
PdfVariant = Literal["pdf/a-3b"]

_MM = 96 / 25.4  # CSS pixels per millimetre, WeasyPrint's layout unit
_INCH = 25.4


@dataclass(frozen=True)
class Window:
    """The envelope window on the first page, in millimetres from the page's top-left corner."""

    envelope: str
    left: float
    top: float
    width: float
    height: float

    def describe(self) -> str:
        return (
            f"the {self.envelope} window ({self.left:g} mm from the left, {self.top:g} mm from the top, "
            f"{self.width:g} x {self.height:g} mm)"
        )


WINDOWS: dict[str, Window] = {
    "A4": Window("DL/C5 (DIN 5008 form B)", left=20, top=45, width=85, height=45),
    "Letter": Window("#10", left=0.875 * _INCH, top=2 * _INCH, width=4.5 * _INCH, height=1.125 * _INCH),
}
# Rounding in layout and font metrics: half a millimetre is well inside any envelope's play.
_TOLERANCE_MM = 0.5


class AddressPlacementError(ValueError):
    """The letter cannot go in a window envelope: a page is not of its size, or its address block is missing
    or outside the window."""


# Portrait sheet sizes in millimetres.
SHEETS = {"A4": (210.0, 297.0), "Letter": (8.5 * _INCH, 11 * _INCH)}


def check_page_size(pages: Any, page_size: str) -> None:
    """Every page is the sheet the letter is printed on: a template's own @page rule cannot make A5 or A3
    pages that the print house would put in an A4 run."""
    width, height = SHEETS[page_size]
    for number, page in enumerate(pages, start=1):
        actual = (page.width / _MM, page.height / _MM)
        if abs(actual[0] - width) > 1 or abs(actual[1] - height) > 1:
            raise AddressPlacementError(
                f"page {number} is {actual[0]:.0f} x {actual[1]:.0f} mm, not {page_size} "
                f"({width:.0f} x {height:.0f} mm)"
            )


# WeasyPrint logs every resource it could not load; the URLs come from templates and may carry data.
logging.getLogger("weasyprint").setLevel(logging.ERROR)
logging.getLogger("fontTools").setLevel(logging.ERROR)

_fonts = FontConfiguration()


@dataclass(frozen=True)
class Pdf:
    content: bytes
    pages: int

    @property
    def sheets(self) -> int:
        """Sheets of paper when printed on both sides."""
        return (self.pages + 1) // 2


def letter_fetcher() -> URLFetcher:
    """Templates are written by business users: a letter may embed data: URLs, and fetch nothing else
    (no http:, no file:), so a template can neither reach the network nor read the server's files."""
    return URLFetcher(allowed_protocols={"data"}, allow_redirects=False, timeout=2)


def render_pdf(
    html: str,
    *,
    css: str | None = None,
    page_size: PageSize = "A4",
    title: str | None = None,
    author: str | None = None,
    language: str | None = None,
    pdf_variant: PdfVariant | None = None,
    check_window: bool = False,
) -> Pdf:
    """The letter as PDF. `check_window`: refuse (AddressPlacementError) a letter whose address block does
    not lie inside the envelope window of its page size."""
    fetcher = letter_fetcher()
    stylesheets = [CSS(string=f"@page {{ size: {page_size}; }}", font_config=_fonts)]
    if css:
        stylesheets.append(CSS(string=css, font_config=_fonts, url_fetcher=fetcher))
    document = HTML(string=html, url_fetcher=fetcher, base_url="about:blank").render(
        stylesheets=stylesheets, font_config=_fonts
    )
    if check_window:
        check_page_size(document.pages, page_size)
        check_address_window(document.pages[0]._page_box if document.pages else None, WINDOWS[page_size])
    metadata = document.metadata
    if title:
        metadata.title = title
    if author:
        metadata.authors = [author]
    if language:
        metadata.lang = language
    if metadata.created is None:
        metadata.created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Pdf(content=document.write_pdf(pdf_variant=pdf_variant), pages=len(document.pages))


def _recipient_text(box: Any, inside: bool = False) -> Any:
    """The text boxes inside the `.recipient` element, however deeply its lines are nested in it."""
    inside = inside or "recipient" in _classes(box)
    if inside and type(box).__name__ == "TextBox":
        yield box
    for child in getattr(box, "children", ()):
        yield from _recipient_text(child, inside)


def _has_recipient(box: Any) -> bool:
    return "recipient" in _classes(box) or any(_has_recipient(c) for c in getattr(box, "children", ()))


def _classes(box: Any) -> list[str]:
    element = getattr(box, "element", None)
    return str(element.get("class") or "").split() if element is not None else []


def check_address_window(page_box: Any, window: Window) -> None:
    """Every line of text in the first page's `.recipient` block lies inside the window."""
    if page_box is None or not _has_recipient(page_box):
        raise AddressPlacementError(
            "the letter has no address block (an element with class 'recipient') on its first page"
        )
    texts = [box for box in _recipient_text(page_box) if box.text.strip()]
    if not texts:
        raise AddressPlacementError("the letter's address block is empty")
    left = min(b.position_x for b in texts) / _MM
    top = min(b.position_y for b in texts) / _MM
    right = max(b.position_x + b.width for b in texts) / _MM
    bottom = max(b.position_y + b.height for b in texts) / _MM
    inside = (
        left >= window.left - _TOLERANCE_MM
        and top >= window.top - _TOLERANCE_MM
        and right <= window.left + window.width + _TOLERANCE_MM
        and bottom <= window.top + window.height + _TOLERANCE_MM
    )
    if not inside:
        raise AddressPlacementError(
            f"the address block ({left:.1f}-{right:.1f} mm across, {top:.1f}-{bottom:.1f} mm down) does "
            f"not fit inside {window.describe()}"
        )


class LetterTooLarge(ValueError):
    pass


def page_size_of(settings: Settings, page_size: str | None) -> PageSize:
    """A template's page size, or the service's (CCM_PRINT_PAGE_SIZE)."""
    return "Letter" if (page_size or settings.print_page_size) == "Letter" else "A4"


def letter(
    settings: Settings,
    html: str,
    *,
    css: str | None,
    page_size: str | None,
    title: str,
    language: str | None,
    check_window: bool = False,
) -> Pdf:
    """A rendered letter part laid out as PDF within the service's limits (CCM_PRINT_MAX_HTML,
    CCM_PRINT_TIME_LIMIT), with its metadata and, when CCM_PRINT_PDF_VARIANT says so, as PDF/A."""
    if len(html) > settings.print_max_html:
        raise LetterTooLarge(
            f"the letter's HTML has {len(html)} characters; letters may have {settings.print_max_html} "
            "(CCM_PRINT_MAX_HTML)"
        )
    size = page_size_of(settings, page_size)
    return run_with_time_limit(
        lambda: render_pdf(
            html,
            css=css,
            page_size=size,
            title=title,
            author=settings.print_author,
            language=language,
            pdf_variant=settings.print_pdf_variant,
            check_window=check_window,
        ),
        settings.print_time_limit,
        "laying out the letter",
    )


class PrintAdapter:
    """The print channel: the letter's PDF is the artifact; sending queues it for the next print batch."""

    channel = Channel.print

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def prepare(self, envelope: Envelope) -> Prepared:
        address = envelope.customer.get("address") or {}
        if not (address.get("line1") and (address.get("city") or address.get("postal_code"))):
            raise PermanentDeliveryError("the customer has no postal address")
        try:
            pdf = letter(
                self.settings,
                envelope.fields.get("html", ""),
                css=envelope.css,
                page_size=envelope.page_size,
                title=envelope.title,
                language=envelope.locale,
                check_window=True,
            )
        except (AddressPlacementError, LetterTooLarge, RenderLimitError) as exc:
            raise PermanentDeliveryError(f"the letter cannot be printed: {exc}") from None
        return Prepared(
            content=pdf.content,
            media_type="application/pdf",
            details={
                "pages": pdf.pages,
                "sheets": pdf.sheets,
                "page_size": page_size_of(self.settings, envelope.page_size),
                # As printed, for the print batch's manifest and its sorting by destination (postage), not
                # as the profile may read by the time the batch is made.
                "name": str(envelope.customer.get("name") or ""),
                "postal_code": address.get("postal_code") or "",
                "country": address.get("country") or "",
            },
        )

    def send(self, envelope: Envelope, prepared: Prepared) -> Sent:
        return Sent(status=DeliveryStatus.queued)
