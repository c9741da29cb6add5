"""Embedded Alembic: the Config is built in code and the live connection handed to env.py.

Each operation runs in one transaction on the connection usersctl opened (on SQLite a
BEGIN IMMEDIATE one), so a crash leaves the database at the old revision or the new one,
and two processes upgrading at once queue instead of colliding. The scripts ship inside the
package (usersctl/_alembic in a wheel; the top-level alembic/ in a source checkout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, func, select

from usersctl.database import Database
from usersctl.errors import DatabaseUnavailable, SchemaMismatch, UsageError
from usersctl.models import Base
from usersctl.revision import (
    KNOWN_REVISIONS,
    State,
    Status,
    mismatch_message,
    read_status,
)

ProgressFactory = Callable[[int], Callable[[int], None]]
"""Given a total, returns a function that advances a progress display by n steps."""


def script_location() -> Path:
    packaged = Path(__file__).resolve().parent / "_alembic"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "alembic"


def make_config(
    connection: Connection | None = None, progress: ProgressFactory | None = None
) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["connection"] = connection
    config.attributes["progress"] = progress
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(make_config())


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str


def history() -> list[Revision]:
    """Every revision, oldest first."""
    scripts = script_directory()
    revisions = [
        Revision(
            revision=script.revision,
            down_revision=script.down_revision if isinstance(script.down_revision, str) else None,
            message=(script.doc or "").strip().splitlines()[0] if script.doc else "",
        )
        for script in scripts.walk_revisions()
    ]
    return list(reversed(revisions))


def _resolve(revision: str) -> str | None:
    """Check a revision name or alias (head, base, 0001) before touching the database."""
    if revision == "base":
        return None
    try:
        script = script_directory().get_revision(revision)
    except CommandError as exc:
        raise UsageError(f"unknown revision {revision!r}: {exc}") from None
    if script is None:
        raise UsageError(f"unknown revision {revision!r}")
    return script.revision


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None
    adopted: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.adopted


def _scrub(db: Database) -> None:
    """Leave no copy of replaced data (old plaintext passwords) in free pages or the WAL."""
    with db.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        if db.is_sqlite:
            autocommit.exec_driver_sql("VACUUM")
            autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif db.engine.url.get_backend_name() == "postgresql":
            autocommit.exec_driver_sql("VACUUM FULL users")


_LOCK_NAME = "usersctl_migrations"
_LOCK_KEY = 0x75736572  # "user": PostgreSQL advisory lock key for migrations


@contextmanager
def _locked_transaction(connection: Connection, timeout: float) -> Iterator[None]:
    """One transaction that holds the migration lock, serialising migrations between
    processes on server engines as BEGIN IMMEDIATE does on SQLite: the second of two
    processes that find an empty database waits, then sees head."""
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        # A session lock, taken *before* the transaction so that its snapshot comes after
        # whatever the previous holder committed.
        got = connection.execute(select(func.get_lock(_LOCK_NAME, int(timeout)))).scalar()
        connection.commit()
        if got != 1:
            raise DatabaseUnavailable("another usersctl is migrating this database; retry later")
        try:
            with connection.begin():
                yield
        finally:
            connection.execute(select(func.release_lock(_LOCK_NAME)))
            connection.commit()
        return
    with connection.begin():
        if name == "postgresql":  # released when the transaction ends
            connection.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        yield


def _run(
    db: Database,
    operation: Callable[[Config, Status], MigrationResult],
    progress: ProgressFactory | None = None,
    scrub: bool = False,
    any_state: bool = False,
) -> MigrationResult:
    db.check_writable()
    with db.translate_errors():
        with db.engine.connect() as connection:
            with _locked_transaction(connection, db.settings.busy_timeout):
                status = read_status(connection)
                if not any_state and status.state in (State.FOREIGN, State.AHEAD):
                    raise SchemaMismatch(mismatch_message(status))
                try:
                    result = operation(make_config(connection, progress), status)
                except CommandError as exc:
                    raise UsageError(str(exc).splitlines()[0]) from None
        if scrub and _hashed_plaintext(result):
            _scrub(db)
        if result.after is not None:
            db.use_wal()
    return result


def _hashed_plaintext(result: MigrationResult) -> bool:
    """Did this upgrade run 0002, the migration that replaces plaintext passwords?"""
    return result.before == "0001" and result.after in KNOWN_REVISIONS[1:]


def upgrade(
    db: Database, revision: str = "head", progress: ProgressFactory | None = None
) -> MigrationResult:
    """Upgrade to `revision`; a tutorial database is first adopted (stamped 0001)."""
    target = _resolve(revision)

    def operation(config: Config, status: Status) -> MigrationResult:
        adopted = status.state is State.TUTORIAL
        if target is not None and status.revision in KNOWN_REVISIONS:
            if KNOWN_REVISIONS.index(target) < KNOWN_REVISIONS.index(status.revision):
                raise UsageError(
                    f"{target} is older than the current revision {status.revision}: "
                    f"use `usersctl db downgrade {target}`"
                )
        if adopted:  # (purge: the tutorial's own Alembic may have left a revision of its own)
            command.stamp(config, "0001", purge=True)
        before = "0001" if adopted else status.revision
        command.upgrade(config, target or "base")
        return MigrationResult(before, _current(config), adopted)

    return _run(db, operation, progress, scrub=True)


def downgrade(db: Database, revision: str) -> MigrationResult:
    target = _resolve(revision)

    def operation(config: Config, status: Status) -> MigrationResult:
        if status.state is State.TUTORIAL:
            raise SchemaMismatch(mismatch_message(status))
        current_index = KNOWN_REVISIONS.index(status.revision) if status.revision else -1
        target_index = KNOWN_REVISIONS.index(target) if target else -1
        if target_index > current_index:
            raise UsageError(
                f"{target} is newer than the current revision "
                f"{status.revision or 'base'}: use `usersctl db upgrade {target}`"
            )
        command.downgrade(config, target or "base")
        return MigrationResult(status.revision, _current(config))

    return _run(db, operation)


def stamp(db: Database, revision: str) -> MigrationResult:
    """Record `revision` without running migrations (for databases migrated by other means)."""
    target = _resolve(revision)

    def operation(config: Config, status: Status) -> MigrationResult:
        command.stamp(config, target or "base", purge=True)
        return MigrationResult(status.revision, target)

    # The escape hatch: works whatever state the database is in.
    return _run(db, operation, any_state=True)


def _current(config: Config) -> str | None:
    connection = config.attributes["connection"]
    return MigrationContext.configure(connection).get_current_revision()


def current(db: Database) -> Status:
    with db.connect(write=False) as connection:
        return read_status(connection)


def schema_differences(db: Database) -> list[Any]:
    """What Alembic's autogenerate finds between the models and the database (ideally [])."""
    with db.connect(write=False) as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def settled_status(db: Database) -> Status:
    """The schema status once no migration is running: read under the migration lock (on
    MariaDB, whose DDL commits as it goes, another process may be half-way through)."""
    with db.translate_errors(), db.engine.connect() as connection:
        with _locked_transaction(connection, db.settings.busy_timeout):
            return read_status(connection)


def ensure_head(db: Database, progress: ProgressFactory | None = None) -> MigrationResult:
    """Bring an empty database to head (what every command does on first use)."""
    return upgrade(db, "head", progress)
