"""Settings: command-line flag > environment > config file > built-in default.

Resolved once in the root callback, never at import time, so `--help` works with any
environment. This is a small typed resolver rather than pydantic-settings: importing
pydantic-settings costs ~110 ms (it pulls in asyncio), more than the whole start-up budget
for the commands that scripts call in loops. See README, "Departures from DESIGN.md".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usersctl import rules
from usersctl.errors import UsageError

ENV_PREFIX = "USERSCTL_"
DEFAULT_BUSY_TIMEOUT = 10.0
_CONFIG_KEYS = {
    "database_url",
    "busy_timeout",
    "actor",
    "lockout_threshold",
    "lockout_minutes",
    "password_min_length",
    "roles",
}
DEFAULT_LOCKOUT_THRESHOLD = 10
MAX_LOCKOUT_THRESHOLD = 100  # NIST SP 800-63B-4: at most 100 consecutive failures
DEFAULT_LOCKOUT_MINUTES = 15
DEFAULT_PASSWORD_MIN_LENGTH = rules.PASSWORD_MIN_LENGTH  # NIST SP 800-63B-4, single-factor
LOWEST_PASSWORD_MIN_LENGTH = rules.PASSWORD_MIN_LENGTH_FLOOR
MAX_CONFIG_SIZE = 1 << 20  # bytes


@dataclass(frozen=True)
class Settings:
    database_url: str
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    debug: bool = False
    url_is_default: bool = False
    actor: str = "unknown"  # who the audit trail names for changes made by this process
    lockout_threshold: int = DEFAULT_LOCKOUT_THRESHOLD
    lockout_minutes: int = DEFAULT_LOCKOUT_MINUTES
    password_min_length: int = DEFAULT_PASSWORD_MIN_LENGTH
    roles: tuple[str, ...] | None = None  # when set, the only roles allowed


def config_path() -> Path:
    """`USERSCTL_CONFIG`, else `$XDG_CONFIG_HOME/usersctl/config.toml` (~/.config by default)."""
    explicit = os.environ.get("USERSCTL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "usersctl" / "config.toml"


def default_database_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("usersctl", appauthor=False)) / "users.db"


def _read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise UsageError(f"config file {path} does not exist (USERSCTL_CONFIG)")
        return {}
    import tomllib

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_SIZE + 1)  # bounded: USERSCTL_CONFIG=/dev/zero
        if len(raw) > MAX_CONFIG_SIZE:
            raise UsageError(f"config file {path} is larger than 1 MiB: is it the right file?")
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"cannot read config file {path}: not valid UTF-8") from None
    except RecursionError:
        raise UsageError(f"cannot read config file {path}: nested too deeply") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"config file {path}: unknown key {unknown[0]!r} "
            f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
        )
    return data


def _as_timeout(value: object, name: str, where: str = "") -> float:
    """The busy timeout from `name` (the variable, or the file's key, `where` naming the
    file). The value is quoted back: a timeout is no secret."""
    shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML spells it
    try:
        if isinstance(value, bool):  # TOML's true is no number of seconds (float(True) is)
            raise TypeError
        timeout = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"{where}invalid {name} {shown}: must be a number of seconds") from None
    if not 0 <= timeout <= 3600:
        raise UsageError(f"{where}invalid {name} {shown}: must be between 0 and 3600 seconds")
    return timeout


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def os_user() -> str:
    """The operating-system user running usersctl (the audit trail's default actor)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (containers) and no $USER
        return f"uid:{os.getuid()}"


def _as_actor(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: actor must be a string")
    actor = value.strip()
    if not actor or len(actor) > rules.ACTOR_LENGTH or not actor.isprintable():
        raise UsageError(
            f"{where}: actor must be 1-{rules.ACTOR_LENGTH} printable characters (e.g. alice or "
            "cron:hr-sync)"
        )
    return actor


def _resolve_actor(flag: str | None, env: Any, file_values: dict[str, Any], path: Path) -> str:
    if flag is not None:
        return _as_actor(flag, "--actor")
    if env.get("USERSCTL_ACTOR"):
        return _as_actor(env["USERSCTL_ACTOR"], "USERSCTL_ACTOR")
    if "actor" in file_values:
        return _as_actor(file_values["actor"], f"config file {path}")
    return os_user()


def _as_int(values: dict[str, Any], key: str, default: int, low: int, high: int, where: str) -> int:
    if key not in values:
        return default
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{where}: {key} must be a whole number between {low} and {high}")
    return value


def _as_roles(values: dict[str, Any], where: str) -> tuple[str, ...] | None:
    if "roles" not in values:
        return None
    import re

    roles = values["roles"]
    pattern = re.compile(r"[a-z][a-z0-9_-]{0,31}")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and pattern.fullmatch(r) for r in roles)
    ):
        raise UsageError(
            f"{where}: roles must be a non-empty list of role names (lowercase letters, digits, "
            "'_' or '-', starting with a letter), e.g. roles = [\"user\", \"admin\"]"
        )
    return tuple(dict.fromkeys(roles))


