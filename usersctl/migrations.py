"""Embedded Alembic: the Config is built in code and the live connection handed to env.py.

Each operation runs in one transaction on the connection usersctl opened (on SQLite a
BEGIN IMMEDIATE one), so a crash leaves the database at the old revision or the new one,
and two processes upgrading at once queue instead of colliding. The same transaction writes
the operation's audit entry once the audit_log table exists (revision 0003 on).

A dry run runs the real migrations with every statement captured, then rolls back (SQLite
and PostgreSQL undo DDL). MariaDB commits DDL as it goes, so there the SQL is rendered by
Alembic's offline mode instead, after the same checks against the live database.

The scripts ship inside the package (usersctl/_alembic in a wheel; the top-level alembic/
in a source checkout).
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, column, event, func, inspect, select, table

from usersctl.database import Database
from usersctl.errors import DatabaseUnavailable, SchemaMismatch, UsageError
from usersctl.models import Base
from usersctl.revision import (
    AUDIT_REVISION,
    KNOWN_REVISIONS,
    MIGRATION_LOCK_KEY,
    VERSION_TABLE,
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
    connection: Connection | None = None,
    progress: ProgressFactory | None = None,
    **attributes: Any,
) -> Config:
    config = Config(output_buffer=io.StringIO())
    config.set_main_option("script_location", str(script_location()))
    config.attributes["connection"] = connection
    config.attributes["progress"] = progress
    config.attributes.update(attributes)
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


ALIASES = ("head", "base")


def resolve_revision(revision: str, *, aliases: tuple[str, ...] = ALIASES) -> str | None:
    """A revision as the commands take it: 'head', 'base' (None) or an id of
    KNOWN_REVISIONS (which a test keeps equal to the scripts), checked before the database
    is touched. Nothing else (no prefixes, no Alembic branch syntax such as 0003@head):
    anything else is a usage error naming what exists, never Alembic's sentence. `aliases`
    are the ones the message offers (all of ALIASES are accepted)."""
    if revision == "head":
        return KNOWN_REVISIONS[-1]
    if revision == "base":
        return None
    if revision in KNOWN_REVISIONS:
        return revision
    raise UsageError(
        f"unknown revision {revision!r}: give {', '.join(aliases)} or one of "
        f"{KNOWN_REVISIONS[0]}..{KNOWN_REVISIONS[-1]}"
    )


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None
    adopted: bool = False
    sql: str = ""  # what ran (a dry run: would run), as an SQL script with comments
    warnings: tuple[str, ...] = ()  # values kept that usersctl's validators would refuse
    private: bool = False  # the SQLite file was made 0600 (adoption)
    engine: str = ""  # the backend: sqlite, postgresql, mysql
    finished_scrub: bool = False  # finished the scrub an earlier upgrade could not do

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.adopted


def _scrub(db: Database) -> None:
    """Leave no copy of replaced data (old plaintext passwords) in free pages or the WAL.

    Runs after the upgrade committed. On SQLite the upgrade's transaction also set
    `PRAGMA user_version` to _SCRUB_PENDING, cleared here once the scrub is done: when the
    scrub fails (a full disk), the next `db upgrade` finds the mark and finishes it."""
    with db.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        if db.is_sqlite:
            autocommit.exec_driver_sql("VACUUM")
            autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            autocommit.exec_driver_sql("PRAGMA user_version = 0")
        elif db.engine.url.get_backend_name() == "postgresql":
            autocommit.exec_driver_sql("VACUUM FULL users")


_SCRUB_PENDING = 0x75737263  # "usrc": SQLite user_version while a scrub is still to do


def _mark_scrub_pending(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"PRAGMA user_version = {_SCRUB_PENDING}")


def _scrub_pending(db: Database) -> bool:
    if not db.is_sqlite or db.sqlite_path is None or not db.sqlite_path.exists():
        return False
    with db.engine.connect() as connection:
        return bool(connection.exec_driver_sql("PRAGMA user_version").scalar() == _SCRUB_PENDING)


def _already_at(db: Database, target: str) -> bool:
    """The database is at `target` and owes no scrub (read without a write lock)."""
    with db.connect(write=False) as connection:
        at_target = read_status(connection).revision == target
    return at_target and not _scrub_pending(db)


def _finish_scrub(db: Database, result: MigrationResult) -> None:
    """Scrub; when that fails, say what is true: the upgrade is done, the scrub is not."""
    try:
        with db.translate_errors():
            _scrub(db)
    except DatabaseUnavailable as exc:
        done = (
            f"the upgrade to {result.after} is done, but scrubbing old plaintext passwords "
            f"from free space failed"
            if result.changed
            else "scrubbing old plaintext passwords from free space failed again"
        )
        raise DatabaseUnavailable(
            f"{done} ({exc.message}); free some space and run `usersctl db upgrade` again "
            "to finish it"
        ) from None


def _make_private(db: Database) -> bool:
    """An adopted SQLite file now holds password hashes: 0600, like the files usersctl
    creates (with its -wal/-shm/-journal). False when it cannot (another user's file)."""
    path = db.sqlite_path
    if path is None:
        return False
    try:
        for candidate in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            if candidate.exists() and candidate.stat().st_mode & 0o077:
                os.chmod(candidate, 0o600)
    except OSError:
        return False
    return True


_KILL_SWITCH = "USERSCTL_TEST_KILL_AFTER_STATEMENTS"


def _install_kill_switch(connection: Connection) -> None:
    """Test-only: with USERSCTL_TEST_KILL_AFTER_STATEMENTS=N set, this process SIGKILLs
    itself right after the Nth statement of a migration that changes something (DDL and
    DML; each executemany counts once). tests/test_migration_kills.py uses it to crash an
    upgrade at every point; never set it anywhere else. Unset, nothing is installed."""
    value = os.environ.get(_KILL_SWITCH, "")
    if not value.isdigit():
        return
    remaining = [int(value)]

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split(None, 1)
        if words and words[0].upper() in _CHANGING:
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    event.listen(connection, "after_cursor_execute", count)


# MariaDB's named locks are server-wide: one per database (names are at most 64 bytes).
_LOCK_NAME = func.concat("usersctl_migrations_", func.md5(func.database()))


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
    if name == "sqlite":
        # Foreign keys off for the migration (SQLite's own procedure for rebuilding a
        # table, "Making Other Kinds Of Table Schema Changes"): dropping the old users table
        # of a rebuild would otherwise delete, or null, every row of the application's
        # tables that references a user. The rows and their ids are copied as they are, so
        # no reference breaks. (A PRAGMA set inside a transaction is ignored: before BEGIN.)
        # And the legacy RENAME, which leaves views and triggers alone: the modern one checks
        # every view while the rebuilt table is still under its temporary name, and fails
        # on the application's views of users.
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys=OFF")
        driver.execute("PRAGMA legacy_alter_table=ON")
        try:
            with connection.begin():
                yield
        finally:
            driver.execute("PRAGMA legacy_alter_table=OFF")
            driver.execute("PRAGMA foreign_keys=ON")
        return
    with connection.begin():
        if name == "postgresql":  # released when the transaction ends
            connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        yield


Operation = Callable[[Config, Status], MigrationResult]


class _DryRun(Exception):
    """Raised inside the migration transaction to roll a dry run back."""

    def __init__(self, result: MigrationResult) -> None:
        self.result = result


def _run(
    db: Database,
    operation: Operation,
    action: str,
    progress: ProgressFactory | None = None,
    scrub: bool = False,
    any_state: bool = False,
    dry_run: bool = False,
    preflight: bool = True,
    on_commit: Callable[[], None] | None = None,
    **attributes: Any,
) -> MigrationResult:
    """Run `operation` in one locked transaction and record it in the audit trail.

    On MariaDB, whose DDL commits as it goes, the operation is first rendered offline: that
    runs every migration's checks against the live database, so a refusal by the second of
    two steps cannot leave the first one applied."""
    db.check_writable()
    with db.translate_errors():
        with db.engine.connect() as connection:
            _install_kill_switch(connection)
            try:
                with _locked_transaction(connection, db.settings.busy_timeout):
                    status = read_status(connection)
                    if not any_state and status.state in (State.FOREIGN, State.AHEAD):
                        raise SchemaMismatch(mismatch_message(status))
                    config = make_config(connection, progress, **attributes)
                    try:
                        if dry_run:
                            raise _DryRun(_rehearse(connection, config, operation, status))
                        if preflight and connection.dialect.name in ("mysql", "mariadb"):
                            checks = make_config(connection, None, **attributes)
                            _render_offline(connection, checks, operation, status)
                        result = operation(config, status)
                    except CommandError as exc:
                        raise UsageError(str(exc).splitlines()[0]) from None
                    _record(connection, db.settings.actor, action, result)
                    if scrub and _hashed_plaintext(result):
                        _mark_scrub_pending(connection)
                if on_commit is not None:
                    on_commit()
            except _DryRun as rehearsal:  # rolled back: nothing was written
                return rehearsal.result
    result = replace(result, engine=db.engine.url.get_backend_name())
    if result.adopted and db.is_sqlite:
        result = replace(result, private=_make_private(db))
    if scrub and _hashed_plaintext(result):
        _finish_scrub(db, result)
    elif scrub:
        with db.translate_errors():
            pending = _scrub_pending(db)
        if pending:
            _finish_scrub(db, result)
            result = replace(result, finished_scrub=True)
    if result.after is not None:
        with db.translate_errors():
            db.use_wal()
    return result


def _record(connection: Connection, actor: str, action: str, result: MigrationResult) -> None:
    """The audit entry for a migration, once there is an audit_log table to hold it."""
    if not result.changed or result.after not in KNOWN_REVISIONS:
        return
    if KNOWN_REVISIONS.index(result.after) < KNOWN_REVISIONS.index(AUDIT_REVISION):
        return
    if not inspect(connection).has_table("audit_log"):  # (stamped without the table)
        return
    from usersctl.audit import Trail

    before = "0001" if result.adopted else result.before
    changes: dict[str, Any] = {"revision": {"before": before, "after": result.after}}
    if result.adopted:
        changes["adopted"] = {"before": None, "after": "tutorial users table"}
    Trail(actor=actor).record(connection, action, changes=changes)


_CHANGING = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "REPLACE", "RENAME")


