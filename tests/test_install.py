"""A few real processes: the wheel in a fresh virtual environment, run from another folder.

This is how a new user meets usersctl: `pip install .`, then `usersctl db upgrade` from
anywhere. It proves the migration scripts ship inside the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from usersctl.revision import HEAD

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]  # one wheel, one venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("usersctl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console script of the wheel installed in a brand-new virtual environment."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
    )
    return env_dir / "bin"


def run(
    bin_dir: Path, *args: str, cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "usersctl"), *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")}
    return {**keep, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config")}  # fmt: skip


def test_wheel_ships_the_migration_scripts(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "usersctl/_alembic/env.py" in names
    assert any(n.startswith("usersctl/_alembic/versions/0001_") for n in names)
    assert any(n.startswith("usersctl/_alembic/versions/0002_") for n in names)


def test_installed_wheel_upgrades_and_works_from_any_folder(
    installed: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = run(installed, "--version", cwd=elsewhere, env=user_env)
    assert version.returncode == 0 and version.stdout.startswith("usersctl ")

    upgraded = run(installed, "db", "upgrade", cwd=elsewhere, env=user_env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"to {HEAD}" in upgraded.stderr

    # The default database: platformdirs' user data dir, folder 0700, file 0600.
    database = Path(user_env["XDG_DATA_HOME"]) / "usersctl" / "users.db"
    assert database.exists()
    assert database.parent.stat().st_mode & 0o777 == 0o700
    assert database.stat().st_mode & 0o777 == 0o600

    created = run(
        installed,
        "create", "--name", "Ada", "--email", "ada@example.com", "--random-password", "-o", "json",
        cwd=elsewhere, env=user_env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert user["email"] == "ada@example.com" and len(user["password"]) >= 20

    verified = run(
        installed, "verify-password", "ada@example.com", "--password-stdin",
        cwd=elsewhere, env=user_env, stdin=user["password"] + "\n",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr

    missing = run(installed, "get", "nobody@example.com", cwd=elsewhere, env=user_env)
    assert missing.returncode == 3
    assert missing.stderr == "error: user not found: nobody@example.com\n"

    module = subprocess.run(
        [str(installed / "python"), "-m", "usersctl", "list", "-o", "plain"],
        cwd=elsewhere, env=user_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert module.returncode == 0, module.stderr
    assert module.stdout.split("\t")[:3] == ["1", "Ada", "ada@example.com"]


def test_editable_checkout_console_script_runs(user_env: dict[str, str], tmp_path: Path) -> None:
    """The console script of the environment running the tests (editable install in CI)."""
    script = Path(sys.executable).parent / "usersctl"
    assert script.exists(), "install the project first: pip install -e '.[test]'"
    (tmp_path / "u.db").touch(mode=0o600)  # an empty database (initialised on first use)
    env = {**user_env, "USERSCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}"}
    result = subprocess.run(
        [str(script), "list", "-o", "json"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
    assert "Traceback" not in result.stderr
