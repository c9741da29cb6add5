"""Where usersctl reads and writes: export destinations (symbolic links, FIFOs, devices,
stdout), which commands may create a SQLite database, dry runs in a fresh home, database
URLs that are not what they seem, and files and folders another user could change (ssh's
StrictModes)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.conftest import Cli, assert_error
from usersctl.cli import app

NOBODY = 65534  # a non-root user that owns nothing of ours
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown files"
)


def invoke(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--database-url", url, *args], input=input)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def emails(path: Path) -> list[str]:
    return [json.loads(line)["email"] for line in path.read_text().splitlines()]


# ---------------- export --output-file: never replace what is not a regular file


@pytest.fixture
def ada(cli: Cli) -> Cli:
    cli.ok("create", "-n", "Ada", "-e", "ada@example.com", "--random-password")
    return cli


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_export_follows_a_symlink_and_replaces_its_target(ada: Cli, tmp_path: Path) -> None:
    target = tmp_path / "target.jsonl"
    target.write_text("stale\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target.name)
    ada.ok("export", "--output-file", str(link))
    assert link.is_symlink() and os.readlink(link) == target.name  # the link is kept
    assert emails(target) == ["ada@example.com"]  # its target got the export


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
@needs_root
def test_export_refuses_a_symlink_planted_by_another_user(ada: Cli, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "export.jsonl"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    assert_error(ada("export", "--output-file", str(link)), 2, "symbolic link owned by another")
    assert victim.read_text() == "precious\n" and link.is_symlink()


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_export_writes_a_fifo_directly(ada: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    ada.ok("export", "--output-file", str(fifo))
    reader.join(timeout=60)
    assert not reader.is_alive(), "the reader still waits: the FIFO was replaced"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [json.loads(line)["email"] for line in received[0].splitlines()] == ["ada@example.com"]


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_export_to_dev_stdout_appends_and_never_replaces_it(ada: Cli, tmp_path: Path) -> None:
    """As root, a rename over /dev/stdout would replace the system's /dev/stdout."""
    before = os.lstat("/dev/stdout")
    log = tmp_path / "nightly.log"
    log.write_text("earlier line\n")
    with log.open("a") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "usersctl", "export", "--output-file", "/dev/stdout"],
            env={**os.environ, "USERSCTL_DATABASE_URL": ada.url},
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    after = os.lstat("/dev/stdout")
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier line"
    assert [json.loads(line)["email"] for line in lines[1:]] == ["ada@example.com"]


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_export_output_file_dash_is_stdout(
    ada: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = ada.ok("export", "--output-file", "-")
    assert [json.loads(line)["email"] for line in result.stdout.splitlines()] == ["ada@example.com"]
    assert not (tmp_path / "-").exists()
    csv = ada.ok("export", "--output-file", "-", "-f", "csv")
    assert csv.stdout.splitlines()[0].startswith("id,name,email")


# ---------------- only `db upgrade` (and the default location) create a database

DATA_COMMANDS = [
    ["list"],
    ["get", "1"],
    ["audit"],
    ["create", "-n", "Ada", "-e", "ada@example.com", "--random-password"],
    ["create", "-n", "Ada", "-e", "ada@example.com", "--random-password", "--dry-run"],
    ["delete", "1", "--yes"],
    ["export"],
    ["db", "current"],
    ["db", "check"],
    ["db", "stamp", "head"],
    ["db", "downgrade", "base", "--yes", "--discard-audit-trail"],
]


@pytest.mark.parametrize("args", DATA_COMMANDS, ids=" ".join)
def test_a_mistyped_sqlite_path_is_exit_7_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    monkeypatch.chdir(work)
    for url, shown in (("sqlite:///rel.db", "rel.db"), (f"sqlite:///{work}/abs.db", "abs.db")):
        result = invoke(url, *args)
        assert_error(result, 7, "no database at", shown, "create it with `usersctl db upgrade`")
    assert files(tmp_path) == ["work"]


def test_import_into_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/typo.db"
    row = '{"name": "Ada", "email": "ada@example.com", "password": "quartz lantern okapi 93"}\n'
    for extra in ([], ["--dry-run"]):
        assert_error(invoke(url, "import", "-", "-f", "jsonl", *extra, input=row), 7, "no database")
    assert files(tmp_path) == []


def test_db_upgrade_creates_a_private_database_and_its_dry_run_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/users.db"
    dry = invoke(url, "db", "upgrade", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "CREATE TABLE users" in dry.stdout
    assert files(tmp_path) == []
    real = invoke(url, "db", "upgrade")
    assert real.exit_code == 0, real.stderr
    assert stat.S_IMODE((tmp_path / "users.db").stat().st_mode) == 0o600
    assert invoke(url, "list").exit_code == 0


# ---------------- a dry run in a fresh home creates nothing, not even the data folder


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["create", "-n", "Ada", "-e", "ada@example.com", "--random-password"], None),
        (
            ["import", "-", "-f", "jsonl"],
            '{"name": "A", "email": "a@example.com", "password": "quartz-lantern-okapi-93"}\n',
        ),
        (["db", "upgrade"], None),
    ],
    ids=["create", "import", "db upgrade"],
)
def test_dry_run_in_a_fresh_home_creates_nothing(
    tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(app, [*args, "--dry-run"], input=stdin)
    assert result.exit_code == 0, result.stderr
    assert "nothing was written" in result.stderr
    assert not home.exists(), files(tmp_path)
    real = CliRunner().invoke(app, args, input=stdin)  # the default location: created
    assert real.exit_code == 0, real.stderr
    assert (home / ".local" / "share" / "usersctl" / "users.db").is_file()


# ---------------- database URLs that are not what they seem


def test_an_unsupported_engine_is_named_as_such() -> None:
    result = invoke("oracle://scott:tiger@db.example.com/orcl", "list")
    assert_error(result, 2, "unsupported database engine 'oracle'", "sqlite, postgresql")
    assert "driver" not in result.stderr and "tiger" not in result.stderr


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("/srv/x/users.db", "sqlite:////srv/x/users.db"),
        ("users.db", "sqlite:///users.db"),
        ("~/users.db", "sqlite:///~/users.db"),
    ],
)
def test_a_path_given_as_url_gets_the_sqlite_url_suggested(
    tmp_path: Path, given: str, suggested: str
) -> None:
    result = invoke(given, "list")
    assert_error(result, 2, "is a file path, not a URL", f"use {suggested}")
    assert not Path("/srv/x").exists()


