"""What the benchmarks share: a database with the starter templates published, and one customer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ccm import migrations
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine import service
from ccm.templates_engine.render import TemplateEngine
from ccm.templates_engine.sync import publish_all, sync

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER: dict[str, Any] = {
    "external_id": "CUST-1001",
    "name": "Amelia Hartley",
    "email": "amelia@example.co.uk",
    "phone": "+447911123456",
    "locale": "en-GB",
    "timezone": "Europe/London",
    "address": {
        "line1": "14 Rosebery Avenue",
        "line2": None,
        "city": "London",
        "region": None,
        "postal_code": "EC1R 4SX",
        "country": "GB",
    },
    "attributes": {},
}


def starter_database(directory: Path) -> str:
    """A SQLite database in `directory`, migrated; answers its URL."""
    url = f"sqlite:///{directory / 'bench.db'}"
    migrations.upgrade(url)
    return url


def publish_starters(database: Database, settings: Settings) -> TemplateEngine:
    """The starter templates synced and published, as `ccm demo` does; answers an engine over them."""
    engine = service.make_engine(database, settings)
    report = sync(database, engine, ROOT / "templates", actor="bench:author")
    publish_all(database, engine, [*report.created], author="bench:author", approver="bench:approver")
    return engine
