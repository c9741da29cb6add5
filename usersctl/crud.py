"""The one service layer every command calls. Takes a Session; never prints, never exits.

Functions are keyword-only with the session first. They raise usersctl.errors on every
failure; the caller's session block rolls the whole transaction back, so a command that
fails part-way (one of several USER arguments missing, say) changes nothing.

Every change is recorded in the audit trail (`trail`) in the same transaction. In a dry run
(`trail.dry_run`) the changes run as usual but the caller rolls them back; only a create,
whose rolled-back insert would still use up an id on PostgreSQL and MariaDB, stops at its
checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    String,
    bindparam,
    case,
    cast,
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

from usersctl import rules
from usersctl.audit import (
    PASSWORD_CHANGED,
    PASSWORD_REHASHED,
    PASSWORD_SET,
    Trail,
    diff,
    encode_string,
    snapshot,
)
from usersctl.database import driver_value, insert_many
from usersctl.dialects import PAD_SPACE_DIALECTS
from usersctl.errors import Conflict, InvalidData, NotFound, UsageError
from usersctl.models import (
    User,
    UTCDateTime,
    users_table,
    utcnow,
)
from usersctl.revision import MIGRATION_LOCK_KEY, REVISION_QUERY
from usersctl.rules import EMAIL_LENGTH
from usersctl.timestamps import iso_from_sqlite_text, iso_utc

if TYPE_CHECKING:
    from usersctl.lifecycle import Filters, LoginResult
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
    return User.email == stored_form(ref)


def stored_form(email: str) -> str:
    """An email as it is stored (normalized, lowercased), so a user is found by any form of
    the address they were created with; text that is no email is matched as given."""
    from usersctl.schemas import normalize_email

    try:
        return normalize_email(email)
    except ValueError:
        return email.strip().lower()


# Built once: the lookups of every command and of every API request (building a statement
# costs more than SQLAlchemy's cache of its compiled form saves).
_BY_ID = select(User).where(User.id == bindparam("ref"))
_BY_EMAIL = select(User).where(User.email == bindparam("ref"))
_LOOKUPS = {
    (False, False): _BY_EMAIL,
    (True, False): _BY_ID,
    (False, True): _BY_EMAIL.with_for_update(),
    (True, True): _BY_ID.with_for_update(),
}


def find_user(session: Session, ref: str, *, lock: bool = False) -> User | None:
    """A user by id (`42`) or email (case-insensitive), or None. With `lock`, the row is
    locked until the transaction ends (PostgreSQL/MariaDB; SQLite's writer lock covers it),
    so a concurrent delete cannot slip between reading and changing it."""
    ref = ref.strip()
    if "\x00" in ref or rules.lone_surrogate(ref) is not None:
        return None  # a NUL, or not text (another encoding): no stored email is it
    value: int | str
    if ref.isdecimal() and ref.isascii():
        value = int(ref)
        if value > MAX_ID:
            return None  # no such id can exist
    else:
        value = stored_form(ref)
    query = _LOOKUPS[isinstance(value, int), lock]
    return session.scalars(query, {"ref": value}).one_or_none()


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


def _created(user: User, *, password: bool = True) -> dict[str, Any]:
    """A created user's audited fields; "password": "set" only when it has one (not for an
    account created with --no-password)."""
    changes = diff({}, snapshot(user))
    if password:
        changes["password"] = PASSWORD_SET
    return changes


def create_user(
    *,
    session: Session,
    user_in: UserCreate,
    password_hash: str,
    trail: Trail,
    if_not_exists: bool = False,
    source: str | None = None,
    external_id: str | None = None,
    has_password: bool | None = None,
) -> tuple[User, bool]:
    """Create a user. Returns (user, created); with if_not_exists an existing user is
    returned untouched instead of raising Conflict. In a dry run the user is not added
    (and has no id). `source` and `external_id`: who manages the user (SCIM) and its id
    there. `has_password`: whether it gets one (default: a hash is given; a dry run gives
    none, since it hashes nothing)."""
    existing = find_user(session, user_in.email)
    if existing is not None:
        if if_not_exists:
            return existing, False
        raise Conflict(f"email already taken: {user_in.email} (user {existing.id})")
    user = User(
        **user_in.model_dump(),
        password_hash=password_hash or None,  # none: an account without a password (SSO)
        password_changed_at=utcnow() if password_hash else None,
        failed_logins=0,
        source=source,
        external_id=external_id,
    )
    changes = _created(user, password=bool(password_hash) if has_password is None else has_password)
    for name, value in (("source", source), ("external_id", external_id)):
        if value is not None:
            changes[name] = {"before": None, "after": value}
    if trail.dry_run:
        trail.record(session, "create", email=user.email, changes=changes)
        return user, True
    try:
        with session.begin_nested():  # a savepoint: losing a race must not end the transaction
            session.add(user)
            session.flush()
    except IntegrityError:
        # Another process created the same email between our check and our insert.
        # (Only if_not_exists needs the winner: on MariaDB, several losers each holding the
        # duplicate-key check's shared lock would deadlock on a locking read.)
        winner = find_user(session, user_in.email, lock=True) if if_not_exists else None
        if winner is not None:  # a locking read sees it
            return winner, False
        raise Conflict(f"email already taken: {user_in.email}") from None
    trail.record(session, "create", user_id=user.id, email=user.email, changes=changes)
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
    lifecycle: Filters | None = None,
    moment: datetime | None = None,
) -> Select[User]:
    if sort not in _SORT_COLUMNS:
        raise UsageError(
            f"cannot sort by {rules.cut(sort)!r}: choose one of {', '.join(SORT_FIELDS)}"
        )
    if any("\x00" in value for value in (role, search) if value):
        raise InvalidData(rules.NUL_IN_TEXT)  # no stored value holds one, on any engine
    query = select(User)
    if lifecycle:
        query = query.where(*lifecycle.clauses(moment or utcnow()))
    if role is not None:
        query = query.where(User.role == role)
    if active is not None:
        query = query.where(User.is_active == active)
    if search and len(search) > EMAIL_LENGTH:  # (SQLite refuses patterns over 50,000 bytes)
        raise UsageError(
            f"search text is at most {EMAIL_LENGTH} characters: no name or email is longer"
        )
    if search:
        problem = rules.unicode_problem("search", search)
        if problem is not None:
            raise InvalidData(problem)
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


# Fields that `update` may set to None (`--expires never`, `--no-source`).
_CLEARABLE = {"expires_at", "source"}


def update_user(*, session: Session, user: User, user_in: UserUpdate, trail: Trail) -> User:
    """Change the given fields. Nothing that is already so counts as a change: no audit
    entry, no new updated_at."""
    before = snapshot(user)
    changes = {
        name: value
        for name, value in user_in.model_dump(exclude_unset=True).items()
        if value is not None or name in _CLEARABLE
    }
    if "source" in changes:
        # Released (--no-source) or handed to another source: the identity provider's id
        # (SCIM externalId) belonged to the old owner.
        changes["external_id"] = None if changes["source"] != user.source else user.external_id
    new_email = changes.get("email")
    if new_email is not None and new_email != user.email:
        other = find_user(session, new_email)
        if other is not None:
            raise Conflict(f"email already taken: {new_email} (user {other.id})")
    for name, value in changes.items():
        if getattr(user, name) != value:
            setattr(user, name, value)
    _flush_unique(session, new_email or user.email)
    changed = diff(before, snapshot(user))
    if changed:
        trail.record(session, "update", user_id=user.id, email=user.email, changes=changed)
    return user


def set_external_id(*, session: Session, user: User, external_id: str | None, trail: Trail) -> User:
    """Store the identity provider's id for the user (SCIM externalId); None clears it."""
    before = user.external_id
    if before == external_id:
        return user
    user.external_id = external_id
    session.flush()
    changes = {"external_id": {"before": before, "after": external_id}}
    trail.record(session, "update", user_id=user.id, email=user.email, changes=changes)
    return user


