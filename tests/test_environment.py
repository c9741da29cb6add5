"""Broken environments and secrets, with real processes of the installed console script.

Broken environments (a file that is not a database, a read-only file or folder, a missing
folder, a full disk, a schema usersctl does not know): one line on stderr, the documented
exit code, and the database's files byte for byte as they were. "The files" are the
database and its -wal, -shm and -journal companions: which of them exist, and their
SHA-256, before and after.

Read-only as root: root ignores file permissions, so where the tests run as root the
usersctl process drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from its
capability bounding set before exec (prctl PR_CAPBSET_DROP in preexec_fn). It stays uid 0,
the owner of the files, so the ordinary owner permission bits apply to it exactly as they
would to an admin's own account. (Switching to `nobody` would need the interpreter, the
virtual environment and the checkout readable by nobody, which a pyenv under /root is not.)
A probe process with the same setup must fail to open the file for writing, or the test
skips rather than pass vacuously.

A full disk: a 1 MiB tmpfs when this process may mount one (root with CAP_SYS_ADMIN), filled
up with a filler file; everywhere, RLIMIT_FSIZE in the child (SIGXFSZ ignored) so that
SQLite's writes beyond the limit fail with EFBIG.

Secrets: no password or hash in any output, --debug tracebacks included, with real database
errors forced by triggers; URLs shown with the password masked; a generated password
printed exactly once; the files usersctl creates are private even under umask 0.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from argon2 import PasswordHasher
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import prehashed_rows
from usersctl.cli import app
from usersctl.revision import HEAD

USERSCTL = Path(sys.executable).parent / "usersctl"
COMPANIONS = ("", "-wal", "-shm", "-journal")
PASSWORD = "Zebra-Quartz-Violin-42"
HASH_PREFIX = "$argon2"
PR_CAPBSET_DROP = 24
DAC_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def cannot_set_up(reason: str) -> NoReturn:
    """A condition this machine cannot create: skip on a laptop, fail in CI (where the
    suite runs as root and every condition can be made)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason)


# ---------------- helpers


def files(path: Path) -> dict[str, str]:
    """Which of the database's files exist, with the SHA-256 of each, and the journal mode
    its header records."""
    found = {}
    for suffix in COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            found[companion.name] = hashlib.sha256(companion.read_bytes()).hexdigest()
    if path.exists():
        header = path.read_bytes()[:20]
        if header.startswith(b"SQLite format 3"):
            found["journal mode"] = "wal" if header[18:20] == b"\x02\x02" else "rollback"
    return found


@dataclass
class Completed:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"usersctl {' '.join(self.args)} -> {self.code}\nstdout: {self.stdout}\n{self.stderr}"
        )


def start(
    args: list[str],
    url: str | None,
    *,
    stdin: str = "",
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    command: list[str] | None = None,
) -> tuple[list[str], subprocess.Popen[str]]:
    environment = {**os.environ, **(env or {})}
    if url is not None:
        environment["USERSCTL_DATABASE_URL"] = url
    read_end, write_end = os.pipe()
    os.write(write_end, stdin.encode())
    os.close(write_end)
    try:
        proc = subprocess.Popen(
            [*(command or [str(USERSCTL)]), *args],
            stdin=read_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
            preexec_fn=preexec,
        )
    finally:
        os.close(read_end)
    return args, proc


def wait(started: tuple[list[str], subprocess.Popen[str]]) -> Completed:
    args, proc = started
    stdout, stderr = proc.communicate(timeout=120)
    return Completed(args, proc.returncode, stdout, stderr)


def run_all(commands: list[list[str]], url: str | None, **options: Any) -> list[Completed]:
    """Several commands at once (each on the same, unchanging, file set)."""
    return [wait(s) for s in [start(args, url, **options) for args in commands]]


