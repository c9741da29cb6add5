"""Reading `usersctl import` input: CSV, JSON (an array) or JSONL, every record with the
line it starts on, validated into UserImport rows. No database and no output here.

Validation runs over the whole input before anything is written, and reports every bad
row (duplicate emails within the file included), so one run tells the admin everything
to fix.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from usersctl.errors import InvalidData, UsageError

FORMATS = ("csv", "json", "jsonl")
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_OPTIONAL = {
    "role", "active", "password", "password_hash", "id", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password",
}  # fmt: skip


def guess_format(source: str, given: str | None) -> str:
    if given is not None:
        return given
    if source == "-":
        raise UsageError("--format is required when reading standard input")
    guessed = _EXTENSIONS.get(Path(source).suffix.lower())
    if guessed is None:
        raise UsageError(f"cannot tell the format of {source!r} from its name: give --format")
    return guessed


@dataclass(frozen=True)
class Record:
    line: int
    data: dict[str, Any] | None  # None when the record itself could not be read
    problem: str | None = None


# Hostile input (/dev/zero, a line without end) must not grow memory without bound: no
# line and no record may be longer than this (README, "Bulk import and export").
MAX_RECORD = 1 << 20  # characters
_LIMIT_TEXT = "1 MiB"
_CHUNK = 1 << 16

# The leading ' that export puts before a CSV cell a spreadsheet would run as a formula
# (see usersctl.cli.render.csv_cell): removed again on import, from cells of that shape only.
FORMULA_START = re.compile("'*[=+\\-@\t\r]")


def csv_value(cell: str) -> str:
    return cell[1:] if cell[:1] == "'" and FORMULA_START.match(cell) else cell


class _Lines:
    """The lines of a stream, none longer than MAX_RECORD; `mark()` starts a record, and
    no record may span more than MAX_RECORD characters either."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.number = 0  # lines read so far
        self.start = 1
        self.pending = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.stream.readline(MAX_RECORD + 3)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line.rstrip("\r\n")) > MAX_RECORD:
            raise InvalidData(
                f"line {self.number}: longer than {_LIMIT_TEXT}, the limit for a line"
            )
        self.pending += len(line)
        if self.pending > MAX_RECORD:
            raise InvalidData(
                f"line {self.start}: record longer than {_LIMIT_TEXT}, the limit for a record"
            )
        return line

    def mark(self) -> None:
        self.start, self.pending = self.number + 1, 0


def _csv_records(stream: TextIO) -> Iterator[Record]:
    from usersctl.schemas import IMPORT_COLUMNS

    lines = _Lines(stream)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidData(f"line {reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        return
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in IMPORT_COLUMNS]
    if unknown:
        raise InvalidData(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(IMPORT_COLUMNS)}"
        )
    if len(set(header)) != len(header):
        raise InvalidData("line 1: a column appears twice in the header")
    line = reader.line_num + 1
    while True:
        lines.mark()
        try:
            values = next(reader, None)
        except csv.Error as exc:
            raise InvalidData(f"line {line}: not valid CSV: {exc}") from None
        if values is None:
            return
        start, line = line, reader.line_num + 1
        if not values:
            continue  # a blank line
        if len(values) != len(header):
            yield Record(start, None, f"expected {len(header)} fields, found {len(values)}")
            continue
        # An empty optional cell means "not given" (the default applies).
        yield Record(
            start,
            {
                k: csv_value(v)
                for k, v in zip(header, values, strict=True)
                if v != "" or k not in _OPTIONAL
            },
        )


def _loads(line: int, text: str) -> Record:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(line, None, f"not valid JSON: {exc.msg}")
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return Record(line, None, "not valid JSON: a number has too many digits")
    except RecursionError:
        return Record(line, None, "not valid JSON: nested too deeply")
    return _object(line, value)


def _jsonl_records(stream: TextIO) -> Iterator[Record]:
    lines = _Lines(stream)
    for text in lines:
        lines.mark()
        if text.strip():
            yield _loads(lines.number, text)


