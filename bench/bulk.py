"""Bulk benchmark: `usersctl import` and `usersctl export` against plain sqlite3 yardsticks.

    python bench/bulk.py [--runs 3] [--rows-import 100000] [--rows-export 1000000]
                         [--rows-big 1000000] [--rows-sync 100000]

Builds its own data in a temporary directory (JSONL and CSV import files with one
precomputed argon2id hash for every row; an export database filled with the stdlib
sqlite3 module), then times --runs whole processes of each command (time.perf_counter
around the child; runs of a group are interleaved so that drift in machine load hits every
command alike), measures each child's peak memory, and prints medians next to yardsticks
measured in the same run. See bench/README.md for what each line means. Always exits 0:
this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import find_usersctl, fmt, interpreter_for, load_average, print_header, run_quiet

PASSWORD = "correct horse battery"

IMPORT_TARGET = 60_000  # rows/s, whole process (issue 12; 40,000 before)
IMPORT_RATIO = 0.4  # x the sqlite3 script
IMPORT_AIM = 100_000
BIG_MAX_MIB = 120.0  # peak of the 1,000,000-row import (streaming: flat memory)
SYNC_CHANGES = 0.01  # of the rows: a quarter renamed... see write_sync_files
EXPORT_TARGET = 0.15  # x the rows/s of `sqlite3 -json`
EXPORT_AIM = 0.4
EXPORT_MAX_MIB = 150.0

# The import yardstick: the same JSONL file into an identical fresh table, nothing else
# (no validation, no duplicate check), one executemany and one commit.
SQLITE_IMPORT = """\
import json
import sqlite3
import sys
from datetime import UTC, datetime

now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
connection = sqlite3.connect(sys.argv[2])
with open(sys.argv[1], encoding="utf-8") as lines:
    records = map(json.loads, lines)
    connection.executemany(
        "INSERT INTO users (name, email, password_hash, role, is_active, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (r["name"], r["email"], r["password_hash"], r.get("role", "user"),
             r.get("active", True), now, now)
            for r in records
        ),
    )
connection.commit()
connection.close()
"""

# Context: what the database writes of an import cost by themselves. The same users, plus
# one audit-trail entry each (the JSON usersctl records for a created user), in one
# transaction with usersctl's pragmas (synchronous=FULL, secure_delete): no validation, no
# duplicate check, no lookups. usersctl cannot be faster than this.
SQLITE_IMPORT_WRITES = """\
import json
import sqlite3
import sys
from datetime import UTC, datetime

now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
connection = sqlite3.connect(sys.argv[2], isolation_level=None)
connection.execute("PRAGMA synchronous=FULL")
connection.execute("PRAGMA secure_delete=ON")
connection.execute("BEGIN IMMEDIATE")
with open(sys.argv[1], encoding="utf-8") as lines:
    records = [json.loads(line) for line in lines]
connection.executemany(
    "INSERT INTO users (name, email, password_hash, role, is_active, created_at, updated_at,"
    " password_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    [(r["name"], r["email"], r["password_hash"], r.get("role", "user"), r.get("active", True),
      now, now, now) for r in records],
)
ids = dict(connection.execute("SELECT email, id FROM users"))
connection.executemany(
    "INSERT INTO audit_log (at, actor, action, user_id, user_email, changes)"
    " VALUES (?, 'root', 'import', ?, ?, ?)",
    [(now, ids[r["email"]], r["email"], json.dumps({
        "name": {"before": None, "after": r["name"]},
        "email": {"before": None, "after": r["email"]},
        "role": {"before": None, "after": r.get("role", "user")},
        "active": {"before": None, "after": r.get("active", True)},
        "password": "set"})) for r in records],
)
connection.execute("COMMIT")
connection.close()
"""

# The export yardstick in Python: the same lines usersctl writes (same keys, booleans,
# ISO-8601 UTC timestamps), one json.dumps per row.
SQLITE_EXPORT = """\
import json
import sqlite3
import sys

