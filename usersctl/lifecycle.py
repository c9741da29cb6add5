"""Account lifecycle: the clock, expiry dates, the auditors' filters, and login.

`login` is the one entry point for checking a password (verify-password now; an HTTP login
later): it verifies in a read transaction (argon2 never holds a writer lock), then records
the outcome in a write transaction. A failure increments the counter in SQL
(`failed_logins = failed_logins + 1`), so parallel attempts are all counted.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from usersctl.errors import DatabaseBusy, InvalidData, UsageError, UsersctlError
from usersctl.timestamps import iso_utc

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.orm import Session

    from usersctl.config import Settings
    from usersctl.crud import PasswordCheck
    from usersctl.database import Database


def now() -> datetime:
    """The current time, in UTC, to the second. Tests replace it (no sleeping)."""
    from usersctl.models import utcnow

    return utcnow()


_DURATION = re.compile(r"(\d{1,6})\s*([hdwy])", re.IGNORECASE)
_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                   "y": timedelta(days=365)}  # fmt: skip


def parse_expiry(text: str, moment: datetime) -> datetime | None:
    """`--expires`: `never` (None), a date or time (ISO-8601; a date is its midnight UTC;
    no offset means UTC) or a duration from now (`12h`, `90d`, `4w`, `1y`)."""
    value = text.strip()
    if value.lower() == "never":
        return None
    match = _DURATION.fullmatch(value)
    try:
        if match:
            return moment + int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        parsed = datetime.fromisoformat(value)
        # (an offset can carry a time past what UTC holds: 9999-12-31T23:00:00-05:00)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise UsageError(
            f"invalid --expires {text!r}: give a date (2027-06-30), a duration from now "
            "(90d, 12h, 4w, 1y) or never"
        ) from None
    return parsed.replace(microsecond=0)


def parse_since(text: str, moment: datetime) -> datetime:
    """`--inactive-since`: a date or time, or a time ago (`90d`, `12h`, `2w`)."""
    from usersctl.timestamps import parse_moment

    try:
        return parse_moment(text, moment)
    except ValueError:
        raise UsageError(
            f"invalid --inactive-since {text!r}: give a date (2026-09-01) or a time ago "
            "(90d, 12h, 2w)"
        ) from None


@dataclass(frozen=True)
class Filters:
    """The auditors' questions; all given ones must hold (AND)."""

    inactive_since: datetime | None = None
    expired: bool = False
    locked: bool = False
    no_password: bool = False
    must_change: bool = False

    def __bool__(self) -> bool:
        return (
            self.inactive_since is not None
            or self.expired
            or self.locked
            or self.no_password
            or self.must_change
        )

    def clauses(self, moment: datetime) -> list[ColumnElement[bool]]:
        from sqlalchemy import func, or_

        from usersctl.models import User

        clauses: list[ColumnElement[bool]] = []
        if self.inactive_since is not None:
            # Never logged in: counted from when the account was created.
            last_seen = func.coalesce(User.last_login_at, User.created_at)
            clauses.append(last_seen < self.inactive_since)
        if self.expired:
            clauses.append(User.expires_at <= moment)
        if self.locked:
            clauses.append(User.locked_until > moment)
        if self.no_password:
            clauses.append(or_(User.password_hash.is_(None), User.password_hash == ""))
        if self.must_change:
            clauses.append(User.must_change_password.is_(True))
        return clauses

    def describe(self) -> str:
        parts = []
        if self.inactive_since is not None:
            parts.append(f"inactive since {iso_utc(self.inactive_since)}")
        if self.expired:
            parts.append("expired")
        if self.locked:
            parts.append("locked")
        if self.no_password:
            parts.append("without a password")
        if self.must_change:
            parts.append("who must change their password")
        return ", ".join(parts)


def check_role(role: str, settings: Settings) -> None:
    """With `roles` pinned in the config, any other role is invalid data (exit 5)."""
    if settings.roles is not None and role not in settings.roles:
        raise InvalidData(
            f"invalid role {role!r}: the config file allows only {', '.join(settings.roles)}"
        )


