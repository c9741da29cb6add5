"""Start-up benchmark: whole `usersctl` processes against the floor of their libraries.

    python bench/startup.py [--runs 15] [--users 10000]

Builds its own data (a temporary SQLite database with --users users), then times N runs of
each command as whole processes (time.perf_counter around subprocess.run; runs of all
commands are interleaved so that drift in machine load hits every command alike) and
prints medians. See bench/README.md for what each line means. Always exits 0: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import find_usersctl, fmt, interpreter_for, load_average, print_header, run_quiet

PASSWORD = "correct horse battery"

HELLO_APP = """\
import typer

# Configured like usersctl: plain help text (no Rich), so this is the cheapest Typer app.
app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command()
def hello() -> None:
    typer.echo("hello")


app()
"""

# The floors: what any Typer CLI doing the same work must at least pay, in one process.
FLOOR_GET = "import sqlalchemy.orm\n\n" + HELLO_APP
FLOOR_CREATE = (
    "import sqlalchemy.orm\n"
    "from argon2 import PasswordHasher\n\n"
    "PasswordHasher().hash('x' * 12)\n\n" + HELLO_APP
)

# The password policy's own cost: zxcvbn's import (frequency lists) and one check.
FLOOR_CREATE_POLICY = (
    "import sqlalchemy.orm\n"
    "from argon2 import PasswordHasher\n"
    "from zxcvbn import zxcvbn\n\n"
    "zxcvbn('correct horse battery', user_inputs=['bench', 'usersctl'])\n"
    "PasswordHasher().hash('x' * 12)\n\n" + HELLO_APP
)

SQLITE_GET = """\
import json
import sqlite3
import sys

