"""Import, restore and sync edge cases a review found (each failed before its fix), on
every engine: values no database can store, times past what UTC holds, an adopted user's
external id, restores with mixed-case emails or ids on some rows only, backups without
hashes, repeated JSON keys, a syntax error deep in a big JSON array, and the dry-run plan's
wording for an absent user who is already disabled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_sync import state, write

from conftest import Cli, assert_error


def bad_rows(cli: Cli, *args: str, lines: tuple[str, ...]) -> None:
    """Exit 5 with each of `lines` reported, no traceback, and nothing changed."""
    before = state(cli)
    result = cli(*args)
    assert result.exit_code == 5, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "bug" not in result.stderr
    for line in lines:
        assert line in result.stderr, (line, result.stderr)
    assert state(cli) == before


def entries(cli: Cli, action: str) -> list[dict[str, Any]]:
    """The audit trail's entries of one action, newest first."""
    lines = cli.ok("audit", "--action", action, "-o", "jsonl").stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_values_no_database_can_store_are_bad_rows_in_dry_runs_too(
    cli: Cli, tmp_path: Path
) -> None:
    """A lone surrogate (JSON "\\ud800") or a time UTC cannot hold used to pass validation
    and crash the write (exit 1, "a bug") while the dry run said exit 0."""
    surrogate = write(
        tmp_path,
        "s.jsonl",
        '{"name": "Ada", "email": "ada@example.com", "password": "correct horse \\ud800 staple"}\n'
        '{"name": "Bob", "email": "bob@example.com", "external_id": "x\\udc80"}\n',
    )
    overflow = write(
        tmp_path, "o.csv", "name,email,expires_at\nAda,ada@example.com,9999-12-31T23:00:00-05:00\n"
    )
    restore = write(
        tmp_path, "r.jsonl", '{"id": 1, "name": "Ada\\ud800", "email": "a@example.com"}\n'
    )
    surrogate_lines = (
        "line 1: invalid password: must be valid Unicode text (found a lone surrogate, U+D800)",
        "line 2: invalid external_id: must be valid Unicode text (found a lone surrogate, U+DC80)",
    )
    overflow_line = "line 2: invalid expires_at: out of range once converted to UTC"
    for dry in ((), ("--dry-run",)):
        bad_rows(cli, "import", str(surrogate), *dry, lines=surrogate_lines)
        bad_rows(cli, "import", str(overflow), *dry, lines=(overflow_line,))
        bad_rows(cli, "sync", str(overflow), "--source", "hr", *dry, lines=(overflow_line,))
        bad_rows(cli, "import", str(restore), "--restore", *dry, lines=("line 1: invalid name",))
    assert_error(
        cli("create", "--name", "Ada", "--email", "ada@example.com", "--expires",
            "9999-12-31T23:00:00-05:00", "--random-password"),
        2, "invalid --expires",
    )  # fmt: skip


def test_a_sync_plan_shows_times_in_utc_as_they_are_stored(cli: Cli, tmp_path: Path) -> None:
    rows = "name,email,expires_at\nAda,ada@example.com,2030-06-01T12:00:00+02:00\n"
    source = write(tmp_path, "hr.csv", rows)
    plan = json.loads(
        cli.ok("sync", str(source), "--source", "hr", "--dry-run", "-o", "json").stdout
    )
    assert plan["changes"][0]["fields"]["expires_at"] == "2030-06-01T10:00:00Z"
    cli.ok("sync", str(source), "--source", "hr")
    assert cli.json("get", "ada@example.com")["expires_at"] == "2030-06-01T10:00:00Z"


