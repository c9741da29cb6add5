"""The tutorial app's users table, exactly as its `create_all` made it.

A `users.db` made by the tutorial app is this revision without an alembic_version row;
`usersctl db upgrade` recognises it, stamps 0001 and upgrades from here.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tutorial declared bare VARCHARs; MariaDB/MySQL cannot index a VARCHAR without a length.
TUTORIAL_VARCHAR = sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", TUTORIAL_VARCHAR, nullable=False),
        sa.Column("email", TUTORIAL_VARCHAR, nullable=False),
        sa.Column("password", TUTORIAL_VARCHAR, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # MariaDB/MySQL only: byte-exact comparison, so the unique email index never treats
        # "josé@x" and "jose@x" as one (usersctl lowercases emails itself).
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_users_id", "users", ["id"], unique=False)
    op.create_index("ix_users_email", "users", ["email"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_email", table_name="users")
    op.drop_index("ix_users_id", table_name="users")
    op.drop_table("users")
