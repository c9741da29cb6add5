"""Where a password comes from: a hidden prompt, one line of stdin, or generated.

Never from argv (it would show in `ps` and shell history), never echoed, never logged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from usersctl import rules
from usersctl.cli.state import stdin_is_terminal
from usersctl.cli.text import say
from usersctl.errors import InvalidData, UsageError

MAX_LINE = rules.PASSWORD_MAX_LENGTH

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input.",
    ),
]
RandomPassword = Annotated[
    bool,
    typer.Option(
        "--random-password",
        help="Generate a strong random password and print it once.",
    ),
]


@dataclass(frozen=True)
class PasswordInput:
    value: str
    generated: bool = False


STDIN_PROMPT = "Password: "


def _typed_on_terminal() -> bool:
    """Is stdin itself a terminal? (Looked up through the module, not imported by name as
    the prompts' check is, so that a test pretending the prompts run on a terminal still
    feeds --password-stdin through a pipe.)"""
    from usersctl.cli import state

    return state.stdin_is_terminal()


def read_stdin_line() -> str:
    """One line of stdin without its line ending; more than MAX_LINE characters is an error.

    When stdin is a terminal (`--password-stdin` with nothing piped in), the line is read
    without echo (getpass) after a short prompt on stderr: otherwise the password would
    show on the screen while the command seemed to hang. From a pipe nothing is printed."""
    try:
        if _typed_on_terminal():
            import getpass

            line = getpass.getpass(STDIN_PROMPT, stream=sys.stderr) + "\n"
        else:
            line = sys.stdin.readline(MAX_LINE + 2)
    except UnicodeDecodeError:
        raise InvalidData("the password on standard input is not valid UTF-8") from None
    except EOFError:  # Ctrl-D at the prompt
        line = ""
    if line == "":
        raise InvalidData("no password on standard input (expected one line)")
    try:  # under the C/POSIX locale (cron's) Python decodes stdin with surrogateescape
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidData("the password on standard input is not valid UTF-8") from None
    line = line.removesuffix("\n").removesuffix("\r")
    if len(line) > MAX_LINE:
        raise InvalidData(rules.PASSWORD_TOO_LONG)
    return line


PROMPT_ATTEMPTS = 3


def new_password(
    *,
    password_stdin: bool,
    random_password: bool,
    user_inputs: Sequence[str] = (),
    min_length: int | None = None,
) -> PasswordInput:
    """The password to set, checked against the policy (exit 5 when refused; the prompt
    asks again, up to 3 times). Raises UsageError (exit 2) when there is no source."""
    from usersctl import password_policy, passwords

    if password_stdin and random_password:
        raise UsageError("--password-stdin and --random-password cannot be used together")
    minimum = password_policy.DEFAULT_MIN_LENGTH if min_length is None else min_length
    if random_password:  # long and random enough for the policy by construction
        return PasswordInput(passwords.generate_password(minimum), generated=True)
    if password_stdin:
        value = read_stdin_line()
    elif stdin_is_terminal():
        # The policy is checked before the confirmation: nobody should type a password
        # twice to learn that it is too short.
        attempt = 1
        while True:
            value = typer.prompt("Password", hide_input=True)
            try:
                password_policy.check(value, min_length=minimum, user_inputs=user_inputs)
            except InvalidData as exc:
                if attempt == PROMPT_ATTEMPTS:
                    raise
                attempt += 1
                say(f"{exc.message}; please choose another.")
                continue
            if typer.prompt("Repeat for confirmation", hide_input=True) == value:
                return PasswordInput(value)
            say(MISMATCH)  # (click's own would go to stdout)
    else:
        raise UsageError(
            "no password source: stdin is not a terminal; use --password-stdin or --random-password"
        )
    password_policy.check(value, min_length=minimum, user_inputs=user_inputs)
    return PasswordInput(value)


MISMATCH = "error: the two passwords do not match."


def existing_password(*, password_stdin: bool) -> str:
    """The password to check (verify-password): prompt without confirmation, or stdin."""
    if password_stdin:
        return read_stdin_line()
    if stdin_is_terminal():
        value: str = typer.prompt("Password", hide_input=True)
        return value
    raise UsageError("no password source: stdin is not a terminal; use --password-stdin")
