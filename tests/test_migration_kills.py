"""SIGKILL after every statement of `db upgrade`, on every engine, from a tutorial database
and from an empty one: the next plain `db upgrade` always reaches head with every row.

MariaDB commits each DDL statement on its own, so a killed upgrade leaves the schema part
way between two revisions; every migration step is re-runnable (usersctl/migration_ops.py)
and the next upgrade finishes it. SQLite and PostgreSQL run each upgrade in one
transaction: there the database is also checked to be at the old state or the new one.

The moment: usersctl's test-only switch USERSCTL_TEST_KILL_AFTER_STATEMENTS=N makes the
process SIGKILL itself right after the Nth statement of the migration that changes
something. The number of such statements is counted on a control run in this process;
then one real process per N runs `usersctl db upgrade` on its own copy of the start state
(every N on MariaDB; a spread of seven on the engines where the upgrade is one
transaction). The processes swap in cheap argon2 parameters (hashing is not tested here).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    text,
)
from typer.testing import CliRunner

from conftest import Cli, DatabaseServer, _server
from usersctl import passwords
from usersctl.migrations import _CHANGING
from usersctl.revision import HEAD

KILL = "USERSCTL_TEST_KILL_AFTER_STATEMENTS"
CONCURRENCY = 6
CHEAP = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}
WRAPPER = f"""
import sys
from argon2 import PasswordHasher
import usersctl.passwords
usersctl.passwords._hasher = PasswordHasher(**{CHEAP!r})
sys.argv[0] = "usersctl"
from usersctl.cli import main
main()
"""

# What the tutorial app stored: untrimmed names, mixed-case emails, plaintext passwords,
# two of which look like hashes (they are plaintext all the same and must be hashed).
# Latin-1 names only: on a latin1 MariaDB server the tutorial's table is latin1.
TUTORIAL_ROWS = [
    (1, " Zoë Smith ", "Zoe@Example.COM", "plain-secret-1"),
    (2, "José", "jose@example.com", "$2b$12$" + "a" * 53),
    (3, "Ada", "ADA@example.org", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"),
]
TUTORIAL_COLUMNS = ["id", "name", "email", "password"]


def tutorial_table(metadata: MetaData) -> Table:
    """The tutorial's `create_all`: bare VARCHARs (255 where MariaDB needs a length), in
    the database's default character set."""
    varchar = String().with_variant(String(255), "mysql", "mariadb")
    return Table(
        "users",
        metadata,
        Column("id", Integer, primary_key=True, index=True),
        Column("name", varchar, nullable=False),
        Column("email", varchar, nullable=False, unique=True, index=True),
        Column("password", varchar, nullable=False),
    )


def make_tutorial(url: str) -> None:
    engine = create_engine(url)
    metadata = MetaData()
    users = tutorial_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(users), [dict(zip(TUTORIAL_COLUMNS, r, strict=True)) for r in TUTORIAL_ROWS]
        )
    engine.dispose()


class Databases:
    """Fresh databases of one engine, each made to a start state."""

    def __init__(
        self, engine_name: str, tmp_path: Path, servers: dict[str, DatabaseServer]
    ) -> None:
        self.engine_name = engine_name
        self.tmp_path = tmp_path
        self.server = None if engine_name == "sqlite" else _server(engine_name, servers)
        self.count = 0

    def new(self, start: str) -> str:
        self.count += 1
        if self.server is None:
            url = f"sqlite:///{self.tmp_path / f'kill{self.count}.db'}"
        else:
            url = self.server.url_for(self.server.create("usersctl_k"))
        if start == "tutorial":
            make_tutorial(url)
            if self.server is None:
                Path(url.removeprefix("sqlite:///")).chmod(0o600)
        return url


