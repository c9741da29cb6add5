"""Reading `usersctl import` input: CSV, JSON (an array) or JSONL, every record with the
line it starts on, validated into UserImport rows. No database and no output here.

Validation runs over the whole input before anything is written, and reports every bad
row (duplicate emails within the file included), so one run tells the admin everything
to fix.
"""

from __future__ import annotations

import csv
import json
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


def _csv_records(stream: TextIO) -> Iterator[Record]:
    from usersctl.schemas import IMPORT_COLUMNS

    reader = csv.reader(stream)
    header = next(reader, None)
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
    for values in reader:
        start, line = line, reader.line_num + 1
        if not values:
            continue  # a blank line
        if len(values) != len(header):
            yield Record(start, None, f"expected {len(header)} fields, found {len(values)}")
            continue
        # An empty optional cell means "not given" (the default applies).
        yield Record(
            start,
            {k: v for k, v in zip(header, values, strict=True) if v != "" or k not in _OPTIONAL},
        )


def _jsonl_records(stream: TextIO) -> Iterator[Record]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(number, None, f"not valid JSON: {exc.msg}")
            continue
        yield _object(number, value)


def _json_records(stream: TextIO) -> Iterator[Record]:
    """The elements of one JSON array, each with the line it starts on."""
    text = stream.read()
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise InvalidData("line 1: a JSON import must be one array of objects")
    position = _skip_space(text, position + 1)
    if position < len(text) and text[position] == "]":
        if _skip_space(text, position + 1) < len(text):
            raise InvalidData("unexpected content after the JSON array")
        return
    while True:
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise InvalidData(f"line {exc.lineno}: not valid JSON: {exc.msg}") from None
        yield _object(line, value)
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            end = _skip_space(text, position + 1)
            if end < len(text):
                line = text.count("\n", 0, end) + 1
                raise InvalidData(f"line {line}: unexpected content after the JSON array")
            return
        line = text.count("\n", 0, position) + 1
        raise InvalidData(f"line {line}: expected ',' or ']' in the JSON array")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


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
    except csv.Error as exc:
        raise InvalidData(f"not valid CSV: {exc}") from None


@dataclass
class ParsedImport:
    rows: list[tuple[int, Any]] = field(default_factory=list)  # (line, UserImport)
    problems: list[str] = field(default_factory=list)
    bad_rows: int = 0


MAX_REPORTED = 50


def validate(
    records: Iterator[Record], row_check: Callable[[Any], None] | None = None
) -> ParsedImport:
    """Validate every record; collect every problem (the first MAX_REPORTED in words).
    `row_check` raises InvalidData for a valid row that the configuration refuses (a weak
    plaintext password, a role outside the pinned ones)."""
    from pydantic import ValidationError

    from usersctl.schemas import UserImport, validation_message

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
            row = UserImport.model_validate(record.data)
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
