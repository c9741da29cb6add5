"""Hostile and legacy hashes: parameter bounds on import, bcrypt's 72-byte rule, logins that
succeed when the hash upgrade cannot be written, no password check inside a transaction,
and failures that take as long for a cheap imported hash as for an unknown user."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import argon2
import bcrypt
import pytest
from sqlalchemy import create_engine, text
from test_environment import (
    INSERT_USER,
    USERSCTL,
    require_denied,
    sql,
    unprivileged,
    url_of,
)
from test_passwords import set_stored_hash, stored_hash

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error
from usersctl import passwords

SALT = "c29tZXNhbHRzb21lc2FsdA"  # 16 bytes
DIGEST = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"  # 32 bytes


def phc(v: int, m: int, t: int, p: int) -> str:
    return f"$argon2id$v={v}$m={m},t={t},p={p}${SALT}${DIGEST}"


def bcrypt_like(cost: int) -> str:
    """A well-formed bcrypt hash of any cost (making a real cost-31 one would take days)."""
    return f"$2b${cost:02d}$" + "abcdefghijklmnopqrstuu" + "A" * 31


def import_json(cli: Cli, rows: list[dict[str, str]]) -> tuple[int, str]:
    document = "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n"
    result = cli("import", "-", "--format", "json", input=document)
    return result.exit_code, result.stderr


# ---------------- item 6: bounds on imported hashes

REFUSED = {
    "argon2 m=4 GiB": (phc(19, 4 * 2**20, 3, 4), "memory m=4194304"),
    "argon2 m=2 GiB (above 1 GiB)": (phc(19, 2 * 2**20, 1, 4), "memory m=2097152"),
    "argon2 t=300": (phc(19, 65536, 300, 4), "time cost t=300"),
    "argon2 m=1": (phc(19, 1, 3, 1), "memory m=1 "),
    "argon2 m below 8 KiB per lane": (phc(19, 31, 3, 4), "memory m=31"),
    "argon2 v=99": (phc(99, 65536, 3, 4), "version 99"),
    "argon2 v=16": (phc(16, 65536, 3, 4), "version 16"),
    "argon2 m=t=2^32-1": (phc(19, 2**32 - 1, 2**32 - 1, 4), "memory m=4294967295"),
    "argon2 p=17": (phc(19, 65536, 3, 17), "parallelism p=17"),
    "argon2 p=0": (phc(19, 65536, 3, 0), "parallelism p=0"),
    "argon2 t=0": (phc(19, 65536, 0, 1), "time cost t=0"),
    "argon2 m=1 GiB t=3 (too much work)": (phc(19, 2**20, 3, 4), "work m*t=3145728"),
    "bcrypt cost 16": (bcrypt_like(16), "bcrypt cost 16"),
    "bcrypt cost 17": (bcrypt_like(17), "bcrypt cost 17"),
    "bcrypt cost 31": (bcrypt_like(31), "bcrypt cost 31"),
    "bcrypt cost 3": (bcrypt_like(3), "bcrypt cost 3"),
}


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_import_refuses_hashes_outside_the_bounds_with_line_numbers(cli: Cli) -> None:
    rows = [{"name": "Fine", "email": "fine@example.com", "password": SEED_PASSWORD}]
    rows += [
        {"name": f"U{i}", "email": f"u{i}@example.com", "password_hash": value}
        for i, (value, _) in enumerate(REFUSED.values())
    ]
    code, stderr = import_json(cli, rows)
    assert code == 5, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: {len(REFUSED)} bad row(s); nothing imported, the database is unchanged"
    )
    for number, (case, (_, fragment)) in enumerate(REFUSED.items(), start=3):
        [line] = [line for line in lines if line.startswith(f"line {number}: ")]
        assert fragment in line, (case, line)
    assert cli.json("list") == []


def _real_argon2(m: int, t: int, p: int) -> str:
    return argon2.PasswordHasher(memory_cost=m, time_cost=t, parallelism=p).hash(SEED_PASSWORD)


# Hashes real applications write, with their parameters.
ACCEPTED: dict[str, Callable[[], str]] = {
    "argon2-cffi default (RFC 9106 low memory)": lambda: _real_argon2(65536, 3, 4),
    "OWASP m=19 MiB t=2 p=1": lambda: _real_argon2(19456, 2, 1),
    "OWASP m=12 MiB t=3 p=1": lambda: _real_argon2(12288, 3, 1),
    "OWASP m=7 MiB t=5 p=1 (Keycloak)": lambda: _real_argon2(7168, 5, 1),
    "Django (m=100 MiB t=2 p=8)": lambda: _real_argon2(102400, 2, 8),
    "passlib / old argon2-cffi (m=512 KiB t=2 p=2)": lambda: _real_argon2(512, 2, 2),
    "bcrypt cost 4": lambda: bcrypt.hashpw(SEED_PASSWORD.encode(), bcrypt.gensalt(4)).decode(),
    "bcrypt cost 10": lambda: bcrypt.hashpw(SEED_PASSWORD.encode(), bcrypt.gensalt(10)).decode(),
}


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_import_accepts_the_hashes_real_apps_make_and_they_verify(cli: Cli) -> None:
    rows = [
        {"name": f"U{i}", "email": f"u{i}@example.com", "password_hash": make()}
        for i, make in enumerate(ACCEPTED.values())
    ]
    code, stderr = import_json(cli, rows)
    assert code == 0, stderr
    for i, case in enumerate(ACCEPTED):
        result = cli(
            "verify-password", f"u{i}@example.com", "--password-stdin", input=SEED_PASSWORD + "\n"
        )
        assert result.exit_code == 0, (case, result.stderr)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (phc(19, 8, 1, 1), True),  # argon2's own minimum: 8 KiB per lane
        (phc(19, 128, 20, 16), True),
        (phc(19, 2**20, 2, 16), True),  # the most work accepted: 1 GiB, two passes
        (phc(19, 2**20 + 1, 1, 1), False),
        (phc(19, 2**19, 5, 1), False),  # 2.5 GiB of passes
        (phc(19, 65536, 21, 4), False),
        (phc(19, 127, 1, 16), False),
        (bcrypt_like(4), True),
        (bcrypt_like(15), True),
    ],
)
def test_hash_bounds_at_their_edges(value: str, accepted: bool) -> None:
    assert passwords.is_valid_hash(value) is accepted, passwords.hash_problem(value)


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_planted_hash_outside_the_bounds_fails_at_once(cli: Cli, seed: Seeder) -> None:
    """A hash written straight into the database is never worked on: bcrypt cost 31 would
    take days."""
    [user_id] = seed([{"name": "Ada", "email": "ada@example.com"}])
    real = bcrypt.hashpw(SEED_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    set_stored_hash(cli.url, user_id, "$2b$31$" + real[7:])
    result = cli("verify-password", "ada@example.com", "--password-stdin", input="x" * 9 + "\n")
    assert_error(result, 6, "password verification failed")


# ---------------- item 6: no password check inside a transaction


@pytest.mark.parametrize("engine_name", ["postgresql", "mariadb"])
def test_no_password_check_runs_inside_a_transaction(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch, engine_name: str
) -> None:
    """While the password is being checked, another session can take the users table
    exclusively at once (as `db downgrade` would): verify-password holds no lock then."""
    seed([{"name": "Ada", "email": "ada@example.com"}])
    other = create_engine(cli.url)
    grabbed: list[bool] = []
    real_verify = passwords.verify

    def checking(stored: str, password: str) -> tuple[bool, str | None]:
        with other.connect() as connection:
            try:
                if engine_name == "postgresql":
                    connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE NOWAIT"))
                else:
                    connection.execute(text("SET SESSION lock_wait_timeout = 1"))
                    connection.execute(text("LOCK TABLES users WRITE"))
                    connection.execute(text("UNLOCK TABLES"))
                grabbed.append(True)
            except Exception:
                grabbed.append(False)
            connection.rollback()
        return real_verify(stored, password)

    monkeypatch.setattr(passwords, "verify", checking)
    try:
        for password, code in ((SEED_PASSWORD, 0), ("wrong password", 6)):
            result = cli("verify-password", "ada@example.com", "--password-stdin",
                         input=password + "\n")  # fmt: skip
            assert result.exit_code == code, result.stderr
    finally:
        other.dispose()
    assert grabbed == [True, True]


# ---------------- item 7: bcrypt beyond 72 bytes


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_bcrypt_hash_of_a_long_password_verifies_like_the_app_that_made_it(
    cli: Cli, seed: Seeder
) -> None:
    [user_id] = seed([{"name": "Ada", "email": "ada@example.com"}])
    password = "Correct-Horse-Battery-Staple-" * 4  # 116 bytes
    # What every bcrypt before bcrypt 5 did: use the first 72 bytes.
    legacy = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4)).decode()
    set_stored_hash(cli.url, user_id, legacy)

    def verify(candidate: str) -> int:
        return cli(
            "verify-password", "ada@example.com", "--password-stdin", input=candidate + "\n"
        ).exit_code

    assert verify("X" + password[1:]) == 6  # a difference in the first 72 bytes counts
    assert stored_hash(cli.url, user_id) == legacy
    assert verify(password) == 0
    upgraded = stored_hash(cli.url, user_id)
    assert upgraded.startswith("$argon2id$")
    argon2.PasswordHasher().verify(upgraded, password)  # the whole password, from now on
    assert verify(password) == 0
    assert verify(password[:72] + "something else") == 6


# ---------------- item 14: failures take as long for cheap hashes as for unknown users


def _seconds(cli: Cli, ref: str) -> float:
    start = time.perf_counter()
    result = cli("verify-password", ref, "--password-stdin", input="wrong password!\n")
    elapsed = time.perf_counter() - start
    assert result.exit_code == 6, result.stderr
    return elapsed


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize(
    "cheap",
    [
        lambda: bcrypt.hashpw(SEED_PASSWORD.encode(), bcrypt.gensalt(10)).decode(),
        lambda: _real_argon2(19456, 2, 1),
    ],
    ids=["bcrypt-10", "argon2-m19MiB"],
)
def test_a_failure_on_a_cheap_imported_hash_takes_as_long_as_an_unknown_user(
    cli: Cli, seed: Seeder, cheap: Callable[[], str]
) -> None:
    [user_id] = seed([{"name": "Ada", "email": "ada@example.com"}])
    set_stored_hash(cli.url, user_id, cheap())
    _seconds(cli, "ada@example.com")  # warm up imports and connections
    _seconds(cli, "nobody@example.com")
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(5):  # interleaved, so a change in load affects both alike
        known.append(_seconds(cli, "ada@example.com"))
        unknown.append(_seconds(cli, "nobody@example.com"))
    ratio = statistics.median(known) / statistics.median(unknown)
    assert ratio >= 0.7, (ratio, known, unknown)


# ---------------- item 4: the hash upgrade is best effort


def weak_hash(password: str) -> str:
    return argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)


@pytest.fixture
def weak_db(tmp_path: Path, sqlite_template: Path) -> Iterator[Path]:
    """A database in a folder of its own whose one user has an old (weaker) hash."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "users.db"
    path.write_bytes(sqlite_template.read_bytes())
    path.chmod(0o600)
    sql(
        path, INSERT_USER.format(name="Ada", email="ada@example.com", hash=weak_hash(SEED_PASSWORD))
    )
    yield path
    folder.chmod(0o700)
    path.chmod(0o600)


