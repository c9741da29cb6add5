"""The user commands end to end: create, list, get, update, passwd, disable/enable, delete and
verify-password, in every output format, on every engine (see DESIGN.md, "Commands")."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from typer.testing import Result

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error

FIELDS = (
    "id", "name", "email", "role", "active", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password", "source", "external_id",
)  # fmt: skip
TABLE_FIELDS = ("id", "name", "email", "role", "active", "last_login_at")
FORMATS = ("table", "json", "jsonl", "csv", "plain")
MACHINE_FORMATS = ("json", "jsonl", "csv")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NEW_PASSWORD = "a brand new secret 42"

Row = dict[str, str]
K = TypeVar("K")
V = TypeVar("V")
Cases = Sequence[tuple[K, V]]


# --------------------------------------------------------------------------- helpers


def user(name: str, email: str, role: str = "user", active: bool = True) -> dict[str, Any]:
    """A row for `seed`."""
    return {"name": name, "email": email, "role": role, "is_active": active}


def text_of(value: Any) -> str:
    """A JSON value as the text formats (table, csv, plain) show it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def without_field_names(text: str) -> str:
    """Output without the field names that contain the word "password"."""
    for name in ("password_changed_at", "must_change_password", "has_password"):
        text = text.replace(name, "")
    return text


def as_text(record: Mapping[str, Any]) -> Row:
    return {key: text_of(value) for key, value in record.items()}


def parse_vertical_table(stdout: str) -> Row:
    """The field/value table `get` and `create` print for one user."""
    row: Row = {}
    for line in stdout.splitlines():
        if line.strip():
            key, value = line.split(None, 1)
            row[key] = "" if value.rstrip() == "-" else value.rstrip()
    return row


def parse_table(stdout: str) -> list[Row]:
    """A piped `list` table: header, rule, one line per user; columns 2+ spaces apart."""
    lines = stdout.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    assert set(lines[1].strip()) == {"─"}, lines[1]
    rows = [re.split(r" {2,}", line.strip()) for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows), rows
    return [
        {key: "" if cell == "-" else cell for key, cell in zip(header, row, strict=True)}
        for row in rows
    ]


def parse_many(fmt: str, stdout: str, fields: Iterable[str] = FIELDS) -> list[Row]:
    """Any format's output for several users, as rows of text."""
    if fmt == "json":
        return [as_text(item) for item in json.loads(stdout)]
    if fmt == "jsonl":
        return [as_text(json.loads(line)) for line in stdout.splitlines()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(stdout)))
    if fmt == "plain":
        names = list(fields)
        return [dict(zip(names, line.split("\t"), strict=True)) for line in stdout.splitlines()]
    assert fmt == "table", fmt
    return parse_table(stdout)


def parse_one(fmt: str, stdout: str, fields: Iterable[str] = FIELDS) -> Row:
    """Any format's output for one user, as a row of text."""
    if fmt == "json":
        document = json.loads(stdout)
        assert isinstance(document, dict), document
        return as_text(document)
    if fmt == "table":
        return parse_vertical_table(stdout)
    rows = parse_many(fmt, stdout, fields)
    assert len(rows) == 1, stdout
    return rows[0]


def listed(cli: Cli, *args: str) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = cli.json("list", *args)
    return users


def ids(users: Iterable[Mapping[str, Any]]) -> list[int]:
    return [u["id"] for u in users]


def names(users: Iterable[Mapping[str, Any]]) -> list[str]:
    return [u["name"] for u in users]


def mismatches(cases: Cases[K, V], outcome: Callable[[K], V]) -> dict[K, tuple[V, V]]:
    """Run a table of (input, expected) against one database; report every wrong case as
    input -> (actual, expected), so one failure does not hide the others."""
    wrong: dict[K, tuple[V, V]] = {}
    for given, expected in cases:
        actual = outcome(given)
        if actual != expected:
            wrong[given] = (actual, expected)
    return wrong


def verify(cli: Cli, ref: str, password: str) -> Result:
    return cli("verify-password", ref, "--password-stdin", input=password + "\n")


