"""What a new admin's mistakes say: one `error: ...` line in usersctl's words (never
pydantic's, Click's or Alembic's), the documented exit code (2 for usage), no traceback.

Bad option values, a bad USERSCTL_DEBUG, an unknown revision, export's format hint, a
token that would be born expired, --password-stdin typed on a terminal, the root help."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error
from usersctl.cli import app
from usersctl.config import _CONFIG_KEYS
from usersctl.revision import HEAD, KNOWN_REVISIONS

LIBRARY_WORDS = (
    "Value error", "is not one of", "Input should", "valid integer", "valid boolean",
    "Invalid value for", "Can't locate", "pydantic", "Traceback",
)  # fmt: skip
SQLITE_ONLY = pytest.mark.parametrize("engine_name", ["sqlite"])
RANGE = f"{KNOWN_REVISIONS[0]}..{HEAD}"


def assert_usage(result: Any, message: str) -> None:
    """Exit 2 and exactly `error: <message>`, with none of a library's words."""
    assert_error(result, 2)
    assert result.stderr.strip() == f"error: {message}", result.stderr
    for words in LIBRARY_WORDS:
        assert words not in result.stderr, (words, result.stderr)
    assert result.stdout == ""


# ---------------- 1. an Enum-valued option given a value it does not take

FORMATS = "table, json, jsonl, csv or plain"
BULK = "csv, json or jsonl"
CHOICES = [
    (["list", "-o", "jsn"], f"invalid -o 'jsn': give {FORMATS}"),
    (["list", "--output=XML"], f"invalid --output 'XML': give {FORMATS}"),
    (["list", "-oyaml"], f"invalid -o 'yaml': give {FORMATS}"),
    (["get", "1", "--output", "xml"], f"invalid --output 'xml': give {FORMATS}"),
    (["db", "history", "-o", "yaml"], f"invalid -o 'yaml': give {FORMATS}"),
    (["export", "-o", "table"], f"invalid -o 'table': give {BULK}"),
    (["export", "--format", "xml"], f"invalid --format 'xml': give {BULK}"),
    (["import", "-", "-f", "xml"], f"invalid -f 'xml': give {BULK}"),
    (["import", "-", "--on-conflict", "merge"], "invalid --on-conflict 'merge': give error, "
     "skip or update"),
    (["sync", "-", "--source", "hr", "--prune", "all"], "invalid --prune 'all': give none, "
     "disable or delete"),
    (["token", "create", "deploy", "--scope", "admin"], "invalid --scope 'admin': give read, "
     "write or scim"),
]  # fmt: skip


@SQLITE_ONLY
@pytest.mark.parametrize(("args", "message"), CHOICES, ids=[" ".join(a) for a, _ in CHOICES])
def test_an_unknown_choice_names_the_choices(cli: Cli, args: list[str], message: str) -> None:
    assert_usage(cli(*args), message)


@SQLITE_ONLY
def test_audit_action_lists_every_action(cli: Cli) -> None:
    from usersctl.cli.audit import Action

    actions = [action.value for action in Action]
    result = cli("audit", "--action", "frobnicate")
    assert_usage(result, f"invalid --action 'frobnicate': give {', '.join(actions[:-1])} "
                 f"or {actions[-1]}")  # fmt: skip


# ---------------- 2. a number option given something else

NUMBERS = [
    ["list", "--limit", "abc"],
    ["list", "--offset", "1.5"],
    ["audit", "--limit", "ten"],
    ["audit", "--offset", "x"],
    ["serve", "--port", "http"],
    ["serve", "--workers", "many"],
    ["serve", "--read-threads", "2.5"],
    ["serve", "--token-minutes", "1h"],
]


@SQLITE_ONLY
@pytest.mark.parametrize("args", NUMBERS, ids=[" ".join(a) for a in NUMBERS])
def test_a_number_option_says_whole_number(cli: Cli, args: list[str]) -> None:
    option, value = args[-2], args[-1]
    assert_usage(cli(*args), f"invalid {option} {value!r}: must be a whole number")


# ---------------- 3. environment variables that take booleans and numbers


