"""Every output format lives here: table, json, jsonl, csv, plain.

Data goes to stdout, messages to stderr. Values from the database are never parsed as
Rich markup (cells are `rich.text.Text`) nor passed raw to a terminal in table or plain
output (control characters become visible escapes). Piped tables never wrap, cut or
ellipsize a value: off a terminal the table is laid out at its natural width.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import IO, Any

from usersctl.cli.text import printable
from usersctl.timestamps import iso_utc

FIELDS = (
    "id", "name", "email", "role", "active", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password",
)  # fmt: skip
TABLE_FIELDS = ("id", "name", "email", "role", "active", "last_login_at")
"""`list`'s default table columns: readable at 80 columns (--columns chooses others)."""

Record = Mapping[str, Any]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    plain = "plain"


def user_record(user: Any) -> dict[str, Any]:
    """A user (ORM object) through the public schema, as output-ready values.

    Call it inside the session. Only UserPublic's fields exist here: never the hash.
    """
    from usersctl.schemas import UserPublic

    public = UserPublic.model_validate(user)
    record = public.model_dump()
    for name in ("created_at", "updated_at", "last_login_at", "password_changed_at", "expires_at"):
        value = record[name]
        record[name] = None if value is None else iso_utc(value)
    return record


# json.dumps leaves DEL, C1 controls and the JS line separators raw with ensure_ascii=False;
# escape them so JSON on a terminal is as inert as the other formats (still lossless).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


_BATCH = 1000
_COMPACT = json.JSONEncoder(ensure_ascii=False)  # made once: json.dumps(**kw) makes one per call
_INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2)


def to_json(value: Any, *, indent: bool = False) -> str:
    text = (_INDENTED if indent else _COMPACT).encode(value)
    return _JSON_UNSAFE.sub(_escape_unsafe, text)


def _escape_unsafe(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _cell(value: Any) -> str:
    """A table cell: an empty value (never logged in, no expiry) shows as '-'."""
    return "-" if value is None else _text_value(value)


class Renderer:
    """Writes records in one format to `out` (stdout by default)."""

    def __init__(self, fmt: OutputFormat, out: IO[str] | None = None) -> None:
        self.fmt = fmt
        self.out = out if out is not None else sys.stdout

    def one(self, record: Record, *, fields: Iterable[str] = FIELDS) -> None:
        """A single object: a json object, a one-row csv/jsonl/plain, a field/value table."""
        fields = list(fields)
        if self.fmt is OutputFormat.json:
            self.out.write(to_json({k: record.get(k) for k in fields}, indent=True) + "\n")
        elif self.fmt is OutputFormat.table:
            self._vertical_table(record, fields)
        else:
            self.many([record], fields=fields)

    def many(
        self, records: Iterable[Record], *, fields: Iterable[str] = FIELDS, exact: bool = False
    ) -> int:
        """Many objects, streamed (except the table, which must measure its columns).

        `exact` promises every record has exactly `fields`, in order (export's hot path)."""
        fields = list(fields)
        if not exact and self.fmt in (OutputFormat.json, OutputFormat.jsonl):
            # JSON writes whole records: restrict each to `fields`, in that order.
            records = ({k: record.get(k) for k in fields} for record in records)
        writer = {
            OutputFormat.json: self._json_array,
            OutputFormat.jsonl: self._jsonl,
            OutputFormat.csv: self._csv,
            OutputFormat.plain: self._plain,
            OutputFormat.table: self._table,
        }[self.fmt]
        return writer(records, fields)

    def _json_array(self, records: Iterable[Record], fields: list[str]) -> int:
        count = 0
        self.out.write("[")
        for record in records:
            self.out.write(",\n  " if count else "\n  ")
            self.out.write(to_json(record))
            count += 1
        self.out.write("\n]\n" if count else "]\n")
        return count

    def _jsonl(self, records: Iterable[Record], fields: list[str]) -> int:
        """One object per line, written (and made terminal-safe) a batch of lines at a time:
        export of a million rows spends its time here."""
        count = 0
        batch: list[str] = []
        for line in map(_COMPACT.encode, records):
            batch.append(line)
            count += 1
            if len(batch) == _BATCH:
                self._write_lines(batch)
                batch = []
        if batch:
            self._write_lines(batch)
        return count

    def _write_lines(self, lines: list[str]) -> None:
        lines.append("")
        self.out.write(_JSON_UNSAFE.sub(_escape_unsafe, "\n".join(lines)))

    def _csv(self, records: Iterable[Record], fields: list[str]) -> int:
        """CSV is lossless into a file or pipe; on a terminal, control characters are shown
        as escapes like every other format, so a value can never drive the terminal."""
        writer = csv.writer(self.out, lineterminator="\n")
        writer.writerow(fields)
        shown = printable if self.out.isatty() else str
        count = 0
        for record in records:
            writer.writerow([shown(_text_value(record.get(k))) for k in fields])
            count += 1
        return count

    def _plain(self, records: Iterable[Record], fields: list[str]) -> int:
        count = 0
        for record in records:
            cells = (printable(_text_value(record.get(k))) for k in fields)
            self.out.write("\t".join(cell.replace("\t", "\\t") for cell in cells) + "\n")
            count += 1
        return count

    def _console(self) -> Any:
        from rich.console import Console

        if self.out.isatty():
            return Console(file=self.out)
        # Not a terminal: as wide as the content needs, no colour, nothing cut or wrapped.
        return Console(file=self.out, width=100_000, no_color=True, highlight=False)

    def _table(self, records: Iterable[Record], fields: list[str]) -> int:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in fields:
            table.add_column(name, overflow="fold", no_wrap=not self.out.isatty())
        count = 0
        for record in records:
            table.add_row(*(Text(printable(_cell(record.get(k)))) for k in fields))
            count += 1
        if count:
            self._console().print(table, soft_wrap=False)
        return count

    def _vertical_table(self, record: Record, fields: list[str]) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold", no_wrap=not self.out.isatty())
        for name in fields:
            table.add_row(name, Text(printable(_cell(record.get(name)))))
        self._console().print(table)

    def line(self, text: str) -> None:
        """A bare line of data (a count, a revision): the same in every format."""
        self.out.write(text + "\n")


def records(users: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for user in users:
        yield user_record(user)
