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
from usersctl.errors import InvalidData

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
    if ops.has_table("users") and "ix_users_email" not in ops.index_names("users"):
        _check_unique_emails()
    ops.create_index_if_missing("ix_users_email", "users", ["email"], unique=True)


def _check_unique_emails() -> None:
    """A tutorial table whose unique index was dropped may hold one email twice: refused
    naming the rows (exit 5), as 0002 refuses emails that differ only in case, instead of
    the index's bare "already taken" (exit 4)."""
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("email", sa.String))
    rows = ops.reader().execute(sa.select(users.c.id, users.c.email).order_by(users.c.id))
    owner: dict[str, int] = {}
    problems: list[str] = []
    for user_id, email in rows:
        if email is None:
            continue
        key = email.rstrip(" ") if ops.is_mysql() else email  # (MariaDB's PAD SPACE)
        if key in owner:
            problems.append(f"users {owner[key]} and {user_id} share email {email!r}")
        owner.setdefault(key, user_id)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidData(
            "cannot upgrade to 0001, nothing changed: "
            + "; ".join(problems[:10])
            + more
            + ". Fix these rows with the old application, then run `usersctl db upgrade` again."
        )


def downgrade() -> None:
    ops.drop_index_if_present("ix_users_email", "users")
    ops.drop_index_if_present("ix_users_id", "users")
    ops.drop_table_if_present("users")
