"""Configuration: flag > USERSCTL_DATABASE_URL > config file > default; the default
database's location and permissions; broken configuration; --version and --help.

conftest points HOME, XDG_CONFIG_HOME and XDG_DATA_HOME into the test's tmp_path and
clears every USERSCTL_* variable, so nothing here touches the developer's files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import usersctl
from conftest import COMMAND_PATHS, assert_error
from usersctl.cli import app
from usersctl.config import DEFAULT_BUSY_TIMEOUT, load_settings
from usersctl.errors import UsageError


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env or {})


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    return json.dumps(value)


def default_database() -> Path:
    return Path(os.environ["XDG_DATA_HOME"]) / "usersctl" / "users.db"


def default_config() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "usersctl" / "config.toml"


def write_config(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


# ---------------- precedence: flag > environment > config file > default


@pytest.fixture
def candidates(tmp_path: Path) -> dict[str, Path]:
    return {source: tmp_path / f"{source}.db" for source in ("flag", "env", "file")}


@pytest.mark.parametrize(
    ("sources", "winner"),
    [
        (("flag", "env", "file"), "flag"),
        (("flag", "file"), "flag"),
        (("env", "file"), "env"),
        (("file",), "file"),
        (("file-default-location",), "file"),
        ((), "default"),
    ],
)
def test_database_url_precedence(
    candidates: dict[str, Path], tmp_path: Path, sources: tuple[str, ...], winner: str
) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if "flag" in sources:
        args += ["--database-url", f"sqlite:///{candidates['flag']}"]
    if "env" in sources:
        env["USERSCTL_DATABASE_URL"] = f"sqlite:///{candidates['env']}"
    body = f"database_url = {toml_string('sqlite:///' + str(candidates['file']))}\n"
    if "file" in sources:
        env["USERSCTL_CONFIG"] = str(write_config(tmp_path / "explicit.toml", body))
    if "file-default-location" in sources:
        write_config(default_config(), body)

    result = invoke(*args, "db", "upgrade", env=env)  # (the command that creates a database)

    assert result.exit_code == 0, result.stderr
    expected = default_database() if winner == "default" else candidates[winner]
    assert f"Upgraded sqlite:///{expected} " in result.stderr
    assert expected.is_file()
    for source, path in candidates.items():
        assert path.exists() == (source == winner), source
    assert default_database().exists() == (winner == "default")


def test_settings_precedence_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(
        tmp_path / "c.toml", 'database_url = "sqlite:///file.db"\nbusy_timeout = 3\n'
    )
    monkeypatch.setenv("USERSCTL_CONFIG", str(config))
    from_file = load_settings()
    assert (from_file.database_url, from_file.busy_timeout) == ("sqlite:///file.db", 3.0)
    assert not from_file.url_is_default

    monkeypatch.setenv("USERSCTL_DATABASE_URL", "sqlite:///env.db")
    monkeypatch.setenv("USERSCTL_BUSY_TIMEOUT", "0.25")
    from_env = load_settings()
    assert (from_env.database_url, from_env.busy_timeout) == ("sqlite:///env.db", 0.25)

    assert load_settings(database_url="sqlite:///flag.db").database_url == "sqlite:///flag.db"


def test_settings_defaults_unit() -> None:
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{default_database()}"
    assert settings.url_is_default
    assert settings.busy_timeout == DEFAULT_BUSY_TIMEOUT
    assert settings.debug is False


# ---------------- the default database: location and permissions


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(previous)


def test_default_database_is_private(tmp_path: Path, umask: int) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.stderr

    path = default_database()
    assert path == tmp_path / "home" / ".local" / "share" / "usersctl" / "users.db"
    assert path.is_file()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for sibling in path.parent.iterdir():  # -wal and -shm hold user data too
        assert stat.S_IMODE(sibling.stat().st_mode) == 0o600, sibling.name


def test_default_database_is_reused(tmp_path: Path) -> None:
    assert invoke("list").exit_code == 0
    second = invoke("list", "-o", "json")
    assert second.exit_code == 0, second.stderr
    assert "Initialised" not in second.stderr
    assert second.stdout.strip() == "[]"


# ---------------- broken configuration: exit 2, one line, nothing created

BROKEN_CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown-key", 'database_uri = "sqlite:///x.db"\n', ("unknown key 'database_uri'",)),
    ("bad-toml", "database_url = \n", ("cannot read config file",)),
    ("bad-toml-quote", 'database_url = "sqlite:///x.db\n', ("cannot read config file",)),
    ("url-not-a-string", "database_url = 5\n", ("database_url must be a string",)),
    (
        "timeout-not-a-number",
        'busy_timeout = "soon"\n',
        ("invalid busy_timeout 'soon': must be a number",),
    ),
    ("timeout-negative", "busy_timeout = -1\n", ("invalid busy_timeout -1: must be between",)),
    ("timeout-boolean", "busy_timeout = true\n", ("invalid busy_timeout true: must be a number",)),
    ("url-empty", 'database_url = ""\n', ("database_url is empty: give a database URL",)),
]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [case[1:] for case in BROKEN_CONFIGS],
    ids=[case[0] for case in BROKEN_CONFIGS],
)
@pytest.mark.parametrize("location", ["USERSCTL_CONFIG", "default"])
def test_broken_config_file(
    tmp_path: Path, location: str, body: str, fragments: tuple[str, ...]
) -> None:
    if location == "default":
        path = write_config(default_config(), body)
        env = {}
    else:
        path = write_config(tmp_path / "usersctl.toml", body)
        env = {"USERSCTL_CONFIG": str(path)}
    result = invoke("list", env=env)
    assert_error(result, 2, str(path), *fragments)
    assert result.stdout == ""
    assert not default_database().exists()


def test_config_variable_naming_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.toml"
    result = invoke("list", env={"USERSCTL_CONFIG": str(missing)})
    assert_error(result, 2, str(missing), "does not exist", "USERSCTL_CONFIG")
    assert not default_database().exists()


def test_config_variable_naming_a_folder(tmp_path: Path) -> None:
    result = invoke("list", env={"USERSCTL_CONFIG": str(tmp_path)})
    assert_error(result, 2, "cannot read config file", str(tmp_path))


def test_missing_default_config_file_is_fine() -> None:
    assert not default_config().exists()
    assert invoke("list").exit_code == 0


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--database-url", ""], {}, "--database-url is empty"),
        (["--database-url", " "], {}, "--database-url is empty"),
        ([], {"USERSCTL_DATABASE_URL": ""}, "USERSCTL_DATABASE_URL is empty"),
        ([], {"USERSCTL_DATABASE_URL": "  "}, "USERSCTL_DATABASE_URL is empty"),
    ],
)
def test_an_empty_database_url_is_refused(args: list[str], env: dict[str, str], named: str) -> None:
    """`--database-url "$DB"` with DB unset must not create and use the default database."""
    result = invoke(*args, "list", env=env)
    assert_error(result, 2, named, "leave it out to use the default database")
    assert not default_database().exists()


def test_an_empty_variable_does_not_override_the_flag(tmp_path: Path) -> None:
    """Only the source that wins is checked: the flag, over an exported but empty variable
    (or an empty config key)."""
    write_config(default_config(), 'database_url = ""\n')
    url = f"sqlite:///{tmp_path / 'users.db'}"
    result = invoke("--database-url", url, "db", "upgrade", env={"USERSCTL_DATABASE_URL": ""})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "users.db").exists() and not default_database().exists()


def test_a_bad_variable_is_named_not_the_flag() -> None:
    """Click hands an environment variable's value over as the flag's: the error still
    names the variable that was set."""
    result = invoke("list", env={"USERSCTL_ACTOR": "a\tb"})
    assert_error(result, 2, "USERSCTL_ACTOR")
    assert "--actor" not in result.stderr
    flagged = invoke("--actor", "a\tb", "list")
    assert_error(flagged, 2, "--actor")


@pytest.mark.parametrize("value", ["abc", "", "-1", "3601", "nan", "inf", "10s"])
def test_invalid_busy_timeout_variable(value: str) -> None:
    result = invoke("list", env={"USERSCTL_BUSY_TIMEOUT": value})
    assert_error(result, 2, f"invalid USERSCTL_BUSY_TIMEOUT {value!r}: must be")
    assert not default_database().exists()


@pytest.mark.parametrize("value", ["0", "0.5", "3600"])
def test_valid_busy_timeout_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERSCTL_BUSY_TIMEOUT", value)
    assert load_settings().busy_timeout == float(value)
    assert invoke("list", env={"USERSCTL_BUSY_TIMEOUT": value}).exit_code == 0


def test_load_settings_raises_usage_error_for_bad_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USERSCTL_BUSY_TIMEOUT", "never")
    with pytest.raises(UsageError):
        load_settings()


# ---------------- --version and --help work in any environment


@pytest.fixture
def broken_environment(tmp_path: Path) -> dict[str, str]:
    """Every setting wrong at once: bad config file, bad timeout, unusable database URL."""
    config = write_config(tmp_path / "broken.toml", "this is [not toml\n")
    return {
        "USERSCTL_CONFIG": str(config),
        "USERSCTL_BUSY_TIMEOUT": "later",
        "USERSCTL_DATABASE_URL": "postgresql+nosuchdriver://x/y",
    }


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"usersctl {usersctl.__version__}\n"
    assert result.stderr == ""
    assert usersctl.__version__ == importlib.metadata.version("usersctl")


def test_version_with_a_broken_environment(broken_environment: dict[str, str]) -> None:
    result = invoke("--version", env=broken_environment)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"usersctl {usersctl.__version__}\n"
    assert not default_database().exists()


IMPLEMENTED = {
    *[(name,) for name in ("create", "list", "get", "update", "passwd", "verify-password")],
    *[(name,) for name in ("disable", "enable", "delete", "migrate", "db")],
    *[("db", name) for name in ("upgrade", "downgrade", "current", "history", "check", "stamp")],
}


def test_help_is_tested_for_every_command() -> None:
    assert set(COMMAND_PATHS) >= IMPLEMENTED


def _assert_help(result: Result, path: tuple[str, ...]) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    usage = " ".join(("Usage: usersctl", *path))
    assert result.stdout.startswith(usage + " "), result.stdout[:200]
    assert "-h, --help" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "usersctl")
def test_help(path: tuple[str, ...], flag: str) -> None:
    _assert_help(invoke(*path, flag), path)
    assert not default_database().exists()


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "usersctl")
def test_help_with_a_broken_environment(
    path: tuple[str, ...], broken_environment: dict[str, str]
) -> None:
    """Help must not depend on configuration: it is what you read to fix the configuration."""
    _assert_help(invoke(*path, "--help", env=broken_environment), path)


@pytest.mark.parametrize("path", [(), ("db",)], ids=["usersctl", "db"])
def test_group_without_a_command_shows_readable_help(path: tuple[str, ...]) -> None:
    result = invoke(*path)
    assert result.exit_code in (0, 2), result.stderr
    shown = result.stdout + result.stderr
    assert "\\x0a" not in shown  # not one escaped line
    assert not shown.startswith("error:"), shown[:200]
    assert shown.startswith(" ".join(("Usage: usersctl", *path)) + " "), shown[:200]
    assert "Commands" in shown
