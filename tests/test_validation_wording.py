"""Validation speaks usersctl: one wording per rule, the same for a command and an import
row; special-use email domains; invisible characters in names; what a backup restores;
hostile import files and config files (issues "Trust for cron" 10, 15 and "What an
attacker broke" 8, 10, 17)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error

SCRIPT = Path(sys.executable).parent / "usersctl"
PYDANTIC_WORDS = ("Value error", "Input should", "String should", "validation error", "pydantic")

# (rule, create/update arguments, password line or None, import row, the one message)
RULES: list[tuple[str, list[str], str | None, dict[str, Any], str]] = [
    (
        "empty name",
        ["create", "--name", "  ", "--email", "a@example.com", "--random-password"],
        None,
        {"name": " ", "email": "a@example.com", "password": "long-enough-and-strong-1"},
        "invalid name: must not be empty",
    ),
    (
        "long name",
        ["create", "--name", "x" * 201, "--email", "a@example.com", "--random-password"],
        None,
        {"name": "x" * 201, "email": "a@example.com", "password": "long-enough-and-strong-1"},
        "invalid name: at most 200 characters are allowed",
    ),
    (
        "control character",
        ["update", "1", "--name", "A\x1b[31mB"],
        None,
        {"name": "A\x1b[31mB", "email": "a@example.com", "password": "long-enough-and-strong-1"},
        "invalid name: must not contain control or invisible characters (found U+001B)",
    ),
    (
        "bad email",
        ["create", "--name", "A", "--email", "not-an-email", "--random-password"],
        None,
        {"name": "A", "email": "not-an-email", "password": "long-enough-and-strong-1"},
        "invalid email: an email address must have an @-sign",
    ),
    (
        "bad role",
        ["update", "1", "--role", "Admin"],
        None,
        {
            "name": "A",
            "email": "a@example.com",
            "role": "Admin",
            "password": "long-enough-and-strong-1",
        },
        "invalid role: must be 1-32 lowercase letters, digits, '_' or '-', starting with a letter",
    ),
    (
        "short password",
        ["create", "--name", "A", "--email", "a@example.com", "--password-stdin"],
        "seven-7\n",
        {"name": "A", "email": "a@example.com", "password": "seven-7"},
        "password too short: 7 characters, at least 15 are required (try a passphrase of several "
        "unrelated words, or --random-password)",
    ),
    (
        "long password",
        ["passwd", "1", "--password-stdin"],
        "p" * 1025 + "\n",
        {"name": "A", "email": "a@example.com", "password": "p" * 1025},
        "password too long: at most 1024 characters are allowed",
    ),
]


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize(
    ("rule", "args", "stdin", "row", "message"), RULES, ids=[r[0] for r in RULES]
)
def test_one_wording_per_rule_for_commands_and_import_rows(
    cli: Cli,
    seed: Seeder,
    tmp_path: Path,
    rule: str,
    args: list[str],
    stdin: str | None,
    row: dict[str, Any],
    message: str,
) -> None:
    seed([{"name": "Existing", "email": "existing@example.com"}])
    result = cli(*args, input=stdin)
    assert_error(result, 5)
    assert result.stderr == f"error: {message}\n"

    source = tmp_path / "rows.jsonl"
    source.write_text(
        json.dumps(
            {"name": "Fine", "email": "f@example.com", "password": "long-enough-and-strong-1"}
        )
        + "\n"
        + json.dumps(row)
        + "\n"
    )
    result = cli("import", str(source))
    assert result.exit_code == 5, result.stderr
    assert result.stderr.splitlines()[0] == f"line 2: {message}"


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_import_rows_never_show_pydantic_words(cli: Cli, tmp_path: Path) -> None:
    rows = [
        {"name": 5, "email": "a@example.com", "password": "long-enough-and-strong-1"},
        {"name": "B", "email": "x", "role": "Admin", "active": "maybe", "id": "x",
         "created_at": "yesterday", "password_hash": "nope"},
        {"name": "C", "email": "c@example.com", "id": 0, "updated_at": "2026-01-01T00:00:00",
         "password": 12345678},
        {"name": "D", "email": "d@example.com", "id": 1.5, "password": "long-enough-and-strong-1",
         "x": 1},
        {"name": "E", "email": "e@example.com"},
        {"email": "f@example.com", "password": "long-enough-and-strong-1"},
    ]  # fmt: skip
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = cli("import", str(source))
    assert result.exit_code == 5
    lines = result.stderr.splitlines()
    assert lines == [
        "line 1: invalid name: must be text",
        "line 2: invalid email: an email address must have an @-sign; invalid role: must be "
        "1-32 lowercase letters, digits, '_' or '-', starting with a letter; invalid active: "
        "must be true or false; invalid password_hash: must be a well-formed argon2 "
        "($argon2id$...) or bcrypt ($2b$...) hash; invalid id: must be a whole number from 1 "
        "to 2147483647; invalid created_at: must be an ISO-8601 time with a time zone, e.g. "
        "2026-01-31T09:00:00Z",
        "line 3: invalid password: must be text; invalid id: must be a whole number from 1 to "
        "2147483647; invalid updated_at: must be an ISO-8601 time with a time zone, e.g. "
        "2026-01-31T09:00:00Z",
        "line 4: invalid id: must be a whole number from 1 to 2147483647; unknown column 'x'",
        "line 6: missing column 'name'",  # (line 5, without a password, is a good row)
        "error: 5 bad row(s); nothing imported, the database is unchanged",
    ]
    for word in PYDANTIC_WORDS:
        assert word not in result.stderr
    assert ".;" not in result.stderr


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_password_prompt_mismatch_is_a_lowercase_error_line(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("usersctl.cli.password_input.stdin_is_terminal", lambda: True)
    typed = "first-password-1\nother-password-2\nfinal-password-3\nfinal-password-3\n"
    result = cli("create", "--name", "Ada", "--email", "ada@example.com", "-o", "json", input=typed)
    assert result.exit_code == 0, result.stderr
    assert "error: the two passwords do not match.\n" in result.stderr
    assert "Error" not in result.stderr + result.stdout
    assert cli("verify-password", "ada@example.com", "--password-stdin",
               input="final-password-3\n").exit_code == 0  # fmt: skip


# ---------------- special-use email domains


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("admin@corp.local", "admin@corp.local"),
        ("Root@Home.Arpa", "root@home.arpa"),
        ("a@localhost", "a@localhost"),
        ("ci@build.test", "ci@build.test"),
    ],
)
def test_special_use_domains_companies_use_are_accepted(
    cli: Cli, tmp_path: Path, typed: str, stored: str
) -> None:
    assert cli.create("Someone", typed)["email"] == stored
    source = tmp_path / "rows.csv"
    source.write_text(f"name,email,password\nOther,other.{typed},long-enough-and-strong-1\n")
    assert cli.json("import", str(source))["created"] == 1
    assert cli.json("get", f"other.{stored}")["email"] == f"other.{stored}"


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("a@example.invalid", "special-use or reserved name"),
        ("a@hidden.onion", "special-use or reserved name"),
        ("ada@examplecom", "It should have a period"),
    ],
)
def test_domains_that_never_receive_mail_are_refused_with_a_reason(
    cli: Cli, email: str, reason: str
) -> None:
    result = cli("create", "--name", "A", "--email", email, "--random-password")
    assert_error(result, 5, "invalid email: the part after the @-sign", reason)


# ---------------- invisible characters in names


INVISIBLE = [
    ("\u202eevil\u202c", "U+202E"),  # right-to-left override
    ("Ad\u200ba", "U+200B"),  # zero-width space
    ("\u200b", "U+200B"),  # nothing visible at all
    ("\ufeffBOM", "U+FEFF"),
    ("a\u2066b", "U+2066"),  # left-to-right isolate
    ("x\u00ady", "U+00AD"),  # soft hyphen
]


@pytest.mark.parametrize(("name", "code"), INVISIBLE)
def test_names_with_invisible_characters_are_refused_everywhere(
    cli: Cli, tmp_path: Path, name: str, code: str
) -> None:
    message = f"invalid name: must not contain control or invisible characters (found {code})"
    before = cli.ok("export", "--include-hashes").stdout
    result = cli("create", "--name", name, "--email", "a@example.com", "--random-password")
    assert result.exit_code == 5 and result.stderr == f"error: {message}\n"
    cli.create("Ada", "ada@example.com")
    after_create = cli.ok("export", "--include-hashes").stdout
    assert_error(cli("update", "ada@example.com", "--name", name), 5, message)
    source = tmp_path / "rows.jsonl"
    row = {"name": name, "email": "b@example.com", "password": "long-enough-and-strong-1"}
    source.write_text(json.dumps(row) + "\n")
    result = cli("import", str(source))
    assert result.exit_code == 5 and result.stderr.splitlines()[0] == f"line 1: {message}"
    assert cli.ok("export", "--include-hashes").stdout == after_create != before


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_names_of_blank_letters_are_refused_and_joiners_kept(cli: Cli) -> None:
    result = cli("create", "--name", "\u3164\u3164", "--email", "a@example.com",
                 "--random-password")  # fmt: skip
    assert_error(result, 5, "invalid name: must contain a visible character")
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # joined by U+200D
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # with U+200C
    assert cli.create(family, "f@example.com")["name"] == family
    assert cli.create(persian, "p@example.com")["name"] == persian


def _plant(url: str, user_id: int, **values: str) -> None:
    """Store values directly, as another application (or the tutorial app) could have."""
    engine = create_engine(url)
    with engine.begin() as connection:
        assignments = ", ".join(f"{column} = :{column}" for column in values)
        connection.execute(
            text(f"UPDATE users SET {assignments} WHERE id = :id"), {**values, "id": user_id}
        )
    engine.dispose()


def test_stored_invisible_characters_are_shown_escaped(cli: Cli, seed: Seeder) -> None:
    (user_id,) = seed([{"name": "Placeholder", "email": "ada@example.com"}])
    name = "Ada\u202eecilA\u200b \u2066x\u2069"
    _plant(cli.url, user_id, name=name)
    escaped = "Ada\\u202eecilA\\u200b \\u2066x\\u2069"
    plain = cli.ok("list", "-o", "plain").stdout
    assert plain.split("\t")[1] == escaped
    assert escaped in cli.ok("get", "1").stdout
    assert escaped in cli.ok("list").stdout
    for fmt in ("json", "jsonl"):
        out = cli.ok("get", "1", "-o", fmt).stdout
        assert "\u202e" not in out and "\u200b" not in out and "\\u202e" in out
        assert json.loads(out)["name"] == name


# ---------------- what usersctl holds, a backup restores


ADOPTED = [  # values today's rules refuse, as an adopted tutorial database can hold them
    {"name": "\x1b[31mred\x1b[0m", "email": "admin@localhost.localdomain"},
    {"name": "Bob", "email": "not-an-email"},
    {"name": " padded ", "email": "Mixed@Example.COM", "role": "Admin"},
    {"name": "Zero\u200bwidth", "email": "=2+3@example.com"},
    {"name": '=HYPERLINK("http://x","y")', "email": "ok@example.com"},
]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_whatever_a_database_holds_exports_and_restores(
    cli: Cli, seed: Seeder, tmp_path: Path, empty_db_url: str, fmt: str
) -> None:
    ids = seed([{"name": f"U{n}", "email": f"u{n}@example.com"} for n in range(len(ADOPTED))])
    for user_id, values in zip(ids, ADOPTED, strict=True):
        _plant(cli.url, user_id, **values)
    dump = tmp_path / f"dump.{fmt}"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    target = Cli(url=empty_db_url, runner=cli.runner)
    target.ok("db", "upgrade")
    restored = target.json("import", str(dump), "--restore")
    assert restored["created"] == len(ADOPTED)
    original = cli.ok("export", "--include-hashes", "-f", "jsonl").stdout
    assert target.ok("export", "--include-hashes", "-f", "jsonl").stdout == original
    assert json.loads(original.splitlines()[1])["email"] == "not-an-email"
    assert json.loads(original.splitlines()[0])["name"] == "\x1b[31mred\x1b[0m"
    # The restored users still log in; a plain import keeps refusing such values.
    assert target("verify-password", str(ids[1]), "--password-stdin",
                  input=SEED_PASSWORD + "\n").exit_code == 0  # fmt: skip
    again = Cli(url=cli.url, runner=cli.runner)
    again.ok("delete", *map(str, ids), "--yes")
    result = again("import", str(dump))
    assert result.exit_code == 5 and "line" in result.stderr


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_restore_still_checks_structure_and_uniqueness(cli: Cli, tmp_path: Path) -> None:
    cli.create("Ada", "ada@example.com")
    line = cli.ok("export", "--include-hashes", "-f", "jsonl").stdout.splitlines()[0]
    cli.ok("delete", "1", "--yes")
    row = json.loads(line)
    rows = [
        {**row, "id": 1},
        {**row, "id": 2},  # the same email again
        {**row, "id": 3, "email": "", "name": "x" * 201},
        {**row, "id": 4, "email": "nul\x00@example.com"},
        {**row, "id": 5, "email": "e@example.com", "role": 7},
    ]
    source = tmp_path / "restore.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("import", str(source), "--restore")
    assert result.exit_code == 5
    assert result.stderr.splitlines()[:4] == [
        "line 2: duplicate email ada@example.com (first on line 1)",
        "line 3: invalid name: at most 200 characters are allowed; "
        "invalid email: must not be empty",
        "line 4: invalid email: must not contain NUL (U+0000), which no database engine stores",
        "line 5: invalid role: must be text",
    ]


# ---------------- hostile input files and config


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1" * 5000, "not valid JSON: a number has too many digits"),
        (_deep(100_000), "not valid JSON: nested too deeply"),
    ],
    ids=["long-integer", "deep-nesting"],
)
def test_hostile_json_values_are_bad_rows_with_a_line(
    cli: Cli, tmp_path: Path, value: str, problem: str
) -> None:
    good = json.dumps(
        {"name": "A", "email": "a@example.com", "password": "long-enough-and-strong-1"}
    )
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(f'{good}\n{{"name": "B", "id": {value}}}\n')
    result = cli("import", str(jsonl))
    assert result.exit_code == 5, result.stderr
    assert f"line 2: {problem}" in result.stderr.splitlines()
    array = tmp_path / "x.json"
    array.write_text(f'[\n{good},\n\n{{"name": "B", "id": {value}}}\n]\n')
    assert_error(cli("import", str(array)), 5, f"line 4: {problem}")


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_an_endless_import_file_is_refused_with_bounded_memory(cli: Cli, fmt: str) -> None:
    result = cli("import", "/dev/zero", "--format", fmt)
    if fmt == "json":
        assert_error(result, 5, "line 1: a JSON import must be one array of objects")
    else:
        assert_error(result, 5, "line 1: longer than 1 MiB")


def _limited_memory() -> None:
    limit = 1 << 30  # 1 GiB: an unbounded read fails here instead of exhausting the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_endless_stdin_is_refused(db_url: str, tmp_path: Path, fmt: str) -> None:
    env = {**os.environ, "USERSCTL_DATABASE_URL": db_url, "HOME": str(tmp_path)}
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run(
            [str(SCRIPT), "import", "-", "--format", fmt],
            stdin=zero, capture_output=True, text=True, env=env, timeout=120,
            preexec_fn=_limited_memory,
        )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert done.stderr == "error: line 1: longer than 1 MiB, the limit for a line\n"


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_long_line_in_the_middle_names_its_line(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text(
        "name,email,password\nA,a@example.com,long-enough-and-strong-1\n" + "x" * (2 << 20)
    )
    assert_error(cli("import", str(source)), 5, "line 3: longer than 1 MiB")
    quoted = tmp_path / "q.csv"
    record = '"' + "line\n" * 300_000 + '"'  # one quoted field over 1 MiB of short lines
    quoted.write_text(f"name,email,password\n{record},a@example.com,long-enough-and-strong-1\n")
    assert_error(cli("import", str(quoted)), 5, "line 2:")


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_an_endless_config_file_is_a_usage_error(cli: Cli) -> None:
    result = cli("list", env={"USERSCTL_CONFIG": "/dev/zero"})
    assert_error(result, 2, "config file /dev/zero is larger than 1 MiB")


def test_the_rule_table_agrees_with_the_schema_limits() -> None:
    from usersctl import passwords, rules

    assert (passwords.MIN_LENGTH, passwords.MAX_LENGTH) == (8, 1024)
    assert rules.ID_MAX == 2**31 - 1
