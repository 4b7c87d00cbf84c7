"""Alembic environment: runs migrations on the URL that ccm.migrations.upgrade() passes in."""

from __future__ import annotations

import warnings

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
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
