"""Which schema revision a database is at, without importing Alembic.

Every command checks this before touching data; Alembic itself (~45 ms of imports) is
loaded only when a migration has to run. KNOWN_REVISIONS is kept equal to
alembic/versions by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection, column, inspect, select, table

from usersctl.errors import SchemaMismatch

KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
AUDIT_REVISION = "0003"  # the first revision with the audit_log table
HEAD = KNOWN_REVISIONS[-1]
TUTORIAL_COLUMNS = {"id", "name", "email", "password"}
VERSION_TABLE = "alembic_version"
MIGRATION_LOCK_KEY = 0x75736572  # "user": PostgreSQL advisory lock key for migrations
REVISION_QUERY = select(table(VERSION_TABLE, column("version_num")).c.version_num)


class State(Enum):
    EMPTY = "empty"  # no tables (or only an empty alembic_version): brought to head on use
    TUTORIAL = "tutorial"  # the tutorial app's users table, never stamped: adopt with upgrade
    FOREIGN = "foreign"  # tables usersctl did not make: never touched
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"  # a revision this usersctl does not know (made by a newer one)


@dataclass(frozen=True)
class Status:
    state: State
    revision: str | None


def read_status(connection: Connection) -> Status:
    tables = set(inspect(connection).get_table_names())
    revision: str | None = None
    if VERSION_TABLE in tables:
        revision = connection.execute(REVISION_QUERY).scalar()
    user_tables = tables - {VERSION_TABLE}
    if revision in KNOWN_REVISIONS:
        return Status(State.CURRENT if revision == HEAD else State.BEHIND, revision)
    if not user_tables and revision is None:
        return Status(State.EMPTY, None)
    if user_tables == {"users"}:
        columns = {col["name"] for col in inspect(connection).get_columns("users")}
        if columns == TUTORIAL_COLUMNS:
            # Never stamped, or stamped by the tutorial's own `alembic upgrade head`.
            return Status(State.TUTORIAL, revision)
    if revision is None:
        return Status(State.FOREIGN, None)
    return Status(State.AHEAD, revision)


def mismatch_message(status: Status) -> str:
    if status.state is State.TUTORIAL:
        return (
            "database holds the tutorial app's users table (plaintext passwords, no schema "
            "version): run `usersctl db upgrade` to adopt it"
        )
    if status.state is State.FOREIGN:
        return "database has tables that usersctl did not create; refusing to use it"
    if status.state is State.BEHIND:
        return (
            f"database schema is at revision {status.revision}, this usersctl needs {HEAD}: "
            "run `usersctl db upgrade`"
        )
    return (
        f"database schema is at revision {status.revision}, newer than this usersctl "
        f"knows ({HEAD}): upgrade usersctl"
    )


def require_head(connection: Connection) -> None:
    """For a long-running server, in every transaction: the database is still at this
    usersctl's head. A `db upgrade` by a newer usersctl, or a downgrade, while it runs is
    then exit 8 (HTTP 503) at once, as for a command, instead of writes made under an old
    schema's rules. One primary-key read; the full look only when it differs."""
    if connection.execute(REVISION_QUERY).scalar() == HEAD:
        return
    status = read_status(connection)
    if status.state is not State.CURRENT:
        if status.state is State.EMPTY:
            raise SchemaMismatch("database has no schema: run `usersctl db upgrade`")
        raise SchemaMismatch(mismatch_message(status))


def require_current(status: Status) -> None:
    if status.state not in (State.CURRENT, State.EMPTY):
        raise SchemaMismatch(mismatch_message(status))