def assert_untouched(path: Path, before: dict[str, str]) -> None:
    """The file set is exactly as it was; the message says what changed, and how."""
    after = files(path)
    problems = []
    for name in sorted(set(after) - set(before)):
        size = path.with_name(name).stat().st_size
        problems.append(f"{name} appeared ({size} bytes)")
    for name in sorted(set(before) - set(after)):
        problems.append(f"{name} disappeared")
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            detail = f": {before[name]} -> {after[name]}" if name == "journal mode" else ""
            problems.append(f"{name} changed{detail}")
    assert not problems, "; ".join(problems)


def assert_one_line_error(result: Completed, code: int, *fragments: str) -> None:
    assert result.code == code, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.describe()
    assert "Traceback" not in result.stderr
    assert result.stdout == "", result.describe()
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result.describe())


def sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


INSERT_USER = (
    "INSERT INTO users (name, email, password_hash, role, is_active, created_at, updated_at) "
    "VALUES ('{name}', '{email}', '{hash}', 'user', 1, '2024-01-01 00:00:00.000000', "
    "'2024-01-01 00:00:00.000000')"
)


@pytest.fixture
def head_db(tmp_path: Path, sqlite_template: Path, seed_hash: str) -> Path:
    """A migrated database (WAL mode, 0600) with two users, in a folder of its own."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "users.db"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    sql(
        path,
        INSERT_USER.format(name="Ada", email="ada@example.com", hash=seed_hash),
        INSERT_USER.format(name="Bob", email="bob@example.com", hash=seed_hash),
    )
    return path


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


WRITES: list[list[str]] = [
    ["create", "--name", "New", "--email", "new@example.com", "--random-password"],
    ["update", "1", "--name", "Renamed"],
    ["delete", "2", "--yes"],
]
READS: list[list[str]] = [["list"], ["get", "1", "-o", "json"]]


# ---------------- not a database


def _truncated(path: Path, template: Path) -> None:
    path.write_bytes(template.read_bytes()[:4096])  # page 1 only: the tables' pages missing


def _junk(path: Path, _template: Path) -> None:
    path.write_bytes(random.Random(11).randbytes(20_000))


def _text(path: Path, _template: Path) -> None:
    path.write_text("name,email\nAda,ada@example.com\n")


NOT_A_DATABASE = {
    "junk": (_junk, [["list"], WRITES[0], ["db", "upgrade"]]),
    "text": (_text, [["list"], ["db", "upgrade"]]),
    "truncated": (_truncated, [["list"], WRITES[0]]),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NOT_A_DATABASE))
def test_not_a_database_is_refused_and_untouched(
    tmp_path: Path, sqlite_template: Path, kind: str
) -> None:
    make, commands = NOT_A_DATABASE[kind]
    path = tmp_path / "users.db"
    make(path, sqlite_template)
    before = files(path)
    for result in run_all(commands, url_of(path)):
        assert_one_line_error(result, 7, str(path))
        assert re.search(r"not a usable SQLite database|malformed", result.stderr), result.stderr
    assert_untouched(path, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.db"]


# ---------------- read-only file and folder


def drop_dac_capabilities() -> None:
    """preexec_fn: root loses the capabilities that bypass file permissions (see top)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in DAC_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged() -> Callable[[], None] | None:
    return drop_dac_capabilities if os.geteuid() == 0 else None


def require_denied(target: Path, how: str) -> None:
    """Skip unless a process set up like usersctl's really cannot write `target`."""
    code = (
        f"open({str(target)!r}, 'r+b')"
        if how == "file"
        else f"open({str(target / 'probe')!r}, 'x')"
    )
    try:
        probe = subprocess.run(
            [sys.executable, "-c", code],
            preexec_fn=unprivileged(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.SubprocessError as exc:
        cannot_set_up(f"cannot drop privileges here: {exc}")
    if probe.returncode == 0:
        (target / "probe").unlink(missing_ok=True)
        cannot_set_up(f"this process can still write {target}; cannot test read-only")


@pytest.fixture
def read_only(head_db: Path) -> Iterator[Callable[[str], None]]:
    folder = head_db.parent

    def make(kind: str) -> None:
        if kind in ("file", "both"):
            head_db.chmod(0o444)
            require_denied(head_db, "file")
        if kind in ("folder", "both"):
            folder.chmod(0o555)
            require_denied(folder, "folder")

    yield make
    folder.chmod(0o700)
    head_db.chmod(0o600)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "folder", "both"])
