"""Migrations: revisions in sync, round trips with data, tutorial adoption, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, String, create_engine, inspect, text
from sqlalchemy.orm import Session, declarative_base
from test_dry_run import set_revision
from typer.testing import CliRunner

from conftest import Cli, assert_error
from usersctl import migrations
from usersctl.config import load_settings
from usersctl.database import Database
from usersctl.revision import HEAD, KNOWN_REVISIONS

PLAINTEXT = "PlainTutorialSecret-7"

TutorialBase = declarative_base()


# The tutorial's bare String; MariaDB cannot create a VARCHAR without a length (the tutorial
# app could not run there as written), so only that dialect gets one.
TutorialString = String().with_variant(String(255), "mysql", "mariadb")


class TutorialUser(TutorialBase):  # type: ignore[misc, valid-type]
    """The seed tutorial's model: what its `create_all` made."""

    __tablename__ = "users"
    id = Column(Integer, primary_key=True, index=True)
    name = Column(TutorialString, nullable=False)
    email = Column(TutorialString, unique=True, index=True, nullable=False)
    password = Column(TutorialString, nullable=False)


def make_tutorial_db(url: str, rows: list[tuple[str, str, str]]) -> None:
    engine = create_engine(url)
    TutorialBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(TutorialUser(name=n, email=e, password=p) for n, e, p in rows)
        session.commit()
    engine.dispose()