def _rehearse(
    connection: Connection, config: Config, operation: Operation, status: Status
) -> MigrationResult:
    """Run `operation` for real, capturing every statement that changes something (the
    caller rolls back). On MariaDB, render the SQL offline instead."""
    if connection.dialect.name in ("mysql", "mariadb"):
        return _render_offline(connection, config, operation, status)
    script: list[str] = []
    step_start = 0

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = statement.strip()
        if text.split(None, 1)[0].upper() in _CHANGING:
            script.append(text.rstrip(";") + ";")  # parameters are never shown: no hashes

    def step_done(*, step: Any, **_kwargs: Any) -> None:
        nonlocal step_start  # a step is reported after its statements: head them
        script.insert(step_start, f"\n-- Running {_describe_step(step)}")
        step_start = len(script)

    config.attributes["on_version_apply"] = [step_done]
    event.listen(connection, "before_cursor_execute", capture)
    try:
        result = operation(config, status)
    finally:
        event.remove(connection, "before_cursor_execute", capture)
    sql = "\n".join(script).strip()
    return replace(result, sql=sql + "\n" if sql else "")


def _describe_step(step: Any) -> str:
    verb = "upgrade" if step.is_upgrade else "downgrade"
    source = ", ".join(step.source_revision_ids) or "base"
    target = ", ".join(step.destination_revision_ids) or "base"
    return f"{verb} {source} -> {target}"


