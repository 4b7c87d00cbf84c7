"""Deliveries: communications, their deliveries per channel, provider callbacks, print batches, portal inbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "print_batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("page_size", sa.String(length=10), nullable=False),
        sa.Column("letters", sa.Integer(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("sheets", sa.Integer(), nullable=False),
        sa.Column("pdf_sha256", sa.String(length=64), nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("handed_at", Timestamp, nullable=True),
        sa.Column("handed_by", sa.String(length=200), nullable=True),
        sa.Column("confirmed_at", Timestamp, nullable=True),
        sa.Column("confirmed_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_print_batches")),
    )
    op.create_table(
        "communications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("template_id", BigId, nullable=False),
        sa.Column("template_version_id", BigId, nullable=False),
        sa.Column("customer_id", BigId, nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.Column("options", Json, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_communications_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["communications.id"], name=op.f("fk_communications_parent_id_communications")
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["templates.id"], name=op.f("fk_communications_template_id_templates")
        ),
        sa.ForeignKeyConstraint(
            ["template_version_id"],
            ["template_versions.id"],
            name=op.f("fk_communications_template_version_id_template_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_communications")),
    )
    with op.batch_alter_table("communications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_communications_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_communications_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_communications_template_id"), ["template_id"], unique=False)

    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("communication_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", BigId, nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("recipient", sa.String(length=500), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=True),
        sa.Column("artifact_size", sa.Integer(), nullable=True),
        sa.Column("media_type", sa.String(length=100), nullable=True),
        sa.Column("details", Json, nullable=False),
        sa.Column("print_batch_id", sa.String(length=36), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_until", Timestamp, nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["communication_id"],
            ["communications.id"],
            name=op.f("fk_deliveries_communication_id_communications"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_deliveries_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["print_batch_id"], ["print_batches.id"], name=op.f("fk_deliveries_print_batch_id_print_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_channel_status", ["channel", "status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_deliveries_communication_id"), ["communication_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deliveries_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_deliveries_print_batch_id"), ["print_batch_id"], unique=False)
        batch_op.create_index("ix_deliveries_provider_id", ["provider_id"], unique=False)

    op.create_table(
        "portal_messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", BigId, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("html_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("read_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_portal_messages_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name=op.f("fk_portal_messages_delivery_id_deliveries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_messages")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_portal_messages_delivery_id")),
    )
    with op.batch_alter_table("portal_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portal_messages_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "provider_callbacks",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("delivery_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name=op.f("fk_provider_callbacks_delivery_id_deliveries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_callbacks")),
    )
    with op.batch_alter_table("provider_callbacks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_provider_callbacks_delivery_id"), ["delivery_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_provider_callbacks_provider_id"), ["provider_id"], unique=False)

    op.create_table(
        "portal_documents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["portal_messages.id"],
            name=op.f("fk_portal_documents_message_id_portal_messages"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_documents")),
    )
    with op.batch_alter_table("portal_documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portal_documents_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("portal_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_documents_message_id"))

    op.drop_table("portal_documents")
    with op.batch_alter_table("provider_callbacks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_callbacks_provider_id"))
        batch_op.drop_index(batch_op.f("ix_provider_callbacks_delivery_id"))

    op.drop_table("provider_callbacks")
    with op.batch_alter_table("portal_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_messages_customer_id"))

    op.drop_table("portal_messages")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_provider_id")
        batch_op.drop_index(batch_op.f("ix_deliveries_print_batch_id"))
        batch_op.drop_index(batch_op.f("ix_deliveries_customer_id"))
        batch_op.drop_index(batch_op.f("ix_deliveries_communication_id"))
        batch_op.drop_index("ix_deliveries_channel_status")

    op.drop_table("deliveries")
    with op.batch_alter_table("communications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_communications_template_id"))
        batch_op.drop_index(batch_op.f("ix_communications_parent_id"))
        batch_op.drop_index(batch_op.f("ix_communications_customer_id"))

    op.drop_table("communications")
    op.drop_table("print_batches")
