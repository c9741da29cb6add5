"""Account lifecycle: logins, lockout, expiry, forced change, users without a password.

Adds last_login_at, password_changed_at (existing users get their updated_at), expires_at,
must_change_password, failed_logins and locked_until to users, and lets password_hash be
NULL (an account provisioned by SSO or HR that has no password yet).

MariaDB commits each ALTER as it runs, so every step first checks whether it is already
done (usersctl.migration_ops): a run interrupted half-way is finished by running it again.

The downgrade drops the new columns. It refuses while a user has no password (revision 0003
requires one), has an expiry date (the account would silently stop expiring), is locked
out (the lock would silently end) or must change their password (they could keep the one
an admin set): 0003 cannot represent any of these. Login times, password-change times and
failure counters are dropped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from usersctl import migration_ops as ops
from usersctl.errors import InvalidData
from usersctl.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_COLUMNS = (
    "last_login_at",
    "password_changed_at",
    "expires_at",
    "must_change_password",
    "failed_logins",
    "locked_until",
)


def _new_column(name: str) -> sa.Column[object]:
    columns: dict[str, sa.Column[object]] = {
        "last_login_at": sa.Column("last_login_at", UTCDateTime(), nullable=True),
        "password_changed_at": sa.Column("password_changed_at", UTCDateTime(), nullable=True),
        "expires_at": sa.Column("expires_at", UTCDateTime(), nullable=True),
        "must_change_password": sa.Column(
            "must_change_password", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
        "failed_logins": sa.Column(
            "failed_logins", sa.Integer(), nullable=False, server_default="0"
        ),
        "locked_until": sa.Column("locked_until", UTCDateTime(), nullable=True),
    }
    return columns[name]


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        for name in NEW_COLUMNS:
            ops.add_column_if_missing("users", _new_column(name), batch)
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=True)
    users = sa.table(
        "users",
        sa.column("password_changed_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    # Re-runnable: only the rows not yet given a value.
    op.execute(
        sa.update(users)
        .where(users.c.password_changed_at.is_(None))
        .values(password_changed_at=users.c.updated_at)
    )


def downgrade() -> None:
    existing = ops.column_names("users")
    users = sa.table(
        "users",
        sa.column("password_hash", sa.String),
        sa.column("expires_at", UTCDateTime()),
        sa.column("locked_until", UTCDateTime()),
        sa.column("must_change_password", sa.Boolean()),
    )
    reader = ops.reader()
    if "expires_at" in existing:
        count = sa.select(sa.func.count()).select_from(users)
        no_password = reader.execute(
            count.where(sa.or_(users.c.password_hash.is_(None), users.c.password_hash == ""))
        ).scalar_one()
        expiring = reader.execute(count.where(users.c.expires_at.is_not(None))).scalar_one()
        locked = reader.execute(count.where(users.c.locked_until > datetime.now(UTC))).scalar_one()
        must_change = reader.execute(
            count.where(users.c.must_change_password == sa.true())
        ).scalar_one()
        # What 0003 cannot represent, and what the admin can do about it first.
        problems = [
            (no_password, "have no password (give them one: usersctl passwd)"),
            (expiring, "have an expiry date (usersctl update USER --expires never)"),
            (locked, "are locked out (usersctl unlock --locked)"),
            (
                must_change,
                "must change their password, or would keep one an admin set (let them "
                "change it first; usersctl list --must-change)",
            ),
        ]
        found = [f"{number} user(s) {what}" for number, what in problems if number]
        if found:
            raise InvalidData(
                "cannot downgrade below 0004, nothing changed: revision 0003 cannot "
                "represent these accounts: " + "; ".join(found)
            )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=False)
        for name in reversed(NEW_COLUMNS):
            ops.drop_column_if_present("users", name, batch)
