"""What both front ends (the CLI and the HTTP API) use around crud: the schema check, the
write transaction with its audit trail, and how each error class is reported.

Nothing here prints or exits: the CLI turns an error into its exit code and one line on
stderr, the API into the HTTP status of the same row (`HTTP_STATUS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from usersctl.errors import UsersctlError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from usersctl.audit import Trail
    from usersctl.database import Database

# The exit-code table as HTTP statuses: the one place the API maps errors (README "Exit
# codes", "Serving the API"). Anything else, a bug included, is 500.
HTTP_STATUS = {
    2: 400,  # usage error (e.g. an unknown sort field)
    3: 404,  # user not found
    4: 409,  # conflict: email already taken
    5: 422,  # invalid data
    6: 401,  # verification failed (the API adds WWW-Authenticate: Bearer)
    7: 503,  # database unavailable
    8: 503,  # schema mismatch
    9: 409,  # refused by a safety limit (sync's --max-prune); nothing changed
    10: 500,  # output failed: the CLI's own stdout or file, never an HTTP response
}


def http_status(exc: UsersctlError) -> int:
    """The HTTP status for a domain error, from its exit code (or its own)."""
    return exc.http_status or HTTP_STATUS.get(exc.exit_code, 500)


def check_schema(
    database: Database,
    *,
    write: bool = False,
    dry_run: bool = False,
    announce: Callable[[str], None] = lambda _message: None,
    on_initialised: Callable[[str], None] = lambda _note: None,
) -> tuple[Database, bool]:
    """The database at head: an empty one is migrated now, any other mismatch is exit 8.
    With `write`, an unwritable SQLite file fails first, before anything is opened.

    A dry run checks the same but changes nothing (not even the journal mode): for an
    empty database it returns an empty stand-in at head, which answers every question
    as the real one would once initialised (no users). Returns the database to use and
    whether the check is settled for the rest of the process (not after a dry run)."""
    if write:
        database.check_writable()
    from usersctl.revision import HEAD, State, read_status, require_current

    if database.missing:
        # Only the default location is created on first use: elsewhere a missing file
        # is a mistyped URL, which must not become a new, empty database.
        if not database.settings.url_is_default:
            from usersctl.database import missing_database_message
            from usersctl.errors import DatabaseUnavailable

            raise DatabaseUnavailable(missing_database_message(database.sqlite_path))
        database.create_file(dry_run=dry_run)
        if dry_run:  # (not even the data folder)
            announce(
                f"Dry run: {database.display_url} does not exist yet; the real run would "
                f"first create it (revision {HEAD})."
            )
            return database.empty_stand_in(), False

    with database.connect(write=False) as connection:
        status = read_status(connection)  # the fast path: no Alembic, no lock
    if status.state is not State.CURRENT:
        from usersctl import migrations

        status = migrations.settled_status(database)
    require_current(status)
    if dry_run:
        if status.state is State.CURRENT:
            return database, False
        announce(
            f"Dry run: {database.display_url} has no schema yet; the real run would "
            f"first create it (revision {HEAD})."
        )
        return database.empty_stand_in(), False
    if status.state is State.EMPTY:
        from usersctl import migrations

        result = migrations.ensure_head(database)
        if result.changed:
            on_initialised(f"the database was initialised ({result.after})")
            announce(
                f"Initialised the database at {database.display_url} "
                f"(schema revision {result.after})."
            )
    database.use_wal()
    return database, True


def is_current(database: Database) -> bool:
    """Whether the database answers and is at head (the API's /healthz). A SQLite file
    moved or deleted under a running server still answers reads on the connections open
    to it, but writes fail: that is not healthy either."""
    from usersctl.revision import State, read_status

    path = database.sqlite_path
    if path is not None and not path.is_file():
        return False
    try:
        with database.connect(write=False) as connection:
            return read_status(connection).state is State.CURRENT
    except UsersctlError:
        return False


def make_trail(actor: str, *, dry_run: bool = False) -> Trail:
    """Where one request's or command's changes are recorded (only collected in a dry
    run)."""
    from usersctl.audit import Trail

    return Trail(actor=actor, dry_run=dry_run)


@contextmanager
def change(database: Database, trail: Trail) -> Iterator[tuple[Session, Trail]]:
    """The write transaction of a change to users, and the audit trail its changes go to.
    In a dry run (`trail.dry_run`) the transaction is rolled back and the trail only
    collects: afterwards it holds what would have changed."""
    with database.session(write=True, dry_run=trail.dry_run) as session:
        yield session, trail
