"""Start-up budget: which heavy modules each command may import.

Runs the installed `usersctl` console script in real subprocesses with
PYTHONPROFILEIMPORTTIME=1 (the same data as `python -X importtime`) and reads the imported
module names from stderr. Rules, from the performance issue:

- `--version` and `--help` load none of sqlalchemy, alembic, argon2, email_validator;
- data commands never load alembic (once the database is at head);
- `get` and `list` also never load argon2 or email_validator. (pydantic is not on the
  list: Typer 0.29 itself imports it to convert parameter values.)

Timing lives in bench/startup.py; this file only checks what gets imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real subprocesses of the installed script

HELP_FORBIDDEN = frozenset({"sqlalchemy", "alembic", "argon2", "email_validator", "zxcvbn"})
DATA_FORBIDDEN = frozenset({"alembic"})
READ_FORBIDDEN = DATA_FORBIDDEN | {"argon2", "email_validator", "zxcvbn"}
NO_POLICY_FORBIDDEN = DATA_FORBIDDEN | {"zxcvbn"}  # commands that set no password
# Import names that belong to a forbidden distribution without sharing its top-level name.
FAMILY = {
    "pydantic_core": "pydantic",
    "_argon2_cffi_bindings": "argon2",
    "argon2_cffi_bindings": "argon2",
}
PASSWORD = "correct horse battery"
TIMEOUT = 60

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def usersctl_executable() -> str:
    beside = Path(sys.executable).parent / "usersctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("usersctl")
    assert found, "the usersctl console script is not installed (pip install -e .)"
    return found


@dataclass(frozen=True)
class Import:
    module: str
    self_us: int
    cumulative_us: int
    depth: int
    importer: str | None  # the module whose import triggered this one (None: top level)


def parse_importtime(stderr: str) -> list[Import]:
    """Parse `-X importtime` lines. They come in post-order: a module after its imports."""
    rows: list[tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match:
            depth = len(match.group(3)) // 2
            rows.append((match.group(4), int(match.group(1)), int(match.group(2)), depth))
    parsed: list[Import] = []
    for index, (module, self_us, cumulative, depth) in enumerate(rows):
        importer = next((row[0] for row in rows[index + 1 :] if row[3] < depth), None)
        parsed.append(Import(module, self_us, cumulative, depth, importer))
    return parsed


def family(module: str) -> str:
    top = module.split(".", 1)[0]
    return FAMILY.get(top, top)


def violations(imports: Iterable[Import], forbidden: frozenset[str]) -> list[str]:
    """One line per forbidden package: how much of it loaded, and who pulled it in."""
    found: dict[str, list[Import]] = {}
    for item in imports:
        name = family(item.module)
        if name in forbidden:
            found.setdefault(name, []).append(item)
    lines = []
    for name, items in sorted(found.items()):
        biggest = max(items, key=lambda item: item.cumulative_us)
        total = sum(item.self_us for item in items) / 1000
        lines.append(
            f"{name}: {len(items)} modules, {total:.1f} ms; pulled in as {biggest.module!r} "
            f"by {biggest.importer or '<top level>'!r} ({biggest.cumulative_us / 1000:.1f} ms "
            "cumulative)"
        )
    return lines


@dataclass
class Env:
    executable: str
    environ: dict[str, str]

    def run(self, *args: str, input: str | None = None, profile: bool = False) -> Result:
        environ = dict(self.environ)
        if profile:
            environ["PYTHONPROFILEIMPORTTIME"] = "1"
        completed = subprocess.run(
            [self.executable, *args],
            input=input,
            capture_output=True,
            text=True,
            env=environ,
            timeout=TIMEOUT,
            check=False,
        )
        return Result(args, completed.returncode, completed.stdout, completed.stderr)


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def messages(self) -> str:
        """stderr without the import-time lines."""
        return "\n".join(
            line for line in self.stderr.splitlines() if not line.startswith("import time:")
        )

    def ok(self) -> Result:
        assert self.returncode == 0, (
            f"usersctl {' '.join(self.args)} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.messages}"
        )
        return self


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """A migrated SQLite database holding one user, and an environment isolated from the
    developer's (no config file, no USERSCTL_* variable except the database URL)."""
    root = tmp_path_factory.mktemp("startup")
    home = root / "home"
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("USERSCTL_", "XDG_")) and name != "PYTHONPROFILEIMPORTTIME"
    }
    environ.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        USERSCTL_DATABASE_URL=f"sqlite:///{root / 'users.db'}",
        NO_COLOR="1",
    )
    prepared = Env(usersctl_executable(), environ)
    # The first command on an empty database migrates it (and may load Alembic for that);
    # migrate first so that the measured commands see a database at head.
    prepared.run("db", "upgrade").ok()
    created = prepared.run(
        "create", "--name", "Ada Lovelace", "--email", "ada@example.com",
        "--password-stdin", "-o", "json", input=PASSWORD + "\n",
    ).ok()  # fmt: skip
    assert json.loads(created.stdout)["id"] == 1
    return prepared


