"""`usersctl sync` and imports that never touch a password by accident (issue 12): the
nightly HR recipe, ownership, the prune guard (exit 9), dry runs that exit as the real run
would, streaming in batches inside one transaction, CSV as people have it, progress."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error

HR = """name,email,role
Ada Lovelace,ada@example.com,admin
Grace Hopper,grace@example.com,user
"""
NEW_PASSWORD = "a-new-passphrase-of-her-own-42"


def write(tmp_path: Path, name: str, content: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding=encoding)
    return path


def state(cli: Cli) -> tuple[str, str]:
    """Every user (with hashes) and every audit entry: "nothing changed" means equal."""
    users = cli.ok("export", "--include-hashes", "-f", "jsonl").stdout
    return users, cli.ok("audit", "-o", "jsonl").stdout


def verifies(cli: Cli, email: str, password: str) -> bool:
    return cli("verify-password", email, "--password-stdin", input=password + "\n").exit_code == 0


def hr_rows(count: int, *, skip: tuple[int, ...] = ()) -> str:
    lines = ["name,email"]
    lines += [f"Person {i},p{i}@example.com" for i in range(1, count + 1) if i not in skip]
    return "\n".join(lines) + "\n"


def sync(cli: Cli, *args: str) -> Any:
    return cli.json("sync", *args)


# --- 1. import without passwords: the nightly recipe ---------------------------------


def test_nightly_import_recipe_twice_keeps_a_changed_password(cli: Cli, tmp_path: Path) -> None:
    """The README's cron line, run on two nights with a password change between."""
    source = write(tmp_path, "users.csv", HR)
    night = ("import", str(source), "--on-conflict", "update")
    first = cli.json(*night)
    assert (first["created"], first["updated"]) == (2, 0)
    ada = cli.json("get", "ada@example.com")
    assert ada["has_password"] is False  # a row without a password column: none
    cli.ok("passwd", "ada@example.com", "--password-stdin", input=NEW_PASSWORD + "\n")
    entries = len(cli.json("audit"))
    second = cli.json(*night)
    assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, 2)
    assert verifies(cli, "ada@example.com", NEW_PASSWORD)
    assert len(cli.json("audit")) == entries  # unchanged rows record nothing


def test_nightly_sync_recipe_twice_keeps_a_changed_password(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path, "users.csv", HR)
    night = ("sync", str(source), "--source", "hr", "--prune", "disable")
    assert sync(cli, *night[1:])["created"] == 2
    cli.ok("passwd", "grace@example.com", "--password-stdin", input=NEW_PASSWORD + "\n")
    before = state(cli)
    again = sync(cli, *night[1:])
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 2)
    assert state(cli) == before  # identical rows: nothing written, nothing recorded
    assert verifies(cli, "grace@example.com", NEW_PASSWORD)


