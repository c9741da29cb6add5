"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from usersctl.cli.render import OutputFormat

Output = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        help="Output format: table (for people), json, jsonl, csv or plain (tab separated).",
        case_sensitive=False,
    ),
]
UserRef = Annotated[str, typer.Argument(metavar="USER", help="User id (42) or email.")]
UserRefs = Annotated[
    list[str], typer.Argument(metavar="USER...", help="User ids or emails.", show_default=False)
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
