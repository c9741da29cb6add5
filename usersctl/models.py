"""ORM models at the head revision. Models store; they never validate user input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from usersctl.errors import unreadable_time
from usersctl.rules import (  # the columns' sizes, shared with validation
    ACTION_LENGTH,
    ACTOR_LENGTH,
    EMAIL_LENGTH,
    EXTERNAL_ID_LENGTH,
    HASH_LENGTH,
    NAME_LENGTH,
    ROLE_LENGTH,
    SOURCE_LENGTH,
)

_NAIVE_DIALECTS = {"sqlite", "mysql", "mariadb"}


def utcnow() -> datetime:
    """Now, in UTC, to the second (what every output format shows)."""
    return datetime.now(UTC).replace(microsecond=0)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    PostgreSQL stores `timestamptz`; SQLite and MariaDB have no time zone in their DATETIME,
    so they store naive UTC and get UTC attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name in _NAIVE_DIALECTS else value

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        """SQLite stores a time as text: one another program wrote that is no time
        ('garbage', '2024-13-45') is exit 7 naming the value, not "a bug"."""
        processor = super().result_processor(dialect, coltype)
        if processor is None:
            return None

        def process(value: Any) -> Any:
            try:
                return processor(value)
            except (ValueError, TypeError):  # text that is no time; a number, a BLOB
                raise unreadable_time(value) from None

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # MariaDB's zero date comes back as text
            raise unreadable_time(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# MariaDB/MySQL: every table utf8mb4 whatever the server's default (upstream's is latin1),
# binary collation for exact comparisons as on SQLite and PostgreSQL (the migrations use the
# same options, usersctl.migration_ops.MYSQL_TABLE_OPTIONS).
MYSQL_TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    # AUTOINCREMENT (revision 0007): SQLite never hands out a deleted user's id again.
    __table_args__ = {**MYSQL_TABLE_ARGS, "sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    email: Mapped[str] = mapped_column(String(EMAIL_LENGTH), unique=True, index=True)
    password_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))  # None: no password
    role: Mapped[str] = mapped_column(String(ROLE_LENGTH), default="user", server_default="user")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Account lifecycle (revision 0004).
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # (Server defaults only: bulk inserts name just the columns they set.)
    must_change_password: Mapped[bool] = mapped_column(Boolean, server_default=false())
    failed_logins: Mapped[int] = mapped_column(Integer, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Ownership (revision 0006): the sync source or "scim" that manages the user (None: by
    # hand), and the identity provider's id for it (SCIM externalId).
    source: Mapped[str | None] = mapped_column(String(SOURCE_LENGTH), index=True)
    external_id: Mapped[str | None] = mapped_column(String(EXTERNAL_ID_LENGTH))

    @property
    def has_password(self) -> bool:
        return bool(self.password_hash)

    @property
    def locked(self) -> bool:
        """Locked out after too many failed logins, now (usersctl.lifecycle's clock)."""
        from usersctl.lifecycle import now

        return self.locked_until is not None and self.locked_until > now()


users_table: Table = User.__table__  # type: ignore[assignment]
"""The Core table, for bulk statements that bypass the ORM's per-object bookkeeping."""


class AuditEntry(Base):
    """One change made through usersctl. No foreign key to users: a deleted user's history
    stays. `changes` is a JSON object, field -> {"before", "after"} (a password only ever
    appears as "set" or "changed")."""

    __tablename__ = "audit_log"
    __table_args__ = MYSQL_TABLE_ARGS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    action: Mapped[str] = mapped_column(String(ACTION_LENGTH))
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    user_email: Mapped[str | None] = mapped_column(String(EMAIL_LENGTH), index=True)
    changes: Mapped[str] = mapped_column(Text)


audit_table: Table = AuditEntry.__table__  # type: ignore[assignment]


TOKEN_NAME_LENGTH = 100
DIGEST_LENGTH = 64
SCOPES_LENGTH = 100
SETTING_NAME_LENGTH = 64
SETTING_VALUE_LENGTH = 255


class ApiToken(Base):
    """An admin API token (revision 0005). Only its SHA-256 digest is stored: the token
    itself is shown once, when it is made."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(TOKEN_NAME_LENGTH))
    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    scopes: Mapped[str] = mapped_column(String(SCOPES_LENGTH))  # space separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        UniqueConstraint("name", name="uq_api_tokens_name"),
        UniqueConstraint("digest", name="uq_api_tokens_digest"),
    )


class ApiSetting(Base):
    """Settings every `usersctl serve` process shares (revision 0005): the JWT signing key."""

    __tablename__ = "api_settings"

    name: Mapped[str] = mapped_column(String(SETTING_NAME_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(String(SETTING_VALUE_LENGTH))
