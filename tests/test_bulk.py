"""import and export: formats, line-numbered validation, all or nothing, lossless round trips."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error

HR_CSV = """name,email,role,password
Ada Lovelace,Ada@Example.com,admin,correct-horse-1
Grace Hopper,grace@example.com,,cobol-forever-1959
"""


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def summary(cli: Cli, *args: str, input: str | None = None) -> dict[str, Any]:
    return cli.json("import", *args, input=input)  # type: ignore[no-any-return]


def snapshot(cli: Cli) -> str:
    return cli.ok("export", "--include-hashes", "-f", "jsonl").stdout


def verifies(cli: Cli, email: str, password: str) -> bool:
    result = cli("verify-password", email, "--password-stdin", input=password + "\n")
    return result.exit_code == 0


# --- formats -------------------------------------------------------------------------


def test_hr_csv_onboarding(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path, "hr.csv", HR_CSV)
    assert summary(cli, str(source)) == {
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
        "dry_run": False,
        "blank_rows": 0,
    }
    users = {u["email"]: u for u in cli.json("list")}
    assert users["ada@example.com"]["role"] == "admin"
    assert users["grace@example.com"]["role"] == "user"  # empty cell: the default
    assert verifies(cli, "ada@example.com", "correct-horse-1")
    assert verifies(cli, "grace@example.com", "cobol-forever-1959")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_formats_from_stdin_need_format(cli: Cli, fmt: str) -> None:
    rows = [{"name": "Ada", "email": "ada@example.com", "password": "correct-horse-1"}]
    body = json.dumps(rows) if fmt == "json" else "\n".join(json.dumps(r) for r in rows)
    assert_error(cli("import", "-", input=body), 2, "--format csv, json or jsonl is required")
    assert summary(cli, "-", "--format", fmt, input=body)["created"] == 1


def test_format_comes_from_the_extension(cli: Cli, tmp_path: Path) -> None:
    line = json.dumps(
        {"name": "Ada", "email": "ada@example.com", "password": "long-enough-and-strong-1"}
    )
    assert summary(cli, str(write(tmp_path, "u.ndjson", line + "\n")))["created"] == 1
    unknown = write(tmp_path, "u.txt", line)
    assert_error(cli("import", str(unknown)), 2, "give --format csv, json or jsonl")
    assert_error(cli("import", str(tmp_path / "missing.csv")), 2, "cannot read")


def test_password_hashes_are_kept_and_bcrypt_upgrades_on_login(cli: Cli, tmp_path: Path) -> None:
    from argon2 import PasswordHasher

    argon = PasswordHasher().hash("argon-password-1")
    legacy = bcrypt.hashpw(b"bcrypt-password-1", bcrypt.gensalt(rounds=4)).decode()
    rows = [
        {"name": "A", "email": "a@example.com", "password_hash": argon},
        {"name": "B", "email": "b@example.com", "password_hash": legacy},
    ]
    source = write(tmp_path, "u.json", json.dumps(rows))
    assert summary(cli, str(source))["created"] == 2
    exported = {r["email"]: r for r in map(json.loads, snapshot(cli).splitlines())}
    assert exported["a@example.com"]["password_hash"] == argon
    assert exported["b@example.com"]["password_hash"] == legacy
    assert verifies(cli, "b@example.com", "bcrypt-password-1")
    upgraded = json.loads(snapshot(cli).splitlines()[1])["password_hash"]
    assert upgraded.startswith("$argon2id$")
    assert verifies(cli, "b@example.com", "bcrypt-password-1")


# --- validation: every bad row, with its line, nothing written ----------------------------


def test_every_bad_row_is_reported_with_its_line(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    seed([{"name": "Existing", "email": "existing@example.com"}])
    before = snapshot(cli)
    source = write(
        tmp_path,
        "bad.csv",
        "name,email,role,active,password\n"
        "Ada,ada@example.com,admin,true,long-enough-and-strong-1\n"  # line 2: fine
        ",nobody@example.com,,,long-enough-and-strong-1\n"  # line 3: empty name
        "Bob,not-an-email,,,long-enough-and-strong-1\n"  # line 4
        'Carol,"carol@example.com",Admin,,long-enough-and-strong-1\n'  # line 5: bad role
        "Dan,dan@example.com,,maybe,long-enough-and-strong-1\n"  # line 6: bad active
        "Eve,eve@example.com,,,tiny\n"  # line 7: weak password
        '"Multi\nLine",ml@example.com,,,long-enough-and-strong-1\n'  # lines 8-9: control char
        "Fay,ADA@example.com,,,long-enough-and-strong-1\n"  # line 10: duplicate of line 2
        "Gus,gus@example.com,,\n",  # line 11: too few fields
    )
    result = cli("import", str(source))
    assert result.exit_code == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: 8 bad row(s); nothing imported, the database is unchanged"
    reported = {line.split(":")[0] for line in lines[:-1]}
    assert reported == {f"line {n}" for n in (3, 4, 5, 6, 7, 8, 10, 11)}
    assert any("line 10: duplicate email ada@example.com (first on line 2)" in x for x in lines)
    assert "long-enough-and-strong-1" not in result.stderr and "tiny" not in result.stderr.lower()
    assert snapshot(cli) == before


def test_bad_rows_beyond_the_cap_are_counted(cli: Cli, tmp_path: Path) -> None:
    body = "\n".join(json.dumps({"name": "", "email": f"u{i}@example.com"}) for i in range(70))
    result = cli("import", str(write(tmp_path, "many.jsonl", body)))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 5
    assert len(lines) == 52  # 50 rows, "... and 20 more", the error line
    assert lines[50] == "... and 20 more bad rows"
    assert lines[-1].startswith("error: 70 bad row(s)")


def test_unknown_columns_are_errors_not_dropped(cli: Cli, tmp_path: Path) -> None:
    source = write(
        tmp_path, "x.csv", "name,email,password,department\nA,a@example.com,xxxxxxxx1,HR\n"
    )
    assert_error(cli("import", str(source)), 5, "unknown column", "'department'")
    body = json.dumps([{"name": "A", "email": "a@example.com", "password": "xxxxxxxx1", "x": 1}])
    result = cli("import", str(write(tmp_path, "x.json", body)))
    assert result.exit_code == 5
    assert "line 1: unknown column 'x'" in result.stderr
    assert cli.json("list") == []


def test_json_array_rows_carry_their_line_numbers(cli: Cli, tmp_path: Path) -> None:
    body = (
        '[\n  {"name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1"},\n'
        '  {\n    "name": "B",\n    "email": "bad"\n  },\n  7\n]\n'
    )
    result = cli("import", str(write(tmp_path, "x.json", body)))
    assert result.exit_code == 5
    assert "line 3: invalid email" in result.stderr
    assert "line 7: expected an object" in result.stderr


def test_password_and_hash_together_are_bad_rows(cli: Cli, tmp_path: Path) -> None:
    rows = [
        {"name": "A", "email": "a@example.com"},
        {"name": "B", "email": "b@example.com", "password": "long-enough-and-strong-1",
         "password_hash": "$2b$04$" + "x" * 53},
        {"name": "C", "email": "c@example.com", "password_hash": "plaintext-not-a-hash"},
    ]  # fmt: skip
    result = cli("import", str(write(tmp_path, "x.jsonl", "\n".join(map(json.dumps, rows)))))
    assert result.exit_code == 5
    assert result.stderr.count("at most one of password and password_hash") == 1
    assert "line 3: invalid password_hash" in result.stderr
    assert "plaintext-not-a-hash" not in result.stderr


# --- conflicts, dry runs --------------------------------------------------------------


def test_conflicts_error_skip_update(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    seed([{"name": "Old Ada", "email": "ada@example.com", "role": "user"}])
    source = write(tmp_path, "hr.csv", HR_CSV)
    before = snapshot(cli)
    result = cli("import", str(source))
    assert result.exit_code == 4
    assert "line 2: email already taken: ada@example.com (user 1)" in result.stderr
    assert snapshot(cli) == before

    assert summary(cli, str(source), "--on-conflict", "skip") == {
        "created": 1, "updated": 0, "unchanged": 0, "skipped": 1, "dry_run": False,
        "blank_rows": 0}  # fmt: skip
    assert cli.json("get", "ada@example.com")["name"] == "Old Ada"
    assert verifies(cli, "ada@example.com", SEED_PASSWORD)

    assert summary(cli, str(source), "--on-conflict", "update") == {
        "created": 0, "updated": 1, "unchanged": 1, "skipped": 0, "dry_run": False,
        "blank_rows": 0}  # fmt: skip
    ada = cli.json("get", "ada@example.com")
    assert (ada["name"], ada["role"]) == ("Ada Lovelace", "admin")
    assert verifies(cli, "ada@example.com", SEED_PASSWORD)  # never without --update-passwords

    assert summary(cli, str(source), "--on-conflict", "update", "--update-passwords") == {
        "created": 0, "updated": 2, "unchanged": 0, "skipped": 0, "dry_run": False,
        "blank_rows": 0}  # fmt: skip
    assert verifies(cli, "ada@example.com", "correct-horse-1")


def test_dry_run_writes_nothing_and_exits_like_the_real_run(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Old Ada", "email": "ada@example.com"}])
    source = write(tmp_path, "hr.csv", HR_CSV)
    before = snapshot(cli)
    result = cli("import", str(source), "--dry-run", "--on-conflict", "update", "-o", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "created": 1,
        "updated": 1,
        "unchanged": 0,
        "skipped": 0,
        "dry_run": True,
        "blank_rows": 0,
    }
    assert "nothing was written" in result.stderr
    assert cli("import", str(source), "--dry-run").exit_code == 4
    bad = write(tmp_path, "bad.csv", "name,email,password\n,x,short\n")
    assert cli("import", str(bad), "--dry-run").exit_code == 5
    assert snapshot(cli) == before


# --- export and restore --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_export_then_restore_is_exact(
    cli: Cli, seed: Seeder, tmp_path: Path, empty_db_url: str, fmt: str
) -> None:
    seed(
        [
            {"name": 'Ada, "the" Countess', "email": "ada@example.com", "role": "admin"},
            {"name": "Grace", "email": "grace@example.com", "is_active": False},
            {"name": "Zoë [bold]x[/]", "email": "zoe@example.com", "role": "ops-2"},
        ]
    )
    cli.ok("delete", "grace@example.com", "--yes")  # a gap in the ids must survive
    seed([{"name": "Linus", "email": "linus@example.org"}])
    dump = tmp_path / f"dump.{fmt}"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    assert dump.stat().st_mode & 0o777 == 0o600
    target = Cli(url=empty_db_url, runner=cli.runner)
    restored = summary(target, str(dump), "--restore")
    assert restored == {
        "created": 3, "updated": 0, "unchanged": 0, "skipped": 0, "blank_rows": 0,
        "dry_run": False,
    }  # fmt: skip
    assert snapshot(target) == snapshot(cli)
    # New users continue after the restored ids (PostgreSQL's sequence is moved on).
    assert target.create("New", "new@example.com")["id"] == 5
    assert verifies(target, "ada@example.com", SEED_PASSWORD)


def test_a_year_before_1000_is_written_with_four_digits_and_restores(
    cli: Cli, seed: Seeder, tmp_path: Path, empty_db_url: str
) -> None:
    """`--expires 0202-06-01` (a typo for 2026) is a time like any other: written as
    0202-..., never 202-..., which no parser takes back (strftime's %Y on Linux)."""
    seed([{"name": "Ada", "email": "ada@example.com"}])
    cli.ok("update", "ada@example.com", "--expires", "0202-06-01")
    assert cli.json("get", "ada@example.com")["expires_at"] == "0202-06-01T00:00:00Z"
    changes = cli.json("audit", "--action", "update")[0]["changes"]
    assert changes["expires_at"]["after"] == "0202-06-01T00:00:00Z"
    dump = tmp_path / "dump.jsonl"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    assert '"expires_at": "0202-06-01T00:00:00Z"' in dump.read_text()
    target = Cli(url=empty_db_url, runner=cli.runner)
    assert summary(target, str(dump), "--restore")["created"] == 1
    assert snapshot(target) == snapshot(cli)


def test_restore_needs_an_empty_table(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    dump = tmp_path / "d.jsonl"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    assert_error(cli("import", str(dump), "--restore"), 4, "--restore needs an empty users table")


def test_without_restore_ids_and_timestamps_are_ignored(cli: Cli, tmp_path: Path) -> None:
    row = {"id": 99, "name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1",
           "created_at": "2001-01-01T00:00:00Z", "updated_at": "2001-01-01T00:00:00Z"}  # fmt: skip
    cli.ok("import", str(write(tmp_path, "x.jsonl", json.dumps(row))))
    user = cli.json("get", "a@example.com")
    assert user["id"] == 1
    assert not user["created_at"].startswith("2001")


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_export_formats_to_stdout(cli: Cli, seed: Seeder, fmt: str) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}, {"name": "Bob", "email": "bob@example.com"}])
    out = cli.ok("export", "-f", fmt).stdout
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["email"] for r in rows] == ["ada@example.com", "bob@example.com"]
        assert "password_hash" not in rows[0]
    elif fmt == "json":
        assert [r["email"] for r in json.loads(out)] == ["ada@example.com", "bob@example.com"]
    else:
        records = [json.loads(line) for line in out.splitlines()]
        assert list(records[0]) == ["id", "name", "email", "role", "active", "created_at",
                                    "updated_at", "last_login_at", "password_changed_at",
                                    "expires_at", "must_change_password", "locked",
                                    "has_password", "source", "external_id"]  # fmt: skip
    assert "$argon2" not in out
    assert "$argon2id$" in cli.ok("export", "-f", fmt, "--include-hashes").stdout


