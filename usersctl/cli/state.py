"""Per-invocation state on `ctx.obj`: resolved settings and a lazily opened database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from usersctl.cli.text import say
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
            from usersctl.database import Database, refuse_in_memory

            refuse_in_memory(self.settings)
            self._database = Database(self.settings)
        return self._database

    def close(self) -> None:
        """Release the database's connections (at the end of the command)."""
        if self._database is not None:
            self._database.dispose()

    def trail(self, *, dry_run: bool = False) -> Trail:
        """Where this command's changes are recorded (only collected in a dry run)."""
        from usersctl.service import make_trail

        return make_trail(self.settings.actor, dry_run=dry_run)

    def ready_database(self, *, write: bool = False, dry_run: bool = False) -> Database:
        """The database at head (see usersctl.service.check_schema, shared with the API)."""
        database = self.database()
        if self._checked:
            if write:
                database.check_writable()
            return database
        from usersctl.service import check_schema

        database, self._checked = check_schema(
            database,
            write=write,
            dry_run=dry_run,
            announce=say,
            on_initialised=self._note_initialised,
        )
        return database

    def _note_initialised(self, note: str) -> None:
        self.interrupt_note = note

    @contextmanager
    def change(self, *, dry_run: bool = False) -> Iterator[tuple[Session, Trail]]:
        """The write transaction of a command that changes users, and its audit trail
        (usersctl.service.change, shared with the API)."""
        from usersctl.cli.output import report_broken_pipes
        from usersctl.service import change

        report_broken_pipes()
        database = self.ready_database(write=True, dry_run=dry_run)
        with change(database, self.trail(dry_run=dry_run)) as (session, trail):
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