def _render_offline(
    connection: Connection, config: Config, operation: Operation, status: Status
) -> MigrationResult:
    """Alembic's offline mode: the operation's commands write SQL instead of running it.
    The migrations' own checks still read the live database (config.attributes)."""
    config.attributes["offline"] = True
    result = operation(config, status)
    buffer = config.output_buffer
    sql = buffer.getvalue().strip() if isinstance(buffer, io.StringIO) else ""
    return replace(result, sql=sql + "\n" if sql else "")


def _hashed_plaintext(result: MigrationResult) -> bool:
    """Did this upgrade run 0002, the migration that replaces plaintext passwords?"""
    return result.before == "0001" and result.after in KNOWN_REVISIONS[1:]


def _offline(config: Config) -> bool:
    return bool(config.attributes.get("offline"))


def upgrade(
    db: Database,
    revision: str = "head",
    progress: ProgressFactory | None = None,
    *,
    dry_run: bool = False,
    on_commit: Callable[[], None] | None = None,
) -> MigrationResult:
    """Upgrade to `revision`; a tutorial database is first adopted (stamped 0001). A
    missing SQLite file is created (the one command that does); a dry run rehearses on an
    empty in-memory stand-in instead, creating nothing. `on_commit` is called as soon as
    the change is committed."""
    target = resolve_revision(revision, aliases=("head",))
    if db.missing:
        db.create_file(dry_run=dry_run)
        if dry_run:
            return upgrade(db.empty_stand_in(schema=False), revision, progress, dry_run=True)
    if not dry_run:
        try:
            db.check_writable()
        except DatabaseUnavailable:
            # A read-only file (a replica's, chmod 0400) already at the target: there
            # is nothing to write, so nothing to refuse ("make sure the schema is current").
            if target is None or not _already_at(db, target):
                raise
            return MigrationResult(target, target, engine=db.engine.url.get_backend_name())

    def operation(config: Config, status: Status) -> MigrationResult:
        adopted = status.state is State.TUTORIAL
        if target is None and (status.revision is not None or adopted):
            current = status.revision or "(a tutorial database)"
            raise UsageError(
                f"base is older than the current revision {current}: "
                "use `usersctl db downgrade base`"
            )
        if target is not None and status.revision in KNOWN_REVISIONS:
            if KNOWN_REVISIONS.index(target) < KNOWN_REVISIONS.index(status.revision):
                raise UsageError(
                    f"{target} is older than the current revision {status.revision}: "
                    f"use `usersctl db downgrade {target}`"
                )
        before = "0001" if adopted else status.revision
        warnings: list[str] = []
        config.attributes["adopting"] = adopted  # 0002: every password is plaintext
        config.attributes["warnings"] = warnings
        if _offline(config):
            if before != target or adopted:
                start = "" if adopted or not before else f"{before}:"
                command.upgrade(config, f"{start}{target}", sql=True)
            return MigrationResult(before, target, adopted, warnings=tuple(warnings))
        if adopted:
            # From base: 0001 finds the tutorial's table and adds only what a killed first
            # run may have left out. (The tutorial's own Alembic may have left a revision.)
            _forget_revision(config)
        command.upgrade(config, target or "base")
        return MigrationResult(before, _current(config), adopted, warnings=tuple(warnings))

    return _run(
        db, operation, "db-upgrade", progress, scrub=True, dry_run=dry_run, on_commit=on_commit
    )


