"""Options shared by several commands, declared once, and the rules they share."""

from __future__ import annotations

from typing import Annotated

import typer
from typer._click.core import ParameterSource

from usersctl.cli.completion import complete_output, complete_users
from usersctl.cli.render import OutputFormat
from usersctl.errors import UsageError

MAX_ROWS = 2**62  # what every engine's LIMIT/OFFSET accepts

Output = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        metavar="FORMAT",
        help="Output format: table (for people), json, jsonl, csv or plain (tab separated).",
        case_sensitive=False,
        autocompletion=complete_output,
    ),
]
UserRef = Annotated[
    str,
    typer.Argument(metavar="USER", help="User id (42) or email.", autocompletion=complete_users),
]
UserRefs = Annotated[
    list[str],
    typer.Argument(
        metavar="USER...",
        help="User ids or emails.",
        show_default=False,
        autocompletion=complete_users,
    ),
]
Yes = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask; required when stdin is not a terminal.")
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check everything and show what would change; write nothing (no audit entry "
        "either). Exits as the real run would.",
    ),
]


def row_count(value: int | None) -> int | None:
    """--limit and --offset: a number of rows, 0 to MAX_ROWS (checked here, so that the
    help shows `N` rather than Click's range notation)."""
    if value is not None and not 0 <= value <= MAX_ROWS:
        raise typer.BadParameter(f"{value} is not a number of rows (0 or more)")
    return value


Limit = Annotated[
    int | None,
    typer.Option("--limit", metavar="N", callback=row_count, help="At most N rows."),
]
Offset = Annotated[
    int,
    typer.Option("--offset", metavar="N", callback=row_count, help="Skip the first N rows."),
]


def _given(ctx: typer.Context, name: str) -> str | None:
    """The option `name` as the user spelled it, if given on the command line."""
    if ctx.get_parameter_source(name) not in (ParameterSource.COMMANDLINE,):
        return None
    for param in ctx.command.params:
        if param.name == name:
            return max(param.opts, key=len)
    return None  # pragma: no cover - a name that is not an option of this command


def exclusive(ctx: typer.Context, first: str, *others: str) -> None:
    """Contradictory options are a usage error (exit 2), never "the last one wins":
    `first` cannot be combined with any of `others` (parameter names)."""
    one = _given(ctx, first)
    if one is None:
        return
    for other in others:
        two = _given(ctx, other)
        if two is not None:
            raise UsageError(f"{one} and {two} cannot be used together")
