"""Workflows: the decision a workflow made for each communication, and the tasks it gives people (review,
agent-handled).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("communications") as table:
        table.add_column(sa.Column("decision", Json, nullable=True))
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("communication_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("approvals_required", sa.Integer(), nullable=False),
        sa.Column("due_at", Timestamp, nullable=True),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("escalated_at", Timestamp, nullable=True),
        sa.Column("details", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["communication_id"], ["communications.id"], name="fk_tasks_communication_id_communications"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_communication_id", "tasks", ["communication_id"])
    op.create_index("ix_tasks_queue_status", "tasks", ["queue", "status"])
    op.create_index("ix_tasks_status_due_at", "tasks", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_status_due_at", table_name="tasks")
    op.drop_index("ix_tasks_queue_status", table_name="tasks")
    op.drop_index("ix_tasks_communication_id", table_name="tasks")
    op.drop_table("tasks")
    with op.batch_alter_table("communications") as table:
        table.drop_column("decision")
