"""Differences between SQLite, PostgreSQL and MariaDB that usersctl must hide."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import SEED_PASSWORD, Cli, assert_error, server_admin_url
from usersctl import crud
from usersctl.cli import app
from usersctl.config import load_settings
from usersctl.database import Database
from usersctl.models import User

SERVER_ENGINES = ("postgresql", "mariadb")
DRIVERS = {"postgresql": ("psycopg", "postgres"), "mariadb": ("pymysql", "mysql")}


def invoke(url: str, *args: str) -> object:
    return CliRunner().invoke(app, list(args), env={"USERSCTL_DATABASE_URL": url})


def test_email_uniqueness_is_case_insensitive(cli: Cli) -> None:
    cli.create("Ada", "Ada@Example.com")
    result = cli(
        "create", "--name", "Imposter", "--email", "ADA@example.COM", "--password-stdin",
        input=SEED_PASSWORD + "\n",
    )  # fmt: skip
    assert_error(result, 4, "email already taken", "ada@example.com")
    assert [u["name"] for u in cli.json("list")] == ["Ada"]


def test_unique_violation_from_a_racing_writer_is_a_conflict(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between "is the email free?" and INSERT: the database's unique index
    must decide, and its violation must come out as exit 4, not a traceback."""
    cli.create("Ada", "ada@example.com")
    monkeypatch.setattr(crud, "find_user", lambda session, ref, **_: None)
    result = cli(
        "create", "--name", "Racer", "--email", "ada@example.com", "--password-stdin",
        input=SEED_PASSWORD + "\n",
    )  # fmt: skip
    assert_error(result, 4, "email already taken")
    monkeypatch.undo()
    assert len(cli.json("list")) == 1


@pytest.mark.slow
def test_processes_racing_for_one_email_get_one_success_and_conflicts(
    cli: Cli, tmp_path: Path
) -> None:
    script = Path(sys.executable).parent / "usersctl"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")},
        "USERSCTL_DATABASE_URL": cli.url,
    }
    racers = [
        subprocess.Popen(
            [
                str(script),
                "create",
                "--name",
                f"Racer {i}",
                "--email",
                "race@example.com",
                "--password-stdin",
                "-o",
                "json",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for i in range(4)
    ]
    outcomes = [racer.communicate(SEED_PASSWORD + "\n", timeout=120) for racer in racers]
    codes = sorted(racer.returncode for racer in racers)
    assert codes == [0, 4, 4, 4], outcomes
    for (_, stderr), racer in zip(outcomes, racers, strict=True):
        assert "Traceback" not in stderr
        if racer.returncode == 4:
            assert stderr.startswith("error: email already taken: race@example.com")
    assert [u["email"] for u in cli.json("list")] == ["race@example.com"]


def test_timestamps_are_timezone_aware_utc(cli: Cli) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    shown = cli.create("Ada", "ada@example.com")
    after = datetime.now(UTC)
    database = Database(load_settings(database_url=cli.url))
    with database.session(write=False) as session:
        user = session.scalars(select(User)).one()
        assert user.created_at.utcoffset() is not None
        assert user.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert before <= user.created_at <= after
        assert user.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") == shown["created_at"]
    database.dispose()


@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_postgres_session_time_zone_does_not_shift_timestamps(cli: Cli) -> None:
    """Only PostgreSQL has a session time zone that shapes what timestamptz returns."""
    shown = cli.create("Ada", "ada@example.com")
    tokyo = make_url(cli.url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    result = invoke(tokyo.render_as_string(hide_password=False), "get", "1", "-o", "json")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    assert f'"created_at": "{shown["created_at"]}"' in result.stdout  # type: ignore[attr-defined]


def test_longest_values_fit_on_every_engine(cli: Cli) -> None:
    name = "é" + "ß" * 198 + "z"  # 200 characters, 399 bytes in UTF-8
    email = "a" * 64 + "@" + "b" * 60 + "." + "c" * 60 + "." + "d" * 55 + ".example.com"
    assert len(name) == 200 and len(email) == 254
    created = cli.create(name, email)
    assert (created["name"], created["email"]) == (name, email)
    assert cli.json("get", email)["name"] == name
    assert_error(cli("create", "--name", name + "x", "--email", "x@example.com",
                     "--random-password"), 5, "name")  # fmt: skip


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_missing_driver_names_the_extra(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, extra = DRIVERS[engine]
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    scheme = "postgresql+psycopg" if engine == "postgresql" else "mysql+pymysql"
    result = invoke(f"{scheme}://u:hunter2pw@127.0.0.1:1/db", "list")
    assert_error(result, 7, "driver", f"pip install 'usersctl[{extra}]'")  # type: ignore[arg-type]
    assert "hunter2pw" not in result.stderr  # type: ignore[attr-defined]


@pytest.fixture(params=SERVER_ENGINES)
def server_url(request: pytest.FixtureRequest) -> str:
    url = server_admin_url(str(request.param))
    if url is None:
        pytest.skip(f"no {request.param} server")
    return url


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"password": "wrong-password-xyz"}, "unavailable"),
        ({"database": "usersctl_no_such_database"}, "unavailable"),
        ({"port": 1}, "unavailable"),
    ],
    ids=["wrong-password", "missing-database", "refused"],
)
def test_unreachable_server_is_exit_7_without_the_password(
    server_url: str, change: dict[str, object], fragment: str
) -> None:
    url = make_url(server_url).set(**change)  # type: ignore[arg-type]
    result = invoke(url.render_as_string(hide_password=False), "list")
    assert_error(result, 7, fragment)  # type: ignore[arg-type]
    secret = str(url.password)
    assert secret not in result.stderr  # type: ignore[attr-defined]
    assert secret not in result.stdout  # type: ignore[attr-defined]
    assert "***" in result.stderr  # type: ignore[attr-defined]
