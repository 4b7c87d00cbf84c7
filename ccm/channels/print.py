"""Letters as PDF (WeasyPrint): page size, document metadata, and no fetching from the network."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

PageSize = Literal["A4", "Letter"]

# WeasyPrint logs every resource it could not load; the URLs come from templates and may carry data.
logging.getLogger("weasyprint").setLevel(logging.ERROR)
logging.getLogger("fontTools").setLevel(logging.ERROR)

_fonts = FontConfiguration()


@dataclass(frozen=True)
class Pdf:
    content: bytes
    pages: int


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
) -> Pdf:
    fetcher = letter_fetcher()
    stylesheets = [CSS(string=f"@page {{ size: {page_size}; }}", font_config=_fonts)]
    if css:
        stylesheets.append(CSS(string=css, font_config=_fonts, url_fetcher=fetcher))
    document = HTML(string=html, url_fetcher=fetcher, base_url="about:blank").render(
        stylesheets=stylesheets, font_config=_fonts
    )
    metadata = document.metadata
    if title:
        metadata.title = title
    if author:
        metadata.authors = [author]
    if language:
        metadata.lang = language
    return Pdf(content=document.write_pdf(), pages=len(document.pages))
