"""When the result cannot be written: stdout on a full disk (/dev/full) or closed, an export
file whose disk is full or whose folder is read-only. Real processes of the installed
console script (a CliRunner's output never fails).

A generated password is delivered before its change commits: if it cannot be written, the
change is rolled back. Any other output failure is exit 10 with one line saying so and
whether the change was committed, never "a bug". (A closed pipe still ends quietly:
tests/test_regressions.py::test_a_closed_pipe_ends_quietly.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_environment import (
    USERSCTL,
    fill,
    require_denied,
    tiny_tmpfs,  # noqa: F401 - a fixture
    unprivileged,
)

from conftest import SEED_PASSWORD

OUTPUT_FAILED = 10


def run(
    database: Path,
    *args: str,
    stdout: Any = subprocess.PIPE,
    stdin: str = "",
    close_stdout: bool = False,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """usersctl ARGS with stdout to `stdout` (a file object, or closed)."""
    env = {**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{database}"}
    command = [str(USERSCTL), *args]
    if close_stdout:  # `usersctl ... >&-`
        command = ["sh", "-c", '"$0" "$@" >&-', *command]
    return subprocess.run(
        command,
        input=stdin,
        stdout=subprocess.DEVNULL if close_stdout else stdout,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        timeout=120,
        **options,
    )


def emails(database: Path) -> list[str]:
    connection = sqlite3.connect(database)
    try:
        return [row[0] for row in connection.execute("SELECT email FROM users ORDER BY id")]
    finally:
        connection.close()


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "bug" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(params=["full", "closed", "pipe"])
def broken_stdout(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """stdout on a full disk (/dev/full), closed (`>&-`), or a pipe whose reader went away
    (`| true`)."""
    if request.param == "closed":
        yield {"close_stdout": True}
        return
    if request.param == "pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            yield {"stdout": write_end}
        finally:
            os.close(write_end)
        return
    with open("/dev/full", "w") as full:
        yield {"stdout": full}


CREATE = ["create", "--name", "Ada", "--email", "ada@example.com"]


@pytest.mark.parametrize("output", ["json", "table", "jsonl"])
def test_a_generated_password_that_cannot_be_delivered_creates_nothing(
    database: Path, broken_stdout: dict[str, Any], output: str
) -> None:
    """The README's recipe, `create --random-password --if-not-exists -o json >> file`, on
    a full disk: nothing is created, so the rerun creates the user and delivers its
    password."""
    args = [*CREATE, "--random-password", "--if-not-exists", "-o", output]
    failed = run(database, *args, **broken_stdout)
    one_error_line(failed, OUTPUT_FAILED, "could not write the output", "nothing changed")
    assert emails(database) == []
    rerun = run(database, *CREATE, "--random-password", "--if-not-exists", "-o", "json")
    assert rerun.returncode == 0, rerun.stderr
    assert len(json.loads(rerun.stdout)["password"]) >= 20
    assert emails(database) == ["ada@example.com"]


def test_a_generated_password_for_passwd_is_delivered_before_the_change(
    database: Path, broken_stdout: dict[str, Any]
) -> None:
    run(database, *CREATE, "--password-stdin", "-o", "json", stdin=SEED_PASSWORD + "\n")
    failed = run(database, "passwd", "1", "--random-password", "-o", "json", **broken_stdout)
    one_error_line(failed, OUTPUT_FAILED, "could not write the output", "nothing changed")
    still = run(database, "verify-password", "1", "--password-stdin", stdin=SEED_PASSWORD + "\n")
    assert still.returncode == 0, still.stderr  # the old password still works


@pytest.mark.parametrize(
    ("setup", "args", "after"),
    [
        ([], [*CREATE, "--password-stdin"], ["ada@example.com"]),
        ([CREATE], ["update", "1", "--email", "lovelace@example.com"], ["lovelace@example.com"]),
        ([CREATE], ["passwd", "1", "--password-stdin"], ["ada@example.com"]),
        ([CREATE], ["delete", "1", "--yes"], []),
        ([CREATE], ["disable", "1"], ["ada@example.com"]),
    ],
    ids=["create", "update", "passwd", "delete", "disable"],
)
@pytest.mark.parametrize("output", ["json", "table"])
def test_output_lost_after_a_commit_is_an_environment_error(
    database: Path,
    broken_stdout: dict[str, Any],
    setup: list[list[str]],
    args: list[str],
    after: list[str],
    output: str,
) -> None:
    for command in setup:
        run(database, *command, "--password-stdin", stdin=SEED_PASSWORD + "\n")
    failed = run(database, *args, "-o", output, stdin=SEED_PASSWORD + "!\n", **broken_stdout)
    one_error_line(failed, OUTPUT_FAILED, "could not write the output", "the change was committed")
    assert emails(database) == after


@pytest.mark.parametrize("args", [["list"], ["get", "1", "-o", "json"], ["export"]])
def test_a_read_whose_output_is_lost_fails_clearly(
    database: Path, broken_stdout: dict[str, Any], args: list[str]
) -> None:
    run(database, *CREATE, "--password-stdin", stdin=SEED_PASSWORD + "\n")
    failed = run(database, *args, **broken_stdout)
    if isinstance(broken_stdout.get("stdout"), int):  # a read into a broken pipe
        # ends quietly like other Unix tools (`usersctl list | head -1`): SIGPIPE.
        assert (failed.returncode, failed.stderr) == (-signal.SIGPIPE, ""), failed.stderr
        return
    line = one_error_line(failed, OUTPUT_FAILED, "could not write the output")
    assert "committed" not in line


def test_full_stdout_message_names_the_cause(database: Path) -> None:
    run(database, *CREATE, "--password-stdin", stdin=SEED_PASSWORD + "\n")
    with open("/dev/full", "w") as full:
        failed = run(database, "list", stdout=full)
    one_error_line(failed, OUTPUT_FAILED, "No space left on device")
    closed = run(database, "list", close_stdout=True)
    one_error_line(closed, OUTPUT_FAILED, "standard output is closed")


# ---------------- export into a full disk or a read-only folder (item 11)


def test_export_into_a_full_disk_is_an_environment_error(
    database: Path,
    tiny_tmpfs: Path,  # noqa: F811 - the fixture
) -> None:
    run(database, *CREATE, "--password-stdin", stdin=SEED_PASSWORD + "\n")
    fill(tiny_tmpfs, 0)
    target = tiny_tmpfs / "users.jsonl"
    failed = run(database, "export", "--output-file", str(target))
    one_error_line(
        failed, OUTPUT_FAILED, "could not write the output", str(target), "No space left"
    )
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler"]  # no partial file


def test_export_into_a_read_only_folder_is_an_environment_error(
    database: Path, tmp_path: Path
) -> None:
    run(database, *CREATE, "--password-stdin", stdin=SEED_PASSWORD + "\n")
    folder = tmp_path / "exports"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        require_denied(folder, "folder")
        target = folder / "users.csv"
        failed = run(database, "export", "--output-file", str(target), preexec_fn=unprivileged())
        one_error_line(
            failed, OUTPUT_FAILED, "could not write the output", str(target), "Permission denied"
        )
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_the_exit_code_is_documented() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "| 10 | output failed" in readme
    help_text = subprocess.run(
        [str(USERSCTL), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert " 10  output failed" in help_text


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        ([*CREATE, "--password-stdin"], 5, "no password on standard input"),
        (["verify-password", "ada@example.com", "--password-stdin"], 5, "no password on"),
        (["sync", "-", "-f", "jsonl", "--source", "hr"], 5, "standard input is empty"),
    ],
)
def test_a_closed_stdin_reads_as_empty(
    database: Path, args: list[str], code: int, fragment: str
) -> None:
    """`usersctl ... <&-` (a daemon that closed fd 0) answers as with </dev/null, not "a
    bug"; nothing changes."""
    env = {**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{database}"}
    command = ["sh", "-c", '"$0" "$@" <&-', str(USERSCTL), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    one_error_line(result, code, fragment)
    assert emails(database) == []


def test_import_from_a_closed_stdin_imports_nothing(database: Path) -> None:
    env = {**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{database}"}
    args = ["import", "-", "-f", "jsonl", "-o", "json"]
    command = ["sh", "-c", '"$0" "$@" <&-', str(USERSCTL), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created"] == 0


def test_a_change_into_a_broken_pipe_for_both_streams_is_still_exit_10(database: Path) -> None:
    """`usersctl create ... 2>&1 | true`: the error line cannot be written either; the exit
    code still says what happened (and the change is made: it was committed)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{database}"}
    try:
        result = subprocess.run(
            [str(USERSCTL), *CREATE, "--password-stdin", "-o", "json"],
            input=SEED_PASSWORD + "\n",
            stdout=write_end,
            stderr=write_end,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == OUTPUT_FAILED
    assert emails(database) == ["ada@example.com"]
