"""Overlapping usersctl processes on one SQLite file (cron jobs that run into each other).

Real processes of the installed console script, never threads: SQLite's locks, its busy
handler and the WAL index are per process, so only processes test them.

What is proved:
- many writers (create, update, delete, disable, passwd, verify-password) and readers
  queued on one held write lock all succeed once it is released; every reported change
  is in the database and nothing else is; a create race on one email has exactly one
  winner and the others exit 4; `PRAGMA integrity_check` is ok;
- writers that cannot get the lock exit 7 with one "database busy ... retry" line, and
  only after their whole busy timeout (USERSCTL_BUSY_TIMEOUT), changing nothing;
- processes that all start on a database file that does not exist yet create it once,
  at head, with mode 0600, and all of their writes land.

No test sleeps to wait: the lock is released when inotify has seen every process open
the database's WAL index (or a process ended), and correctness never depends on when.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy.engine import make_url

from conftest import SEED_PASSWORD, Seeder
from usersctl.revision import HEAD

USERSCTL = Path(sys.executable).parent / "usersctl"


# ---------------- helpers


@dataclass
class Run:
    """One usersctl process, its output captured in files (no pipe can fill up)."""

    args: list[str]
    proc: subprocess.Popen[bytes]
    started: float
    out: Path
    err: Path
    returncode: int | None = None
    elapsed: float = 0.0
    stdout: str = ""
    stderr: str = ""
    tags: dict[str, Any] = field(default_factory=dict)

    def finish(self, timeout: float = 300) -> Run:
        self.returncode = self.proc.wait(timeout=timeout)
        self.elapsed = time.monotonic() - self.started
        self.stdout = self.out.read_text()
        self.stderr = self.err.read_text()
        return self

    def describe(self) -> str:
        return f"usersctl {' '.join(self.args)} -> {self.returncode}\n{self.stderr}"


class Spawner:
    def __init__(self, folder: Path, url: str | None, env: dict[str, str] | None = None) -> None:
        """`url` None: the default database (the variable unset)."""
        self.folder = folder
        self.folder.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k != "USERSCTL_DATABASE_URL"}
        if url is not None:
            self.env["USERSCTL_DATABASE_URL"] = url
        self.env.update(env or {})
        self.runs: list[Run] = []

    def __call__(self, *args: str, stdin: str | None = None, **tags: Any) -> Run:
        n = len(self.runs)
        out, err = self.folder / f"{n}.out", self.folder / f"{n}.err"
        source = self.folder / f"{n}.in"
        source.write_text(stdin if stdin is not None else "")
        with source.open("rb") as stdin_file, out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [str(USERSCTL), *args], stdin=stdin_file, stdout=o, stderr=e, env=self.env
            )
        run = Run(list(args), proc, time.monotonic(), out, err, tags=tags)
        self.runs.append(run)
        return run

    def any_running(self) -> bool:
        return any(run.proc.poll() is None for run in self.runs)

    def finish_all(self) -> list[Run]:
        return [run.finish() for run in self.runs]


class OpenWatch:
    """Counts opens of one file in a folder with Linux inotify: a blocking wait on an
    event, not a sleep. Where inotify is missing, waiting returns at once (the tests'
    assertions never depend on the wait; it only makes the processes pile up)."""

    IN_OPEN = 0x20

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.seen = 0
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        except (AttributeError, OSError):
            return
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(folder), self.IN_OPEN) < 0:
            os.close(fd)
            return
        self.fd = fd

    def _drain(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
            offset += 16 + length
            if mask & self.IN_OPEN and name == self.name:
                self.seen += 1

    def wait(self, count: int, keep_waiting: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while self.fd >= 0 and self.seen < count and keep_waiting():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.5))
            if ready:
                self._drain()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Holder:
    """Another process's write transaction (BEGIN IMMEDIATE) on the database."""

    path: Path
    connection: sqlite3.Connection | None = None

    def hold(self) -> None:
        self.connection = sqlite3.connect(self.path, isolation_level=None)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.rollback()
            self.connection.close()
            self.connection = None