class _JsonArray:
    """Reads one JSON array from a stream a chunk at a time, so that memory is bounded by
    the longest element (MAX_RECORD), not by the input."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.position = 0
        self.line = 1  # the line `position` is on
        self.eof = False

    def more(self) -> bool:
        chunk = self.stream.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.position :] + chunk
        self.position = 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end), counting lines."""
        while True:
            while self.position < len(self.text) and self.text[self.position] in " \t\r\n":
                if self.text[self.position] == "\n":
                    self.line += 1
                self.position += 1
            if self.position < len(self.text) or self.eof or not self.more():
                return self.text[self.position : self.position + 1]

    def value(self, decoder: json.JSONDecoder) -> Any:
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.position)
            except json.JSONDecodeError as exc:
                if not self.eof and len(self.text) - self.position <= MAX_RECORD and self.more():
                    continue
                if len(self.text) - self.position > MAX_RECORD:
                    self.too_long()
                line = self.line + self.text.count("\n", self.position, exc.pos)
                raise InvalidData(f"line {line}: not valid JSON: {exc.msg}") from None
            except ValueError:
                raise InvalidData(
                    f"line {self.line}: not valid JSON: a number has too many digits"
                ) from None
            except RecursionError:
                raise InvalidData(f"line {self.line}: not valid JSON: nested too deeply") from None
            if end == len(self.text) and not self.eof and self.more():
                continue  # a number at the end of the chunk may go on
            if end - self.position > MAX_RECORD:
                self.too_long()
            self.line += self.text.count("\n", self.position, end)
            self.position = end
            return value

    def too_long(self) -> None:
        raise InvalidData(
            f"line {self.line}: record longer than {_LIMIT_TEXT}, the limit for a record"
        )


def _json_records(stream: TextIO) -> Iterator[Record]:
    """The elements of one JSON array, each with the line it starts on."""
    reader = _JsonArray(stream)
    decoder = json.JSONDecoder()
    if reader.peek() != "[":
        raise InvalidData(f"line {reader.line}: a JSON import must be one array of objects")
    reader.position += 1
    if reader.peek() == "]":
        reader.position += 1
        if reader.peek():
            raise InvalidData(f"line {reader.line}: unexpected content after the JSON array")
        return
    while True:
        line = reader.line
        yield _object(line, reader.value(decoder))
        following = reader.peek()
        if following == ",":
            reader.position += 1
            reader.peek()
            continue
        if following == "]":
            reader.position += 1
            if reader.peek():
                raise InvalidData(f"line {reader.line}: unexpected content after the JSON array")
            return
        raise InvalidData(f"line {reader.line}: expected ',' or ']' in the JSON array")


def _object(line: int, value: Any) -> Record:
    if not isinstance(value, dict):
        return Record(line, None, "expected an object")
    return Record(line, value)


def read_records(stream: TextIO, fmt: str) -> Iterator[Record]:
    readers = {"csv": _csv_records, "json": _json_records, "jsonl": _jsonl_records}
    try:
        yield from readers[fmt](stream)
    except UnicodeDecodeError:
        raise InvalidData("input is not valid UTF-8") from None


@dataclass
class ParsedImport:
    rows: list[tuple[int, Any]] = field(default_factory=list)  # (line, UserImport)
    problems: list[str] = field(default_factory=list)
    bad_rows: int = 0


MAX_REPORTED = 50


def validate(
    records: Iterator[Record],
    row_check: Callable[[Any], None] | None = None,
    *,
    restore: bool = False,
) -> ParsedImport:
    """Validate every record; collect every problem (the first MAX_REPORTED in words).

    A restore (a usersctl backup) keeps names, emails and roles exactly as stored
    (schemas.UserRestore), so that whatever a database held comes back. `row_check` raises
    InvalidData for a valid row that the configuration refuses (a weak plaintext password,
    a role outside the pinned ones)."""
    from pydantic import ValidationError

    from usersctl.schemas import UserImport, UserRestore, validation_message

    model = UserRestore if restore else UserImport

    parsed = ParsedImport()
    first_line: dict[str, int] = {}
    id_line: dict[int, int] = {}

    def problem(line: int, message: str) -> None:
        parsed.bad_rows += 1
        if len(parsed.problems) < MAX_REPORTED:
            parsed.problems.append(f"line {line}: {message}")

    for record in records:
        if record.data is None:
            problem(record.line, record.problem or "unreadable record")
            continue
        try:
            row = model.model_validate(record.data)
        except ValidationError as exc:
            problem(record.line, validation_message(exc))
            continue
        if row_check is not None:
            try:
                row_check(row)
            except InvalidData as exc:
                problem(record.line, exc.message)
                continue
        if row.email in first_line:
            problem(
                record.line, f"duplicate email {row.email} (first on line {first_line[row.email]})"
            )
            continue
        if row.id is not None:
            if row.id in id_line:
                problem(record.line, f"duplicate id {row.id} (first on line {id_line[row.id]})")
                continue
            id_line[row.id] = record.line
        first_line[row.email] = record.line
        parsed.rows.append((record.line, row))  # id and timestamps are used only by --restore
    return parsed


def check(parsed: ParsedImport) -> None:
    """Raise InvalidData (exit 5) listing the bad rows, if there are any."""
    if parsed.bad_rows:
        more = parsed.bad_rows - len(parsed.problems)
        details = tuple(parsed.problems) + ((f"... and {more} more bad rows",) if more else ())
        raise InvalidData(
            f"{parsed.bad_rows} bad row(s); nothing imported, the database is unchanged",
            details,
        )
