"""Alembic environment: runs migrations on the URL that ccm.migrations.upgrade() passes in."""

from __future__ import annotations

import warnings
from typing import Any

from alembic import context

from ccm import models  # noqa: F401  # every table registers on Base.metadata
from ccm.db import Base, make_engine

# SQLite cannot reflect the expression index on customers (lower(email)); batch operations on other tables
# reflect the schema and would say so every time. The index itself is created by revision 0001.
warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index")

url = context.config.attributes["database_url"]
engine = make_engine(url)
try:
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw: Any = connection.connection.driver_connection  # the sqlite3 connection itself
        if sqlite:
            # SQLite alters a table by copying it to a new one and dropping the old: with foreign keys
            # enforced, dropping a table other rows point at fails. Off for the migration (outside any
            # transaction, where SQLite takes it), then every reference is checked before it counts as done.
            raw.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows pointing at nothing: {broken[:5]}")
        if sqlite:
            raw.execute("PRAGMA foreign_keys=ON")
finally:
    engine.dispose()
