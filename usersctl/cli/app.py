"""The root Typer app: global options, and the one error ladder that maps every failure to
its exit code and a single line on stderr."""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
from collections.abc import MutableMapping, Sequence
from typing import Annotated, Any, NoReturn

import typer
from typer._click import exceptions as click_exceptions  # typer >= 0.29 vendors click
from typer._click.core import ParameterSource
from typer.core import TyperGroup

from usersctl import __version__
from usersctl.cli.output import (
    discard_stdout,
    flush_stdout,
    guard_standard_streams,
    is_output_error,
    output_failed,
    start_command,
)
from usersctl.cli.state import AppState
from usersctl.cli.text import say
from usersctl.errors import OutputFailed, UsersctlError
from usersctl.escaping import printable

_EXIT_CODES = (
    (0, "success"),
    (1, "unexpected error (a bug; see --debug), or a prompt answered no"),
    (2, "usage error: bad option or value, missing argument, no password source"),
    (3, "user not found"),
    (4, "conflict: email already taken"),
    (5, "invalid data: bad email, empty name, weak password, bad import rows"),
    (6, "verification failed (wrong or no password; disabled, locked, expired)"),
    (7, "database unavailable: cannot connect, no driver, not a database, busy"),
    (8, "schema mismatch: run `usersctl db upgrade` (or the database is newer)"),
    (9, "refused by a safety limit; nothing changed"),
    (10, "output failed (stdout closed, disk full); says if the change committed"),
    (130, "interrupted (Ctrl-C); nothing changed"),
    (143, "terminated (SIGTERM; 129 for SIGHUP); nothing changed"),
)
EXIT_CODES = "Exit codes:\n" + "".join(f"  {code:>3}  {text}\n" for code, text in _EXIT_CODES)

CONFIGURATION = """\
Configuration: a flag wins over the environment, which wins over the file.
  config file            $USERSCTL_CONFIG, else ~/.config/usersctl/config.toml
                         (keys: database_url, actor, busy_timeout,
                         lockout_threshold, lockout_minutes,
                         password_min_length, roles)
  USERSCTL_BUSY_TIMEOUT  seconds to wait for a busy SQLite database (10)
  USERSCTL_DEBUG         1 (or true, yes, on) is the same as --debug
  The global options (--database-url, --actor, --debug) may also follow the
  command: usersctl list --debug
"""

