"""The tutorial app's users table, exactly as its `create_all` made it.

A `users.db` made by the tutorial app is this revision without an alembic_version row;
`usersctl db upgrade` recognises it and upgrades from base: this step then only adds what
the tutorial's table lacks (nothing, or an index a killed first run did not create).
Every step is re-runnable (see usersctl/migration_ops.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa

from usersctl import migration_ops as ops

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tutorial declared bare VARCHARs; MariaDB/MySQL cannot index a VARCHAR without a length.
TUTORIAL_VARCHAR = sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def upgrade() -> None:
    ops.create_table_if_missing(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", TUTORIAL_VARCHAR, nullable=False),
        sa.Column("email", TUTORIAL_VARCHAR, nullable=False),
        sa.Column("password", TUTORIAL_VARCHAR, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # MariaDB/MySQL (ops.MYSQL_TABLE_OPTIONS): utf8mb4 whatever the server default, and
        # byte-exact comparison, so the unique email index never treats "josé@x" and
        # "jose@x" as one (usersctl lowercases emails itself).
    )
    ops.create_index_if_missing("ix_users_id", "users", ["id"])
    ops.create_index_if_missing("ix_users_email", "users", ["email"], unique=True)


def downgrade() -> None:
    ops.drop_index_if_present("ix_users_email", "users")
    ops.drop_index_if_present("ix_users_id", "users")
    ops.drop_table_if_present("users")
