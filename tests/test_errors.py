"""Every row of the exit-code table (DESIGN.md): the code, one line on stderr, no traceback.

Rows 1-6 and 8 run on every engine through the `cli` fixture. Row 7 (database
unavailable) builds its own broken SQLite files and PostgreSQL URLs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error, postgres_admin_url
from usersctl.cli import app

# ---------------- helpers


def invoke(
    url: str, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run the app against `url` without the per-engine fixtures (SQLite-only tests)."""
    environment = {"USERSCTL_DATABASE_URL": url, **(env or {})}
    return CliRunner().invoke(app, list(args), input=input, env=environment)


def assert_fails(result: Result, code: int, *fragments: str) -> None:
    """assert_error, and nothing at all on stdout (data goes there only on success)."""
    assert_error(result, code, *fragments)
    assert result.stdout == "", result.stdout


def sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction; rows for a SELECT, [] otherwise."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def snapshot(cli: Cli) -> tuple[Any, list[tuple[Any, ...]]]:
    """What `list -o json` shows, plus the stored hashes it hides."""
    rows = sql(cli.url, "SELECT id, password_hash, is_active FROM users ORDER BY id")
    return cli.json("list"), rows


# A valid create command line (random password: no stdin needed).
NEW_USER = ["create", "--name", "New User", "--email", "new@example.com", "--random-password"]


@pytest.fixture
def two_users(seed: Seeder) -> list[int]:
    return seed(
        [
            {"name": "Ada Lovelace", "email": "ada@example.com", "role": "admin"},
            {"name": "Charles Babbage", "email": "charles@example.com"},
        ]
    )


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite database of this test's own (for the SQLite-only tests)."""
    path = tmp_path / "own.db"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    return f"sqlite:///{path}"


def test_help_documents_every_exit_code() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.stderr
    for code in range(9):
        assert re.search(rf"^\s+{code}\s+\w", result.stdout, re.MULTILINE), code


# ---------------- 1: a bug


def _boom(**_kwargs: Any) -> Any:
    raise RuntimeError("boom")


@pytest.fixture
def crashing_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import usersctl.crud

    monkeypatch.setattr(usersctl.crud, "user_query", _boom)


def _assert_traceback_then_one_line(result: Result) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert "RuntimeError: boom" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unexpected error (RuntimeError: boom)"), last
    assert result.stdout == ""


@pytest.mark.usefixtures("crashing_list")
def test_unexpected_error_is_one_line_without_traceback(cli: Cli) -> None:
    result = cli("list")
    assert_fails(result, 1, "unexpected error", "RuntimeError: boom", "bug", "--debug")


@pytest.mark.usefixtures("crashing_list")
@pytest.mark.parametrize("value", ["0", "no", ""])
def test_debug_env_off_values_keep_the_traceback_hidden(cli: Cli, value: str) -> None:
    assert_fails(cli("list", env={"USERSCTL_DEBUG": value}), 1, "RuntimeError: boom")


@pytest.mark.usefixtures("crashing_list")
def test_debug_flag_shows_the_traceback(cli: Cli) -> None:
    _assert_traceback_then_one_line(cli("--debug", "list"))


@pytest.mark.usefixtures("crashing_list")
@pytest.mark.parametrize("value", ["1", "true"])
def test_debug_env_shows_the_traceback(cli: Cli, value: str) -> None:
    _assert_traceback_then_one_line(cli("list", env={"USERSCTL_DEBUG": value}))


_CRASHING_MAIN = """
import sys
import usersctl.crud

def boom(**kwargs):
    raise RuntimeError("boom")

usersctl.crud.user_query = boom
from usersctl.cli import main
main()
"""


