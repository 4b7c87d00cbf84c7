"""Browser tests: real headless Chromium (Debian's, driven by Playwright) against ccm served over real HTTP.

Fixtures:

- ``chromium_browser`` (package: tests/web): a Playwright ``Browser`` running /usr/bin/chromium. Playwright
  never downloads a browser here: ``make test`` installs Debian's chromium (scripts/system-deps.sh test).
  Not session scope on purpose: while Playwright's sync API is started, it leaves its event loop marked as
  running in the main thread between calls, so asyncio.run() and anyio.run() fail there ("cannot be called
  from a running event loop"). The suite runs the SQLite tests of every module first, then the PostgreSQL
  ones (the session-scoped ``backend`` fixture), so a session-long browser would leak that loop into every
  PostgreSQL test outside tests/web. Package scope closes it on leaving tests/web: one launch (under a
  second) per backend.
- ``page`` (function): a page in a fresh ``BrowserContext`` (no cookies or storage shared between tests).
- ``live_server`` (function): the test's ``app`` served by uvicorn on 127.0.0.1 in a background thread,
  lifespan included (template warm-up, embedded worker); yields the base URL, ``http://127.0.0.1:PORT``.

Design: in this package the ``settings`` fixture of tests/conftest.py is overridden so that its
``public_base_url`` is the live server's URL. The port is reserved first (``live_socket``: a socket bound to
a free loopback port and held until uvicorn takes it over, so no other process can grab the port in
between); the settings get ``http://127.0.0.1:PORT``; ``database``, ``app``, ``client`` and ``role_keys``
come unchanged from tests/conftest.py and so agree with it; ``live_server`` serves that very ``app``. Links
that pages build from ``public_base_url`` (portal, unsubscribe) therefore point at the live server, and every
test runs on both database backends, as the rest of the suite does.

Put test data in through the ``database`` fixture or over HTTP to ``live_server``. The ``client`` fixture
works too (same app, same database) but starts the app's lifespan a second time, in its own thread.

Playwright's sync API drives its own event loop in the test thread; uvicorn runs its loop in its own thread.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, sync_playwright
from pydantic import AnyHttpUrl

from ccm.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
# What this machine needs: running as root (no sandbox), no GPU, a closed network (nothing fetched in the
# background, no QUIC), and a small /dev/shm. Playwright's launch() adds a fresh, empty user data dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Playwright's default is 30 s; a page of ours that takes longer is broken, and failing sooner says so sooner.
TIMEOUT_MS = 10_000
SERVER_START_SECONDS = 30.0
SERVER_STOP_SECONDS = 10.0


@pytest.fixture(scope="package")
def chromium_browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/system-deps.sh test); "
            "the browser tests never download a browser of their own"
        )
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(chromium_browser: Browser) -> Iterator[Page]:
    context = chromium_browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def live_socket() -> Iterator[socket.socket]:
    """A socket bound to a free loopback port, reserved until ``live_server`` hands it to uvicorn."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()


@pytest.fixture
def live_url(live_socket: socket.socket) -> str:
    host, port = live_socket.getsockname()
    return f"http://{host}:{port}"


@pytest.fixture
def settings(settings: Settings, live_url: str) -> Settings:
    """tests/conftest.py's settings, with ``public_base_url`` set to the live server's URL."""
    return settings.model_copy(update={"public_base_url": AnyHttpUrl(live_url)})


def _answers(url: str) -> bool:
    # No proxy, whatever the environment says: the server is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def live_server(app: FastAPI, live_socket: socket.socket, live_url: str) -> Iterator[str]:
    """Serve ``app`` over real HTTP until the test ends; yields its base URL (no trailing slash)."""
    config = uvicorn.Config(app, lifespan="on", log_config=None, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[live_socket])
        except BaseException as exc:  # noqa: BLE001 - also SystemExit, how uvicorn ends a failed start
            failure.append(exc)

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not (server.started and _answers(f"{live_url}/health")):
            if not thread.is_alive():
                pytest.fail(f"the live server stopped while starting: {failure!r} (see the captured log)")
            if time.monotonic() > deadline:
                pytest.fail(f"the live server did not answer GET /health within {SERVER_START_SECONDS} s")
            time.sleep(0.02)
        yield live_url
    finally:
        server.should_exit = True
        thread.join(SERVER_STOP_SECONDS)
    if thread.is_alive():
        pytest.fail(f"the live server did not stop within {SERVER_STOP_SECONDS} s")
    if failure:
        pytest.fail(f"the live server failed: {failure[0]!r}")