def set_password_hash(
    *,
    session: Session,
    user: User,
    password_hash: str,
    trail: Trail,
    must_change: bool = False,
) -> User:
    """Store a new hash (in a dry run, only record that it would change). `must_change`:
    the password was chosen or generated by an admin and must be changed at first use;
    without it the flag is cleared."""
    was = bool(user.must_change_password)
    if not trail.dry_run:
        user.password_hash = password_hash
        user.password_changed_at = utcnow()
        user.must_change_password = must_change
        session.flush()
    changes: dict[str, Any] = {"password": PASSWORD_CHANGED}
    if must_change != was:
        changes["must_change_password"] = {"before": was, "after": must_change}
    trail.record(session, "passwd", user_id=user.id, email=user.email, changes=changes)
    return user


def set_active(
    *, session: Session, users: Sequence[User], active: bool, trail: Trail
) -> list[User]:
    """Enable or disable; a user already in that state is left alone (and not recorded)."""
    changed = [user for user in users if user.is_active != active]
    for user in changed:
        user.is_active = active
    session.flush()
    trail.record_many(
        session,
        "enable" if active else "disable",
        [(u.id, u.email, {"active": {"before": not active, "after": active}}) for u in changed],
    )
    return list(users)


def delete_users(*, session: Session, users: Sequence[User], trail: Trail) -> None:
    """Delete; each user's last values stay in the audit trail."""
    last = [(u.id, u.email, snapshot(u)) for u in users]
    gone = [(uid, email, diff(values, dict.fromkeys(values))) for uid, email, values in last]
    for user in users:
        session.delete(user)
    session.flush()
    trail.record_many(session, "delete", gone)