@pytest.mark.slow
def test_debug_flag_shows_the_traceback_in_a_real_process(sqlite_url: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _CRASHING_MAIN, "--debug", "list"],
        env={**os.environ, "USERSCTL_DATABASE_URL": sqlite_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert "Traceback (most recent call last)" in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: unexpected error")


def test_unexpected_error_in_a_write_changes_nothing(
    cli: Cli, two_users: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import usersctl.crud

    before = snapshot(cli)
    set_active = usersctl.crud.set_active

    def disable_then_crash(**kwargs: Any) -> Any:
        set_active(**kwargs)  # the change is flushed, then the bug strikes: roll back
        raise RuntimeError("boom")

    monkeypatch.setattr(usersctl.crud, "set_active", disable_then_crash)
    assert_fails(cli("disable", str(two_users[0])), 1, "RuntimeError: boom", "--debug")
    assert snapshot(cli) == before


# ---------------- 2: usage

USAGE_ERRORS: list[tuple[list[str], str | None, tuple[str, ...]]] = [
    (["--no-such-option", "list"], None, ("No such option: --no-such-option",)),
    (["list", "--no-such-option"], None, ("No such option: --no-such-option",)),
    (["frobnicate"], None, ("No such command 'frobnicate'",)),
    (
        ["create", "--email", "new@example.com", "--random-password"],
        None,
        ("Missing option '--name'",),
    ),
    (["get"], None, ("Missing argument 'USER'",)),
    (
        ["create", "--name", "New", "--email", "new@example.com"],
        None,
        ("no password source", "--password-stdin", "--random-password"),
    ),
    (["passwd", "1"], None, ("no password source", "--password-stdin")),
    (["verify-password", "1"], None, ("no password source", "--password-stdin")),
    (
        [
            "create",
            "--name",
            "New",
            "--email",
            "new@example.com",
            "--password-stdin",
            "--random-password",
        ],
        "a fine password\n",
        ("--password-stdin", "--random-password", "together"),
    ),  # fmt: skip
    (
        ["passwd", "1", "--password-stdin", "--random-password"],
        "a fine password\n",
        ("--password-stdin", "--random-password", "together"),
    ),
    (["list", "-o", "yaml"], None, ("invalid -o 'yaml': give table, json",)),
    (["get", "1", "--output", "xml"], None, ("invalid --output 'xml': give table",)),
    (["list", "--sort", "password_hash"], None, ("cannot sort by 'password_hash'",)),
    (["list", "--limit", "-1"], None, ("'--limit'",)),
    (["update", "1"], None, ("nothing to change",)),
    (["delete", "1"], None, ("--yes",)),
]


@pytest.mark.parametrize(
    ("args", "stdin", "fragments"),
    USAGE_ERRORS,
    ids=[" ".join(args) for args, _, _ in USAGE_ERRORS],
)
def test_usage_error(
    cli: Cli,
    two_users: list[int],
    args: list[str],
    stdin: str | None,
    fragments: tuple[str, ...],
) -> None:
    before = snapshot(cli)
    assert_fails(cli(*args, input=stdin), 2, *fragments)
    assert snapshot(cli) == before


# ---------------- 3: not found

NOT_FOUND_COMMANDS: list[list[str]] = [
    ["get"],
    ["update", "--name", "Nobody"],
    ["passwd", "--random-password"],
    ["disable"],
    ["enable"],
    ["delete", "--yes"],
]


@pytest.mark.parametrize("ref", ["999", "nobody@example.com"])
@pytest.mark.parametrize("command", NOT_FOUND_COMMANDS, ids=lambda c: c[0])
def test_unknown_user(cli: Cli, two_users: list[int], command: list[str], ref: str) -> None:
    before = snapshot(cli)
    name, *options = command
    assert_fails(cli(name, ref, *options), 3, f"user not found: {ref}")
    assert snapshot(cli) == before


@pytest.mark.parametrize("command", [["disable"], ["enable"], ["delete", "--yes"]])
def test_one_unknown_user_among_several_changes_none(
    cli: Cli, two_users: list[int], command: list[str]
) -> None:
    cli.ok("disable", str(two_users[1]))  # so that `enable` would change something too
    before = snapshot(cli)
    name, *options = command
    result = cli(name, str(two_users[0]), "999", str(two_users[1]), *options)
    assert_fails(result, 3, "not found: 999")
    assert snapshot(cli) == before


# ---------------- 4: conflict


@pytest.mark.parametrize("email", ["ada@example.com", "ADA@Example.COM", "ada@EXAMPLE.com"])
def test_create_duplicate_email(cli: Cli, two_users: list[int], email: str) -> None:
    before = snapshot(cli)
    result = cli("create", "--name", "Another Ada", "--email", email, "--random-password")
    assert_fails(result, 4, "email already taken: ada@example.com", f"user {two_users[0]}")
    assert snapshot(cli) == before


def test_update_to_a_taken_email(cli: Cli, two_users: list[int]) -> None:
    before = snapshot(cli)
    result = cli("update", "charles@example.com", "--email", "Ada@Example.com")
    assert_fails(result, 4, "email already taken: ada@example.com")
    assert snapshot(cli) == before


# ---------------- 5: invalid data

_CREATE = ["create", "--name", "Grace Hopper", "--email", "grace@example.com"]


def _create(**overrides: str) -> list[str]:
    """A create command line with one field replaced, and a random password."""
    fields = {"--name": "Grace Hopper", "--email": "grace@example.com", "--role": "user"}
    fields.update({f"--{key}": value for key, value in overrides.items()})
    return ["create", *[part for item in fields.items() for part in item], "--random-password"]


INVALID_DATA: list[tuple[str, list[str], str | None, tuple[str, ...]]] = [
    ("bad-email", _create(email="not-an-email"), None, ("invalid email",)),
    ("email-no-domain", _create(email="grace@"), None, ("invalid email",)),
    ("empty-name", _create(name=""), None, ("invalid name", "empty")),
    ("blank-name", _create(name=" \t "), None, ("invalid name", "empty")),
    ("name-201", _create(name="x" * 201), None, ("invalid name", "200")),
    ("name-esc", _create(name="Grace\x1b[31mHopper"), None, ("invalid name", "U+001B")),
    ("name-nul", _create(name="Grace\x00Hopper"), None, ("invalid name", "U+0000")),
    ("name-newline", _create(name="Grace\nHopper"), None, ("invalid name", "U+000A")),
    ("role-upper", _create(role="Admin"), None, ("invalid role",)),
    ("role-digit-first", _create(role="1x"), None, ("invalid role",)),
    ("role-33", _create(role="r" * 33), None, ("invalid role",)),
    ("create-pw-7", [*_CREATE, "--password-stdin"], "s3v3n!!\n", ("password too short", "15")),
    (
        "create-pw-1025",
        [*_CREATE, "--password-stdin"],
        "p" * 1025 + "\n",
        ("password too long", "1024"),
    ),
    ("create-no-stdin", [*_CREATE, "--password-stdin"], "", ("no password on standard input",)),
    ("passwd-pw-7", ["passwd", "1", "--password-stdin"], "s3v3n!!\n", ("password too short",)),
    (
        "passwd-pw-1025",
        ["passwd", "1", "--password-stdin"],
        "p" * 1025 + "\n",
        ("password too long",),
    ),
    ("passwd-no-stdin", ["passwd", "1", "--password-stdin"], "", ("no password on standard",)),
    ("update-bad-email", ["update", "1", "--email", "nope"], None, ("invalid email",)),
    ("update-blank-name", ["update", "1", "--name", "  "], None, ("invalid name", "empty")),
    ("update-name-esc", ["update", "1", "--name", "A\x1bB"], None, ("invalid name", "U+001B")),
    ("update-bad-role", ["update", "1", "--role", "Admin"], None, ("invalid role",)),
]


@pytest.mark.parametrize(
    ("args", "stdin", "fragments"),
    [case[1:] for case in INVALID_DATA],
    ids=[case[0] for case in INVALID_DATA],
)
def test_invalid_data_changes_nothing(
    cli: Cli,
    two_users: list[int],
    args: list[str],
    stdin: str | None,
    fragments: tuple[str, ...],
) -> None:
    assert two_users[0] == 1  # the cases name user 1
    before = snapshot(cli)
    result = cli(*args, input=stdin)
    assert_fails(result, 5, *fragments)
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr
    assert snapshot(cli) == before


# ---------------- 6: verification


def test_verification_failures_are_indistinguishable(cli: Cli, seed: Seeder) -> None:
    ada, _grace = seed(
        [
            {"name": "Ada Lovelace", "email": "ada@example.com"},
            {"name": "Grace Hopper", "email": "grace@example.com", "is_active": False},
        ]
    )
    cases = {
        "wrong password": ("ada@example.com", "not the password"),
        "wrong password by id": (str(ada), "not the password"),
        "unknown user": ("nobody@example.com", SEED_PASSWORD),
        "unknown id": ("999", SEED_PASSWORD),
        "disabled user": ("grace@example.com", SEED_PASSWORD),
    }
    messages: set[str] = set()
    for label, (ref, password) in cases.items():
        result = cli("verify-password", ref, "--password-stdin", input=password + "\n")
        assert result.exit_code == 6, label
        assert_fails(result, 6, "password verification failed")
        messages.add(result.stderr)
    assert len(messages) == 1, messages  # nothing tells which accounts exist
    # The right password for the active user does verify (the failures above are real ones).
    cli.ok("verify-password", "ADA@example.com", "--password-stdin", input=SEED_PASSWORD + "\n")


# ---------------- 7: database unavailable


def test_not_a_database_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    content = random.Random(7).randbytes(16384)
    path.write_bytes(content)
    url = f"sqlite:///{path}"
    for args in (["list"], ["get", "1"], NEW_USER, ["db", "upgrade"]):
        assert_fails(invoke(url, *args), 7, str(path), "not a usable SQLite database")
        assert path.read_bytes() == content, args
        assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"], args


def test_missing_folder_is_not_created(tmp_path: Path) -> None:
    folder = tmp_path / "no" / "such" / "folder"
    url = f"sqlite:///{folder / 'users.db'}"
    assert_fails(invoke(url, "list"), 7, "no database at", str(folder))
    assert_fails(invoke(url, "db", "upgrade"), 7, "folder", str(folder), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_read_only_database(sqlite_url: str) -> None:
    sql(
        sqlite_url,
        "INSERT INTO users (name, email, password_hash, role, is_active, created_at, "
        "updated_at) VALUES ('A', 'a@example.com', 'x', 'user', true, CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)",
    )
    before = sql(sqlite_url, "SELECT * FROM users")
    read_only = f"sqlite:///file:{make_url(sqlite_url).database}?mode=ro&uri=true"
    assert_fails(invoke(read_only, "disable", "1"), 7, "read-only")
    assert sql(sqlite_url, "SELECT * FROM users") == before


@pytest.fixture
def write_lock(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction, held for the whole test."""
    connection = sqlite3.connect(make_url(sqlite_url).database or "", isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    yield connection
    connection.rollback()
    connection.close()


def test_busy_past_the_timeout(sqlite_url: str, write_lock: sqlite3.Connection) -> None:
    result = invoke(sqlite_url, *NEW_USER, env={"USERSCTL_BUSY_TIMEOUT": "0"})
    assert_fails(result, 7, "database busy", "USERSCTL_BUSY_TIMEOUT")
    write_lock.rollback()
    assert sql(sqlite_url, "SELECT count(*) FROM users") == [(0,)]


def test_a_reader_is_not_blocked_by_a_writer(
    sqlite_url: str, write_lock: sqlite3.Connection
) -> None:
    """WAL lets readers run while another process writes: only writes wait for the lock."""
    result = invoke(sqlite_url, "list", "-o", "json", env={"USERSCTL_BUSY_TIMEOUT": "0"})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_unsupported_driver_is_a_clear_usage_error() -> None:
    result = invoke("postgresql+nosuchdriver://x/y", "list")
    assert_fails(result, 2, "unsupported database URL scheme 'postgresql+nosuchdriver'")


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None, reason="the MySQL driver is installed"
)
def test_missing_driver_names_the_extra() -> None:
    # mysqlclient (SQLAlchemy's default MySQL driver) is not what usersctl ships.
    result = invoke("mysql+mysqldb://user:pw@127.0.0.1/users", "list")
    assert_fails(
        result,
        7,
        "driver for mysql+mysqldb is not installed",
        "use mysql+pymysql:// (pip install 'usersctl[mysql]')",
    )


def test_bare_engine_urls_use_the_drivers_usersctl_ships() -> None:
    result = invoke("mysql://user:pw@127.0.0.1:1/users", "list")
    assert_fails(result, 7, "mysql+pymysql://user:***@127.0.0.1:1/users unavailable")


def test_unparseable_url_is_a_usage_error() -> None:
    assert_fails(invoke("not a database url", "list"), 2, "invalid database URL")


def test_url_with_a_bad_port_is_a_usage_error() -> None:
    result = invoke("postgresql+psycopg://admin:s3cretpw@127.0.0.1:notaport/users", "list")
    assert_fails(result, 2, "invalid database URL")
    assert "s3cretpw" not in result.stderr


@pytest.fixture
def postgres_url() -> str:
    url = postgres_admin_url()
    if url is None:
        pytest.skip("no PostgreSQL server (USERSCTL_TEST_POSTGRES_URL not set)")
    return url


def test_postgres_wrong_password(postgres_url: str) -> None:
    wrong = "Wr0ng-Pw-q7Zx"
    url = make_url(postgres_url).set(password=wrong).render_as_string(hide_password=False)
    for env in ({}, {"USERSCTL_DEBUG": "1"}):
        result = invoke(url, "list", env=env)
        assert result.exit_code == 7, result.stderr
        assert wrong not in result.stdout + result.stderr
        if not env:
            assert_fails(result, 7, "unavailable", "***")


def test_postgres_refused_port(postgres_url: str) -> None:
    url = make_url(postgres_url).set(host="127.0.0.1", port=1)
    result = invoke(url.render_as_string(hide_password=False), "list")
    assert_fails(result, 7, "127.0.0.1:1", "unavailable")


@pytest.mark.parametrize("how", ["env", "flag", "debug"])
def test_url_password_is_masked_in_errors(how: str) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://admin:s3cretpw@127.0.0.1:1/users"
    if how == "flag":
        result = CliRunner().invoke(app, ["--database-url", url, "list"])
    else:
        result = invoke(url, "list", env={"USERSCTL_DEBUG": "1"} if how == "debug" else {})
    assert result.exit_code == 7, result.stderr
    assert "s3cretpw" not in result.stdout + result.stderr
    assert "admin:***@127.0.0.1:1" in result.stderr


def test_url_password_is_masked_in_messages(empty_db_url: str) -> None:
    """Also the success message naming the database it initialised."""
    result = invoke(empty_db_url, "list")
    assert result.exit_code == 0, result.stderr
    assert "Initialised the database at" in result.stderr
    password = make_url(empty_db_url).password
    if password:
        assert str(password) not in result.stderr
        assert ":***@" in result.stderr


def test_a_wal_database_in_a_read_only_folder_says_why_it_cannot_open(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder or mount: SQLite cannot create the -shm file a WAL database
    needs even to be read. It said only "check the path and its permissions"."""
    from sqlalchemy.exc import OperationalError

    from usersctl.database import describe_db_error

    folder = tmp_path / "replica"
    folder.mkdir()
    path = folder / "users.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite:///{path}")
    error = OperationalError("SELECT 1", {}, Exception("unable to open database file"))
    assert "check the path" in describe_db_error(error, engine, 10)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode))
    message = describe_db_error(error, engine, 10)
    assert f"its folder {folder} is read-only" in message and "-shm" in message
    engine.dispose()


# ---------------- 8: schema mismatch


def test_database_behind_head(cli: Cli) -> None:
    cli.ok("db", "downgrade", "0001", "--yes", "--discard-audit-trail")
    for args in (["list"], ["get", "1"], NEW_USER):
        assert_fails(cli(*args), 8, "revision 0001", "usersctl db upgrade")
    assert sql(cli.url, "SELECT version_num FROM alembic_version") == [("0001",)]  # not silent
    cli.ok("db", "upgrade")
    assert cli.json("list") == []


def test_database_newer_than_the_tool(cli: Cli) -> None:
    sql(cli.url, "UPDATE alembic_version SET version_num = '9999'")
    for args in (["list"], ["disable", "1"]):
        assert_fails(cli(*args), 8, "9999", "newer")
    assert sql(cli.url, "SELECT version_num FROM alembic_version") == [("9999",)]


def create_tutorial_table(url: str) -> None:
    """The tutorial app's `create_all`: bare VARCHARs (255 where MariaDB needs a length)."""
    varchar = String().with_variant(String(255), "mysql", "mariadb")
    metadata = MetaData()
    users = Table(
        "users",
        metadata,
        Column("id", Integer, primary_key=True, index=True),
        Column("name", varchar, nullable=False),
        Column("email", varchar, nullable=False, unique=True, index=True),
        Column("password", varchar, nullable=False),
    )
    engine = create_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                users.insert().values(id=1, name="Ada", email="ada@example.com", password="plain")
            )
    finally:
        engine.dispose()


