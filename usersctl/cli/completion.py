"""Shell completion: values for options and arguments, never the files of the current folder.

Completion runs `usersctl` with `_USERSCTL_COMPLETE` set (Click's protocol: `bash_complete`,
`zsh_complete`, `bash_source`; Typer's older `complete_bash` spelling is accepted too). It
must never print an error: a database that is missing, unreachable or not at head simply
gives no suggestions. Nothing here creates a database or a folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

SORT_FIELDS = ("id", "name", "email", "role", "active", "created_at", "updated_at")
OUTPUT_FORMATS = ("table", "json", "jsonl", "csv", "plain")
MAX_SUGGESTIONS = 200  # user ids and emails offered at once
LATE_DATABASE_URL = "usersctl.database_url"  # ctx.meta key: --database-url after the command

# Click's bash script (types: `file` lets bash complete paths, `plain` values are offered as
# they are), without `-o default`: no suggestion means no suggestion, not a file listing.
BASH_SCRIPT = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response
    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD \\
        %(autocomplete_var)s=bash_complete $1)
    for completion in $response; do
        IFS=',' read type value <<< "$completion"
        if [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done
    return 0
}

complete -o nosort -F %(complete_func)s %(prog_name)s
"""


def _starting(values: list[str] | tuple[str, ...], incomplete: str) -> list[str]:
    return [value for value in values if value.startswith(incomplete)]


def complete_sort(incomplete: str) -> list[str]:
    return _starting([*SORT_FIELDS, *(f"-{field}" for field in SORT_FIELDS)], incomplete)


def complete_output(incomplete: str) -> list[str]:
    return _starting(OUTPUT_FORMATS, incomplete.lower())


def complete_revisions(incomplete: str) -> list[str]:
    from usersctl.revision import KNOWN_REVISIONS

    return _starting(["head", "base", *KNOWN_REVISIONS], incomplete)


def sqlite_file_exists(url: str) -> bool:
    """False for a SQLite URL whose file does not exist (opening it would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return True
    path = parsed.database
    return bool(path) and path != ":memory:" and Path(str(path)).expanduser().is_file()


def _from_database(ctx: typer.Context, fetch: Callable[[Session], list[str]]) -> list[str]:
    """`fetch` on the database the command line names; [] on any problem whatsoever."""
    try:
        from usersctl.config import load_settings

        url = ctx.meta.get(LATE_DATABASE_URL) or ctx.find_root().params.get("database_url")
        settings = load_settings(database_url=url)
        if not sqlite_file_exists(settings.database_url):
            return []  # never create a database to complete a word
        from usersctl.database import Database

        database = Database(settings)
        try:
            with database.session(write=False) as session:
                return fetch(session)
        finally:
            database.engine.dispose()
    except Exception:
        return []


def complete_users(ctx: typer.Context, incomplete: str) -> list[str]:
    from usersctl import crud

    return _from_database(
        ctx,
        lambda session: crud.user_refs(session=session, prefix=incomplete, limit=MAX_SUGGESTIONS),
    )


def complete_roles(ctx: typer.Context, incomplete: str) -> list[str]:
    from usersctl import crud

    return _starting(_from_database(ctx, lambda session: crud.roles(session=session)), incomplete)


def run(cli: Any, ctx_args: MutableMapping[str, Any], prog_name: str, complete_var: str) -> None:
    """Answer a completion request, if this process is one, and exit."""
    instruction = os.environ.get(complete_var)
    if not instruction:
        return
    from typer import _completion_classes

    bash, zsh = _classes()
    first, _, second = instruction.partition("_")
    shell, mode = (second, first) if first in ("source", "complete") else (first, second)
    classes: dict[str, type[Any]] = {
        "bash": bash,
        "zsh": zsh,
        "fish": _completion_classes.FishComplete,
        "powershell": _completion_classes.PowerShellComplete,
        "pwsh": _completion_classes.PowerShellComplete,
    }
    if shell not in classes or mode not in ("source", "complete"):
        sys.exit(1)
    comp = classes[shell](cli, ctx_args, prog_name, complete_var)
    if mode == "source":
        typer.echo(comp.source())
        sys.exit(0)
    try:
        answer = comp.complete()
    except Exception:  # never an error or a traceback in the middle of a command line
        answer = ""
    if answer:
        typer.echo(answer)
    sys.exit(0)


def _classes() -> tuple[type[Any], type[Any]]:
    from typer import _completion_classes

    class Bash(_completion_classes.BashComplete):
        source_template = BASH_SCRIPT

        def format_completion(self, item: Any) -> str:
            return f"{item.type},{item.value}"

    class Zsh(_completion_classes.ZshComplete):
        def complete(self) -> str:
            answer: str = super().complete()
            return "" if answer == "_files" else answer

    return Bash, Zsh


def install_scripts() -> None:
    """`--install-completion` / `--show-completion` write our bash script."""
    from typer import _completion_shared

    _completion_shared._completion_scripts["bash"] = BASH_SCRIPT
