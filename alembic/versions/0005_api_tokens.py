"""The HTTP API's credentials: admin API tokens and the shared settings (JWT signing key).

api_tokens holds each token's name, SHA-256 digest (never the token), scopes, expiry, last
use and revocation. api_settings holds what every `usersctl serve` process on the database
shares: the JWT signing key, made by the first server that needs it (never by this script,
so a rendered dry run shows no secret) and replaced by `usersctl token rotate-signing-key`.

MariaDB commits each CREATE as it runs, so every step first checks whether it is already
done: a run interrupted half-way is finished by running it again. Tables are utf8mb4.

The downgrade drops both tables: every API token and login token stops working (make new
ones after upgrading again). It refuses while a token still works (not revoked, not
expired) unless usersctl passes `discard_api_tokens` (`db downgrade --discard-api-tokens`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

from usersctl.errors import InvalidData
from usersctl.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _reader() -> sa.Connection:
    """A live connection for checks, also when the SQL is only rendered (dry run)."""
    if context.is_offline_mode():
        return context.config.attributes["connection"]  # type: ignore[no-any-return]
    return op.get_bind()


def _tables() -> set[str]:
    return set(sa.inspect(_reader()).get_table_names())


def upgrade() -> None:
    tables = _tables()
    if "api_tokens" not in tables:
        op.create_table(
            "api_tokens",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("scopes", sa.String(100), nullable=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("expires_at", UTCDateTime(), nullable=True),
            sa.Column("last_used_at", UTCDateTime(), nullable=True),
            sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()),
            sa.UniqueConstraint("name", name="uq_api_tokens_name"),
            sa.UniqueConstraint("digest", name="uq_api_tokens_digest"),
            **_MYSQL,
        )
    if "api_settings" not in tables:
        op.create_table(
            "api_settings",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
            **_MYSQL,
        )


def downgrade() -> None:
    tables = _tables()
    attributes = context.config.attributes
    # (To base every table goes, which the command asked consent for, saying so.)
    discard = attributes.get("discard_api_tokens") or attributes.get("to_base", False)
    if "api_tokens" in tables and not discard:
        tokens = sa.table(
            "api_tokens",
            sa.column("revoked", sa.Boolean()),
            sa.column("expires_at", UTCDateTime()),
        )
        now = sa.bindparam("now", datetime.now(UTC), type_=UTCDateTime())
        working = sa.select(sa.func.count()).where(
            tokens.c.revoked == sa.false(),
            sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
        )
        live = _reader().execute(working).scalar_one()
        if live:
            raise InvalidData(
                f"cannot downgrade below 0005, nothing changed: {live} API token(s) still "
                "work, and revision 0004 has no place for them (every login token would stop "
                "working too). Revoke them first (usersctl token list; usersctl token revoke "
                "NAME), or rerun with --discard-api-tokens."
            )
    if "api_settings" in tables:
        op.drop_table("api_settings")
    if "api_tokens" in tables:
        op.drop_table("api_tokens")
