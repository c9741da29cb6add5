"""The one service layer every command calls. Takes a Session; never prints, never exits.

Functions are keyword-only with the session first. They raise usersctl.errors on every
failure; the caller's session block rolls the whole transaction back, so a command that
fails part-way (one of several USER arguments missing, say) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from usersctl.errors import Conflict, NotFound, UsageError, VerificationFailed
from usersctl.models import User, UTCDateTime, users_table, utcnow
from usersctl.timestamps import iso_from_sqlite_text, iso_utc

if TYPE_CHECKING:
    from usersctl.schemas import UserCreate, UserImport, UserUpdate

SORT_FIELDS = ("id", "name", "email", "role", "active", "created_at", "updated_at")
_SORT_COLUMNS = {
    "id": User.id,
    "name": User.name,
    "email": User.email,
    "role": User.role,
    "active": User.is_active,
    "created_at": User.created_at,
    "updated_at": User.updated_at,
}


MAX_ID = 2**31 - 1  # the INTEGER primary key on every engine


def _lookup_clause(ref: str) -> ColumnElement[bool]:
    ref = ref.strip()
    if ref.isdecimal() and ref.isascii():
        number = int(ref)
        return User.id == number if number <= MAX_ID else false()  # no such id can exist
    return User.email == _stored_form(ref)


def _stored_form(email: str) -> str:
    """An email as it is stored (normalized, lowercased), so a user is found by any form of
    the address they were created with; text that is no email is matched as given."""
    from usersctl.schemas import normalize_email

    try:
        return normalize_email(email)
    except ValueError:
        return email.strip().lower()


def find_user(session: Session, ref: str, *, lock: bool = False) -> User | None:
    """A user by id (`42`) or email (case-insensitive), or None. With `lock`, the row is
    locked until the transaction ends (PostgreSQL/MariaDB; SQLite's writer lock covers it),
    so a concurrent delete cannot slip between reading and changing it."""
    query = select(User).where(_lookup_clause(ref))
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def get_user(*, session: Session, ref: str, lock: bool = False) -> User:
    user = find_user(session, ref, lock=lock)
    if user is None:
        raise NotFound(f"user not found: {ref}")
    return user


def get_users(
    *, session: Session, refs: Sequence[str], missing_ok: bool = False, lock: bool = False
) -> list[User]:
    """Resolve several USER arguments, each once, in the order given."""
    found: dict[int, User] = {}
    missing: list[str] = []
    for ref in refs:
        user = find_user(session, ref, lock=lock)
        if user is None:
            missing.append(ref)
        else:
            found.setdefault(user.id, user)
    if missing and not missing_ok:
        plural = "s" if len(missing) > 1 else ""
        raise NotFound(f"user{plural} not found: {', '.join(missing)}")
    return list(found.values())


def _flush_unique(session: Session, email: str) -> None:
    """Flush now so a unique violation (also from a concurrent writer) maps to Conflict."""
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"email already taken: {email}") from None


def create_user(
    *, session: Session, user_in: UserCreate, password_hash: str, if_not_exists: bool = False
) -> tuple[User, bool]:
    """Create a user. Returns (user, created); with if_not_exists an existing user is
    returned untouched instead of raising Conflict."""
    existing = find_user(session, user_in.email)
    if existing is not None:
        if if_not_exists:
            return existing, False
        raise Conflict(f"email already taken: {user_in.email} (user {existing.id})")
    user = User(**user_in.model_dump(), password_hash=password_hash)
    try:
        with session.begin_nested():  # a savepoint: losing a race must not end the transaction
            session.add(user)
            session.flush()
    except IntegrityError:
        # Another process created the same email between our check and our insert.
        winner = find_user(session, user_in.email, lock=True)  # a locking read sees it
        if if_not_exists and winner is not None:
            return winner, False
        raise Conflict(f"email already taken: {user_in.email}") from None
    return user, True


def iter_users(*, session: Session, batch: int = 1000, **filters: Any) -> Iterator[User]:
    """The users `user_query(**filters)` selects, streamed in batches (memory stays flat)."""
    yield from session.scalars(user_query(**filters).execution_options(yield_per=batch))


def user_query(
    *,
    role: str | None = None,
    active: bool | None = None,
    search: str | None = None,
    sort: str = "id",
    descending: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> Select[User]:
    if sort not in _SORT_COLUMNS:
        raise UsageError(f"cannot sort by {sort!r}: choose one of {', '.join(SORT_FIELDS)}")
    query = select(User)
    if role is not None:
        query = query.where(User.role == role)
    if active is not None:
        query = query.where(User.is_active == active)
    if search:
        needle = search.lower()
        query = query.where(
            or_(
                func.lower(User.name).contains(needle, autoescape=True),
                User.email.contains(needle, autoescape=True),
            )
        )
    column = _SORT_COLUMNS[sort]
    query = query.order_by(column.desc() if descending else column.asc())
    if sort != "id":
        query = query.order_by(User.id.desc() if descending else User.id.asc())
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return query


def update_user(*, session: Session, user: User, user_in: UserUpdate) -> User:
    changes = user_in.model_dump(exclude_unset=True, exclude_none=True)
    new_email = changes.get("email")
    if new_email is not None and new_email != user.email:
        other = find_user(session, new_email)
        if other is not None:
            raise Conflict(f"email already taken: {new_email} (user {other.id})")
    for name, value in changes.items():
        setattr(user, name, value)
    _flush_unique(session, new_email or user.email)
    return user


def set_password_hash(*, session: Session, user: User, password_hash: str) -> User:
    user.password_hash = password_hash
    session.flush()
    return user


def set_active(*, session: Session, users: Sequence[User], active: bool) -> list[User]:
    for user in users:
        user.is_active = active
    session.flush()
    return list(users)


def delete_users(*, session: Session, users: Sequence[User]) -> None:
    for user in users:
        session.delete(user)
    session.flush()


@dataclass(frozen=True)
class Verification:
    user_id: int
    stored_hash: str
    new_hash: str | None  # set when the stored hash should be upgraded


def verify_password(*, session: Session, ref: str, password: str) -> Verification:
    """Raise VerificationFailed unless `password` matches an active user. Reads only.

    An unknown user costs the same argon2 work as a known one, and every failure raises
    the same error, so neither the answer nor its timing tells which accounts exist.
    """
    from usersctl import passwords  # argon2 loads only for commands that hash

    user = find_user(session, ref)
    if user is None:
        passwords.dummy_verify(password)
        raise VerificationFailed("password verification failed")
    matches, new_hash = passwords.verify(user.password_hash, password)
    if not matches or not user.is_active:
        raise VerificationFailed("password verification failed")
    return Verification(user_id=user.id, stored_hash=user.password_hash, new_hash=new_hash)


def upgrade_hash(*, session: Session, verification: Verification) -> bool:
    """Store the upgraded hash after a successful verification, unless the password changed
    meanwhile (compare-and-set). Not an edit by anyone: updated_at stays as it was."""
    if verification.new_hash is None:
        return False
    result = session.execute(
        update(User)
        .where(User.id == verification.user_id, User.password_hash == verification.stored_hash)
        .values(password_hash=verification.new_hash, updated_at=User.updated_at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def count_users(
    *,
    session: Session,
    role: str | None = None,
    active: bool | None = None,
    search: str | None = None,
) -> int:
    query = user_query(role=role, active=active, search=search)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


EXPORT_FIELDS = ("id", "name", "email", "role", "active", "created_at", "updated_at")


def export_rows(
    *, session: Session, include_hashes: bool, batch: int = 2000
) -> Iterator[dict[str, Any]]:
    """Every user, by id, streamed in batches so memory stays flat: dicts with EXPORT_FIELDS
    (plus password_hash), timestamps already in the ISO-8601 UTC form every output uses.

    One loop builds each dict: an export of a million rows spends its time per row here."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    stamps: tuple[Any, ...] = (User.created_at, User.updated_at)
    if sqlite:  # the stored text, reshaped by slicing: no datetime built per value
        stamps = tuple(type_coerce(column, String()) for column in stamps)
    columns = (User.id, User.name, User.email, User.role, User.is_active, *stamps)
    if include_hashes:
        columns = (*columns, User.password_hash)
    iso = iso_from_sqlite_text if sqlite else iso_utc
    query = select(*columns).order_by(User.id)
    result = session.connection().execution_options(yield_per=batch).execute(query)
    if include_hashes:
        for uid, name, email, role, active, created, updated, password_hash in result:
            yield {"id": uid, "name": name, "email": email, "role": role,
                   "active": bool(active), "created_at": iso(created),
                   "updated_at": iso(updated), "password_hash": password_hash}  # fmt: skip
    else:
        for uid, name, email, role, active, created, updated in result:
            yield {"id": uid, "name": name, "email": email, "role": role,
                   "active": bool(active), "created_at": iso(created),
                   "updated_at": iso(updated)}  # fmt: skip


@dataclass
class ImportPlan:
    """What an import does: (line, row) to create, to update (with the user id), to skip."""

    create: list[tuple[int, UserImport]] = field(default_factory=list)
    update: list[tuple[int, UserImport, int]] = field(default_factory=list)
    skip: list[tuple[int, UserImport, int]] = field(default_factory=list)


def _existing_ids(session: Session, emails: Sequence[str], chunk: int = 500) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(emails), chunk):
        part = emails[start : start + chunk]
        query = select(User.email, User.id).where(User.email.in_(part))
        # (a Result has .keys(), so dict.update would take it for a mapping)
        found.update((email, user_id) for email, user_id in session.execute(query))
    return found