@dataclass(frozen=True)
class Credentials:
    """What a password check needs, read in a short transaction of its own."""

    user_id: int
    password_hash: str | None  # None or empty: an account without a password
    is_active: bool
    locked_until: datetime | None
    expires_at: datetime | None
    must_change_password: bool

    def may_log_in(self, moment: datetime) -> bool:
        """Active, not locked, not expired, as read."""
        return (
            self.is_active
            and (self.locked_until is None or self.locked_until <= moment)
            and (self.expires_at is None or self.expires_at > moment)
        )


def read_credentials(*, session: Session, ref: str) -> Credentials | None:
    """The stored hash and login state of `ref`, or None for an unknown user. Reads only;
    end the transaction before checking the password (check_password), so that no check,
    however slow, ever holds a lock another command waits for."""
    user = find_user(session, ref)
    if user is None:
        return None
    return Credentials(
        user_id=user.id,
        password_hash=user.password_hash,
        is_active=user.is_active,
        locked_until=user.locked_until,
        expires_at=user.expires_at,
        must_change_password=user.must_change_password,
    )


def count_users(
    *,
    session: Session,
    role: str | None = None,
    active: bool | None = None,
    search: str | None = None,
    lifecycle: Filters | None = None,
    moment: datetime | None = None,
) -> int:
    query = user_query(role=role, active=active, search=search, lifecycle=lifecycle, moment=moment)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


EXPORT_FIELDS = (
    "id", "name", "email", "role", "active", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password", "source", "external_id",
)  # fmt: skip


