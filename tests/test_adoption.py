"""Adopting the tutorial app's database (`db upgrade`): edge cases of its rows, the file's
mode, what the message claims on each engine, non-Latin-1 text on a latin1 MariaDB, and a
scrub that fails after the upgrade committed."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import Cli, assert_error
from usersctl.revision import HEAD

USERSCTL = Path(sys.executable).parent / "usersctl"


def make_tutorial(url: str, rows: list[tuple[Any, ...]], *, nullable: bool = False) -> None:
    """The tutorial's `create_all` (bare VARCHARs; 255 on MariaDB) plus its rows. With
    `nullable`, a hand-made variant of it whose columns allow NULL."""
    varchar = String().with_variant(String(255), "mysql", "mariadb")
    metadata = MetaData()
    users = Table(
        "users",
        metadata,
        Column("id", Integer, primary_key=True, index=True),
        Column("name", varchar, nullable=nullable),
        Column("email", varchar, nullable=nullable, unique=True, index=True),
        Column("password", varchar, nullable=nullable),
    )
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(users),
            [dict(zip(("id", "name", "email", "password"), row, strict=True)) for row in rows],
        )
    engine.dispose()


def stored(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def hashes(url: str) -> list[str]:
    return [h for (h,) in stored(url, "SELECT password_hash FROM users ORDER BY id")]


@pytest.fixture
def fresh(empty_db_url: str) -> Cli:
    return Cli(url=empty_db_url, runner=CliRunner())


# ---------------- rows the upgrade refuses, or keeps with a warning


def test_null_values_are_refused_listing_the_rows(fresh: Cli) -> None:
    rows = [
        (1, "Ada", "ada@example.com", "secret-one"),
        (2, None, "b@example.com", "secret-two"),
        (3, "Cy", None, "secret-three"),
        (4, "Di", "di@example.com", None),
    ]
    make_tutorial(fresh.url, rows, nullable=True)
    result = fresh("db", "upgrade")
    assert_error(result, 5, "nothing changed", "user 2: no name", "user 3: no email")
    assert "user 4: no password (NULL)" in result.stderr
    assert stored(fresh.url, "SELECT id, name, email, password FROM users ORDER BY id") == rows
    assert fresh.json("db", "current")["state"] == "tutorial"


def test_plaintext_that_looks_like_a_hash_is_hashed_like_any_other(fresh: Cli) -> None:
    bcrypt_like = "$2b$12$" + "a" * 53
    argon2_like = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
    make_tutorial(
        fresh.url,
        [(1, "Ada", "ada@example.com", bcrypt_like), (2, "Bob", "bob@example.com", argon2_like)],
    )
    fresh.ok("db", "upgrade")
    stored_hashes = hashes(fresh.url)
    assert all(h.startswith("$argon2id$") for h in stored_hashes), stored_hashes
    assert bcrypt_like not in stored_hashes and argon2_like not in stored_hashes
    for user, password in (("1", bcrypt_like), ("2", argon2_like)):
        fresh.ok("verify-password", user, "--password-stdin", input=password + "\n")


def refuses(email: str) -> bool:
    from usersctl.schemas import normalize_email

    try:
        normalize_email(email)
    except ValueError:
        return True
    return False


def test_values_usersctl_would_refuse_are_kept_and_listed(fresh: Cli) -> None:
    rows = [
        (1, "Ada", "ada@example.com", "secret-one"),
        (2, "Root", "admin@localhost", "secret-two"),
        (3, "Nobody", "not-an-email", "secret-three"),
        (4, "Evil\x1b[31m", "evil@example.com", "secret-four"),
    ]
    make_tutorial(fresh.url, rows)
    result = fresh("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    expected = ["user 3: email 'not-an-email' kept", "user 4: name 'Evil\\x1b[31m' kept"]
    if refuses("admin@localhost"):  # (unless usersctl came to accept such addresses)
        expected.insert(0, "user 2: email 'admin@localhost' kept")
    assert len(warnings) == len(expected), result.stderr
    for line, start in zip(warnings, expected, strict=True):
        assert line.startswith(f"warning: {start}, though usersctl refuses it: "), line
    assert "control or invisible characters" in warnings[-1]
    assert "\x1b" not in result.stderr  # the value is shown escaped
    assert [u["email"] for u in fresh.json("list")] == [r[2] for r in rows]


def test_a_password_over_the_limit_is_hashed_with_a_warning(fresh: Cli, engine_name: str) -> None:
    if engine_name == "mariadb":
        pytest.skip("the tutorial's table holds at most 255 characters on MariaDB")
    long_password = "x" * 2000
    make_tutorial(fresh.url, [(1, "Ada", "ada@example.com", long_password)])
    result = fresh("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert "warning: user 1: password longer than 1024 characters, hashed as it is" in (
        result.stderr
    )
    assert "usersctl passwd" in result.stderr
    (stored_hash,) = hashes(fresh.url)
    assert PasswordHasher().verify(stored_hash, long_password)  # what the application checks


# ---------------- what adoption says and leaves


def test_adoption_message_says_what_is_true_on_each_engine(fresh: Cli, engine_name: str) -> None:
    make_tutorial(fresh.url, [(1, "Ada", "ada@example.com", "secret-one")])
    result = fresh("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert f"from 0001 to {HEAD}" in result.stderr
    if engine_name == "sqlite":
        assert "no plaintext copy is left in the file" in result.stderr
    else:
        assert "no plaintext copy is left" not in result.stderr
        assert "may keep old copies until" in result.stderr
        assert ("WAL" in result.stderr) == (engine_name == "postgresql")


def test_one_email_twice_without_the_unique_index_is_refused_naming_the_rows(
    fresh: Cli,
) -> None:
    """The index 0001 creates refused it with a bare "already taken" (exit 4)."""
    make_tutorial(fresh.url, [(1, "Ada", "ada@example.com", "pw-one"),
                              (2, "Bob", "bob@example.com", "pw-two")])  # fmt: skip
    engine = create_engine(fresh.url)
    drop = "DROP INDEX ix_users_email" + (" ON users" if "mysql" in fresh.url else "")
    with engine.begin() as connection:
        connection.execute(text(drop))
        connection.execute(text("INSERT INTO users VALUES (3, 'Ada 2', 'ada@example.com', 'x')"))
    engine.dispose()
    for extra in ((), ("--dry-run",)):
        assert_error(fresh("db", "upgrade", *extra), 5,
                     "users 1 and 3 share email 'ada@example.com'", "nothing changed")  # fmt: skip
    assert stored(fresh.url, "SELECT password FROM users WHERE id = 1") == [("pw-one",)]


def test_an_empty_tutorial_password_becomes_no_password(fresh: Cli) -> None:
    """It was hashed, and the account then logged in with an empty password, silently."""
    make_tutorial(
        fresh.url, [(1, "Ada", "ada@example.com", ""), (2, "Bob", "bob@example.com", "pw")]
    )
    result = fresh("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert "warning: user 1: empty password: the account now has no password" in result.stderr
    assert "user 2" not in result.stderr
    assert fresh.json("get", "1")["has_password"] is False
    empty = fresh("verify-password", "ada@example.com", "--password-stdin", input="\n")
    assert empty.exit_code == 6
    assert fresh.json("get", "2")["has_password"] is True


def test_adopting_only_to_0001_says_the_passwords_are_still_plaintext(fresh: Cli) -> None:
    """It claimed they were hashed, then said "Already at revision 0001"."""
    make_tutorial(fresh.url, [(1, "Ada", "ada@example.com", "secret-one")])
    result = fresh("db", "upgrade", "0001")
    assert result.exit_code == 0, result.stderr
    assert "stamped revision 0001. Its passwords are still plaintext" in result.stderr
    assert "argon2id hashes" not in result.stderr and "Already at" not in result.stderr
    assert_error(fresh("db", "upgrade", "base"), 2, "base is older than the current revision 0001",
                 "usersctl db downgrade base")  # fmt: skip
    assert fresh.ok("db", "upgrade").exit_code == 0
    assert_error(fresh("db", "upgrade", "base"), 2, f"current revision {HEAD}")


def test_an_adopted_sqlite_file_becomes_private(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    url = f"sqlite:///{path}"
    make_tutorial(url, [(1, "Ada", "ada@example.com", "secret-one")])
    path.chmod(0o644)
    cli = Cli(url=url, runner=CliRunner())
    assert_error(cli("list"), 8, "tutorial")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a refusal changes nothing
    result = cli("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert "the file is now private (0600)" in result.stderr
    for candidate in path.parent.glob("users.db*"):
        assert stat.S_IMODE(candidate.stat().st_mode) == 0o600, candidate


# ---------------- MariaDB with a latin1 default


NAMES = ["ΣΟΦΙΑ", "王小明", "Zoë 🎉"]


def latin1(url: str) -> str:
    """Make the (empty) database's default character set latin1, as upstream's server
    default is, whatever this server's is."""
    name = make_url(url).database
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"ALTER DATABASE `{name}` CHARACTER SET latin1"))
        assert connection.execute(text("SELECT @@character_set_database")).scalar() == "latin1"
    engine.dispose()
    return url