@pytest.fixture
def holder(db_url: str) -> Iterator[Holder]:
    lock = Holder(Path(make_url(db_url).database or ""))
    yield lock
    lock.release()


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return [tuple(row) for row in connection.execute(query)]
    finally:
        connection.close()


def users_by_email(path: Path) -> dict[str, dict[str, Any]]:
    query = "SELECT id, name, email, role, is_active, password_hash FROM users ORDER BY id"
    keys = ("id", "name", "email", "role", "active", "hash")
    return {row[2]: dict(zip(keys, row, strict=True)) for row in rows(path, query)}


def assert_integrity(path: Path) -> None:
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(path, "PRAGMA foreign_key_check") == []


def assert_clean_stderr(run: Run) -> None:
    """No traceback and no raw driver error, whatever the outcome."""
    assert "Traceback" not in run.stderr, run.describe()
    assert "database is locked" not in run.stderr, run.describe()
    assert "OperationalError" not in run.stderr, run.describe()
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.describe()


def verifies(password_hash: str, password: str) -> bool:
    try:
        return bool(PasswordHasher().verify(password_hash, password))
    except Exception:
        return False


def sqlite_path(url: str) -> Path:
    return Path(make_url(url).database or "")


def create(name: str, email: str) -> list[str]:
    return ["create", "--name", name, "--email", email, "--password-stdin", "-o", "json"]


# ---------------- many writers queued on one lock


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_overlapping_writers_all_land_and_nothing_else(
    db_url: str, seed: Seeder, holder: Holder, tmp_path: Path
) -> None:
    ids = seed([{"name": f"Seed {i}", "email": f"seed{i}@example.com"} for i in range(1, 13)])
    assert ids == list(range(1, 13))
    path = sqlite_path(db_url)
    before = users_by_email(path)
    # A long busy timeout: the first process queued waits while the others start up (a few
    # seconds on a slow machine); none of them may give up in this test.
    spawn = Spawner(tmp_path / "runs", db_url, env={"USERSCTL_BUSY_TIMEOUT": "300"})

    holder.hold()
    watch = OpenWatch(path.parent, path.name + "-shm")
    try:
        for i in range(4):
            password = f"created-password-{i}\n"
            spawn(*create(f"Created {i}", f"created{i}@example.com"), stdin=password, kind="create")
        for i in range(3):
            password = f"racer-password-{i}\n"
            spawn(*create(f"Racer {i}", "Race@Example.com"), stdin=password, kind="race")
        for user in (1, 2):
            update = ["update", str(user), "--name", f"Updated {user}", "--role", "editor"]
            spawn(*update, "-o", "json", kind="update")
        spawn("delete", "seed4@example.com", "--yes", "-o", "json", kind="delete")
        spawn("delete", "5", "6", "--yes", "-o", "json", kind="delete")
        spawn("disable", "7", "8", "-o", "json", kind="disable")
        spawn("passwd", "9", "--password-stdin", stdin="changed-password-9\n", kind="passwd")
        spawn("update", "10", "--email", "moved10@example.com", kind="update-deleted")
        spawn("delete", "10", "--yes", kind="delete")
        spawn(
            "verify-password", "11", "--password-stdin", stdin=SEED_PASSWORD + "\n", kind="verify"
        )
        spawn("list", "-o", "json", kind="read")
        # Let them pile up on the lock: every process opens the WAL index before writing.
        watch.wait(len(spawn.runs), spawn.any_running, limit=120)
    finally:
        watch.close()
        holder.release()
    runs = spawn.finish_all()

    for run in runs:
        assert_clean_stderr(run)
    by_kind: dict[str, list[Run]] = {}
    for run in runs:
        by_kind.setdefault(run.tags["kind"], []).append(run)
    for kind in ("create", "update", "delete", "disable", "passwd", "verify", "read"):
        for run in by_kind[kind]:
            assert run.returncode == 0, run.describe()
    racers = by_kind["race"]
    winners = [run for run in racers if run.returncode == 0]
    assert len(winners) == 1, [run.describe() for run in racers]
    for loser in racers:
        if loser is not winners[0]:
            assert loser.returncode == 4, loser.describe()
            assert "email already taken: race@example.com" in loser.stderr
    (late_update,) = by_kind["update-deleted"]
    assert late_update.returncode in (0, 3), late_update.describe()  # before or after delete

    after = users_by_email(path)
    assert_integrity(path)
    expected_emails = (
        {f"seed{i}@example.com" for i in (1, 2, 3, 7, 8, 9, 11, 12)}
        | {f"created{i}@example.com" for i in range(4)}
        | {"race@example.com"}
    )
    assert set(after) == expected_emails
    for user in (1, 2):
        row = after[f"seed{user}@example.com"]
        assert (row["name"], row["role"]) == (f"Updated {user}", "editor")
    for user in (7, 8):
        assert after[f"seed{user}@example.com"]["active"] == 0
    for user in (3, 11, 12):  # untouched (a verification may only re-hash the same password)
        key = f"seed{user}@example.com"
        assert {k: v for k, v in after[key].items() if k != "hash"} == {
            k: v for k, v in before[key].items() if k != "hash"
        }
    assert verifies(after["seed9@example.com"]["hash"], "changed-password-9")
    assert not verifies(after["seed9@example.com"]["hash"], SEED_PASSWORD)
    for run in by_kind["create"]:
        shown = json.loads(run.stdout)
        stored = after[shown["email"]]
        assert (stored["id"], stored["name"]) == (shown["id"], shown["name"])
    assert verifies(after["created0@example.com"]["hash"], "created-password-0")
    winner = json.loads(winners[0].stdout)
    assert after["race@example.com"]["name"] == winner["name"]
    assert verifies(after["race@example.com"]["hash"], f"racer-password-{winner['name'][-1]}")
    # Every id is used once, and an id the creates reported is never reused by another.
    created_ids = [json.loads(run.stdout)["id"] for run in [*by_kind["create"], *winners]]
    assert len(set(created_ids)) == len(created_ids)