def set_created_at(url: str, when: Mapping[int, datetime]) -> None:
    """Give users distinct creation times without sleeping."""
    from sqlalchemy import update

    from usersctl.config import load_settings
    from usersctl.database import Database
    from usersctl.models import User

    database = Database(load_settings(database_url=url))
    with database.session(write=True) as session:
        for user_id, moment in when.items():
            session.execute(
                update(User).where(User.id == user_id).values(created_at=moment, updated_at=moment)
            )
    database.dispose()


def assert_public_user(document: Any) -> None:
    """Exactly the public fields, with the documented types and timestamp format."""
    assert isinstance(document, dict), document
    assert list(document) == list(FIELDS)
    assert isinstance(document["id"], int)
    assert isinstance(document["active"], bool)
    for key in ("created_at", "updated_at"):
        assert TIMESTAMP.match(document[key]), document[key]


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_prints_the_user_in_each_format(cli: Cli, fmt: str) -> None:
    result = cli.ok(
        "create", "--name", "Ada Lovelace", "--email", "ada@example.com",
        "--password-stdin", "-o", fmt, input=SEED_PASSWORD + "\n",
    )  # fmt: skip
    stored = cli.json("get", "ada@example.com")
    assert stored["id"] == 1
    assert stored["name"] == "Ada Lovelace"
    assert stored["role"] == "user"
    assert stored["active"] is True
    assert parse_one(fmt, result.stdout) == as_text(stored)
    assert "password" not in without_field_names(result.stdout)
    assert SEED_PASSWORD not in result.stdout + result.stderr


def test_create_normalizes_name_and_email(cli: Cli) -> None:
    created = cli.create("  Ada Lovelace \t", "Ada.Lovelace@Example.COM")
    assert created["name"] == "Ada Lovelace"
    assert created["email"] == "ada.lovelace@example.com"
    assert cli.json("get", "ADA.LOVELACE@EXAMPLE.COM") == created


@pytest.mark.parametrize(
    ("extra", "role", "active"),
    [
        ((), "user", True),
        (("--role", "ops-team_2"), "ops-team_2", True),
        (("--disabled", "-r", "admin"), "admin", False),
    ],
)
def test_create_role_and_disabled(
    cli: Cli, extra: tuple[str, ...], role: str, active: bool
) -> None:
    created = cli.create("Ada", "ada@example.com", *extra)
    assert (created["role"], created["active"]) == (role, active)
    assert cli.json("get", "1") == created


