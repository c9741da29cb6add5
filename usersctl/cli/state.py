"""Per-invocation state on `ctx.obj`: resolved settings and a lazily opened database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from usersctl.config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from usersctl.audit import Trail
    from usersctl.database import Database


COMMITTING = "the change may or may not have been committed: check `usersctl audit`"
COMMITTED = "the change was committed; only its report was cut short"


@dataclass
class AppState:
    database_url: str | None = None  # the --database-url flag, if given
    debug: bool = False
    actor: str | None = None  # the --actor flag, if given
    _settings: Settings | None = field(default=None, repr=False)
    _database: Database | None = field(default=None, repr=False)
    _checked: bool = False
    # What is already written if Ctrl-C comes now (None: nothing, the usual case).
    interrupt_note: str | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                database_url=self.database_url, debug=self.debug, actor=self.actor
            )
        return self._settings

    def database(self) -> Database:
        """The database, without any schema check (for the `db` commands)."""
        if self._database is None:
            from usersctl.database import Database

            self._database = Database(self.settings)
        return self._database

    def close(self) -> None:
        """Release the database's connections (at the end of the command)."""
        if self._database is not None:
            self._database.dispose()

    def trail(self, *, dry_run: bool = False) -> Trail:
        """Where this command's changes are recorded (only collected in a dry run)."""
        from usersctl.audit import Trail

        return Trail(actor=self.settings.actor, dry_run=dry_run)

    def ready_database(self, *, write: bool = False, dry_run: bool = False) -> Database:
        """The database at head: an empty one is migrated now, any other mismatch is exit 8.
        With `write`, an unwritable SQLite file fails first, before anything is opened.

        A dry run checks the same but changes nothing (not even the journal mode): for an
        empty database it returns an empty stand-in at head, which answers every question
        as the real one would once initialised (no users)."""
        database = self.database()
        if write:
            database.check_writable()
        if self._checked:
            return database
        from usersctl.revision import HEAD, State, read_status, require_current

        if database.missing:
            # Only the default location is created on first use: elsewhere a missing file
            # is a mistyped URL, which must not become a new, empty database.
            if not self.settings.url_is_default:
                from usersctl.database import missing_database_message
                from usersctl.errors import DatabaseUnavailable

                raise DatabaseUnavailable(missing_database_message(database.sqlite_path))
            database.create_file(dry_run=dry_run)
            if dry_run:  # (not even the data folder)
                typer.echo(
                    f"Dry run: {database.display_url} does not exist yet; the real run would "
                    f"first create it (revision {HEAD}).",
                    err=True,
                )
                return database.empty_stand_in()

        with database.connect(write=False) as connection:
            status = read_status(connection)  # the fast path: no Alembic, no lock
        if status.state is not State.CURRENT:
            from usersctl import migrations

            status = migrations.settled_status(database)
        require_current(status)
        if dry_run:
            if status.state is State.CURRENT:
                return database
            typer.echo(
                f"Dry run: {database.display_url} has no schema yet; the real run would "
                f"first create it (revision {HEAD}).",
                err=True,
            )
            return database.empty_stand_in()
        if status.state is State.EMPTY:
            result = migrations.ensure_head(database)
            if result.changed:
                self.interrupt_note = f"the database was initialised ({result.after})"
                typer.echo(
                    f"Initialised the database at {database.display_url} "
                    f"(schema revision {result.after}).",
                    err=True,
                )
        database.use_wal()
        self._checked = True
        return database

    @contextmanager
    def change(self, *, dry_run: bool = False) -> Iterator[tuple[Session, Trail]]:
        """The write transaction of a command that changes users, and the audit trail its
        changes go to. In a dry run the transaction is rolled back and the trail only
        collects: afterwards it holds what would have changed."""
        database = self.ready_database(write=True, dry_run=dry_run)
        trail = self.trail(dry_run=dry_run)
        with database.session(write=True, dry_run=dry_run) as session:
            yield session, trail
            if not dry_run:
                self.interrupt_note = COMMITTING
        if not dry_run:
            self.interrupt_note = COMMITTED
            from usersctl.cli.output import note_committed

            note_committed()


def get_state(ctx: typer.Context) -> AppState:
    state = ctx.find_root().obj
    if not isinstance(state, AppState):  # pragma: no cover - the root callback always sets it
        raise RuntimeError("usersctl state missing")
    return state


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
