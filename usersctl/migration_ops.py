"""Re-runnable operations for the migration scripts (alembic/versions).

MariaDB commits every DDL statement on its own, so a migration killed half-way leaves some
of its steps applied while `alembic_version` still names the old revision. Each helper
here first looks at the live database and does only what is missing, so running the same
migration again (the next `usersctl db upgrade`) finishes it. On SQLite and PostgreSQL a
migration is one transaction and the checks always find the old revision; they cost a few
catalogue reads.

In offline mode (dry runs, and MariaDB's preflight) the checks read the live database
through the connection usersctl put in `config.attributes`, and what is missing there is
rendered as SQL.

Imported only by the migration scripts, which ship inside the package (usersctl/_alembic).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from alembic.operations import BatchOperations

from usersctl.models import MYSQL_TABLE_ARGS

# Every table usersctl creates on MariaDB/MySQL: utf8mb4 whatever the server's default
# (upstream's is latin1), with the binary collation so that comparisons are exact as on
# SQLite and PostgreSQL (usersctl lowercases emails itself).
MYSQL_TABLE_OPTIONS = MYSQL_TABLE_ARGS


def reader() -> sa.Connection:
    """A live connection for reads, also when the SQL is only rendered (dry run, offline)."""
    if context.is_offline_mode():
        return context.config.attributes["connection"]  # type: ignore[no-any-return]
    return op.get_bind()


def is_mysql() -> bool:
    return reader().dialect.name in ("mysql", "mariadb")


def has_table(table: str) -> bool:
    return sa.inspect(reader()).has_table(table)


def _live(table: str, kind: str) -> set[str] | None:
    """The names of `table`'s columns or indexes in the live database. None when rendering
    offline a table that an earlier rendered step creates: then every operation on it is
    rendered, as for a database at the previous revision."""
    if not has_table(table):
        return None if context.is_offline_mode() else set()
    inspector = sa.inspect(reader())
    if kind == "columns":
        return {column["name"] for column in inspector.get_columns(table)}
    return {str(index["name"]) for index in inspector.get_indexes(table)}


def column_names(table: str) -> set[str]:
    """The columns `table` has in the live database (none when it does not exist)."""
    return _live(table, "columns") or set()


def create_table_if_missing(table: str, *columns: Any, **kwargs: Any) -> None:
    if not has_table(table):
        options: dict[str, Any] = {**MYSQL_TABLE_OPTIONS, **kwargs}
        op.create_table(table, *columns, **options)


def drop_table_if_present(table: str) -> None:
    if has_table(table) or context.is_offline_mode():
        op.drop_table(table)


def create_index_if_missing(
    name: str, table: str, columns: Sequence[str], *, unique: bool = False
) -> None:
    if name not in (_live(table, "indexes") or set()):
        op.create_index(name, table, list(columns), unique=unique)


def drop_index_if_present(name: str, table: str, batch: BatchOperations | None = None) -> None:
    existing = _live(table, "indexes")
    if existing is None or name in existing:
        if batch is not None:
            batch.drop_index(name)
        else:
            op.drop_index(name, table_name=table)


def add_column_if_missing(
    table: str, column: sa.Column[Any], batch: BatchOperations | None = None
) -> None:
    if column.name not in (_live(table, "columns") or set()):
        if batch is not None:
            batch.add_column(column)
        else:
            op.add_column(table, column)


def drop_column_if_present(table: str, name: str, batch: BatchOperations | None = None) -> None:
    existing = _live(table, "columns")
    if existing is None or name in existing:
        if batch is not None:
            batch.drop_column(name)
        else:
            op.drop_column(table, name)


def convert_to_utf8mb4(table: str) -> None:
    """MariaDB/MySQL: convert a table made with the server's default character set (the
    tutorial app's, on a latin1 server) to utf8mb4, lossless. Elsewhere, nothing."""
    if not is_mysql() or not has_table(table):
        return
    collation = (
        reader()
        .execute(
            sa.text(
                "SELECT table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = :table"
            ),
            {"table": table},
        )
        .scalar()
    )
    if collation != MYSQL_TABLE_OPTIONS["mysql_collate"]:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")


def index_names(table: str) -> set[str]:
    """The indexes `table` has in the live database (none when it does not exist)."""
    return _live(table, "indexes") or set()
