"""`usersctl audit`, and how audit entries (recorded or planned by a dry run) are shown."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from usersctl.cli.completion import complete_users
from usersctl.cli.options import Limit, Offset, Output, exclusive
from usersctl.cli.render import AUDIT_DROP_ORDER, OutputFormat, Renderer, to_json
from usersctl.cli.state import get_state
from usersctl.cli.text import say
from usersctl.errors import UsageError
from usersctl.timestamps import iso_utc

if TYPE_CHECKING:
    from usersctl.audit import Trail

AUDIT_FIELDS = ("id", "at", "actor", "action", "user_id", "email", "changes")
PLANNED_FIELDS = ("action", "user_id", "email", "changes")

# The actions usersctl records (kept equal to usersctl.audit.ACTIONS by a test; listed here
# so that `--help` needs no SQLAlchemy).
Action = StrEnum(  # type: ignore[misc]
    "Action",
    [
        (name, name)
        for name in (
            "create", "update", "passwd", "disable", "enable", "delete", "import", "sync",
            "rehash", "lock", "unlock", "db-upgrade", "db-downgrade", "db-stamp",
            "token-create", "token-revoke", "token-rotate-signing-key",
        )
    ],
)  # fmt: skip


def changes_text(changes: Mapping[str, Any]) -> str:
    """`role: "user" -> "admin"; password: changed`: values in JSON notation, so strings,
    numbers, booleans and null stay distinct and nothing in them can break the line."""
    parts = []
    for name, change in changes.items():
        if isinstance(change, Mapping):
            parts.append(f"{name}: {to_json(change['before'])} -> {to_json(change['after'])}")
        else:
            parts.append(f"{name}: {change}")
    return "; ".join(parts)


def _shaped(records: Iterable[dict[str, Any]], fmt: OutputFormat) -> Iterator[dict[str, Any]]:
    """JSON formats keep `changes` an object; the text formats get one line of text."""
    structured = fmt in (OutputFormat.json, OutputFormat.jsonl)
    for record in records:
        if not structured:
            record = {**record, "changes": changes_text(record["changes"])}
        yield record


def show_planned(trail: Trail, output: OutputFormat) -> None:
    """What a dry run would have changed: the audit entries the real run would write."""
    records = (
        {"action": e.action, "user_id": e.user_id, "email": e.email, "changes": e.changes}
        for e in trail.entries
    )
    shown = Renderer(output).many(
        _shaped(records, output), fields=PLANNED_FIELDS, drop=AUDIT_DROP_ORDER
    )
    if shown == 0:
        say("Dry run: nothing would change.")
    else:
        say(f"Dry run: {shown} change(s) shown; nothing was written.")


def parse_when(text: str, option: str, now: datetime) -> datetime:
    from usersctl.timestamps import parse_moment

    try:
        return parse_moment(text, now)
    except ValueError:
        raise UsageError(
            f"invalid {option} {text!r}: expected ISO-8601 (2026-11-24, 2026-11-24T08:00:00Z) "
            "or a time ago (45s, 30m, 12h, 7d, 2w)"
        ) from None


def audit(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            "-u",
            metavar="USER",
            help="Only entries about this user (id, or an email it has or had).",
            autocompletion=complete_users,
        ),
    ] = None,
    action: Annotated[
        Action | None,
        typer.Option(
            "--action",
            "-a",
            metavar="ACTION",
            help="Only this action: " + ", ".join(Action) + ".",
            case_sensitive=False,
        ),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", metavar="NAME", help="Only changes by this actor.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="TIME", help="From this time: ISO-8601, or a time ago like 7d."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", help="Up to this time (same forms as --since)."),
    ] = None,
    limit: Limit = None,
    offset: Offset = 0,
    count: Annotated[
        bool, typer.Option("--count", help="Print only the number of matching entries.")
    ] = False,
    output: Output = OutputFormat.table,
) -> None:
    """Show the audit trail, newest first: who changed what, and when.

    Every change made through usersctl is recorded in the same transaction as the change:
    the time (UTC), the actor (--actor, USERSCTL_ACTOR, else the operating-system user),
    the action, the user, and each changed field's old and new value. Passwords never
    appear; a new one shows as `password: changed`.

    \b
    Examples:
      usersctl audit --user ada@example.com --action disable --limit 1
      usersctl audit --since 7d -o jsonl
    """
    from usersctl import audit as trail
    from usersctl.models import utcnow

    exclusive(ctx, "count", "limit", "offset")
    now = utcnow()
    start = parse_when(since, "--since", now) if since is not None else None
    end = parse_when(until, "--until", now) if until is not None else None
    if start is not None and end is not None and start > end:
        raise UsageError(f"--since {since} is after --until {until}: nothing can match")
    filters: dict[str, Any] = {
        "user": user,
        "action": action.value if action is not None else None,
        "actor": actor,
        "since": start,
        "until": end,
    }
    database = get_state(ctx).ready_database()
    if count:
        with database.session(write=False) as session:
            total = trail.count(session=session, **filters)
        Renderer(output).line(str(total))
        return
    with database.session(write=False) as session:
        entries = trail.entries(session=session, limit=limit, offset=offset, **filters)
        records = ({**entry, "at": iso_utc(entry["at"])} for entry in entries)
        shown = Renderer(output).many(
            _shaped(records, output), fields=AUDIT_FIELDS, drop=AUDIT_DROP_ORDER
        )
    if shown == 0 and output is OutputFormat.table:
        say("No audit entries.")
