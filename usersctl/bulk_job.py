"""What an import or a sync is asked to do (Job) and what it reports (Outcome), the scratch
index of the emails seen so far (Seen) and a dry run's plan (PlanWriter): no database
library here, so that the CLI describes a run, and forks its validation
(usersctl.bulk_worker), before SQLAlchemy loads. The run itself is usersctl.sync."""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Any

from usersctl import rules
from usersctl.bulk import Problems, Validated
from usersctl.errors import SafetyLimit, UsageError

if TYPE_CHECKING:
    from usersctl.schemas import UserImport

Rows = list[tuple[int, "UserImport"]]

RESERVED_SOURCES = ("scim",)  # owned by the SCIM API; a file must not prune its users


class PruneRefused(SafetyLimit):
    """More users to prune than `--max-prune` allows (exit 9); nothing changed."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome  # what the run would have done


@dataclass(frozen=True)
class Limit:
    """`--max-prune N` (users) or `P%` (of the users the source owned before the run)."""

    text: str
    count: int | None = None
    percent: Fraction | None = None

    @classmethod
    def parse(cls, text: str) -> Limit:
        value = text.strip()
        try:
            if value.endswith("%"):
                percent = Fraction(value[:-1].strip())
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(text=value, percent=percent)
            count = int(value)
            if count < 0:
                raise ValueError
            return cls(text=value, count=count)
        except (ValueError, ZeroDivisionError):
            raise UsageError(
                f"invalid --max-prune {rules.cut(text)!r}: give a number of users (10) or a "
                "percentage of the users the source owns, 0% to 100% (10%)"
            ) from None

    def allowed(self, owned: int) -> int:
        """How many of `owned` users may be pruned."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return int(owned * self.percent / 100)  # exactly 10% of 10 is 1; of 9 it is 0


@dataclass
class Job:
    """What to do with the rows: an import (`source` None) or a sync of `source`."""

    on_conflict: str = "update"  # import: error | skip | update
    update_passwords: bool = False
    restore: bool = False
    source: str | None = None
    prune: str = "none"
    max_prune: Limit = field(default_factory=lambda: Limit("10%", percent=Fraction(10)))
    adopt: bool = False
    dry_run: bool = False

    @property
    def action(self) -> str:
        return "import" if self.source is None else "sync"