def downgrade(
    db: Database,
    revision: str,
    *,
    discard_audit_trail: bool = False,
    discard_api_tokens: bool = False,
    dry_run: bool = False,
    on_commit: Callable[[], None] | None = None,
) -> MigrationResult:
    """Downgrade to `revision`. Leaving 0003 drops the audit trail, which the migration
    refuses unless `discard_audit_trail`; leaving 0005 drops the API tokens, refused while
    one still works unless `discard_api_tokens`."""
    target = resolve_revision(revision, aliases=("base",))

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
        if _offline(config):
            if target_index < current_index:
                command.downgrade(config, f"{status.revision}:{target or 'base'}", sql=True)
            return MigrationResult(status.revision, target)
        command.downgrade(config, target or "base")
        return MigrationResult(status.revision, _current(config))

    return _run(
        db,
        operation,
        "db-downgrade",
        dry_run=dry_run,
        discard_audit_trail=discard_audit_trail,
        discard_api_tokens=discard_api_tokens,
        to_base=target is None,
        on_commit=on_commit,
    )


def count_users(db: Database) -> int:
    """How many rows the users table holds (0 without one): what dropping it deletes."""
    with db.connect(write=False) as connection:
        if not inspect(connection).has_table("users"):
            return 0
        return int(
            connection.execute(select(func.count()).select_from(table("users"))).scalar_one()
        )


