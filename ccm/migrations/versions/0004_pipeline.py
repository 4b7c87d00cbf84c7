"""The send pipeline: what senders ask for on a communication, due times and retries, idempotency keys, batch
files, and outbound webhooks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
ARTIFACT_COLUMNS = [
    ("deliveries", "artifact_sha256"),
    ("portal_messages", "html_sha256"),
    ("portal_documents", "sha256"),
    ("print_batches", "pdf_sha256"),
    ("print_batches", "manifest_sha256"),
]


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("template_key", sa.String(length=64), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("owner", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "batch_errors",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("errors", Json, nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_batch_errors_batch_id_batches")),
        sa.PrimaryKeyConstraint("batch_id", "row", name=op.f("pk_batch_errors")),
    )
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("endpoint_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=60), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=True),
        sa.Column("enqueued_at", Timestamp, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_messages_endpoint_id_webhook_endpoints"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_messages")),
    )
    with op.batch_alter_table("webhook_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_messages_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_index(
            "ix_webhook_messages_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("attempted_at", Timestamp, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["webhook_messages.id"],
            name=op.f("fk_webhook_attempts_message_id_webhook_messages"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_attempts_message_id"), ["message_id"], unique=False)

    # Communications made before this revision get what they would have had: no channels asked beyond their
    # deliveries, due and last changed when they were made.
    with op.batch_alter_table("communications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("channels", Json, nullable=True))
        batch_op.add_column(sa.Column("workflow", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reference", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("due_at", Timestamp, nullable=True))
        batch_op.add_column(sa.Column("routing", Json, nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", Timestamp, nullable=True))
        batch_op.add_column(sa.Column("updated_at", Timestamp, nullable=True))
    op.execute(
        "UPDATE communications"
        " SET channels = '[]', routing = '{}', due_at = created_at, updated_at = created_at"
    )
    with op.batch_alter_table("communications", schema=None) as batch_op:
        for column in ("channels", "routing"):
            batch_op.alter_column(column, existing_type=Json, nullable=False)
        for column in ("due_at", "updated_at"):
            batch_op.alter_column(column, existing_type=Timestamp, nullable=False)
        batch_op.create_index(batch_op.f("ix_communications_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index("ix_communications_status_due_at", ["status", "due_at"], unique=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_communications_template_id"), ["template_id", "reference"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_communications_batch_id_batches"), "batches", ["batch_id"], ["id"]
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", Timestamp, nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", Timestamp, nullable=True))
        batch_op.create_index(
            "ix_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    # Auditors fetch artifacts by hash: find what references one without scanning.
    for table, column in ARTIFACT_COLUMNS:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def downgrade() -> None:
    for table, column in ARTIFACT_COLUMNS:
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_status_next_attempt_at")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("next_attempt_at")

    with op.batch_alter_table("communications", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_communications_batch_id_batches"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_communications_template_id"), type_="unique")
        batch_op.drop_index("ix_communications_status_due_at")
        batch_op.drop_index(batch_op.f("ix_communications_batch_id"))
        batch_op.drop_column("updated_at")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("batch_id")
        batch_op.drop_column("routing")
        batch_op.drop_column("due_at")
        batch_op.drop_column("reference")
        batch_op.drop_column("workflow")
        batch_op.drop_column("channels")

    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_attempts_message_id"))

    op.drop_table("webhook_attempts")
    with op.batch_alter_table("webhook_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_messages_status_next_attempt_at")
        batch_op.drop_index(batch_op.f("ix_webhook_messages_endpoint_id"))

    op.drop_table("webhook_messages")
    op.drop_table("batch_errors")
    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
    op.drop_table("batches")