@dataclass
class Outcome:
    """Counts so far (the summary, and the progress display)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    owned: int = 0  # users the source owned before the run
    absent: int = 0  # of those, not in the input
    disabled: int = 0
    deleted: int = 0
    hashed: int = 0
    to_hash: int = 0
    passwords_missing: int = 0  # (see bulk.Validated)
    conflicts: Problems = field(default_factory=Problems)


class Seen:
    """Every email (and, for a restore, id) of the input so far, with its line: a private
    temporary SQLite database, paged to disk past a few MiB (never the users' database)."""

    _CHUNK = 499  # rows, 998 parameters: under the 999 of SQLite before 3.32

    def __init__(self) -> None:
        # "": a private temporary file, deleted when closed.
        self.db = sqlite3.connect("", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-4096")  # KiB
        self.db.execute("CREATE TABLE emails (email TEXT PRIMARY KEY, line INT) WITHOUT ROWID")
        self.db.execute("CREATE TABLE ids (id INTEGER PRIMARY KEY, line INT)")
        self.db.execute("BEGIN")

    def first_lines(self, table: str, keys: Sequence[Any]) -> dict[Any, int]:
        """Which of `keys` were seen before, and on which line."""
        found: dict[Any, int] = {}
        column = "email" if table == "emails" else "id"
        for start in range(0, len(keys), self._CHUNK):
            chunk = keys[start : start + self._CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {column}, line FROM {table} WHERE {column} IN ({marks})"  # noqa: S608
            found.update(self.db.execute(query, chunk))
        return found

    def add(self, table: str, pairs: Iterable[tuple[Any, int]]) -> None:
        # Many rows a statement (as database.insert_many): faster than executemany.
        rows = list(pairs)
        for start in range(0, len(rows), self._CHUNK):
            chunk = rows[start : start + self._CHUNK]
            values = ", ".join(["(?, ?)"] * len(chunk))
            flat = tuple(itertools.chain.from_iterable(chunk))
            self.db.execute(f"INSERT INTO {table} VALUES {values}", flat)  # noqa: S608

    def close(self) -> None:
        self.db.close()


class PlanWriter:
    """The plan of a dry run, one JSON object per change, in a temporary file (a sync of a
    million new users plans a million lines without holding them)."""

    def __init__(self) -> None:
        self.file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115

    def write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def entries(self) -> Iterator[dict[str, Any]]:
        self.file.flush()
        self.file.seek(0)
        for line in self.file:
            yield json.loads(line)

    def close(self) -> None:
        self.file.close()


def check_source(name: str) -> str:
    """A sync source's name, as stored in users.source."""
    import re

    from usersctl.schemas import SOURCE_PATTERN

    if not re.fullmatch(SOURCE_PATTERN, name):
        wording = rules.SOURCE_INVALID.replace("invalid source", f"invalid --source {name!r}")
        raise UsageError(wording)
    if name in RESERVED_SOURCES:
        raise UsageError(f"--source {name} is reserved: its users are managed through SCIM")
    return name


def unique(
    batches: Iterator[Rows], *, key: Callable[[str], str], restore: bool, validated: Validated
) -> Generator[Rows, None, None]:
    """The batches without the rows whose email (or id, in a restore) an earlier row had:
    those are bad rows (`validated.duplicates`), with the line of the first. Emails compare
    as the database's unique index does (`key`): a restore keeps an email's case as the
    backup has it, but two that differ only in case are one address. Runs where validation
    runs (a forked child: usersctl.bulk_worker), on a scratch index of its own."""
    seen = Seen()
    try:
        dedupe = _Dedupe(seen, key, restore, validated)
        for rows in batches:
            yield dedupe.rows(rows)
    finally:
        seen.close()


class _Dedupe:
    def __init__(
        self, seen: Seen, key: Callable[[str], str], restore: bool, validated: Validated
    ) -> None:
        self.seen, self.key, self.restore, self.validated = seen, key, restore, validated
        self.duplicates = validated.duplicates
        self.drawing = False  # a restore: a row without an id was seen (ids drawn from here)

    def rows(self, rows: Rows) -> Rows:
        key_of, restore = self.key, self.restore
        earlier = self.seen.first_lines("emails", [key_of(row.email) for _, row in rows])
        ids = [row.id for _, row in rows if row.id is not None] if restore else []
        earlier_ids = self.seen.first_lines("ids", ids) if ids else {}
        kept: Rows = []
        for line, row in rows:
            if restore and not self._restorable(line, row):
                continue
            key = key_of(row.email)
            first = earlier.get(key)
            if first is not None:
                self.duplicates.add(line, f"duplicate email {row.email} (first on line {first})")
                continue
            if restore and row.id is not None:
                first = earlier_ids.get(row.id)
                if first is not None:
                    self.duplicates.add(line, f"duplicate id {row.id} (first on line {first})")
                    continue
                earlier_ids[row.id] = line
            earlier[key] = line
            kept.append((line, row))
        self.seen.add("emails", ((key_of(row.email), line) for line, row in kept))
        if ids:
            self.seen.add("ids", ((row.id, line) for line, row in kept if row.id is not None))
        return kept

    def _restorable(self, line: int, row: UserImport) -> bool:
        """In a restore, no row with an id after one without: the rows without are given the
        next free ids as they are written, which a later row's id could then collide with.
        Also counts the rows that lose their password."""
        if row.id is None:
            self.drawing = True
        elif self.drawing:
            self.duplicates.add(
                line,
                "--restore: this row has an id but an earlier row has none (rows without an "
                "id are given the next free ones): put the rows with ids first",
            )
            return False
        if row.has_password and "has_password" in row.given and not row.gives_password:
            self.validated.passwords_missing += 1
        return True
