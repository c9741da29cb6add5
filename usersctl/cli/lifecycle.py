"""Account lifecycle on the command line: `unlock`, the auditors' filters (--inactive-since,
--expired, --locked, --no-password) shared by list and the commands that select users, and
the --expires / --must-change / --columns options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from usersctl.cli.command import command
from usersctl.cli.completion import complete_users
from usersctl.cli.options import DryRun, Output
from usersctl.cli.render import FIELDS, OutputFormat
from usersctl.cli.state import get_state
from usersctl.cli.text import say
from usersctl.errors import UsageError

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session

    from usersctl.lifecycle import Filters
    from usersctl.models import User

Expires = Annotated[
    str | None,
    typer.Option(
        "--expires",
        metavar="DATE|DURATION|never",
        help="When the account expires (it can no longer log in): a date (2027-06-30, "
        "midnight UTC), a duration from now (90d, 12h, 4w, 1y) or never.",
    ),
]
MustChange = Annotated[
    bool,
    typer.Option(
        "--must-change",
        help="The password must be changed at first use (set anyway by --random-password).",
    ),
]
InactiveSince = Annotated[
    str | None,
    typer.Option(
        "--inactive-since",
        metavar="DURATION|DATE",
        help="No login since then (90d, 2026-09-01); never-logged-in users count from "
        "their creation.",
    ),
]
Expired = Annotated[bool, typer.Option("--expired", help="Only expired accounts.")]
Locked = Annotated[
    bool, typer.Option("--locked", help="Only accounts locked out by failed logins.")
]
NoPassword = Annotated[
    bool, typer.Option("--no-password", help="Only accounts without a password.")
]
MustChangeFilter = Annotated[
    bool,
    typer.Option("--must-change", help="Only accounts whose password must be changed at next use."),
]
OptionalUserRefs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="USER...",
        help="User ids or emails (or select users with the filters instead).",
        show_default=False,
        autocompletion=complete_users,
    ),
]
Columns = Annotated[
    str | None,
    typer.Option(
        "--columns",
        metavar="NAME,...",
        help="Fields to show, comma separated, in this order: " + ", ".join(FIELDS) + ".",
    ),
]


def columns(text: str | None, default: Sequence[str]) -> list[str]:
    """The --columns fields, checked (exit 2 on an unknown one)."""
    if text is None:
        return list(default)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FIELDS]
    if unknown or not chosen:
        problem = f"unknown column {unknown[0]!r}" if unknown else "no column given"
        raise UsageError(f"{problem}: choose from {', '.join(FIELDS)}")
    return list(dict.fromkeys(chosen))


def filters(
    *,
    inactive_since: str | None,
    expired: bool,
    locked: bool,
    no_password: bool,
    must_change: bool = False,
    moment: datetime,
) -> Filters:
    from usersctl.lifecycle import Filters, parse_since

    since = parse_since(inactive_since, moment) if inactive_since is not None else None
    return Filters(
        inactive_since=since,
        expired=expired,
        locked=locked,
        no_password=no_password,
        must_change=must_change,
    )


def check_selection(users: Sequence[str] | None, chosen: Filters) -> list[str]:
    """USER arguments or filters, exactly one of them (exit 2 otherwise)."""
    if users and chosen:
        raise UsageError("give USER arguments or filters (--inactive-since, ...), not both")
    if not users and not chosen:
        raise UsageError(
            "no users given: name them (USER...) or select them with --inactive-since, "
            "--expired, --locked or --no-password"
        )
    return list(users or [])


def select_users(
    session: Session, users: Sequence[str], chosen: Filters, moment: datetime, **kwargs: bool
) -> list[User]:
    """The users a command acts on: the named ones (all must exist unless missing_ok), or
    every user the filters match, locked for the transaction."""
    from usersctl import crud

    if users:
        return crud.get_users(session=session, refs=users, **kwargs)
    query = crud.user_query(lifecycle=chosen, moment=moment)
    if kwargs.get("lock"):
        query = query.with_for_update()
    return list(session.scalars(query))


def say_none_matched(chosen: Filters) -> None:
    say(f"No users match ({chosen.describe()}); nothing changed.")


def register(app: typer.Typer) -> None:
    command(app, "unlock")(unlock)


def unlock(
    ctx: typer.Context,
    users: OptionalUserRefs = None,
    inactive_since: InactiveSince = None,
    expired: Expired = False,
    locked: Locked = False,
    no_password: NoPassword = False,
    must_change: MustChangeFilter = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Clear the lockout and failed-login counter of users. All or nothing.

    \b
    Example:
      usersctl unlock ada@example.com
      usersctl unlock --locked --dry-run
    """
    from usersctl import crud
    from usersctl.cli.audit import show_planned
    from usersctl.cli.render import Renderer
    from usersctl.lifecycle import now
    from usersctl.records import user_record

    moment = now()
    chosen = filters(
        inactive_since=inactive_since,
        expired=expired,
        locked=locked,
        no_password=no_password,
        must_change=must_change,
        moment=moment,
    )
    refs = check_selection(users, chosen)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        targets = select_users(session, refs, chosen, moment, lock=True)
        crud.unlock_users(session=session, users=targets, trail=trail)
        shown = [user_record(u) for u in targets]
    if not targets:
        say_none_matched(chosen)
        return
    if dry_run:
        show_planned(trail, output)
    else:
        Renderer(output).many(shown)
