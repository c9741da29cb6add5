"""The bulk write lane (database.insert_many and the new ids an import reads back): every
value in its column, every row once, in order, on every engine."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from typer.testing import CliRunner

from conftest import Cli
from usersctl.config import load_settings
from usersctl.database import Database, insert_many
from usersctl.models import User

COLUMNS = ("email", "name", "role", "created_at", "updated_at", "is_active")  # not table order


def rows(count: int, stamp: Any) -> list[tuple[Any, ...]]:
    return [
        (f"u{i}@example.com", f"User {i}", "admin" if i % 2 else "user", stamp, stamp, i % 3 != 0)
        for i in range(count)
    ]


def stored(database: Database) -> list[tuple[Any, ...]]:
    with database.session(write=False) as session:
        query = select(User.id, User.email, User.name, User.role, User.is_active).order_by(User.id)
        return [tuple(row) for row in session.execute(query)]


def test_insert_many_puts_each_value_in_its_column_in_order(db_url: str) -> None:
    from usersctl.database import driver_value
    from usersctl.models import UTCDateTime, users_table, utcnow

    database = Database(load_settings(database_url=db_url))
    with database.session(write=True) as session:
        connection = session.connection()
        stamp = driver_value(connection.dialect, UTCDateTime(), utcnow())
        insert_many(connection, users_table, COLUMNS, rows(7, stamp))
    found = stored(database)
    database.dispose()
    assert [(email, name, role, bool(active)) for _, email, name, role, active in found] == [
        (email, name, role, active) for email, name, role, _, _, active in rows(7, None)
    ]
    ids = [row[0] for row in found]
    assert ids == sorted(ids) and len(set(ids)) == 7


@pytest.mark.parametrize(
    ("limit", "value"),
    [
        (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20),  # 3 rows of 6 parameters a statement
        (sqlite3.SQLITE_LIMIT_SQL_LENGTH, 300),  # a few rows' VALUES a statement
    ],
    ids=["parameters", "length"],
)
def test_sqlite_splits_rows_at_its_limits_for_a_statement(
    tmp_path: Path, sqlite_template: Path, limit: int, value: int
) -> None:
    from usersctl.database import driver_value
    from usersctl.models import UTCDateTime, users_table, utcnow

    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    database = Database(load_settings(database_url=f"sqlite:///{path}"))
    statements: list[str] = []
    event.listen(
        database.engine,
        "before_cursor_execute",
        lambda *args: statements.append(args[2]) if args[2].startswith("INSERT") else None,
    )
    with database.session(write=True) as session:
        connection = session.connection()
        raw = connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.setlimit(limit, value)
        stamp = driver_value(connection.dialect, UTCDateTime(), utcnow())
        insert_many(connection, users_table, COLUMNS, rows(20, stamp))
    found = stored(database)
    database.dispose()
    assert len(statements) > 1
    if limit == sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER:
        assert all(statement.count("?") <= value for statement in statements)
        assert [statement.count("(?") for statement in statements] == [3] * 6 + [2]
    else:
        assert all(len(statement) <= value for statement in statements)
    assert [row[1] for row in found] == [f"u{i}@example.com" for i in range(20)]


def test_new_ids_come_from_sqlites_numbering_or_from_nowhere(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The fast path is taken when the new rows are one run in order, and gives up (the
    caller reads the ids back) on anything else."""
    from usersctl.crud import _numbered_in_order
    from usersctl.database import driver_value
    from usersctl.models import UTCDateTime, users_table, utcnow

    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    database = Database(load_settings(database_url=f"sqlite:///{path}"))
    with database.session(write=True) as session:
        connection = session.connection()
        stamp = driver_value(connection.dialect, UTCDateTime(), utcnow())
        insert_many(connection, users_table, COLUMNS, rows(2, stamp))
        connection.execute(users_table.delete().where(users_table.c.email == "u1@example.com"))
        insert_many(connection, users_table, COLUMNS, rows(5, stamp)[2:])  # ids 3, 4, 5
        emails = [f"u{i}@example.com" for i in range(2, 5)]
        numbered = dict(zip(emails, [3, 4, 5], strict=True))
        assert _numbered_in_order(connection, 1, emails) == numbered
        assert _numbered_in_order(connection, 1, emails[::-1]) == {}
        assert _numbered_in_order(connection, 1, emails[:2]) == {}
        assert _numbered_in_order(connection, 5, []) == {}
    database.dispose()


def test_import_reads_the_new_ids_when_a_trigger_adds_users_of_its_own(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """An application's trigger that inserts users of its own between usersctl's: the ids
    are not a run, and each audit entry must still name its own user."""
    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    with sqlite3.connect(path) as raw:
        raw.execute(
            "CREATE TRIGGER shadow AFTER INSERT ON users WHEN NEW.email LIKE '%@example.com' "
            "BEGIN INSERT INTO users (name, email, role, is_active, created_at, updated_at, "
            "must_change_password, failed_logins) VALUES ('Shadow', 'shadow.' || NEW.email || "
            "'.test', 'user', 1, NEW.created_at, NEW.created_at, 0, 0); END"
        )
    raw.close()
    cli = Cli(url=f"sqlite:///{path}", runner=CliRunner())
    lines = "".join(
        json.dumps({"name": f"User {i}", "email": f"u{i}@example.com"}) + "\n" for i in range(5)
    )
    assert cli.json("import", "-", "--format", "jsonl", input=lines)["created"] == 5
    with sqlite3.connect(path) as raw:
        ids = dict(raw.execute("SELECT email, id FROM users"))
        entries = raw.execute(
            "SELECT user_email, user_id FROM audit_log WHERE action = 'import'"
        ).fetchall()
        shadows = raw.execute("SELECT count(*) FROM users WHERE name = 'Shadow'").fetchone()
    raw.close()
    assert shadows == (5,)
    assert sorted(entries) == sorted(
        (f"u{i}@example.com", ids[f"u{i}@example.com"]) for i in range(5)
    )
    assert ids["u1@example.com"] - ids["u0@example.com"] == 2  # the shadow came between