def check(result: Result, forbidden: frozenset[str]) -> None:
    result.ok()
    imports = parse_importtime(result.stderr)
    assert imports, f"no import-time data on stderr for usersctl {' '.join(result.args)}"
    assert any(item.module == "usersctl" for item in imports), "usersctl itself not seen"
    assert "Initialised the database" not in result.messages, "the database was migrated"
    bad = violations(imports, forbidden)
    if bad:
        command = " ".join(result.args)
        message = f"usersctl {command} imported forbidden modules:\n  " + "\n  ".join(bad)
        pytest.fail(message, pytrace=False)


def test_parse_importtime_finds_importer() -> None:
    sample = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:        10 |         10 |     pydantic_core\n"
        "import time:        20 |         30 |   pydantic\n"
        "import time:         5 |         35 | typer._adapters\n"
    )
    imports = parse_importtime(sample)
    assert [i.module for i in imports] == ["pydantic_core", "pydantic", "typer._adapters"]
    assert imports[1].importer == "typer._adapters"
    assert violations(imports, frozenset({"pydantic"})) == [
        "pydantic: 2 modules, 0.0 ms; pulled in as 'pydantic' by 'typer._adapters' "
        "(0.0 ms cumulative)"
    ]


def test_version_loads_no_heavy_module(env: Env) -> None:
    result = env.run("--version", profile=True)
    check(result, HELP_FORBIDDEN)
    assert result.stdout.startswith("usersctl ")


def test_help_loads_no_heavy_module(env: Env) -> None:
    result = env.run("--help", profile=True)
    check(result, HELP_FORBIDDEN)
    assert "Usage:" in result.stdout


def test_list_help_loads_no_heavy_module(env: Env) -> None:
    # Help for a read command: neither the help rule nor the read rule may be broken.
    result = env.run("list", "--help", profile=True)
    check(result, HELP_FORBIDDEN | READ_FORBIDDEN)
    assert "Usage:" in result.stdout


def test_get_loads_no_alembic_argon2_email_validator(env: Env) -> None:
    result = env.run("get", "1", "-o", "json", profile=True)
    check(result, READ_FORBIDDEN)
    assert json.loads(result.stdout)["email"] == "ada@example.com"


def test_list_loads_no_alembic_argon2_email_validator(env: Env) -> None:
    result = env.run("list", "-o", "json", profile=True)
    check(result, READ_FORBIDDEN)
    assert [user["id"] for user in json.loads(result.stdout)] == [1]


def test_audit_loads_no_alembic_argon2_email_validator(env: Env) -> None:
    result = env.run("audit", "--user", "1", "--since", "7d", "-o", "json", profile=True)
    check(result, READ_FORBIDDEN)
    assert result.stdout.startswith("[")


def test_create_loads_no_alembic(env: Env) -> None:
    result = env.run(
        "create", "--name", "Grace Hopper", "--email", "grace@example.com",
        "--password-stdin", "-o", "json", input=PASSWORD + "\n", profile=True,
    )  # fmt: skip
    check(result, DATA_FORBIDDEN)
    assert json.loads(result.stdout)["email"] == "grace@example.com"


@pytest.mark.parametrize(
    "args",
    [
        ("verify-password", "ada@example.com", "--password-stdin"),
        ("update", "ada@example.com", "--expires", "never"),
        ("disable", "--inactive-since", "2000-01-01"),
        ("unlock", "ada@example.com"),
        ("list", "--inactive-since", "90d", "--columns", "id,email,last_login_at"),
    ],
)
def test_commands_that_set_no_password_load_no_zxcvbn(env: Env, args: tuple[str, ...]) -> None:
    check(env.run(*args, input=PASSWORD + "\n", profile=True), NO_POLICY_FORBIDDEN)