def test_adopting_a_user_records_its_external_id_going(cli: Cli, tmp_path: Path) -> None:
    backup = write(
        tmp_path,
        "b.jsonl",
        '{"id": 1, "name": "Ada", "email": "ada@example.com", "source": "okta", '
        '"external_id": "ext-1"}\n',
    )
    cli.ok("import", str(backup), "--restore")
    hr = write(tmp_path, "hr.csv", "name,email\nAda,ada@example.com\n")
    plan = json.loads(
        cli.ok("sync", str(hr), "--source", "hr", "--adopt", "--dry-run", "-o", "json").stdout
    )
    expected = {
        "source": {"before": "okta", "after": "hr"},
        "external_id": {"before": "ext-1", "after": None},
    }
    assert plan["changes"][0]["fields"] == expected
    cli.ok("sync", str(hr), "--source", "hr", "--adopt")
    user = cli.json("get", "1")
    assert (user["source"], user["external_id"]) == ("hr", None)
    assert [entry["changes"] for entry in entries(cli, "sync")] == [expected]


def test_expires_at_in_a_file_reads_as_the_expires_option_does(cli: Cli, tmp_path: Path) -> None:
    """A date (HR exports hold dates), a time without an offset, `never`: all were "invalid
    expires_at", which did not say what was wanted."""
    rows = ("name,email,expires_at\nA,a@example.com,2030-01-01\n"
            "B,b@example.com,2030-01-01 12:30:00\n"
            "C,c@example.com,2030-01-01T12:30:00+02:00\nD,d@example.com,never\n")  # fmt: skip
    cli.ok("import", str(write(tmp_path, "e.csv", rows)))
    shown = {u["email"]: u["expires_at"] for u in cli.json("list")}
    assert shown == {"a@example.com": "2030-01-01T00:00:00Z",
                     "b@example.com": "2030-01-01T12:30:00Z",
                     "c@example.com": "2030-01-01T10:30:00Z", "d@example.com": None}  # fmt: skip
    never = write(tmp_path, "n.csv", "name,email,expires_at\nA,a@example.com,never\n")
    cli.ok("import", str(never), "--on-conflict", "update")
    assert cli.json("get", "a@example.com")["expires_at"] is None
    bad = write(tmp_path, "b.csv", "name,email,expires_at\nX,x@example.com,31/12/2030\n")
    bad_rows(
        cli, "import", str(bad), lines=("line 2: invalid expires_at: give a date (2027-06-30",)
    )


def test_excel_columns_without_a_name_are_dropped_while_empty(cli: Cli, tmp_path: Path) -> None:
    """Excel writes empty columns right of the data (a header `Name,Email,,`, rows ending
    in `,,`): "unknown column(s) '', ''", or "expected 2 fields, found 4". A value in such
    a column is still a bad row: there is no telling what it is."""
    excel = write(tmp_path, "x.csv", "Name , EMAIL ,,\r\nAda,ada@example.com,,\r\n")
    trailing = write(tmp_path, "t.csv", "Name,Email\r\nBob,bob@example.com,,\r\n")
    cli.ok("import", str(excel))
    cli.ok("import", str(trailing))
    assert [u["email"] for u in cli.json("list")] == ["ada@example.com", "bob@example.com"]
    filled = write(tmp_path, "f.csv", "name,email,\nCy,cy@example.com,VIP\n")
    bad_rows(cli, "import", str(filled), lines=("line 2: a value in column 3, which has no name",))


