"""Hostile input through the real CLI: every value is either stored and shown back exactly,
in every output format, or rejected with exit 5 and the database unchanged.

Property-based (hypothesis) over names, emails (internationalised ones too), roles and
password lines, plus the classics as explicit examples: Rich markup, ANSI escapes, NUL and
other control characters, SQL, right-to-left and combining characters, very long values,
empty stdin, a 100 kB password line. SQLite only: the checks are about parsing and
rendering, which do not depend on the engine.

"Exactly" follows DESIGN.md: a name is trimmed, an email is normalised (email-validator)
and lowercased, a role is kept as given. The oracle for what must be accepted is the
contract (1-200 characters without control characters; email-validator; the role
pattern), so a valid value that is refused fails a test as much as a bad one that is kept.

argon2 is swapped for cheap parameters in this process (the hashing policy has its own
tests), so that hundreds of examples stay fast.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from usersctl.cli import app

USERSCTL = Path(sys.executable).parent / "usersctl"
FIELDS = (
    "id", "name", "email", "role", "active", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password", "source", "external_id",
)  # fmt: skip
TABLE_FIELDS = ("id", "name", "email", "role", "active", "last_login_at")  # list's default
FORMATS = ("json", "jsonl", "csv", "plain", "table")
GOOD_PASSWORD = "a perfectly fine password"
ADA = ["create", "--name", "Ada", "--email", "ada@example.com"]
ROLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# control, format (bidi overrides, zero-width space; not the joiners), surrogate, line and
# paragraph separators
FORBIDDEN_IN_NAMES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
JOINERS = {"\u200c", "\u200d"}
BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0"}  # the Hangul fillers

HOSTILE = [
    "[bold]Ada[/bold]",
    "[link=https://evil.example]click me[/link]",
    "[/]",
    "[red",
    ":smile: :warning:",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;pwned\x07",
    "\x9b31m",  # C1 CSI
    "\x00",
    "a\x00b",
    "tab\there",
    "line\nbreak",
    "\r",
    "\x7f",
    "'; DROP TABLE users; --",
    "Robert'); DROP TABLE users;--",
    '" OR 1=1 --',
    "%",
    "_",
    "\\",
    "%_\\'\"",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # RLM + Hebrew
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic
    "e\u0301",  # combining acute
    "\u0301",  # a lone combining mark
    "Z\u0351\u0361\u0300a\u0300\u0301l\u0307g\u0358o",
    "\U0001d518\U0001d52b\U0001d526",  # mathematical fraktur
    "\U0001f469\u200d\U0001f4bb",  # ZWJ emoji sequence
    "\ufeffBOM",
    "\u2028",
    "\u00a0nbsp\u00a0",
    "\udcff",  # what an invalid UTF-8 byte in argv becomes
    "${HOME} $(id) `id`",
    "%s%n{0}",
    "<script>alert(1)</script>",
    "   ",
    "",
    "x" * 200,
    "x" * 201,
    "y" * 10_000,
]

NAMES = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8), min_size=1, max_size=4).map("".join),
    st.text(max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF), max_size=210),
    # everything the contract allows: any printable text, markup and BiDi included
    st.text(
        alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]),
        min_size=1,
        max_size=200,
    ),
)

VALID_EMAILS = [
    "josé@example.com",
    "JOSÉ@EXAMPLE.COM",
    "用户@例子.广告",
    "δοκιμή@παράδειγμα.δοκιμή",
    "ada@bücher.de",
    "o'brien@example.com",
    "a+tag@example.org",
    "  Ada@Example.COM  ",
    "x" * 64 + "@example.com",
]
HOSTILE_EMAILS = [
    "a@example.com'; DROP TABLE users; --",
    "'; DROP TABLE users; --@example.com",
    "[bold]a@example.com",
    "a[/bold]@example.com",
    "\x1b[31ma@example.com",
    "a\x00@example.com",
    "a@example.com\n",
    "a\r\n@example.com",
    "\u202ea@example.com",
    "a@example.com\u202e",
    "x" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["label"] * 60) + ".com",
    "a@b",
    "@example.com",
    "a@",
    "a@@example.com",
    "a@example..com",
    "a@localhost",
    "a@example.local",
    "a\udcff@example.com",
    "",
]
LOCAL_PART = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20
)
EMAILS = st.one_of(
    st.sampled_from(VALID_EMAILS),
    st.sampled_from(HOSTILE_EMAILS),
    st.emails(),
    st.builds("{}@example.com".format, LOCAL_PART),
    st.builds("{}@{}".format, LOCAL_PART, st.sampled_from(["例子.广告", "bücher.de", "b.c"])),
    st.text(max_size=30),
)
ROLES = st.one_of(
    st.from_regex(ROLE, fullmatch=True),
    st.sampled_from(
        [
            "admin",
            "Admin",
            "admin\n",
            " admin",
            "r" * 32,
            "r" * 33,
            "a-b_c9",
            "",
            "[bold]admin",
            "admin'; --",
            "\x1b[31m",
            "é",
        ]
    ),
    st.text(max_size=40),
)

# Each field is valid often enough that many examples are accepted and rendered.
CREATE_EMAILS = st.one_of(st.sampled_from(VALID_EMAILS), EMAILS)
CREATE_ROLES = st.one_of(st.just("user"), st.from_regex(ROLE, fullmatch=True), ROLES)


# ---------------- the oracle


def name_ok(name: str) -> bool:
    trimmed = name.strip()
    return (
        1 <= len(trimmed) <= 200
        and not any(
            unicodedata.category(c) in FORBIDDEN_IN_NAMES and c not in JOINERS for c in trimmed
        )
        and any(not c.isspace() and c not in JOINERS | BLANK_LETTERS for c in trimmed)
    )


def reference_email(email: str) -> str | None:
    try:
        email = email.strip()
        if email.lower().endswith("@localhost"):  # the one single-label domain accepted
            email = email + ".com"
            return validate_email(email, check_deliverability=False).normalized.lower()[:-4]
        # Special-use domains usersctl accepts (README): checked as if under .com.
        if email.lower().endswith((".arpa", ".local", ".localhost", ".test")):
            email = email + ".com"
            return validate_email(email, check_deliverability=False).normalized.lower()[:-4]
        return validate_email(email, check_deliverability=False).normalized.lower()
    except (EmailNotValidError, UnicodeError):
        return None


def role_ok(role: str) -> bool:
    return ROLE.fullmatch(role) is not None


# ---------------- running the CLI on a database of its own


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    import usersctl.passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(usersctl.passwords, "_hasher", cheap)


class Db:
    """A fresh copy of the migrated template, driven through CliRunner."""

    def __init__(self, folder: Path, template: Path) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(template, self.path)
        self.url = f"sqlite:///{self.path}"
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | bytes | None = None) -> Result:
        return self.runner.invoke(
            app, list(args), input=input, env={"USERSCTL_DATABASE_URL": self.url}
        )

    def create_ada(self) -> None:
        result = self(*ADA, "--password-stdin", input=GOOD_PASSWORD + "\n")
        assert result.exit_code == 0, result.stderr

    def dump(self) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            users = connection.execute("SELECT * FROM users ORDER BY id").fetchall()
            version = connection.execute("SELECT * FROM alembic_version").fetchall()
            return [*users, *version]
        finally:
            connection.close()

    def stored(self, user_id: int) -> dict[str, Any]:
        connection = sqlite3.connect(self.path)
        try:
            name, email, role = connection.execute(
                "SELECT name, email, role FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        finally:
            connection.close()
        return {"name": name, "email": email, "role": role}


@pytest.fixture
def new_db(tmp_path: Path, sqlite_template: Path) -> Iterator[Any]:
    """A factory: one new database per hypothesis example."""
    yield lambda: Db(tmp_path, sqlite_template)


def assert_rejected(result: Result, db: Db, before: list[tuple[Any, ...]], *secrets: str) -> None:
    assert result.exit_code == 5, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    # Whatever was typed, nothing raw reaches the terminal: no escape, NUL, or BiDi trick
    # that could survive as a control character.
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stderr), repr(result.stderr)
    assert result.stdout == ""
    for secret in secrets:
        if len(secret) >= 6:
            assert secret not in result.stderr
    assert db.dump() == before


# ---------------- what every format shows


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def shown_in_every_format(db: Db, user: dict[str, Any]) -> None:
    """`get` (by id and by email) and `list`, in all five formats, show exactly `user`."""
    expected_text = {key: text_of(user[key]) for key in FIELDS}
    # Tables show an empty value (never logged in, no expiry) as "-".
    table_text = {key: "-" if user[key] is None else text_of(user[key]) for key in FIELDS}
    ref = str(user["id"])
    # ("--": an email may start with "-", like any argument a script passes through)
    by_email = db("get", "-o", "json", "--", user["email"])
    assert by_email.exit_code == 0, by_email.stderr
    assert json.loads(by_email.stdout) == user
    for fmt in FORMATS:
        # `get` in every format; `list` where it renders differently (array, wide table).
        for command in (("get", ref), ("list",)) if fmt in ("json", "table") else (("get", ref),):
            result = db(command[0], "-o", fmt, *command[1:])
            assert result.exit_code == 0, (command, fmt, result.stderr)
            out = result.stdout
            if fmt == "json":
                document = json.loads(out)
                assert (document if command[0] == "get" else document[-1]) == user
            elif fmt == "jsonl":
                assert json.loads(out.splitlines()[-1]) == user
            elif fmt == "csv":
                table = list(csv.reader(io.StringIO(out)))
                assert table[0] == list(FIELDS)
                # A cell a spreadsheet would run as a formula gets a leading ' (OWASP).
                expected_csv = {
                    key: "'" + value if re.match("'*[-=+@\t\r]", value) else value
                    for key, value in expected_text.items()
                }
                assert dict(zip(FIELDS, table[-1], strict=True)) == expected_csv
            elif fmt == "plain":
                cells = out.rstrip("\n").split("\n")[-1].split("\t")
                assert dict(zip(FIELDS, cells, strict=True)) == expected_text
            elif command[0] == "get":  # the vertical table: "field   value" per line
                lines = out.rstrip("\n").split("\n")
                assert len(lines) == len(FIELDS), out
                for key, line in zip(FIELDS, lines, strict=True):
                    label, _, value = line.partition(" ")
                    assert label == key, line
                    assert value.strip(" ") == table_text[key], (key, line)
            else:  # the list table: the whole value, unwrapped, on the user's row
                row = [line for line in out.split("\n") if line.startswith(f"{ref} ")]
                assert len(row) == 1, out
                for key in TABLE_FIELDS:
                    assert f" {table_text[key]} " in f" {row[0]} ", (key, row[0])
            if fmt != "json":  # JSON escapes DEL/C1 itself; the rest must not contain them
                assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)


SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---------------- create


@SETTINGS
@given(name=NAMES, email=CREATE_EMAILS, role=CREATE_ROLES)
@example(name="[bold]Ada[/bold]", email="josé@example.com", role="admin")
@example(name="'; DROP TABLE users; --", email="用户@例子.广告", role="user")
@example(name="\u202eevil\u202c e\u0301", email="δοκιμή@παράδειγμα.δοκιμή", role="a-b_c9")
@example(name="x" * 200, email="Ada@Example.COM", role="r" * 32)
@example(name="\x1b[31mred\x1b[0m", email="a@example.com", role="user")
@example(name="Ada", email="a@example.com'; DROP TABLE users; --", role="user")
@example(name="Ada", email="a@example.com", role="admin'; --")
def test_create_stores_exactly_or_rejects(new_db: Any, name: str, email: str, role: str) -> None:
    db = new_db()
    before = db.dump()
    args = ["create", "--name", name, "--email", email, "--role", role, "--password-stdin"]
    result = db(*args, "-o", "json", input=GOOD_PASSWORD + "\n")
    expected_email = reference_email(email)
    valid = name_ok(name) and role_ok(role) and expected_email is not None
    event("accepted" if valid else "rejected")
    if not valid:
        assert_rejected(result, db, before, GOOD_PASSWORD)
        return
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    user = json.loads(result.stdout)
    assert list(user) == list(FIELDS)
    assert (user["name"], user["email"], user["role"]) == (name.strip(), expected_email, role)
    assert db.stored(user["id"]) == {"name": user["name"], "email": user["email"], "role": role}
    shown_in_every_format(db, user)


# ---------------- update


@SETTINGS
@given(field=st.sampled_from(["name", "email", "role"]), data=st.data())
def test_update_stores_exactly_or_rejects(new_db: Any, field: str, data: st.DataObject) -> None:
    db = new_db()
    db.create_ada()
    value = data.draw({"name": NAMES, "email": CREATE_EMAILS, "role": ROLES}[field], label=field)
    before = db.dump()
    result = db("update", "1", f"--{field}", value, "-o", "json")
    expected = {
        "name": value.strip() if name_ok(value) else None,
        "email": reference_email(value),
        "role": value if role_ok(value) else None,
    }[field]
    event(f"{field} {'rejected' if expected is None else 'accepted'}")
    if expected is None:
        assert_rejected(result, db, before)
        return
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    user = json.loads(result.stdout)
    assert user[field] == expected
    assert db.stored(1)[field] == expected
    shown_in_every_format(db, user)


# ---------------- password lines

PASSWORD_TEXT = st.one_of(
    # CliRunner's stdin uses universal newlines (a lone "\r" ends a line there, unlike a real
    # process's stdin); carriage returns are tested with a real process below.
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12),
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=8, max_size=80
    ),
    st.sampled_from(
        [
            "",
            " ",
            "short",
            "1234567",
            "12345678",
            "\x00" * 8,
            "\x1b[31m" * 3,
            "[bold]password[/bold]",
            "'; DROP TABLE users; --",
            "\u202e" + "p" * 8,
            "e\u0301" * 8,
            "p" * 1024,
            "p" * 1025,
            "é" * 1024,
            "é" * 1025,
            "  padded password  ",
            "\t" * 8,
            "$argon2id$v=19$m=65536,t=3,p=4$x",
        ]
    ),
)


def _policy_accepts(password: str) -> bool:
    """What the password policy says of `password` for Ada (see test_password_policy.py)."""
    from usersctl import password_policy
    from usersctl.errors import InvalidData

    try:
        password_policy.check(password, user_inputs=("Ada", "ada@example.com"))
    except InvalidData:
        return False
    return True


@SETTINGS
@given(password=PASSWORD_TEXT, ending=st.sampled_from(["\n", "\r\n", "", "\nsecond line\n"]))
def test_password_line_is_kept_exactly_or_rejected(new_db: Any, password: str, ending: str) -> None:
    db = new_db()
    db.create_ada()
    before = db.dump()
    result = db("passwd", "1", "--password-stdin", "-o", "json", input=password + ending)
    acceptable = _policy_accepts(password)
    event("accepted" if acceptable else "rejected")
    if not acceptable:
        assert_rejected(result, db, before, password)
        return
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    if len(password) >= 6:
        assert password not in result.stdout + result.stderr
    assert "$argon2" not in result.stdout + result.stderr
    assert db("verify-password", "1", "--password-stdin", input=password + "\n").exit_code == 0
    for other in {password[:-1], password + "x", GOOD_PASSWORD} - {password}:
        verified = db("verify-password", "1", "--password-stdin", input=other + "\n")
        assert verified.exit_code == (6 if len(other) <= 1024 else 5), repr(other)


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        ("", "no password on standard input"),
        ("\n", "password too short"),
        ("p" * 100_000 + "\n", "password too long"),
        ("p" * 100_000, "password too long"),
        (b"caf\xe9 latte password\n", "not valid UTF-8"),
    ],
    ids=["empty", "empty-line", "100kB-line", "100kB-no-newline", "latin-1"],
)
@pytest.mark.parametrize("command", ["create", "passwd"])
def test_unusable_password_stdin_is_rejected(
    new_db: Any, command: str, stdin: str | bytes, fragment: str
) -> None:
    db = new_db()
    db.create_ada()
    before = db.dump()
    args = ["create", "--name", "Bob", "--email", "bob@example.com"]
    result = db(
        *(args if command == "create" else ["passwd", "1"]), "--password-stdin", input=stdin
    )
    assert_rejected(result, db, before)
    assert fragment in result.stderr


# ---------------- real processes: what CliRunner cannot show


def run(db: Db, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Any:
    environment = {**os.environ, "USERSCTL_DATABASE_URL": db.url, **(env or {})}
    return subprocess.run(
        [str(USERSCTL), *args], input=stdin, env=environment, capture_output=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["passwd", "verify-password", "create"])
def test_password_stdin_that_is_not_utf8_is_invalid_data(new_db: Any, command: str) -> None:
    """A real process decodes stdin with surrogateescape under the C/C.UTF-8 locales (cron's),
    so a Latin-1 byte arrives as a lone surrogate rather than as a decoding error."""
    db = new_db()
    db.create_ada()
    before = db.dump()
    args = {
        "passwd": ["passwd", "1"],
        "verify-password": ["verify-password", "1"],
        "create": ["create", "--name", "Bob", "--email", "bob@example.com"],
    }[command]
    line = b"caf\xe9 latte password\n"  # Latin-1
    completed = run(db, *args, "--password-stdin", stdin=line, env={"LC_ALL": "C.UTF-8"})
    stderr = completed.stderr.decode()
    assert "unexpected error" not in stderr, stderr
    assert completed.returncode == 5, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
    assert db.dump() == before


@pytest.mark.slow
def test_a_carriage_return_inside_a_password_is_kept(new_db: Any) -> None:
    db = new_db()
    password = "first half\rsecond half"
    created = run(db, *ADA, "--password-stdin", stdin=password.encode() + b"\r\n")
    assert created.returncode == 0, created.stderr
    verify = ["verify-password", "1", "--password-stdin"]
    assert run(db, *verify, stdin=password.encode() + b"\n").returncode == 0
    assert run(db, *verify, stdin=b"first half\n").returncode == 6


@pytest.mark.slow
def test_invalid_utf8_in_arguments_is_invalid_data(new_db: Any) -> None:
    db = new_db()
    before = db.dump()
    for args in (
        [b"create", b"--name", b"Bad\xffName", b"--email", b"b@example.com"],
        [b"create", b"--name", b"Bad", b"--email", b"b\xff@example.com"],
        [b"create", b"--name", b"Bad", b"--email", b"b@example.com", b"--role", b"r\xff"],
    ):
        environment = {**os.environ, "USERSCTL_DATABASE_URL": db.url}
        completed = subprocess.run(
            [os.fsencode(USERSCTL), *args, b"--random-password"],
            env=environment,
            capture_output=True,
            timeout=120,
        )
        stderr = completed.stderr.decode("utf-8", "replace")
        assert completed.returncode == 5, (args, stderr)
        assert stderr.startswith("error: invalid") and "\n" not in stderr.strip(), stderr
        assert "invisible" not in stderr and "must be valid Unicode" in stderr, stderr
    # Lookups and filters (a leavers list in Latin-1, `delete $(cat leavers.txt)`): no user
    # has such an address (3); a filter that no stored value can match is invalid (5).
    for args, code in (
        ([b"get", b"jos\xe9@example.com"], 3),
        ([b"delete", b"jos\xe9@example.com", b"--yes"], 3),
        ([b"disable", b"jos\xe9@example.com", b"--dry-run"], 3),
        ([b"list", b"--search", b"\xff"], 5),
        ([b"audit", b"--user", b"jos\xe9@example.com"], 5),
        ([b"audit", b"--actor", b"\xff"], 5),
    ):
        environment = {**os.environ, "USERSCTL_DATABASE_URL": db.url}
        completed = subprocess.run(
            [os.fsencode(USERSCTL), *args], env=environment, capture_output=True, timeout=120
        )
        stderr = completed.stderr.decode("utf-8", "replace")
        assert completed.returncode == code, (args, stderr)
        assert stderr.startswith("error: ") and "\n" not in stderr.strip(), stderr
        assert "bug" not in stderr, stderr
    assert db.dump() == before


# ---------------- an email finds its user however it was typed


@pytest.mark.parametrize(
    "typed",
    [
        "jose\u0301@example.com",  # decomposed (NFD), as some terminals paste it
        "JOSÉ@Example.COM",
        "ada@xn--bcher-kva.de",  # the ASCII (IDNA) form of ada@bücher.de
        "  ada@BÜCHER.de ",
    ],
)
def test_a_user_is_found_by_the_email_it_was_created_with(new_db: Any, typed: str) -> None:
    db = new_db()
    args = ["create", "--name", "Ada", "--email", typed, "--password-stdin", "-o", "json"]
    created = db(*args, input=GOOD_PASSWORD + "\n")
    assert created.exit_code == 0, created.stderr
    user = json.loads(created.stdout)
    for command in (
        ["get", typed, "-o", "json"],
        ["update", typed, "--role", "admin", "-o", "json"],
    ):
        result = db(*command)
        assert result.exit_code == 0, (command, result.stderr)
        assert json.loads(result.stdout)["id"] == user["id"]
