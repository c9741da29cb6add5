"""The one service layer every command calls. Takes a Session; never prints, never exits.

Functions are keyword-only with the session first. They raise usersctl.errors on every
failure; the caller's session block rolls the whole transaction back, so a command that
fails part-way (one of several USER arguments missing, say) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from usersctl.errors import Conflict, NotFound, UsageError, VerificationFailed
from usersctl.models import User

if TYPE_CHECKING:  # pydantic stays out of the read-only commands' start-up
    from usersctl.schemas import UserCreate, UserUpdate

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


def _lookup_clause(ref: str) -> ColumnElement[bool]:
    ref = ref.strip()
    if ref.isdecimal() and ref.isascii():
        return User.id == int(ref)
    return User.email == ref.lower()  # emails are stored lowercased


def find_user(session: Session, ref: str) -> User | None:
    """A user by id (`42`) or email (case-insensitive), or None."""
    return session.scalars(select(User).where(_lookup_clause(ref))).one_or_none()


def get_user(*, session: Session, ref: str) -> User:
    user = find_user(session, ref)
    if user is None:
        raise NotFound(f"user not found: {ref}")
    return user


def get_users(*, session: Session, refs: Sequence[str], missing_ok: bool = False) -> list[User]:
    """Resolve several USER arguments, each once, in the order given."""
    found: dict[int, User] = {}
    missing: list[str] = []
    for ref in refs:
        user = find_user(session, ref)
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
    session.add(user)
    _flush_unique(session, user_in.email)
    return user, True


def list_users(
    *,
    session: Session,
    role: str | None = None,
    active: bool | None = None,
    search: str | None = None,
    sort: str = "id",
    descending: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> Sequence[User]:
    return session.scalars(
        user_query(
            role=role,
            active=active,
            search=search,
            sort=sort,
            descending=descending,
            limit=limit,
            offset=offset,
        )
    ).all()


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
    for field, value in changes.items():
        setattr(user, field, value)
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
    user: User | None
    rehashed: bool


def verify_password(*, session: Session, ref: str, password: str) -> Verification:
    """Raise VerificationFailed unless `password` matches an active user.

    An unknown user costs the same argon2 work as a known one, and every failure raises
    the same error, so neither the answer nor its timing tells which accounts exist. A
    hash made with older parameters (or bcrypt) is replaced after a successful match.
    """
    from usersctl import passwords  # argon2 loads only for commands that hash

    user = find_user(session, ref)
    if user is None:
        passwords.dummy_verify(password)
        raise VerificationFailed("password verification failed")
    matches, new_hash = passwords.verify(user.password_hash, password)
    if not matches or not user.is_active:
        raise VerificationFailed("password verification failed")
    if new_hash is not None:
        set_password_hash(session=session, user=user, password_hash=new_hash)
    return Verification(user=user, rehashed=new_hash is not None)