def stored(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def sqlite_file_bytes(url: str) -> bytes:
    path = Path(url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.fixture
def fresh(empty_db_url: str) -> Cli:
    return Cli(url=empty_db_url, runner=CliRunner())


def test_known_revisions_match_the_scripts() -> None:
    scripts = migrations.script_directory()
    assert scripts.get_current_head() == HEAD
    assert tuple(r.revision for r in migrations.history()) == KNOWN_REVISIONS


def test_models_and_migrations_agree(cli: Cli) -> None:
    database = Database(load_settings(database_url=cli.url))
    assert migrations.schema_differences(database, ours_only=False) == []
    database.dispose()
    result = cli("db", "check")
    assert result.exit_code == 0, result.stderr
    assert "matches the models" in result.stderr


def test_db_check_ignores_what_an_application_added_and_names_what_is_missing(
    cli: Cli,
) -> None:
    """An application's own table, column and index are no difference (db check, the
    cron health check, failed on them); a missing index of usersctl's is named in words
    (it was Alembic's raw tuple)."""
    engine = create_engine(cli.url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, owner_id INTEGER)"))
        connection.execute(text("ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"))
        connection.execute(text("CREATE INDEX ix_users_nickname ON users (nickname)"))
    cli.ok("db", "check")
    with engine.begin() as connection:
        connection.execute(
            text("DROP INDEX ix_users_source" + (" ON users" if "mysql" in cli.url else ""))
        )
    engine.dispose()
    assert_error(cli("db", "check"), 8, "index ix_users_source on users (source) is missing")


def test_first_command_on_empty_database_brings_it_to_head(fresh: Cli) -> None:
    result = fresh("list", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "[]\n"
    assert f"schema revision {HEAD}" in result.stderr
    assert fresh.ok("db", "current", "-o", "plain").stdout == f"{HEAD}\t{HEAD}\tcurrent\n"


def test_base_head_base_head_with_rows(fresh: Cli) -> None:
    fresh.ok("db", "upgrade", "0001")
    assert fresh.ok("db", "current", "-o", "plain").stdout.startswith("0001\t")
    engine = create_engine(fresh.url)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (name, email, password) VALUES (:n, :e, :p)"),
            [
                {"n": " Ada ", "e": "Ada@Example.com", "p": PLAINTEXT},
                {"n": "Bob", "e": "bob@example.com", "p": "short"},
            ],
        )
    engine.dispose()

    fresh.ok("db", "upgrade")
    users = fresh.json("list")
    assert [(u["name"], u["email"]) for u in users] == [
        ("Ada", "ada@example.com"),
        ("Bob", "bob@example.com"),
    ]
    hashes = stored(fresh.url, "SELECT password_hash FROM users ORDER BY id")
    assert all(str(h).startswith("$argon2id$") for (h,) in hashes)
    fresh.ok("verify-password", "ada@example.com", "--password-stdin", input=PLAINTEXT + "\n")

    fresh.ok("db", "downgrade", "0001", "--yes", "--discard-audit-trail")
    assert "password_hash" not in {c["name"] for c in _columns(fresh.url)}
    # The downgrade keeps each user and their *hash*; it never writes plaintext back.
    assert stored(fresh.url, "SELECT password FROM users ORDER BY id") == hashes

    fresh.ok("db", "upgrade")
    assert stored(fresh.url, "SELECT password_hash FROM users ORDER BY id") == hashes
    fresh.ok("verify-password", "ada@example.com", "--password-stdin", input=PLAINTEXT + "\n")

    fresh.ok("db", "downgrade", "base", "--yes", "--discard-audit-trail")
    assert tables(fresh.url) <= {"alembic_version"}
    fresh.ok("db", "upgrade", "head")
    assert fresh.json("list") == []
    fresh.ok("db", "check")


def _columns(url: str) -> list[dict[str, object]]:
    engine = create_engine(url)
    columns = inspect(engine).get_columns("users")
    engine.dispose()
    return list(columns)


def test_tutorial_database_is_refused_then_adopted(fresh: Cli, engine_name: str) -> None:
    make_tutorial_db(
        fresh.url,
        [("Ada Lovelace", "ada@example.com", PLAINTEXT), ("Bob", "BOB@example.com", "pw")],
    )
    assert_error(fresh("list"), 8, "tutorial", "usersctl db upgrade")
    assert "alembic_version" not in tables(fresh.url)

    result = fresh("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert "Adopted the tutorial database" in result.stderr
    assert f"from 0001 to {HEAD}" in result.stderr
    emails = [u["email"] for u in fresh.json("list")]
    assert emails == ["ada@example.com", "bob@example.com"]
    fresh.ok("verify-password", "ada@example.com", "--password-stdin", input=PLAINTEXT + "\n")
    assert fresh("verify-password", "2", "--password-stdin", input="wrong\n").exit_code == 6
    assert PLAINTEXT not in str(stored(fresh.url, "SELECT * FROM users"))
    if engine_name == "sqlite":
        # No copy in free pages, the WAL or a journal: the whole file set is scrubbed.
        assert PLAINTEXT.encode() not in sqlite_file_bytes(fresh.url)


def test_upgrade_refuses_to_merge_accounts_and_changes_nothing(fresh: Cli) -> None:
    # (A leading space too: on MariaDB the tutorial's table has the server's default,
    # case-insensitive collation, whose unique index already refuses "ADA@" next to "ada@".)
    make_tutorial_db(
        fresh.url, [("Ada", "ada@example.com", "x" * 9), ("Ada 2", " ADA@example.com", "y" * 9)]
    )
    before = stored(fresh.url, "SELECT * FROM users ORDER BY id")
    assert_error(fresh("db", "upgrade"), 5, "share email", "nothing changed")
    assert stored(fresh.url, "SELECT * FROM users ORDER BY id") == before
    assert (
        "alembic_version" not in tables(fresh.url)
        or stored(fresh.url, "SELECT version_num FROM alembic_version") == []
    )


def test_downgrade_refuses_to_lose_roles_or_locks(cli: Cli, seed: object) -> None:
    cli.create("Root", "root@example.com", "--role", "admin")
    assert_error(
        cli("db", "downgrade", "0001", "--yes", "--discard-audit-trail"),
        5,
        "cannot downgrade",
        "nothing changed",
    )
    assert cli.ok("db", "current", "-o", "plain").stdout.startswith(f"{HEAD}\t")
    assert cli.json("get", "root@example.com")["role"] == "admin"
    # 0003's step (dropping the audit trail) ran first and was undone with the refusal.
    assert [e["action"] for e in cli.json("audit")] == ["create", "db-upgrade"]


def test_downgrade_needs_yes_without_a_terminal(cli: Cli) -> None:
    assert_error(cli("db", "downgrade", "0001"), 2, "--yes")
    assert cli.ok("db", "current", "-o", "plain").stdout.startswith(f"{HEAD}\t")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("db", "upgrade", "0001"), "use `usersctl db downgrade 0001`"),
        (("db", "upgrade", "nope"), "unknown revision"),
        (("db", "stamp", "nope"), "unknown revision"),
        (("db", "downgrade", "nope", "--yes"), "unknown revision"),
    ],
)
def test_bad_revision_arguments_are_usage_errors(
    cli: Cli, args: tuple[str, ...], fragment: str
) -> None:
    assert_error(cli(*args), 2, fragment)
    assert cli.ok("db", "current", "-o", "plain").stdout.startswith(f"{HEAD}\t")


