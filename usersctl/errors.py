"""Domain errors. Each carries the exit code the CLI reports for it (see README)."""

from __future__ import annotations


class UsersctlError(Exception):
    """Base of every error usersctl reports to the user in one line."""

    exit_code = 1
    http_status: int | None = None  # where it is not the exit code's (service.HTTP_STATUS)

    def __init__(self, message: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # one line each, shown before the error line (bad rows)


class UsageError(UsersctlError):
    exit_code = 2


class NotFound(UsersctlError):
    exit_code = 3


class Conflict(UsersctlError):
    exit_code = 4


class InvalidData(UsersctlError):
    exit_code = 5


class VerificationFailed(UsersctlError):
    exit_code = 6


class DatabaseUnavailable(UsersctlError):
    exit_code = 7


class DatabaseBusy(DatabaseUnavailable):
    """Another writer held the lock for the whole busy timeout: retrying later helps."""


class UnreadableValue(UsersctlError):
    """A stored value usersctl cannot read, written by another program: the database as it
    is cannot be used for that row (exit 7). Over HTTP a 500, not the 503 that says "try
    again": retrying cannot help."""

    exit_code = 7
    http_status = 500


def unreadable_time(value: object) -> UnreadableValue:
    """A stored time that is no time (SQLite keeps times as text, MariaDB may keep a zero
    date): exit 7 naming the value, never "a bug"."""
    return UnreadableValue(
        f"the database holds a time usersctl cannot read ({repr(value)[:60]}), written by "
        "another program: correct or clear that value"
    )


class SchemaMismatch(UsersctlError):
    exit_code = 8


class SafetyLimit(UsersctlError):
    """Refused: the change exceeds a safety limit (`sync --max-prune`); nothing changed."""

    exit_code = 9


class OutputFailed(UsersctlError):
    """The result could not be written (stdout closed or on a full disk, an export file's
    disk full or folder read-only). The message says whether the change was committed."""

    exit_code = 10