@pytest.mark.parametrize("engine_name", ["mariadb"])
@pytest.mark.parametrize("start", ["empty", "tutorial"])
def test_non_latin1_text_on_a_latin1_mariadb(fresh: Cli, start: str) -> None:
    latin1(fresh.url)
    if start == "tutorial":
        make_tutorial(fresh.url, [(1, "Zoë", "zoe@example.com", "secret-one")])
        fresh.ok("db", "upgrade")
    for index, name in enumerate(NAMES):
        fresh.create(name, f"user{index}@example.com")
    fresh.ok("update", "user0@example.com", "--name", "Σοφία 🙂")
    names = [u["name"] for u in fresh.json("list", "--sort", "id")]
    assert names[-3:] == ["Σοφία 🙂", "王小明", "Zoë 🎉"]
    trail = fresh.json("audit")
    assert any("Σοφία 🙂" in str(entry["changes"]) for entry in trail), trail
    assert any(entry["email"] == "user1@example.com" for entry in trail)
    collations = stored(
        fresh.url,
        "SELECT table_name, table_collation FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name IN ('users', 'audit_log')",
    )
    assert sorted(collations) == [("audit_log", "utf8mb4_bin"), ("users", "utf8mb4_bin")]
    fresh.ok("db", "check")


# ---------------- the scrub after the upgrade