def test_export_file_without_hashes_follows_the_umask_and_is_atomic(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    target = tmp_path / "users.csv"
    old = os.umask(0o022)
    try:
        cli.ok("export", "--output-file", str(target))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644
    assert target.read_text().startswith("id,name,email")
    assert_error(
        cli("export", "--output-file", str(tmp_path / "no" / "x.csv")), 2, "does not exist"
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_empty_export_is_valid_in_every_format(cli: Cli) -> None:
    assert cli.ok("export", "-f", "json").stdout == "[]\n"
    assert cli.ok("export", "-f", "jsonl").stdout == ""
    assert cli.ok("export", "-f", "csv").stdout == (
        "id,name,email,role,active,created_at,updated_at,last_login_at,password_changed_at,"
        "expires_at,must_change_password,locked,has_password,source,external_id\n"
    )


def test_list_count(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com", "role": "admin"},
          {"name": "Bob", "email": "bob@example.com", "is_active": False}])  # fmt: skip
    assert cli.ok("list", "--count").stdout == "2\n"
    assert cli.ok("list", "--count", "--role", "admin").stdout == "1\n"
    assert cli.ok("list", "--count", "--disabled").stdout == "1\n"
    assert cli.ok("list", "--count", "--search", "BOB").stdout == "1\n"


# --- a crash mid-import leaves all rows or none -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_sigkill_during_import_leaves_all_rows_or_none(db_url: str, tmp_path: Path) -> None:
    from argon2 import PasswordHasher

    hashed = PasswordHasher().hash("long-enough-and-strong-1")
    rows = 40_000
    source = tmp_path / "big.jsonl"
    with source.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"name": f"U{i}", "email": f"u{i}@example.com",
                                     "password_hash": hashed}) + "\n")  # fmt: skip
    script = Path(sys.executable).parent / "usersctl"
    env = {**os.environ, "USERSCTL_DATABASE_URL": db_url}
    database = db_url.removeprefix("sqlite:///")
    outcomes = set()
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        process = subprocess.Popen(
            [str(script), "import", str(source)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)  # not a wait for anything: the point in time at which to crash
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(database) as connection:
            count = connection.execute("SELECT count(*) FROM users").fetchone()[0]
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert count in (0, rows)
        outcomes.add(count)
        if count:
            break
    # Whatever happened, the next command works.
    result = subprocess.run([str(script), "list", "--count"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) in (0, rows)


def test_import_progress_is_silent_off_a_terminal(cli: Cli, tmp_path: Path) -> None:
    result = cli("import", str(write(tmp_path, "hr.csv", HR_CSV)), "-o", "plain")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout == "2\t0\t0\t0\tfalse\t0\n"
    engine = create_engine(cli.url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM users")).scalars().all()
    engine.dispose()
    assert all(h.startswith("$argon2id$") for h in stored)


_KEYS = st.sampled_from(["name", "email", "a:b", ":", "role", "x"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=':a"\\\n\u00e9 ', max_size=8),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_KEYS, inner, max_size=2),
    max_leaves=4,
)


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.tuples(_KEYS, _VALUES), max_size=6),
    st.sampled_from([":", ": ", " : "]),
    st.booleans(),
)
def test_the_fast_jsonl_decode_never_misses_a_key_given_twice(
    pairs: list[tuple[str, Any]], colon: str, ascii: bool
) -> None:
    """bulk._no_key_twice, which lets a JSONL row skip the exact (slower) decode, says yes
    only when no key of the object came twice: colons in keys and values, escapes, nesting."""
    from usersctl import bulk

    text = "{" + ", ".join(
        json.dumps(k) + colon + json.dumps(v, ensure_ascii=ascii) for k, v in pairs
    )
    line = text + "}\n"
    twice = len({k for k, _ in pairs}) < len(pairs)
    if bulk._no_key_twice(line, json.loads(line)):
        assert not twice, line
    if not twice and "\\" not in line and not any(isinstance(v, dict | list) for _, v in pairs):
        assert bulk._no_key_twice(line, json.loads(line)), line  # an export's rows: fast
