"""Revision 0004 (account lifecycle): up and down with data on every engine, re-runnable
steps, and the downgrade's refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from conftest import Cli, assert_error
from usersctl.revision import HEAD

NEW_COLUMNS = {
    "last_login_at",
    "password_changed_at",
    "expires_at",
    "must_change_password",
    "failed_logins",
    "locked_until",
}


@pytest.fixture
def fresh(empty_db_url: str) -> Cli:
    return Cli(url=empty_db_url, runner=CliRunner())


def columns(url: str) -> dict[str, dict[str, object]]:
    engine = create_engine(url)
    found = {c["name"]: dict(c) for c in inspect(engine).get_columns("users")}
    engine.dispose()
    return found


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.begin() as connection:
        result = connection.execute(text(sql))
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


def as_utc(value: object) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def insert_at_0003(url: str, password_hash: str, email: str = "ada@example.com") -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (name, email, password_hash, role, is_active, created_at, "
                "updated_at) VALUES ('Ada', :email, :hash, 'user', :yes, :at, :at)"
            ),
            {"email": email, "hash": password_hash, "yes": True, "at": "2026-01-02 03:04:05"},
        )
    engine.dispose()


def test_upgrade_from_0003_keeps_users_and_sets_password_changed_at(
    fresh: Cli, seed_hash: str
) -> None:
    fresh.ok("db", "upgrade", "0003")
    assert not NEW_COLUMNS & set(columns(fresh.url))
    insert_at_0003(fresh.url, seed_hash)

    fresh.ok("db", "upgrade")
    found = columns(fresh.url)
    assert NEW_COLUMNS <= set(found)
    assert found["password_hash"]["nullable"] is True
    [(changed, updated, failed, must)] = query(
        fresh.url,
        "SELECT password_changed_at, updated_at, failed_logins, must_change_password FROM users",
    )
    assert as_utc(changed) == as_utc(updated) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert failed == 0 and not must
    got = fresh.json("get", "ada@example.com")
    assert got["password_changed_at"] == "2026-01-02T03:04:05Z"
    assert got["has_password"] is True and got["locked"] is False
    fresh.ok("db", "check")


def test_round_trip_with_data(fresh: Cli) -> None:
    fresh.ok("db", "upgrade")
    fresh.create("Ada", "ada@example.com")
    fresh.create("Bob", "bob@example.com")
    # An expired lock is no lock: nothing is lost when its columns go.
    query(fresh.url, "UPDATE users SET locked_until = '2020-01-01 00:00:00', failed_logins = 3")
    hashes = query(fresh.url, "SELECT email, password_hash FROM users ORDER BY id")

    fresh.ok("db", "downgrade", "0003", "--yes")
    assert not NEW_COLUMNS & set(columns(fresh.url))
    assert query(fresh.url, "SELECT email, password_hash FROM users ORDER BY id") == hashes

    fresh.ok("db", "upgrade")
    assert query(fresh.url, "SELECT email, password_hash FROM users ORDER BY id") == hashes
    fresh.ok("verify-password", "ada@example.com", "--password-stdin",
             input="correct horse battery\n")  # fmt: skip
    fresh.ok("db", "check")
    audit = fresh.json("audit", "--action", "db-downgrade")
    assert audit and audit[0]["changes"]["revision"] == {"before": HEAD, "after": "0003"}


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (("create", "--name", "Sso", "--email", "sso@example.com", "--no-password"),
         "1 user(s) have no password"),
        (("create", "--name", "Tmp", "--email", "tmp@example.com", "--expires", "2030-01-01",
          "--password-stdin"), "1 user(s) have an expiry date"),
        (("create", "--name", "New", "--email", "new@example.com", "--must-change",
          "--password-stdin"), "1 user(s) must change their password"),
        (("create", "--name", "Eve", "--email", "eve@example.com", "--password-stdin"),
         "1 user(s) are locked out"),
    ],
)  # fmt: skip
def test_downgrade_refuses_to_weaken_or_lose_an_account(
    fresh: Cli, setup: tuple[str, ...], fragment: str
) -> None:
    """What 0003 cannot represent: no password, an expiry date, a lock still running (it
    would end), a forced change (the user could keep the password an admin set)."""
    fresh.ok("db", "upgrade")
    fresh.ok(*setup, input="correct horse battery\n")
    if "locked" in fragment:
        lock = "UPDATE users SET locked_until = '2999-01-01 00:00:00', failed_logins = 10"
        query(fresh.url, lock)
    before = fresh.json("list")
    result = fresh("db", "downgrade", "0003", "--yes")
    assert_error(result, 5, "cannot downgrade below 0004, nothing changed", fragment)
    assert fresh.ok("db", "current", "-o", "plain").stdout.startswith(f"{HEAD}\t")
    assert fresh.json("list") == before


def test_upgrade_is_rerunnable_after_a_partial_run(
    fresh: Cli, engine_name: str, seed_hash: str
) -> None:
    """MariaDB commits each ALTER: a run cut after some columns were added must complete
    when run again. Simulated by adding two of the columns by hand at 0003."""
    fresh.ok("db", "upgrade", "0003")
    insert_at_0003(fresh.url, seed_hash)
    stamp = "TIMESTAMP WITH TIME ZONE" if engine_name == "postgresql" else "DATETIME"
    query(fresh.url, f"ALTER TABLE users ADD COLUMN last_login_at {stamp} NULL")
    query(fresh.url, f"ALTER TABLE users ADD COLUMN password_changed_at {stamp} NULL")
    fresh.ok("db", "upgrade")
    assert NEW_COLUMNS <= set(columns(fresh.url))
    fresh.ok("db", "check")
    got = fresh.json("get", "ada@example.com")
    assert got["password_changed_at"] == got["updated_at"]


def test_dry_run_of_0004_changes_nothing(fresh: Cli) -> None:
    fresh.ok("db", "upgrade", "0003")
    result = fresh.ok("db", "upgrade", "--dry-run")
    assert "password_changed_at" in result.stdout
    assert not NEW_COLUMNS & set(columns(fresh.url))
    assert fresh.ok("db", "current", "-o", "plain").stdout.startswith("0003\t")
