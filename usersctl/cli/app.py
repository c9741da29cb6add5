"""The root Typer app: global options, and the one error ladder that maps every failure to
its exit code and a single line on stderr."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import typer
from typer._click import exceptions as click_exceptions  # typer >= 0.29 vendors click
from typer.core import TyperGroup

from usersctl import __version__
from usersctl.cli.state import AppState
from usersctl.cli.text import printable
from usersctl.errors import UsersctlError

EXIT_CODES = """\
Exit codes:
  0  success
  1  unexpected error (a bug; --debug shows the traceback), or a prompt answered "no"
  2  usage error: bad option, missing argument, no password source
  3  user not found
  4  conflict: email already taken
  5  invalid data: bad email, empty name, weak password, bad import rows (with line numbers)
  6  password verification failed; or the user is disabled, locked, expired, passwordless
  7  database unavailable: cannot connect, driver missing, not a database, read-only, busy
  8  schema mismatch: run `usersctl db upgrade` (or the database is newer than usersctl)
"""


def _debug_requested(args: Sequence[str]) -> bool:
    """--debug or USERSCTL_DEBUG, read from the raw arguments: the failure may come before
    (or from) option parsing. Only the root command has a --debug option."""
    if "--debug" in args:
        return True
    return os.environ.get("USERSCTL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def _fail(
    message: str,
    code: int,
    exc: BaseException | None = None,
    *,
    debug: bool = False,
    details: Sequence[str] = (),
) -> NoReturn:
    if exc is not None and debug:
        traceback.print_exception(exc, file=sys.stderr)
    for line in details:
        typer.echo(printable(line), err=True)
    typer.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


class UsersctlGroup(TyperGroup):
    """Runs commands with the error ladder around them (also for CliRunner)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        debug = _debug_requested(args)
        try:
            result = super().main(
                args=args,
                prog_name=prog_name or "usersctl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except UsersctlError as exc:
            _fail(exc.message, exc.exit_code, exc, debug=debug, details=exc.details)
        except click_exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), err=True)  # the help text itself, as it is
            sys.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, exc.exit_code)
        except click_exceptions.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted, nothing changed", 1)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detail = f": {first}" if first else ""
            _fail(
                f"unexpected error ({type(exc).__name__}{detail}); this is a bug, rerun with "
                "--debug for the traceback",
                1,
                exc,
                debug=debug,
            )
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=UsersctlGroup,
    name="usersctl",
    help="Administer the users of an application's database.\n\n"
    "Examples:\n\n\b\n"
    "  usersctl create --name 'Ada Lovelace' --email ada@example.com --random-password\n"
    "  usersctl list --role admin -o json\n"
    "  usersctl db upgrade\n\n\b\n" + EXIT_CODES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"usersctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="USERSCTL_DATABASE_URL",
            show_envvar=True,
            help="SQLAlchemy URL of the users database [default: SQLite in the user data folder].",
            metavar="URL",
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="USERSCTL_DEBUG",
            show_envvar=True,
            help="Show the traceback of unexpected errors.",
        ),
    ] = False,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            envvar="USERSCTL_ACTOR",
            show_envvar=True,
            help="Who the audit trail names for changes [default: the operating-system user].",
            metavar="NAME",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    # Settings are resolved on first use, so `usersctl create --help` works even with a
    # broken config file; every command that touches the database reports it (exit 2).
    ctx.obj = AppState(database_url=database_url, debug=debug, actor=actor)


def main() -> None:
    """Console-script entry point."""
    # `usersctl list | head -1`: end quietly like other Unix tools when the reader goes away.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()
