"""--dry-run: every changing command checks everything, shows what it would change, writes
nothing (no audit entry either) and exits as the real run would.

The tests compare the database before and after a dry run: users with their hashes (export
--include-hashes) and the audit trail (audit -o json) as usersctl shows them, and the raw rows
of every table (alembic_version included). Then they run the same command for real and check
that the exit code is the same and that the audit trail grew by exactly the entries the dry
run showed. New ids must follow on without a gap: a dry run that inserted and rolled back
would still use up a sequence value on PostgreSQL and MariaDB.

A database without a schema must stay without tables (a SQLite file may exist, empty).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from conftest import Cli, Seeder, assert_error, server_admin_url
from usersctl.revision import HEAD, KNOWN_REVISIONS

NEW_PASSWORD = "a-brand-new-password-42"
MARKER_PASSWORD = "Marker-Generated-Password-7731"
PLANNED_KEYS = ["action", "user_id", "email", "changes"]
WROTE = "nothing was written."
NO_SCHEMA = "has no schema yet; the real run would first create it"


# --- helpers ------------------------------------------------------------------------------


def tables(url: str) -> set[str]:
    """The tables in the database (a SQLite file that does not exist has none)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return set()
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def dump(url: str) -> dict[str, list[str]]:
    """Every row of every table, raw, in a stable order: whatever a dry run wrote shows."""
    engine = create_engine(url)
    try:
        names = inspect(engine).get_table_names()
        quote = engine.dialect.identifier_preparer.quote
        with engine.connect() as connection:
            return {
                name: sorted(
                    repr(tuple(row))
                    for row in connection.execute(text(f"SELECT * FROM {quote(name)}"))
                )
                for name in names
            }
    finally:
        engine.dispose()


def revision(cli: Cli) -> str:
    return cli.ok("db", "current", "-o", "plain").stdout.split("\t")[0]


def snapshot(cli: Cli) -> dict[str, Any]:
    """Users with their hashes and the audit trail as usersctl shows them, and every table's
    raw rows (the revision in alembic_version included)."""
    return {
        "users": cli.ok("export", "--include-hashes", "--format", "jsonl").stdout,
        "audit": cli.json("audit"),
        "tables": dump(cli.url),
    }


