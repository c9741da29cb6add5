"""SIGKILL in the middle of `db upgrade` and of `create`: the database is afterwards at the
old state or the new one, never in between, and the next command works.

Two ways to pick the moment, both with real processes and a real SIGKILL:
- named points: a small wrapper runs usersctl's own `main()` in a subprocess and SIGKILLs
  that process at an exact point (the Nth password hashed, just before the write
  transaction commits, just after it commits, after VACUUM). Deterministic, no timing.
- a spread of times: the process is killed after a fraction of the time a complete run
  took (proc.wait(timeout=...) then SIGKILL). Where it lands is left to chance; the
  invariant is checked whatever the point.

The upgrade runs on a tutorial-shaped database (no alembic_version; plaintext passwords)
with a few hundred rows. The wrapper may swap in cheap argon2 parameters
(CRASHTEST_CHEAP_HASH) so that hashing 300 rows takes a quarter of a second instead of
forty; one test kills the installed console script with the real parameters.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from usersctl.revision import HEAD

USERSCTL = Path(sys.executable).parent / "usersctl"
MARKER = "Plaintext-Secret"  # every tutorial password contains it; none may survive hashing

# Runs usersctl's console entry point in this process, after arranging to SIGKILL itself
# at CRASHTEST_KILL_AT: "hash:N" (when the Nth password is hashed), "before-commit:SQL" /
# "after-commit:SQL" (just before / just after the COMMIT of the transaction that ran a
# statement starting with SQL), "after-sql:SQL" (a statement starting with SQL has run).
WRAPPER = r"""
import os, signal, sys

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if os.environ.get("CRASHTEST_CHEAP_HASH"):
    from argon2 import PasswordHasher
    import usersctl.passwords
    usersctl.passwords._hasher = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)

kind, _, arg = os.environ.get("CRASHTEST_KILL_AT", "").partition(":")
if kind == "hash":
    import usersctl.passwords
    original = usersctl.passwords.hash_password
    calls = []

    def counting(*args, **kwargs):
        calls.append(None)
        if len(calls) == int(arg):
            die()
        return original(*args, **kwargs)

    usersctl.passwords.hash_password = counting
elif kind in ("before-commit", "after-commit"):
    # The transaction that ran a statement starting with `arg` (e.g. "INSERT INTO users"):
    # killed as its COMMIT is about to be sent, or once COMMIT has returned and the
    # connection goes back to the pool.
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    state = {"ran": False, "committed": False}

    @event.listens_for(Engine, "after_cursor_execute")
    def note(connection, cursor, statement, *rest):
        if statement.lstrip().upper().startswith(arg.upper()):
            state["ran"] = True

    @event.listens_for(Engine, "commit")
    def at_commit(connection):
        if state["ran"]:
            if kind == "before-commit":
                die()
            state["committed"] = True

    @event.listens_for(Pool, "checkin")
    def at_checkin(*_args):
        if state["committed"]:
            die()
elif kind == "after-sql":
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def after_sql(connection, cursor, statement, *rest):
        if statement.strip().upper().startswith(arg.upper()):
            die()

sys.argv[0] = "usersctl"
from usersctl.cli import main
main()
"""


# ---------------- helpers


def tutorial_rows(count: int) -> list[tuple[int, str, str, str]]:
    """(id, name, email, password) as the tutorial app stored them: untrimmed names,
    mixed-case emails, plaintext passwords."""
    names = ["Zoë", "Ada", "José", "用户", "Ольга"]
    return [
        (i, f" {names[i % len(names)]} {i} ", f"User{i}@Example.COM", f"{MARKER}-{i:04d}")
        for i in range(1, count + 1)
    ]


def make_tutorial_db(path: Path, count: int) -> list[tuple[int, str, str, str]]:
    """What the tutorial's `Base.metadata.create_all` + inserts leave (rollback journal)."""
    data = tutorial_rows(count)
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE users (
            id INTEGER NOT NULL, name VARCHAR NOT NULL, email VARCHAR NOT NULL,
            password VARCHAR NOT NULL, PRIMARY KEY (id)
        );
        CREATE INDEX ix_users_id ON users (id);
        CREATE UNIQUE INDEX ix_users_email ON users (email);
        """
    )
    connection.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", data)
    connection.commit()
    connection.close()
    return data


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Opening the file recovers it exactly as the next usersctl process would."""
    connection = sqlite3.connect(path)
    try:
        return [tuple(row) for row in connection.execute(sql)]
    finally:
        connection.close()


