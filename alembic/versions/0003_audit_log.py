"""Add the audit trail (audit_log).

One row per change made through usersctl. No foreign key to users, so a deleted user's
history stays.

Re-runnable: a killed upgrade on MariaDB (which commits each DDL statement) may have
created the table and some of its indexes; the next one adds the rest. The table is
utf8mb4 on MariaDB whatever the server's default.

The downgrade drops the table, and with it the trail: it refuses while the table holds
entries unless usersctl passes `discard_audit_trail` (`db downgrade --discard-audit-trail`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context

from usersctl import migration_ops as ops
from usersctl.errors import InvalidData
from usersctl.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ops.create_table_if_missing(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("user_email", sa.String(320), nullable=True),
        sa.Column("changes", sa.Text(), nullable=False),
    )
    ops.create_index_if_missing("ix_audit_log_at", "audit_log", ["at"])
    ops.create_index_if_missing("ix_audit_log_user_id", "audit_log", ["user_id"])
    ops.create_index_if_missing("ix_audit_log_user_email", "audit_log", ["user_email"])


def downgrade() -> None:
    entries = 0
    if ops.has_table("audit_log"):
        count = sa.select(sa.func.count()).select_from(sa.table("audit_log"))
        entries = ops.reader().execute(count).scalar_one()
    if entries and not context.config.attributes.get("discard_audit_trail"):
        raise InvalidData(
            f"cannot downgrade below 0003, nothing changed: the audit trail holds {entries} "
            f"entr{'y' if entries == 1 else 'ies'} and revision 0002 has no place for them. "
            "Keep a copy "
            "(usersctl audit -o jsonl > audit.jsonl), then rerun with --discard-audit-trail."
        )
    ops.drop_index_if_present("ix_audit_log_user_email", "audit_log")
    ops.drop_index_if_present("ix_audit_log_user_id", "audit_log")
    ops.drop_index_if_present("ix_audit_log_at", "audit_log")
    ops.drop_table_if_present("audit_log")
