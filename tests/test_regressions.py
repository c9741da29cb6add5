"""Regression tests for bugs found in review; each failed before its fix."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_migrations import make_tutorial_db
from typer.testing import CliRunner

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error
from usersctl import crud
from usersctl.cli import app
from usersctl.cli.render import OutputFormat, Renderer


def test_import_update_changes_only_the_columns_given(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Boss", "email": "boss@example.com", "role": "admin"},
          {"name": "Fired", "email": "fired@example.com", "is_active": False}])  # fmt: skip
    source = tmp_path / "f.csv"
    source.write_text(
        "name,email,password\nBoss 2,boss@example.com,new-password-1-violet-quokka\n"
        "Fired 2,fired@example.com,new-password-2-violet-quokka\n"
    )
    cli.ok("import", str(source), "--on-conflict", "update")
    boss, fired = cli.json("get", "boss@example.com"), cli.json("get", "fired@example.com")
    assert (boss["name"], boss["role"]) == ("Boss 2", "admin")  # not demoted
    assert (fired["name"], fired["active"]) == ("Fired 2", False)  # not unlocked
    with_role = tmp_path / "g.jsonl"
    with_role.write_text(json.dumps({"name": "B", "email": "boss@example.com", "role": "user",
                                     "active": False, "password": "pw-3-quokka-777"}))  # fmt: skip
    cli.ok("import", str(with_role), "--on-conflict", "update")
    assert (cli.json("get", "boss@example.com")["role"], cli.json("get", "1")["active"]) == (
        "user",
        False,
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_csv_on_a_terminal_never_carries_escapes() -> None:
    record = {"id": 1, "name": "Evil\x1b]0;pwned\x07\x1b[31m", "email": "e@x.io"}
    terminal, pipe = FakeTerminal(), io.StringIO()
    Renderer(OutputFormat.csv, terminal).many([record], fields=["id", "name", "email"])
    Renderer(OutputFormat.csv, pipe).many([record], fields=["id", "name", "email"])
    assert "\x1b" not in terminal.getvalue() and "\x07" not in terminal.getvalue()
    assert "Evil\\x1b]0;pwned\\x07\\x1b[31m" in terminal.getvalue()
    assert record["name"] in pipe.getvalue()  # a file or pipe gets the value exactly


@pytest.mark.parametrize("ref", ["2147483648", "99999999999999999999999"])
def test_ids_beyond_the_column_are_not_found(cli: Cli, ref: str) -> None:
    assert_error(cli("get", ref), 3, "user not found")
    assert cli("delete", ref, "--yes", "--missing-ok").exit_code == 0


def test_limit_and_offset_are_bounded(cli: Cli) -> None:
    assert cli("list", "--limit", "99999999999999999999999").exit_code == 2
    assert cli.ok("list", "--limit", str(2**62), "-o", "json").stdout == "[]\n"


def test_create_if_not_exists_survives_losing_a_race(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The email is taken between our check and our insert: --if-not-exists still exits 0."""
    seed([{"name": "Winner", "email": "race@example.com"}])
    real = crud.find_user
    calls = {"n": 0}

    def blind_first(session: object, ref: str, *, lock: bool = False) -> object:
        calls["n"] += 1
        return None if calls["n"] == 1 else real(session, ref, lock=lock)  # type: ignore[arg-type]

    monkeypatch.setattr(crud, "find_user", blind_first)
    result = cli("create", "--name", "Late", "--email", "race@example.com",
                 "--random-password", "--if-not-exists", "-o", "json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "Winner"
    assert "password" not in json.loads(result.stdout)


def test_json_import_rejects_content_after_the_array(cli: Cli) -> None:
    row = {"name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1"}
    body = json.dumps([row]) + "\n" + json.dumps([row])
    assert_error(cli("import", "-", "-f", "json", input=body), 5, "after the JSON array")
    assert cli.json("list") == []


def test_import_rejects_duplicate_ids_and_malformed_hashes(cli: Cli) -> None:
    rows = [
        {"id": 7, "name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1"},
        {"id": 7, "name": "B", "email": "b@example.com", "password": "long-enough-and-strong-1"},
        {"name": "C", "email": "c@example.com", "password_hash": "$argon2id$bogus"},
        {"name": "D", "email": "d@example.com", "password_hash": "$2b$04$" + "x" * 300},
    ]
    result = cli("import", "-", "-f", "jsonl", "--restore",
                 input="\n".join(map(json.dumps, rows)))  # fmt: skip
    assert result.exit_code == 5, result.stderr
    assert "line 2: duplicate id 7 (first on line 1)" in result.stderr
    assert "line 3: invalid password_hash" in result.stderr
    assert "line 4: invalid password_hash" in result.stderr


def test_restore_with_and_without_ids(cli: Cli, empty_db_url: str) -> None:
    rows = [
        {"id": 10, "name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1"},
        {"name": "B", "email": "b@example.com", "password": "long-enough-and-strong-1"},
    ]
    target = Cli(url=empty_db_url, runner=cli.runner)
    target.ok("import", "-", "-f", "jsonl", "--restore", input="\n".join(map(json.dumps, rows)))
    assert {u["email"]: u["id"] for u in target.json("list")}["a@example.com"] == 10


def test_stamp_is_an_escape_hatch_from_any_state(cli: Cli) -> None:
    engine = create_engine(cli.url)
    with engine.begin() as connection:  # the version row lost: tables usersctl cannot place
        connection.execute(text("DELETE FROM alembic_version"))
    engine.dispose()
    assert_error(cli("list"), 8)
    cli.ok("db", "stamp", "head", "--yes")
    assert cli.json("list") == []


def test_tutorial_database_stamped_by_its_own_alembic_is_adoptable(empty_db_url: str) -> None:
    """The tutorial's step 9 runs its own `alembic upgrade head`: a revision we never made."""
    make_tutorial_db(empty_db_url, [("Ada", "ada@example.com", "tutorial-pw-1")])
    engine = create_engine(empty_db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('3f9a1c2b7d4e')"))
    engine.dispose()
    tutorial = Cli(url=empty_db_url, runner=CliRunner())
    assert_error(tutorial("list"), 8, "tutorial", "usersctl db upgrade")
    assert "Adopted" in tutorial.ok("db", "upgrade").stderr
    tutorial.ok("verify-password", "ada@example.com", "--password-stdin", input="tutorial-pw-1\n")
    assert tutorial.json("db", "current")["state"] == "current"


def test_a_tutorial_database_is_adopted_never_stamped(empty_db_url: str) -> None:
    """`db stamp 0001` fitted the tutorial's table, and the next upgrade then took a
    plaintext password that looks like a hash for a hash (that user could no longer log
    in) and left the file as readable as it was."""
    from argon2 import PasswordHasher

    looks_hashed = PasswordHasher().hash("inner")  # the password, typed literally
    make_tutorial_db(empty_db_url, [("Ada", "ada@example.com", looks_hashed)])
    tutorial = Cli(url=empty_db_url, runner=CliRunner())
    for extra in (("--yes",), ("--dry-run",)):
        refused = tutorial("db", "stamp", "0001", *extra)
        assert_error(refused, 8, "refusing to stamp the tutorial's database", "db upgrade")
    tutorial.ok("db", "upgrade")
    tutorial.ok("verify-password", "ada@example.com", "--password-stdin", input=looks_hashed + "\n")


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_verify_password_is_not_blocked_by_a_writer(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    writer = sqlite3.connect(cli.url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        result = cli.runner.invoke(
            app,
            ["verify-password", "ada@example.com", "--password-stdin"],
            input=SEED_PASSWORD + "\n",
            env={"USERSCTL_DATABASE_URL": cli.url, "USERSCTL_BUSY_TIMEOUT": "0"},
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.exit_code == 0, result.stderr


def test_rehash_on_login_is_not_an_edit(cli: Cli, seed: Seeder) -> None:
    from argon2 import PasswordHasher

    seed([{"name": "Ada", "email": "ada@example.com"}])
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(SEED_PASSWORD)
    engine = create_engine(cli.url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE users SET password_hash = :h"), {"h": weak})
    before = cli.json("get", "1")["updated_at"]
    cli.ok("verify-password", "1", "--password-stdin", input=SEED_PASSWORD + "\n")
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM users")).scalar_one()
    engine.dispose()
    assert stored != weak and "t=3" in stored
    assert cli.json("get", "1")["updated_at"] == before


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_closed_pipe_ends_quietly(cli: Cli, seed: Seeder) -> None:
    seed([{"name": f"U{i}", "email": f"u{i}@example.com"} for i in range(3000)])
    script = Path(sys.executable).parent / "usersctl"
    env = {**os.environ, "USERSCTL_DATABASE_URL": cli.url}
    pipeline = f"'{script}' list -o jsonl | head -1; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", pipeline], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    first, status = result.stdout.splitlines()
    assert json.loads(first)["email"] == "u0@example.com"
    assert status in ("0", "141")  # done, or ended by SIGPIPE like other Unix tools
    assert "Traceback" not in result.stderr and "error" not in result.stderr


def test_database_url_password_in_the_query_is_masked(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u@127.0.0.1:1/x?password=query-s3cret"
    result = CliRunner().invoke(app, ["list"], env={"USERSCTL_DATABASE_URL": url})
    assert result.exit_code == 7
    assert "query-s3cret" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql", "mariadb"])
def test_processes_meeting_an_empty_database_all_succeed(empty_db_url: str, tmp_path: Path) -> None:
    """Overlapping first uses: one migrates, the others wait for it and then see head."""
    script = Path(sys.executable).parent / "usersctl"
    env = {**os.environ, "USERSCTL_DATABASE_URL": empty_db_url}
    processes = [
        subprocess.Popen(
            [str(script), "list", "-o", "json"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(6)
    ]
    outcomes = [(p.communicate(timeout=120), p.returncode) for p in processes]
    assert [code for _, code in outcomes] == [0] * 6, outcomes
    assert all(out == "[]\n" for (out, _), _ in outcomes)


def test_an_account_created_without_a_password_is_not_audited_as_set(cli: Cli) -> None:
    cli.ok("create", "--name", "Bob", "--email", "bob@example.com", "--no-password")
    cli.create("Ada", "ada@example.com")
    trail = cli.ok("audit", "--action", "create", "-o", "jsonl").stdout.splitlines()
    changes = {entry["email"]: entry["changes"] for entry in map(json.loads, trail)}
    assert "password" not in changes["bob@example.com"]
    assert changes["ada@example.com"]["password"] == "set"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://users.db", "a file takes three slashes, sqlite:///users.db"),
        ("sqlite://", "is an in-memory database"),
        ("sqlite:///", "is an in-memory database"),
        ("sqlite:///:memory:", "is an in-memory database"),
        ("sqlite:///~no-such-user-here/x.db", "cannot expand '~no-such-user-here' (no such user)"),
        ("sqlite:////tmp/never.db?mode=ro", "argument(s) 'mode' are not accepted"),  # (ignored)
        ("sqlite:///file::memory:?uri=true", "is an in-memory database"),
        ("sqlite:///file:x?mode=memory&uri=true", "is an in-memory database"),
    ],
)
def test_database_url_slips_are_usage_errors(url: str, fragment: str, tmp_path: Path) -> None:
    """A typo'd SQLite URL was "a bug" (exit 1), and an in-memory one took a created user
    with it (exit 0)."""
    cli = Cli(url=url, runner=CliRunner())
    for args in (["list"], ["create", "--name", "T", "--email", "t@example.com", "--no-password"]):
        assert_error(cli(*args, env={"HOME": str(tmp_path)}), 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_list_limit_0_does_not_say_there_are_no_users(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    result = cli.ok("list", "--limit", "0")
    assert (result.stdout, result.stderr) == ("", "")
    assert cli.ok("list", "--search", "nobody").stderr == "No users.\n"
