"""The browser set-up itself: Chromium reaches the live server and sees its status codes."""

from __future__ import annotations

import json

from fastapi import FastAPI
from playwright.sync_api import Page

from ccm.config import Settings


def test_health_answers_in_chromium(page: Page, live_server: str) -> None:
    response = page.goto(f"{live_server}/health")

    assert response is not None
    assert response.status == 200
    assert response.url == f"{live_server}/health"
    assert json.loads(page.locator("body").inner_text()) == {"status": "ok"}


def test_unknown_page_is_a_404_in_chromium(page: Page, live_server: str) -> None:
    response = page.goto(f"{live_server}/no-such-page")

    assert response is not None
    assert response.status == 404
    assert response.ok is False


def test_the_app_links_to_the_live_server(app: FastAPI, settings: Settings, live_server: str) -> None:
    assert app.state.settings is settings
    assert str(settings.public_base_url).rstrip("/") == live_server
