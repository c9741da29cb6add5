"""The CLI's surface: Ctrl-C, contradictory options, global options after the command, help
text, option names that agree across commands, and shell completion."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from conftest import COMMAND_PATHS, SEED_PASSWORD, Cli, Seeder, assert_error
from usersctl import crud
from usersctl.cli import app
from usersctl.cli.completion import MAX_SUGGESTIONS, SORT_FIELDS
from usersctl.revision import HEAD, KNOWN_REVISIONS

# --- Ctrl-C (item 7) ------------------------------------------------------------------------

INTERRUPTED = "error: interrupted; nothing changed"


def _reading_the_terminal(pid: int) -> bool:
    """Whether the process sleeps in a terminal read (Linux: its wchan is wait_woken)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "wait_woken"
    except OSError:  # no /proc: no way to tell
        return True


def run_until_then_interrupt(
    args: list[str],
    wait_for: bytes,
    env: dict[str, str],
    timeout: float = 60,
    *,
    at_prompt: bool = False,
) -> tuple[int, bytes]:
    """Run usersctl on a pseudo-terminal, send SIGINT once `wait_for` shows, and return the
    exit code and everything it wrote. Waits on the terminal's output, never sleeps.

    `at_prompt`: the signal goes once the process sleeps reading the terminal. CPython
    loses a SIGINT that lands between writing the prompt and blocking in read() (the flag
    is set, the read is not interrupted: a person would press Ctrl-C again), which under
    load made this test hang now and then."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "usersctl", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
        # A test runner started in the background may ignore SIGINT; a shell user does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            if (
                not interrupted
                and wait_for in output
                and (not at_prompt or _reading_the_terminal(process.pid))
            ):
                process.send_signal(signal.SIGINT)
                interrupted = True
            ready, _, _ = select.select([master], [], [], 0.05 if wait_for in output else 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process has exited
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        assert interrupted, output
        return process.wait(timeout=timeout), output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def terminal_env(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")}
    return {**env, "USERSCTL_DATABASE_URL": url, "HOME": str(home), "COLUMNS": "80"}


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_ctrl_c_at_a_prompt_exits_130_and_changes_nothing(
    cli: Cli, seed: Seeder, tmp_path: Path
) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    code, output = run_until_then_interrupt(
        ["delete", "ada@example.com"], b"[y/N]", terminal_env(cli.url, tmp_path), at_prompt=True
    )
    assert code == 130, output
    assert INTERRUPTED.encode() in output
    assert b"Traceback" not in output
    assert [u["email"] for u in cli.json("list")] == ["ada@example.com"]


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_ctrl_c_during_an_import_exits_130_after_the_progress_bar(cli: Cli, tmp_path: Path) -> None:
    rows = [f"User {i},user{i}@example.com,plaintext-password-{i}" for i in range(3000)]
    source = tmp_path / "many.csv"
    source.write_text("name,email,password\n" + "\n".join(rows) + "\n")
    code, output = run_until_then_interrupt(
        ["import", str(source)], b"Hashing passwords", terminal_env(cli.url, tmp_path)
    )
    assert code == 130, output
    # The message comes after the (erased) bar, so it stays on the screen.
    assert output.rfind(INTERRUPTED.encode()) > output.rfind(b"Hashing passwords"), output
    assert b"Traceback" not in output
    assert cli.json("list") == []


def test_ctrl_c_after_the_commit_does_not_claim_nothing_changed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("usersctl.cli.users._show_user", interrupted)
    # (Not --random-password: a generated password is shown before the commit, and an
    # interrupt while showing it rolls the change back.)
    result = cli(
        "create",
        "-n",
        "Ada",
        "-e",
        "ada@example.com",
        "--password-stdin",
        input=SEED_PASSWORD + "\n",
    )
    assert_error(result, 130, "interrupted; the change was committed")
    assert "nothing changed" not in result.stderr
    assert [u["email"] for u in cli.json("list")] == ["ada@example.com"]


def test_ctrl_c_while_showing_a_generated_password_rolls_the_change_back(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("usersctl.cli.users._show_user", interrupted)
    result = cli("create", "-n", "Ada", "-e", "ada@example.com", "--random-password")
    assert_error(result, 130, "interrupted; nothing changed")
    assert cli.json("list") == []


def test_ctrl_c_before_the_commit_says_nothing_changed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(**_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(crud, "set_active", interrupted)
    cli.create("Ada", "ada@example.com")
    assert_error(cli("disable", "ada@example.com"), 130, "interrupted; nothing changed")
    assert cli.json("get", "ada@example.com")["active"] is True


# --- contradictory options (item 8) ---------------------------------------------------------

CONTRADICTIONS = [
    (["list", "--active", "--disabled"], "--active and --disabled"),
    (["list", "--count", "--limit", "1"], "--count and --limit"),
    (["list", "--count", "--offset", "1"], "--count and --offset"),
    (["list", "--count", "--sort", "name"], "--count and --sort"),
    (
        ["create", "-n", "A", "-e", "a@example.com", "--password-stdin", "--random-password"],
        "--password-stdin and --random-password",
    ),
    (["passwd", "1", "--random-password", "--password-stdin"], "--password-stdin and"),
    (["export", "-o", "csv", "-f", "json"], "--output and --format"),
    (["audit", "--count", "--limit", "1"], "--count and --limit"),
    (["audit", "--count", "--offset", "1"], "--count and --offset"),
    (["audit", "--since", "1d", "--until", "2d"], "is after --until"),
]


@pytest.mark.parametrize(
    ("args", "fragment"), CONTRADICTIONS, ids=[" ".join(a) for a, _ in CONTRADICTIONS]
)
def test_contradictory_options_are_usage_errors(
    cli: Cli, seed: Seeder, args: list[str], fragment: str
) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    before = cli.ok("export", "--include-hashes").stdout
    assert_error(cli(*args, input="a-long-password\n"), 2, fragment)
    assert cli.ok("export", "--include-hashes").stdout == before


def test_active_and_disabled_still_filter_alone(cli: Cli, seed: Seeder) -> None:
    seed(
        [
            {"name": "On", "email": "on@example.com"},
            {"name": "Off", "email": "off@example.com", "is_active": False},
        ]
    )
    assert [u["email"] for u in cli.json("list", "--active")] == ["on@example.com"]
    assert [u["email"] for u in cli.json("list", "--disabled")] == ["off@example.com"]
    assert cli.ok("list", "--count", "--disabled").stdout == "1\n"


# --- global options after the command (item 9) ----------------------------------------------


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_global_options_are_accepted_after_the_command(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    runner = CliRunner()  # no USERSCTL_DATABASE_URL: only the flag names the database

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args))

    listed = run("list", "--database-url", cli.url, "-o", "json")
    assert listed.exit_code == 0, listed.stderr
    assert [u["email"] for u in json.loads(listed.stdout)] == ["ada@example.com"]
    updated = run("update", "ada@example.com", "--actor", "night-job", "-n", "Ada L",
                  "--database-url", cli.url)  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    [entry] = cli.json("audit", "--action", "update")
    assert entry["actor"] == "night-job"
    # audit's own --actor is its filter, as documented
    assert cli.json("audit", "--actor", "night-job")[0]["action"] == "update"
    assert run("db", "current", "--database-url", cli.url, "-o", "plain").stdout.startswith(HEAD)


def test_debug_after_the_command_shows_the_traceback(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(crud, "get_user", broken)
    plain = cli("get", "1")
    assert_error(plain, 1, "unexpected error (RuntimeError: boom)")
    debug = cli("get", "1", "--debug")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and "RuntimeError: boom" in debug.stderr


# --- help (item 11) -------------------------------------------------------------------------

PYTHON_INTERNALS = re.compile(
    r"<str>|<int|<list\[|<float|<path>|<file>|\{[A-Z][A-Z.]*\}|\[\[|<=x|x<=|x>="
)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) or "root" for p in COMMAND_PATHS])
def test_help_fits_80_columns_and_shows_no_python_internals(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        assert len(line) <= 80, (path, line)
        assert not PYTHON_INTERNALS.search(line), (path, line)
        assert line.count("[default:") <= 1, (path, line)


def test_root_help_names_the_configuration_and_every_exit_code() -> None:
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    for fragment in ("~/.config/usersctl/config.toml", "USERSCTL_CONFIG", "USERSCTL_BUSY_TIMEOUT"):
        assert fragment in text
    assert re.search(r"^\s+9  refused by a safety limit; nothing changed$", text, re.M)
    assert re.search(r"^\s+130  interrupted \(Ctrl-C\); nothing changed$", text, re.M)


def test_db_history_marks_the_current_revision(cli: Cli) -> None:
    table = cli.ok("db", "history").stdout
    assert f"{HEAD} (current)" in table
    assert table.count("(current)") == 1
    rows = cli.json("db", "history")
    assert [r["revision"] for r in rows if r["current"]] == [HEAD]


# --- options that agree across commands (item 14) -------------------------------------------


def test_export_takes_output_like_every_command(cli: Cli, seed: Seeder) -> None:
    seed([{"name": "Ada", "email": "ada@example.com"}])
    as_csv = cli.ok("export", "-o", "csv").stdout
    assert as_csv.splitlines()[0].startswith("id,name,email")
    assert cli.ok("export", "--output", "csv").stdout == as_csv
    assert cli.ok("export", "-f", "csv").stdout == as_csv  # the old spelling still works
    assert json.loads(cli.ok("export", "-o", "json").stdout)[0]["email"] == "ada@example.com"
    assert_error(cli("export", "-o", "table"), 2, "table")


def test_audit_count_and_offset_work_like_list(cli: Cli) -> None:
    for i in range(3):
        cli.create(f"U{i}", f"u{i}@example.com")
    entries = cli.json("audit")
    assert cli.ok("audit", "--count").stdout == f"{len(entries)}\n"
    assert cli.ok("audit", "--count", "--action", "create").stdout == "3\n"
    assert cli.json("audit", "--offset", "1") == entries[1:]
    assert cli.json("audit", "--offset", "1", "--limit", "1") == entries[1:2]
    assert_error(cli("audit", "--offset", "-1"), 2, "--offset")


# --- shell completion (item 17) -------------------------------------------------------------


def complete(words: str, url: str | None, cwd: Path | None = None) -> Result:
    """Ask for completions the way bash does (Click's protocol)."""
    env = {
        "_USERSCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    if url is not None:
        env["USERSCTL_DATABASE_URL"] = url
    return CliRunner().invoke(app, [], env=env)


def values(result: Result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith("plain,") for line in lines), lines
    return [line.removeprefix("plain,") for line in lines]


def test_completion_offers_option_values(cli: Cli) -> None:
    assert set(values(complete("usersctl list --sort ", cli.url))) == {
        *SORT_FIELDS, *(f"-{f}" for f in SORT_FIELDS)}  # fmt: skip
    assert values(complete("usersctl list -o js", cli.url)) == ["json", "jsonl"]
    assert values(complete("usersctl export -o c", cli.url)) == ["csv"]
    assert values(complete("usersctl db stamp ", cli.url)) == ["head", "base", *KNOWN_REVISIONS]
    assert values(complete("usersctl db downgrade 000", cli.url)) == list(KNOWN_REVISIONS)
    assert "disable" in values(complete("usersctl audit --action d", cli.url))


def test_completion_offers_roles_and_users_from_the_database(cli: Cli, seed: Seeder) -> None:
    ids = seed(
        [
            {"name": "Ada", "email": "ada@example.com", "role": "admin"},
            {"name": "Alan", "email": "alan@example.com", "role": "auditor"},
            {"name": "Bob", "email": "bob@example.com"},
        ]
    )
    assert values(complete("usersctl list --role ", cli.url)) == ["admin", "auditor", "user"]
    assert values(complete("usersctl list --role a", cli.url)) == ["admin", "auditor"]
    assert values(complete("usersctl get a", cli.url)) == ["ada@example.com", "alan@example.com"]
    assert values(complete(f"usersctl get {ids[0]}", cli.url))[0] == str(ids[0])
    assert values(complete("usersctl delete bob@example.com a", cli.url)) == [
        "ada@example.com", "alan@example.com"]  # fmt: skip
    assert values(complete("usersctl audit --user b", cli.url)) == ["bob@example.com"]
    # The database named after the command counts too.
    later = complete(f"usersctl get a --database-url {cli.url} ", None)
    assert later.exit_code == 0


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_completion_of_users_is_capped(cli: Cli, seed: Seeder) -> None:
    seed([{"name": f"U{i}", "email": f"u{i:03}@example.com"} for i in range(MAX_SUGGESTIONS + 50)])
    offered = values(complete("usersctl get u", cli.url))
    assert len(offered) == MAX_SUGGESTIONS
    assert offered == sorted(offered)


def test_completion_without_a_database_offers_nothing_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ada@example.com.txt").write_text("a file, not a user")
    missing = tmp_path / "missing.db"
    for words in ("usersctl get ", "usersctl get a", "usersctl list --role ", "usersctl get "):
        assert values(complete(words, f"sqlite:///{missing}")) == []
    assert not missing.exists()
    unreachable = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    assert values(complete("usersctl get a", unreachable)) == []
    bad_config = tmp_path / "broken.toml"
    bad_config.write_text("this is [not toml")
    result = CliRunner().invoke(app, [], env={
        "_USERSCTL_COMPLETE": "bash_complete", "COMP_WORDS": "usersctl get a",
        "COMP_CWORD": "2", "USERSCTL_CONFIG": str(bad_config)})  # fmt: skip
    assert values(result) == []


def test_bash_completion_script_never_falls_back_to_files() -> None:
    for instruction in ("bash_source", "source_bash"):
        result = CliRunner().invoke(app, [], env={"_USERSCTL_COMPLETE": instruction})
        assert result.exit_code == 0
        assert "_USERSCTL_COMPLETE=bash_complete" in result.stdout
        assert "complete -o nosort -F" in result.stdout
        assert "-o default -F" not in result.stdout
    assert values(complete("usersctl import ", None)) == []


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_bash_completion_in_a_real_bash(cli: Cli, seed: Seeder, tmp_path: Path) -> None:
    """The README's eval line, then what bash does on Tab (needs bash, like the users)."""
    seed([{"name": "Ada", "email": "ada@example.com"}])
    (tmp_path / "ada-notes.txt").write_text("a file in the current folder")
    script = (
        'eval "$(_USERSCTL_COMPLETE=bash_source usersctl)"\n'
        "COMP_WORDS=(usersctl get a); COMP_CWORD=2; _usersctl_completion usersctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        "COMP_WORDS=(usersctl list -o j); COMP_CWORD=3; COMPREPLY=()\n"
        "_usersctl_completion usersctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bin_dir = str(Path(sys.executable).parent)  # where the installed usersctl script is
    env = {**terminal_env(cli.url, tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "--norc", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split() == ["ada@example.com", "json", "jsonl"]