def export_rows(
    *, session: Session, include_hashes: bool, batch: int = 2000
) -> Iterator[dict[str, Any]]:
    """Every user, by id, streamed in batches so memory stays flat: dicts with EXPORT_FIELDS
    (plus password_hash), timestamps already in the ISO-8601 UTC form every output uses.

    One loop builds each dict: an export of a million rows spends its time per row here."""
    from usersctl.lifecycle import now

    sqlite = session.get_bind().dialect.name == "sqlite"
    stamps: tuple[Any, ...] = (
        User.created_at, User.updated_at, User.last_login_at, User.password_changed_at,
        User.expires_at,
    )  # fmt: skip
    if sqlite:  # the stored text, reshaped by slicing: no datetime built per value
        stamps = tuple(type_coerce(column, String()) for column in stamps)
    locked = User.locked_until > now()
    columns = (
        User.id, User.name, User.email, User.role, User.is_active, *stamps,
        User.must_change_password, case((locked, True), else_=False), User.password_hash,
        User.source, User.external_id,
    )  # fmt: skip
    iso = iso_from_sqlite_text if sqlite else iso_utc
    query = select(*columns).order_by(User.id)
    result = session.connection().execution_options(yield_per=batch).execute(query)
    for (uid, name, email, role, active, created, updated, login, changed, expires, must,
         is_locked, password_hash, source, external_id) in result:  # fmt: skip
        row = {"id": uid, "name": name, "email": email, "role": role,
               "active": bool(active), "created_at": iso(created),
               "updated_at": iso(updated),
               "last_login_at": None if login is None else iso(login),
               "password_changed_at": None if changed is None else iso(changed),
               "expires_at": None if expires is None else iso(expires),
               "must_change_password": bool(must), "locked": bool(is_locked),
               "has_password": bool(password_hash), "source": source,
               "external_id": external_id}  # fmt: skip
        if include_hashes:
            row["password_hash"] = password_hash
        yield row


@dataclass
class ImportPlan:
    """What one batch of an import or sync does: (line, row) to create; (line, row, user id,
    changes) to update; (line, row, user id) to skip, or left as they are because nothing
    would change."""

    create: list[tuple[int, UserImport]] = field(default_factory=list)
    update: list[tuple[int, UserImport, int, dict[str, Any]]] = field(default_factory=list)
    unchanged: list[tuple[int, UserImport, int]] = field(default_factory=list)
    skip: list[tuple[int, UserImport, int]] = field(default_factory=list)


class Existing(NamedTuple):
    """What an import or sync compares a row with (a tuple: one is made for every row a
    sync reads)."""

    id: int
    name: str
    role: str
    active: bool
    password_hash: str | None
    expires_at: datetime | None
    source: str | None
    external_id: str | None = None


_BULK_LOCK = REVISION_QUERY.with_for_update()