def test_tilde_means_home_for_sqlite_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an empty file in $HOME while SQLite opens ./~/x.db."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    monkeypatch.chdir(work)
    url = "sqlite:///~/x.db"
    assert invoke(url, "db", "upgrade").exit_code == 0
    created = invoke(url, "create", "-n", "Ada", "-e", "ada@example.com", "--random-password")
    assert created.exit_code == 0, created.stderr
    assert files(work) == []
    assert (home / "x.db").stat().st_size > 0
    listed = invoke(f"sqlite:///{home}/x.db", "list", "-o", "json")
    assert [user["email"] for user in json.loads(listed.stdout)] == ["ada@example.com"]


SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://admin:{SECRET}@extra@127.0.0.1:1/users",
        f"mysql+pymysql://admin:{SECRET}@extra@127.0.0.1:1/users",
        f"postgresql+psycopg://admin@127.0.0.1:1/users?sslpassword={SECRET}",
        f"postgresql+psycopg://admin@127.0.0.1:1/users?password={SECRET}",
        f"mysql+pymysql://admin@127.0.0.1:1/users?passwd={SECRET}",
        f"mysql+pymysql://admin@127.0.0.1:1/users?password={SECRET}",
    ],
    ids=[
        "pg-@-in-password",
        "mysql-@-in-password",
        "sslpassword",
        "pg-password",
        "passwd",
        "mysql-password",
    ],  # fmt: skip
)
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_url_passwords_never_print(url: str, debug: bool) -> None:
    pytest.importorskip("psycopg" if url.startswith("postgresql") else "pymysql")
    args = ["--debug"] if debug else []
    for command in (["list"], ["db", "current"]):
        result = CliRunner().invoke(app, [*args, "--database-url", url, *command])
        assert result.exit_code in (2, 7), result.stderr
        output = result.stdout + result.stderr
        for fragment in (SECRET, f"{SECRET}@extra", "extra@127"):
            assert fragment not in output, output
        if not debug:
            assert_error(result, result.exit_code)
        if "@extra" in url and not debug:
            assert_error(result, 2, ":***@127.0.0.1:1", "percent-encoded, as %40")


def test_display_url_masks_every_password_form() -> None:
    from usersctl.database import display_url

    assert display_url("postgresql://u:p@ss@host/db") == "postgresql://u:***@host/db"
    assert display_url("postgresql://u:p/ss@host/db") == "postgresql://u:***@host/db"
    assert display_url("mysql://u@h/db?charset=utf8mb4&passwd=x") == (
        "mysql://u@h/db?charset=utf8mb4&passwd=***"
    )
    assert display_url("postgresql:///db?sslpassword=x&password=y") == (
        "postgresql:///db?sslpassword=***&password=***"
    )
    assert display_url("sqlite:////srv/a:b@c/users.db") == "sqlite:////srv/a:b@c/users.db"


# ---------------- StrictModes: nothing another user could change or plant


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "data"
    made.mkdir(mode=0o700)
    return made