INTERRUPTED = "interrupted; nothing changed"


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
    try:
        for line in details:
            say(printable(line, backslashes=False))
        say(f"error: {printable(message, backslashes=False)}")
    except OSError:
        pass  # stderr is gone too (the terminal closed, `2>&1 | true`): the code still tells
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
        global _current_state
        _current_state = None
        args = list(sys.argv[1:] if args is None else args)
        debug = _debug_requested(args)
        if {"--install-completion", "--show-completion"}.intersection(args):
            from usersctl.cli.completion import install_scripts

            install_scripts()
        start_command()
        try:
            self._run(args, prog_name, complete_var, debug, **extra)
        finally:
            _done()
            # Close the database now, not at interpreter exit (where SQLite may be left
            # unclosed, keeping its -wal/-shm files beside a database it only read).
            if _current_state is not None:
                _current_state.close()

    def _run(
        self,
        args: list[str],
        prog_name: str | None,
        complete_var: str | None,
        debug: bool,
        **extra: Any,
    ) -> NoReturn:
        try:
            result = super().main(
                args=args,
                prog_name=prog_name or "usersctl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            flush_stdout()  # a full disk or closed stdout shows here, not at exit
            _done()  # the command's work and report are complete: no signal undoes that
        except OutputFailed as exc:
            discard_stdout()
            _fail(exc.message, exc.exit_code, exc, debug=debug)
        except SystemExit as exc:
            # Click ends a command whose stdout pipe broke (EPIPE) with a bare exit 1. It
            # is an output failure (exit 10, saying whether the change was committed): a
            # write command ignores SIGPIPE to get here (output.report_broken_pipes).
            broken = exc.__context__
            if exc.code != 1 or not isinstance(broken, OSError) or not is_output_error(broken):
                raise
            discard_stdout()
            failure = output_failed(broken)
            _fail(failure.message, failure.exit_code, broken, debug=debug)
        except UsersctlError as exc:
            _fail(exc.message, exc.exit_code, exc, debug=debug, details=exc.details)
        except click_exceptions.BadParameter as exc:
            # Before UsageError (its base): a value Typer could not convert is reported in
            # usersctl's words, never pydantic's.
            _fail(_bad_value(exc, args) or _usage_message(exc), exc.exit_code)
        except click_exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), err=True)  # the help text itself, as it is
            sys.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            _fail(_usage_message(exc), exc.exit_code)
        except click_exceptions.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort as exc:
            # Click turns Ctrl-C at a prompt into Abort (the KeyboardInterrupt stays the
            # exception's context); EOF or a "no" are plain aborts.
            if isinstance(exc.__context__ or exc.__cause__, KeyboardInterrupt):
                _interrupted()
            _fail("aborted, nothing changed", 1)
        except KeyboardInterrupt:
            _interrupted()
        except OSError as exc:
            if not is_output_error(exc):
                _bug(exc, debug)
            # Writing the result failed part-way (stdout on a full disk, or closed).
            discard_stdout()
            failure = output_failed(exc)
            _fail(failure.message, failure.exit_code, exc, debug=debug)
        except Exception as exc:
            _bug(exc, debug)
        if result == 130:  # Typer's answer to a KeyboardInterrupt, in non-standalone mode
            _interrupted()
        sys.exit(result if isinstance(result, int) else 0)

    def _main_shell_completion(
        self, ctx_args: MutableMapping[str, Any], prog_name: str, complete_var: str | None = None
    ) -> None:
        from usersctl.cli.completion import run

        run(self, ctx_args, prog_name, complete_var or "_USERSCTL_COMPLETE")


def _usage_message(exc: click_exceptions.UsageError) -> str:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return exc.format_message() + hint


BOOLEAN_VALUES = "give 1 or 0 (or true/false, yes/no, on/off)"


def _bad_value(exc: click_exceptions.BadParameter, args: Sequence[str]) -> str | None:
    """`invalid -o 'jsn': give table, json, jsonl, csv or plain` for a value Typer could
    not convert (its pydantic adapter failed: an unknown choice, a number that is not
    one, a boolean environment variable that is neither). None for the checks of our own
    callbacks, which already speak usersctl."""
    from pydantic import ValidationError

    cause, param = exc.__cause__, exc.param
    if not isinstance(cause, ValidationError) or param is None:
        return None
    errors = cause.errors()
    value = errors[0].get("input") if errors else None
    shown = repr(value) if isinstance(value, str) else repr(str(value))
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    choices = getattr(descriptor, "choices", None)
    if annotation is bool:
        rule = BOOLEAN_VALUES
    elif choices:
        names = [str(getattr(choice, "value", choice)) for choice in choices]
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        rule = f"give {listed}"
    elif annotation is int:
        rule = "must be a whole number"
    elif annotation is float:
        rule = "must be a number"
    else:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return f"invalid {_param_name(exc, args)} {shown}{hint}"
    return f"invalid {_param_name(exc, args)} {shown}: {rule}"


def _param_name(exc: click_exceptions.BadParameter, args: Sequence[str]) -> str:
    """How the user gave the bad value: the environment variable it came from, the
    option as typed (`-o` or `--output`), or the argument's name (USER)."""
    param = exc.param
    assert param is not None
    if param.param_type_name == "argument":
        return (param.metavar or param.name or "value").upper()
    source = exc.ctx.get_parameter_source(param.name) if exc.ctx and param.name else None
    if source is ParameterSource.ENVIRONMENT:
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        named = [name for name in envvars if name in os.environ]
        if named:
            return named[0]
    typed = None
    for arg in args:
        if arg == "--":
            break
        for opt in param.opts:
            if arg == opt or arg.startswith(opt + "=" if opt.startswith("--") else opt):
                typed = opt
    return typed or max(param.opts, key=len)