def planned(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    entries = json.loads(result.stdout)
    assert isinstance(entries, list)
    for entry in entries:
        assert list(entry) == PLANNED_KEYS, entry
    return entries


def new_entries(cli: Cli, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit entries written since `before`, oldest first, with their ids."""
    known = {entry["id"] for entry in before}
    return sorted((e for e in cli.json("audit") if e["id"] not in known), key=lambda e: e["id"])


def shape(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: entry[key] for key in PLANNED_KEYS} for entry in entries]


def assert_ids_follow_on(entries: list[dict[str, Any]], before: list[dict[str, Any]]) -> None:
    """New audit ids continue the old ones without a gap (no sequence value used up)."""
    start = max(entry["id"] for entry in before) + 1
    assert [entry["id"] for entry in entries] == list(range(start, start + len(entries)))


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.fixture
def users(seed: Seeder) -> list[int]:
    """Ada and Bob active, Cy disabled (ids 1, 2, 3)."""
    return seed(
        [
            {"name": "Ada", "email": "ada@example.com"},
            {"name": "Bob", "email": "bob@example.com", "role": "admin"},
            {"name": "Cy", "email": "cy@example.com", "is_active": False},
        ]
    )


@pytest.fixture
def fresh(empty_db_url: str) -> Cli:
    return Cli(url=empty_db_url, runner=CliRunner())


# --- user commands: nothing written, then the real run does what the dry run showed --------


def _created(cli: Cli) -> None:
    dee = cli.json("get", "dee@example.com")
    assert (dee["id"], dee["role"], dee["active"]) == (4, "admin", True)


def _updated(cli: Cli) -> None:
    ada = cli.json("get", "1")
    assert (ada["name"], ada["email"], ada["role"]) == ("Ada L", "ada.l@example.com", "admin")


def _new_password(cli: Cli) -> None:
    check = cli("verify-password", "2", "--password-stdin", input=NEW_PASSWORD + "\n")
    assert check.exit_code == 0, check.stderr


def _all_disabled(cli: Cli) -> None:
    assert [u["active"] for u in cli.json("list")] == [False, False, False]


def _enabled(cli: Cli) -> None:
    assert [u["active"] for u in cli.json("list")] == [True, True, True]


def _deleted(cli: Cli) -> None:
    assert [u["email"] for u in cli.json("list")] == ["bob@example.com"]


USER_COMMANDS: dict[str, tuple[list[str], str | None, list[str], Callable[[Cli], None]]] = {
    # id: (args, stdin, the actions the dry run must show, what the real run must have done)
    "create": (
        ["create", "-n", "Dee", "-e", "Dee@Example.com", "-r", "admin", "--password-stdin"],
        NEW_PASSWORD + "\n",
        ["create"],
        _created,
    ),
    "update": (
        ["update", "ada@example.com", "-n", "Ada L", "-e", "ada.l@example.com", "-r", "admin"],
        None,
        ["update"],
        _updated,
    ),
    "passwd-stdin": (
        ["passwd", "2", "--password-stdin"],
        NEW_PASSWORD + "\n",
        ["passwd"],
        _new_password,
    ),
    "disable": (["disable", "1", "bob@example.com", "3"], None, ["disable"] * 2, _all_disabled),
    "enable": (["enable", "cy@example.com", "1"], None, ["enable"], _enabled),
    "delete": (["delete", "1", "cy@example.com", "--yes"], None, ["delete"] * 2, _deleted),
}


@pytest.mark.parametrize("case", list(USER_COMMANDS))
def test_user_command_dry_run_writes_nothing_and_predicts_the_real_run(
    cli: Cli, users: list[int], case: str
) -> None:
    args, stdin, actions, effect = USER_COMMANDS[case]
    before = snapshot(cli)

    dry = cli(*args, "--dry-run", "-o", "json", input=stdin)
    shown = planned(dry)
    assert [entry["action"] for entry in shown] == actions
    assert f"Dry run: {len(actions)} change(s) shown; {WROTE}" in dry.stderr
    assert snapshot(cli) == before

    real = cli(*args, "-o", "json", input=stdin)
    assert real.exit_code == 0, (real.stdout, real.stderr)
    effect(cli)
    assert cli.ok("export", "--include-hashes", "-f", "jsonl").stdout != before["users"]
    written = new_entries(cli, before["audit"])
    assert_ids_follow_on(written, before["audit"])
    if args[0] == "create":
        assert shown[0]["user_id"] is None  # no id is used up by a dry run
        assert written[0]["user_id"] == max(users) + 1
        shown = [{**shown[0], "user_id": written[0]["user_id"]}]
    assert shape(written) == shown


def test_dry_run_changes_are_spelled_out(cli: Cli, users: list[int]) -> None:
    """The planned entries are the audit entries: every changed field, before and after."""
    update = cli("update", "1", "-e", "ADA2@example.com", "-n", "Ada", "--dry-run", "-o", "json")
    assert planned(update) == [
        {
            "action": "update",
            "user_id": 1,
            "email": "ada2@example.com",
            "changes": {"email": {"before": "ada@example.com", "after": "ada2@example.com"}},
        }
    ]
    create = cli(
        "create", "-n", "Dee", "-e", "dee@example.com", "--random-password", "--dry-run",
        "-o", "json",
    )  # fmt: skip
    assert planned(create) == [
        {
            "action": "create",
            "user_id": None,
            "email": "dee@example.com",
            "changes": {
                "name": {"before": None, "after": "Dee"},
                "email": {"before": None, "after": "dee@example.com"},
                "role": {"before": None, "after": "user"},
                "active": {"before": None, "after": True},
                "password": "set",
            },
        }
    ]
    passwd = cli("passwd", "cy@example.com", "--random-password", "--dry-run", "-o", "json")
    assert planned(passwd)[0]["changes"] == {
        "password": "changed",  # an admin-generated password must be changed at first use
        "must_change_password": {"before": False, "after": True},
    }
    delete = cli("delete", "2", "--yes", "--dry-run", "-o", "json")
    assert planned(delete)[0]["changes"] == {
        "name": {"before": "Bob", "after": None},
        "email": {"before": "bob@example.com", "after": None},
        "role": {"before": "admin", "after": None},
        "active": {"before": True, "after": None},
    }


def test_dry_run_speaks_every_output_format(cli: Cli, users: list[int]) -> None:
    args = ("disable", "1", "2", "--dry-run")
    before = snapshot(cli)
    as_json = planned(cli(*args, "-o", "json"))
    jsonl = cli.ok(*args, "-o", "jsonl").stdout
    assert [json.loads(line) for line in jsonl.splitlines()] == as_json
    csv_lines = cli.ok(*args, "-o", "csv").stdout.splitlines()
    assert csv_lines[0] == "action,user_id,email,changes"
    assert csv_lines[1] == "disable,1,ada@example.com,active: true -> false"
    assert len(csv_lines) == 3
    table = cli.ok(*args)
    assert "bob@example.com" in table.stdout and "active: true -> false" in table.stdout
    assert f"Dry run: 2 change(s) shown; {WROTE}" in table.stderr
    assert snapshot(cli) == before


IF_NOT_EXISTS = ["--if-not-exists", "--random-password"]
NO_CHANGE: dict[str, list[str]] = {
    "disable-disabled": ["disable", "cy@example.com"],
    "enable-enabled": ["enable", "1", "2"],
    "update-same": ["update", "1", "-n", "Ada", "-r", "user"],
    "create-if-not-exists": ["create", "-n", "O", "-e", "ADA@example.com", *IF_NOT_EXISTS],
    "delete-missing-ok": ["delete", "nobody@example.com", "--missing-ok", "--yes"],
}


def test_dry_run_that_would_change_nothing_says_so(cli: Cli, users: list[int]) -> None:
    before = dump(cli.url)
    for case, args in NO_CHANGE.items():
        dry = cli(*args, "--dry-run", "-o", "json")
        assert planned(dry) == [], case
        assert "Dry run: nothing would change." in dry.stderr, case
        assert "change(s) shown" not in dry.stderr, case
        assert dump(cli.url) == before, case
        real = cli(*args, "-o", "json")  # nor does the real run change anything (no audit entry)
        assert real.exit_code == 0, (case, real.stderr)
        assert dump(cli.url) == before, case


# --- errors: the same exit code, nothing written ---------------------------------------------

BAD_ROWS = '{"name": "", "email": "x@example.com", "password": "long-enough-and-strong-1"}\n'
TAKEN_ROW = '{"name": "Ada", "email": "ada@example.com", "password": "long-enough-and-strong-1"}\n'

ERRORS: dict[str, tuple[int, list[tuple[list[str], str | None, str]]]] = {
    # kind: (exit code, [(args, stdin, fragment of the error line), ...])
    "not-found": (
        3,
        [
            (["update", "nobody@example.com", "-n", "X"], None, "not found"),
            (["passwd", "99", "--random-password"], None, "not found"),
            (["disable", "1", "nobody@example.com"], None, "not found"),  # all or nothing
            (["enable", "3", "99"], None, "not found"),
            (["delete", "2", "99", "--yes"], None, "not found"),
        ],
    ),
    "conflict": (
        4,
        [
            (
                ["create", "-n", "A", "-e", "ADA@example.com", "--password-stdin"],
                NEW_PASSWORD + "\n",
                "already taken",
            ),
            (["update", "1", "-e", "Bob@example.com"], None, "already taken"),
            (["import", "-", "-f", "jsonl"], TAKEN_ROW, "already exist"),
        ],
    ),
    "invalid": (
        5,
        [
            (["create", "-n", "A", "-e", "not-an-email", "--random-password"], None, "email"),
            (["update", "2", "-n", ""], None, "name"),
            (
                ["create", "-n", "A", "-e", "new@example.com", "--password-stdin"],
                "short\n",
                "too short",
            ),
            (["passwd", "1", "--password-stdin"], "short\n", "too short"),
            (["import", "-", "-f", "jsonl"], BAD_ROWS, "bad row"),
        ],
    ),
    "usage": (
        2,
        [
            (["delete", "1"], None, "--yes"),
            (["create", "-n", "A", "-e", "new@example.com"], None, "password source"),
        ],
    ),
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_dry_run_fails_like_the_real_run(cli: Cli, users: list[int], kind: str) -> None:
    code, cases = ERRORS[kind]
    before = dump(cli.url)
    for args, stdin, fragment in cases:
        dry = cli(*args, "--dry-run", "-o", "json", input=stdin)
        assert dry.exit_code == code, (args, dry.exit_code, dry.stdout, dry.stderr)
        assert fragment in error_line(dry), args
        assert dry.stdout == "", args
        assert "Dry run" not in dry.stderr, args
        assert dump(cli.url) == before, args
        real = cli(*args, "-o", "json", input=stdin)
        assert real.exit_code == code, (args, real.exit_code, real.stdout, real.stderr)
        assert error_line(real) == error_line(dry), args
        assert dump(cli.url) == before, args


# --- prompts and generated passwords ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["delete", "1", "cy@example.com"],
        ["db", "downgrade", "0002", "--discard-audit-trail"],
    ],
    ids=["delete", "db-downgrade"],
)
def test_dry_run_on_a_terminal_never_prompts(
    cli: Cli, users: list[int], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """Without --yes on a terminal the real run asks first; a dry run has nothing to ask."""
    monkeypatch.setattr("usersctl.cli.users.stdin_is_terminal", lambda: True)
    monkeypatch.setattr("usersctl.cli.db.stdin_is_terminal", lambda: True)
    before = snapshot(cli)
    dry = cli(*args, "--dry-run", input="")  # a prompt would read end of input: abort
    assert dry.exit_code == 0, (dry.exit_code, dry.stdout, dry.stderr)
    assert "[y/N]" not in dry.stdout + dry.stderr
    assert WROTE in dry.stderr
    assert snapshot(cli) == before
    refused = cli(*args, input="n\n")  # the real run does ask, and "no" changes nothing
    assert refused.exit_code == 1, (refused.stdout, refused.stderr)
    assert "[y/N]" in refused.stdout
    assert dump(cli.url) == before["tables"]


def test_random_password_dry_run_prints_no_password(
    cli: Cli, users: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated password is replaced by a marker, which no dry run may print."""
    from usersctl import passwords

    monkeypatch.setattr(passwords, "generate_password", lambda *_: MARKER_PASSWORD)
    commands = [
        ["create", "-n", "Dee", "-e", "dee@example.com", "--disabled", "--random-password"],
        ["passwd", "bob@example.com", "--random-password"],
    ]
    before = snapshot(cli)
    shown: list[dict[str, Any]] = []
    for output in ("json", "table", "csv"):
        for args in commands:
            dry = cli(*args, "--dry-run", "-o", output)
            assert dry.exit_code == 0, dry.stderr
            assert MARKER_PASSWORD not in dry.stdout + dry.stderr, (args, output)
            assert "Generated password" not in dry.stderr
            assert f"Dry run: 1 change(s) shown; {WROTE}" in dry.stderr
            if output == "json":
                shown += planned(dry)
    assert snapshot(cli) == before
    # The real runs do print it, once: the marker really is the generated password.
    for args, output in zip(commands, ("table", "json"), strict=True):
        real = cli(*args, "-o", output)
        assert real.exit_code == 0, real.stderr
        assert (real.stdout + real.stderr).count(MARKER_PASSWORD) == 1, (args, output)
    written = new_entries(cli, before["audit"])
    assert_ids_follow_on(written, before["audit"])
    assert shown[0]["user_id"] is None and written[0]["user_id"] == max(users) + 1
    assert shown[0]["changes"]["active"] == {"before": None, "after": False}
    assert shape(written) == [{**shown[0], "user_id": max(users) + 1}, shown[1]]
    check = cli("verify-password", "2", "--password-stdin", input=MARKER_PASSWORD + "\n")
    assert check.exit_code == 0, check.stderr


# --- a database without a schema --------------------------------------------------------------

EMPTY_CASES: list[tuple[list[str], str | None, int, str]] = [
    # (args, stdin, exit code, what the error line or stdout must contain); the real runs go
    # in this order, so the failing ones meet an empty database too (and create its schema)
    (["update", "ada@example.com", "-n", "X"], None, 3, "not found"),
    (["passwd", "1", "--random-password"], None, 3, "not found"),
    (["disable", "1"], None, 3, "not found"),
    (["enable", "ada@example.com"], None, 3, "not found"),
    (["delete", "1", "--yes"], None, 3, "not found"),
    (["delete", "1", "--yes", "--missing-ok", "-o", "json"], None, 0, "[]"),
    (
        ["import", "-", "-f", "jsonl", "-o", "json"],
        TAKEN_ROW.replace("ada@", "bob@"),
        0,
        '"created": 1',
    ),
    (
        ["create", "-n", "Ada", "-e", "ada@example.com", "--password-stdin", "-o", "json"],
        NEW_PASSWORD + "\n",
        0,
        '"user_id": null',
    ),
]


def test_dry_run_on_a_database_without_schema_creates_nothing(fresh: Cli) -> None:
    for args, stdin, code, expected in EMPTY_CASES:
        dry = fresh(*args, "--dry-run", input=stdin)
        assert dry.exit_code == code, (args, dry.exit_code, dry.stdout, dry.stderr)
        assert NO_SCHEMA in dry.stderr and f"(revision {HEAD})" in dry.stderr, dry.stderr
        assert expected in (dry.stdout if code == 0 else error_line(dry)), (args, dry.stdout)
        assert tables(fresh.url) == set(), args
    shown = planned(dry)  # the last one: create
    for args, stdin, code, _ in EMPTY_CASES:
        real = fresh(*args, input=stdin)
        assert real.exit_code == code, (args, real.exit_code, real.stdout, real.stderr)
        assert revision(fresh) == HEAD
    written = [e for e in fresh.json("audit") if e["action"] == "create"]
    assert len(written) == 1
    assert shape(written) == [{**shown[0], "user_id": written[0]["user_id"]}]


# --- import ----------------------------------------------------------------------------------


def import_rows(known_hash: str) -> str:
    """Ada gets a new role, Bob stays exactly as he is, Dee and Eve are new (ready-made
    hashes: nothing to hash, so the test stays fast)."""
    rows = [
        {"name": "Ada", "email": "ada@example.com", "role": "admin"},
        {"name": "Bob", "email": "bob@example.com", "role": "admin"},
        {"name": "Dee", "email": "dee@example.com"},
        {"name": "Eve", "email": "eve@example.com", "active": False},
    ]
    return "".join(json.dumps({**row, "password_hash": known_hash}) + "\n" for row in rows)


@pytest.mark.parametrize(
    ("on_conflict", "counts"),
    [("skip", (2, 0, 0, 2)), ("update", (2, 1, 1, 0))],
)
def test_import_dry_run_summary_matches_the_real_run(
    cli: Cli,
    users: list[int],
    seed_hash: str,
    tmp_path: Path,
    on_conflict: str,
    counts: tuple[int, ...],
) -> None:
    source = tmp_path / "people.jsonl"
    source.write_text(import_rows(seed_hash), encoding="utf-8")
    args = ("import", str(source), "--on-conflict", on_conflict)
    before = snapshot(cli)
    dry = cli.json(*args, "--dry-run")
    expected = dict(zip(["created", "updated", "unchanged", "skipped"], counts, strict=True))
    assert dry == {**expected, "dry_run": True, "blank_rows": 0}
    assert snapshot(cli) == before
    real = cli.json(*args)
    assert real == {**expected, "dry_run": False, "blank_rows": 0}
    written = new_entries(cli, before["audit"])
    assert_ids_follow_on(written, before["audit"])
    assert len(written) == expected["created"] + expected["updated"]
    assert len(cli.json("list")) == 3 + expected["created"]


# --- db upgrade / db downgrade ---------------------------------------------------------------


def _at_0002(cli: Cli) -> None:
    cli.ok("db", "downgrade", "0002", "--yes", "--discard-audit-trail")


def _at_0001(cli: Cli) -> None:
    cli.ok("db", "upgrade", "0001")


@pytest.mark.parametrize(
    ("setup", "start", "steps"),
    [
        (_at_0002, "0002", ["0003", "0004", "0005", "0006", "0007"]),
        (_at_0001, "0001", ["0002", "0003", "0004", "0005", "0006", "0007"]),
    ],
    ids=["from-0002", "from-0001"],
)
def test_db_upgrade_dry_run_prints_the_sql_and_changes_nothing(
    fresh: Cli, setup: Callable[[Cli], None], start: str, steps: list[str]
) -> None:
    if start == "0002":
        fresh.ok("db", "upgrade")
        fresh.create("Ada", "ada@example.com")
    setup(fresh)
    assert revision(fresh) == start
    before = dump(fresh.url)

    dry = fresh("db", "upgrade", "--dry-run")
    assert dry.exit_code == 0, (dry.stdout, dry.stderr)
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("-- usersctl db upgrade --dry-run: ")
    assert f"from {start} to {HEAD}" in lines[0]
    assert lines[1].startswith(f"-- revisions: {', '.join(steps)} ")
    previous = start
    for step in steps:
        assert f"-- Running upgrade {previous} -> {step}" in dry.stdout
        previous = step
    assert "CREATE TABLE audit_log" in dry.stdout
    assert WROTE in dry.stderr
    assert dump(fresh.url) == before
    assert revision(fresh) == start
    assert "audit_log" not in tables(fresh.url)

    fresh.ok("db", "upgrade")
    assert revision(fresh) == HEAD
    entry = fresh.json("audit", "--action", "db-upgrade", "--limit", "1")[0]
    assert entry["changes"] == {"revision": {"before": start, "after": HEAD}}


def test_db_upgrade_dry_run_of_an_empty_database_writes_nothing(fresh: Cli) -> None:
    dry = fresh("db", "upgrade", "--dry-run")
    assert dry.exit_code == 0, (dry.stdout, dry.stderr)
    revisions = ", ".join(KNOWN_REVISIONS)
    assert dry.stdout.splitlines()[1].startswith(f"-- revisions: {revisions} ")
    assert "CREATE TABLE users" in dry.stdout and "CREATE TABLE audit_log" in dry.stdout
    assert tables(fresh.url) == set()
    assert revision(fresh) == ""  # `db current` prints no revision for an empty database


def test_db_upgrade_dry_run_at_head_has_nothing_to_do(cli: Cli, users: list[int]) -> None:
    before = snapshot(cli)
    dry = cli("db", "upgrade", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout == ""
    assert "nothing to do" in dry.stderr
    assert snapshot(cli) == before


def test_db_downgrade_dry_run_prints_the_sql_and_changes_nothing(
    cli: Cli, users: list[int]
) -> None:
    args = ("db", "downgrade", "0002", "--yes", "--discard-audit-trail")
    before = snapshot(cli)
    dry = cli(*args, "--dry-run")
    assert dry.exit_code == 0, (dry.stdout, dry.stderr)
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("-- usersctl db downgrade --dry-run: ")
    assert f"from {HEAD} to 0002" in lines[0]
    assert lines[1].startswith("-- revisions: 0007, 0006, 0005, 0004, 0003 ")
    assert "-- Running downgrade 0003 -> 0002" in dry.stdout
    assert "DROP TABLE audit_log" in dry.stdout
    assert WROTE in dry.stderr
    assert snapshot(cli) == before  # the audit trail is all still there

    cli.ok(*args)
    assert revision(cli) == "0002"
    assert "audit_log" not in tables(cli.url)


DB_REFUSALS: dict[str, tuple[int, list[tuple[list[str], str]]]] = {
    # kind: (exit code, [(args, fragment of the error line), ...])
    "data-loss": (
        5,
        [
            (["db", "downgrade", "0002", "--yes"], "audit trail"),  # it has entries
            (["db", "downgrade", "0001", "--yes", "--discard-audit-trail"], "cannot downgrade"),
        ],
    ),
    "usage": (
        2,
        [
            # (a dry run needs no --yes: see test_db_consent.py)
            (["db", "upgrade", "0001"], "db downgrade 0001"),
        ],
    ),
}


@pytest.mark.parametrize("kind", list(DB_REFUSALS))
def test_db_dry_run_refuses_like_the_real_run(cli: Cli, users: list[int], kind: str) -> None:
    code, cases = DB_REFUSALS[kind]
    before = snapshot(cli)
    for args, fragment in cases:
        dry = cli(*args, "--dry-run")
        assert_error(dry, code, fragment)
        assert dry.stdout == "", args
        assert snapshot(cli) == before, args
        real = cli(*args)
        assert_error(real, code, fragment)
        assert dump(cli.url) == before["tables"], args


def set_revision(url: str, value: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": value})
    engine.dispose()


def test_dry_run_on_a_mismatched_schema_is_refused(cli: Cli, users: list[int]) -> None:
    """Behind head (stamped 0002): the user commands want `db upgrade` (8). Newer than this
    usersctl (9999): every command, db upgrade and downgrade included, refuses (8)."""
    set_revision(cli.url, "0002")
    before = dump(cli.url)
    commands: list[tuple[list[str], str | None]] = [
        (["create", "-n", "Dee", "-e", "dee@example.com", "--random-password"], None),
        (["update", "1", "-n", "X"], None),
        (["disable", "1"], None),
        (["delete", "1", "--yes"], None),
        (["import", "-", "-f", "jsonl"], TAKEN_ROW.replace("ada@", "dee@")),
    ]
    for args, stdin in commands:
        for extra in (["--dry-run"], []):
            assert_error(cli(*args, *extra, input=stdin), 8, "db upgrade")
    assert dump(cli.url) == before

    set_revision(cli.url, "9999")
    before = dump(cli.url)
    commands = [
        (["update", "1", "-n", "X"], None),
        (["db", "upgrade"], None),
        (["db", "downgrade", "0002", "--yes", "--discard-audit-trail"], None),
    ]
    for args, stdin in commands:
        for extra in (["--dry-run"], []):
            assert_error(cli(*args, *extra, input=stdin), 8, "9999")
    assert dump(cli.url) == before


def test_dry_run_on_an_unreachable_database_is_unavailable(
    engine_name: str, tmp_path: Path
) -> None:
    """Nothing listens on port 1; a SQLite file in a folder that does not exist."""
    if engine_name == "sqlite":
        url = f"sqlite:///{tmp_path / 'missing' / 'users.db'}"
    else:
        admin_url = server_admin_url(engine_name)
        if admin_url is None:
            pytest.skip(f"no {engine_name} server")
        url = make_url(admin_url).set(port=1).render_as_string(hide_password=False)
    cli = Cli(url=url, runner=CliRunner())
    commands: list[tuple[list[str], str | None]] = [
        (["create", "-n", "Dee", "-e", "dee@example.com", "--password-stdin"], NEW_PASSWORD),
        (["update", "1", "-n", "X"], None),
        (["passwd", "1", "--random-password"], None),
        (["enable", "1"], None),
        (["delete", "1", "--yes"], None),
        (["import", "-", "-f", "jsonl"], TAKEN_ROW),
        (["db", "upgrade"], None),
        (["db", "downgrade", "0002", "--yes", "--discard-audit-trail"], None),
    ]
    for args, stdin in commands:
        dry = cli(*args, "--dry-run", input=stdin)
        assert_error(dry, 7)
        assert dry.stdout == "", args
        if args[0] in ("create", "db"):  # and the real run says the same
            real = cli(*args, input=stdin)
            assert_error(real, 7)
            assert error_line(real) == error_line(dry)
    assert not (tmp_path / "missing").exists()


# --- a read-only SQLite file ----------------------------------------------------------------

PR_CAPBSET_DROP = 24
DAC_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_dac_capabilities() -> None:
    """preexec_fn: root loses the capabilities that bypass file permissions (as in
    test_environment.py), so the owner's permission bits apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in DAC_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged() -> Callable[[], None] | None:
    return _drop_dac_capabilities if os.geteuid() == 0 else None


def _file_digests(path: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.parent.glob(path.name + "*"))
    }


READ_ONLY_COMMANDS: list[tuple[list[str], str]] = [
    (["create", "-n", "Dee", "-e", "dee@example.com", "--random-password"], ""),
    (["update", "1", "-n", "X"], ""),
    (["passwd", "1", "--password-stdin"], NEW_PASSWORD + "\n"),
    (["disable", "1"], ""),
    (["delete", "1", "--yes"], ""),
    (["import", "-", "-f", "jsonl"], TAKEN_ROW.replace("ada@", "dee@")),
    (["db", "upgrade"], ""),
    (["db", "downgrade", "0002", "--yes", "--discard-audit-trail"], ""),
]


def test_dry_run_on_a_read_only_sqlite_file_is_unavailable(
    tmp_path: Path, sqlite_template: Path, seed_hash: str
) -> None:
    """SQLite only, in real processes: as root they drop the capabilities that ignore file
    permissions (as test_environment.py does); skipped where that cannot be arranged."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "users.db"
    path.write_bytes(sqlite_template.read_bytes())
    path.chmod(0o600)
    url = f"sqlite:///{path}"
    Seeder(url=url, password_hash=seed_hash)([{"name": "Ada", "email": "ada@example.com"}])
    path.chmod(0o400)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(path)!r}, 'r+b')"],
            preexec_fn=_unprivileged(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            message = f"this process can still write {path}; cannot test read-only"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        before = _file_digests(path)
        environment = {**os.environ, "USERSCTL_DATABASE_URL": url}
        runs: list[tuple[list[str], str, subprocess.Popen[str]]] = []
        for args, stdin in READ_ONLY_COMMANDS:
            argv = [*args, "--dry-run"]
            process = subprocess.Popen(
                [sys.executable, "-m", "usersctl", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                text=True,
                preexec_fn=_unprivileged(),
            )
            runs.append((argv, stdin, process))
        for argv, stdin, process in runs:
            stdout, stderr = process.communicate(stdin, timeout=120)
            described = (argv, process.returncode, stdout, stderr)
            assert process.returncode == 7, described
            assert stderr.strip().startswith("error: ") and "read-only" in stderr, described
            assert stdout == "", described
        assert _file_digests(path) == before
    finally:
        path.chmod(0o600)