def test_passwords_change_only_with_update_passwords(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Ada Lovelace", "email": "ada@example.com"}])
    body = f"name,email,password\nAda Lovelace,ada@example.com,{NEW_PASSWORD}\n"
    source = write(tmp_path, "p.csv", body)
    result = cli.json("import", str(source), "--on-conflict", "update")
    assert (result["updated"], result["unchanged"]) == (0, 1)
    assert verifies(cli, "ada@example.com", SEED_PASSWORD)
    result = cli.json("import", str(source), "--on-conflict", "update", "--update-passwords")
    assert result["updated"] == 1
    assert verifies(cli, "ada@example.com", NEW_PASSWORD)
    entry = cli.json("audit", "--action", "import")[0]
    assert entry["changes"] == {"password": "changed"}


# --- 2. sync: ownership, prune, guard, adopt ----------------------------------------


def test_sync_creates_owned_users_and_records_the_actor(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path, "hr.csv", HR)
    cli.ok("--actor", "cron:hr-sync", "sync", str(source), "--source", "hr")
    ada = cli.json("get", "ada@example.com")
    assert (ada["source"], ada["role"], ada["has_password"]) == ("hr", "admin", False)
    entries = cli.json("audit", "--action", "sync")
    assert {e["actor"] for e in entries} == {"cron:hr-sync"}
    assert {e["email"] for e in entries} == {"ada@example.com", "grace@example.com"}
    assert entries[-1]["changes"]["source"] == {"before": None, "after": "hr"}


def test_owned_user_edited_by_hand_is_synced_back(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path, "hr.csv", HR)
    sync(cli, str(source), "--source", "hr")
    cli.ok("update", "grace@example.com", "--role", "admin", "--name", "Amazing Grace")
    cli.ok("disable", "grace@example.com")
    result = sync(cli, str(source), "--source", "hr")
    assert (result["updated"], result["unchanged"]) == (1, 1)
    grace = cli.json("get", "grace@example.com")
    assert (grace["name"], grace["role"]) == ("Grace Hopper", "user")
    assert grace["active"] is False  # the file has no active column: not managed
    entry = cli.json("audit", "--action", "sync", "--limit", "1")[0]
    assert entry["changes"] == {
        "name": {"before": "Amazing Grace", "after": "Grace Hopper"},
        "role": {"before": "admin", "after": "user"},
    }
    with_active = write(tmp_path, "a.csv", "name,email,active\nGrace Hopper,grace@example.com,1\n")
    sync(cli, str(with_active), "--source", "hr")
    assert cli.json("get", "grace@example.com")["active"] is True


def test_a_small_share_never_reads_as_none_or_all() -> None:
    from usersctl.sync import _percent

    assert [_percent(250, 100_000), _percent(2, 10), _percent(999, 1000), _percent(5, 5)] == [
        "0.25%", "20%", "99%", "100%"
    ]  # fmt: skip


def test_prune_guard_at_the_boundary(cli: Cli, tmp_path: Path) -> None:
    sync(cli, str(write(tmp_path, "all.csv", hr_rows(10))), "--source", "hr")
    one_gone = write(tmp_path, "nine.csv", hr_rows(10, skip=(3,)))
    two_gone = write(tmp_path, "eight.csv", hr_rows(10, skip=(3, 7)))

    before = state(cli)
    refused = cli("sync", str(two_gone), "--source", "hr", "--prune", "delete")
    assert_error(refused, 9, "refused", "2 of the 10 users hr owns (20%)", "--max-prune 10%")
    assert state(cli) == before  # nothing written, not even the audit trail

    result = sync(cli, str(one_gone), "--source", "hr", "--prune", "delete")  # exactly 10%
    assert (result["absent"], result["deleted"]) == (1, 1)
    assert cli("get", "p3@example.com").exit_code == 3
    entry = cli.json("audit", "--action", "sync", "--limit", "1")[0]
    assert entry["email"] == "p3@example.com"
    assert entry["changes"]["email"] == {"before": "p3@example.com", "after": None}

    # A count instead of a percentage; and a truncated file never wipes the table (one
    # that lists nobody is refused outright: test_a_sync_of_an_empty_file_is_refused).
    empty = write(tmp_path, "truncated.csv", "name,email\nNew,new@example.com\n")
    assert_error(cli("sync", str(empty), "--source", "hr", "--prune", "delete"), 9)
    assert_error(
        cli("sync", str(empty), "--source", "hr", "--prune", "disable", "--max-prune", "8"), 9
    )
    result = sync(cli, str(two_gone), "--source", "hr", "--prune", "disable", "--max-prune", "1")
    assert (result["absent"], result["disabled"]) == (1, 1)
    assert cli.json("get", "p7@example.com")["active"] is False


def test_prune_none_only_reports_and_bad_limits_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    sync(cli, str(write(tmp_path, "all.csv", hr_rows(3))), "--source", "hr")
    result = sync(cli, str(write(tmp_path, "two.csv", hr_rows(3, skip=(1,)))), "--source", "hr")
    assert (result["absent"], result["disabled"], result["deleted"]) == (1, 0, 0)
    assert cli.json("get", "p1@example.com")["active"] is True
    source = str(tmp_path / "two.csv")
    for bad in ("-1", "ten", "101%", "%"):
        assert_error(cli("sync", source, "--source", "hr", "--max-prune", bad), 2, "--max-prune")
    assert_error(cli("sync", source, "--source", "hr", "--max-prune", "120%"), 2, "0% to 100%")
    assert_error(cli("sync", source, "--source", "HR!"), 2, "--source")
    assert_error(cli("sync", source, "--source", "scim"), 2, "reserved")


def test_other_sources_and_the_admin_are_never_touched(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Root", "email": "root@example.com", "role": "admin"}])
    seed([{"name": "Lin", "email": "lin@example.com"}])
    cli.ok("update", "lin@example.com", "--source", "ldap")
    sync(cli, str(write(tmp_path, "hr.csv", HR)), "--source", "hr")
    untouched = [
        cli.ok("get", email, "-o", "json").stdout
        for email in ("root@example.com", "lin@example.com")
    ]
    other = write(tmp_path, "other.csv", "name,email\nNew,new@example.com\n")
    result = sync(cli, str(other), "--source", "hr", "--prune", "delete", "--max-prune", "100%")
    assert (result["absent"], result["deleted"]) == (2, 2)
    after = [
        cli.ok("get", email, "-o", "json").stdout
        for email in ("root@example.com", "lin@example.com")
    ]
    assert after == untouched


def test_email_of_another_owner_is_a_conflict_unless_adopt(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])  # managed by hand
    seed([{"name": "Grace Hopper", "email": "grace@example.com"}])
    cli.ok("update", "grace@example.com", "--source", "ldap")
    source = write(tmp_path, "hr.csv", HR)
    before = state(cli)
    result = cli("sync", str(source), "--source", "hr")
    assert result.exit_code == 4, result.stderr
    assert "line 2: ada@example.com (user 1) is not owned by hr" in result.stderr
    assert "line 3: grace@example.com (user 2) is not owned by hr: it has source ldap" in (
        result.stderr
    )
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 row(s)")
    assert state(cli) == before

    result = sync(cli, str(source), "--source", "hr", "--adopt")
    assert result["updated"] == 2
    assert {cli.json("get", e)["source"] for e in ("ada@example.com", "grace@example.com")} == {
        "hr"
    }
    assert cli.json("audit", "--user", "grace@example.com", "--limit", "1")[0]["changes"][
        "source"
    ] == {"before": "ldap", "after": "hr"}


def test_dry_run_exits_as_the_real_run_would(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    sync(cli, str(write(tmp_path, "all.csv", hr_rows(4))), "--source", "hr")
    seed([{"name": "Root", "email": "root@example.com"}])
    cases = {
        0: hr_rows(4),
        4: hr_rows(4) + "Root,root@example.com\n",
        5: hr_rows(4) + "Nobody,not-an-email\n",
        9: hr_rows(4, skip=(1, 2)),
    }
    before = state(cli)
    for code, body in cases.items():
        source = str(write(tmp_path, f"case{code}.csv", body))
        args = ("sync", source, "--source", "hr", "--prune", "delete")
        dry = cli(*args, "--dry-run")
        assert dry.exit_code == code, (code, dry.stdout, dry.stderr)
        assert state(cli) == before
        if code:
            real = cli(*args)
            assert real.exit_code == code
            assert state(cli) == before


def test_dry_run_plan_lines_and_json(cli: Cli, tmp_path: Path) -> None:
    sync(cli, str(write(tmp_path, "all.csv", hr_rows(10))), "--source", "hr")
    body = (
        hr_rows(10, skip=(2,)).replace("Person 5,", "Person Five,") + "New Hire,new@example.com\n"
    )
    source = str(write(tmp_path, "next.csv", body))
    result = cli("sync", source, "--source", "hr", "--prune", "disable", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "~ p5@example.com  name: Person 5 -> Person Five",
        "+ new@example.com  name: New Hire, role: user, active: true",
        "- p2@example.com  disable",
        "created 1, updated 1, unchanged 8, absent 1, disabled 1, deleted 0, blank rows 0",
    ]
    data = json.loads(cli.ok("sync", source, "--source", "hr", "--prune", "disable",
                             "--dry-run", "-o", "json").stdout)  # fmt: skip
    assert [(c["change"], c["email"]) for c in data["changes"]] == [
        ("update", "p5@example.com"), ("create", "new@example.com"), ("disable", "p2@example.com")
    ]  # fmt: skip
    assert data["changes"][0]["fields"] == {"name": {"before": "Person 5", "after": "Person Five"}}
    assert data["summary"]["dry_run"] is True
    kept = cli.ok("sync", source, "--source", "hr", "--dry-run").stdout
    assert "? p2@example.com  absent from the file (kept: --prune none)" in kept
    truncated = write(tmp_path, "t.csv", "name,email\nPerson 1,p1@example.com\n")
    refused = cli("sync", str(truncated), "--source", "hr", "--prune", "delete", "--dry-run")
    assert refused.exit_code == 9
    assert refused.stdout.count("\n- ") == 8  # the plan the real run would refuse
    before = state(cli)
    for form in ("csv", "plain"):  # no one row shape; the real run's -o plain is its counts
        no_rows = cli("sync", source, "--source", "hr", "--dry-run", "-o", form)
        assert_error(no_rows, 2, f"a sync plan has no {form} form: use -o json, jsonl or table")
    assert state(cli) == before


def test_no_source_releases_and_lets_the_downgrade_run(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    sync(cli, str(write(tmp_path, "hr.csv", HR)), "--source", "hr")
    assert_error(cli("db", "downgrade", "0005", "--yes"), 5, "--no-source")
    assert_error(cli("update", "ada@example.com", "--source", "x", "--no-source"), 2)
    for email in ("ada@example.com", "grace@example.com"):
        released = cli.json("update", email, "--no-source")
        assert (released["source"], released["external_id"]) == (None, None)
    cli.ok("db", "downgrade", "0005", "--yes")
    cli.ok("db", "upgrade")
    assert cli.json("get", "ada@example.com")["source"] is None


def test_no_source_clears_the_external_id(db_url: str, cli: Cli, seed: Seeder) -> None:
    from sqlalchemy import create_engine, text

    seed([{"name": "Ada", "email": "ada@example.com"}])
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE users SET source = 'scim', external_id = 'ext-1'"))
    assert cli.json("get", "ada@example.com")["external_id"] == "ext-1"
    cli.ok("update", "ada@example.com", "--no-source")
    with engine.connect() as connection:
        row = connection.execute(text("SELECT source, external_id FROM users")).one()
    engine.dispose()
    assert tuple(row) == (None, None)


# --- 3. streaming: batches inside one transaction ------------------------------------


def test_bad_rows_anywhere_write_nothing_and_are_all_reported(cli: Cli, tmp_path: Path) -> None:
    rows = [f"Person {i},p{i}@example.com" for i in range(1, 5001)]
    rows[2] = "Bad,not-an-email"  # line 4, in the first batch
    rows[4499] = "Person 1,P1@example.com"  # line 4501: a duplicate, batches later
    body = "name,email\n" + "\n".join(rows) + "\n"
    for command in (("import",), ("sync", "--source", "hr")):
        before = state(cli)
        result = cli(command[0], str(write(tmp_path, "big.csv", body)), *command[1:])
        assert result.exit_code == 5, result.stderr
        assert "line 4: invalid email" in result.stderr
        assert "line 4501: duplicate email p1@example.com (first on line 2)" in result.stderr
        assert "error: 2 bad row(s)" in result.stderr
        assert state(cli) == before


def test_restore_round_trip_keeps_the_owner(cli: Cli, tmp_path: Path, empty_db_url: str) -> None:
    sync(cli, str(write(tmp_path, "hr.csv", HR)), "--source", "hr")
    dump = tmp_path / "dump.jsonl"
    cli.ok("export", "--include-hashes", "--output-file", str(dump))
    target = Cli(url=empty_db_url, runner=cli.runner)
    assert target.json("import", str(dump), "--restore")["created"] == 2
    assert target.json("get", "ada@example.com")["source"] == "hr"


def test_sync_killed_mid_way_leaves_nothing_half_done(db_url: str, tmp_path: Path) -> None:
    from test_crashes import finish, spawn

    source = write(tmp_path, "big.csv", hr_rows(6000))
    # Killed once the first batch's users and audit entries are written, in the open
    # transaction: never committed.
    args = ["sync", str(source), "--source", "hr"]
    code, _, stderr = finish(spawn(args, db_url, kill_at="after-sql:INSERT INTO audit_log"))
    assert code == -signal.SIGKILL, stderr
    cli = Cli(url=db_url, runner=CliRunner())
    assert cli.ok("list", "--count").stdout.strip() == "0"
    assert cli.json("audit", "--action", "sync") == []
    result = sync(cli, str(source), "--source", "hr")
    assert result["created"] == 6000


# --- 4. CSV as people have it -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "extra"),
    [
        (" Name ; EMAIL ;Role\nAda;ada@example.com;admin\n", ()),
        ("NAME\tEmail\tROLE\nAda\tada@example.com\tadmin\n", ()),
        ("name|email|role\nAda|ada@example.com|admin\n", ("--delimiter", "|")),
    ],
)
def test_headers_and_delimiters(
    cli: Cli, tmp_path: Path, body: str, extra: tuple[str, ...]
) -> None:
    result = cli.json("import", str(write(tmp_path, "x.csv", body)), *extra)
    assert result["created"] == 1
    assert cli.json("get", "ada@example.com")["role"] == "admin"


def test_blank_rows_are_skipped_and_counted(cli: Cli, tmp_path: Path) -> None:
    body = "name,email,role\n,,\nAda,ada@example.com,\n\n , ,\nGrace,grace@example.com,\n"
    result = cli.json("import", str(write(tmp_path, "x.csv", body)))
    assert (result["created"], result["blank_rows"]) == (2, 3)
    assert cli.json("sync", str(tmp_path / "x.csv"), "--source", "hr", "--adopt")["blank_rows"] == 3


def test_unknown_columns_unless_ignored(cli: Cli, tmp_path: Path) -> None:
    source = str(
        write(tmp_path, "x.csv", "Name,Email,Department,Cost Centre\nAda,ada@example.com,R&D,42\n")
    )
    assert_error(cli("import", source), 5, "unknown column(s) 'Department', 'Cost Centre'")
    assert_error(cli("import", source, "--ignore-columns", "department"), 5, "'Cost Centre'")
    assert cli.json("import", source, "--ignore-columns", "Department, cost centre")["created"] == 1
    assert_error(cli("import", source, "--delimiter", "x"), 2, "--delimiter")


def test_encodings(cli: Cli, tmp_path: Path) -> None:
    body = "name,email\nJosé Müller,jose@example.com\nZoë,zoe@example.com\n"
    old_excel = write(tmp_path, "excel.csv", body, encoding="cp1252")
    result = cli("import", str(old_excel))
    assert_error(result, 5, "line 2:", "not valid utf-8", "byte 0xe9", "--encoding")
    assert cli.json("import", str(old_excel), "--encoding", "cp1252")["created"] == 2
    assert cli.json("get", "jose@example.com")["name"] == "José Müller"
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes("\ufeffName,Email\nAda,ada@example.com\n".encode())
    assert cli.json("import", str(with_bom))["created"] == 1
    late = tmp_path / "late.csv"
    late.write_bytes(
        b"name,email\n"
        + b"".join(b"P%d,p%d@example.org\n" % (i, i) for i in range(3000))
        + b"Bad\x81,x@example.org\n"
    )
    assert_error(cli("import", str(late)), 5, "line 3002:", "byte 0x81")
    assert_error(cli("import", str(late), "--encoding", "klingon"), 2, "--encoding")
    # A codec that refuses the input as a whole (UTF-16 must start with a byte-order mark):
    # a bad input, not a bug.
    no_mark = write(tmp_path, "no-mark.csv", body, encoding="utf-16-le")
    result = cli("import", str(no_mark), "--encoding", "utf16")
    assert_error(result, 5, "not valid utf16", "BOM", "--encoding")
    assert cli.json("import", str(write(tmp_path, "marked.csv", body, encoding="utf-16")),
                    "--encoding", "utf16", "--on-conflict", "skip")["skipped"] == 2  # fmt: skip
    assert cli.ok("list", "--count").stdout.strip() == "3"


# --- 5. progress on a terminal ------------------------------------------------------


def run_on_terminal(args: list[str], url: str, home: Path) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: usersctl with a terminal as stdin, stdout and stderr
        os.environ.update(USERSCTL_DATABASE_URL=url, HOME=str(home), COLUMNS="160")
        os.execv(sys.executable, [sys.executable, "-m", "usersctl", *args])
    output = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_progress_on_a_terminal_says_how_long_hashing_takes(db_url: str, tmp_path: Path) -> None:
    rows = [f"P {i},p{i}@example.com,{NEW_PASSWORD}-{i}" for i in range(6)]
    source = write(tmp_path, "p.csv", "name,email,password\n" + "\n".join(rows) + "\n")
    code, output = run_on_terminal(["import", str(source)], db_url, tmp_path)
    assert code == 0, output
    assert "Hashing passwords: about 6 at about" in output


def test_progress_line_shows_counts_rates_and_an_eta_only_once_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from usersctl.bulk import Validated
    from usersctl.bulk_job import Outcome
    from usersctl.cli import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])

    class Counting:
        size, consumed = 1000, 0

    seen, counting = Validated(), Counting()
    line = progress.RowProgress(seen, counting, enabled=False)
    line.follow(Outcome())
    assert line.text() == ("0 rows read · 0 valid", "")  # no rate yet: no ETA
    seen.read, seen.valid, counting.consumed = 2000, 1990, 250
    clock[0] += 10
    text, eta = line.text()
    assert text == "2,000 rows read · 1,990 valid · 200 rows/s"
    assert eta == "ETA 30 s"  # a quarter read in 10 s
    # Hashing: the slow part decides. 100 to hash in the quarter read: about 400 in all,
    # 350 left at 10/s (35 s, more than the 30 s the reading needs).
    line.outcome.to_hash, line.outcome.hashed, line.hashing_time = 100, 50, 5.0
    text, eta = line.text()
    assert text == "2,000 rows read · 1,990 valid · 50 of ~400 passwords hashed (10.0/s)"
    assert eta == "ETA 35 s"
    counting.consumed = 1000  # all read: only the hashing is left
    assert line.text() == (
        "2,000 rows read · 1,990 valid · 50 of ~100 passwords hashed (10.0/s)",
        "ETA 5 s",
    )
    assert progress.duration(4000) == "67 min"
    assert progress.duration(3 * 3600 + 600) == "3 h 10 min"


