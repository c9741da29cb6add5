"""Fixtures: every test gets its own database, copied from a template migrated once.

Engines: SQLite always; PostgreSQL when USERSCTL_TEST_POSTGRES_URL and MariaDB when
USERSCTL_TEST_MYSQL_URL name a server (an account allowed to CREATE DATABASE). Without them
those cases skip on a laptop and fail when CI is set, so CI never passes by skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from usersctl.cli import app
from usersctl.config import load_settings
from usersctl.database import Database

SERVER_ENVS = {
    "postgresql": "USERSCTL_TEST_POSTGRES_URL",
    "mariadb": "USERSCTL_TEST_MYSQL_URL",
}
POSTGRES_ENV = SERVER_ENVS["postgresql"]
ENGINES = ("sqlite", "postgresql", "mariadb")
# Seeded users get a real argon2id hash of this password, made once per session.
SEED_PASSWORD = "correct horse battery"


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the app, the root included."""
    found: list[tuple[str, ...]] = [()]

    def walk(group: object, prefix: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            found.append((*prefix, name))
            walk(command, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return found


COMMAND_PATHS = command_paths()


def server_admin_url(engine: str) -> str | None:
    """The test server's URL for `engine`; None (skip) on a laptop, a failure under CI."""
    variable = SERVER_ENVS[engine]
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {variable} is not: the {engine} suite must run")
        return None
    return url


def postgres_admin_url() -> str | None:
    return server_admin_url("postgresql")


# A skip for want of a server names its engine; the summary counts them, one line per engine.
SERVER_SKIP = re.compile(r"\bno (postgresql|mariadb) server\b", re.IGNORECASE)


def _server_skip_engine(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple | list) and len(longrepr) == 3:
        match = SERVER_SKIP.search(str(longrepr[2]))
        if match:
            return match.group(1).lower()
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter,
) -> Generator[None, None, None]:
    """Fold the skips for want of a server into one line per engine.

    `-ra` would list each of them (hundreds) in the short summary, burying the other skip
    reasons; those still show one by one. The final counts are left as they are.
    """
    skipped: list[pytest.TestReport] = terminalreporter.stats.get("skipped", [])
    by_engine: dict[str, int] = {}
    kept = []
    for report in skipped:
        engine = _server_skip_engine(report)
        if engine is None:
            kept.append(report)
        else:
            by_engine[engine] = by_engine.get(engine, 0) + 1
    if by_engine:
        terminalreporter.stats["skipped"] = kept
    try:
        yield
    finally:
        if by_engine:
            terminalreporter.stats["skipped"] = skipped
            for engine, count in sorted(by_engine.items()):
                terminalreporter.write_line(
                    f"SKIPPED {count} {engine} test(s): no {engine} server "
                    f"({SERVER_ENVS[engine]} not set)",
                    yellow=True,
                )


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer config, database or debug flag leaks into a test."""
    for name in list(os.environ):
        if name.startswith("USERSCTL_") and name not in SERVER_ENVS.values():
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / ".local" / "share"))


def _migrate(url: str) -> None:
    from usersctl import migrations

    database = Database(load_settings(database_url=url))
    migrations.upgrade(database, "head")
    database.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> Path:
    """A SQLite file at head of this test's own (0600), for real processes to run on."""
    path = tmp_path / "users.db"
    path.write_bytes(sqlite_template.read_bytes())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def seed_hash() -> str:
    from usersctl.passwords import hash_password

    return hash_password(SEED_PASSWORD)


def prehashed_rows(path: Path, count: int, password_hash: str) -> Path:
    """A JSONL import file of `count` users (u0@example.com, ...) sharing one hash."""
    path.write_text(
        "".join(
            json.dumps(
                {"name": f"U{n}", "email": f"u{n}@example.com", "password_hash": password_hash}
            )
            + "\n"
            for n in range(count)
        )
    )
    return path


class DatabaseServer:
    """One database per test on a real server, copied from a template migrated once.

    PostgreSQL copies with CREATE DATABASE ... TEMPLATE; MariaDB has no templates, so its
    tables are copied with CREATE TABLE ... LIKE and INSERT ... SELECT.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.kind = self.engine.dialect.name  # "postgresql", "mysql" or "mariadb"
        self.quote = self.engine.dialect.identifier_preparer.quote
        self.created: list[str] = []
        self.template = self.create("usersctl_tmpl")
        _migrate(self.url_for(self.template))
        self.template_tables = self._tables(self.template)

    def url_for(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _tables(self, database: str) -> list[str]:
        engine = create_engine(self.url_for(database))
        names = inspect(engine).get_table_names()
        engine.dispose()
        return names

    def create(self, prefix: str, *, from_template: bool = False) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as connection:
            if self.kind == "postgresql":
                clause = f" TEMPLATE {self.quote(self.template)}" if from_template else ""
                connection.execute(text(f"CREATE DATABASE {self.quote(name)}{clause}"))
            else:
                # The server's default character set (latin1 upstream): usersctl must
                # create its tables utf8mb4 itself.
                connection.execute(text(f"CREATE DATABASE {self.quote(name)}"))
                for table in self.template_tables if from_template else []:
                    target = f"{self.quote(name)}.{self.quote(table)}"
                    source = f"{self.quote(self.template)}.{self.quote(table)}"
                    connection.execute(text(f"CREATE TABLE {target} LIKE {source}"))
                    connection.execute(text(f"INSERT INTO {target} SELECT * FROM {source}"))
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        force = " WITH (FORCE)" if self.kind == "postgresql" else ""
        with self.engine.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {self.quote(name)}{force}"))
        self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            self.drop(name)
        self.engine.dispose()


@pytest.fixture(scope="session")
def database_servers() -> Iterator[dict[str, DatabaseServer]]:
    """Servers are started lazily, on first use by a test of their engine."""
    servers: dict[str, DatabaseServer] = {}
    yield servers
    for server in servers.values():
        server.close()


def _server(engine: str, servers: dict[str, DatabaseServer]) -> DatabaseServer:
    if engine not in servers:
        url = server_admin_url(engine)
        if url is None:
            pytest.skip(f"no {engine} server ({SERVER_ENVS[engine]} not set)")
        servers[engine] = DatabaseServer(url)
    return servers[engine]


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(
    engine_name: str,
    tmp_path: Path,
    sqlite_template: Path,
    database_servers: dict[str, DatabaseServer],
) -> Iterator[str]:
    """A migrated, empty database of its own for this test."""
    if engine_name == "sqlite":
        path = tmp_path / "users.db"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        yield f"sqlite:///{path}"
        return
    server = _server(engine_name, database_servers)
    name = server.create("usersctl_t", from_template=True)
    yield server.url_for(name)
    server.drop(name)


@pytest.fixture
def empty_db_url(
    engine_name: str, tmp_path: Path, database_servers: dict[str, DatabaseServer]
) -> Iterator[str]:
    """A database with no tables at all (SQLite: an empty file, as `db upgrade` creates it;
    usersctl creates no file anywhere else)."""
    if engine_name == "sqlite":
        path = tmp_path / "fresh.db"
        path.touch(mode=0o600)
        yield f"sqlite:///{path}"
        return
    server = _server(engine_name, database_servers)
    name = server.create("usersctl_e")
    yield server.url_for(name)
    server.drop(name)


@dataclass
class Cli:
    """Runs the real Typer app against one database, like a user at a shell would."""

    url: str
    runner: CliRunner

    def __call__(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        environment = {"USERSCTL_DATABASE_URL": self.url, **(env or {})}
        return self.runner.invoke(app, list(args), input=input, env=environment)

    def ok(self, *args: str, input: str | bytes | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str, input: str | bytes | None = None) -> Any:
        return json.loads(self.ok(*args, "-o", "json", input=input).stdout)

    def create(self, name: str, email: str, *extra: str, password: str = SEED_PASSWORD) -> Any:
        return self.json(
            "create", "--name", name, "--email", email, "--password-stdin", *extra,
            input=password + "\n",
        )  # fmt: skip


# Their commands run twice: with validation in this process (inputs under 1 MiB), and
# forked into a child process (usersctl.bulk_worker, what bigger inputs and standard input
# take). Elsewhere validation forks as it would for a user ("default").
BOTH_VALIDATIONS = {"test_bulk", "test_sync", "test_import_edge_cases", "test_bulk_worker"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    chosen = any(
        "validation" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")
    )
    if "cli" in metafunc.fixturenames and metafunc.module.__name__ in BOTH_VALIDATIONS:
        if not chosen:
            metafunc.parametrize("validation", ["here", "forked"], indirect=True)


@pytest.fixture
def validation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where an import validates its input: "here" (never forked, as on Windows), "forked"
    (every input forks), or "default" (1 MiB or more and standard input fork)."""
    from usersctl import bulk_worker

    mode = str(getattr(request, "param", "default"))
    if mode == "forked":
        monkeypatch.setattr(bulk_worker, "FORK_MIN_BYTES", 0)
    elif mode == "here":
        monkeypatch.setattr(bulk_worker, "_fork", lambda *_: None)
    return mode


@pytest.fixture
def cli(db_url: str, validation: str) -> Cli:
    return Cli(url=db_url, runner=CliRunner())


@dataclass
class Seeder:
    """Inserts users directly with a ready-made hash (fast setup for read tests)."""

    url: str
    password_hash: str

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        from usersctl import crud
        from usersctl.audit import Trail
        from usersctl.schemas import UserCreate

        database = Database(load_settings(database_url=self.url))
        ids: list[int] = []
        with database.session(write=True) as session:
            for row in rows:
                user, _ = crud.create_user(
                    session=session,
                    user_in=UserCreate.model_validate(row),
                    password_hash=self.password_hash,
                    trail=Trail(actor="test-seed"),
                )
                ids.append(user.id)
        database.dispose()
        return ids


@pytest.fixture
def seed(db_url: str, seed_hash: str) -> Seeder:
    return Seeder(url=db_url, password_hash=seed_hash)


def assert_error(result: Result, code: int, *fragments: str) -> None:
    """The documented exit code, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