def test_messages_for_files_as_people_have_them(cli: Cli, tmp_path: Path) -> None:
    """Each of these stopped the check with Python's words, or said too little."""
    big = 'name,email\nA,a@example.com\n"' + "B" * 500_000 + '",b@example.com\nC,bad\n'
    bad_rows(cli, "import", str(write(tmp_path, "big.csv", big)),
             lines=("line 3: invalid name: at most 200", "line 4: invalid email"))  # fmt: skip
    open_quote = 'name,email\n"Ada,ada@example.com\nBob,bob@example.com\nCy,cy@example.com\n'
    bad_rows(cli, "import", str(write(tmp_path, "q.csv", open_quote)),
             lines=("line 2: expected 2 fields, found 1; the row runs to line 4: is a quote "
                    "left open?",))  # fmt: skip
    jsonl = '{"name":"A\x01B","email":"r@example.com"}\n[{"name":"x"}]\n'
    bad_rows(cli, "import", str(write(tmp_path, "r.jsonl", jsonl)),
             lines=("line 1: not valid JSON: Invalid control character at column 11",
                    "line 2: expected an object, found an array (one JSON array: "
                    "--format json)"))  # fmt: skip
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("name,email\nAda,ada@example.com\n".encode("utf-16"))
    bad_rows(cli, "import", str(utf16), lines=("it starts like UTF-16", "--encoding utf-16"))
    cli.ok("import", str(utf16), "--encoding", "utf-16")
    blank = write(tmp_path, "b.jsonl", '\n{"name": "Bo", "email": "bo@example.com"}\n\n')
    assert cli.json("import", str(blank))["blank_rows"] == 2


def test_a_restore_records_what_it_put_back(cli: Cli, tmp_path: Path) -> None:
    backup = write(
        tmp_path,
        "b.jsonl",
        '{"id": 7, "name": "Ada", "email": "ada@example.com", "source": "okta", '
        '"external_id": "ext-1", "active": false}\n',
    )
    cli.ok("import", str(backup), "--restore")
    (entry,) = entries(cli, "import")
    assert entry["user_id"] == 7
    assert entry["changes"] == {
        name: {"before": None, "after": value}
        for name, value in [("name", "Ada"), ("email", "ada@example.com"), ("role", "user"),
                            ("active", False), ("source", "okta"), ("external_id", "ext-1")]
    }  # fmt: skip


def test_a_restore_refuses_emails_that_differ_only_in_case(cli: Cli, tmp_path: Path) -> None:
    """One address twice (MariaDB's unique index refuses it; elsewhere one of them could
    never be found by email). A single mixed-case email is kept as the backup has it."""
    twins = write(
        tmp_path,
        "twins.jsonl",
        '{"id": 1, "name": "Ada", "email": "Ada@Example.com"}\n'
        '{"id": 2, "name": "Ada 2", "email": "ada@example.com"}\n',
    )
    bad_rows(cli, "import", str(twins), "--restore",
             lines=("line 2: duplicate email ada@example.com (first on line 1)",))  # fmt: skip
    one = write(tmp_path, "one.jsonl", '{"id": 1, "name": "Ada", "email": "Ada@Example.com"}\n')
    cli.ok("import", str(one), "--restore")
    assert json.loads(cli.ok("export", "-f", "jsonl").stdout)["email"] == "Ada@Example.com"


def test_emails_one_only_to_mariadb_are_one_address_there(cli: Cli, tmp_path: Path) -> None:
    """MariaDB's collations PAD SPACE: "ada@example.com " (which only another program can
    store; a restore keeps it) is "ada@example.com" to its unique index. A restore of both
    failed there with exit 4 and no line; an import or sync of one next to the other stored
    in the table tried to create it. Elsewhere they are two addresses."""
    from sqlalchemy import create_engine, text

    mariadb = cli.url.startswith("mysql")
    twins = write(
        tmp_path,
        "twins.jsonl",
        '{"id": 1, "name": "Ada", "email": "ada@example.com "}\n'
        '{"id": 2, "name": "Ada 2", "email": "ada@example.com"}\n',
    )
    if mariadb:
        bad_rows(cli, "import", str(twins), "--restore",
                 lines=("line 2: duplicate email ada@example.com (first on line 1)",))  # fmt: skip
        cli.ok("import", str(write(tmp_path, "one.jsonl", twins.read_text().splitlines()[0])),
               "--restore")  # fmt: skip
        engine = create_engine(cli.url)
        try:
            with engine.begin() as connection:
                connection.execute(text("UPDATE users SET source = 'hr'"))
        finally:
            engine.dispose()
        # The stored "ada@example.com " is the user a row of "ada@example.com" meets.
        hr = write(tmp_path, "hr.csv", "name,email\nAda Renamed,ada@example.com\n")
        result = cli("import", str(hr))
        assert result.exit_code == 4, (result.stdout, result.stderr)
        assert "line 2: email already taken: ada@example.com (user 1)" in result.stderr
        cli.ok("sync", str(hr), "--source", "hr", "--prune", "delete", "--max-prune", "100%")
        (only,) = cli.json("list")
        assert (only["id"], only["name"]) == (1, "Ada Renamed")
    else:
        cli.ok("import", str(twins), "--restore")
        assert [u["email"] for u in cli.json("list")] == ["ada@example.com ", "ada@example.com"]