def outside(url: str, statement: str) -> None:
    """A change made by something else than usersctl (the application, plain SQL)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(statement))
    engine.dispose()


def test_users_a_sync_disabled_come_back_when_the_file_lists_them_again(
    cli: Cli, tmp_path: Path
) -> None:
    """A short HR file disables the missing (--prune disable); the next full file brings
    them back, though it has no `active` column. A user disabled by hand stays disabled."""
    full = str(write(tmp_path, "full.csv", hr_rows(20)))
    short = str(write(tmp_path, "short.csv", hr_rows(20, skip=(19, 20))))
    sync(cli, full, "--source", "hr")
    assert sync(cli, short, "--source", "hr", "--prune", "disable")["disabled"] == 2
    cli.ok("disable", "p5@example.com")  # by hand
    outside(cli.url, "UPDATE users SET is_active = false WHERE email = 'p6@example.com'")
    plan = cli.ok("sync", full, "--source", "hr", "--prune", "disable", "--dry-run").stdout
    assert plan.splitlines() == [
        "~ p19@example.com  active: false -> true",
        "~ p20@example.com  active: false -> true",
        "created 0, updated 2, unchanged 18, absent 0, disabled 0, deleted 0, blank rows 0",
    ]
    assert sync(cli, full, "--source", "hr", "--prune", "disable")["updated"] == 2
    active = {user["email"]: user["active"] for user in cli.json("list")}
    assert active["p19@example.com"] and active["p20@example.com"]
    assert not active["p5@example.com"]
    assert not active["p6@example.com"]  # disabled outside usersctl: its last sync set true
    last = json.loads(
        cli.ok("audit", "--user", "p19@example.com", "-o", "jsonl").stdout.splitlines()[0]
    )
    assert (last["action"], last["changes"]) == (
        "sync",
        {"active": {"before": False, "after": True}},
    )


# --- one import or sync at a time on the server engines ------------------------------


def _waiting_for_a_lock(connection: Any, engine_name: str) -> bool:
    from sqlalchemy import text

    if engine_name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%alembic_version%'"
        )
    else:
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    return bool(connection.execute(text(query)).scalar())


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["postgresql", "mariadb"])
def test_a_sync_waits_for_another_import_or_sync(
    cli: Cli, db_url: str, tmp_path: Path, engine_name: str
) -> None:
    """Two syncs at once both planned from the same old state (a prune counted twice past
    --max-prune, stale audit entries). Each now holds the bulk lock (the schema's version
    row) for its whole transaction: a second one waits, then plans from what the first
    committed. SQLite's BEGIN IMMEDIATE already queues writers."""
    import subprocess
    import time

    from sqlalchemy import create_engine, text

    sync(cli, str(write(tmp_path, "all.csv", hr_rows(10))), "--source", "hr")
    source = write(tmp_path, "next.csv", hr_rows(10, skip=(3,)))
    engine = create_engine(db_url)
    watcher = create_engine(db_url)
    try:
        with engine.connect() as holder, watcher.connect() as watch:
            held = holder.begin()  # another import or sync, in the middle of its run
            holder.execute(text("SELECT version_num FROM alembic_version FOR UPDATE"))
            env = {**os.environ, "USERSCTL_DATABASE_URL": db_url}
            args = ["sync", str(source), "--source", "hr", "--prune", "disable", "-o", "json"]
            waiting = subprocess.Popen(
                [str(Path(sys.executable).parent / "usersctl"), *args],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while not _waiting_for_a_lock(watch, engine_name):
                assert waiting.poll() is None, waiting.communicate()  # it did not wait
                assert time.monotonic() < deadline, "the sync never waited for the lock"
                time.sleep(0.1)
                watch.rollback()  # a fresh look each time (MariaDB's snapshot)
            # What the first run committed: p3 already disabled by hand.
            holder.execute(text("UPDATE users SET is_active = :no WHERE email = :e"),
                           {"no": False, "e": "p3@example.com"})  # fmt: skip
            held.commit()
            stdout, stderr = waiting.communicate(timeout=120)
    finally:
        engine.dispose()
        watcher.dispose()
    assert waiting.returncode == 0, stderr
    summary = json.loads(stdout)
    # Planned after the commit: p3 was already disabled, so nothing is left to prune.
    assert (summary["absent"], summary["disabled"]) == (1, 0), summary


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["postgresql"])
def test_an_import_waits_for_a_migration_on_postgresql(
    cli: Cli, db_url: str, tmp_path: Path, seed_hash: str
) -> None:
    """A `db upgrade` (by a newer usersctl) holds the migrations' advisory lock: an import
    waits for it before it locks anything, so the two never wait for each other's locks."""
    import subprocess
    import time

    from sqlalchemy import create_engine, text

    from conftest import prehashed_rows
    from usersctl.revision import MIGRATION_LOCK_KEY

    rows = prehashed_rows(tmp_path / "users.jsonl", 3, seed_hash)
    engine = create_engine(db_url)
    try:
        with engine.connect() as holder, engine.connect() as watch:
            held = holder.begin()
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            env = {**os.environ, "USERSCTL_DATABASE_URL": db_url}
            waiting = subprocess.Popen(
                [str(Path(sys.executable).parent / "usersctl"), "import", str(rows)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            query = text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                "AND query LIKE '%pg_advisory_xact_lock_shared%'"
            )
            deadline = time.monotonic() + 60
            while not watch.execute(query).scalar():
                assert waiting.poll() is None, waiting.communicate()  # it did not wait
                activity = watch.execute(
                    text("SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity")
                ).all()
                assert time.monotonic() < deadline, ("the import never waited", activity)
                time.sleep(0.1)
                watch.rollback()
            held.commit()
            _stdout, stderr = waiting.communicate(timeout=120)
    finally:
        engine.dispose()
    assert waiting.returncode == 0, stderr
    assert len(cli.json("list")) == 3