def sqlite_user_version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def tutorial_file(path: Path, count: int) -> list[tuple[Any, ...]]:
    rows = [
        (i, "N" * 100 + str(i), f"u{i}@example.com", f"{MARKER}-{i:04d}-" + "p" * 40)
        for i in range(1, count + 1)
    ]
    make_tutorial(f"sqlite:///{path}", rows)
    return rows


MARKER = "Plaintext-Secret"
CHEAP_UPGRADE = """
import sys
from argon2 import PasswordHasher
import usersctl.passwords
usersctl.passwords._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
sys.argv[0] = "usersctl"
from usersctl.cli import main
main()
"""


def cannot_set_up(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot_set_up("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        cannot_set_up(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def leave_free(folder: Path, kib: int) -> None:
    stats = os.statvfs(folder)
    with (folder / "filler").open("wb") as handle:
        handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - kib * 1024))
        handle.flush()
        os.fsync(handle.fileno())


def upgrade_process(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHEAP_UPGRADE, "db", "upgrade"],
        env={**os.environ, "USERSCTL_DATABASE_URL": f"sqlite:///{path}"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_adoption_on_a_nearly_full_disk_says_what_happened(
    small_tmpfs: Path, tmp_path: Path
) -> None:
    """From little free space to enough: the upgrade fails changing nothing, or commits and
    then says that only the scrub failed (and a rerun, with space, finishes the scrub), or
    succeeds. Never exit 1, never a confusing table name."""
    source = tmp_path / "tutorial.db"
    rows = tutorial_file(source, 300)
    outcomes = []
    for free in range(40, 1200, 24):
        for leftover in small_tmpfs.iterdir():
            leftover.unlink()
        path = small_tmpfs / "users.db"
        shutil.copyfile(source, path)
        path.chmod(0o600)
        leave_free(small_tmpfs, free)
        result = upgrade_process(path)
        lines = result.stderr.strip().splitlines()
        version = stored(
            f"sqlite:///{path}", "SELECT name FROM sqlite_master WHERE name = 'alembic_version'"
        )
        if result.returncode == 0:
            assert sqlite_user_version(path) == 0
            outcomes.append("upgraded")
            break
        assert result.returncode == 7, (free, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "_alembic_tmp" not in result.stderr and "no such table" not in result.stderr
        if not version:  # nothing changed
            assert "full" in lines[0], lines
            assert stored(f"sqlite:///{path}", "SELECT * FROM users ORDER BY id") == rows
            outcomes.append("refused")
            continue
        assert lines[0].startswith(
            f"error: the upgrade to {HEAD} is done, but scrubbing old plaintext passwords "
            "from free space failed ("
        ), lines
        assert lines[0].endswith("free some space and run `usersctl db upgrade` again to finish it")
        outcomes.append("scrub failed")
        (small_tmpfs / "filler").unlink()
        again = upgrade_process(path)
        assert again.returncode == 0, again.stderr
        assert "Scrubbed the old plaintext passwords" in again.stderr
        assert "nothing to do" in again.stderr
        assert sqlite_user_version(path) == 0
        assert MARKER.encode() not in b"".join(
            p.read_bytes() for p in small_tmpfs.glob("users.db*")
        )
    assert outcomes[-1] == "upgraded", outcomes
    assert "scrub failed" in outcomes and "refused" in outcomes, outcomes
