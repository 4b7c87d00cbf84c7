"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ccm import (
    migrations,
    models,  # noqa: F401  # registers every table
)
from ccm.communications.models import Communication, Delivery
from ccm.db import Base, Database


# SQLite cannot reflect expression indexes (lower(email)); PostgreSQL's run compares them.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrated_schema_matches_the_models(database: Database) -> None:
    with database.read_connection() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def _filled(table: sa.Table, given: dict[str, Any]) -> dict[str, Any]:
    """A row for `table` as it stood at an old revision: the given values, and a plausible one for every
    other column that cannot be empty."""
    now = dt.datetime(2026, 11, 1, 9, 30)
    row = dict(given)
    for column in table.columns:
        if column.name in row or column.nullable or (column.primary_key and column.autoincrement is True):
            continue
        kind = column.type
        if isinstance(kind, sa.Boolean):
            row[column.name] = False
        elif isinstance(kind, sa.Integer):
            row[column.name] = 1
        elif isinstance(kind, sa.DateTime):
            row[column.name] = now
        elif isinstance(kind, sa.JSON):
            row[column.name] = {}
        else:
            row[column.name] = "x"
    return row


def test_a_database_holding_communications_upgrades_from_0003_with_its_rows_whole(
    empty_database_url: str,
) -> None:
    migrations.upgrade(empty_database_url, "0003")
    engine = sa.create_engine(empty_database_url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine)
        t = tables.tables
        created = dt.datetime(2026, 11, 1, 9, 30)
        with engine.begin() as connection:
            template = connection.execute(
                sa.insert(t["templates"]).values(
                    _filled(t["templates"], {"key": "old", "kind": "communication", "category": "service"})
                )
            ).inserted_primary_key[0]
            version = connection.execute(
                sa.insert(t["template_versions"]).values(
                    _filled(
                        t["template_versions"], {"template_id": template, "number": 1, "status": "approved"}
                    )
                )
            ).inserted_primary_key[0]
            customer = connection.execute(
                sa.insert(t["customers"]).values(_filled(t["customers"], {"external_id": "OLD-1"}))
            ).inserted_primary_key[0]
            connection.execute(
                sa.insert(t["communications"]).values(
                    _filled(
                        t["communications"],
                        {
                            "id": "c-old",
                            "template_id": template,
                            "template_version_id": version,
                            "customer_id": customer,
                            "status": "sent",
                            "data": {"amount": 1},
                            "created_at": created,
                        },
                    )
                )
            )
            connection.execute(
                sa.insert(t["deliveries"]).values(
                    _filled(
                        t["deliveries"],
                        {
                            "id": "d-old",
                            "communication_id": "c-old",
                            "customer_id": customer,
                            "channel": "email",
                            "status": "sent",
                        },
                    )
                )
            )
    finally:
        engine.dispose()

    migrations.upgrade(empty_database_url)

    database = Database(empty_database_url)
    try:
        with database.read() as session:
            communication = session.get_one(Communication, "c-old")
            assert communication.data == {"amount": 1}
            assert communication.channels == []
            assert communication.routing == {}
            assert communication.decision is None
            assert communication.due_at == communication.updated_at == created.replace(tzinfo=dt.UTC)
            assert session.get_one(Delivery, "d-old").status == "sent"
    finally:
        database.dispose()
