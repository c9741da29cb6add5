"""The audit trail: every change recorded in its own transaction, read back with filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from test_dry_run import set_revision

from conftest import SEED_PASSWORD, Cli, Seeder, assert_error
from usersctl.audit import ACTIONS
from usersctl.cli.audit import Action
from usersctl.config import os_user
from usersctl.revision import HEAD
from usersctl.timestamps import parse_moment


def trail(cli: Cli, *args: str) -> list[dict[str, Any]]:
    return cli.json("audit", *args)  # type: ignore[no-any-return]


def user_entries(cli: Cli, *args: str) -> list[dict[str, Any]]:
    """The trail without the schema's own entries, oldest first."""
    return [e for e in reversed(trail(cli, *args)) if not e["action"].startswith("db-")]


def raw_trail(url: str) -> str:
    """Everything stored in audit_log, as one string (to search for secrets)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM audit_log")).all()
    engine.dispose()
    return repr(rows)


def test_every_user_change_is_recorded_with_before_and_after(cli: Cli) -> None:
    ada = cli.create("Ada", "ada@example.com")
    cli.ok("update", "ada@example.com", "--name", "Ada Lovelace", "--role", "admin")
    cli.ok("passwd", "ada@example.com", "--password-stdin", input="another-secret-1\n")
    cli.ok("disable", "ada@example.com")
    cli.ok("enable", str(ada["id"]))
    cli.ok("delete", "ada@example.com", "--yes")

    entries = user_entries(cli)
    assert [e["action"] for e in entries] == [
        "create", "update", "passwd", "disable", "enable", "delete",
    ]  # fmt: skip
    assert {(e["user_id"], e["email"]) for e in entries} == {(ada["id"], "ada@example.com")}
    assert entries[0]["changes"] == {
        "name": {"before": None, "after": "Ada"},
        "email": {"before": None, "after": "ada@example.com"},
        "role": {"before": None, "after": "user"},
        "active": {"before": None, "after": True},
        "password": "set",
    }
    assert entries[1]["changes"] == {
        "name": {"before": "Ada", "after": "Ada Lovelace"},
        "role": {"before": "user", "after": "admin"},
    }
    assert entries[2]["changes"] == {"password": "changed"}
    assert entries[3]["changes"] == {"active": {"before": True, "after": False}}
    assert entries[4]["changes"] == {"active": {"before": False, "after": True}}
    assert entries[5]["changes"] == {
        "name": {"before": "Ada Lovelace", "after": None},
        "email": {"before": "ada@example.com", "after": None},
        "role": {"before": "admin", "after": None},
        "active": {"before": True, "after": None},
    }
    for entry in entries:
        assert entry["actor"] == os_user()
        assert datetime.fromisoformat(entry["at"]) <= datetime.now(UTC)
        assert entry["at"].endswith("Z")


def test_passwords_and_hashes_never_reach_the_trail(cli: Cli, tmp_path: Path) -> None:
    cli.create("Ada", "ada@example.com", password="first-secret-value")
    cli.ok("passwd", "ada@example.com", "--password-stdin", input="second-secret-value\n")
    source = tmp_path / "users.csv"
    source.write_text("name,email,password\nGrace,grace@example.com,third-secret-value\n")
    cli.ok("import", str(source))
    hashes = [
        json.loads(line)["password_hash"]
        for line in cli.ok("export", "--include-hashes", "-f", "jsonl").stdout.splitlines()
    ]
    stored = raw_trail(cli.url)
    for secret in ("first-secret-value", "second-secret-value", "third-secret-value", *hashes):
        assert secret not in stored
    assert "$argon2" not in stored


def test_an_edit_that_changes_nothing_records_nothing(cli: Cli) -> None:
    cli.create("Ada", "ada@example.com", "--role", "admin")
    before = trail(cli)
    cli.ok("update", "ada@example.com", "--name", "Ada", "--role", "admin")
    cli.ok("disable", "ada@example.com")
    cli.ok("disable", "ada@example.com")  # already disabled
    cli.ok("create", "--name", "Ada", "--email", "ada@example.com", "--if-not-exists",
           "--password-stdin", input=SEED_PASSWORD + "\n")  # fmt: skip
    assert [e["action"] for e in trail(cli)] == ["disable", *[e["action"] for e in before]]


def test_a_failed_command_records_nothing(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}, {"name": "Bob", "email": "bob@example.com"}])
    before = trail(cli)
    assert_error(cli("disable", "ada@example.com", "nobody@example.com"), 3)
    assert_error(cli("update", "ada@example.com", "--email", "bob@example.com"), 4)
    assert_error(cli("delete", "ada@example.com", "404", "--yes"), 3)
    assert trail(cli) == before


def test_a_crash_after_the_change_rolls_back_the_entry_too(
    cli: Cli, seed: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usersctl.audit

    seed([{"name": "Ada", "email": "ada@example.com"}])
    before = trail(cli)
    users_before = cli.json("list")
    record_many = usersctl.audit.Trail.record_many

    def record_then_crash(self: Any, *args: Any, **kwargs: Any) -> int:
        record_many(self, *args, **kwargs)
        raise RuntimeError("crash after the audit insert")

    monkeypatch.setattr(usersctl.audit.Trail, "record_many", record_then_crash)
    assert cli("disable", "ada@example.com").exit_code == 1
    monkeypatch.undo()
    assert trail(cli) == before
    assert cli.json("list") == users_before


def test_deleted_users_keep_their_history(cli: Cli) -> None:
    ada = cli.create("Ada", "ada@example.com")
    cli.ok("disable", "ada@example.com")
    cli.ok("delete", "ada@example.com", "--yes")
    by_id = [e["action"] for e in trail(cli, "--user", str(ada["id"]))]
    by_email = [e["action"] for e in trail(cli, "--user", "ADA@example.com")]
    assert by_id == by_email == ["delete", "disable", "create"]


def test_user_filter_follows_an_email_change(cli: Cli) -> None:
    ada = cli.create("Ada", "ada@example.com")
    cli.create("Bob", "bob@example.com")
    cli.ok("update", "ada@example.com", "--email", "countess@example.com")
    cli.ok("disable", "countess@example.com")
    expected = ["disable", "update", "create"]
    assert [e["action"] for e in trail(cli, "--user", "ada@example.com")] == expected
    assert [e["action"] for e in trail(cli, "--user", "countess@example.com")] == expected
    assert [e["action"] for e in trail(cli, "--user", str(ada["id"]))] == expected
    assert trail(cli, "--user", "nobody@example.com") == []
    assert trail(cli, "--user", "99999999999999999999") == []


def test_actor_comes_from_flag_environment_config_or_the_os(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.ok("--actor", "alice", "create", "--name", "A", "--email", "a@example.com",
           "--random-password")  # fmt: skip
    env = cli("create", "--name", "B", "--email", "b@example.com", "--random-password",
              env={"USERSCTL_ACTOR": "cron:hr-sync"})  # fmt: skip
    assert env.exit_code == 0, env.stderr
    config = tmp_path / "usersctl.toml"
    config.write_text('actor = "from-config"\n')
    from_file = cli("create", "--name", "C", "--email", "c@example.com", "--random-password",
                    env={"USERSCTL_CONFIG": str(config)})  # fmt: skip
    assert from_file.exit_code == 0, from_file.stderr
    cli.ok("create", "--name", "D", "--email", "d@example.com", "--random-password")
    actors = [e["actor"] for e in user_entries(cli)]
    assert actors == ["alice", "cron:hr-sync", "from-config", os_user()]
    assert [e["email"] for e in trail(cli, "--actor", "alice")] == ["a@example.com"]


def test_actor_in_the_config_file_must_be_text(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "usersctl.toml"
    config.write_text("actor = 42\n")
    result = cli("disable", "1", env={"USERSCTL_CONFIG": str(config)})
    assert_error(result, 2, "actor must be a string")


@pytest.mark.parametrize("actor", ["", "   ", "x" * 201, "evil\x1b[2Jactor", "two\nlines"])
def test_invalid_actor_is_a_usage_error(cli: Cli, actor: str) -> None:
    before = trail(cli)
    result = cli("--actor", actor, "disable", "1")
    assert_error(result, 2, "actor")
    assert trail(cli) == before


def test_import_records_one_entry_per_affected_user(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    [ada_id] = seed([{"name": "Ada", "email": "ada@example.com", "role": "admin"}])
    cli.create("Same", "same@example.com")
    same_hash = json.loads(
        cli.ok("export", "--include-hashes", "-f", "jsonl").stdout.splitlines()[1]
    )["password_hash"]
    source = tmp_path / "users.jsonl"
    rows = [
        {"name": "Ada L.", "email": "ada@example.com"},  # no role column: admin stays
        {"name": "Same", "email": "same@example.com", "password_hash": same_hash},  # unchanged
        {"name": "Grace", "email": "grace@example.com", "password": "cobol-forever-1959"},
        {
            "name": 'Zoë "Q" \\ \u00e9x',
            "email": "zoe@example.com",
            "password": "quartz lantern okapi 93",
            "active": False,
        },
        {"name": "Linus", "email": "linus@example.org", "password": "penguins-rule-1991",
         "role": "ops"},
    ]  # fmt: skip
    rows[0]["password"] = "another-secret-1"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = len(trail(cli))
    summary = cli.json("import", str(source), "--on-conflict", "update", "--update-passwords")
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (3, 1, 1)
    entries = trail(cli)[: len(trail(cli)) - before]
    assert {e["action"] for e in entries} == {"import"}
    ids = {u["email"]: u["id"] for u in cli.json("list")}
    by_email = {e["email"]: e for e in entries}
    assert set(by_email) == {
        "ada@example.com", "grace@example.com", "linus@example.org", "zoe@example.com"}  # fmt: skip
    assert by_email["zoe@example.com"]["changes"]["name"]["after"] == 'Zoë "Q" \\ \u00e9x'
    assert by_email["zoe@example.com"]["changes"]["active"]["after"] is False
    assert all(e["user_id"] == ids[email] for email, e in by_email.items())
    assert by_email["ada@example.com"]["user_id"] == ada_id
    assert by_email["ada@example.com"]["changes"] == {
        "name": {"before": "Ada", "after": "Ada L."},
        "password": "changed",
    }
    assert by_email["linus@example.org"]["changes"]["role"] == {"before": None, "after": "ops"}
    assert by_email["grace@example.com"]["changes"] == {  # (built from a template)
        "name": {"before": None, "after": "Grace"},
        "email": {"before": None, "after": "grace@example.com"},
        "role": {"before": None, "after": "user"},
        "active": {"before": None, "after": True},
        "password": "set",
    }
    assert cli.json("get", "ada@example.com")["role"] == "admin"


def test_skipped_import_rows_are_not_recorded(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    source = tmp_path / "users.csv"
    source.write_text("name,email,password\nAda New,ada@example.com,correct-horse-1\n")
    before = trail(cli)
    summary = cli.json("import", str(source), "--on-conflict", "skip")
    assert summary["skipped"] == 1
    assert trail(cli) == before


def test_rehash_on_login_is_recorded_without_the_hash(cli: Cli, tmp_path: Path) -> None:
    import bcrypt

    legacy = bcrypt.hashpw(b"legacy-password-1", bcrypt.gensalt(rounds=4)).decode()
    source = tmp_path / "legacy.csv"
    source.write_text(f"name,email,password_hash\nOld,old@example.com,{legacy}\n")
    cli.ok("import", str(source))
    cli.ok("verify-password", "old@example.com", "--password-stdin", input="legacy-password-1\n")
    [entry] = trail(cli, "--action", "rehash")
    assert (entry["email"], entry["changes"]) == ("old@example.com", {"password": "rehashed"})
    cli.ok("verify-password", "old@example.com", "--password-stdin", input="legacy-password-1\n")
    assert len(trail(cli, "--action", "rehash")) == 1  # now argon2id: nothing to upgrade


def test_schema_changes_are_recorded(cli: Cli, empty_db_url: str) -> None:
    fresh = Cli(url=empty_db_url, runner=cli.runner)
    fresh.ok("--actor", "deployer", "list")  # first use creates the schema
    [init] = trail(fresh)
    assert (init["action"], init["actor"], init["user_id"], init["email"]) == (
        "db-upgrade", "deployer", None, None)  # fmt: skip
    assert init["changes"] == {"revision": {"before": None, "after": HEAD}}

    set_revision(empty_db_url, "0002")  # as if recorded wrongly by other means
    fresh.ok("db", "stamp", HEAD, "--yes")
    fresh.ok("db", "upgrade")  # nothing to do: not recorded
    actions = [(e["action"], e["changes"]) for e in trail(fresh)]
    assert actions == [
        ("db-stamp", {"revision": {"before": "0002", "after": HEAD}}),
        ("db-upgrade", {"revision": {"before": None, "after": HEAD}}),
    ]


def test_upgrade_to_head_records_itself(cli: Cli, empty_db_url: str) -> None:
    fresh = Cli(url=empty_db_url, runner=cli.runner)
    fresh.ok("db", "upgrade", "0002")
    fresh.ok("--actor", "dba", "db", "upgrade")
    [entry] = trail(fresh)
    assert (entry["action"], entry["actor"]) == ("db-upgrade", "dba")
    assert entry["changes"] == {"revision": {"before": "0002", "after": HEAD}}


def test_downgrade_below_the_audit_table_needs_explicit_consent(cli: Cli) -> None:
    cli.create("Ada", "ada@example.com")
    before = trail(cli)
    assert_error(cli("db", "downgrade", "0002", "--yes"), 5, "audit trail", "--discard-audit-trail")
    assert trail(cli) == before
    cli.ok("db", "downgrade", "0002", "--yes", "--discard-audit-trail")
    assert cli.ok("db", "current", "-o", "plain").stdout.startswith("0002\t")
    cli.ok("db", "upgrade")
    [entry] = trail(cli)  # a new trail starts with the upgrade that created it
    assert entry["changes"] == {"revision": {"before": "0002", "after": HEAD}}
    assert cli.json("get", "ada@example.com")["name"] == "Ada"


# --- reading the trail ---------------------------------------------------------------


def test_newest_first_with_limit_and_action_filter(cli: Cli) -> None:
    for name in ("a", "b", "c"):
        cli.create(name.upper(), f"{name}@example.com")
    cli.ok("disable", "a@example.com", "b@example.com")
    entries = trail(cli)
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    latest = trail(cli, "--limit", "1")
    assert latest == entries[:1]
    disables = trail(cli, "--action", "disable")
    assert [e["email"] for e in disables] == ["b@example.com", "a@example.com"]
    assert [e["email"] for e in trail(cli, "--action", "CREATE", "--limit", "2")] == [
        "c@example.com", "b@example.com"]  # fmt: skip
    assert trail(cli, "--limit", "0") == []


def test_since_and_until(cli: Cli) -> None:
    cli.create("Ada", "ada@example.com")
    count = len(trail(cli))
    now = datetime.now(UTC)
    assert len(trail(cli, "--since", "1h")) == count
    assert len(trail(cli, "--since", "2W")) == count
    assert trail(cli, "--until", "1h") == []
    assert trail(cli, "--since", (now + timedelta(hours=1)).isoformat()) == []
    assert len(trail(cli, "--since", (now - timedelta(days=1)).date().isoformat())) == count
    stamp = (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(trail(cli, "--until", stamp, "--since", "7d")) == count
    offset = (now - timedelta(minutes=10)).astimezone(timezone(timedelta(hours=-5))).isoformat()
    assert len(trail(cli, "--since", offset)) == count


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "yesterday"], "invalid --since"),
        (["--until", "7x"], "invalid --until"),
        (["--since", "999999999w"], "invalid --since"),
        (["--action", "frobnicate"], "--action"),
        (["--limit", "-1"], "--limit"),
    ],
)
def test_bad_filters_are_usage_errors(cli: Cli, args: list[str], fragment: str) -> None:
    assert_error(cli("audit", *args), 2, fragment)


def test_text_formats_show_changes_as_one_safe_line(cli: Cli) -> None:
    cli.create("Ada [bold]x[/bold]", "ada@example.com")
    cli.ok("update", "ada@example.com", "--name", "Ada [red]L[/red]")
    table = cli.ok("audit", "--action", "update").stdout  # Rich markup stays text
    assert 'name: "Ada [bold]x[/bold]" -> "Ada [red]L[/red]"' in table
    plain = cli.ok("audit", "--action", "create", "-o", "plain").stdout
    assert plain.count("\n") == 1
    assert 'name: null -> "Ada [bold]x[/bold]"' in plain
    assert "password: set" in plain
    rows = cli.ok("audit", "--action", "update", "-o", "csv").stdout.splitlines()
    assert rows[0] == "id,at,actor,action,user_id,email,changes"
    lines = cli.ok("audit", "-o", "jsonl").stdout.splitlines()
    assert all(isinstance(json.loads(line)["changes"], dict) for line in lines)


def test_empty_trail_message(cli: Cli) -> None:
    result = cli("audit", "--user", "nobody@example.com")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No audit entries." in result.stderr


def test_audit_on_a_database_behind_head_is_exit_8(cli: Cli) -> None:
    set_revision(cli.url, "0002")
    assert_error(cli("audit"), 8, "usersctl db upgrade")


def test_cli_action_choices_match_what_is_recorded() -> None:
    assert tuple(action.value for action in Action) == ACTIONS


@pytest.mark.parametrize(
    ("text_value", "expected"),
    [
        ("30s", datetime(2026, 11, 24, 11, 59, 30, tzinfo=UTC)),
        ("12h", datetime(2026, 11, 24, 0, 0, tzinfo=UTC)),
        ("7d", datetime(2026, 11, 17, 12, 0, tzinfo=UTC)),
        ("2w", datetime(2026, 11, 10, 12, 0, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
    ],
)
def test_parse_moment(text_value: str, expected: datetime) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_moment(text_value, now) == expected


@pytest.mark.parametrize("text_value", ["", "7", "d7", "7 days", "2026-13-01", "soon"])
def test_parse_moment_rejects(text_value: str) -> None:
    with pytest.raises(ValueError):
        parse_moment(text_value, datetime(2026, 11, 24, tzinfo=UTC))
