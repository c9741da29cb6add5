"""SIGTERM and SIGHUP (what `timeout`, systemd and a closed session send) end a command as
Ctrl-C does: the transaction rolled back, a half-written export file removed, one line
saying so, exit 128 + the signal's number. Real processes of usersctl's `main()`, which
signal themselves at an exact point (no timing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_output_failures import emails

from conftest import SEED_PASSWORD, prehashed_rows

# Runs usersctl's entry point after arranging to send itself SIGTEST_SIGNAL at SIGTEST_AT:
# "export-row" (the third row of an export is about to be written), "after-insert" (the
# users are inserted, their transaction not yet committed), "closing" (all done and
# reported) or "building" (before the command runs at all).
WRAPPER = r"""
import os, signal, sys

signum = getattr(signal, os.environ["SIGTEST_SIGNAL"])
at = os.environ["SIGTEST_AT"]
if at == "export-row":
    from usersctl import crud

    original = crud.export_rows

    def rows(**kwargs):
        for number, row in enumerate(original(**kwargs)):
            if number == 2:
                os.kill(os.getpid(), signum)
            yield row

    crud.export_rows = rows
elif at == "after-insert":
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def after_insert(connection, cursor, statement, *rest):
        if statement.lstrip().upper().startswith("INSERT INTO USERS"):
            os.kill(os.getpid(), signum)

elif at == "closing":  # the command is done and reported; its connections are closing
    from usersctl.cli.state import AppState

    close = AppState.close

    def closing(self):
        os.kill(os.getpid(), signum)
        close(self)

    AppState.close = closing
elif at == "building":  # Typer is building the command from usersctl's functions
    import typer.main

    get_command = typer.main.get_command

    def building(typer_instance):
        os.kill(os.getpid(), signum)
        return get_command(typer_instance)

    typer.main.get_command = building

elif at == "importing":  # Python is importing usersctl's modules, before main() runs
    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == "usersctl.cli.users":
                os.kill(os.getpid(), signum)
            return None

    sys.meta_path.insert(0, Interrupt())

sys.argv[0] = "usersctl"
from usersctl.cli import main
main()
"""

# (Ctrl-C's SIGINT alongside: the others end the same way, under their own name and code.)
SIGNALS = [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)]


def run(
    database: Path, *args: str, at: str = "", signal_name: str = "SIGTERM", stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "USERSCTL_DATABASE_URL": f"sqlite:///{database}",
        "SIGTEST_AT": at,
        "SIGTEST_SIGNAL": signal_name,
    }
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_terminated(result: subprocess.CompletedProcess[str], name: str, code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    said = "interrupted" if name == "SIGINT" else f"terminated by {name}"
    assert result.stderr == f"error: {said}; nothing changed\n", result.stderr


@pytest.mark.parametrize(("name", "code"), SIGNALS)
def test_a_terminated_import_writes_nothing(
    database: Path, tmp_path: Path, seed_hash: str, name: str, code: int
) -> None:
    rows = prehashed_rows(tmp_path / "users.jsonl", 5, seed_hash)
    result = run(database, "import", str(rows), at="after-insert", signal_name=name)
    assert_terminated(result, name, code)
    assert emails(database) == []
    assert run(database, "import", str(rows)).returncode == 0  # no lock or journal left over
    assert len(emails(database)) == 5


@pytest.mark.parametrize(("name", "code"), SIGNALS)
def test_a_terminated_export_leaves_no_file(
    database: Path, tmp_path: Path, name: str, code: int
) -> None:
    for n in range(5):
        made = run(database, "create", "--name", f"U{n}", "--email", f"u{n}@example.com",
                   "--password-stdin", stdin=SEED_PASSWORD + "\n")  # fmt: skip
        assert made.returncode == 0, made.stderr
    folder = tmp_path / "backups"
    folder.mkdir()
    target = folder / "users.jsonl"
    result = run(
        database, "export", "--include-hashes", "--output-file", str(target), at="export-row",
        signal_name=name,
    )  # fmt: skip
    assert_terminated(result, name, code)
    assert list(folder.iterdir()) == []  # no file, and no hidden temporary file of hashes


@pytest.mark.parametrize(("name", "code"), SIGNALS)
def test_a_signal_after_the_report_changes_nothing_of_the_outcome(
    database: Path, tmp_path: Path, seed_hash: str, name: str, code: int
) -> None:
    """A `timeout` that fires as the command ends: the change is committed and its report
    complete, so the exit is 0, silently. It was 143 ("nothing changed", a cron job's
    retry or alert), or a traceback from closing a connection."""
    rows = prehashed_rows(tmp_path / "users.jsonl", 2, seed_hash)
    result = run(database, "import", str(rows), "-o", "json", at="closing", signal_name=name)
    assert (result.returncode, result.stderr) == (0, ""), (code, result.stderr)
    assert '"created": 2' in result.stdout
    assert len(emails(database)) == 2


@pytest.mark.parametrize(("name", "code"), SIGNALS)
def test_a_signal_before_the_command_runs_is_one_line(
    database: Path, tmp_path: Path, name: str, code: int
) -> None:
    """Ctrl-C while Typer builds the command printed a KeyboardInterrupt traceback."""
    result = run(database, "list", at="building", signal_name=name)
    assert_terminated(result, name, code)


def test_a_ctrl_c_while_python_imports_usersctl_is_one_line(database: Path) -> None:
    """Before main() can catch anything: it printed a KeyboardInterrupt traceback."""
    result = run(database, "list", at="importing", signal_name="SIGINT")
    assert result.returncode in (130, -signal.SIGINT), result.returncode
    assert result.stderr == "error: interrupted; nothing changed\n", result.stderr


def test_nohup_keeps_a_command_going_when_the_session_closes(
    database: Path, tmp_path: Path, seed_hash: str
) -> None:
    """`nohup usersctl import ...`: started with SIGHUP ignored, the hangup changes nothing."""
    rows = prehashed_rows(tmp_path / "users.jsonl", 1, seed_hash)
    env = {**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{database}",
           "SIGTEST_AT": "after-insert", "SIGTEST_SIGNAL": "SIGHUP"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, "import", str(rows)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stderr
    assert emails(database) == ["u0@example.com"]