@SQLITE_ONLY
@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_a_bad_usersctl_debug_names_the_variable_and_its_values(cli: Cli, value: str) -> None:
    result = cli("list", env={"USERSCTL_DEBUG": value})
    assert_usage(
        result, f"invalid USERSCTL_DEBUG {value!r}: give 1 or 0 (or true/false, yes/no, on/off)"
    )


@SQLITE_ONLY
@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "0", "false", "no", "off", ""])
def test_usersctl_debug_takes_the_documented_values(cli: Cli, value: str) -> None:
    assert cli("list", "-o", "json", env={"USERSCTL_DEBUG": value}).exit_code == 0


@SQLITE_ONLY
@pytest.mark.parametrize("value", ["ten", "-1", "nan"])
def test_a_bad_busy_timeout_names_the_variable(cli: Cli, value: str) -> None:
    result = cli("list", env={"USERSCTL_BUSY_TIMEOUT": value})
    assert_error(result, 2, "USERSCTL_BUSY_TIMEOUT", "seconds")


# ---------------- 4. an unknown revision says which exist


@SQLITE_ONLY
@pytest.mark.parametrize("revision", ["9999", "000", "heads", "0003@head", ""])
def test_an_unknown_revision_lists_the_revisions(cli: Cli, revision: str) -> None:
    shown = repr(revision)
    assert_usage(
        cli("db", "upgrade", revision),
        f"unknown revision {shown}: give head or one of {RANGE}",
    )
    # Checked before the consent: no "refusing to downgrade without --yes" first.
    assert_usage(
        cli("db", "downgrade", revision),
        f"unknown revision {shown}: give base or one of {RANGE}",
    )
    assert_usage(
        cli("db", "stamp", revision, "--dry-run"),
        f"unknown revision {shown}: give head, base or one of {RANGE}",
    )


@SQLITE_ONLY
def test_known_revisions_are_still_taken(cli: Cli) -> None:
    assert cli("db", "upgrade", "head").exit_code == 0
    assert cli("db", "upgrade", HEAD).exit_code == 0
    assert cli("db", "stamp", "head", "--dry-run").exit_code == 0
    result = cli("db", "downgrade", KNOWN_REVISIONS[-2], "--dry-run")
    assert result.exit_code == 0, result.stderr


# ---------------- 5. export names its own option


def test_export_to_an_unknown_extension_says_give_o(cli: Cli, tmp_path: Path) -> None:
    for name in ("users.xml", "users"):
        target = tmp_path / name
        result = cli("export", "--output-file", str(target))
        assert_usage(
            result,
            f"cannot tell the format of {str(target)!r} from its name: give -o csv|json|jsonl",
        )
        assert not target.exists()
    cli.ok("export", "--output-file", str(tmp_path / "users.xml"), "-o", "json")


# ---------------- 6. a token that would be expired when made


@pytest.mark.parametrize("expires", ["0d", "0h", "2020-01-01", "2020-01-01T00:00:00Z"])
def test_token_create_refuses_an_expiry_not_in_the_future(cli: Cli, expires: str) -> None:
    result = cli("token", "create", "deploy", "--expires", expires)
    assert_usage(
        result, f"invalid --expires {expires!r}: must be in the future (e.g. 90d or never)"
    )
    assert cli.json("token", "list") == []  # nothing was made


def test_token_create_still_takes_future_expiries(cli: Cli) -> None:
    for name, expires in (("soon", "1h"), ("later", "90d"), ("forever", "never")):
        cli.ok("token", "create", name, "--expires", expires, "-o", "json")
    assert sorted(t["name"] for t in cli.json("token", "list")) == ["forever", "later", "soon"]