def take_bulk_lock(session: Session) -> None:
    """Imports and syncs run one at a time: each plans from what the database holds, so two
    at once would both apply plans made from the same old state (a prune counted twice past
    --max-prune, audit entries with stale "before" values). First thing in the transaction
    (before MariaDB's REPEATABLE READ takes its snapshot), the schema's version row is
    locked until the commit: a second import or sync waits for the first, as does a `db
    upgrade`. SQLite's BEGIN IMMEDIATE already makes writers queue."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return
    if dialect == "postgresql":
        # First the migrations' lock, shared: a `db upgrade` (by a newer usersctl) and an
        # import then wait for each other in one order, never each for the other's lock.
        session.execute(select(func.pg_advisory_xact_lock_shared(MIGRATION_LOCK_KEY)))
    session.execute(_BULK_LOCK)
    if dialect == "postgresql":
        # The planner's statistics predate this transaction's own rows: into a table that
        # held a few users it kept scanning the whole growing table for each batch's
        # lookup by email (100,000 rows: 130 s instead of 10). The indexes always serve.
        session.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")


def existing_users(
    *, session: Session, emails: Sequence[str], chunk: int = 500
) -> dict[str, Existing]:
    found: dict[str, Existing] = {}
    table = users_table  # Core, not the ORM's row loading: a sync reads every user it lists
    columns = (
        table.c.email, table.c.id, table.c.name, table.c.role, table.c.is_active,
        table.c.password_hash, table.c.expires_at, table.c.source, table.c.external_id,
    )  # fmt: skip
    connection = session.connection()
    for start in range(0, len(emails), chunk):
        # Locked: a hand-made change to one of them waits for this transaction, instead of
        # being overwritten from the plan made before it.
        query = (
            select(*columns)
            .where(table.c.email.in_(emails[start : start + chunk]))
            .with_for_update()
        )
        rows = connection.execute(query).tuples().all()  # fetchall: not a row at a time
        for email, uid, name, role, active, hashed, expires, owner, external in rows:
            found[email] = Existing(uid, name, role, bool(active), hashed, expires, owner, external)
    if connection.dialect.name in PAD_SPACE_DIALECTS and found:
        # "a@example.com" found "a@example.com " (stored by another program), which is
        # that email's user to the unique index: found under the email asked for.
        padded = {email.rstrip(" "): user for email, user in found.items()}
        found = {e: padded[e.rstrip(" ")] for e in emails if e.rstrip(" ") in padded}
    return found


def _moment(value: datetime | None) -> datetime | None:
    """A time as stored: UTC, to the second (what MariaDB's DATETIME keeps)."""
    return None if value is None else value.astimezone(UTC).replace(microsecond=0)


def _audit_time(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


def import_changes(
    row: UserImport,
    existing: Existing,
    *,
    update_passwords: bool = False,
    source: str | None = None,
    reactivate: bool = False,
) -> dict[str, Any]:
    """What updating `existing` from `row` changes. Only what the row gives counts: a file
    without a role or active column must not demote an admin or unlock an account. The
    password only with `update_passwords` (a plaintext password then always counts as
    changed: its new hash differs); `source` (a sync taking the user over) when it differs.
    `reactivate`: the row lists a user its sync disabled (pruned), who comes back active."""
    before: dict[str, Any] = {
        "name": existing.name,
        "role": existing.role,
        "active": existing.active,
    }
    after: dict[str, Any] = {"name": row.name}
    given = row.given
    for name in ("role", "active"):
        if name in given:
            after[name] = getattr(row, name)
    if reactivate and "active" not in given:
        after["active"] = True
    if "expires_at" in given:
        before["expires_at"] = _audit_time(_moment(existing.expires_at))
        after["expires_at"] = _audit_time(_moment(row.expires_at))
    if source is not None:  # taken over: the old owner's external id goes with it
        before["source"], after["source"] = existing.source, source
        before["external_id"], after["external_id"] = existing.external_id, None
    changes = diff(before, after)
    if (
        update_passwords
        and row.gives_password
        and (row.password is not None or row.password_hash != existing.password_hash)
    ):
        changes["password"] = PASSWORD_CHANGED if existing.password_hash else PASSWORD_SET
    return changes


def apply_import(
    *,
    session: Session,
    plan: ImportPlan,
    hashes: Mapping[str, str],
    restore: bool,
    trail: Trail,
    action: str = "import",
    source: str | None = None,
) -> None:
    """Write a plan in the caller's transaction, with one audit entry per created or updated
    user. `hashes` maps each row's email (unique in a validated import) to its hash; a
    created user without one has no password. Users created are owned by `source`."""
    now = utcnow()

    if plan.create:
        ids = _insert_rows(session, plan, hashes, restore, now, source)
    if plan.create and restore:  # what each row put back (a backup's source and external id)
        trail.record_many(
            session,
            action,
            (
                (ids[row.email], row.email, _restored(row, row.email in hashes))
                for _, row in plan.create
            ),
        )
    elif plan.create:
        # The changes of a created user, encoded by template: json.dumps of a nested dict
        # per row would be the largest cost an import's audit trail adds.
        text = encode_string
        owner = "" if source is None else f',"source":{{"before":null,"after":{text(source)}}}'
        set_password = f',"password":"{PASSWORD_SET}"'
        trail.record_many(
            session,
            action,
            (
                (ids[row.email], row.email,
                 f'{{"name":{{"before":null,"after":{text(row.name)}}},'
                 f'"email":{{"before":null,"after":{text(row.email)}}},'
                 f'"role":{{"before":null,"after":{text(row.role)}}},'
                 f'"active":{{"before":null,"after":{"true" if row.active else "false"}}}'
                 + ("" if row.expires_at is None else
                    f',"expires_at":{{"before":null,"after":"{_audit_time(_moment(row.expires_at))}"}}')
                 + owner
                 + (set_password if row.email in hashes else "") + "}")
                for _, row in plan.create
            ),
        )  # fmt: skip
    if plan.update:
        rows = []
        for _, row, user_id, changes in plan.update:
            update_values: dict[str, Any] = {
                _FIELD_COLUMNS[name]: change["after"]
                for name, change in changes.items()
                if name in _FIELD_COLUMNS
            }
            if "expires_at" in changes:
                update_values["expires_at"] = _moment(row.expires_at)
            if "password" in changes:
                update_values["password_hash"] = hashes[row.email]
                update_values["password_changed_at"] = now
            rows.append({"id": user_id, **update_values, "updated_at": now})
        # executemany needs one key set per statement: group rows by the columns they set.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for values_row in rows:
            groups.setdefault(tuple(values_row), []).append(values_row)
        for group in groups.values():
            session.execute(update(User), group)
        trail.record_many(
            session,
            action,
            ((user_id, row.email, changes) for _, row, user_id, changes in plan.update),
        )
    session.flush()


def _past_given_ids(session: Session) -> None:
    """After rows with explicit ids: PostgreSQL's sequence moved past them, so that the next
    id drawn is free (SQLite and MariaDB draw past the largest id by themselves)."""
    if session.get_bind().dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(User.__tablename__, "id")
        session.execute(select(func.setval(sequence, select(func.max(User.id)).scalar_subquery())))


def _restored(row: UserImport, password: bool) -> dict[str, Any]:
    """The audit changes of a user a restore created: its audited fields, as a create's."""
    values = {
        "name": row.name, "email": row.email, "role": row.role, "active": row.active,
        "expires_at": _audit_time(_moment(row.expires_at)), "source": row.source,
        "external_id": row.external_id,
    }  # fmt: skip
    return {**diff({}, values), **({"password": PASSWORD_SET} if password else {})}


_FIELD_COLUMNS = {
    "name": "name", "role": "role", "active": "is_active", "source": "source",
    "external_id": "external_id",
}  # fmt: skip


def _insert_rows(
    session: Session,
    plan: ImportPlan,
    hashes: Mapping[str, str],
    restore: bool,
    now: datetime,
    source: str | None,
) -> dict[str, int]:
    """Insert plan.create with one database.insert_many (the ORM's per-object bookkeeping
    would double the cost); returns each new user's id by email."""
    ids: dict[str, int] = {}
    if restore:
        rows = [
            {
                "name": row.name,
                "email": row.email,
                "role": row.role,
                "is_active": row.active,
                "password_hash": hashes.get(row.email),
                "expires_at": row.expires_at,
                "must_change_password": row.must_change_password,
                "failed_logins": 0,
                "source": row.source,
                "external_id": row.external_id,
                "created_at": row.created_at or now,
                "updated_at": row.updated_at or now,
                "last_login_at": row.last_login_at,
                "password_changed_at": row.password_changed_at
                or (now if row.email in hashes else None),
                **({"id": row.id} if row.id is not None else {}),
            }
            for _, row in plan.create
        ]
        # executemany needs one key set per statement: rows with an id, rows without.
        # (sync.Run lets no row with an id follow one without: none can take a drawn id)
        statement = insert(users_table).returning(users_table.c.email, users_table.c.id)
        given = [r for r in rows if "id" in r]
        if given:
            ids.update((email, uid) for email, uid in session.execute(statement, given))
            _past_given_ids(session)
        drawn = [r for r in rows if "id" not in r]
        if drawn:
            ids.update((email, uid) for email, uid in session.execute(statement, drawn))
        return ids
    connection = session.connection()
    last_id = session.scalar(select(func.max(User.id))) or 0
    dialect = connection.dialect
    stamp = driver_value(dialect, UTCDateTime(), now)

    def moment(value: datetime | None) -> Any:
        return None if value is None else driver_value(dialect, UTCDateTime(), _moment(value))

    new_rows = [
        (row.name, row.email, hashes.get(row.email), row.role, row.active, stamp, stamp,
         stamp if row.email in hashes else None, moment(row.expires_at),
         row.must_change_password, source)
        for _, row in plan.create
    ]  # fmt: skip
    insert_many(connection, users_table, _INSERT_COLUMNS, new_rows)
    # The new ids, by email: every new id is past the old maximum. (Another writer's rows
    # there are not in `emails`; anything else missed is looked up by email.)
    emails = {row.email for _, row in plan.create}
    table = users_table
    if dialect.name == "sqlite":
        ids.update(_numbered_in_order(connection, last_id, [r.email for _, r in plan.create]))
    if not ids:
        query = select(table.c.email, table.c.id).where(table.c.id > last_id)
        ids.update((email, uid) for email, uid in connection.execute(query) if email in emails)
    missing = [email for email in emails if email not in ids]
    if missing:
        found = existing_users(session=session, emails=missing)
        ids.update((email, user.id) for email, user in found.items())
    return ids


def _numbered_in_order(connection: Connection, last_id: int, emails: list[str]) -> dict[str, int]:
    """SQLite numbers the rows it inserts in order, each past the one before (the write
    lock is held): the new users' ids by email without reading back a row each, or {} when
    the table shows anything else (the caller then reads them)."""
    table = users_table
    span = select(func.min(table.c.id), func.max(table.c.id), func.count())
    low, high, count = connection.execute(span.where(table.c.id > last_id)).one()
    if count != len(emails) or not count or high - low + 1 != count:
        return {}
    ends = select(table.c.id, table.c.email).where(table.c.id.in_([low, high]))
    found = dict(connection.execute(ends).tuples().all())
    if found.get(low) != emails[0] or found.get(high) != emails[-1]:
        return {}
    return dict(zip(emails, range(low, high + 1), strict=True))


_INSERT_COLUMNS = (  # in table order (see database.insert_many)
    "name", "email", "password_hash", "role", "is_active", "created_at", "updated_at",
    "password_changed_at", "expires_at", "must_change_password", "source",
)  # fmt: skip


def user_refs(*, session: Session, prefix: str, limit: int) -> list[str]:
    """USER values that start with `prefix`, for shell completion, at most `limit`: ids when
    the prefix is a number, then emails (matched case-insensitively, as USER is)."""
    needle = prefix.lower()
    refs: list[str] = []
    if needle.isdigit():
        id_text = cast(User.id, String)
        query = select(id_text).where(id_text.startswith(needle)).order_by(User.id)
        refs += [str(value) for value in session.scalars(query.limit(limit))]
    emails = (
        select(User.email)
        .where(User.email.startswith(needle, autoescape=True))
        .order_by(User.email)
        .limit(limit - len(refs))
    )
    return refs + list(session.scalars(emails))


def roles(*, session: Session) -> list[str]:
    """The roles in use, sorted."""
    return list(session.scalars(select(User.role).distinct().order_by(User.role)))


@dataclass(frozen=True)
class PasswordCheck:
    """The read half of a login: whose account, and whether the password matched."""

    user_id: int | None  # None: no such user
    matches: bool = False
    stored_hash: str | None = None
    new_hash: str | None = None  # set when the stored hash should be upgraded
    may_log_in: bool = False  # active, not locked, not expired, as read
    must_change_password: bool = False


def check_password(
    *, credentials: Credentials | None, password: str, moment: datetime
) -> PasswordCheck:
    """Verify `password` against what read_credentials read. Runs outside any transaction.

    Every failure costs at least the argon2 work of the current parameters (an unknown user
    or an account without a password is checked against a dummy hash; a failure against a
    cheaper imported hash spends the dummy check too), so neither the answer nor its timing
    tells which accounts exist."""
    from usersctl import passwords  # argon2 loads only for commands that hash

    if credentials is None:
        passwords.dummy_verify(password)
        return PasswordCheck(user_id=None)
    if not credentials.password_hash:
        passwords.dummy_verify(password)
        return PasswordCheck(user_id=credentials.user_id)
    matches, new_hash = passwords.verify(credentials.password_hash, password)
    may_log_in = credentials.may_log_in(moment)
    if not matches or not may_log_in:
        passwords.pad_failure(credentials.password_hash, password)
    return PasswordCheck(
        credentials.user_id,
        matches,
        credentials.password_hash,
        new_hash,
        may_log_in,
        credentials.must_change_password,
    )


def record_login(
    *,
    session: Session,
    check: PasswordCheck,
    threshold: int,
    lock_for: timedelta,
    moment: datetime,
    trail: Trail,
    failures: int = 1,
) -> LoginResult:
    """The write half of a login, in the caller's write transaction (`failures`: how many
    failed attempts a wrong password records, with those a busy database kept waiting).

    A wrong password increments the counter in SQL (parallel failures are all counted);
    reaching `threshold` locks the account until `moment + lock_for` (an audit `lock`
    entry). A right password on an active, unlocked, unexpired account records the login
    and resets the counter; otherwise the login fails and nothing changes. Neither a login
    nor a failure is an edit: updated_at stays."""
    from usersctl.lifecycle import LoginResult

    table = users_table
    row_id = table.c.id == check.user_id
    if not check.matches:
        session.execute(
            update(table)
            .where(row_id)
            .values(failed_logins=table.c.failed_logins + failures, updated_at=table.c.updated_at)
        )
        # Our UPDATE holds the row until commit: the count read back is ours alone.
        state = session.execute(
            select(table.c.failed_logins, table.c.locked_until, table.c.email).where(row_id)
        ).one_or_none()
        if state is None:  # deleted meanwhile
            return LoginResult(verified=False)
        count, locked_until, email = state
        if count < threshold or (locked_until is not None and locked_until > moment):
            return LoginResult(verified=False)
        until = moment + lock_for
        session.execute(
            update(table).where(row_id).values(locked_until=until, updated_at=table.c.updated_at)
        )
        trail.record(
            session,
            "lock",
            user_id=check.user_id,
            email=email,
            changes={
                "locked": {"before": False, "after": True},
                "locked_until": {"before": None, "after": iso_utc(until)},
                "failed_logins": {"before": count - failures, "after": count},
            },
        )
        return LoginResult(verified=False, locked_now=True)
    current = session.execute(
        select(
            table.c.email,
            table.c.password_hash,
            table.c.is_active,
            table.c.locked_until,
            table.c.expires_at,
            table.c.must_change_password,
        )
        .where(row_id)
        .with_for_update()
    ).one_or_none()
    if current is None:
        return LoginResult(verified=False)
    email, stored_hash, active, locked_until, expires_at, must_change = current
    if (
        stored_hash != check.stored_hash  # changed since we checked it
        or not active
        or (locked_until is not None and locked_until > moment)
        or (expires_at is not None and expires_at <= moment)
    ):
        return LoginResult(verified=False)
    values: dict[str, Any] = {
        "last_login_at": moment,
        "failed_logins": 0,
        "locked_until": None,
        "updated_at": table.c.updated_at,
    }
    if check.new_hash is not None:
        values["password_hash"] = check.new_hash
    session.execute(update(table).where(row_id).values(**values))
    if check.new_hash is not None:
        trail.record(
            session,
            "rehash",
            user_id=check.user_id,
            email=email,
            changes={"password": PASSWORD_REHASHED},
        )
    return LoginResult(
        verified=True,
        must_change_password=bool(must_change),
        user_id=check.user_id,
        password_hash=values.get("password_hash", stored_hash),
    )


def unlock_users(*, session: Session, users: Sequence[User], trail: Trail) -> list[User]:
    """Clear lockouts and failure counters; users with neither are left alone (and not
    recorded)."""
    from usersctl.lifecycle import now

    moment = now()
    changed = [u for u in users if u.locked_until is not None or u.failed_logins]
    entries = []
    for user in changed:
        was_locked = user.locked_until is not None and user.locked_until > moment
        entries.append(
            (
                user.id,
                user.email,
                {
                    "locked": {"before": was_locked, "after": False},
                    "failed_logins": {"before": user.failed_logins, "after": 0},
                },
            )
        )
        user.locked_until = None
        user.failed_logins = 0
    session.flush()
    trail.record_many(session, "unlock", entries)
    return list(users)
