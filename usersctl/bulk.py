"""Reading `usersctl import` input: CSV, JSON (an array) or JSONL, every record with the
line it starts on, validated into UserImport rows. No database and no output here.

Validation runs over the whole input before anything is written, and reports every bad
row (duplicate emails within the file included), so one run tells the admin everything
to fix.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

from usersctl.errors import InvalidData, UsageError

FORMATS = ("csv", "json", "jsonl")
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REQUIRED_COLUMNS = ("name", "email")
_OPTIONAL = {
    "role", "active", "password", "password_hash", "id", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password", "source", "external_id",
}  # fmt: skip


def guess_format(source: str, given: str | None) -> str:
    if given is not None:
        return given
    if source == "-":
        raise UsageError("--format csv, json or jsonl is required when reading standard input")
    guessed = _EXTENSIONS.get(Path(source).suffix.lower())
    if guessed is None:
        raise UsageError(
            f"cannot tell the format of {source!r} from its name: give --format csv, json or jsonl"
        )
    return guessed


class Record(NamedTuple):
    """One record of the input and the line it starts on (a tuple: made for every row)."""

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
    """The lines of a stream, none longer than MAX_RECORD; a record starts where `start` and
    `pending` are reset (the CSV reader does so before each row), and no record may span
    more than MAX_RECORD characters either."""

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
        if len(line) > MAX_RECORD and len(line.rstrip("\r\n")) > MAX_RECORD:
            raise InvalidData(
                f"line {self.number}: longer than {_LIMIT_TEXT}, the limit for a line"
            )
        self.pending += len(line)
        if self.pending > MAX_RECORD:
            raise InvalidData(
                f"line {self.start}: record longer than {_LIMIT_TEXT}, the limit for a record"
            )
        return line


@dataclass
class CsvOptions:
    """How to read CSV as people have it: the delimiter (None: detected from the header),
    and header names (lowercase) to drop instead of refusing."""

    delimiter: str | None = None
    ignore: frozenset[str] = frozenset()


DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\t": "\t", "|": "|"}


@dataclass
class ReadCounts:
    """What reading noticed besides records: blank CSV rows skipped."""

    blank_rows: int = 0


def _detect_delimiter(header: str) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of , ; and tab
    (a header names columns, which never contain one). A tie or none: the comma."""
    counts = {delimiter: header.count(delimiter) for delimiter in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _delimiter_hint(header: list[str], delimiter: str) -> str | None:
    """When the header is one cell that another delimiter splits into known columns (a `|`
    file, or `;` given as --delimiter ','): say so, instead of listing every column."""
    if len(header) != 1:
        return None
    for other, name in (("|", "|"), (";", ";"), ("\t", "tab"), (" ", None)):
        cells = [cell.strip() for cell in header[0].split(other) if cell.strip()]
        if other != delimiter and len(cells) > 1 and {"name", "email"} <= set(cells):
            given = f"--delimiter '{name}'" if name else "commas between the column names"
            return f"the header looks {'space' if not name else repr(name)}-separated: give {given}"
    return None


def _csv_records(
    stream: TextIO, options: CsvOptions | None = None, counts: ReadCounts | None = None
) -> Iterator[Record]:
    from usersctl.schemas import IMPORT_COLUMNS

    options = options or CsvOptions()
    counts = counts if counts is not None else ReadCounts()
    lines = _Lines(stream)
    first = next(lines, None)
    if first is None:
        return
    delimiter = options.delimiter or _detect_delimiter(first)
    # (A field may be as long as a record may: Python's 128 KiB default stopped the whole
    # check with its own message, where a too-long name is one bad row among others.)
    csv.field_size_limit(MAX_RECORD + 2)
    reader = csv.reader(itertools.chain((first,), lines), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidData(f"line {reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        return
    # Header names are matched trimmed and case-insensitively (`Name,Email` works).
    written = [name.strip() for name in header]  # (quoted back as the file has them)
    header = [name.lower() for name in written]
    # Columns without a name (Excel writes them for formatted cells right of the data)
    # are dropped, as long as they hold nothing.
    nameless = [i for i, name in enumerate(header) if not name]
    unknown = [
        shown
        for n, shown in zip(header, written, strict=True)
        if n and n not in IMPORT_COLUMNS and n not in options.ignore
    ]
    if unknown:
        hint = _delimiter_hint(header, delimiter)
        raise InvalidData(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            + (hint or f"known: {', '.join(IMPORT_COLUMNS)} (--ignore-columns drops others)")
        )
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise InvalidData(f"line 1: column {twice[0]!r} appears twice in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:  # (a header only, or a file that is no users export at all)
        raise InvalidData(
            f"line 1: the header has no {' and no '.join(map(repr, missing))} column "
            f"(every row needs {' and '.join(REQUIRED_COLUMNS)})"
        )
    kept = [(i, name) for i, name in enumerate(header) if name and name not in options.ignore]
    every = len(kept) == len(header)
    line = reader.line_num + 1
    while True:
        lines.start, lines.pending = lines.number + 1, 0  # a record starts
        try:
            values = next(reader, None)
        except csv.Error as exc:
            raise InvalidData(f"line {line}: not valid CSV: {exc}") from None
        if values is None:
            return
        start, line = line, reader.line_num + 1
        if not "".join(values).strip():
            counts.blank_rows += 1  # a blank line, or a row of empty cells (`,,,`)
            continue
        if len(values) > len(header) and not "".join(values[len(header) :]).strip():
            values = values[: len(header)]  # empty cells past the last column (Excel)
        if len(values) != len(header):
            spans = (
                f"; the row runs to line {line - 1}: is a quote left open?"
                if line - start > 1
                else ""
            )
            yield Record(start, None, f"expected {len(header)} fields, found {len(values)}{spans}")
            continue
        filled = [i + 1 for i in nameless if values[i].strip()] if nameless else None
        if filled:
            yield Record(start, None, f"a value in column {filled[0]}, which has no name")
            continue
        # An empty optional cell means "not given" (the default applies).
        pairs = zip(header, values, strict=True) if every else ((k, values[i]) for i, k in kept)
        yield Record(
            start,
            {
                k: csv_value(v) if v[:1] == "'" else v
                for k, v in pairs
                if v != "" or k not in _OPTIONAL
            },
        )


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: `{"email": "a@x", "email": "b@x"}` is a bad
    record (json keeps the last silently; CSV refuses a column named twice too)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_decode_fast = json.JSONDecoder().decode  # no Python call per object: a third faster


def _loads(line: int, text: str) -> Record:
    try:
        value = json.loads(text.rstrip("\r\n"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        return Record(line, None, f"the key {exc.key!r} appears twice")
    except json.JSONDecodeError as exc:
        where = "at column" if exc.msg.endswith(" at") else "(column"
        what = exc.msg.removesuffix(" at")
        return Record(
            line,
            None,
            f"not valid JSON: {what} {where} {exc.colno}" + (")" if where == "(column" else ""),
        )
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return Record(line, None, "not valid JSON: a number has too many digits")
    except RecursionError:
        return Record(line, None, "not valid JSON: nested too deeply")
    return _object(line, value, lines=True)


def _no_key_twice(text: str, value: dict[str, Any]) -> bool:
    """True only if the object `text` decoded into `value` gave no key twice. Every key is
    followed by a colon: with no more colons than keys, none came twice. Colons inside the
    strings (an export's times) are counted too, when the text has no escapes (so that its
    strings are the decoded ones) and nothing nested: a key given twice then brings one
    more colon than those. Otherwise False (the caller decodes again, exactly)."""
    colons = text.count(":")
    if colons <= len(value):
        return True
    if "\\" in text:
        return False
    inside = 0
    for key, item in value.items():
        inside += key.count(":")
        if type(item) is str:
            inside += item.count(":")
        elif type(item) is dict or type(item) is list:
            return False
    return colons <= len(value) + inside


def _jsonl_records(stream: TextIO, counts: ReadCounts | None = None) -> Iterator[Record]:
    # One record a line: the _Lines rules, in one loop (this runs for every row).
    readline = stream.readline
    number = 0
    while text := readline(MAX_RECORD + 3):
        number += 1
        if len(text) > MAX_RECORD and len(text.rstrip("\r\n")) > MAX_RECORD:
            raise InvalidData(f"line {number}: longer than {_LIMIT_TEXT}, the limit for a line")
        if text.isspace():
            if counts is not None:
                counts.blank_rows += 1
            continue
        try:
            value = _decode_fast(text)
        except (ValueError, RecursionError):
            yield _loads(number, text)  # again, for json.loads's wording of the error
            continue
        if type(value) is dict and _no_key_twice(text, value):
            yield Record(number, value)
        else:  # decoded again, exactly (json.loads would keep a key's last value silently)
            yield _loads(number, text)


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
            except _DuplicateKey as exc:  # a bad record, not bad JSON: read past it
                self.value(json.JSONDecoder())
                return exc
            except json.JSONDecodeError as exc:
                # Only an error at the end of what was read may be the record going on in
                # the next chunk (an unterminated string is reported where it starts).
                cut = exc.pos >= len(self.text) - 10 or exc.msg.startswith("Unterminated string")
                if cut and not self.eof:
                    if len(self.text) - self.position > MAX_RECORD:
                        self.too_long()
                    if self.more():
                        continue
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
    decoder = _DECODER
    if reader.peek() != "[":
        hint = " (one object a line is JSONL: give --format jsonl)" if reader.peek() == "{" else ""
        raise InvalidData(f"line {reader.line}: a JSON import must be one array of objects{hint}")
    reader.position += 1
    if reader.peek() == "]":
        reader.position += 1
        if reader.peek():
            raise InvalidData(f"line {reader.line}: unexpected content after the JSON array")
        return
    while True:
        line = reader.line
        value = reader.value(decoder)
        if isinstance(value, _DuplicateKey):
            yield Record(line, None, f"the key {value.key!r} appears twice")
        else:
            yield _object(line, value)
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


def _object(line: int, value: Any, *, lines: bool = False) -> Record:
    if isinstance(value, list) and lines:  # a JSON file in .jsonl's place
        return Record(
            line, None, "expected an object, found an array (one JSON array: --format json)"
        )
    if not isinstance(value, dict):
        return Record(line, None, "expected an object")
    return Record(line, value)


def read_records(
    stream: TextIO,
    fmt: str,
    options: CsvOptions | None = None,
    counts: ReadCounts | None = None,
) -> Iterator[Record]:
    try:
        if fmt == "csv":
            yield from _csv_records(stream, options, counts)
        elif fmt == "json":
            yield from _json_records(stream)
        else:
            yield from _jsonl_records(stream, counts)
    except UnicodeDecodeError as exc:
        raw = getattr(stream, "buffer", None)
        where = raw.error_line(exc) if isinstance(raw, CountingReader) else None
        encoding = getattr(stream, "encoding", "utf-8").removesuffix("-sig")
        byte = f"byte 0x{exc.object[exc.start]:02x}" if exc.start < len(exc.object) else "the end"
        hint = "; give the file's --encoding (e.g. cp1252)" if encoding in ("utf-8", "utf8") else ""
        if hint and where == 1 and exc.object[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "; it starts like UTF-16 (Excel's 'Unicode Text'): give --encoding utf-16"
        prefix = f"line {where}: " if where is not None else ""
        raise InvalidData(f"{prefix}not valid {encoding} ({byte}){hint}") from None
    except UnicodeError as exc:  # a codec's own refusal: UTF-16 without a byte-order mark
        encoding = getattr(stream, "encoding", "the encoding")
        raise InvalidData(f"not valid {encoding}: {exc}; give the file's --encoding") from None


class CountingReader(io.BufferedIOBase):
    """A binary stream that counts what it hands on: bytes (how far through the input a
    progress display is) and line ends before the chunk being decoded (the line of an
    undecodable byte)."""

    def __init__(self, inner: BinaryIO, size: int | None) -> None:
        super().__init__()
        self.inner = inner
        self.size = size  # None: unknown (a pipe)
        self.consumed = 0
        self.newlines_before = 0  # line ends in the chunks before the last one
        self._last = b""

    def readable(self) -> bool:
        return True

    def _count(self, data: bytes) -> bytes:
        self.newlines_before += self._last.count(b"\n")
        self._last = data
        self.consumed += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self.inner.read(-1 if size is None else size))

    def read1(self, size: int = -1) -> bytes:
        reader = getattr(self.inner, "read1", self.inner.read)
        return self._count(reader(size if size and size > 0 else _CHUNK))

    def error_line(self, exc: UnicodeDecodeError) -> int | None:
        """The line of the undecodable byte, when it is in the last chunk read."""
        data = exc.object
        if not isinstance(data, bytes | bytearray) or not self._last.endswith(data[-1:]):
            return None
        before = data[: exc.start]
        try:
            before_text = before.decode(exc.encoding, "replace")
        except LookupError:  # pragma: no cover - the codec decoded until here
            return None
        return self.newlines_before + before_text.count("\n") + 1


@contextmanager
def open_input(source: str, encoding: str | None) -> Iterator[tuple[TextIO, CountingReader]]:
    """The input as text (default UTF-8, with or without a byte-order mark), with the
    counting binary stream under it."""
    chosen = encoding or "utf-8-sig"
    try:
        codecs.lookup(chosen)
    except LookupError:
        raise UsageError(f"unknown --encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)") from None
    if chosen.lower().replace("_", "-") in ("utf-8", "utf8"):
        chosen = "utf-8-sig"  # spreadsheets often start a CSV with a byte-order mark
    if source == "-":
        binary: Any = sys.stdin.buffer
        size = None
        close = False
    else:
        try:
            binary = open(source, "rb")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from None
        close = True
        try:
            info = os.fstat(binary.fileno())
            size = info.st_size if stat.S_ISREG(info.st_mode) else None
        except OSError:
            size = None
    counting = CountingReader(binary, size)
    text = io.TextIOWrapper(counting, encoding=chosen, errors="strict", newline="")  # type: ignore[type-var]
    try:
        yield text, counting
    finally:
        text.detach()
        if close:
            binary.close()


MAX_REPORTED = 50


@dataclass
class Problems:
    """Bad rows of one kind (exit 5: invalid; exit 4: conflicting): every one counted, the
    first MAX_REPORTED kept in words. Memory stays flat however many there are."""

    count: int = 0
    messages: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append((line, message))

    def extend(self, other: Problems) -> None:
        self.count += other.count
        self.messages = sorted(self.messages + other.messages)[:MAX_REPORTED]

    def details(self) -> tuple[str, ...]:
        """One line each, by line number (a duplicate is found after its batch's rows)."""
        shown = tuple(f"line {line}: {message}" for line, message in sorted(self.messages))
        more = self.count - len(self.messages)
        return shown + ((f"... and {more} more bad rows",) if more else ())


@dataclass
class Validated:
    """What validation has seen so far (for progress), and the bad rows: invalid ones, and
    (bulk_job.unique) those repeating an earlier row's email or id."""

    read: int = 0
    valid: int = 0
    bad: Problems = field(default_factory=Problems)
    duplicates: Problems = field(default_factory=Problems)
    # A restore's rows that say has_password true but carry no hash (an export made without
    # --include-hashes): those users come back without a password.
    passwords_missing: int = 0


def validate(
    records: Iterator[Record],
    row_check: Callable[[Any], None] | None = None,
    *,
    restore: bool = False,
    seen: Validated | None = None,
    batch: int = 2000,
) -> Iterator[list[tuple[int, Any]]]:
    """Validate every record, yielding the valid rows in batches of (line, row); every
    problem goes to `seen.bad`. Duplicate emails are the caller's to find (across batches).

    A restore (a usersctl backup) keeps names, emails and roles exactly as stored
    (schemas._RestoreIdentity), so that whatever a database held comes back. `row_check` raises
    InvalidData for a valid row that the configuration refuses (a weak plaintext password,
    a role outside the pinned ones)."""
    from pydantic import ValidationError

    from usersctl.schemas import import_validator, validation_message

    validate_row = import_validator(restore)
    seen = seen if seen is not None else Validated()
    bad = seen.bad
    rows: list[tuple[int, Any]] = []
    for record in records:
        seen.read += 1
        if record.data is None:
            bad.add(record.line, record.problem or "unreadable record")
            continue
        try:
            row = validate_row(record.data)
        except ValidationError as exc:
            bad.add(record.line, validation_message(exc))
            continue
        if row_check is not None:
            try:
                row_check(row)
            except InvalidData as exc:
                bad.add(record.line, exc.message)
                continue
        seen.valid += 1
        rows.append((record.line, row))  # id and timestamps are used only by --restore
        if len(rows) >= batch:
            yield rows
            rows = []
    if rows:
        yield rows