connection = sqlite3.connect(sys.argv[1])
write = sys.stdout.write
query = (
    "SELECT id, name, email, role, is_active, created_at, updated_at FROM users ORDER BY id"
)
for id_, name, email, role, active, created, updated in connection.execute(query):
    record = {
        "id": id_,
        "name": name,
        "email": email,
        "role": role,
        "active": bool(active),
        "created_at": f"{created[:10]}T{created[11:19]}Z",
        "updated_at": f"{updated[:10]}T{updated[11:19]}Z",
    }
    write(json.dumps(record) + "\\n")
"""


# Peak memory of a child process. The obvious ways are wrong:
# - resource.getrusage(RUSAGE_CHILDREN).ru_maxrss is the maximum over *every* child this
#   benchmark has reaped, so after one bigger process a smaller one is invisible and a
#   before/after delta reads 0;
# - even os.wait4() on one child is biased: Linux keeps the high-water mark of the
#   memory image a process had before execve() (for a vfork/posix_spawn child: the
#   parent's), so every child of a parent that once used 100 MiB reports >= 100 MiB;
# - polling /proc/PID/status VmHWM can miss the growth after the last poll.
# So every measured command runs under a small launcher that fork-execs it and reports
# wait4()'s ru_maxrss for it: GNU time (`/usr/bin/time -f %M`, about 1 MiB itself) when
# present and sane, else a bare Python launcher (python -I -S, about 8 MiB). A peak is
# then exact above the launcher's own footprint, which is printed as the "floor" (what
# `true` measures); a value at the floor means "at most that".
LAUNCHER = """\
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    out.write(f"{elapsed!r} {usage.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass
class Meter:
    kind: str  # "GNU time" or "python launcher"
    prefix: list[str]
    report: Path
    floor_kib: int = 0

    @classmethod
    def choose(cls, folder: Path, env: dict[str, str]) -> Meter:
        report = folder / "peak.txt"
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report)]
        chosen = cls("python launcher", launcher, report)
        if Path("/usr/bin/time").is_file():
            gnu = cls("GNU time", ["/usr/bin/time", "-f", "%M", "-o", str(report)], report)
            # Old GNU time (1.7) reported 4x the real figure: check it on 64 MiB.
            code = "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096])"
            try:
                peak = gnu.measure([sys.executable, "-c", code], env, folder, read=False)
            except (OSError, ValueError):
                peak = None
            if peak is not None and peak.returncode == 0 and 64 <= peak.peak_kib / 1024 <= 128:
                chosen = gnu
        chosen.floor_kib = chosen.measure(["true"], env, folder, read=False).peak_kib
        return chosen

    def measure(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        *,
        read: bool,
        tree: bool = False,
    ) -> Measured:
        """Run one whole process: wall time, peak RSS, and (read=True) its stdout lines.

        stdout goes to /dev/null unless read=True; then it is read from a pipe, newlines
        counted in 1 MiB chunks, the first and the last line kept. With tree=True (Linux),
        a thread also samples the proportional set size (PSS: shared pages counted once
        across processes) of the command and every process it forks, summed, every 20 ms:
        usersctl import validates big inputs in a second process, and wait4's figure is
        the largest single process's.
        """
        self.report.unlink(missing_ok=True)
        with tempfile.TemporaryFile() as errors:
            start = time.perf_counter()
            process = subprocess.Popen(
                [*self.prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if read else subprocess.DEVNULL,
                stderr=errors,
                env=env,
                cwd=cwd,
            )
            sampler = TreeSampler(process.pid) if tree else None
            lines, first, tail = 0, b"", b""
            if read:
                assert process.stdout is not None
                while chunk := process.stdout.read(1 << 20):
                    lines += chunk.count(b"\n")
                    if len(first) < 4096:
                        first += chunk[:4096]
                    tail = (tail + chunk)[-4096:]
                process.stdout.close()
            returncode = process.wait()
            seconds = time.perf_counter() - start
            tree_kib = sampler.stop() if sampler is not None else 0
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        # GNU time writes "Command exited with non-zero status N" before the figure.
        report = self.report.read_text().split() if self.report.is_file() else []
        peak = int(report[-1]) if report else 0
        if self.kind == "python launcher":
            seconds = float(report[0]) if report else seconds  # without the launcher's start
            peak = peak // 1024 if sys.platform == "darwin" else peak  # bytes there, else KiB
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return Measured(
            seconds, peak, returncode, stderr, lines, first.split(b"\n", 1)[0], last, tree_kib
        )


class TreeSampler:
    """The largest sum of PSS over the descendants of `root` (the launcher, not counted),
    sampled every 20 ms from /proc/PID/smaps_rollup in a thread of its own."""

    def __init__(self, root: int) -> None:
        import threading

        self.root = root
        self.peak_kib = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _children(self, pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (OSError, ValueError):
            return []

    def _pss(self, pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _run(self) -> None:
        while not self.done.wait(0.02):
            total, pending = 0, self._children(self.root)
            while pending:
                pid = pending.pop()
                total += self._pss(pid)
                pending.extend(self._children(pid))
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak_kib


@dataclass
class Measured:
    seconds: float
    peak_kib: int
    returncode: int
    stderr: str
    lines: int = 0
    first: bytes = b""
    last: bytes = b""
    tree_kib: int = 0  # sampled PSS of the command's processes (measure(tree=True))


@dataclass
class Command:
    label: str
    argv: Sequence[str]
    rows: int
    # Untimed, before each run: returns extra environment and the argv's {db} value.
    prepare: Callable[[], tuple[dict[str, str], str]] | None = None
    # Untimed, after each run: returns a problem, or None.
    verify: Callable[[], str | None] | None = None
    times: list[float] = field(default_factory=list)
    peaks_kib: list[int] = field(default_factory=list)
    error: str | None = None
    tree: bool = False  # also sample the PSS of all its processes (Meter.measure)

    def run(
        self, meter: Meter, env: dict[str, str], cwd: Path, *, timed: bool = True
    ) -> Measured | None:
        if self.error is not None:
            return None
        extra, database = self.prepare() if self.prepare else ({}, "")
        argv = [part.format(db=database) for part in self.argv]
        done = meter.measure(argv, {**env, **extra}, cwd, read=False, tree=self.tree)
        problem = None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            problem = f"exit {done.returncode}: {last}"
        elif self.verify is not None:
            problem = self.verify()
        if problem:
            self.error = problem
            return None
        if timed:
            self.times.append(done.seconds)
            # The largest process's peak RSS, or the sampled sum over its processes' PSS
            # (import's validating child included), whichever is larger.
            self.peaks_kib.append(max(done.peak_kib, done.tree_kib))
        return done

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.error else None

    @property
    def rows_per_s(self) -> float | None:
        median = self.median_s
        return self.rows / median if median else None

    @property
    def peak_mib(self) -> float | None:
        return max(self.peaks_kib) / 1024 if self.peaks_kib and not self.error else None


def find_sqlite3_cli() -> str | None:
    if Path("/usr/bin/sqlite3").is_file():
        return "/usr/bin/sqlite3"
    return shutil.which("sqlite3")


def user(i: int, password_hash: str) -> dict[str, object]:
    return {
        "name": f"User {i}",
        "email": f"user{i}@example.com",
        "role": "admin" if i % 50 == 0 else "user",
        "active": i % 10 != 0,
        "password_hash": password_hash,
    }


def write_import_files(folder: Path, count: int, password_hash: str) -> tuple[Path, Path]:
    jsonl, csv_path = folder / "users.jsonl", folder / "users.csv"
    columns = ["name", "email", "role", "active", "password_hash"]
    with (
        jsonl.open("w", encoding="utf-8", newline="") as json_out,
        csv_path.open("w", encoding="utf-8", newline="") as csv_out,
    ):
        writer = csv.writer(csv_out, lineterminator="\n")
        writer.writerow(columns)
        for i in range(1, count + 1):
            record = user(i, password_hash)
            json_out.write(json.dumps(record) + "\n")
            writer.writerow(
                [str(record[c]).lower() if c == "active" else record[c] for c in columns]
            )
    return jsonl, csv_path


def write_big_file(folder: Path, count: int, password_hash: str) -> Path:
    path = folder / "big.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(1, count + 1):
            out.write(json.dumps(user(i, password_hash)) + "\n")
    return path


def write_sync_files(folder: Path, count: int, password_hash: str) -> tuple[Path, Path]:
    """The source's file as last synced (`count` rows), and today's: 1% of the rows
    changed — half of those renamed, a quarter gone (pruned: disabled), a quarter new."""
    base, today = folder / "hr-yesterday.jsonl", folder / "hr-today.jsonl"
    changed = max(4, int(count * SYNC_CHANGES))
    renamed = set(range(1, count + 1, count // (changed // 2)))
    gone = set(range(2, count + 1, count // (changed // 4)))
    with base.open("w", encoding="utf-8") as old, today.open("w", encoding="utf-8") as new:
        for i in range(1, count + 1):
            record = user(i, password_hash)
            old.write(json.dumps(record) + "\n")
            if i in gone:
                continue
            if i in renamed:
                record["name"] = f"Renamed {i}"
            new.write(json.dumps(record) + "\n")
        for i in range(count + 1, count + 1 + changed // 4):
            new.write(json.dumps(user(i, password_hash)) + "\n")
    return base, today


def fill_export_database(database: Path, count: int, password_hash: str) -> None:
    """`count` users straight into a usersctl-initialised database, in one transaction."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
    rows = (
        (
            i,
            f"User {i}",
            f"user{i}@example.com",
            password_hash,
            role,
            int(i % 10 != 0),
            stamp,
            stamp,
        )
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


def count_users(database: Path) -> int:
    connection = sqlite3.connect(database)
    try:
        return int(connection.execute("SELECT count(*) FROM users").fetchone()[0])
    finally:
        connection.close()


def remove_database(database: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def check_export(done: Measured | None, rows: int) -> str:
    """The line check of `usersctl export -f jsonl`: count, first id and last id."""
    if done is None:
        return "not checked (the command failed)"
    problems = []
    if done.lines != rows:
        problems.append(f"{done.lines:,} lines, expected {rows:,}")
    for name, line, want in (("first", done.first, 1), ("last", done.last, rows)):
        if rows == 0:
            break
        try:
            got = json.loads(line).get("id")
        except (ValueError, AttributeError):
            got = None
        if got != want:
            problems.append(f"{name} line has id {got!r}, expected {want}")
    if problems:
        return "FAIL: " + "; ".join(problems)
    return f"OK: {done.lines:,} lines, ids 1..{rows:,}, every line one JSON object"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per command")
    parser.add_argument("--rows-import", type=int, default=100_000, help="rows per import")
    parser.add_argument("--rows-export", type=int, default=1_000_000, help="rows to export")
    parser.add_argument("--rows-big", type=int, default=1_000_000, help="rows of the big import")
    parser.add_argument("--rows-sync", type=int, default=100_000, help="rows of the sync")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)
    rows_import = max(1, args.rows_import)
    rows_export = max(1, args.rows_export)
    rows_big = max(1, args.rows_big)
    rows_sync = max(100, args.rows_sync)

    usersctl = find_usersctl()
    python = interpreter_for(usersctl)
    sqlite3_cli = find_sqlite3_cli()
    tmp = Path(tempfile.mkdtemp(prefix="usersctl-bulk-"))
    try:
        home = tmp / "home"
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
        )
        exe = str(usersctl)
        scripts = {
            "import": tmp / "sqlite_import.py",
            "writes": tmp / "sqlite_import_writes.py",
            "export": tmp / "sqlite_export.py",
        }
        scripts["import"].write_text(SQLITE_IMPORT)
        scripts["writes"].write_text(SQLITE_IMPORT_WRITES)
        scripts["export"].write_text(SQLITE_EXPORT)

        def url(database: Path) -> dict[str, str]:
            return {"USERSCTL_DATABASE_URL": f"sqlite:///{database}"}

        print("setting up ...", file=sys.stderr)
        meter = Meter.choose(tmp, env)
        setup_start = time.perf_counter()
        code = f"from argon2 import PasswordHasher; print(PasswordHasher().hash({PASSWORD!r}))"
        password_hash = run_quiet([python, "-c", code], env).strip()
        jsonl, csv_file = write_import_files(tmp, rows_import, password_hash)
        export_db = tmp / "export.db"
        run_quiet([exe, "db", "upgrade"], {**env, **url(export_db)})
        fill_export_database(export_db, rows_export, password_hash)
        big = write_big_file(tmp, rows_big, password_hash)
        yesterday, today = write_sync_files(tmp, rows_sync, password_hash)
        synced_db = tmp / "synced.db"  # yesterday's sync done: copied before each timed run
        run_quiet([exe, "db", "upgrade"], {**env, **url(synced_db)})
        run_quiet([exe, "sync", str(yesterday), "--source", "hr"], {**env, **url(synced_db)})
        setup_s = time.perf_counter() - setup_start

        # Every import, the yardstick's too, goes into a new database that
        # `usersctl db upgrade` has just initialised (untimed), checked and removed after.
        fresh_count = 0
        current: dict[str, Path] = {}

        def fresh(key: str) -> Callable[[], tuple[dict[str, str], str]]:
            def prepare() -> tuple[dict[str, str], str]:
                nonlocal fresh_count
                fresh_count += 1
                database = tmp / f"import-{fresh_count}.db"
                current[key] = database
                run_quiet([exe, "db", "upgrade"], {**env, **url(database)})
                return url(database), str(database)

            return prepare

        def imported(key: str) -> Callable[[], str | None]:
            def verify() -> str | None:
                database = current.pop(key)
                found = count_users(database)
                remove_database(database)
                return None if found == rows_import else f"{found} users after import"

            return verify

        def synced() -> tuple[dict[str, str], str]:
            nonlocal fresh_count
            fresh_count += 1
            database = tmp / f"sync-{fresh_count}.db"
            shutil.copyfile(synced_db, database)
            current["sync"] = database
            return url(database), str(database)

        def sync_done() -> str | None:
            database = current.pop("sync")
            connection = sqlite3.connect(database)
            try:
                renamed = connection.execute(
                    "SELECT count(*) FROM users WHERE name LIKE 'Renamed %'"
                ).fetchone()[0]
                disabled = connection.execute(
                    "SELECT count(*) FROM audit_log WHERE action = 'sync' AND changes LIKE "
                    '\'{"active":{"before":true,"after":false}}\''
                ).fetchone()[0]
            finally:
                connection.close()
            remove_database(database)
            return None if renamed and disabled else f"renamed {renamed}, disabled {disabled}"

        big_commands = [
            Command(
                f"usersctl import {rows_big:,} rows",
                [exe, "import", str(big)],
                rows_big,
                fresh("big"),
                lambda: (remove_database(current.pop("big")), None)[1],
                tree=True,
            ),
            Command(
                "usersctl sync (1% changed)",
                [exe, "sync", str(today), "--source", "hr", "--prune", "disable"],
                rows_sync,
                synced,
                sync_done,
                tree=True,
            ),
        ]

        import_commands = [
            Command(
                "usersctl import users.jsonl",
                [exe, "import", str(jsonl)],
                rows_import,
                fresh("jsonl"),
                imported("jsonl"),
                tree=True,
            ),
            Command(
                "usersctl import users.csv",
                [exe, "import", str(csv_file)],
                rows_import,
                fresh("csv"),
                imported("csv"),
                tree=True,
            ),
            Command(
                "sqlite3 script import jsonl",
                [python, str(scripts["import"]), str(jsonl), "{db}"],
                rows_import,
                fresh("script"),
                imported("script"),
            ),
            Command(
                "sqlite3 script: the writes alone",
                [python, str(scripts["writes"]), str(jsonl), "{db}"],
                rows_import,
                fresh("writes"),
                imported("writes"),
            ),
        ]
        export_env = {**env, **url(export_db)}
        export_commands = [
            Command("usersctl export -f jsonl", [exe, "export", "-f", "jsonl"], rows_export),
            Command(
                "sqlite3 -json",
                [sqlite3_cli or "sqlite3", "-json", str(export_db), "select * from users"],
                rows_export,
            ),
            Command(
                "sqlite3 script export jsonl",
                [python, str(scripts["export"]), str(export_db)],
                rows_export,
            ),
        ]
        if sqlite3_cli is None:
            export_commands[1].error = "sqlite3 CLI missing: apt-get install sqlite3"
        commands = {c.label: c for c in import_commands + export_commands + big_commands}

        load_before = load_average()
        # One untimed warm-up of each (page cache, .pyc files), then interleaved runs.
        print(f"import: {len(import_commands)} commands x {runs} runs ...", file=sys.stderr)
        for command in import_commands:
            command.run(meter, env, tmp, timed=False)
        for _ in range(runs):
            for command in import_commands:
                command.run(meter, env, tmp)
        print(f"big import and sync: {len(big_commands)} commands ...", file=sys.stderr)
        for command in big_commands:  # one run of the big import (it takes a while)
            command.run(meter, env, tmp)
        for _ in range(runs - 1):
            big_commands[1].run(meter, env, tmp)
        print(f"export: {len(export_commands)} commands x {runs} runs ...", file=sys.stderr)
        # The warm-up of `usersctl export` reads its output (the line check); the timed
        # runs write to /dev/null like `usersctl export -f jsonl > /dev/null`.
        check = meter.measure(export_commands[0].argv, export_env, tmp, read=True)
        line_check = check_export(check if check.returncode == 0 else None, rows_export)
        if check.returncode != 0:
            last = (check.stderr.strip().splitlines() or ["(no message)"])[-1]
            export_commands[0].error = f"exit {check.returncode}: {last}"
        for command in export_commands[1:]:
            command.run(meter, export_env, tmp, timed=False)
        for _ in range(runs):
            for command in export_commands:
                command.run(meter, export_env, tmp)

        print_header(
            "usersctl bulk benchmark",
            python,
            env,
            load_before,
            sqlite=True,
            extra=[f"sqlite3:  {sqlite3_cli or 'MISSING (apt-get install sqlite3)'}"],
        )
        print(
            f"data:     import {rows_import:,} rows (JSONL {jsonl.stat().st_size / 2**20:.1f} MiB,"
            f" CSV {csv_file.stat().st_size / 2**20:.1f} MiB), export {rows_export:,} rows"
            f" (database {export_db.stat().st_size / 2**20:.0f} MiB); set up in {setup_s:.1f}s"
        )
        print(
            f"method:   median of {runs} runs per command, runs interleaved, 1 warm-up;"
            " whole processes"
        )
        print(
            f"memory:   peak = max RSS over the runs, from wait4() in {meter.kind}"
            f" ({shlex.join(meter.prefix[:3]) if meter.kind == 'GNU time' else 'python -I -S'});"
            f" floor {meter.floor_kib / 1024:.1f} MiB (what `true` reads); for usersctl import"
            " and sync the larger of that and the sum of the PSS of all their processes"
            " (a validating child too), sampled every 20 ms"
        )
        print()

        headers = (
            "case",
            "median s",
            "rows/s",
            "peak MiB",
            "yardstick",
            "yardstick rows/s",
            "ratio",
            "target",
            "result",
        )
        table: list[tuple[str, ...]] = []
        failures: list[str] = []

        def add(case_label: str, yard_label: str, target: str, judge: str | None) -> None:
            case, yard = commands[case_label], commands[yard_label]
            speed, yard_speed = case.rows_per_s, yard.rows_per_s
            ratio = speed / yard_speed if speed is not None and yard_speed else None
            peak = case.peak_mib
            if case.error:
                result = "ERROR"
            elif judge == "import":
                reasons = []
                if speed is None or speed < IMPORT_TARGET:
                    reasons.append(f"{fmt(speed, ',.0f')} rows/s < {IMPORT_TARGET:,}")
                if ratio is None or ratio < IMPORT_RATIO:
                    reasons.append(f"ratio {fmt(ratio, '.3f')} < {IMPORT_RATIO}")
                result = "FAIL" if reasons else "PASS"
                failures.extend(f"{case_label}: {reason}" for reason in reasons)
            elif judge == "big":
                result = "PASS" if peak is not None and peak <= BIG_MAX_MIB else "FAIL"
                if result == "FAIL":
                    failures.append(f"{case_label}: peak {fmt(peak, '.1f')} MiB > {BIG_MAX_MIB}")
            elif judge == "export":
                reasons = []
                if yard.error:
                    reasons.append(f"no yardstick ({yard.error})")
                elif ratio is None or ratio < EXPORT_TARGET:
                    reasons.append(f"ratio {fmt(ratio, '.3f')} < {EXPORT_TARGET}")
                if peak is None or peak > EXPORT_MAX_MIB:
                    reasons.append(f"peak {fmt(peak, '.1f')} MiB > {EXPORT_MAX_MIB:.0f}")
                if not line_check.startswith("OK"):
                    reasons.append(f"line check {line_check}")
                result = "FAIL" if reasons else "PASS"
                if yard.error and len(reasons) == 1:
                    result = "n/a"
                failures.extend(f"{case_label}: {reason}" for reason in reasons)
            else:
                result = "info"
            table.append(
                (
                    case_label,
                    fmt(case.median_s, ".2f"),
                    fmt(speed, ",.0f"),
                    fmt(peak, ".0f"),
                    yard_label,
                    fmt(yard_speed, ",.0f") if not yard.error else "ERROR",
                    fmt(ratio, ".3f"),
                    target,
                    result,
                )
            )

        import_target = f">= {IMPORT_TARGET:,} rows/s, >= {IMPORT_RATIO}x"
        export_target = f">= {EXPORT_TARGET}x, <= {EXPORT_MAX_MIB:.0f} MiB"
        add("usersctl import users.jsonl", "sqlite3 script import jsonl", import_target, "import")
        add("usersctl import users.csv", "sqlite3 script import jsonl", import_target, "import")
        add("usersctl import users.jsonl", "sqlite3 script: the writes alone", "-", None)
        big_label = f"usersctl import {rows_big:,} rows"
        add(big_label, "sqlite3 script import jsonl", f"<= {BIG_MAX_MIB:.0f} MiB", "big")
        add("usersctl sync (1% changed)", "sqlite3 script import jsonl", "-", None)
        add("usersctl export -f jsonl", "sqlite3 -json", export_target, "export")
        add("usersctl export -f jsonl", "sqlite3 script export jsonl", "-", None)

        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
        numeric = {1, 2, 3, 5, 6}

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
        print("ratio = case rows/s / yardstick rows/s (higher is better for usersctl)")
        print(f"export line check: {line_check}")
        for problem in failures:
            print(f"not met: {problem}")

        aims = []
        for label in ("usersctl import users.jsonl", "usersctl import users.csv"):
            speed = commands[label].rows_per_s
            reached = "reached" if speed and speed >= IMPORT_AIM else "not reached"
            aims.append(f"{label.removeprefix('usersctl ')} {IMPORT_AIM:,} rows/s {reached}")
        export, sqlite_json = commands["usersctl export -f jsonl"], commands["sqlite3 -json"]
        if export.rows_per_s and sqlite_json.rows_per_s:
            ratio = export.rows_per_s / sqlite_json.rows_per_s
            reached = "reached" if ratio >= EXPORT_AIM else "not reached"
            aims.append(f"export {EXPORT_AIM}x sqlite3 -json {reached}")
        print(f"aims: {'; '.join(aims)}")
        if sqlite3_cli is None:
            print("sqlite3 CLI missing: install it (apt-get install sqlite3) for the yardstick")

        print()
        print("all commands (median / min / max s, peak MiB; $TMP is the temporary directory):")
        label_width = max(len(label) for label in commands)
        for command in commands.values():
            fresh_db = str(tmp / "import-N.db")
            shown = shlex.join(part.format(db=fresh_db) for part in command.argv)
            if command.argv[0] == exe:
                database = fresh_db if command.prepare is not None else str(export_db)
                if command.argv[1] == "sync":
                    database = str(tmp / "sync-N.db")
                shown = f"USERSCTL_DATABASE_URL=sqlite:///{database} {shown}"
            shown = shown.replace(str(tmp), "$TMP")
            if command in export_commands:
                shown += " > /dev/null"
            if command.error:
                print(f"  {command.label:<{label_width}}  ERROR {command.error}   {shown}")
                continue
            print(
                f"  {command.label:<{label_width}}  {statistics.median(command.times):7.2f}"
                f"  {min(command.times):7.2f}  {max(command.times):7.2f}"
                f"  {max(command.peaks_kib) / 1024:6.0f}   {shown}"
            )
        print(
            "  (before each import run, untimed: USERSCTL_DATABASE_URL=... usersctl db upgrade"
            " into a new $TMP/import-N.db; before each sync run, a copy of the database"
            f" after `usersctl sync hr-yesterday.jsonl --source hr` of {rows_sync:,} rows)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `python bench/bulk.py | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    sys.exit(0)
