"""The test command's own promises: a short end of output, and the same command everywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

INNER_TESTS = """\
import pytest


def test_on_every_engine(db_url):
    assert db_url


@pytest.mark.parametrize("n", [1, 2])
def test_on_every_engine_twice(db_url, n):
    assert db_url


def test_skipped_for_another_reason():
    pytest.skip("the moon is not full")
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_server_skips_fold_into_one_line_per_engine(tmp_path: Path, workers: str) -> None:
    shutil.copyfile(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("USERSCTL_", "PYTEST_")) and name != "CI"
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-n", workers, "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    lines = output.splitlines()
    assert "SKIPPED 3 mariadb test(s): no mariadb server (USERSCTL_TEST_MYSQL_URL not set)" in (
        lines
    )
    assert (
        "SKIPPED 3 postgresql test(s): no postgresql server (USERSCTL_TEST_POSTGRES_URL not set)"
        in lines
    )
    # Other skip reasons are still listed; no server skip is listed one by one.
    assert re.search(r"^SKIPPED \[1\] test_inner\.py:\d+: the moon is not full$", output, re.M)
    assert not re.search(r"^SKIPPED \[\d+\] .*no \w+ server", output, re.M), output
    # The counts are the real ones.
    assert re.search(r"\b3 passed, 7 skipped\b", lines[-1]), lines[-1]


def test_readme_and_ci_run_the_same_plain_pytest_with_workers_and_durations() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    addopts = options["ini_options"]["addopts"].split()
    assert "-n" in addopts and "--durations=15" in addopts
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[test,postgres,mysql,server]' && pytest\n" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1] == "pytest"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("pytest-xdist>=") for dep in extra["optional-dependencies"]["test"])