def _require_url(where: str, value: str) -> str:
    """A database URL given empty is a mistake (an unset shell variable, `--database-url
    "$DB"`), never a wish for the default database, which would be silently created and
    used instead of the intended one."""
    if not value.strip():
        raise UsageError(
            f"{where} is empty: give a database URL (e.g. sqlite:////srv/users.db), or "
            "leave it out to use the default database"
        )
    return value


def load_settings(
    *, database_url: str | None = None, debug: bool = False, actor: str | None = None
) -> Settings:
    """Resolve settings. `database_url` and `actor` are the command-line flags (None when
    not given)."""
    env = os.environ
    path = config_path()
    file_values = _read_config_file(path, required="USERSCTL_CONFIG" in env)

    # The first source given wins, and is the one checked: an empty value there is a
    # mistake, which must not fall through to another source or to the default.
    if database_url is not None:
        url: str | None = _require_url("--database-url", database_url)
    elif "USERSCTL_DATABASE_URL" in env:
        url = _require_url("USERSCTL_DATABASE_URL", env["USERSCTL_DATABASE_URL"])
    elif "database_url" in file_values:
        if not isinstance(file_values["database_url"], str):
            raise UsageError(f"config file {path}: database_url must be a string")
        url = _require_url(f"config file {path}: database_url", file_values["database_url"])
    else:
        url = None
    url_is_default = not url
    if not url:
        url = "sqlite:///" + str(default_database_path())

    if "USERSCTL_BUSY_TIMEOUT" in env:
        timeout = _as_timeout(env["USERSCTL_BUSY_TIMEOUT"], "USERSCTL_BUSY_TIMEOUT")
    elif "busy_timeout" in file_values:
        timeout = _as_timeout(file_values["busy_timeout"], "busy_timeout", f"config file {path}: ")
    else:
        timeout = DEFAULT_BUSY_TIMEOUT

    return Settings(
        database_url=url,
        busy_timeout=timeout,
        debug=debug or _truthy(env.get("USERSCTL_DEBUG")),
        url_is_default=url_is_default,
        actor=_resolve_actor(actor, env, file_values, path),
        lockout_threshold=_as_int(
            file_values, "lockout_threshold", DEFAULT_LOCKOUT_THRESHOLD, 1,
            MAX_LOCKOUT_THRESHOLD, f"config file {path}",
        ),
        lockout_minutes=_as_int(
            file_values, "lockout_minutes", DEFAULT_LOCKOUT_MINUTES, 1, 525_600,
            f"config file {path}",
        ),
        password_min_length=_as_int(
            file_values, "password_min_length", DEFAULT_PASSWORD_MIN_LENGTH,
            LOWEST_PASSWORD_MIN_LENGTH, 64, f"config file {path}",
        ),
        roles=_as_roles(file_values, f"config file {path}"),
    )  # fmt: skip
