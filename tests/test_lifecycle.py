"""Account lifecycle on every engine: logins recorded, brute force locked (counted
atomically), expiry, forced change, accounts without a password, the auditors' filters as
list options and as selectors, the grown user record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import SEED_PASSWORD, Cli, assert_error

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
WRONG = "definitely not the password"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """usersctl's clock, set by the test: clock[0] = now (no sleeping)."""
    now = [T0]
    monkeypatch.setattr("usersctl.lifecycle.now", lambda: now[0])
    return now


def config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    monkeypatch.setenv("USERSCTL_CONFIG", str(path))


def verify(cli: Cli, user: str, password: str) -> tuple[int, dict[str, object], str]:
    result = cli("verify-password", user, "--password-stdin", "-o", "json", input=password + "\n")
    return result.exit_code, json.loads(result.stdout), result.stderr


def test_success_records_the_login_and_resets_the_counter(cli: Cli, clock: list[datetime]) -> None:
    cli.create("Ada", "ada@example.com")
    assert cli.json("get", "ada@example.com")["last_login_at"] is None
    assert verify(cli, "ada@example.com", WRONG)[0] == 6
    assert verify(cli, "ada@example.com", WRONG)[0] == 6
    clock[0] = T0 + timedelta(minutes=1)
    code, document, _ = verify(cli, "ada@example.com", SEED_PASSWORD)
    assert (code, document) == (0, {"verified": True, "must_change_password": False})
    got = cli.json("get", "ada@example.com")
    assert got["last_login_at"] == "2030-01-01T12:01:00Z"
    assert got["updated_at"] != got["last_login_at"]  # a login is not an edit
    assert cli.ok("list", "--locked", "--count").stdout == "0\n"