def test_a_restore_takes_rows_without_ids_only_after_those_with(
    cli: Cli, tmp_path: Path, empty_db_url: str
) -> None:
    """Rows without an id draw the next free ones as they are written: an id given after
    them collided (a misleading "email already taken", exit 4, after a dry run that said
    0), and on PostgreSQL even one given before them in the same batch did."""
    few = write(
        tmp_path,
        "few.jsonl",
        '{"name": "NoId", "email": "noid@example.com"}\n'
        '{"id": 1, "name": "One", "email": "one@example.com"}\n',
    )
    message = "line 2: --restore: this row has an id but an earlier row has none"
    for dry in ((), ("--dry-run",)):
        bad_rows(cli, "import", str(few), "--restore", *dry, lines=(message,))
    rows = [{"name": f"U{i}", "email": f"u{i}@example.com"} for i in range(2000)]
    rows.append({"id": 5, "name": "Five", "email": "x@example.com"})  # in the second batch
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps(row) + "\n" for row in rows))
    message = "line 2001: --restore: this row has an id"
    bad_rows(cli, "import", str(many), "--restore", lines=(message,))
    ordered = write(
        tmp_path,
        "ordered.jsonl",
        '{"id": 1, "name": "One", "email": "one@example.com"}\n'
        '{"name": "NoId", "email": "noid@example.com"}\n',
    )
    fresh = Cli(url=empty_db_url, runner=cli.runner)  # (no earlier run moved a counter)
    fresh.ok("import", str(ordered), "--restore")
    ids = {user["email"]: user["id"] for user in fresh.json("list")}
    assert ids == {"one@example.com": 1, "noid@example.com": 2}


def test_restoring_a_backup_without_hashes_warns(cli: Cli, tmp_path: Path) -> None:
    backup = write(
        tmp_path,
        "nohash.jsonl",
        '{"id": 1, "name": "Ada", "email": "ada@example.com", "has_password": true}\n'
        '{"id": 2, "name": "Bob", "email": "bob@example.com", "has_password": false}\n',
    )
    result = cli.ok("import", str(backup), "--restore")
    assert "warning: 1 user(s) were restored without a password" in result.stderr
    assert "export --include-hashes" in result.stderr
    assert cli.json("get", "1")["has_password"] is False


def test_a_key_given_twice_is_a_bad_row(cli: Cli, tmp_path: Path) -> None:
    """JSON keeps the last of two equal keys silently; CSV refuses a column named twice."""
    jsonl = write(
        tmp_path,
        "twice.jsonl",
        '{"name": "A", "email": "a@example.com", "email": "c@example.com"}\n'
        '{"name": "B", "email": "b@example.com"}\n',
    )
    bad_rows(cli, "import", str(jsonl), lines=("line 1: the key 'email' appears twice",))
    array = write(
        tmp_path,
        "twice.json",
        '[{"name": "A", "email": "a@example.com"},\n'
        ' {"name": "B", "email": "b@example.com", "role": "user", "role": "admin"},\n'
        ' {"name": "C", "email": "c@example.com"}]\n',
    )
    bad_rows(cli, "import", str(array), lines=("line 2: the key 'role' appears twice",))


