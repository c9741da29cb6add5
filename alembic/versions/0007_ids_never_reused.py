"""A user id is never handed out again, also on SQLite.

SQLite gives a new row the largest id + 1 unless the table is declared AUTOINCREMENT: the
id of the last user deleted came back for the next user created, so an identity provider
still holding it (SCIM ids must never be reassigned, RFC 7643 3.1), a script holding it, and
`usersctl audit --user` mixed two people. This rebuilds the users table with AUTOINCREMENT
(its rows, columns, defaults, indexes and triggers as they are, also those an application
added; with foreign keys off, so that no row referencing a user is touched), and starts its
counter past every id the table or the audit trail has ever named, so the ids of users
deleted before the upgrade stay unused too. PostgreSQL's sequences and MariaDB's
AUTO_INCREMENT never reuse an id: there it changes nothing but the revision.

The downgrade changes nothing but the revision: revision 0006 reads and writes the rebuilt
table as it did the old one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from usersctl import migration_ops as ops
from usersctl.models import (
    EMAIL_LENGTH,
    EXTERNAL_ID_LENGTH,
    HASH_LENGTH,
    NAME_LENGTH,
    ROLE_LENGTH,
    SOURCE_LENGTH,
    UTCDateTime,
)

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _users_at_0006() -> sa.Table:
    """The users table as revision 0006 leaves it: what a rendered (dry) run copies, when an
    earlier rendered step may still be adding columns to the live table."""
    return sa.Table(
        "users",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("email", sa.String(EMAIL_LENGTH), nullable=False),
        sa.Column("password_hash", sa.String(HASH_LENGTH)),
        sa.Column("role", sa.String(ROLE_LENGTH), nullable=False, server_default="user"),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_login_at", UTCDateTime),
        sa.Column("password_changed_at", UTCDateTime),
        sa.Column("expires_at", UTCDateTime),
        sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("source", sa.String(SOURCE_LENGTH)),
        sa.Column("external_id", sa.String(EXTERNAL_ID_LENGTH)),
    )


INDEXES = (("ix_users_email", ["email"], True), ("ix_users_source", ["source"], False))


class _Untyped(sa.types.UserDefinedType[object]):
    """A column declared without a type (SQLite allows it): rebuilt without one."""

    cache_ok = True

    def get_col_spec(self, **_kwargs: object) -> str:
        return ""


def upgrade() -> None:
    if ops.reader().dialect.name != "sqlite":
        return
    if context.is_offline_mode():
        users_table, kept = _users_at_0006(), []
    else:  # the table as it is: a column, index or trigger the application added is kept
        connection = ops.reader()
        with warnings.catch_warnings():  # (an expression index: replayed from its SQL below)
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            users_table = sa.Table("users", sa.MetaData(), autoload_with=connection)
        for column in users_table.columns:
            if isinstance(column.type, sa.types.NullType):
                column.type = _Untyped()
        users_table.indexes.clear()  # (made again below from their own SQL, exactly)
        master = sa.table(
            "sqlite_master", sa.column("type"), sa.column("name"), sa.column("tbl_name"),
            sa.column("sql"),
        )  # fmt: skip
        kept = list(
            connection.execute(
                sa.select(master.c.sql)
                .where(
                    master.c.tbl_name == "users",
                    master.c.type.in_(("index", "trigger")),
                    master.c.sql.is_not(None),  # (not the automatic index of a UNIQUE)
                )
                .order_by(master.c.type, master.c.name)
            ).scalars()
        )
    # (usersctl runs migrations with foreign keys off on SQLite, so that dropping the old
    # table deletes nothing that references a user: see migrations._locked_transaction)
    with op.batch_alter_table(
        "users",
        recreate="always",
        copy_from=users_table,
        table_kwargs={"sqlite_autoincrement": True},
    ):
        pass
    if context.is_offline_mode():
        for name, columns, unique in INDEXES:
            op.create_index(name, "users", columns, unique=unique)
    for statement in kept:
        # The database's own CREATE INDEX / CREATE TRIGGER, replayed as it stored them (an
        # expression, a WHERE, a DESC, a trigger body: nothing SQLAlchemy reflects whole).
        ops.reader().exec_driver_sql(statement)
    # The counter: past the largest id the users table or the audit trail ever named.
    users = sa.table("users", sa.column("id", sa.Integer))
    audit = sa.table("audit_log", sa.column("user_id", sa.Integer))
    counters = sa.table("sqlite_sequence", sa.column("name", sa.String), sa.column("seq"))
    highest = sa.func.max(
        sa.select(sa.func.coalesce(sa.func.max(users.c.id), 0)).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.max(audit.c.user_id), 0)).scalar_subquery(),
    )
    op.execute(counters.delete().where(counters.c.name == "users"))
    op.execute(
        counters.insert().from_select(
            ["name", "seq"], sa.select(sa.literal("users", sa.String), highest)
        )
    )


def downgrade() -> None:
    pass