def test_update_expires_now_is_still_allowed(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    user = cli.json("update", "ada@example.com", "--expires", "0d")
    assert user["expires_at"] is not None


# ---------------- 7. --password-stdin typed on a terminal


class FakeGetpass:
    """Stands in for getpass.getpass: records how it was asked, answers `answer`."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, prompt: str = "Password: ", stream: Any = None) -> str:
        self.calls.append((prompt, stream is sys.stderr))
        if self.answer is None:
            raise EOFError
        return self.answer


PASSWORD_STDIN = [
    ("verify-password", "ada@example.com", "--password-stdin"),
    ("passwd", "ada@example.com", "--password-stdin"),
    ("create", "--name", "Bob", "--email", "bob@example.com", "--password-stdin"),
]


@SQLITE_ONLY
@pytest.mark.parametrize("args", PASSWORD_STDIN, ids=[a[0] for a in PASSWORD_STDIN])
def test_password_stdin_on_a_terminal_reads_without_echo(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    fake = FakeGetpass(SEED_PASSWORD + " and more")
    if args[0] == "verify-password":
        fake.answer = SEED_PASSWORD
    monkeypatch.setattr("usersctl.cli.state.stdin_is_terminal", lambda: True)
    monkeypatch.setattr("getpass.getpass", fake)
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert fake.calls == [("Password: ", True)]  # one short prompt, on stderr


@SQLITE_ONLY
def test_password_stdin_on_a_terminal_ctrl_d_is_no_password(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    monkeypatch.setattr("usersctl.cli.state.stdin_is_terminal", lambda: True)
    fake = FakeGetpass(None)
    monkeypatch.setattr("getpass.getpass", fake)
    result = cli("verify-password", "ada@example.com", "--password-stdin")
    assert fake.calls == [("Password: ", True)]
    assert result.exit_code == 5, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no password on standard input (expected one line)"
    )


@SQLITE_ONLY
def test_password_stdin_from_a_pipe_prints_no_prompt(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    fake = FakeGetpass(SEED_PASSWORD)
    monkeypatch.setattr("getpass.getpass", fake)
    result = cli("verify-password", "ada@example.com", "--password-stdin", "-o", "json",
                 input=SEED_PASSWORD + "\n")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert fake.calls == []
    assert result.stderr == "Password verified.\n"
    assert json.loads(result.stdout)["verified"] is True


SCRIPT = Path(sys.executable).parent / "usersctl"


def _run_on_terminal(args: list[str], env: dict[str, str], typed: str) -> tuple[int, bytes]:
    """Run usersctl with a pseudo-terminal as stdin, stdout, stderr and controlling
    terminal; type `typed` once "Password: " shows. Returns the exit code and the screen."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes usersctl
        os.execve(str(SCRIPT), [str(SCRIPT), *args], env)
    screen, deadline, sent = b"", time.monotonic() + 30, False
    while True:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(fd)
            raise AssertionError(f"timed out; screen: {screen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child exited
            break
        if not chunk:
            break
        screen += chunk
        if not sent and screen.endswith(b"Password: "):
            os.write(fd, typed.encode() + b"\r")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen


@pytest.mark.slow
@SQLITE_ONLY
def test_password_stdin_on_a_real_terminal_prompts_and_hides(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    keep = {k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")}
    env = {**keep, "TERM": "dumb", "USERSCTL_DATABASE_URL": cli.url}
    args = ["verify-password", "ada@example.com", "--password-stdin"]
    code, screen = _run_on_terminal(args, env, SEED_PASSWORD)
    assert code == 0, screen
    assert screen.startswith(b"Password: "), screen
    assert SEED_PASSWORD.encode() not in screen, screen  # not echoed
    assert b"Password verified." in screen


# ---------------- 8. the root help


def _root_help() -> str:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_root_help_names_every_config_file_key() -> None:
    text = _root_help()
    keys = text[text.index("(keys:") : text.index(")", text.index("(keys:"))]
    named = set(re.findall(r"[a-z_]+", keys.removeprefix("(keys:")))
    assert named == _CONFIG_KEYS


def test_root_help_aligns_the_exit_codes() -> None:
    lines = _root_help().split("Exit codes:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    codes = [re.match(r"^(\s*)(\d+)(\s+)(\S)", line) for line in lines]
    assert all(codes), lines
    assert [int(m.group(2)) for m in codes if m] == [*range(11), 130, 143]
    starts = {m.start(4) for m in codes if m}
    assert len(starts) == 1, lines  # every meaning starts in the same column
    ends = {m.end(2) for m in codes if m}
    assert len(ends) == 1, lines  # codes right-aligned