@dataclass(frozen=True)
class LoginResult:
    verified: bool
    must_change_password: bool = False
    locked_now: bool = False  # this failure locked the account
    not_recorded: str | None = None  # why the attempt could not be written (best effort)
    hash_kept: bool = False  # ... and so an upgrade of the stored hash was not made
    # Verified: whose password it was, and the hash in force after the login. A login token
    # is signed from these, never from a second look-up (a reset in between would
    # otherwise leave the old password's token valid).
    user_id: int | None = None
    password_hash: str | None = None


def login(
    *,
    database: Database,
    settings: Settings,
    ref: str,
    password: str,
    moment: datetime | None = None,
    hashing: AbstractContextManager[Any] | None = None,
) -> LoginResult:
    """Check a password and record the attempt. Never raises for a failed login: the
    caller reports every failure alike (the result says nothing of why).

    Three steps, so that no check, however slow its hash, ever holds or waits for a lock:
    the stored hash and login state are read in a short read transaction; the password is
    checked with no transaction open (inside `hashing`, the server's bound on hashes at
    once); then the outcome is written.

    A successful login (last login, counter reset, a hash upgrade) is written in a quick
    write transaction that waits at most about a second for a lock, best effort: a
    database that cannot be written now (read-only file or folder, a SELECT-only role, a
    busy writer) does not change the answer (`not_recorded` says why).

    Every other answer waits for the lock as long as any write does (the busy timeout, on
    every engine): a wrong password is what the lockout counts, and a right one on a
    locked, disabled or expired account must not answer sooner than a wrong one. When
    another writer holds the database that long (a long import), the attempt raises
    DatabaseBusy (exit 7, 503) instead of going uncounted; the failure is remembered and
    counted before that account's next check. Within one process, one login of an account
    is checked at a time, so guesses sent together cannot all be checked before the first
    is counted. Only a database that cannot be written at all (read-only) answers a
    failure without counting it."""
    from usersctl import crud

    moment = moment or now()
    with database.session(write=False) as session:
        credentials = crud.read_credentials(session=session, ref=ref)
    if credentials is None:
        with hashing or nullcontext():  # the same argon2 work as for an account
            crud.check_password(credentials=None, password=password, moment=moment)
        _wait_as_a_failure_would(database, settings)
        return LoginResult(verified=False)
    user_id = credentials.user_id
    with _one_login_at_a_time(database, user_id, settings.busy_timeout):
        if _uncounted(database).get(user_id):
            # Failures a busy database kept waiting: counted first (they may lock the
            # account); while they cannot be, no password of this account is checked.
            _count_uncounted(database, settings, user_id, moment)
            with database.session(write=False) as session:
                credentials = crud.read_credentials(session=session, ref=ref)
        with hashing or nullcontext():
            check = crud.check_password(credentials=credentials, password=password, moment=moment)
        return _record(database, settings, check, moment)


def _record(
    database: Database, settings: Settings, check: PasswordCheck, moment: datetime
) -> LoginResult:
    from sqlalchemy.exc import SQLAlchemyError

    if check.user_id is None:  # deleted meanwhile
        return LoginResult(verified=False)
    verified = check.matches and check.may_log_in
    read_answer = LoginResult(verified, verified and check.must_change_password)
    try:
        return record_attempt(database=database, settings=settings, check=check, moment=moment)
    except DatabaseBusy:
        if verified:
            return _unrecorded(read_answer, check, "database busy")
        if not check.matches:
            waiting = _uncounted(database)
            with _LOCK:
                waiting[check.user_id] = waiting.get(check.user_id, 0) + 1
        raise
    except (UsersctlError, SQLAlchemyError) as exc:
        return _unrecorded(read_answer, check, _reason(exc))


