"""`db stamp` and `db downgrade`: consent, dry runs, refusals when the tables say otherwise,
and schema problems reported as schema problems (exit 8), on every engine."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text
from test_dry_run import dump, set_revision

from conftest import Cli, Seeder, assert_error
from usersctl.revision import HEAD


def revision(cli: Cli) -> str:
    return str(cli.json("db", "current")["revision"])


@pytest.fixture
def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if stdin were a terminal: the commands ask, CliRunner's input answers."""
    monkeypatch.setattr("usersctl.cli.db.stdin_is_terminal", lambda: True)


# --- db stamp -------------------------------------------------------------------------------


def test_stamp_needs_yes_off_a_terminal(cli: Cli) -> None:
    set_revision(cli.url, "0002")  # recorded wrongly: the tables are at head
    assert_error(cli("db", "stamp", "head"), 2, "refusing to stamp without --yes")
    assert revision(cli) == "0002"
    cli.ok("db", "stamp", "head", "--yes")
    assert revision(cli) == HEAD


def test_stamp_asks_on_a_terminal(cli: Cli, on_a_terminal: None) -> None:
    set_revision(cli.url, "0002")
    refused = cli("db", "stamp", "head", input="n\n")
    assert refused.exit_code == 1
    assert f"as revision {HEAD} (was 0002) without running migrations?" in refused.stdout
    assert revision(cli) == "0002"
    cli.ok("db", "stamp", "head", input="y\n")
    assert revision(cli) == HEAD


def test_stamp_dry_run_shows_the_change_and_writes_nothing(cli: Cli) -> None:
    set_revision(cli.url, "0002")
    before = dump(cli.url)
    result = cli.ok("db", "stamp", "head", "--dry-run")  # no --yes: nothing to consent to
    assert result.stdout.startswith("-- usersctl db stamp --dry-run: ")
    assert f"'{HEAD}'" in result.stdout  # the statement that records it
    assert "Dry run: would stamp " in result.stderr
    assert f"as revision {HEAD} (was 0002)" in result.stderr
    assert "nothing was written" in result.stderr
    assert dump(cli.url) == before


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("0002", ["refusing to stamp 0002", "an audit_log table", f"fits revision 0006 or {HEAD}"]),
        ("0003", ["refusing to stamp 0003", "account lifecycle columns", f"0006 or {HEAD}"]),
        ("0001", ["refusing to stamp 0001", "hashed passwords"]),
        ("base", ["refusing to stamp base", "(2 users)"]),
    ],
)
def test_stamp_refuses_what_the_tables_contradict(
    cli: Cli, seed: Seeder, target: str, fragments: list[str]
) -> None:
    seed([{"name": "A", "email": "a@example.com"}, {"name": "B", "email": "b@example.com"}])
    before = dump(cli.url)
    for extra in (["--yes"], ["--dry-run"]):
        assert_error(cli("db", "stamp", target, *extra), 8, *fragments, "nothing changed")
    assert dump(cli.url) == before
    cli.ok("list")  # still usable: nothing was stamped


def test_stamp_head_refused_below_the_audit_table(cli: Cli) -> None:
    cli.ok("db", "downgrade", "0002", "--yes", "--discard-audit-trail")
    assert_error(cli("db", "stamp", "head", "--yes"), 8, "no audit_log table", "fits revision 0002")
    assert revision(cli) == "0002"
    cli.ok("db", "upgrade")  # what the message's state asks for still works
    assert revision(cli) == HEAD


def test_stamp_head_refused_below_the_lifecycle_columns(cli: Cli) -> None:
    cli.ok("db", "downgrade", "0003", "--yes")
    assert_error(cli("db", "stamp", "head", "--yes"), 8, "an audit_log table", "fits revision 0003")
    assert revision(cli) == "0003"
    cli.ok("db", "upgrade")
    assert revision(cli) == HEAD