connection = sqlite3.connect(sys.argv[1])
row = connection.execute(
    "SELECT id, name, email, role, is_active, created_at, updated_at FROM users WHERE id = ?",
    (int(sys.argv[2]),),
).fetchone()
keys = ("id", "name", "email", "role", "active", "created_at", "updated_at")
print(json.dumps(dict(zip(keys, row)), indent=2))
"""


@dataclass
class Command:
    label: str
    argv: Sequence[str]
    stdin: str | None = None
    times: list[float] = field(default_factory=list)
    error: str | None = None

    def run(self, index: int, env: dict[str, str], cwd: Path) -> None:
        if self.error is not None:
            return
        argv = [part.format(i=index) for part in self.argv]
        start = time.perf_counter()
        done = subprocess.run(
            argv, input=self.stdin, capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            self.error = f"exit {done.returncode}: {last}"
            return
        self.times.append(elapsed)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times) * 1000 if self.times and not self.error else None


@dataclass(frozen=True)
class Row:
    case: str
    yardstick: str
    target: float | None  # max ratio; None: shown for information


def seed(database: Path, python: str, env: dict[str, str], count: int) -> None:
    """Insert users straight into SQLite with one precomputed argon2id hash for all."""
    code = f"from argon2 import PasswordHasher; print(PasswordHasher().hash({PASSWORD!r}))"
    password_hash = run_quiet([python, "-c", code], env).strip()
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    rows = (
        (i, f"User {i}", f"user{i}@example.com", password_hash, role, 1, now, now)
        for i in range(1, count + 1)
        for role in ["admin" if i % 50 == 0 else "user"]
    )
    connection = sqlite3.connect(database)
    with connection:
        connection.executemany(
            "INSERT INTO users (id, name, email, password_hash, role, is_active, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument("--users", type=int, default=10_000, help="users in the database")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)

    usersctl = find_usersctl()
    python = interpreter_for(usersctl)
    tmp = Path(tempfile.mkdtemp(prefix="usersctl-bench-"))
    try:
        home = tmp / "home"
        database = tmp / "users.db"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("USERSCTL_", "XDG_")) and k != "PYTHONPROFILEIMPORTTIME"
        }
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CACHE_HOME=str(home / ".cache"),
            USERSCTL_DATABASE_URL=f"sqlite:///{database}",
        )
        scripts = {}
        for name, text in {
            "hello": HELLO_APP,
            "floor_get": FLOOR_GET,
            "floor_create": FLOOR_CREATE,
            "floor_create_policy": FLOOR_CREATE_POLICY,
            "sqlite_get": SQLITE_GET,
        }.items():
            scripts[name] = tmp / f"{name}.py"
            scripts[name].write_text(text)

        setup_start = time.perf_counter()
        run_quiet([str(usersctl), "db", "upgrade"], env)
        seed(database, python, env, args.users)
        setup_s = time.perf_counter() - setup_start

        exe = str(usersctl)
        create = [exe, "create", "--name", "Bench {i}", "--email", "bench{i}@example.com"]
        create += ["--password-stdin", "-o", "json"]
        hello, floor_get = str(scripts["hello"]), str(scripts["floor_get"])
        commands = {
            c.label: c
            for c in [
                Command("usersctl --version", [exe, "--version"]),
                Command("usersctl get 1 -o json", [exe, "get", "1", "-o", "json"]),
                Command(
                    "usersctl list --limit 10 -o json",
                    [exe, "list", "--limit", "10", "-o", "json"],
                ),
                Command("usersctl create --password-stdin", create, stdin=PASSWORD + "\n"),
                Command("python -c pass", [python, "-c", "pass"]),
                Command("bare typer app", [python, hello]),
                Command("bare typer app --help", [python, hello, "--help"]),
                Command(
                    "sqlite3 script get", [python, str(scripts["sqlite_get"]), str(database), "1"]
                ),
                Command("import sqlalchemy.orm", [python, "-c", "import sqlalchemy.orm"]),
                Command("sqlalchemy.orm + typer", [python, floor_get]),
                Command("sqlalchemy.orm + typer --help", [python, floor_get, "--help"]),
                Command("sa.orm + argon2 hash + typer", [python, str(scripts["floor_create"])]),
                Command(
                    "sa.orm + argon2 + zxcvbn + typer",
                    [python, str(scripts["floor_create_policy"])],
                ),
            ]
        }
        rows = [
            Row("usersctl --version", "bare typer app", 1.2),
            Row("usersctl --version", "bare typer app --help", None),
            Row("usersctl get 1 -o json", "sqlite3 script get", None),
            Row("usersctl get 1 -o json", "import sqlalchemy.orm", None),
            Row("usersctl get 1 -o json", "sqlalchemy.orm + typer", 1.3),
            Row("usersctl get 1 -o json", "sqlalchemy.orm + typer --help", None),
            Row("usersctl list --limit 10 -o json", "sqlalchemy.orm + typer", 1.3),
            Row("usersctl create --password-stdin", "sa.orm + argon2 hash + typer", 1.3),
            # The policy (zxcvbn) is part of create's cost: this row shows it against a floor
            # that pays for it too; the two floors' difference is the policy's price.
            Row("usersctl create --password-stdin", "sa.orm + argon2 + zxcvbn + typer", None),
            Row("sa.orm + argon2 + zxcvbn + typer", "sa.orm + argon2 hash + typer", None),
        ]

        load_before = load_average()
        # One untimed warm-up of everything (page cache, .pyc files), then interleaved runs.
        for command in commands.values():
            command.run(-1, env, tmp)
            command.times.clear()
        print(f"measuring {len(commands)} commands x {runs} runs ...", file=sys.stderr)
        for index in range(runs):
            for command in commands.values():
                command.run(index, env, tmp)

        print_header("usersctl start-up benchmark", python, env, load_before)
        print(
            f"data:     SQLite, {args.users} users (set up in {setup_s:.1f}s); "
            f"median of {runs} runs per command, runs interleaved, 1 warm-up"
        )
        print()

        headers = ("case", "median ms", "yardstick", "yardstick ms", "ratio", "target", "result")
        table: list[tuple[str, ...]] = []
        for row in rows:
            case, yard = commands[row.case], commands[row.yardstick]
            ratio = (
                case.median_ms / yard.median_ms
                if case.median_ms is not None and yard.median_ms
                else None
            )
            if case.error or yard.error:
                result = "ERROR"
            elif row.target is None:
                result = "info"
            else:
                result = "PASS" if ratio is not None and ratio <= row.target else "FAIL"
            table.append(
                (
                    row.case,
                    fmt(case.median_ms, ".1f"),
                    row.yardstick,
                    fmt(yard.median_ms, ".1f"),
                    fmt(ratio, ".2f"),
                    f"<= {row.target}" if row.target is not None else "-",
                    result,
                )
            )
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
        numeric = {1, 3, 4}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        print(line(headers))
        print(line(["-" * w for w in widths]))
        for cells in table:
            print(line(cells))

        print()
        print("all commands (median / min / max ms):")
        label_width = max(len(label) for label in commands)
        for command in commands.values():
            if command.error:
                print(f"  {command.label:<{label_width}}  ERROR {command.error}")
                continue
            times = [t * 1000 for t in command.times]
            shown = shlex.join(command.argv).replace(str(tmp), "$TMP")
            print(
                f"  {command.label:<{label_width}}  {statistics.median(times):7.1f}"
                f"  {min(times):7.1f}  {max(times):7.1f}   {shown}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `python bench/startup.py | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    sys.exit(0)