def _stored(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("SELECT password_hash FROM users").fetchone()[0])
    finally:
        connection.close()


def _verify_process(path: Path, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(USERSCTL), *extra, "verify-password", "ada@example.com", "--password-stdin"],
        input=password + "\n",
        env={**os.environ, "USERSCTL_DATABASE_URL": url_of(path)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=unprivileged(),
    )


def test_verify_succeeds_when_the_upgrade_cannot_be_written(weak_db: Path) -> None:
    """A read-only database file. (In a read-only folder a WAL database cannot even be
    read, as SQLite needs its -shm there: that is exit 7 for every command.)"""
    before = _stored(weak_db)
    weak_db.chmod(0o444)
    require_denied(weak_db, "file")
    quiet = _verify_process(weak_db, SEED_PASSWORD)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "Password verified.\n"
    debug = _verify_process(weak_db, SEED_PASSWORD, "--debug")
    assert debug.returncode == 0, debug.stderr
    assert "not upgraded" in debug.stderr and "read-only" in debug.stderr, debug.stderr
    assert "Traceback" not in debug.stderr
    wrong = _verify_process(weak_db, "not the password")
    assert wrong.returncode == 6, wrong.stderr
    weak_db.parent.chmod(0o700)
    weak_db.chmod(0o600)
    assert _stored(weak_db) == before  # kept; a later verification upgrades it


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_verify_does_not_wait_for_a_busy_writer_to_upgrade(cli: Cli, seed: Seeder) -> None:
    [user_id] = seed([{"name": "Ada", "email": "ada@example.com"}])
    weak = weak_hash(SEED_PASSWORD)
    set_stored_hash(cli.url, user_id, weak)
    writer = sqlite3.connect(cli.url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        start = time.perf_counter()
        result = cli("--debug", "verify-password", "ada@example.com", "--password-stdin",
                     input=SEED_PASSWORD + "\n", env={"USERSCTL_BUSY_TIMEOUT": "30"})  # fmt: skip
        elapsed = time.perf_counter() - start
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.exit_code == 0, result.stderr
    assert "not upgraded" in result.stderr and "busy" in result.stderr
    assert elapsed < 10, elapsed  # not the 30 s busy timeout
    assert stored_hash(cli.url, user_id) == weak
    cli.ok("verify-password", "ada@example.com", "--password-stdin", input=SEED_PASSWORD + "\n")
    assert stored_hash(cli.url, user_id) != weak  # upgraded once the writer is gone


@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_verify_succeeds_for_a_select_only_role(cli: Cli, seed: Seeder) -> None:
    """The account keeps only SELECT (it revokes its own write privileges: the test
    server's account may not create roles), as a login front end's read-only role would."""
    [user_id] = seed([{"name": "Ada", "email": "ada@example.com"}])
    weak = weak_hash(SEED_PASSWORD)
    set_stored_hash(cli.url, user_id, weak)
    admin = create_engine(cli.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            text("REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public FROM CURRENT_USER")
        )
    try:
        assert cli("update", "1", "--name", "X").exit_code != 0  # really cannot write now
        result = cli("--debug", "verify-password", "ada@example.com", "--password-stdin",
                     input=SEED_PASSWORD + "\n")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert "not upgraded" in result.stderr and "permission denied" in result.stderr
        assert "Traceback" not in result.stderr
        assert cli("verify-password", "ada@example.com", "--password-stdin",
                   input="not the password\n").exit_code == 6  # fmt: skip
        assert stored_hash(cli.url, user_id) == weak
    finally:
        with admin.connect() as connection:
            connection.execute(
                text("GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO CURRENT_USER")
            )
        admin.dispose()