def plan_import(
    *, session: Session, rows: Sequence[tuple[int, UserImport]], on_conflict: str, restore: bool
) -> ImportPlan:
    """Sort rows into create / update / skip against the database; raise on conflicts."""
    if restore and session.scalar(select(func.count()).select_from(User)):
        raise Conflict("--restore needs an empty users table (it keeps ids and timestamps)")
    existing = _existing_ids(session, [row.email for _, row in rows])
    plan = ImportPlan()
    conflicts: list[str] = []
    for line, row in rows:
        user_id = existing.get(row.email)
        if user_id is None:
            plan.create.append((line, row))
        elif on_conflict == "skip":
            plan.skip.append((line, row, user_id))
        elif on_conflict == "update":
            plan.update.append((line, row, user_id))
        else:
            conflicts.append(f"line {line}: email already taken: {row.email} (user {user_id})")
    if conflicts:
        shown = tuple(conflicts[:50])
        more = (f"... and {len(conflicts) - 50} more",) if len(conflicts) > 50 else ()
        raise Conflict(
            f"{len(conflicts)} email(s) already exist; nothing imported "
            "(use --on-conflict skip or update)",
            shown + more,
        )
    return plan


def _import_stamp(session: Session) -> BindParameter[Any]:
    """The bind for an import's one timestamp. SQLite's DATETIME turns each row's value
    into text in Python; there the value is converted once (_import_stamp_value) and bound
    as plain text, which saves a third of a 100,000-row import."""
    if session.get_bind().dialect.name == "sqlite":
        return type_coerce(bindparam("b_import_time"), String())  # type: ignore[return-value]
    return bindparam("b_import_time", type_=UTCDateTime())


