"""Templates: templates, numbered versions, publications, and the layouts and snippets each version uses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("category", sa.String(20), nullable=False),
        sa.Column("default_locale", sa.String(35), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint("key", name="uq_templates_key"),
    )
    op.create_table(
        "template_versions",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("template_id", BigId, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("content", Json, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("contributors", Json, nullable=False),
        sa.Column("approver", sa.String(200), nullable=True),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("copied_from", sa.Integer(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("submitted_at", Timestamp, nullable=True),
        sa.Column("decided_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name="fk_template_versions_template_id_templates",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_template_versions"),
        sa.UniqueConstraint("template_id", "number", name="uq_template_versions_template_id"),
    )
    op.create_index("ix_template_versions_template_id", "template_versions", ["template_id"])
    op.create_table(
        "template_dependencies",
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["template_versions.id"],
            name="fk_template_dependencies_version_id_template_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name="pk_template_dependencies"),
    )
    op.create_index("ix_template_dependencies_key", "template_dependencies", ["key"])
    op.create_table(
        "template_publications",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("template_id", BigId, nullable=False),
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("effective_from", Timestamp, nullable=False),
        sa.Column("published_at", Timestamp, nullable=False),
        sa.Column("published_by", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name="fk_template_publications_template_id_templates",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["template_versions.id"],
            name="fk_template_publications_version_id_template_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_template_publications"),
    )
    op.create_index(
        "ix_template_publications_live", "template_publications", ["template_id", "effective_from"]
    )


def downgrade() -> None:
    op.drop_table("template_publications")
    op.drop_table("template_dependencies")
    op.drop_table("template_versions")
    op.drop_table("templates")