def stamp(
    db: Database,
    revision: str,
    *,
    dry_run: bool = False,
    on_commit: Callable[[], None] | None = None,
) -> MigrationResult:
    """Record `revision` without running migrations (for databases migrated by other means).
    Refuses (exit 8) when the tables present contradict it: a later `db upgrade` would then
    fail half-way (`table audit_log already exists`), or every command would refuse."""
    target = resolve_revision(revision)

    def operation(config: Config, status: Status) -> MigrationResult:
        connection = config.attributes["connection"]
        if status.state is State.TUTORIAL:
            # Its 0001 fits, but stamping it would skip adoption: the plaintext passwords
            # would then be taken for hashes where they look like one, the file left as
            # readable as it was.
            raise SchemaMismatch(
                "refusing to stamp the tutorial's database: `usersctl db upgrade` adopts it "
                "(hashing its plaintext passwords); nothing changed"
            )
        found, matches = describe_tables(connection)
        if target not in matches:
            fits = " or ".join(r or "base" for r in matches) or "no revision usersctl knows"
            raise SchemaMismatch(
                f"refusing to stamp {target or 'base'}: the database has {found}, which fits "
                f"{'revision ' if matches else ''}{fits}, not {target or 'base'}; nothing changed"
            )
        if _offline(config):
            command.stamp(config, target or "base", sql=True)
        else:
            command.stamp(config, target or "base", purge=True)
        return MigrationResult(status.revision, target)

    # Works from any recorded revision (the escape hatch), but only to one the tables fit.
    return _run(
        db,
        operation,
        "db-stamp",
        any_state=True,
        preflight=False,
        dry_run=dry_run,
        on_commit=on_commit,
    )


LIFECYCLE_REVISION = "0004"
LIFECYCLE_COLUMNS = frozenset(
    {"last_login_at", "password_changed_at", "expires_at", "must_change_password",
     "failed_logins", "locked_until"}
)  # fmt: skip
"""The columns revision 0004 adds (alembic/versions/0004_account_lifecycle.py)."""


API_REVISION = "0005"
API_TABLES = frozenset({"api_tokens", "api_settings"})
"""The tables revision 0005 adds (alembic/versions/0005_api_tokens.py)."""
OWNERSHIP_REVISION = "0006"
OWNERSHIP_COLUMNS = frozenset({"source", "external_id"})
"""The columns revision 0006 adds (alembic/versions/0006_user_source.py)."""
IDS_REVISION = "0007"
"""Ids never reused: on SQLite, users declared AUTOINCREMENT (0007_ids_never_reused.py)."""


def _revisions_of_full_shape(connection: Connection) -> list[str | None]:
    """0006 and 0007 have the same tables and columns; on SQLite, 0007's users table is
    AUTOINCREMENT (which 0006 works with too: its downgrade keeps it)."""
    if connection.dialect.name != "sqlite":
        return [OWNERSHIP_REVISION, IDS_REVISION]
    master = table("sqlite_master", column("name"), column("sql"))
    sql = connection.execute(select(master.c.sql).where(master.c.name == "users")).scalar()
    autoincrement = "AUTOINCREMENT" in str(sql or "").upper()
    return [OWNERSHIP_REVISION, IDS_REVISION] if autoincrement else [OWNERSHIP_REVISION]