def test_a_schema_error_is_exit_8_not_7(cli: Cli) -> None:
    """Tables that contradict the recorded revision (made by hand, or by an old usersctl's
    stamp): the failing statement is a schema problem, reported as one. (A table that a
    migration would create and that already exists is no such problem: every migration
    step is re-runnable, so `db upgrade` finishes what a killed run began.)"""
    set_revision(cli.url, "0002")
    cli.ok("db", "upgrade")  # 0003 finds audit_log already there and records the revision
    assert revision(cli) == HEAD

    set_revision(cli.url, HEAD)
    engine = create_engine(cli.url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_log"))
    engine.dispose()
    created = cli("create", "-n", "A", "-e", "a@example.com", "--random-password")
    assert_error(created, 8, "do not match its recorded schema revision")


# --- db downgrade ---------------------------------------------------------------------------


def test_downgrade_to_base_is_not_refused_because_of_roles(cli: Cli, seed: Seeder) -> None:
    seed(
        [
            {"name": "Root", "email": "root@example.com", "role": "admin"},
            {"name": "Off", "email": "off@example.com", "is_active": False},
        ]
    )
    cli.ok("db", "downgrade", "base", "--yes", "--discard-audit-trail")
    engine = create_engine(cli.url)
    assert [t for t in inspect(engine).get_table_names() if t != "alembic_version"] == []
    engine.dispose()
    # ...while stopping at 0001 still refuses: it would silently re-enable the accounts.
    cli.ok("db", "upgrade")
    seed([{"name": "Root", "email": "root@example.com", "role": "admin"}])
    assert_error(
        cli("db", "downgrade", "0001", "--yes", "--discard-audit-trail"),
        5,
        "role other than",
        "root@example.com (id 1)",  # (it gave only a count)
    )


def test_downgrade_below_0005_refuses_while_an_api_token_works(cli: Cli) -> None:
    """Leaving 0005 deletes every API token (and the login signing key): it did so without
    a word. Revoked or expired ones are no loss; to base, the prompt already says all goes."""
    from usersctl.revision import HEAD

    cli.ok("token", "create", "deploy")
    cli.ok("token", "create", "old", "--expires", "1h")
    for extra in ((), ("--dry-run",)):
        refused = cli("db", "downgrade", "0004", "--yes", *extra)
        assert_error(refused, 5, "cannot downgrade below 0005", "2 API token(s) still work",
                     "--discard-api-tokens")  # fmt: skip
        assert cli.json("db", "current")["revision"] == HEAD  # (MariaDB too: nothing applied)
    cli.ok("token", "revoke", "deploy")
    assert_error(cli("db", "downgrade", "0004", "--yes"), 5, "1 API token(s) still work")
    cli.ok("db", "downgrade", "0004", "--yes", "--discard-api-tokens")
    assert cli.json("db", "current")["revision"] == "0004"


def test_downgrade_to_base_prompt_says_every_user_is_deleted(
    cli: Cli, seed: Seeder, on_a_terminal: None
) -> None:
    seed([{"name": "A", "email": "a@example.com"}, {"name": "B", "email": "b@example.com"}])
    before = dump(cli.url)
    result = cli("db", "downgrade", "base", "--discard-audit-trail", input="n\n")
    assert result.exit_code == 1
    assert "deletes every user (2 users) and the audit trail" in result.stdout
    assert dump(cli.url) == before


def test_downgrade_dry_run_needs_no_consent(cli: Cli) -> None:
    before = dump(cli.url)
    result = cli("db", "downgrade", "0002", "--dry-run", "--discard-audit-trail")
    assert result.exit_code == 0, result.stderr
    assert "-- Running downgrade 0003 -> 0002" in result.stdout or "DROP" in result.stdout
    # Without --discard-audit-trail it exits as the real run would (5), never asking for --yes.
    assert_error(cli("db", "downgrade", "0002", "--dry-run"), 5, "--discard-audit-trail")
    assert dump(cli.url) == before
    assert_error(cli("db", "downgrade", "0002", "--discard-audit-trail"), 2, "--yes")