def test_read_only_database_refuses_writes_and_is_untouched(
    head_db: Path, read_only: Callable[[str], None], kind: str
) -> None:
    read_only(kind)
    before = files(head_db)
    listing_before = sorted(p.name for p in head_db.parent.iterdir())
    commands = {
        "file": [WRITES[0], WRITES[2], ["db", "stamp", "0001"]],
        "folder": [WRITES[0], WRITES[1]],
        "both": [WRITES[0]],
    }[kind]
    results = run_all(commands, url_of(head_db), preexec=unprivileged())
    for result in results:
        assert_one_line_error(result, 7, "read-only", str(head_db))
    assert_untouched(head_db, before)
    assert sorted(p.name for p in head_db.parent.iterdir()) == listing_before


@pytest.mark.slow
def test_upgrading_a_read_only_database_at_head_has_nothing_to_do(
    head_db: Path, read_only: Callable[[str], None]
) -> None:
    """A cron step "make sure the schema is current" on a read-only replica: exit 0, as
    for a writable file at head; a real upgrade still needs to write (exit 7)."""
    read_only("file")
    # (A read of a WAL database in a writable folder leaves its -wal/-shm: as `list` does.)
    assert wait(start(["list"], url_of(head_db), preexec=unprivileged())).code == 0
    before = files(head_db)
    [current, older] = run_all(
        [["db", "upgrade"], ["db", "upgrade", "0006"]], url_of(head_db), preexec=unprivileged()
    )
    assert (current.code, current.stderr) == (0, f"Already at revision {HEAD}; nothing to do.\n")
    assert_one_line_error(older, 7, "read-only", str(head_db))
    assert_untouched(head_db, before)
    sql(head_db, "UPDATE alembic_version SET version_num = '0006'")  # (this test runs as root)
    behind = wait(start(["db", "upgrade"], url_of(head_db), preexec=unprivileged()))
    assert_one_line_error(behind, 7, "read-only", str(head_db))


@pytest.mark.slow
def test_reads_in_a_read_only_folder_work_or_fail_clearly(
    head_db: Path, read_only: Callable[[str], None]
) -> None:
    """WAL needs its -shm beside the database, which a read-only folder forbids: a read
    may then fail, but only as exit 7 with one clear line, and without changing anything."""
    read_only("folder")
    before = files(head_db)
    for result in run_all(READS, url_of(head_db), preexec=unprivileged()):
        if result.code != 0:
            assert_one_line_error(result, 7, "read-only", "permissions")
    assert_untouched(head_db, before)


@pytest.mark.slow
def test_a_new_database_in_a_read_only_folder_is_not_created(
    tmp_path: Path, read_only: Callable[[str], None], head_db: Path
) -> None:
    read_only("folder")
    path = head_db.parent / "new.db"
    for result in run_all([["db", "upgrade"]], url_of(path), preexec=unprivileged()):
        assert_one_line_error(result, 7, "cannot create database", str(path))
    assert not path.exists()


# ---------------- a folder that does not exist