def test_lockout_after_threshold_then_expiry_without_sleeping(
    cli: Cli, clock: list[datetime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config(monkeypatch, tmp_path, "lockout_threshold = 3\nlockout_minutes = 15\n")
    cli.create("Ada", "ada@example.com")
    wrong = verify(cli, "ada@example.com", WRONG)
    for _ in range(2):
        verify(cli, "ada@example.com", WRONG)
    # Locked: the right password fails exactly like a wrong one.
    locked = verify(cli, "ada@example.com", SEED_PASSWORD)
    unknown = verify(cli, "nobody@example.com", WRONG)
    assert locked == wrong == unknown
    assert locked[0] == 6 and locked[2] == "error: password verification failed\n"
    assert [u["email"] for u in cli.json("list", "--locked")] == ["ada@example.com"]
    assert cli.json("get", "ada@example.com")["locked"] is True
    entries = cli.json("audit", "--action", "lock")
    assert len(entries) == 1
    assert entries[0]["changes"]["locked_until"]["after"] == "2030-01-01T12:15:00Z"

    clock[0] = T0 + timedelta(minutes=14, seconds=59)
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 6
    clock[0] = T0 + timedelta(minutes=15)
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 0
    assert cli.json("get", "ada@example.com")["locked"] is False


def test_unlock_clears_the_lock_and_is_audited(
    cli: Cli, clock: list[datetime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config(monkeypatch, tmp_path, "lockout_threshold = 2\n")
    cli.create("Ada", "ada@example.com")
    cli.create("Bob", "bob@example.com")
    for _ in range(2):
        verify(cli, "ada@example.com", WRONG)
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 6
    assert_error(cli("unlock", "ada@example.com", "--locked"), 2, "not both")
    assert_error(cli("unlock"), 2, "no users given")
    assert_error(cli("unlock", "ada@example.com", "ghost@example.com"), 3, "ghost@example.com")
    dry = cli.ok("unlock", "--locked", "--dry-run")
    assert "ada@example.com" in dry.stdout and "bob" not in dry.stdout
    assert cli.json("get", "ada@example.com")["locked"] is True
    cli.ok("unlock", "--locked")
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 0
    [entry] = cli.json("audit", "--action", "unlock")
    assert entry["email"] == "ada@example.com"
    assert entry["changes"]["locked"] == {"before": True, "after": False}
    result = cli("unlock", "--locked")
    assert result.exit_code == 0 and "No users match (locked)" in result.stderr


def test_parallel_wrong_attempts_are_all_counted(cli: Cli, tmp_path: Path) -> None:
    """20 processes fail at once: the counter ends at exactly 20 (no lost update), and the
    account is locked once (GHSA-7h8m-vrxx-vr4m)."""
    cli.create("Ada", "ada@example.com")
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")}
    env["USERSCTL_DATABASE_URL"] = cli.url
    command = [sys.executable, "-m", "usersctl", "verify-password", "ada@example.com",
               "--password-stdin"]  # fmt: skip
    processes = [
        subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(20)
    ]
    outcomes = [p.communicate(WRONG + "\n", timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [6] * 20, outcomes
    assert all(err == "error: password verification failed\n" for _, err in outcomes), outcomes
    from sqlalchemy import create_engine, text

    engine = create_engine(cli.url)
    with engine.connect() as connection:
        failures = connection.execute(text("SELECT failed_logins FROM users")).scalar_one()
    engine.dispose()
    assert failures == 20
    assert len(cli.json("audit", "--action", "lock")) == 1


def test_expired_account_fails_and_is_found(cli: Cli, clock: list[datetime]) -> None:
    cli.create("Ada", "ada@example.com", "--expires", "1d")
    cli.create("Bob", "bob@example.com", "--expires", "2030-06-30")
    cli.create("Cy", "cy@example.com")
    assert cli.json("get", "ada@example.com")["expires_at"] == "2030-01-02T12:00:00Z"
    assert cli.json("get", "bob@example.com")["expires_at"] == "2030-06-30T00:00:00Z"
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 0
    clock[0] = T0 + timedelta(days=2)
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[:2] == (
        6, {"verified": False, "must_change_password": False})  # fmt: skip
    assert [u["email"] for u in cli.json("list", "--expired")] == ["ada@example.com"]
    cli.ok("update", "ada@example.com", "--expires", "never")
    assert cli.json("get", "ada@example.com")["expires_at"] is None
    assert verify(cli, "ada@example.com", SEED_PASSWORD)[0] == 0
    [entry] = cli.json("audit", "--action", "update")
    assert entry["changes"]["expires_at"] == {"before": "2030-01-02T12:00:00Z", "after": None}
    assert_error(cli("update", "cy@example.com", "--expires", "soon"), 2, "--expires")


@pytest.mark.parametrize("engine_name", ["sqlite"])  # SQLite locks the whole database
def test_a_failure_a_busy_database_cannot_count_is_exit_7(cli: Cli, db_url: str) -> None:
    """A wrong password waits for the write lock the whole busy timeout, then says
    "database busy" (exit 7) instead of failing uncounted; an unknown account waits the
    same way. The right password still verifies (its record is best effort)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    cli.create("Ada", "ada@example.com")
    quick = {"USERSCTL_BUSY_TIMEOUT": "0.3"}
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        for user, password in (("ada@example.com", WRONG), ("nobody@example.com", WRONG)):
            result = cli("verify-password", user, "--password-stdin", input=password + "\n",
                         env=quick)  # fmt: skip
            assert_error(result, 7, "database busy", "(0.3s)")
        right = cli("verify-password", "ada@example.com", "--password-stdin",
                    input=SEED_PASSWORD + "\n", env=quick)  # fmt: skip
        assert right.exit_code == 0, right.stderr
    finally:
        holder.close()
    assert verify(cli, "ada@example.com", WRONG)[0] == 6
    # The right password of a disabled account waits as a wrong one does: it answered at
    # once, a wrong one only after the timeout, which told them apart.
    cli.ok("disable", "ada@example.com")
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        right = cli("verify-password", "ada@example.com", "--password-stdin",
                    input=SEED_PASSWORD + "\n", env=quick)  # fmt: skip
        assert_error(right, 7, "database busy")
    finally:
        holder.close()


@pytest.mark.parametrize("engine_name", ["postgresql", "mariadb"])  # (SQLite: the test above)
def test_a_failure_waits_for_a_locked_row_only_the_busy_timeout(cli: Cli, db_url: str) -> None:
    """On PostgreSQL and MariaDB an import or sync locks the rows of the users it lists;
    a wrong password for one of them waited until that run ended (no limit). Now as long
    as the busy timeout, then exit 7."""
    import time

    from sqlalchemy import create_engine, text

    cli.create("Ada", "ada@example.com")
    engine = create_engine(db_url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM users WHERE id = 1 FOR UPDATE"))
            started = time.monotonic()
            result = cli("verify-password", "ada@example.com", "--password-stdin",
                         input=WRONG + "\n", env={"USERSCTL_BUSY_TIMEOUT": "1"})  # fmt: skip
            assert_error(result, 7, "database busy")
            assert time.monotonic() - started < 8
            holder.rollback()
    finally:
        engine.dispose()
    assert verify(cli, "ada@example.com", WRONG)[0] == 6


def test_must_change_after_an_admin_chosen_password(cli: Cli) -> None:
    created = cli.json("create", "--name", "Ada", "--email", "ada@example.com",
                       "--random-password")  # fmt: skip
    assert created["must_change_password"] is True
    code, document, _ = verify(cli, "ada@example.com", created["password"])
    assert (code, document) == (0, {"verified": True, "must_change_password": True})
    new = "a brand new passphrase of mine"
    cli.ok("passwd", "ada@example.com", "--password-stdin", input=new + "\n")
    assert verify(cli, "ada@example.com", new)[:2] == (
        0, {"verified": True, "must_change_password": False})  # fmt: skip
    cli.ok("passwd", "ada@example.com", "--password-stdin", "--must-change", input=new + "\n")
    assert cli.json("get", "ada@example.com")["must_change_password"] is True
    bob = cli.create("Bob", "bob@example.com", "--must-change")
    assert bob["must_change_password"] is True


def test_account_without_password(cli: Cli) -> None:
    sso = cli.json("create", "--name", "Sso", "--email", "sso@example.com", "--no-password")
    assert sso["has_password"] is False and sso["password_changed_at"] is None
    assert verify(cli, "sso@example.com", "")[0] == 6
    assert verify(cli, "sso@example.com", SEED_PASSWORD)[0] == 6
    assert [u["email"] for u in cli.json("list", "--no-password")] == ["sso@example.com"]
    assert_error(
        cli("create", "--name", "X", "--email", "x@example.com", "--no-password",
            "--random-password"), 2, "--no-password")  # fmt: skip
    cli.ok("passwd", "sso@example.com", "--password-stdin", input=SEED_PASSWORD + "\n")
    assert verify(cli, "sso@example.com", SEED_PASSWORD)[0] == 0
    assert cli.json("get", "sso@example.com")["has_password"] is True


def test_must_change_filter(cli: Cli) -> None:
    """`--must-change` selects whoever still has a password an admin chose: on list (and
    --count) and as the selection of disable, enable, unlock and delete."""
    cli.create("Ada", "ada@example.com", "--must-change")
    cli.create("Bob", "bob@example.com")
    cli.json("create", "--name", "Cy", "--email", "cy@example.com", "--random-password")
    assert [u["email"] for u in cli.json("list", "--must-change")] == [
        "ada@example.com", "cy@example.com"]  # fmt: skip
    assert cli.ok("list", "--must-change", "--role", "admin", "--count").stdout == "0\n"
    cli.ok("passwd", "cy@example.com", "--password-stdin", input=SEED_PASSWORD + "\n")
    assert cli.ok("list", "--must-change", "--count").stdout == "1\n"
    plan = json.loads(cli.ok("disable", "--must-change", "--dry-run", "-o", "json").stdout)
    assert [e["email"] for e in plan] == ["ada@example.com"]
    cli.ok("disable", "--must-change")
    assert [u["email"] for u in cli.json("list", "--disabled")] == ["ada@example.com"]
    assert_error(cli("enable", "bob@example.com", "--must-change"), 2, "not both")
    cli.ok("delete", "--must-change", "--yes")
    assert [u["email"] for u in cli.json("list")] == ["bob@example.com", "cy@example.com"]
    none = cli("unlock", "--must-change")
    assert none.exit_code == 0
    assert "No users match (who must change their password)" in none.stderr


def test_inactive_filter_selects_users_for_disable(cli: Cli, clock: list[datetime]) -> None:
    """The cron recipe: a dry run, then the real run; all or nothing; one entry each."""
    for name in ("ada", "bob", "cy"):
        cli.create(name.title(), f"{name}@example.com")
    verify(cli, "cy@example.com", SEED_PASSWORD)  # cy logs in (in 2030, by the clock)
    # Nobody else ever logged in: they count from their creation, before tomorrow.
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert cli.ok("list", "--inactive-since", later, "--count").stdout == "2\n"
    plan = cli.ok("disable", "--inactive-since", later, "--dry-run", "-o", "json")
    assert [e["email"] for e in json.loads(plan.stdout)] == ["ada@example.com", "bob@example.com"]
    assert cli.ok("list", "--disabled", "--count").stdout == "0\n"
    cli.ok("disable", "--inactive-since", later)
    assert [u["email"] for u in cli.json("list", "--disabled")] == [
        "ada@example.com", "bob@example.com"]  # fmt: skip
    assert len(cli.json("audit", "--action", "disable")) == 2
    assert_error(cli("disable", "ada@example.com", "--expired"), 2, "not both")
    none = cli("delete", "--expired", "--yes")
    assert none.exit_code == 0 and "No users match (expired)" in none.stderr
    assert cli.ok("list", "--count").stdout == "3\n"
    assert_error(cli("list", "--inactive-since", "yesterday"), 2, "--inactive-since")


def test_record_fields_and_columns(cli: Cli) -> None:
    cli.create("Ada", "ada@example.com")
    got = cli.json("get", "ada@example.com")
    for name in ("last_login_at", "password_changed_at", "expires_at", "must_change_password",
                 "locked", "has_password"):  # fmt: skip
        assert name in got
    assert cli.ok("get", "ada@example.com", "--columns", "id,email,locked", "-o", "csv").stdout \
        == "id,email,locked\n1,ada@example.com,false\n"  # fmt: skip
    assert cli.ok("list", "--columns", "email,has_password", "-o", "plain").stdout == (
        "ada@example.com\ttrue\n"
    )
    assert_error(cli("list", "--columns", "email,secret"), 2, "unknown column 'secret'")
    table = cli.ok("list").stdout
    assert max(len(line) for line in table.splitlines()) <= 80


def test_export_import_round_trip_keeps_lifecycle_fields(cli: Cli, tmp_path: Path) -> None:
    cli.create("Ada", "ada@example.com", "--expires", "2031-01-01", "--must-change")
    cli.json("create", "--name", "Sso", "--email", "sso@example.com", "--no-password")
    verify(cli, "ada@example.com", SEED_PASSWORD)
    before = cli.json("list")
    dump = cli.ok("export", "--include-hashes", "-f", "jsonl").stdout
    cli.ok("delete", "ada@example.com", "sso@example.com", "--yes")
    path = tmp_path / "users.jsonl"
    path.write_text(dump)
    cli.ok("import", str(path), "--restore")
    assert cli.json("list") == before


def test_pinned_roles(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config(monkeypatch, tmp_path, 'roles = ["user", "admin"]\n')
    cli.create("Ada", "ada@example.com", "--role", "admin")
    bad = cli("create", "--name", "Bob", "--email", "bob@example.com", "--role", "admn",
              "--password-stdin", input=SEED_PASSWORD + "\n")  # fmt: skip
    assert_error(bad, 5, "invalid role 'admn'", "user, admin")
    assert_error(cli("update", "ada@example.com", "--role", "root"), 5, "allows only user, admin")
    assert_error(cli("list", "--role", "admn"), 5, "invalid role 'admn'")
    path = tmp_path / "users.csv"
    path.write_text(f"name,email,role,password\nCy,cy@example.com,staff,{SEED_PASSWORD}\n")
    result = cli("import", str(path))
    assert result.exit_code == 5 and "line 2: invalid role 'staff'" in result.stderr
    assert cli.ok("list", "--role", "admin", "--count").stdout == "1\n"


def test_list_role_is_validated_like_create(cli: Cli) -> None:
    assert_error(cli("list", "--role", "Admin"), 5, "invalid role")