def test_stamp_and_current_and_history(cli: Cli) -> None:
    history = cli.json("db", "history")
    assert [h["revision"] for h in history] == list(KNOWN_REVISIONS)
    assert history[1]["down_revision"] == "0001"
    assert_error(cli("db", "stamp", "0001", "--yes"), 8, "refusing to stamp 0001")
    set_revision(cli.url, "0001")  # recorded wrongly by other means
    current = cli.json("db", "current")
    assert current == {"revision": "0001", "head": HEAD, "state": "behind"}
    assert_error(cli("get", "1"), 8, "usersctl db upgrade")
    assert_error(cli("db", "check"), 8, "0001")
    result = cli("db", "stamp", "head", "--yes")
    assert result.exit_code == 0
    assert f"Stamped revision {HEAD} (was 0001)" in result.stderr
    assert cli.json("db", "current")["state"] == "current"


def test_migrate_is_upgrade_head(fresh: Cli) -> None:
    result = fresh("migrate")
    assert result.exit_code == 0, result.stderr
    assert f"to {HEAD}" in result.stderr
    again = fresh("migrate")
    assert "nothing to do" in again.stderr


def test_newer_database_is_refused_by_every_command(cli: Cli) -> None:
    engine = create_engine(cli.url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    for args in (("list",), ("db", "upgrade"), ("db", "check")):
        assert_error(cli(*args), 8, "newer")


def test_an_id_is_never_handed_out_again(fresh: Cli) -> None:
    """Revision 0007: the last user's id does not come back after a delete, neither for users
    deleted before the upgrade (the audit trail names them) nor after it (SQLite gave the
    largest id + 1, so one person's id, SCIM id and audit history became another's)."""
    from datetime import UTC, datetime

    from sqlalchemy import column, delete, insert, table

    fresh.ok("db", "upgrade", "0006")
    now = datetime.now(UTC).replace(tzinfo=None)
    users = table(
        "users", column("id"), column("name"), column("email"), column("created_at"),
        column("updated_at"),
    )  # fmt: skip
    audit = table(
        "audit_log", column("at"), column("actor"), column("action"), column("user_id"),
        column("user_email"), column("changes"),
    )  # fmt: skip
    engine = create_engine(fresh.url)
    with engine.begin() as connection:
        for name in ("ada", "bob", "cy"):
            connection.execute(
                insert(users).values(
                    name=name, email=f"{name}@example.com", created_at=now, updated_at=now
                )
            )
        connection.execute(
            insert(audit).values(
                at=now, actor="root", action="delete", user_id=3, user_email="cy@example.com",
                changes="{}",
            )
        )  # fmt: skip
        connection.execute(delete(users).where(users.c.id > 1))  # bob (2) and cy (3) left
    engine.dispose()

    fresh.ok("db", "upgrade")
    dan = fresh.create("Dan", "dan@example.com")
    assert dan["id"] == 4  # past cy's 3, which only the audit trail still names
    fresh.ok("delete", "dan@example.com", "--yes")
    eve = fresh.create("Eve", "eve@example.com")
    assert eve["id"] == 5
    assert [entry["user_id"] for entry in fresh.json("audit", "--user", "eve@example.com")] == [5]
    fresh.ok("db", "check")


def test_stamping_0007_needs_its_autoincrement_on_sqlite(fresh: Cli, engine_name: str) -> None:
    """0006 and 0007 have the same tables; on SQLite, 0007's users table is AUTOINCREMENT,
    and a stamp must not claim it without (ids would be handed out again)."""
    fresh.ok("db", "upgrade", "0006")
    result = fresh("db", "stamp", "0007", "--yes")
    if engine_name == "sqlite":
        assert_error(result, 8, "fits revision 0006, not 0007")
        fresh.ok("db", "upgrade")  # the rebuild, then 0006 fits as well (a downgrade keeps it)
        fresh.ok("db", "stamp", "0006", "--yes")
        fresh.ok("db", "stamp", "0007", "--yes")
    else:
        assert result.exit_code == 0, result.stderr
    assert fresh.ok("db", "current", "-o", "plain").stdout.startswith("0007\t")


def test_0007_keeps_what_an_application_built_on_the_users_table(tmp_path: Path) -> None:
    """The SQLite rebuild of 0007 deletes no row that references a user (foreign keys with
    ON DELETE CASCADE / SET NULL) and keeps a typeless column, expression, partial and
    descending indexes, a trigger and a view exactly as the application made them."""
    import sqlite3

    path = tmp_path / "data" / "users.db"
    path.parent.mkdir(mode=0o700)
    cli = Cli(url=f"sqlite:///{path}", runner=CliRunner())
    cli.ok("db", "upgrade", "0006")
    application = [
        "INSERT INTO users (name, email, created_at, updated_at) VALUES"
        " ('Ada', 'ada@example.com', '2026-01-01', '2026-01-01'),"
        " ('Bob', 'bob@example.com', '2026-01-01', '2026-01-01')",
        "ALTER TABLE users ADD COLUMN note",
        "UPDATE users SET note = 'kept' WHERE id = 1",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY,"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE)",
        "CREATE TABLE tickets (id INTEGER PRIMARY KEY,"
        " user_id INTEGER REFERENCES users(id) ON DELETE SET NULL)",
        "INSERT INTO orders (user_id) SELECT id FROM users",
        "INSERT INTO tickets (user_id) SELECT id FROM users",
        "CREATE INDEX ix_users_lower_name ON users(lower(name))",
        "CREATE UNIQUE INDEX ix_users_ext ON users(source, external_id)"
        " WHERE external_id IS NOT NULL",
        "CREATE INDEX ix_users_created_desc ON users(created_at DESC)",
        "CREATE TRIGGER users_touch AFTER UPDATE OF name ON users"
        " BEGIN UPDATE users SET note = 'renamed' WHERE id = new.id; END",
        "CREATE VIEW active_users AS SELECT id, email FROM users WHERE is_active",
    ]
    connection = sqlite3.connect(path)
    with connection:
        for statement in application:
            connection.execute(statement)
    schema = "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger', 'view')"
    before = set(connection.execute(schema))
    connection.close()

    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert "Warning" not in upgraded.stderr

    connection = sqlite3.connect(path)
    assert connection.execute("SELECT user_id FROM orders ORDER BY id").fetchall() == [(1,), (2,)]
    assert connection.execute("SELECT user_id FROM tickets ORDER BY id").fetchall() == [(1,), (2,)]
    assert connection.execute("SELECT note FROM users ORDER BY id").fetchall() == [
        ("kept",),
        (None,),
    ]
    after = set(connection.execute(schema))
    assert {
        row for row in before if row[1] != "ix_users_email" and row[1] != "ix_users_source"
    } <= after
    assert connection.execute("SELECT count(*) FROM active_users").fetchone() == (2,)
    assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    assert (
        connection.execute("SELECT sql FROM sqlite_master WHERE name = 'users'")
        .fetchone()[0]
        .count("AUTOINCREMENT")
        == 1
    )
    connection.close()
    cli.ok("update", "bob@example.com", "--name", "Robert")  # the trigger still fires
    assert cli.json("get", "bob@example.com")["name"] == "Robert"
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT note FROM users WHERE id = 2").fetchone() == ("renamed",)
    connection.close()
