"""Validation in a forked child process (usersctl.bulk_worker), what an input of 1 MiB or
more takes: the same results as validating in one process (tests that use `cli` here, and
in test_bulk, test_sync and test_import_edge_cases, run both ways: see conftest), every way
the child can fail reported in one line with the database unchanged, and no child left
behind however the command ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from conftest import Cli, assert_error, prehashed_rows

USERSCTL = str(Path(sys.executable).parent / "usersctl")
# What follows the two tests that run both ways needs fork and Linux's /proc (as CI has).
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")


def forked_on_sqlite(test: Any) -> Any:
    """The test's imports validate in a child, whatever their size (on SQLite, on Linux)."""
    for mark in (
        linux,
        pytest.mark.parametrize("validation", ["forked"], indirect=True),
        pytest.mark.parametrize("engine_name", ["sqlite"]),
    ):
        test = mark(test)
    return test


def count(url: str, table: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
    engine.dispose()
    return int(found)


def test_bad_rows_across_many_batches_are_all_reported(cli: Cli, tmp_path: Path) -> None:
    """Bad rows, duplicates and blank lines spread over three batches of 2,000: the same
    report, counts and line numbers whether validated here or in the child."""
    lines = []
    for n in range(4_500):
        row: dict[str, Any] = {"name": f"U{n}", "email": f"u{n}@example.com"}
        if n % 900 == 7:
            row["email"] = "not-an-email"
        if n % 1000 == 999:
            row["email"] = "u3@example.com"  # a duplicate of line 4
        lines.append(json.dumps(row))
        if n % 1500 == 0:
            lines.append("")
    source = tmp_path / "users.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = cli("import", str(source))
    assert result.exit_code == 5, result.stderr
    errors = result.stderr.splitlines()
    assert errors[-1] == "error: 9 bad row(s); nothing imported, the database is unchanged"
    # line = row + 1, plus one for each blank line before it (rows 0, 1500, 3000)
    assert errors[:2] == [
        "line 9: invalid email: an email address must have an @-sign",
        "line 909: invalid email: an email address must have an @-sign",
    ], errors
    assert "line 1001: duplicate email u3@example.com (first on line 5)" in errors
    assert "line 4003: duplicate email u3@example.com (first on line 5)" in errors
    assert cli.ok("list", "--count").stdout == "0\n"


def test_an_undecodable_byte_late_in_the_file_names_its_line(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "users.csv"
    rows = "".join(f"U{n},u{n}@example.com\n" for n in range(3_000))
    source.write_bytes(b"name,email\n" + rows.encode() + b"Bj\xf6rn,bjorn@example.com\n")
    assert_error(
        cli("import", str(source)),
        5,
        "line 3002: not valid utf-8 (byte 0xf6); give the file's --encoding (e.g. cp1252)",
    )
    assert cli.ok("list", "--count").stdout == "0\n"
    assert cli.json("import", str(source), "--encoding", "cp1252")["created"] == 3_001


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The children os.fork made (in this process)."""
    made: list[int] = []
    fork = os.fork

    def counted() -> int:
        pid = fork()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted)
    return made


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("validation", ["default"], indirect=True)  # the real threshold
@linux
def test_an_input_of_a_mebibyte_forks_and_a_smaller_one_does_not(
    cli: Cli, tmp_path: Path, seed_hash: str, forks: list[int]
) -> None:
    small = prehashed_rows(tmp_path / "small.jsonl", 100, seed_hash)
    assert cli.json("import", str(small))["created"] == 100
    assert forks == []
    big = prehashed_rows(tmp_path / "big.jsonl", 7_000, seed_hash)
    assert big.stat().st_size > 1 << 20
    assert cli.json("import", str(big), "--on-conflict", "skip") == {
        "created": 6_900, "updated": 0, "unchanged": 0, "skipped": 100, "dry_run": False,
        "blank_rows": 0,
    }  # fmt: skip
    assert len(forks) == 1
    assert cli.json("import", "-", "--format", "jsonl", "--dry-run", "--on-conflict", "skip",
                    input=small.read_text())["skipped"] == 100  # fmt: skip
    assert len(forks) == 2  # standard input (size unknown) forks


def _failing_validation(monkeypatch: pytest.MonkeyPatch, failure: str) -> Any:
    """bulk.validate fails after its first batch, in the child that runs it (never in the
    test's own process: then it only raises); returns the real one."""
    from usersctl import bulk

    validate = bulk.validate
    tester = os.getpid()

    def failing(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for number, batch in enumerate(validate(*args, **kwargs)):
            if number == 1:
                if os.getpid() == tester:
                    raise AssertionError("validation did not fork")
                if failure == "bug":
                    raise ZeroDivisionError("division by zero")
                nameless = signal.SIGRTMIN + 6  # a real-time signal: it has no name
                os.kill(os.getpid(), nameless if failure == "nameless" else signal.SIGKILL)
            yield batch

    monkeypatch.setattr(bulk, "validate", failing)
    return validate


@forked_on_sqlite
def test_a_bug_in_the_child_is_reported_as_a_bug(
    cli: Cli, tmp_path: Path, seed_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_validation(monkeypatch, "bug")
    source = prehashed_rows(tmp_path / "users.jsonl", 4_500, seed_hash)
    result = cli("import", str(source))
    assert_error(
        result, 1, "unexpected error (RuntimeError: ZeroDivisionError: division by zero); this "
        "is a bug, rerun with --debug for the traceback",
    )  # fmt: skip
    debug = cli("--debug", "import", str(source))
    assert "(in the child process) Traceback" in debug.stderr
    assert "in failing" in debug.stderr  # where, in the child
    assert count(cli.url, "users") == 0


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("validation", ["forked"], indirect=True)
@pytest.mark.parametrize(
    ("failure", "how"),
    [("killed", "killed by SIGKILL"), ("nameless", "killed by signal {}")],
)
@linux
def test_a_child_that_dies_is_one_line_and_nothing_written(
    cli: Cli,
    tmp_path: Path,
    seed_hash: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    how: str,
) -> None:
    from usersctl import bulk

    validate = _failing_validation(monkeypatch, failure)
    source = prehashed_rows(tmp_path / "users.jsonl", 4_500, seed_hash)
    assert_error(
        cli("import", str(source)),
        1,
        "error: the process validating the input ended unexpectedly "
        f"({how.format(signal.SIGRTMIN + 6)}); the database is unchanged",
    )
    assert count(cli.url, "users") == 0
    monkeypatch.setattr(bulk, "validate", validate)
    assert cli.json("import", str(source))["created"] == 4_500  # no lock or journal left over


@forked_on_sqlite
def test_a_child_killed_in_the_middle_of_a_batch_is_one_line(
    cli: Cli, tmp_path: Path, seed_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a message in the pipe (the out-of-memory killer strikes while it is written)."""
    import pickle

    from usersctl import bulk_worker

    tester = os.getpid()

    def half(value: Any, file: Any, protocol: int) -> None:
        if os.getpid() == tester:
            raise AssertionError("validation did not fork")
        data = pickle.dumps(value, protocol)
        file.write(data[: len(data) // 2])
        file.flush()
        os._exit(3)

    monkeypatch.setattr(bulk_worker, "_dump", half)
    source = prehashed_rows(tmp_path / "users.jsonl", 4_500, seed_hash)
    assert_error(
        cli("import", str(source)),
        1,
        "error: the process validating the input ended unexpectedly (exit status 3); the "
        "database is unchanged",
    )
    assert count(cli.url, "users") == 0


@forked_on_sqlite
def test_when_no_process_can_be_forked_validation_runs_here(
    cli: Cli, tmp_path: Path, seed_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    refusals = []

    def refused() -> int:
        refusals.append(1)
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    source = prehashed_rows(tmp_path / "users.jsonl", 4_500, seed_hash)
    assert cli.json("import", str(source), "--dry-run")["created"] == 4_500  # (warm-up)
    monkeypatch.setattr(os, "fork", refused)
    pipes = _pipes()
    assert cli.json("import", str(source))["created"] == 4_500
    assert cli.json("import", "-", "--format", "jsonl", "--on-conflict", "skip",
                    input=source.read_text())["skipped"] == 4_500  # fmt: skip
    assert len(refusals) == 2
    assert _pipes() == pipes  # the pipes made for the child were closed


def _pipes() -> int:
    """How many pipes this process holds open."""
    found = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found += os.readlink(fd).startswith("pipe:")
        except FileNotFoundError:  # the listing's own descriptor, closed meanwhile
            pass
    return found


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _waits_on_a_pipe(pid: int, since: float) -> bool:
    """Blocked reading a pipe (pipe_read, anon_pipe_read; pipe_wait before Linux 5.5); where
    the kernel hides the wait channel ("0"), a second after the child appeared."""
    channel = Path(f"/proc/{pid}/wchan").read_text()
    return "pipe" in channel or (channel in ("", "0") and time.monotonic() - since > 1)


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie that only its new parent has yet to reap."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def _wait_for(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
@linux
def test_no_child_outlives_its_command(db_url: str, seed_hash: str, how: str) -> None:
    """An import from a pipe that stays open: its child waits for more input. SIGTERM
    ends the command as always (and it ends the child); after SIGKILL, which nothing can
    handle, the child ends too."""
    process = subprocess.Popen(
        [USERSCTL, "import", "-", "--format", "jsonl"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "USERSCTL_DATABASE_URL": db_url},
    )
    assert process.stdin is not None
    row = {"name": "Ada", "email": "ada@example.com", "password_hash": seed_hash}
    process.stdin.write((json.dumps(row) + "\n").encode())
    process.stdin.flush()
    (child,) = _wait_for(lambda: _children(process.pid), "the child process")
    # Both wait on a pipe: the command for the child's rows, the child for more input.
    since = time.monotonic()
    for pid in (process.pid, child):
        _wait_for(lambda pid=pid: _waits_on_a_pipe(pid, since), f"process {pid} to wait")
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    if how == "SIGTERM":
        assert process.returncode == 143, stderr
        assert stderr.decode() == "error: terminated by SIGTERM; nothing changed\n"
    else:
        assert process.returncode == -signal.SIGKILL
    _wait_for(lambda: _gone(child), "the child to end")
    assert count(db_url, "users") == 0


def _ignoring(*names: str) -> Any:
    def ignore() -> None:
        for name in names:
            signal.signal(getattr(signal, name), signal.SIG_IGN)

    return ignore


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
@linux
def test_a_signal_the_command_ignores_its_child_ignores_too(
    db_url: str, seed_hash: str, ignored: str
) -> None:
    """`nohup usersctl import -` (SIGHUP ignored) and a script's `usersctl import - &`
    (SIGINT ignored): the session's hang-up, or a Ctrl-C meant for the script, leaves the
    import going, as it did in one process."""
    process = subprocess.Popen(
        [USERSCTL, "import", "-", "--format", "jsonl", "-o", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "USERSCTL_DATABASE_URL": db_url},
        start_new_session=True,
        preexec_fn=_ignoring(ignored),  # noqa: PLW1509 - only signal dispositions
    )
    assert process.stdin is not None
    rows = [
        json.dumps({"name": f"U{n}", "email": f"u{n}@example.com", "password_hash": seed_hash})
        for n in range(3)
    ]
    process.stdin.write((rows[0] + "\n").encode())
    process.stdin.flush()
    (child,) = _wait_for(lambda: _children(process.pid), "the child process")
    since = time.monotonic()
    _wait_for(lambda: _waits_on_a_pipe(child, since), "the child to wait for input")
    os.killpg(process.pid, getattr(signal, ignored))
    stdout, stderr = process.communicate(("\n".join(rows[1:]) + "\n").encode(), timeout=60)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["created"] == 3
    assert count(db_url, "users") == 3


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
@linux
def test_a_command_started_with_sigchld_ignored_reports_its_import(
    db_url: str, tmp_path: Path, seed_hash: str
) -> None:
    """With SIGCHLD ignored the kernel reaps the child itself: the import still reports
    what it committed, never "a bug"."""
    source = prehashed_rows(tmp_path / "users.jsonl", 7_000, seed_hash)
    done = subprocess.run(
        [USERSCTL, "import", str(source), "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "USERSCTL_DATABASE_URL": db_url},
        preexec_fn=_ignoring("SIGCHLD"),  # noqa: PLW1509 - only signal dispositions
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"] == 7_000
    assert done.stderr == ""


def test_validation_never_loads_sqlalchemy() -> None:
    """What the validating child runs, and what import and sync run before they fork,
    leave SQLAlchemy unloaded: the command loads it (0.2 s) while the child validates."""
    code = (
        "import sys\n"
        "import usersctl.cli.bulk, usersctl.cli.sync, usersctl.bulk_worker, usersctl.bulk_job\n"
        "from usersctl.schemas import import_validator\n"
        "from usersctl.bulk_job import check_source, unique\n"
        "from usersctl.cli.bulk import _row_check\n"
        "from usersctl.config import load_settings\n"
        "import_validator(False); import_validator(True); check_source('hr')\n"
        "_row_check(load_settings(), False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