@pytest.mark.slow
def test_missing_or_unusable_folders_are_refused(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("not a folder\n")
    cases = {
        "missing": (tmp_path / "no" / "such" / "users.db", "does not exist"),
        "file-as-folder": (not_a_folder / "users.db", "does not exist"),
    }
    before = sorted(tmp_path.rglob("*"))
    started = {
        (key, tuple(args)): start(args, url_of(path))
        for key, (path, _) in cases.items()
        for args in ([["list"], ["db", "upgrade"]] if key == "missing" else [WRITES[0]])
    }
    # The default location under a data folder that cannot be made (XDG_DATA_HOME is a file).
    started[("default", ("list",))] = start(
        ["list"], None, env={"XDG_DATA_HOME": str(not_a_folder)}
    )
    for (key, args), proc in started.items():
        result = wait(proc)
        if key == "default":
            assert_one_line_error(result, 7, "cannot create folder", str(not_a_folder))
        elif args == ("db", "upgrade"):  # (the only command that creates a database)
            path, fragment = cases[key]
            assert_one_line_error(result, 7, str(path.parent), fragment)
        else:
            path, _ = cases[key]
            assert_one_line_error(result, 7, f"no database at {path};", "usersctl db upgrade")
    assert sorted(tmp_path.rglob("*")) == before
    assert not_a_folder.read_text() == "not a folder\n"


# ---------------- a full disk


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot_set_up("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        cannot_set_up(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system until `leave` bytes are free (a whole number of pages)."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        chunk = b"\0" * 4096
        try:
            for _ in range(max(0, free - leave) // len(chunk)):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            pass  # already full
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    assert free <= leave, free


def seed_rows(path: Path, count: int, password_hash: str) -> None:
    rows = [("N" * 150 + str(i), f"user{i}@example.com", password_hash) for i in range(count)]
    connection = sqlite3.connect(path)
    try:
        connection.executemany(
            "INSERT INTO users (name, email, password_hash, role, is_active, created_at, "
            "updated_at) VALUES (?, ?, ?, 'user', 1, '2024-01-01 00:00:00.000000', "
            "'2024-01-01 00:00:00.000000')",
            rows,
        )
        connection.commit()
    finally:
        connection.close()


DISK_WRITES: list[list[str]] = [
    WRITES[0],
    ["delete", *map(str, range(1, 41)), "--yes"],
    ["db", "downgrade", "0001", "--yes", "--discard-audit-trail"],
]


@pytest.mark.slow
@pytest.mark.parametrize("free", [36 * 1024, 0], ids=["36KiB-free", "nothing-free"])
def test_full_disk_fails_cleanly_and_changes_nothing(
    tiny_tmpfs: Path, sqlite_template: Path, seed_hash: str, free: int
) -> None:
    path = tiny_tmpfs / "users.db"
    shutil.copyfile(sqlite_template, path)
    seed_rows(path, 40, seed_hash)
    fill(tiny_tmpfs, free)
    before = files(path)
    for args in DISK_WRITES if free else DISK_WRITES[:1]:  # one at a time: same full disk
        result = wait(start(args, url_of(path)))
        assert_one_line_error(result, 7, "cannot write database", str(path))
        assert_untouched(path, before)


@pytest.mark.slow
def test_a_full_temporary_folder_is_named(
    tiny_tmpfs: Path, head_db: Path, tmp_path: Path, seed_hash: str
) -> None:
    """SQLite keeps scratch files in TMPDIR: when that is full and the database's own disk
    is not, the message must send the admin to the right disk."""
    rows = prehashed_rows(tmp_path / "users.jsonl", 3000, seed_hash)
    fill(tiny_tmpfs, 0)
    before = files(head_db)
    result = wait(start(["import", str(rows)], url_of(head_db), env={"TMPDIR": str(tiny_tmpfs)}))
    assert_one_line_error(result, 7, "disk is full", f"the temporary folder {tiny_tmpfs} where")
    assert_untouched(head_db, before)


@pytest.mark.slow
def test_file_size_limit_fails_cleanly_and_changes_nothing(head_db: Path, seed_hash: str) -> None:
    seed_rows(head_db, 60, seed_hash)
    limit = max(head_db.stat().st_size, 32 * 1024)  # the -shm needs 32 KiB; the WAL cannot

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = files(head_db)
    result = wait(
        start(
            ["db", "downgrade", "0001", "--yes", "--discard-audit-trail"],
            url_of(head_db),
            preexec=limited,
        )
    )
    assert_one_line_error(result, 7, "cannot write database", str(head_db))
    assert_untouched(head_db, before)


# ---------------- a schema usersctl does not know (or a database that is not its own)


def _newer(path: Path) -> None:
    sql(path, "UPDATE alembic_version SET version_num = '9999'")


def _foreign(path: Path) -> None:
    path.unlink()
    sql(
        path,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)",
        "INSERT INTO orders VALUES (1, 100)",
    )


def _tutorial(path: Path) -> None:
    path.unlink()
    sql(
        path,
        "CREATE TABLE users (id INTEGER NOT NULL, name VARCHAR NOT NULL, "
        "email VARCHAR NOT NULL, password VARCHAR NOT NULL, PRIMARY KEY (id))",
        "CREATE UNIQUE INDEX ix_users_email ON users (email)",
        "CREATE INDEX ix_users_id ON users (id)",
        "INSERT INTO users VALUES (1, 'Ada', 'ada@example.com', 'plaintext')",
    )


SCHEMA_CASES = {
    # (`db stamp` is the documented escape hatch that works in any state: not a refusal)
    "newer": (
        _newer,
        [
            ["list"],
            WRITES[0],
            ["db", "upgrade"],
            ["db", "downgrade", "0001", "--yes", "--discard-audit-trail"],
        ],
    ),
    # Made by other programs, in SQLite's default rollback-journal mode:
    "foreign": (_foreign, [["list"], WRITES[0], ["db", "upgrade"]]),
    "tutorial": (_tutorial, [["list"], WRITES[0]]),  # (`db upgrade` adopts it: not a refusal)
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_schema_it_does_not_know_is_refused_and_untouched(head_db: Path, case: str) -> None:
    make, commands = SCHEMA_CASES[case]
    make(head_db)
    before = files(head_db)
    for result in run_all(commands, url_of(head_db)):
        assert_one_line_error(result, 8)
    assert_untouched(head_db, before)


# ---------------- secrets in errors and tracebacks

TRIGGERS = {
    # sqlite3.DataError -> an unexpected error (exit 1): --debug prints SQLAlchemy's
    # exception, statement and all.
    "data-error": "SELECT zeroblob(2000000000)",
    # SQLITE_CONSTRAINT -> IntegrityError -> exit 4.
    "integrity-error": "SELECT RAISE(ABORT, 'refused by trigger')",
}


def weak_hash(password: str) -> str:
    """A hash with older parameters: verifying it re-hashes (an UPDATE)."""
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)


@pytest.mark.slow
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_no_password_or_hash_in_errors_even_with_debug(head_db: Path, trigger: str) -> None:
    sql(head_db, f"UPDATE users SET password_hash = '{weak_hash(PASSWORD)}' WHERE id = 1")
    connection = sqlite3.connect(head_db)
    stored = [row[0] for row in connection.execute("SELECT password_hash FROM users")]
    connection.close()
    body = TRIGGERS[trigger]
    sql(
        head_db,
        f"CREATE TRIGGER no_insert BEFORE INSERT ON users BEGIN {body}; END",
        f"CREATE TRIGGER no_update BEFORE UPDATE ON users BEGIN {body}; END",
    )
    before = files(head_db)
    password_line = PASSWORD + "\n"
    create = ["--debug", "create", "--name", "Eve", "--email", "eve@example.com"]
    commands = [
        ([*create, "--password-stdin"], password_line),
        (["--debug", "passwd", "2", "--password-stdin"], password_line),
        (["--debug", "verify-password", "1", "--password-stdin"], password_line),  # re-hash
        ([*create, "--random-password", "-o", "json"], ""),
    ]
    if trigger == "integrity-error":
        commands = commands[:2]
    started = [start(args, url_of(head_db), stdin=stdin) for args, stdin in commands]
    for proc in started:
        result = wait(proc)
        output = result.stdout + result.stderr
        assert PASSWORD not in output, result.describe()
        assert HASH_PREFIX not in output, result.describe()
        for value in stored:
            assert value.split("$")[-1] not in output
        if "verify-password" in result.args:  # the re-hash is best effort: the login stands
            assert result.code == 0, result.describe()
            assert "note: the password hash was not upgraded" in result.stderr
            continue
        expected = 1 if trigger == "data-error" else 4
        assert result.code == expected, result.describe()
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
        if trigger == "data-error":  # --debug did show a traceback: the check above is real
            assert "Traceback (most recent call last)" in result.stderr
            assert "[SQL parameters hidden" in result.stderr
        assert result.stdout == ""
    assert_untouched(head_db, before)


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "csv", "plain"])
@pytest.mark.parametrize("command", ["create", "passwd"])
def test_a_generated_password_is_printed_exactly_once(
    db_url: str, command: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usersctl.passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(usersctl.passwords, "_hasher", cheap)
    runner = CliRunner()
    env = {"USERSCTL_DATABASE_URL": db_url}
    first = runner.invoke(
        app,
        [
            "create",
            "--name",
            "Ada",
            "--email",
            "ada@example.com",
            "--random-password",
            "-o",
            "json",
        ],
        env=env,
    )
    assert first.exit_code == 0, first.stderr
    args = (
        ["create", "--name", "Bob", "--email", "bob@example.com"]
        if command == "create"
        else ["passwd", "1"]
    )
    result = runner.invoke(app, [*args, "--random-password", "-o", fmt], env=env)
    assert result.exit_code == 0, result.stderr
    output = result.stdout + result.stderr
    candidates = set(re.findall(r"[A-Za-z0-9_-]{24}", output))
    verified = []
    user = "2" if command == "create" else "1"
    for candidate in candidates:
        check = runner.invoke(
            app, ["verify-password", user, "--password-stdin"], input=candidate + "\n", env=env
        )
        if check.exit_code == 0:
            verified.append(candidate)
    assert len(verified) == 1, (candidates, output)
    assert output.count(verified[0]) == 1, output
    assert HASH_PREFIX not in output


# ---------------- URLs with passwords


@pytest.mark.parametrize("engine_name", ["postgresql"])
@pytest.mark.parametrize("source", ["env", "flag", "config"])
def test_database_url_password_is_masked_everywhere(
    empty_db_url: str, tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usersctl.passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(usersctl.passwords, "_hasher", cheap)
    secret = str(make_url(empty_db_url).password or "")
    if len(secret) < 4:
        pytest.skip("the test server's URL has no password to hide")
    env: dict[str, str] = {}
    prefix: list[str] = []
    if source == "env":
        env["USERSCTL_DATABASE_URL"] = empty_db_url
    elif source == "flag":
        prefix = ["--database-url", empty_db_url]
    else:
        config = tmp_path / "config.toml"
        config.write_text(f"database_url = {json.dumps(empty_db_url)}\n")
        env["USERSCTL_CONFIG"] = str(config)
    sequence = [
        ["db", "upgrade"],
        ["db", "current"],
        ["create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin"],
        ["db", "downgrade", "base", "--yes", "--discard-audit-trail"],
        ["--debug", "list"],  # initialises the empty database again, and says where
        ["--debug", "db", "downgrade", "nope", "--yes"],
    ]
    runner = CliRunner()
    shown = ""
    for args in sequence:
        stdin = "correct horse battery staple\n" if "--password-stdin" in args else None
        result = runner.invoke(app, [*prefix, *args], env=env, input=stdin)
        assert result.exit_code in (0, 2), (args, result.exit_code, result.stderr)
        assert secret not in result.stdout + result.stderr, (args, result.stderr)
        shown += result.stderr
    assert shown.count(":***@") >= 3, shown  # the messages that name the database, masked


# ---------------- file modes under umask 0


def umask_zero() -> None:
    os.umask(0)


def modes(paths: list[Path]) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.slow
@pytest.mark.parametrize("command", [["db", "upgrade"], ["list"]])
def test_default_database_is_private_under_umask_zero(tmp_path: Path, command: list[str]) -> None:
    data = tmp_path / "xdg-data"
    data.mkdir(mode=0o755)
    result = wait(start(command, None, env={"XDG_DATA_HOME": str(data)}, preexec=umask_zero))
    assert result.code == 0, result.describe()
    folder = data / "usersctl"
    assert modes([folder]) == {"usersctl": "0o700"}
    assert {p.name for p in folder.iterdir()} == {"users.db"}
    assert modes(list(folder.iterdir())) == {"users.db": "0o600"}


@pytest.mark.slow
def test_folders_made_for_the_default_database_are_not_open_to_others(tmp_path: Path) -> None:
    """The parents usersctl creates on the way (XDG_DATA_HOME did not exist yet) must not
    be writable by others either: whoever can write a parent can swap `usersctl/` for a
    folder of their own, database included."""
    base = tmp_path / "home"
    base.mkdir(mode=0o755)
    data = base / ".local" / "share"
    result = wait(
        start(["db", "upgrade"], None, env={"XDG_DATA_HOME": str(data)}, preexec=umask_zero)
    )
    assert result.code == 0, result.describe()
    made = [base / ".local", data, data / "usersctl"]
    open_to_others = {
        p.name: oct(stat.S_IMODE(p.stat().st_mode))
        for p in made
        if stat.S_IMODE(p.stat().st_mode) & 0o022
    }
    assert open_to_others == {}, open_to_others


# A usersctl process that SIGKILLs itself right after the transaction that inserted a user
# has committed (when its connection goes back to the pool), so that the -wal and -shm
# files it made are left on disk to be inspected.
KILLED_AFTER_COMMIT = r"""
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

state = {"inserted": False, "committed": False}

@event.listens_for(Engine, "after_cursor_execute")
def note_insert(connection, cursor, statement, *args):
    if statement.lstrip().upper().startswith("INSERT INTO USERS"):
        state["inserted"] = True

@event.listens_for(Engine, "commit")
def note_commit(connection):
    state["committed"] = state["inserted"]

@event.listens_for(Pool, "checkin")
def checkin(*_args):
    if state["committed"]:
        os.kill(os.getpid(), signal.SIGKILL)

sys.argv[0] = "usersctl"
from usersctl.cli import main
main()
"""


@pytest.mark.slow
def test_database_and_its_wal_are_private_when_created_under_umask_zero(tmp_path: Path) -> None:
    folder = tmp_path / "explicit"
    folder.mkdir(mode=0o755)
    path = folder / "users.db"
    created = wait(start(["db", "upgrade"], url_of(path), preexec=umask_zero))
    assert created.code == 0, created.describe()
    args = ["create", "--name", "Ada", "--email", "ada@example.com", "--random-password"]
    result = wait(
        start(
            args,
            url_of(path),
            preexec=umask_zero,
            command=[sys.executable, "-c", KILLED_AFTER_COMMIT],
        )
    )
    assert result.code == -signal.SIGKILL, result.describe()
    made = sorted(folder.iterdir())
    assert {p.name for p in made} >= {"users.db", "users.db-wal", "users.db-shm"}
    assert set(modes(made).values()) == {"0o600"}, modes(made)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # an admin's own folder: left alone
    # and the committed user is there once the next process recovers the WAL
    listed = wait(start(["list", "-o", "json"], url_of(path)))
    assert [u["email"] for u in json.loads(listed.stdout)] == ["ada@example.com"]