def test_tutorial_database_must_be_adopted_explicitly(empty_db_url: str) -> None:
    create_tutorial_table(empty_db_url)
    for args in (["list"], ["get", "1"]):
        assert_fails(invoke(empty_db_url, *args), 8, "adopt", "usersctl db upgrade")
    assert sql(empty_db_url, "SELECT * FROM users") == [(1, "Ada", "ada@example.com", "plain")]
    engine = create_engine(empty_db_url)
    try:
        assert inspect(engine).get_table_names() == ["users"]  # nothing stamped
    finally:
        engine.dispose()


def test_foreign_tables_are_refused(empty_db_url: str) -> None:
    sql(empty_db_url, "CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    assert_fails(invoke(empty_db_url, "list"), 8, "did not create")


def test_a_failing_read_begin_is_translated_like_any_driver_error() -> None:
    """A read transaction's BEGIN goes straight to the SQLite driver; if it fails (here: a
    read session nested in a write session on the one connection of an in-memory
    database), the error is SQLAlchemy's, which translate_errors maps to exit 7."""
    from sqlalchemy import text

    from usersctl.config import load_settings
    from usersctl.database import Database
    from usersctl.errors import DatabaseUnavailable

    database = Database(load_settings(database_url="sqlite://"))
    with database.session(write=True) as outer:
        outer.execute(text("SELECT 1"))
        with pytest.raises(DatabaseUnavailable), database.session(write=False) as inner:
            inner.execute(text("SELECT 1"))
    database.dispose()


# ---------------- 7: a stored value another program wrote


@pytest.mark.parametrize("stored", ["garbage", "2024-13-45 00:00:00", "", 1700000000, b"\x00"])
def test_a_time_that_is_no_time_is_exit_7_naming_it(
    tmp_path: Path, sqlite_template: Path, stored: object
) -> None:
    """SQLite keeps times as text, which another program may fill with anything (a Unix
    time, a BLOB). Every command that reads the row says which value it cannot read (exit
    7), never "a bug"."""
    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    invoke(url, "create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input=SEED_PASSWORD + "\n")  # fmt: skip
    sql(url, "UPDATE users SET updated_at = :stored", {"stored": stored})
    for args in (["list", "-o", "json"], ["get", "ada@example.com"], ["list", "-o", "csv"]):
        result = invoke(url, *args)
        assert_error(result, 7, f"the database holds a time usersctl cannot read ({stored!r})")
        assert "bug" not in result.stderr
    assert_error(invoke(url, "export"), 7, f"cannot read ({stored!r})")
    sql(url, "UPDATE users SET updated_at = created_at")
    assert invoke(url, "get", "ada@example.com").exit_code == 0


@pytest.mark.parametrize("stored", ["[", "null", '"s"', "5", '{"name": {"before": [1]}}'])
def test_audit_changes_another_program_wrote_are_exit_7_naming_the_entry(
    tmp_path: Path, sqlite_template: Path, stored: str
) -> None:
    """`usersctl audit` answered "a bug" (exit 1) in every format for one such row."""
    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    sql(url, "INSERT INTO audit_log (at, actor, action, user_id, user_email, changes) "
             "VALUES ('2026-01-01 00:00:00', 'app', 'x', 1, 'e', :c)", {"c": stored})  # fmt: skip
    (entry,) = sql(url, "SELECT id FROM audit_log WHERE actor = 'app'")
    for output in ("table", "json", "jsonl", "plain"):
        result = invoke(url, "audit", "-o", output)
        assert_error(result, 7, f"audit entry {entry[0]} holds changes usersctl cannot read")
        assert "bug" not in result.stderr


def test_a_stored_time_with_an_offset_is_exported_as_get_shows_it(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Text another program wrote with an offset is converted to UTC, not cut."""
    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    invoke(url, "create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input=SEED_PASSWORD + "\n")  # fmt: skip
    sql(url, "UPDATE users SET updated_at = '2024-01-01 00:00:00+05:00'")
    shown = json.loads(invoke(url, "get", "ada@example.com", "-o", "json").stdout)
    exported = json.loads(invoke(url, "export").stdout.splitlines()[0])
    assert shown["updated_at"] == exported["updated_at"] == "2023-12-31T19:00:00Z"


@pytest.mark.parametrize("engine_name", ["mariadb"])
def test_a_mariadb_zero_date_is_exit_7(cli: Cli) -> None:
    """MariaDB's default sql_mode lets another program store 0000-00-00 00:00:00."""
    cli.create("Ada", "ada@example.com")
    engine = create_engine(cli.url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET SESSION sql_mode = ''"))
            connection.execute(text("UPDATE users SET updated_at = '0000-00-00 00:00:00'"))
    finally:
        engine.dispose()
    for args in (["get", "ada@example.com"], ["list"], ["export"]):
        assert_error(cli(*args), 7, "cannot read ('0000-00-00 00:00:00')")


def test_an_unreadable_time_over_http_is_500_without_retry(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Retrying cannot help: not the 503 and Retry-After of a busy database."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from usersctl.api.app import create_app
    from usersctl.config import load_settings

    path = tmp_path / "users.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    invoke(url, "create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input=SEED_PASSWORD + "\n")  # fmt: skip
    token = json.loads(invoke(url, "token", "create", "r", "--scope", "read", "-o", "json")
                       .stdout)["token"]  # fmt: skip
    sql(url, "UPDATE users SET updated_at = 'garbage'")
    app = create_app(load_settings(database_url=url))
    with TestClient(app) as client:
        response = client.get("/users/", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 500, response.text
        assert "retry-after" not in response.headers
        assert "cannot read ('garbage')" in response.json()["detail"]
    app.state.server.database.dispose()


@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_a_nul_postgresql_refuses_is_invalid_data(db_url: str) -> None:
    """Whatever path a NUL takes to PostgreSQL (whose text cannot hold one), it is exit 5
    (HTTP 422), not "a bug"."""
    from sqlalchemy import select

    from usersctl.config import load_settings
    from usersctl.database import Database
    from usersctl.errors import InvalidData
    from usersctl.models import AuditEntry

    database = Database(load_settings(database_url=db_url))
    try:
        with pytest.raises(InvalidData, match="must not contain NUL"):
            with database.session(write=False) as session:
                session.execute(select(AuditEntry).where(AuditEntry.actor == "a\x00"))
    finally:
        database.dispose()