def file_set_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def upgrade_state(path: Path, data: list[tuple[int, str, str, str]], sample: int = 4) -> str:
    """'old' (the untouched tutorial table) or 'new' (at head, every row hashed);
    fails on anything in between."""
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert not any(name.startswith("_alembic_tmp") for name in tables), tables
    versions = []
    if "alembic_version" in tables:
        versions = query(path, "SELECT version_num FROM alembic_version")
    columns = [row[1] for row in query(path, "PRAGMA table_info(users)")]
    if not versions:
        assert tables == {"users"}, tables
        assert columns == ["id", "name", "email", "password"], columns
        indexes = query(path, "SELECT name FROM sqlite_master WHERE type='index' ORDER BY name")
        assert indexes == [("ix_users_email",), ("ix_users_id",)], indexes
        assert query(path, "SELECT id, name, email, password FROM users ORDER BY id") == data
        return "old"
    assert versions == [(HEAD,)], versions
    assert "password" not in columns and "password_hash" in columns, columns
    stored = query(path, "SELECT id, name, email, password_hash FROM users ORDER BY id")
    assert [(i, n, e) for i, n, e, _ in stored] == [
        (i, n.strip(), e.lower()) for i, n, e, _ in data
    ]
    assert all(h.startswith("$argon2id$") for *_, h in stored)
    hasher = PasswordHasher()
    step = max(1, len(data) // sample)
    for (_, _, _, password), (*_, password_hash) in list(zip(data, stored, strict=True))[::step]:
        assert hasher.verify(password_hash, password)
    return "new"


def spawn(
    args: list[str],
    url: str,
    *,
    kill_at: str | None = None,
    cheap: bool = True,
    stdin: str = "",
    installed: bool = False,
) -> subprocess.Popen[str]:
    env = {**os.environ, "USERSCTL_DATABASE_URL": url}
    if kill_at:
        env["CRASHTEST_KILL_AT"] = kill_at
    if cheap:
        env["CRASHTEST_CHEAP_HASH"] = "1"
    command = [str(USERSCTL)] if installed else [sys.executable, "-c", WRAPPER]
    read_end, write_end = os.pipe()  # stdin is written and closed before the process runs
    os.write(write_end, stdin.encode())
    os.close(write_end)
    try:
        return subprocess.Popen(
            [*command, *args],
            env=env,
            stdin=read_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(read_end)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def killed_after(proc: subprocess.Popen[str], seconds: float) -> tuple[int, str, str]:
    """Wait at most `seconds` for the process, then SIGKILL it (if still running)."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return finish(proc)


def assert_recover(
    paths: dict[str, Path], data: list[tuple[int, str, str, str]], states: dict[str, str]
) -> None:
    """The next command (`db upgrade`, run on every copy at once) works, ends at the new
    state, and leaves no plaintext anywhere in the file set (free pages, WAL)."""
    procs = {key: spawn(["db", "upgrade"], f"sqlite:///{path}") for key, path in paths.items()}
    for key, proc in procs.items():
        code, _stdout, stderr = finish(proc)
        assert code == 0, (key, stderr)
        assert "Traceback" not in stderr
        if states[key] == "old":
            assert "Adopted the tutorial database" in stderr, (key, stderr)
        else:
            assert "nothing to do" in stderr, (key, stderr)
        assert upgrade_state(paths[key], data) == "new", key
        assert MARKER.encode() not in file_set_bytes(paths[key]), key


def copies(tmp_path: Path, source: Path, names: list[str]) -> dict[str, Path]:
    result = {}
    for index, name in enumerate(names):
        folder = tmp_path / f"copy{index}"
        folder.mkdir()
        result[name] = folder / "users.db"
        shutil.copyfile(source, result[name])
    return result


# ---------------- db upgrade


UPGRADE_POINTS = {
    "hash:150": "old",  # the schema copy is done, half the passwords are hashed
    "before-commit:UPDATE users": "old",  # every statement ran; COMMIT not sent
    "after-commit:UPDATE users": "new",  # committed; the scrub (VACUUM, checkpoint) not run
    "after-sql:VACUUM": "new",  # VACUUM done, WAL not truncated
}


@pytest.mark.slow
def test_upgrade_killed_at_each_named_point(tmp_path: Path) -> None:
    source = tmp_path / "tutorial.db"
    data = make_tutorial_db(source, 300)
    paths = copies(tmp_path, source, list(UPGRADE_POINTS))
    procs = {
        point: spawn(["db", "upgrade"], f"sqlite:///{path}", kill_at=point)
        for point, path in paths.items()
    }
    for point, proc in procs.items():
        code, stdout, stderr = finish(proc)
        assert code == -signal.SIGKILL, (point, code, stderr)  # the point was reached
        assert upgrade_state(paths[point], data) == UPGRADE_POINTS[point], point
    assert_recover(paths, data, UPGRADE_POINTS)


@pytest.mark.slow
def test_upgrade_killed_at_a_spread_of_times(tmp_path: Path) -> None:
    source = tmp_path / "tutorial.db"
    data = make_tutorial_db(source, 300)
    fractions = ["0.6", "0.85", "0.97"]  # about half of a run is interpreter start-up
    paths = copies(tmp_path, source, ["control", *fractions])

    started = time.monotonic()
    code, _, stderr = finish(spawn(["db", "upgrade"], f"sqlite:///{paths.pop('control')}"))
    duration = time.monotonic() - started
    assert code == 0, stderr

    states = {}
    for fraction in fractions:
        proc = spawn(["db", "upgrade"], f"sqlite:///{paths[fraction]}")
        code, _, stderr = killed_after(proc, float(fraction) * duration)
        assert code in (0, -signal.SIGKILL), (fraction, code, stderr)
        assert "Traceback" not in stderr
        states[fraction] = upgrade_state(paths[fraction], data)
    assert_recover(paths, data, states)


@pytest.mark.slow
def test_installed_script_killed_while_hashing_with_real_parameters(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    data = make_tutorial_db(path, 12)  # about 1.6 s of argon2id at the real parameters
    proc = spawn(["db", "upgrade"], f"sqlite:///{path}", cheap=False, installed=True)
    code, _, stderr = killed_after(proc, 1.2)
    assert code in (0, -signal.SIGKILL), (code, stderr)
    state = upgrade_state(path, data, sample=2)
    code, _, stderr = finish(
        spawn(["db", "upgrade"], f"sqlite:///{path}", cheap=False, installed=True)
    )
    assert code == 0, stderr
    assert ("Adopted" in stderr) == (state == "old"), stderr
    assert upgrade_state(path, data, sample=2) == "new"
    assert MARKER.encode() not in file_set_bytes(path)


# ---------------- create

NEW_PASSWORD = "a brand new password"
CREATE = ["create", "--name", "  Grace Hopper ", "--email", "Grace@Example.com", "--role"]
CREATE += ["admin", "--password-stdin", "-o", "json"]


@pytest.fixture
def head_db(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    connection = sqlite3.connect(path)
    connection.execute(
        "INSERT INTO users (name, email, password_hash, role, is_active, created_at, "
        "updated_at) VALUES ('Ada', 'ada@example.com', '$argon2id$x', 'user', 1, "
        "'2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000')"
    )
    connection.commit()
    connection.close()
    return path


def create_state(path: Path) -> str:
    """'absent' or 'present' (every field as asked, the password verifies); never half."""
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    assert query(path, "SELECT email FROM users WHERE id = 1") == [("ada@example.com",)]
    found = query(
        path,
        "SELECT name, email, role, is_active, password_hash, created_at, updated_at "
        "FROM users WHERE email LIKE 'grace%'",
    )
    if not found:
        assert query(path, "SELECT count(*) FROM users") == [(1,)]
        return "absent"
    ((name, email, role, active, password_hash, created, updated),) = found
    assert (name, email, role, active) == ("Grace Hopper", "grace@example.com", "admin", 1)
    assert created and updated
    assert PasswordHasher().verify(password_hash, NEW_PASSWORD)
    return "present"


def next_create(path: Path) -> subprocess.Popen[str]:
    return spawn(CREATE, f"sqlite:///{path}", stdin=NEW_PASSWORD + "\n", cheap=False)


def assert_next_create_worked(proc: subprocess.Popen[str], path: Path, state: str) -> None:
    """The same create again succeeds if the first left nothing, and is a conflict (exit 4)
    if the first one landed. Either way there is then exactly one, complete, Grace."""
    code, _, stderr = finish(proc)
    assert code == (0 if state == "absent" else 4), (state, code, stderr)
    assert create_state(path) == "present"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "expected"),
    [("before-commit:INSERT INTO users", "absent"), ("after-commit:INSERT INTO users", "present")],
    ids=["before-commit", "after-commit"],
)
def test_create_killed_at_a_named_point(head_db: Path, point: str, expected: str) -> None:
    proc = spawn(
        CREATE, f"sqlite:///{head_db}", kill_at=point, stdin=NEW_PASSWORD + "\n", cheap=False
    )
    code, stdout, stderr = finish(proc)
    assert code == -signal.SIGKILL, (code, stderr)
    assert stdout == ""  # killed before printing: the user learns nothing false
    assert create_state(head_db) == expected
    assert_next_create_worked(next_create(head_db), head_db, expected)


@pytest.mark.slow
def test_installed_create_killed_at_a_spread_of_times(tmp_path: Path, head_db: Path) -> None:
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(head_db, pristine)
    started = time.monotonic()
    code, _, stderr = finish(
        spawn(CREATE, f"sqlite:///{head_db}", stdin=NEW_PASSWORD + "\n", installed=True)
    )
    duration = time.monotonic() - started
    assert code == 0, stderr
    assert create_state(head_db) == "present"

    states: dict[Path, str] = {}
    for fraction in (0.7, 0.9, 0.97):
        path = tmp_path / f"at-{fraction}" / "users.db"
        path.parent.mkdir()
        shutil.copyfile(pristine, path)
        proc = spawn(CREATE, f"sqlite:///{path}", stdin=NEW_PASSWORD + "\n", installed=True)
        code, _, stderr = killed_after(proc, fraction * duration)
        assert code in (0, -signal.SIGKILL), (fraction, code, stderr)
        states[path] = create_state(path)
    following = {path: next_create(path) for path in states}
    for path, proc in following.items():
        assert_next_create_worked(proc, path, states[path])