def snapshot(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            version = None
            if "alembic_version" in names:
                version = connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).scalar()
            columns = (
                [c["name"] for c in inspect(engine).get_columns("users")]
                if "users" in names
                else []
            )
            rows: list[tuple[Any, ...]] = []
            if columns == TUTORIAL_COLUMNS:
                query = "SELECT id, name, email, password FROM users ORDER BY id"
                rows = [tuple(row) for row in connection.execute(text(query))]
            elif "password_hash" in columns and "password" not in columns:
                query = "SELECT id, name, email, password_hash FROM users ORDER BY id"
                rows = [tuple(row) for row in connection.execute(text(query))]
            collations = {}
            if engine.dialect.name in ("mysql", "mariadb"):
                query = (
                    "SELECT table_name, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                )
                found = {n.lower(): c for n, c in connection.execute(text(query))}
                collations = {n: c for n, c in found.items() if n in ("users", "audit_log")}
    finally:
        engine.dispose()
    return {
        "tables": names - {"alembic_version"},
        "version": version,
        "columns": columns,
        "rows": rows,
        "collations": collations,
    }


def assert_old_or_new(url: str, start: str) -> str:
    """SQLite and PostgreSQL: the untouched start state, or head; nothing in between."""
    state = snapshot(url)
    if state["version"] == HEAD:
        return "new"
    assert state["version"] is None, state
    if start == "empty":
        assert state["tables"] == set(), state
    else:
        assert state["tables"] == {"users"}, state
        assert state["columns"] == TUTORIAL_COLUMNS, state
        assert state["rows"] == TUTORIAL_ROWS, state
    return "old"


def assert_at_head_with_every_row(url: str, start: str) -> None:
    cli = Cli(url=url, runner=CliRunner())
    assert cli.json("db", "current")["state"] == "current"
    check = cli("db", "check")
    assert check.exit_code == 0, check.stderr
    state = snapshot(url)
    expected = (
        [(i, n.strip(), e.lower()) for i, n, e, _ in TUTORIAL_ROWS] if start == "tutorial" else []
    )
    assert [row[:3] for row in state["rows"]] == expected
    hasher = PasswordHasher()
    for (*_, password), (*_, stored) in zip(TUTORIAL_ROWS, state["rows"], strict=False):
        # Hashed exactly once, even the plaintext that looked like a hash.
        assert stored.startswith("$argon2id$"), stored
        assert hasher.verify(stored, password)
    if state["collations"]:
        assert state["collations"] == {"users": "utf8mb4_bin", "audit_log": "utf8mb4_bin"}


def count_statements(url: str) -> int:
    """A control run, in this process: how many changing statements the upgrade runs."""
    seen = [0]

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split(None, 1)
        if words and words[0].upper() in _CHANGING:
            seen[0] += 1

    event.listen(Engine, "after_cursor_execute", count)
    try:
        Cli(url=url, runner=CliRunner()).ok("db", "upgrade")
    finally:
        event.remove(Engine, "after_cursor_execute", count)
    return seen[0]


def run_all(commands: list[tuple[str, dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    """Run `usersctl db upgrade` once per (url, extra environment), CONCURRENCY at a time."""
    results: list[subprocess.CompletedProcess[str] | None] = [None] * len(commands)
    running: list[tuple[int, subprocess.Popen[str]]] = []

    def reap(index: int, proc: subprocess.Popen[str]) -> None:
        stdout, stderr = proc.communicate(timeout=180)
        results[index] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    for index, (url, extra) in enumerate(commands):
        if len(running) >= CONCURRENCY:
            reap(*running.pop(0))
        env = {**os.environ, "USERSCTL_DATABASE_URL": url, **extra}
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "db", "upgrade"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running.append((index, proc))
    for item in running:
        reap(*item)
    return [result for result in results if result is not None]


@pytest.fixture
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(**CHEAP))  # type: ignore[arg-type]


@pytest.fixture
def databases(
    engine_name: str, tmp_path: Path, database_servers: dict[str, DatabaseServer]
) -> Iterator[Databases]:
    dbs = Databases(engine_name, tmp_path, database_servers)
    yield dbs
    if dbs.server is not None:
        for name in [n for n in dbs.server.created if n.startswith("usersctl_k_")]:
            dbs.server.drop(name)
    else:
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["tutorial", "empty"])
def test_upgrade_killed_after_every_statement_is_finished_by_the_next(
    databases: Databases, engine_name: str, start: str, cheap_hashes: None
) -> None:
    total = count_statements(databases.new(start))
    assert total >= 15, total  # the whole path: 0001, 0002 and 0003
    points = list(range(1, total + 1))
    if engine_name != "mariadb":  # one transaction: a spread of points shows it is atomic
        points = sorted({1, 2, total // 4, total // 2, 3 * total // 4, total - 1, total})
    urls = [databases.new(start) for _ in points]
    killed = run_all([(url, {KILL: str(n)}) for n, url in zip(points, urls, strict=True)])
    for n, url, result in zip(points, urls, killed, strict=True):
        assert result.returncode == -signal.SIGKILL, (n, result.returncode, result.stderr)
        if engine_name != "mariadb":  # (every kill lands before the one COMMIT)
            assert assert_old_or_new(url, start) == "old", n
    for n, url in zip(points, urls, strict=True):
        result = Cli(url=url, runner=CliRunner())("db", "upgrade")
        assert result.exit_code == 0, (n, result.stderr)
        assert "Traceback" not in result.stderr
        assert_at_head_with_every_row(url, start)
