"""What the benchmarks share: finding usersctl, running set-up commands, the header lines.

Standard library only: the benchmarks import it as `common` (bench/ is on sys.path when
they run as `python bench/<name>.py`).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def find_usersctl() -> Path:
    beside = Path(sys.executable).parent / "usersctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("usersctl")
    if not found:
        sys.exit("usersctl is not installed: pip install -e . (in a virtual environment)")
    return Path(found)


def interpreter_for(script: Path) -> str:
    """The Python that runs the console script (its venv has typer, sqlalchemy, argon2)."""
    first = script.read_text(errors="replace").splitlines()[0] if script.is_file() else ""
    if first.startswith("#!") and "python" in first:
        candidate = first[2:].strip().split()[0]
        if Path(candidate).is_file():
            return candidate
    return sys.executable


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_quiet(argv: Sequence[str], env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"setup failed: {shlex.join(argv)} exited {done.returncode}\n{done.stderr}")
    return done.stdout


def package_versions(python: str, env: dict[str, str], *, sqlite: bool = False) -> str:
    """The versions of usersctl and its main libraries; sqlite=True adds SQLite's."""
    shown = "', '.join(f'{n} {v(n)}' for n in names)"
    if sqlite:
        shown += " + f', SQLite {sqlite3.sqlite_version}'"
    code = (
        ("import sqlite3\n" if sqlite else "")
        + "from importlib.metadata import version as v\n"
        + "names = ('usersctl', 'typer', 'sqlalchemy', 'pydantic', 'argon2-cffi')\n"
        + f"print({shown})"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return done.stdout.strip() or "(unknown)"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def print_header(
    title: str,
    python: str,
    env: dict[str, str],
    load_before: float | None,
    *,
    sqlite: bool = False,
    extra: Sequence[str] = (),
) -> None:
    """The title, then the command:, machine:, python:, packages: and load: lines.

    `sqlite` adds SQLite's version to packages:; `extra` lines go between packages: and
    load:. The load after is read last, once the version probes have run.
    """
    print(title)
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine:  {cpu_model()}; nproc {os.cpu_count()} "
        f"(usable {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'})"
        f"; {platform.system()} {platform.release()}"
    )
    version = run_quiet([python, "-c", "import sys; print(sys.version.split()[0])"], env)
    print(f"python:   {python} ({version.strip()} {platform.python_implementation()})")
    print(f"packages: {package_versions(python, env, sqlite=sqlite)}")
    for line in extra:
        print(line)
    if load_before is not None:
        load_after = os.getloadavg()[0]
        busy = max(load_before, load_after) > 0.5 * (os.cpu_count() or 1)
        print(
            f"load:     1-min load average {load_before:.2f} before, {load_after:.2f} after"
            + ("  (busy machine: absolute times are noisy, ratios less so)" if busy else "")
        )
