"""The audit trail: who changed which user (or the schema), how, and when.

Entries are written by the service layer (crud, migrations) in the transaction of the change
they describe, so a change and its record commit or vanish together. A dry run collects the
same entries without writing them: that is what it shows. Passwords and hashes never appear;
a password field only ever says "set" or "changed".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, false, func, or_, select
from sqlalchemy.orm import Session

from usersctl import rules
from usersctl.database import driver_value, insert_many
from usersctl.errors import InvalidData, UnreadableValue
from usersctl.models import AuditEntry, User, UTCDateTime, audit_table, utcnow
from usersctl.timestamps import iso_utc

ACTIONS = (
    "create",
    "update",
    "passwd",
    "disable",
    "enable",
    "delete",
    "import",
    "sync",
    "rehash",
    "lock",
    "unlock",
    "db-upgrade",
    "db-downgrade",
    "db-stamp",
    "token-create",
    "token-revoke",
    "token-rotate-signing-key",
)
PASSWORD_SET = "set"
PASSWORD_CHANGED = "changed"
PASSWORD_REHASHED = "rehashed"

Changes = dict[str, Any]
"""field -> {"before": old, "after": new}; the password field holds only one of the words
above."""

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def snapshot(user: User) -> dict[str, Any]:
    """A user's audited fields, under the names every output uses."""
    values: dict[str, Any] = {
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "active": user.is_active,
    }
    expires_at = getattr(user, "expires_at", None)
    values["expires_at"] = iso_utc(expires_at) if expires_at else None
    values["source"] = getattr(user, "source", None)
    values["external_id"] = getattr(user, "external_id", None)
    return values


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> Changes:
    """The fields of `after` whose value differs from `before` (absent counts as None)."""
    return {
        name: {"before": before.get(name), "after": value}
        for name, value in after.items()
        if before.get(name) != value
    }


@dataclass(frozen=True)
class Entry:
    action: str
    user_id: int | None
    email: str | None
    changes: Changes


@dataclass
class Trail:
    """Where one command's entries go. With `dry_run` they are only collected."""

    actor: str
    dry_run: bool = False
    entries: list[Entry] = field(default_factory=list)

    def record(
        self,
        executor: Session | Connection,
        action: str,
        *,
        user_id: int | None = None,
        email: str | None = None,
        changes: Changes,
    ) -> None:
        self.record_many(executor, action, [(user_id, email, changes)])

    def record_many(
        self,
        executor: Session | Connection,
        action: str,
        items: Iterable[tuple[int | None, str | None, Changes | str]],
    ) -> int:
        """Write one entry per (user id, email, changes), with one executemany. `changes` may
        come already encoded as JSON (import's hot path builds it from a template)."""
        if self.dry_run:
            before = len(self.entries)
            self.entries.extend(
                Entry(action, uid, email, json.loads(ch) if isinstance(ch, str) else ch)
                for uid, email, ch in items
            )
            return len(self.entries) - before
        connection = executor if isinstance(executor, Connection) else executor.connection()
        at = driver_value(connection.dialect, UTCDateTime(), utcnow())
        encode = _ENCODER.encode
        rows = [
            (at, self.actor, action, uid, email, ch if isinstance(ch, str) else encode(ch))
            for uid, email, ch in items
        ]
        insert_many(connection, audit_table, _COLUMNS, rows)
        return len(rows)


_COLUMNS = ("at", "actor", "action", "user_id", "user_email", "changes")
encode_string = json.encoder.encode_basestring
"""A str as a JSON string literal (C speed), for changes built from a template."""


def last_to_change(session: Session, field: str, user_ids: list[int]) -> dict[int, tuple[str, Any]]:
    """For each of `user_ids`, the latest entry that changed `field`: (its action, the
    value it set)."""
    latest: dict[int, tuple[str, Any]] = {}
    for start in range(0, len(user_ids), 500):
        query = (
            select(AuditEntry.user_id, AuditEntry.action, AuditEntry.changes)
            .where(
                AuditEntry.user_id.in_(user_ids[start : start + 500]),
                AuditEntry.changes.contains(f'"{field}"', autoescape=True),
            )
            .order_by(AuditEntry.id)
        )
        for user_id, action, text in session.execute(query):
            change = json.loads(text).get(field)
            if user_id is not None and isinstance(change, dict):
                latest[user_id] = (action, change.get("after"))
    return latest


def _user_clause(ref: str) -> ColumnElement[bool]:
    """Entries about USER: by id; by email, every entry of whoever had that address (before
    or after an email change) and of the user who has it now."""
    from usersctl.crud import MAX_ID, stored_form

    ref = ref.strip()
    if ref.isdecimal() and ref.isascii():
        number = int(ref)
        return AuditEntry.user_id == number if number <= MAX_ID else false()
    email = stored_form(ref)
    holders = select(AuditEntry.user_id).where(
        AuditEntry.user_email == email, AuditEntry.user_id.is_not(None)
    )
    current = select(User.id).where(User.email == email)
    return or_(
        AuditEntry.user_email == email,
        AuditEntry.user_id.in_(holders.scalar_subquery()),
        AuditEntry.user_id.in_(current.scalar_subquery()),
    )


def _filtered(
    *,
    user: str | None,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[AuditEntry]:
    for name, value in (("user", user), ("actor", actor)):
        problem = None if value is None else rules.unicode_problem(name, value)
        if problem is not None:
            raise InvalidData(problem)
    query = select(AuditEntry)
    if user is not None:
        query = query.where(_user_clause(user))
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at <= until)
    return query


def count(
    *,
    session: Session,
    user: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many entries match (what `entries` would yield without limit and offset)."""
    query = _filtered(user=user, action=action, actor=actor, since=since, until=until)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def entries(
    *,
    session: Session,
    user: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    offset: int = 0,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Matching entries, newest first, as dicts (`changes` decoded), streamed."""
    query = _filtered(user=user, action=action, actor=actor, since=since, until=until)
    query = query.order_by(AuditEntry.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    for entry in session.scalars(query.execution_options(yield_per=batch)):
        yield {
            "id": entry.id,
            "at": entry.at,
            "actor": entry.actor,
            "action": entry.action,
            "user_id": entry.user_id,
            "email": entry.user_email,
            "changes": _changes(entry.id, entry.changes),
        }


def _changes(entry_id: int, text: Any) -> dict[str, Any]:
    """An entry's `changes` as usersctl writes them (field -> {"before", "after"}, or a
    word such as "set"); anything else another program wrote is exit 7 naming the entry,
    never "a bug"."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        value = None
    if isinstance(value, dict) and all(
        isinstance(change, str) or (isinstance(change, dict) and change.keys() >= _BEFORE_AFTER)
        for change in value.values()
    ):
        return value
    raise UnreadableValue(
        f"audit entry {entry_id} holds changes usersctl cannot read ({repr(text)[:60]}), "
        "written by another program: correct or delete that row"
    )


_BEFORE_AFTER = frozenset({"before", "after"})