def run(url: str, *args: str) -> None:
    """In a process of its own, so that no connection of this one keeps the files open
    (or memory-mapped: a planted -shm would then be a bus error)."""
    done = subprocess.run(
        [sys.executable, "-m", "usersctl", "--database-url", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def upgraded(folder: Path) -> tuple[Path, str]:
    path = folder / "users.db"
    url = f"sqlite:///{path}"
    run(url, "db", "upgrade")
    run(url, "create", "-n", "Ada", "-e", "ada@example.com", "--random-password")
    return path, url


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=["0777", "sticky-1777", "0770"])
@needs_root
def test_a_folder_others_can_write_is_refused(folder: Path, mode: int) -> None:
    """Even sticky (/tmp-like): anyone could plant users.db-wal before it exists."""
    os.chown(folder, 0, NOBODY)  # (0770: a group that is not root's own)
    folder.chmod(mode)
    url = f"sqlite:///{folder}/users.db"
    result = invoke(url, "db", "upgrade")  # creating
    # A sticky folder is shared on purpose (/tmp): chmod would break it, so never advised.
    fix = "mkdir -m 700" if mode & 0o1000 else f"chmod go-w {folder}"
    assert_error(result, 7, f"folder {folder}", "writable by", fix)
    assert ("chmod" in result.stderr) != bool(mode & 0o1000)
    assert files(folder) == []
    folder.chmod(0o700)
    path, url = upgraded(folder)
    before = snapshot(folder)
    folder.chmod(mode)
    for args in (["list"], ["get", "1"], ["db", "current"], ["delete", "1", "--yes"]):
        assert_error(invoke(url, *args), 7, f"folder {folder}", "writable by")
    assert snapshot(folder) == before


@needs_root
def test_a_database_others_can_write_is_refused(folder: Path) -> None:
    path, url = upgraded(folder)
    path.chmod(0o666)
    before = snapshot(folder)
    for args in (["list"], ["verify-password", "1", "--password-stdin"], ["db", "upgrade"]):
        result = invoke(url, *args, input="whatever password\n")
        assert_error(result, 7, f"database {path}", "every user (mode 0666)", "chmod 600")
    assert snapshot(folder) == before
    path.chmod(0o660)
    os.chown(path, 0, NOBODY)  # a group shared with others
    assert_error(invoke(url, "list"), 7, "writable by its group (mode 0660)")
    path.chmod(0o600)
    assert invoke(url, "list").exit_code == 0


@needs_root
def test_a_user_private_group_may_write(folder: Path) -> None:
    """umask 002 distributions make files group-writable by the owner's own group."""
    import grp

    if grp.getgrgid(0).gr_mem:
        pytest.skip("root's group has other members here")
    path, url = upgraded(folder)
    os.chown(path, 0, 0)
    path.chmod(0o660)
    folder.chmod(0o770)
    result = invoke(url, "list", "-o", "json")
    assert result.exit_code == 0, result.stderr


@needs_root
def test_a_database_owned_by_another_user_is_refused(folder: Path) -> None:
    path, url = upgraded(folder)
    os.chown(path, NOBODY, NOBODY)
    before = snapshot(folder)
    result = invoke(url, "list")
    assert_error(result, 7, f"database {path} is owned by", "not you (root)", "chown root")
    assert snapshot(folder) == before


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
@needs_root
def test_a_planted_journal_is_refused(folder: Path, suffix: str) -> None:
    path, url = upgraded(folder)
    planted = folder / f"users.db{suffix}"
    planted.write_bytes(b"attacker's frames")
    os.chown(planted, NOBODY, NOBODY)
    before = snapshot(folder)
    for args in (["list"], ["verify-password", "1", "--password-stdin"]):
        result = invoke(url, *args, input="whatever password\n")
        assert_error(result, 7, f"SQLite file {planted} is owned by")
    assert snapshot(folder) == before
    os.chown(planted, 0, 0)
    planted.chmod(0o606)
    assert_error(invoke(url, "list"), 7, f"SQLite file {planted} is writable by every user")


def test_never_created_through_a_dangling_symlink(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "chosen-by-attacker.db"
    link = folder / "users.db"
    link.symlink_to(elsewhere)
    for args in (["db", "upgrade"], ["list"]):
        result = invoke(f"sqlite:///{link}", *args)
        assert_error(result, 7, f"database {link} is a symbolic link", "never creates")
    assert not elsewhere.exists()
    assert files(folder) == ["users.db"] and link.is_symlink()


def test_a_symlink_to_a_real_database_works(folder: Path, tmp_path: Path) -> None:
    path, _ = upgraded(folder)
    link_folder = tmp_path / "links"
    link_folder.mkdir(mode=0o700)
    (link_folder / "users.db").symlink_to(path)
    listed = invoke(f"sqlite:///{link_folder}/users.db", "list", "-o", "json")
    assert listed.exit_code == 0, listed.stderr
    assert [user["email"] for user in json.loads(listed.stdout)] == ["ada@example.com"]