def describe_tables(connection: Connection) -> tuple[str, list[str | None]]:
    """What usersctl's tables look like, in words, and the revisions they fit."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    has_audit = "audit_log" in tables
    if "users" not in tables:
        if has_audit:
            return "an audit_log table but no users table", []
        return "no users or audit_log table", [None]
    columns = {column["name"] for column in inspector.get_columns("users")}
    count = connection.execute(select(func.count()).select_from(table("users"))).scalar_one()
    users = f"{count} user{'' if count == 1 else 's'}"
    if "password_hash" not in columns:
        shape = f"the tutorial's users table (plaintext password column, {users})"
        fits: list[str | None] = [] if has_audit else ["0001"]
    else:
        shape = f"a users table with hashed passwords ({users})"
        audit_from = KNOWN_REVISIONS.index(AUDIT_REVISION)
        lifecycle = LIFECYCLE_COLUMNS & columns
        if not has_audit:
            fits = list(KNOWN_REVISIONS[1:audit_from]) if not lifecycle else []
        elif lifecycle == LIFECYCLE_COLUMNS:
            shape += " with the account lifecycle columns"
            api = API_TABLES & tables
            ownership = OWNERSHIP_COLUMNS & columns
            if ownership == OWNERSHIP_COLUMNS and api == API_TABLES:
                shape += ", the API tables, the ownership columns"
                fits = _revisions_of_full_shape(connection)
            elif api == API_TABLES:
                # (some of 0006's columns: a MariaDB upgrade killed part-way)
                shape += ", the API tables" + (", some ownership columns" if ownership else "")
                fits = [API_REVISION]
            else:  # none or some of 0005's tables
                shape += ", some of the API tables" if api else ""
                fits = [LIFECYCLE_REVISION]
        else:  # none of 0004's columns, or some (a MariaDB upgrade killed part-way: the
            # next db upgrade adds the rest)
            if lifecycle:
                shape += " with some of the account lifecycle columns"
            fits = list(KNOWN_REVISIONS[audit_from : KNOWN_REVISIONS.index(LIFECYCLE_REVISION)])
    shape += " and an audit_log table" if has_audit else " and no audit_log table"
    return shape, fits


def _forget_revision(config: Config) -> None:
    connection: Connection = config.attributes["connection"]
    if inspect(connection).has_table(VERSION_TABLE):
        connection.execute(table(VERSION_TABLE).delete())


def _current(config: Config) -> str | None:
    connection = config.attributes["connection"]
    return MigrationContext.configure(connection).get_current_revision()


def current(db: Database) -> Status:
    with db.connect(write=False) as connection:
        return read_status(connection)


def schema_differences(db: Database, *, ours_only: bool = True) -> list[str]:
    """What Alembic's autogenerate finds between the models and the database, in words
    (ideally none). With `ours_only`, only usersctl's own tables, columns, indexes and
    constraints count: an application's table, its added column or its index on users are
    no difference (without it, the tests check that migrations make nothing but the
    models)."""
    import warnings

    from sqlalchemy.exc import SAWarning

    def ours(_object: Any, _name: Any, _kind: str, reflected: bool, compare_to: Any) -> bool:
        return not (ours_only and reflected and compare_to is None)  # only in the database

    with db.connect(write=False) as connection, warnings.catch_warnings():
        # (an application's expression index cannot be reflected: not a difference in
        # usersctl's tables, and no reason for a raw warning on stderr)
        warnings.simplefilter("ignore", SAWarning)
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": ours}
        )
        return [_in_words(diff) for diff in compare_metadata(context, Base.metadata)]


def _in_words(diff: Any) -> str:
    """One of Alembic's diff tuples (modify_* ones come grouped in a list per column)."""
    if isinstance(diff, list):
        diff = diff[0]
    kind = diff[0]
    if kind == "add_table":
        return f"table {diff[1].name} is missing"
    if kind == "add_column":
        return f"column {diff[2]}.{diff[3].name} is missing"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        columns = ", ".join(getattr(c, "name", str(c)) for c in index.expressions)
        what = f"index {index.name} on {index.table.name} ({columns})"
        return f"{what} is missing" if kind == "add_index" else f"{what} is not usersctl's"
    if kind in ("add_constraint", "remove_constraint"):
        constraint = diff[1]
        state = "missing" if kind == "add_constraint" else "not usersctl's"
        return f"constraint {constraint.name or type(constraint).__name__} is {state}"
    if kind.startswith("modify_"):
        _, _, table_name, column, _, found, wanted = diff
        what = kind.removeprefix("modify_")
        if what == "nullable":
            found = "NULL allowed" if found else "NOT NULL"
            wanted = "NULL allowed" if wanted else "NOT NULL"
        return f"column {table_name}.{column}: {what} is {found}, usersctl's models say {wanted}"
    return f"{kind.replace('_', ' ')}: {diff[1:]}"  # (no other kind is expected)


def settled_status(db: Database) -> Status:
    """The schema status once no migration is running: read under the migration lock (on
    MariaDB, whose DDL commits as it goes, another process may be half-way through)."""
    with db.translate_errors(), db.engine.connect() as connection:
        with _locked_transaction(connection, db.settings.busy_timeout):
            return read_status(connection)


def ensure_head(db: Database, progress: ProgressFactory | None = None) -> MigrationResult:
    """Bring an empty database to head (what every command does on first use)."""
    return upgrade(db, "head", progress)
