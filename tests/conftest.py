"""Fixtures: every test gets its own database, copied from a template migrated once.

Engines: SQLite always; PostgreSQL when USERSCTL_TEST_POSTGRES_URL names a server (an
account allowed to CREATE DATABASE). Without it the PostgreSQL cases skip on a laptop and
fail when CI is set, so CI can never pass by skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from usersctl.cli import app
from usersctl.config import load_settings
from usersctl.database import Database

POSTGRES_ENV = "USERSCTL_TEST_POSTGRES_URL"
ENGINES = ("sqlite", "postgresql")
# A real argon2id hash of "correct horse battery", made once: seeding users through SQL
# with it keeps tests fast; tests of hashing itself go through the CLI.
SEED_PASSWORD = "correct horse battery"


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {POSTGRES_ENV} is not: the PostgreSQL suite must run")
        return None
    return url


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer config, database or debug flag leaks into a test."""
    for name in list(os.environ):
        if name.startswith("USERSCTL_") and name != POSTGRES_ENV:
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


@pytest.fixture(scope="session")
def seed_hash() -> str:
    from usersctl.passwords import hash_password

    return hash_password(SEED_PASSWORD)


class PostgresServer:
    """Creates one database per test from a template migrated once per session."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.template = f"usersctl_tmpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def url_for(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        with self.engine.connect() as connection:
            clause = f" TEMPLATE {template}" if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self.engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        for name in self.created:
            self.drop(name)
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    admin = postgres_admin_url()
    if admin is None:
        yield None
        return
    server = PostgresServer(admin)
    _migrate(server.create(server.template))
    yield server
    server.close()


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(
    engine_name: str,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_server: PostgresServer | None,
) -> Iterator[str]:
    """A migrated, empty database of its own for this test."""
    if engine_name == "sqlite":
        path = tmp_path / "users.db"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        yield f"sqlite:///{path}"
        return
    if postgres_server is None:
        pytest.skip(f"no PostgreSQL server ({POSTGRES_ENV} not set)")
    name = f"usersctl_t_{uuid.uuid4().hex[:12]}"
    yield postgres_server.create(name, template=postgres_server.template)
    postgres_server.drop(name)


@pytest.fixture
def empty_db_url(
    engine_name: str, tmp_path: Path, postgres_server: PostgresServer | None
) -> Iterator[str]:
    """A database with no tables at all (SQLite: a path that does not exist yet)."""
    if engine_name == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if postgres_server is None:
        pytest.skip(f"no PostgreSQL server ({POSTGRES_ENV} not set)")
    name = f"usersctl_e_{uuid.uuid4().hex[:12]}"
    yield postgres_server.create(name)
    postgres_server.drop(name)


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


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(url=db_url, runner=CliRunner())


@dataclass
class Seeder:
    """Inserts users directly with a ready-made hash (fast setup for read tests)."""

    url: str
    password_hash: str

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        from usersctl import crud
        from usersctl.schemas import UserCreate

        database = Database(load_settings(database_url=self.url))
        ids: list[int] = []
        with database.session(write=True) as session:
            for row in rows:
                user, _ = crud.create_user(
                    session=session,
                    user_in=UserCreate.model_validate(row),
                    password_hash=self.password_hash,
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