# ---------------- busy past the timeout


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_writers_give_up_only_after_the_whole_busy_timeout(
    db_url: str, seed: Seeder, holder: Holder, tmp_path: Path
) -> None:
    seed([{"name": f"Seed {i}", "email": f"seed{i}@example.com"} for i in range(1, 4)])
    path = sqlite_path(db_url)
    before = users_by_email(path)
    timeout = 1.5
    spawn = Spawner(tmp_path / "runs", db_url, env={"USERSCTL_BUSY_TIMEOUT": f"{timeout:g}"})
    holder.hold()  # held for the whole test: nobody can write
    try:
        spawn(*create("New", "new@example.com"), stdin="a fresh quartz lantern 93\n")
        spawn("update", "1", "--name", "Renamed")
        spawn("delete", "2", "--yes")
        runs = spawn.finish_all()
    finally:
        holder.release()

    for run in runs:
        assert run.returncode == 7, run.describe()
        assert_clean_stderr(run)
        line = run.stderr.strip()
        assert line.startswith("error: database busy"), line
        assert "retry" in line and f"({timeout:g}s)" in line and "USERSCTL_BUSY_TIMEOUT" in line
        assert run.stdout == "", run.describe()  # nothing reported that did not happen
        # Startup takes well under the timeout, so an immediate failure would be caught.
        assert run.elapsed >= timeout, (run.elapsed, run.describe())
    assert users_by_email(path) == before
    assert_integrity(path)


# ---------------- first use by overlapping processes


@pytest.mark.slow
def test_processes_starting_on_a_missing_database_create_it_once(tmp_path: Path) -> None:
    # The default location: the one missing database a data command creates on first use.
    path = Path(os.environ["XDG_DATA_HOME"]) / "usersctl" / "users.db"
    spawn = Spawner(tmp_path / "runs", None)  # (the default database; busy timeout 10 s)
    count = 5
    for i in range(count):
        spawn(*create(f"First {i}", f"first{i}@example.com"), stdin=f"first-password-{i}\n")
    runs = spawn.finish_all()

    for run in runs:
        assert run.returncode == 0, run.describe()
        assert_clean_stderr(run)
    initialised = [run for run in runs if "Initialised the database" in run.stderr]
    assert len(initialised) == 1, [run.stderr for run in runs]
    assert_integrity(path)
    assert rows(path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert sorted(users_by_email(path)) == sorted(f"first{i}@example.com" for i in range(count))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