def test_a_syntax_error_in_a_big_json_array_is_named(cli: Cli, tmp_path: Path) -> None:
    """With 1 MiB or more after it, a missing comma was reported as a record too long."""
    records = [json.dumps({"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(40000)]
    records[5] = records[5].replace(', "email"', ' "email"')
    big = tmp_path / "big.json"
    big.write_text("[\n" + ",\n".join(records) + "\n]\n")
    assert big.stat().st_size > 1 << 20
    before = state(cli)
    assert_error(cli("import", str(big)), 5, "line 7: not valid JSON: Expecting ',' delimiter")
    assert state(cli) == before


def test_the_plan_says_an_absent_disabled_user_is_already_disabled(
    cli: Cli, tmp_path: Path
) -> None:
    everyone = write(tmp_path, "all.csv", "name,email\nA,a@example.com\nB,b@example.com\n")
    cli.ok("sync", str(everyone), "--source", "hr")
    cli.ok("disable", "b@example.com")
    fewer = write(tmp_path, "fewer.csv", "name,email\nA,a@example.com\n")
    plan = cli.ok("sync", str(fewer), "--source", "hr", "--prune", "disable", "--max-prune", "1",
                  "--dry-run").stdout  # fmt: skip
    assert "? b@example.com  absent from the file (already disabled)" in plan
    kept = cli.ok("sync", str(fewer), "--source", "hr", "--dry-run").stdout
    assert "? b@example.com  absent from the file (kept: --prune none)" in kept


def test_a_header_in_another_delimiter_or_jsonl_named_json_gets_a_hint(
    cli: Cli, tmp_path: Path
) -> None:
    cases = [
        ("pipes.csv", "name|email|role\nA|a@example.com|user\n", (), "give --delimiter '|'"),
        ("spaces.csv", "name email\nA a@example.com\n", (), "give commas between the column"),
        ("semi.csv", "name;email\nA;a@example.com\n", ("--delimiter", ","), "--delimiter ';'"),
        ("lines.json", '{"name": "A", "email": "a@example.com"}\n', (), "give --format jsonl"),
    ]
    for name, content, extra, hint in cases:
        result = cli("import", str(write(tmp_path, name, content)), *extra)
        assert_error(result, 5, hint)
        assert "known:" not in result.stderr  # (not the list of every column)


def test_a_sync_of_an_empty_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    """0 bytes is a failed export: it reported every owned user absent, exit 0 (and with
    --max-prune 100% pruned them all). So is a file that lists no users."""
    cli.ok(
        "sync", str(write(tmp_path, "hr.csv", "name,email\nA,a@example.com\n")), "--source", "hr"
    )
    empty = str(write(tmp_path, "empty.csv", ""))
    for extra in ((), ("--dry-run",), ("--prune", "delete", "--max-prune", "100%")):
        before = state(cli)
        assert_error(cli("sync", empty, "--source", "hr", *extra), 5, "is empty (0 bytes")
        assert state(cli) == before
    assert_error(
        cli("sync", "-", "-f", "csv", "--source", "hr", input=""), 5, "standard input is empty"
    )
    # Nothing but a byte-order mark, blank lines or a header is a failed export too: a
    # small source's --max-prune 5 used to let it prune 5.
    for name, content in (("bom.csv", "\ufeff"), ("blank.csv", "\n\n"), ("blank.jsonl", "\n"),
                          ("header.csv", "name,email\n")):  # fmt: skip
        before = state(cli)
        result = cli("sync", str(write(tmp_path, name, content)), "--source", "hr",
                     "--prune", "delete", "--max-prune", "100%")  # fmt: skip
        assert_error(result, 5, "lists no users" if name != "blank.csv" else "")
        assert state(cli) == before
    # A header without the columns every row needs is no users export (import too).
    for command in (("sync", "--source", "hr"), ("import",)):
        no_email = str(write(tmp_path, "names.csv", "name\n"))
        assert_error(cli(command[0], no_email, *command[1:]), 5,
                     "line 1: the header has no 'email' column")  # fmt: skip