def _interrupted() -> NoReturn:
    """Ctrl-C: exit 130, saying honestly whether anything was already committed. SIGTERM
    or SIGHUP (`timeout`, systemd, a closed session) end the same way, as 128 + the
    signal's number (143, 129)."""
    state = _current_state
    note = state.interrupt_note if state is not None else None
    if _terminated_by is None:
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # off the prompt or the ^C the terminal echoed
        _fail(f"interrupted; {note}" if note else INTERRUPTED, 130)
    name = signal.Signals(_terminated_by).name
    _fail(f"terminated by {name}; {note or 'nothing changed'}", 128 + _terminated_by)


_terminated_by: int | None = None  # the signal (SIGTERM, SIGHUP) that ended this command


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP end a command as Ctrl-C does: the transaction is rolled back, a
    half-written export file removed, before the process exits."""
    global _terminated_by
    if _terminated_by is None:
        _terminated_by = signum
        raise KeyboardInterrupt


_current_state: AppState | None = None  # this invocation's, for the interrupt message
_console_script = False  # run as the `usersctl` command (not by CliRunner in a test)


def _done() -> None:
    """From here the process only closes connections and exits, with the code already
    decided: a Ctrl-C or SIGTERM now (a `timeout` that fires just as the command ends)
    must not turn a committed, fully reported change into exit 143 "nothing changed", nor
    into a traceback from closing a connection. The console script ignores them."""
    if _console_script:
        for ending in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(ending, signal.SIG_IGN)


def _bug(exc: Exception, debug: bool) -> NoReturn:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f": {first}" if first else ""
    _fail(
        f"unexpected error ({type(exc).__name__}{detail}); this is a bug, rerun with "
        "--debug for the traceback",
        1,
        exc,
        debug=debug,
    )


app = typer.Typer(
    cls=UsersctlGroup,
    name="usersctl",
    help="Administer the users of an application's database.\n\n"
    "Examples:\n\n\b\n"
    "  usersctl create --name 'Ada Lovelace' --email ada@example.com \\\n"
    "      --random-password\n"
    "  usersctl list --role admin -o json\n"
    "  usersctl db upgrade\n\n\b\n" + CONFIGURATION + "\n\b\n" + EXIT_CODES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"usersctl {__version__}")
        raise typer.Exit()


def _from_environment(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) == "ENVIRONMENT"


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
    global _current_state
    # A value Click took from USERSCTL_DATABASE_URL or USERSCTL_ACTOR is left for
    # load_settings to read itself, so that an error names the variable, not the flag.
    # (By name: Typer 0.29 carries its own copy of Click and its ParameterSource.)
    if _from_environment(ctx, "database_url"):
        database_url = None
    if _from_environment(ctx, "actor"):
        actor = None
    ctx.obj = _current_state = AppState(database_url=database_url, debug=debug, actor=actor)


def main() -> None:
    """Console-script entry point."""
    # `usersctl list | head -1`: end quietly like other Unix tools when the reader goes away.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for terminating in (signal.SIGTERM, signal.SIGHUP):
        # Only where the default (death) was in place: `nohup usersctl import ...` must
        # go on when the session closes. (`serve` puts its own handlers in.)
        if signal.getsignal(terminating) is signal.SIG_DFL:
            signal.signal(terminating, _terminate)
    guard_standard_streams()
    sys.excepthook = sys.__excepthook__  # (see usersctl.cli: only while starting up)
    global _console_script
    _console_script = True
    try:
        app()  # (Typer builds the command from the functions first: a Ctrl-C may land there)
    except KeyboardInterrupt:
        _interrupted()
    finally:
        if "usersctl.bulk_worker" in sys.modules:  # an import or a sync ran
            # The process ends: Python's last collection would visit every object still
            # alive (a tenth of a second after an import) only to free what exiting frees.
            gc.freeze()