def test_create_existing_email_is_a_conflict(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    result = cli(
        "create", "--name", "Other", "--email", "ADA@example.com", "--password-stdin",
        input=SEED_PASSWORD + "\n",
    )  # fmt: skip
    assert_error(result, 4, "ada@example.com")
    assert names(listed(cli)) == ["Ada"]


@pytest.mark.parametrize("fmt", MACHINE_FORMATS)
def test_create_random_password_is_a_field_shown_once(cli: Cli, fmt: str) -> None:
    result = cli.ok(
        "create", "--name", "Ada", "--email", "ada@example.com", "--random-password", "-o", fmt
    )
    fields = [*FIELDS, "password"]
    if fmt == "json":
        document = json.loads(result.stdout)
        assert list(document) == fields
    elif fmt == "csv":
        header = result.stdout.splitlines()[0]
        assert header.split(",") == fields
    row = parse_one(fmt, result.stdout, fields)
    password = row.pop("password")
    assert len(password) >= 16
    assert result.stdout.count(password) == 1
    assert password not in result.stderr
    assert row == as_text(cli.json("get", "1"))
    assert verify(cli, "ada@example.com", password).exit_code == 0


def test_create_random_password_in_table_output_follows_the_table(cli: Cli) -> None:
    result = cli.ok("create", "--name", "Ada", "--email", "ada@example.com", "--random-password")
    *table, password = result.stdout.rstrip("\n").splitlines()
    assert password.strip() == password
    assert " " not in password
    assert len(password) >= 16
    assert result.stdout.count(password) == 1
    assert password not in result.stderr
    assert "Generated password" in result.stderr
    assert parse_vertical_table("\n".join(table)) == as_text(cli.json("get", "1"))
    assert verify(cli, "1", password).exit_code == 0


def test_create_random_password_in_plain_output_is_the_last_column(cli: Cli) -> None:
    result = cli.ok(
        "create", "--name", "Ada", "--email", "ada@example.com", "--random-password", "-o", "plain"
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    *cells, password = lines[0].split("\t")
    assert cells == [text_of(v) for v in cli.json("get", "1").values()]
    assert result.stdout.count(password) == 1
    assert password not in result.stderr
    assert verify(cli, "1", password).exit_code == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_if_not_exists_prints_the_existing_user_unchanged(
    cli: Cli, seed: Seeder, fmt: str
) -> None:
    seed([user("Original", "ada@example.com", role="admin", active=False)])
    before = cli.json("get", "1")
    result = cli(
        "create", "--name", "Replacement", "--email", "ADA@Example.com", "--role", "user",
        "--random-password", "--if-not-exists", "-o", fmt,
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert parse_one(fmt, result.stdout) == as_text(before)
    assert result.stderr == "User ada@example.com already exists; left unchanged.\n"
    assert "password" not in without_field_names(result.stdout.lower())
    assert listed(cli) == [before]


def test_create_if_not_exists_keeps_the_existing_password(cli: Cli, seed: Seeder) -> None:
    seed([user("Original", "ada@example.com")])
    before = cli.json("get", "1")
    result = cli(
        "create", "--name", "Other", "--email", "ada@example.com", "--password-stdin",
        "--if-not-exists", "-o", "json", input=NEW_PASSWORD + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == before
    assert "already exists" in result.stderr
    assert verify(cli, "1", NEW_PASSWORD).exit_code == 6
    assert verify(cli, "1", SEED_PASSWORD).exit_code == 0


# --------------------------------------------------------------------------- list


@pytest.fixture
def team(seed: Seeder) -> list[int]:
    """Five users in an order where id, name and email order all differ."""
    return seed(
        [
            user("Carol", "carol@example.com", role="admin"),
            user("Alice", "zed@example.com"),
            user("Eve", "eve@example.org", active=False),
            user("Bob", "bob@example.com", role="admin", active=False),
            user("Dan", "dan@example.net"),
        ]
    )


def test_list_orders_by_id_by_default(cli: Cli, team: list[int]) -> None:
    # An update moves the row on PostgreSQL: the order must still be by id.
    cli.ok("update", "1", "--name", "Carol Renamed")
    users = listed(cli)
    assert ids(users) == team == [1, 2, 3, 4, 5]
    assert names(users) == ["Carol Renamed", "Alice", "Eve", "Bob", "Dan"]


FILTER_CASES: Cases[tuple[str, ...], list[str]] = [
    (("--role", "admin"), ["Carol", "Bob"]),
    (("--role", "user"), ["Alice", "Eve", "Dan"]),
    (("--role", "nobody"), []),
    (("--active",), ["Carol", "Alice", "Dan"]),
    (("--disabled",), ["Eve", "Bob"]),
    (("--role", "admin", "--disabled"), ["Bob"]),
    (("--role", "admin", "--active"), ["Carol"]),
]


def test_list_filters(cli: Cli, team: list[int]) -> None:
    assert mismatches(FILTER_CASES, lambda args: names(listed(cli, *args))) == {}
    assert {u["active"] for u in listed(cli, "--active")} == {True}
    assert {u["active"] for u in listed(cli, "--disabled")} == {False}


SEARCH_CASES: Cases[str, list[str]] = [
    ("ALICE", ["Alice Smith"]),
    ("smith", ["Alice Smith"]),
    ("EXAMPLE.ORG", ["Bob Jones"]),  # stored lowercased
    ("Jones@", []),  # name and email are matched separately
    ("%", ["100% Sure"]),
    ("0%", ["100% Sure"]),  # a wildcard would also match "1000 Sure"
    ("e_c", ["snake_case"]),  # ... and "snakeXcase"
    ("_", ["snake_case", "Carol"]),  # ... and everyone
    ("c_d", ["Carol"]),  # ... and the email cxd@
    ("/", ["Slash/Name"]),
    ("\\", ["Back\\Slash"]),
    ("nobody", []),
]


def test_list_search_is_case_insensitive_and_literal(cli: Cli, seed: Seeder) -> None:
    seed(
        [
            user("Alice Smith", "alice@example.com"),
            user("Bob Jones", "Bob@EXAMPLE.org"),
            user("100% Sure", "percent@example.com"),
            user("1000 Sure", "thousand@example.com"),
            user("snake_case", "snake@example.com"),
            user("snakeXcase", "camel@example.com"),
            user("Carol", "c_d@example.net"),
            user("Dave", "cxd@example.net"),
            user("Slash/Name", "slash@example.com"),
            user("Back\\Slash", "backslash@example.com"),
        ]
    )
    assert mismatches(SEARCH_CASES, lambda needle: names(listed(cli, "--search", needle))) == {}


def test_list_search_is_case_insensitive_beyond_ascii(cli: Cli, seed: Seeder) -> None:
    seed([user("Élodie Zoë", "elodie@example.com"), user("Other", "other@example.com")])
    cases: Cases[str, list[str]] = [
        (needle, ["Élodie Zoë"]) for needle in ("élodie", "ÉLODIE", "zoË")
    ]
    assert mismatches(cases, lambda needle: names(listed(cli, "--search", needle))) == {}


SORT_CASES: Cases[tuple[str, ...], list[str]] = [
    ((), ["Carol", "Alice", "Eve", "Bob", "Dan"]),
    (("--sort", "id"), ["Carol", "Alice", "Eve", "Bob", "Dan"]),
    (("--sort", "-id"), ["Dan", "Bob", "Eve", "Alice", "Carol"]),
    (("--sort", "name"), ["Alice", "Bob", "Carol", "Dan", "Eve"]),
    (("--sort", "-name"), ["Eve", "Dan", "Carol", "Bob", "Alice"]),
    (("--sort=-name",), ["Eve", "Dan", "Carol", "Bob", "Alice"]),
    (("--sort", "email"), ["Bob", "Carol", "Dan", "Eve", "Alice"]),
    # ties on role/active are broken by id, in the same direction
    (("--sort", "role"), ["Carol", "Bob", "Alice", "Eve", "Dan"]),
    (("--sort", "-active"), ["Dan", "Alice", "Carol", "Bob", "Eve"]),
    (("--sort", "created_at"), ["Alice", "Dan", "Carol", "Eve", "Bob"]),
    (("--sort=-created_at",), ["Bob", "Eve", "Carol", "Dan", "Alice"]),
    (("--sort", "-created_at", "--role", "admin"), ["Bob", "Carol"]),
]


def test_list_sort(cli: Cli, team: list[int]) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    # created_at order (Alice, Dan, Carol, Eve, Bob) differs from id and name order
    months = {2: 1, 5: 2, 1: 3, 3: 4, 4: 5}
    set_created_at(cli.url, {uid: base.replace(month=m) for uid, m in months.items()})
    assert mismatches(SORT_CASES, lambda args: names(listed(cli, *args))) == {}


@pytest.mark.parametrize("field", ["password_hash", "bogus", "-nope", "Name", ""])
def test_list_bad_sort_field_is_a_usage_error(cli: Cli, team: list[int], field: str) -> None:
    result = cli("list", "--sort", field)
    assert_error(result, 2, "cannot sort by", "created_at")
    assert result.stdout == ""


PAGE_CASES: Cases[tuple[str, ...], list[int]] = [
    (("--limit", "2"), [1, 2]),
    (("--offset", "3"), [4, 5]),
    (("--limit", "2", "--offset", "1"), [2, 3]),
    (("--limit", "0"), []),
    (("--offset", "5"), []),
    (("--limit", "10", "--offset", "4"), [5]),
    (("--sort", "-id", "--limit", "2", "--offset", "1"), [4, 3]),
    (("--disabled", "--limit", "1", "--offset", "1"), [4]),
]


def test_list_limit_and_offset(cli: Cli, team: list[int]) -> None:
    assert mismatches(PAGE_CASES, lambda args: ids(listed(cli, *args))) == {}


@pytest.mark.parametrize("option", ["--limit", "--offset"])
def test_list_negative_limit_or_offset_is_a_usage_error(
    cli: Cli, team: list[int], option: str
) -> None:
    assert_error(cli("list", option, "-1"), 2, option)


@pytest.mark.parametrize(
    ("fmt", "stdout", "stderr"),
    [
        ("json", "[]\n", ""),
        ("jsonl", "", ""),
        ("csv", ",".join(FIELDS) + "\n", ""),
        ("plain", "", ""),
        ("table", "", "No users.\n"),
    ],
)
def test_list_empty_database(cli: Cli, fmt: str, stdout: str, stderr: str) -> None:
    result = cli.ok("list", "-o", fmt)
    assert result.stdout == stdout
    assert result.stderr == stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_list_prints_every_user_in_each_format(cli: Cli, team: list[int], fmt: str) -> None:
    expected = [as_text(u) for u in listed(cli)]
    assert len(expected) == 5
    if fmt == "table":  # the default table's columns fit 80 columns
        expected = [{k: row[k] for k in TABLE_FIELDS} for row in expected]
    assert parse_many(fmt, cli.ok("list", "-o", fmt).stdout) == expected


# --------------------------------------------------------------------------- output formats


def test_json_single_user_has_exactly_the_public_fields(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com", role="admin", active=False)])
    document = cli.json("get", "1")
    assert_public_user(document)
    assert document["name"] == "Ada"
    assert document["role"] == "admin"
    assert document["active"] is False


def test_json_list_is_an_array_and_jsonl_one_object_per_line(cli: Cli, team: list[int]) -> None:
    array = listed(cli)
    assert isinstance(array, list)
    for document in array:
        assert_public_user(document)
    lines = cli.ok("list", "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == array


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", ["get", "list"])
def test_password_hash_is_never_printed(cli: Cli, seed: Seeder, fmt: str, command: str) -> None:
    seed([user("Ada", "ada@example.com")])
    args = ("get", "1") if command == "get" else ("list",)
    result = cli.ok(*args, "-o", fmt)
    assert "password_hash" not in result.stdout
    assert "$argon2" not in result.stdout + result.stderr


def test_csv_round_trips_commas_and_quotes(cli: Cli, seed: Seeder) -> None:
    tricky = ['Lovelace, Ada "The Countess"', '"quoted"', "a,b,,c", "it's; fine"]
    seed([user(name, f"user{n}@example.com") for n, name in enumerate(tricky)])
    rows = list(csv.reader(io.StringIO(cli.ok("list", "-o", "csv").stdout)))
    assert rows[0] == list(FIELDS)
    assert [row[1] for row in rows[1:]] == tricky
    assert all(len(row) == len(FIELDS) for row in rows)
    single = list(csv.DictReader(io.StringIO(cli.ok("get", "1", "-o", "csv").stdout)))
    assert [row["name"] for row in single] == [tricky[0]]


def test_plain_is_tab_separated_without_header(cli: Cli, team: list[int]) -> None:
    stdout = cli.ok("list", "-o", "plain").stdout
    lines = stdout.splitlines()
    assert len(lines) == 5
    assert lines[0] == "\t".join(text_of(v) for v in cli.json("get", "1").values())
    assert all(len(line.split("\t")) == len(FIELDS) for line in lines)
    assert not any(line.startswith("id") for line in lines)


LONG_NAME = ("Name " + " ".join(f"word{i:03d}" for i in range(40)))[:199] + "Z"
LONG_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + ".example"


@pytest.mark.parametrize("columns", [None, "20"])
def test_piped_table_never_wraps_cuts_or_ellipsizes(
    cli: Cli, seed: Seeder, columns: str | None
) -> None:
    assert len(LONG_NAME) == 200
    seed([user("Short", "short@example.com"), user(LONG_NAME, LONG_EMAIL)])
    env = {"COLUMNS": columns} if columns else None
    listing = cli("list", env=env)
    assert listing.exit_code == 0, listing.stderr
    assert "…" not in listing.stdout
    hits = [line for line in listing.stdout.splitlines() if LONG_NAME in line]
    assert len(hits) == 1
    assert LONG_EMAIL in hits[0]
    assert len(listing.stdout.splitlines()) == 4  # header, rule, two users
    shown = cli("get", "2", env=env)
    assert shown.exit_code == 0, shown.stderr
    assert "…" not in shown.stdout
    assert parse_vertical_table(shown.stdout)["name"] == LONG_NAME
    assert parse_vertical_table(shown.stdout)["email"] == LONG_EMAIL


MARKUP_NAMES = [
    "[bold red]x[/]",
    "[link=http://evil]y[/link]",
    ":smile:",
    "[/]",
    "\\[b]escaped\\[/b]",
    "[b]unclosed",
]


def test_rich_markup_and_escapes_are_shown_verbatim(cli: Cli, seed: Seeder) -> None:
    seed([user(name, f"mark{n}@example.com") for n, name in enumerate(MARKUP_NAMES)])
    in_json = names(listed(cli))
    in_table = [row["name"] for row in parse_table(cli.ok("list").stdout)]
    in_plain = [line.split("\t")[1] for line in cli.ok("list", "-o", "plain").stdout.splitlines()]
    assert in_json == in_table == in_plain == MARKUP_NAMES
    for n, name in enumerate(MARKUP_NAMES, start=1):
        assert cli.json("get", str(n))["name"] == name
        assert parse_vertical_table(cli.ok("get", str(n)).stdout)["name"] == name
        assert cli.ok("get", str(n), "-o", "plain").stdout.split("\t")[1] == name
    assert "😄" not in cli.ok("list").stdout


# --------------------------------------------------------------------------- get


@pytest.mark.parametrize(
    "ref", ["2", "bob@example.com", "BOB@EXAMPLE.COM", "Bob@Example.Com", " bob@example.com "]
)
def test_get_by_id_or_email_in_any_case(cli: Cli, seed: Seeder, ref: str) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com")])
    shown = cli.json("get", ref)
    assert (shown["id"], shown["name"], shown["email"]) == (2, "Bob", "bob@example.com")


@pytest.mark.parametrize("ref", ["3", "nobody@example.com", "0"])
def test_get_unknown_user(cli: Cli, seed: Seeder, ref: str) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com")])
    result = cli("get", ref)
    assert_error(result, 3, "not found", ref)
    assert result.stdout == ""


# --------------------------------------------------------------------------- update


@pytest.mark.parametrize(
    ("args", "changed"),
    [
        (("--name", "  Ada King  "), {"name": "Ada King"}),
        (("--email", "Countess@Lovelace.ORG"), {"email": "countess@lovelace.org"}),
        (("--role", "admin"), {"role": "admin"}),
        (
            ("-n", "Ada King", "-e", "ADA@EXAMPLE.COM", "-r", "auditor"),
            {"name": "Ada King", "role": "auditor"},
        ),
    ],
)
def test_update_fields(
    cli: Cli, seed: Seeder, args: tuple[str, ...], changed: dict[str, str]
) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com")])
    before = cli.json("get", "1")
    other = cli.json("get", "2")
    printed = cli.json("update", "ada@example.com", *args)
    assert_public_user(printed)
    assert printed == cli.json("get", "1")
    unchanged = {k: v for k, v in before.items() if k not in changed and k != "updated_at"}
    assert {k: printed[k] for k in unchanged} == unchanged
    assert {k: printed[k] for k in changed} == changed
    assert printed["updated_at"] >= printed["created_at"]
    assert printed["updated_at"] >= before["updated_at"]
    assert cli.json("get", "2") == other


@pytest.mark.parametrize("fmt", FORMATS)
def test_update_prints_the_user_in_each_format(cli: Cli, seed: Seeder, fmt: str) -> None:
    seed([user("Ada", "ada@example.com")])
    result = cli.ok("update", "1", "--role", "admin", "-o", fmt)
    after = cli.json("get", "1")
    assert after["role"] == "admin"
    assert parse_one(fmt, result.stdout) == as_text(after)


def test_update_without_a_field_is_a_usage_error(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    before = cli.json("get", "1")
    assert_error(cli("update", "1"), 2, "nothing to change")
    assert cli.json("get", "1") == before


def test_update_unknown_user(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    assert_error(cli("update", "nobody@example.com", "--role", "admin"), 3, "nobody@example.com")


@pytest.mark.parametrize("email", ["bob@example.com", "BOB@Example.COM"])
def test_update_email_to_another_users_email_is_a_conflict(
    cli: Cli, seed: Seeder, email: str
) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com")])
    before = listed(cli)
    result = cli("update", "1", "--email", email, "--name", "Changed", "--role", "admin")
    assert_error(result, 4, "bob@example.com")
    assert result.stdout == ""
    assert listed(cli) == before


def test_update_email_to_its_own_email_in_another_case(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    assert cli.json("update", "1", "--email", "ADA@example.com")["email"] == "ada@example.com"


# --------------------------------------------------------------------------- passwd


def test_passwd_from_stdin_replaces_the_password(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com")])
    result = cli.ok("passwd", "ADA@example.com", "--password-stdin", input=NEW_PASSWORD + "\n")
    assert NEW_PASSWORD not in result.stdout + result.stderr
    assert "Password changed" in result.stderr
    assert verify(cli, "1", SEED_PASSWORD).exit_code == 6
    assert verify(cli, "1", NEW_PASSWORD).exit_code == 0
    assert verify(cli, "2", SEED_PASSWORD).exit_code == 0  # nobody else's changed


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_passwd_random_password_is_printed_once(cli: Cli, seed: Seeder, fmt: str) -> None:
    seed([user("Ada", "ada@example.com")])
    result = cli.ok("passwd", "1", "--random-password", "-o", fmt)
    if fmt == "json":
        document = json.loads(result.stdout)
        assert list(document) == [*FIELDS, "password"]
        password = document["password"]
    else:
        password = result.stdout.rstrip("\n").splitlines()[-1]
    assert len(password) >= 16
    assert result.stdout.count(password) == 1
    assert password not in result.stderr
    assert verify(cli, "1", password).exit_code == 0


def test_passwd_unknown_user_changes_nothing(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    result = cli("passwd", "2", "--password-stdin", input=NEW_PASSWORD + "\n")
    assert_error(result, 3, "2")


# --------------------------------------------------------------------------- disable / enable


def test_disable_and_enable_several_users(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com"), user("Cy", "c@x.org")])
    disabled = cli.json("disable", "1", "BOB@example.com")
    assert ids(disabled) == [1, 2]
    assert [u["active"] for u in disabled] == [False, False]
    assert [u["active"] for u in listed(cli)] == [False, False, True]
    assert verify(cli, "1", SEED_PASSWORD).exit_code == 6
    enabled = cli.json("enable", "bob@example.com", "1", "3")
    assert ids(enabled) == [2, 1, 3]
    assert [u["active"] for u in listed(cli)] == [True, True, True]
    assert verify(cli, "1", SEED_PASSWORD).exit_code == 0


@pytest.mark.parametrize(
    ("command", "active"), [("disable", True), ("enable", False)], ids=["disable", "enable"]
)
def test_disable_and_enable_are_all_or_nothing(
    cli: Cli, seed: Seeder, command: str, active: bool
) -> None:
    seed([user("Ada", "ada@example.com", active=active), user("Bob", "b@x.org", active=active)])
    result = cli(command, "1", "999", "b@x.org")
    assert_error(result, 3, "999")
    assert result.stdout == ""
    assert [u["active"] for u in listed(cli)] == [active, active]


def test_disable_same_user_twice_in_one_call(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    assert ids(cli.json("disable", "1", "ADA@example.com")) == [1]
    assert cli.json("get", "1")["active"] is False


# --------------------------------------------------------------------------- delete


@pytest.fixture
def trio(seed: Seeder) -> list[int]:
    return seed(
        [user("Ada", "ada@example.com"), user("Bob", "bob@example.com"), user("Cy", "c@x.org")]
    )


def test_delete_without_yes_off_a_terminal_is_a_usage_error(cli: Cli, trio: list[int]) -> None:
    result = cli("delete", "1")
    assert_error(result, 2, "--yes")
    assert result.stdout == ""
    assert ids(listed(cli)) == [1, 2, 3]


def test_delete_several_users(cli: Cli, trio: list[int]) -> None:
    before = listed(cli)
    deleted = cli.json("delete", "1", "BOB@example.com", "--yes")
    assert deleted == before[:2]
    assert ids(listed(cli)) == [3]
    assert_error(cli("get", "1"), 3)


def test_delete_table_output_says_how_many(cli: Cli, trio: list[int]) -> None:
    result = cli.ok("delete", "1", "2", "--yes")
    assert [row["name"] for row in parse_table(result.stdout)] == ["Ada", "Bob"]
    assert "Deleted 2 user(s)." in result.stderr


def test_delete_unknown_user_deletes_nothing(cli: Cli, trio: list[int]) -> None:
    result = cli("delete", "1", "999", "--yes")
    assert_error(result, 3, "999")
    assert result.stdout == ""
    assert ids(listed(cli)) == [1, 2, 3]


def test_delete_missing_ok_deletes_only_existing_users(cli: Cli, trio: list[int]) -> None:
    ada = cli.json("get", "1")
    deleted = cli.json("delete", "1", "999", "ghost@example.com", "--yes", "--missing-ok")
    assert deleted == [ada]
    assert ids(listed(cli)) == [2, 3]


def test_delete_missing_ok_with_nothing_to_delete(cli: Cli, trio: list[int]) -> None:
    result = cli.ok("delete", "999", "--yes", "--missing-ok", "-o", "json")
    assert json.loads(result.stdout) == []
    assert "Nothing to delete." in result.stderr
    assert ids(listed(cli)) == [1, 2, 3]


@pytest.mark.parametrize("refs", [("1", "1"), ("1", "ADA@example.com", "ada@example.com")])
def test_delete_same_user_twice_in_one_call(
    cli: Cli, trio: list[int], refs: tuple[str, ...]
) -> None:
    ada = cli.json("get", "1")
    assert cli.json("delete", *refs, "--yes") == [ada]
    assert ids(listed(cli)) == [2, 3]


# --------------------------------------------------------------------------- verify-password


def test_verify_password_succeeds_for_an_active_user(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    result = verify(cli, "ADA@example.com", SEED_PASSWORD)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "verified" in result.stderr


def test_verify_password_disabled_user_with_the_right_password(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com", active=False)])
    assert_error(verify(cli, "ada@example.com", SEED_PASSWORD), 6)


def test_verify_password_failures_are_indistinguishable(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com"), user("Bob", "bob@example.com", active=False)])
    wrong = verify(cli, "ada@example.com", "not the password")
    unknown = verify(cli, "ghost@example.com", SEED_PASSWORD)
    unknown_id = verify(cli, "99", SEED_PASSWORD)
    disabled = verify(cli, "bob@example.com", SEED_PASSWORD)
    assert_error(wrong, 6)
    for result in (unknown, unknown_id, disabled):
        assert result.exit_code == 6
        assert result.stderr == wrong.stderr
        assert result.stdout == wrong.stdout == ""
    assert "ghost" not in unknown.stderr


def test_verify_password_without_a_source_off_a_terminal(cli: Cli, seed: Seeder) -> None:
    seed([user("Ada", "ada@example.com")])
    assert_error(cli("verify-password", "1"), 2, "--password-stdin")