def _import_stamp_value(session: Session, now: datetime) -> Any:
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        return now
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    return process(now) if process else now


_DEFAULTED = {"role": "role", "is_active": "active"}  # column: the import field behind it


def _given(values: dict[str, Any], row: UserImport) -> dict[str, Any]:
    """`values` without the columns whose import field the row did not set itself."""
    skip = {column for column, name in _DEFAULTED.items() if name not in row.model_fields_set}
    return {column: value for column, value in values.items() if column not in skip}


def apply_import(
    *, session: Session, plan: ImportPlan, hashes: Mapping[str, str], restore: bool
) -> None:
    """Write a plan in the caller's transaction. `hashes` maps each row's email (unique in
    a validated import) to its password hash."""
    now = utcnow()

    def values(line: int, row: UserImport) -> dict[str, Any]:
        return {
            "name": row.name,
            "email": row.email,
            "role": row.role,
            "is_active": row.active,
            "password_hash": hashes[row.email],
        }

    if plan.create:
        table = users_table
        if restore:
            rows = [
                {
                    **values(line, row),
                    "created_at": row.created_at or now,
                    "updated_at": row.updated_at or now,
                    **({"id": row.id} if row.id is not None else {}),
                }
                for line, row in plan.create
            ]
            # executemany needs one key set per statement: rows with an id, rows without.
            for group in (
                [r for r in rows if "id" in r],
                [r for r in rows if "id" not in r],
            ):
                if group:
                    session.execute(insert(table), group)
        else:
            # Core executemany: the ORM's per-object bookkeeping would double the cost.
            statement = insert(table).values(
                created_at=_import_stamp(session), updated_at=_import_stamp(session)
            )
            stamp = _import_stamp_value(session, now)
            session.execute(
                statement,
                [{**values(line, row), "b_import_time": stamp} for line, row in plan.create],
            )
    if plan.update:
        # Only what the row gives: a file without a role or active column must not demote
        # an admin or unlock a disabled account.
        session.execute(
            update(User),
            [
                {"id": user_id, **_given(values(line, row), row), "updated_at": now}
                for line, row, user_id in plan.update
            ],
        )
    if restore and session.get_bind().dialect.name == "postgresql":
        # Ids were given explicitly: move the sequence past them.
        sequence = func.pg_get_serial_sequence(User.__tablename__, "id")
        session.execute(select(func.setval(sequence, select(func.max(User.id)).scalar_subquery())))
    session.flush()
