"""Per-invocation state on `ctx.obj`: resolved settings and a lazily opened database."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from usersctl.config import Settings, load_settings

if TYPE_CHECKING:
    from usersctl.database import Database


@dataclass
class AppState:
    database_url: str | None = None  # the --database-url flag, if given
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _database: Database | None = field(default=None, repr=False)
    _checked: bool = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(database_url=self.database_url, debug=self.debug)
        return self._settings

    def database(self) -> Database:
        """The database, without any schema check (for the `db` commands)."""
        if self._database is None:
            from usersctl.database import Database

            self._database = Database(self.settings)
        return self._database

    def ready_database(self, *, write: bool = False) -> Database:
        """The database at head: an empty one is migrated now, any other mismatch is exit 8.
        With `write`, an unwritable SQLite file fails first, before anything is opened."""
        database = self.database()
        if write:
            database.check_writable()
        if not self._checked:
            from usersctl.revision import State, read_status, require_current

            with database.connect(write=False) as connection:
                status = read_status(connection)  # the fast path: no Alembic, no lock
            if status.state is not State.CURRENT:
                from usersctl import migrations

                status = migrations.settled_status(database)
            require_current(status)
            if status.state is State.EMPTY:
                result = migrations.ensure_head(database)
                if result.changed:
                    typer.echo(
                        f"Initialised the database at {database.display_url} "
                        f"(schema revision {result.after}).",
                        err=True,
                    )
            database.use_wal()
            self._checked = True
        return database


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