# Per database, this process's failed logins that a busy database kept from being
# recorded (by user id), and the lock each account's login holds while it is checked.
_UNCOUNTED: weakref.WeakKeyDictionary[Database, dict[int, int]] = weakref.WeakKeyDictionary()
_ACCOUNTS: weakref.WeakKeyDictionary[Database, weakref.WeakValueDictionary[int, _Gate]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


class _Gate:
    """One account's login lock (a class: a bare lock cannot be weakly referenced)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def _uncounted(database: Database) -> dict[int, int]:
    with _LOCK:
        return _UNCOUNTED.setdefault(database, {})


@contextmanager
def _one_login_at_a_time(database: Database, user_id: int, wait: float) -> Iterator[None]:
    with _LOCK:
        gates = _ACCOUNTS.setdefault(database, weakref.WeakValueDictionary())
        gate = gates.get(user_id)
        if gate is None:
            gate = gates[user_id] = _Gate()
    if not gate.lock.acquire(timeout=wait):
        raise DatabaseBusy(
            "database busy: another login of this account is still being checked or "
            "recorded; retry later"
        )
    try:
        yield
    finally:
        gate.lock.release()


def _count_uncounted(
    database: Database, settings: Settings, user_id: int, moment: datetime
) -> None:
    """Write the failures remembered for `user_id`. Busy again: they stay remembered and
    DatabaseBusy is raised. Any other failure (the database became read-only): they are
    dropped, as a failure on such a database is."""
    from sqlalchemy.exc import SQLAlchemyError

    from usersctl import crud

    pending = _uncounted(database)
    with _LOCK:
        waiting = pending.pop(user_id, 0)
    if not waiting:
        return
    try:
        with _waiting_write(database, settings) as session:
            _record_login(
                session, settings, crud.PasswordCheck(user_id=user_id), moment, failures=waiting
            )
    except DatabaseBusy:
        with _LOCK:
            pending[user_id] = pending.get(user_id, 0) + waiting
        raise
    except (UsersctlError, SQLAlchemyError):
        pass


def _wait_as_a_failure_would(database: Database, settings: Settings) -> None:
    """An unknown account's login waits for the write lock as a wrong password's does (and
    is busy when that one would be), so that a busy SQLite database does not tell which
    accounts exist. Writes nothing. (On PostgreSQL and MariaDB a failure waits only when
    its own row is locked, by an import or sync that lists the user.)"""
    try:
        with _waiting_write(database, settings):
            pass
    except DatabaseBusy:
        raise
    except UsersctlError:  # read-only: a failure would go uncounted the same way
        pass


def _unrecorded(answer: LoginResult, check: PasswordCheck, why: str) -> LoginResult:
    return LoginResult(
        answer.verified,
        answer.must_change_password,
        not_recorded=why,
        hash_kept=check.new_hash is not None,
        user_id=check.user_id if answer.verified else None,
        password_hash=check.stored_hash if answer.verified else None,
    )


def record_attempt(
    *, database: Database, settings: Settings, check: PasswordCheck, moment: datetime
) -> LoginResult:
    """The write half of a login (crud.record_login): a successful login in a quick
    transaction, anything else in one that waits the busy timeout (see login). Also how
    `PUT /users/me/password` counts a wrong current password toward the lockout."""
    if check.matches and check.may_log_in:
        database.check_writable()
        with database.quick_session() as session:
            return _record_login(session, settings, check, moment)
    with _waiting_write(database, settings) as session:
        return _record_login(session, settings, check, moment)


# At most this many logins of one process wait for the database's lock at once (each holds
# a connection meanwhile): wrong passwords for many users whose rows a sync holds must not
# take every pooled connection from the other requests. Past it, "busy" at once.
WAITING_LOGINS = 8
_WAITING = threading.BoundedSemaphore(WAITING_LOGINS)


@contextmanager
def _waiting_write(database: Database, settings: Settings) -> Iterator[Session]:
    """A login's write that waits for the lock the busy timeout, as one of at most
    WAITING_LOGINS."""
    database.check_writable()
    if not _WAITING.acquire(blocking=False):
        raise DatabaseBusy(
            f"database busy: {WAITING_LOGINS} logins are already waiting for it; retry later"
        )
    try:
        with database.quick_session(wait=settings.busy_timeout) as session:
            yield session
    finally:
        _WAITING.release()


def _record_login(
    session: Session,
    settings: Settings,
    check: PasswordCheck,
    moment: datetime,
    failures: int = 1,
) -> LoginResult:
    from usersctl import crud
    from usersctl.audit import Trail

    return crud.record_login(
        session=session,
        check=check,
        threshold=settings.lockout_threshold,
        lock_for=timedelta(minutes=settings.lockout_minutes),
        moment=moment,
        trail=Trail(actor=settings.actor),
        failures=failures,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UsersctlError):
        return exc.message
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
