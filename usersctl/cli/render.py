"""Every output format lives here: table, json, jsonl, csv, plain.

Data goes to stdout, messages to stderr. Values from the database are never parsed as
Rich markup (cells are `rich.text.Text`) nor passed raw to a terminal in table or plain
output (control characters become visible escapes). Piped tables never wrap, cut or
ellipsize a value: off a terminal the table is laid out at its natural width.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import IO, Any

from usersctl.bulk import FORMULA_START
from usersctl.escaping import FORMAT_CHARACTERS, printable
from usersctl.records import user_record

FIELDS = (
    "id", "name", "email", "role", "active", "created_at", "updated_at",
    "last_login_at", "password_changed_at", "expires_at", "must_change_password", "locked",
    "has_password", "source", "external_id",
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


# json.dumps leaves DEL, C1 controls, the JS line separators and invisible format characters
# (bidi overrides, zero-width space) raw with ensure_ascii=False; escape them so JSON on a
# terminal is as inert as the other formats (still lossless).
_JSON_UNSAFE = re.compile(f"[\x7f-\x9f\u2028\u2029{FORMAT_CHARACTERS}]")


_BATCH = 1000
_COMPACT = json.JSONEncoder(ensure_ascii=False)  # made once: json.dumps(**kw) makes one per call
_INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2)


def _json_safe(text: str) -> str:
    # The class holds astral ranges, so the regex costs ~20 ns a character: a million
    # exported lines spent 5 s in it. ASCII without DEL has nothing to escape (JSON has
    # escaped every other control character), and str.isascii() is a fast C scan.
    if text.isascii() and "\x7f" not in text:
        return text
    return _JSON_UNSAFE.sub(_escape_unsafe, text)


def to_json(value: Any, *, indent: bool = False) -> str:
    return _json_safe((_INDENTED if indent else _COMPACT).encode(value))


def _escape_unsafe(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells an astral character as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def csv_cell(value: str) -> str:
    """OWASP "CSV Injection": a spreadsheet runs a cell starting with = + - @ TAB or CR as a
    formula, so such a cell is written with a leading '. To keep the round trip lossless, a
    cell that already starts with 's followed by one of them gets one more ', and `import`
    removes exactly one ' from cells of that shape (usersctl.bulk.csv_value). Every other
    cell, "'Tis" included, is written as it is."""
    return "'" + value if FORMULA_START.match(value) else value


# Tables on a terminal: only these columns wrap (at spaces, like prose); the others never
# split a value. Too narrow a terminal drops columns, first to last, in DROP_ORDER (for
# users) or AUDIT_DROP_ORDER (audit entries); README, "Output formats".
WRAPPING = frozenset({"name", "changes", "message"})
WRAP_MIN_WIDTH = 16
DROP_ORDER = (
    "updated_at", "created_at", "password_changed_at", "has_password", "must_change_password",
    "external_id", "source", "locked", "expires_at", "last_login_at", "active", "role",
    "down_revision",
)  # fmt: skip
AUDIT_DROP_ORDER = ("id", "email", "actor")  # who made a change goes last (user_id stays)


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
        self,
        records: Iterable[Record],
        *,
        fields: Iterable[str] = FIELDS,
        exact: bool = False,
        drop: Sequence[str] = DROP_ORDER,
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
        }.get(self.fmt)
        if writer is None:
            return self._table(records, fields, drop)
        return writer(records, fields)

    def _json_array(self, records: Iterable[Record], fields: list[str]) -> int:
        count = 0
        self.out.write("[")
        for record in records:  # indented like a single object (README, "Output formats")
            self.out.write(",\n  " if count else "\n  ")
            self.out.write(to_json(record, indent=True).replace("\n", "\n  "))
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
        text = "\n".join(lines)
        if not text.isascii():  # escape line by line: most lines of a batch are ASCII
            text = "\n".join(map(_json_safe, lines))
        elif "\x7f" in text:
            text = _JSON_UNSAFE.sub(_escape_unsafe, text)
        self.out.write(text)

    def _csv(self, records: Iterable[Record], fields: list[str]) -> int:
        """CSV is lossless into a file or pipe; on a terminal, control characters are shown
        as escapes like every other format, so a value can never drive the terminal."""
        writer = csv.writer(self.out, lineterminator="\n")
        # The csv module quotes a cell with a newline but not one with a lone CR (with "\n"
        # as line end): a row holding one is written fully quoted, so it reads back exactly.
        quoting = csv.writer(self.out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(fields)
        shown = printable if self.out.isatty() else str
        count = 0
        for record in records:
            row = [shown(csv_cell(_text_value(record.get(k)))) for k in fields]
            (quoting if "\r" in "".join(row) else writer).writerow(row)
            count += 1
        return count

    def _plain(self, records: Iterable[Record], fields: list[str]) -> int:
        count = 0
        for record in records:
            cells = (printable(_text_value(record.get(k))) for k in fields)
            self.out.write("\t".join(cell.replace("\t", "\\t") for cell in cells) + "\n")
            count += 1
        return count

    def _print(self, renderable: Any, *, width: int | None = None) -> None:
        """On a terminal, as Rich lays it out; off one, at its natural width (nothing cut
        or wrapped), without colour and without the trailing spaces of padded cells."""
        from rich.console import Console

        if self.out.isatty():
            Console(file=self.out, width=width).print(renderable, soft_wrap=False)
            return
        buffer = io.StringIO()
        console = Console(file=buffer, width=100_000, no_color=True, highlight=False)
        console.print(renderable, soft_wrap=False)
        self.out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))

    def _table(
        self, records: Iterable[Record], fields: list[str], drop: Sequence[str] = DROP_ORDER
    ) -> int:
        from rich.console import Console

        rows = [[printable(_cell(record.get(k))) for k in fields] for record in records]
        if not rows:
            return 0
        if not self.out.isatty():
            self._print(_users_table(fields, rows, fields, fold=False))
            return len(rows)
        # On a terminal: identifiers, emails, times and roles never wrap; what may (names,
        # audit changes) wraps at spaces. Columns are dropped, in `drop` order, until the
        # rest fits; only if even that is too wide do values fold mid-word.
        console = Console(file=self.out)
        widths = _natural_widths(fields, rows)
        shown = list(fields)
        for name in (None, *(name for name in drop if name in fields)):
            if name is not None:
                shown.remove(name)
            if _least_width(shown, widths) <= console.width:
                table = _users_table(fields, rows, shown, fold=False)
                break
        else:
            table = _users_table(fields, rows, shown, fold=True)
        console.print(table, soft_wrap=False)
        left_out = [name for name in fields if name not in shown]
        if left_out:  # never silently: say what is missing and how to see it (stderr)
            from rich.text import Text

            note = Text(
                f"({len(left_out)} column(s) left out to fit {console.width} columns: "
                f"{', '.join(left_out)}; a wider terminal or -o plain shows them)",
                style="dim",
            )
            Console(file=sys.stderr, width=console.width).print(note)
        return len(rows)

    def _vertical_table(self, record: Record, fields: list[str]) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for name in fields:
            table.add_row(name, Text(printable(_cell(record.get(name)))))
        self._print(table)

    def line(self, text: str) -> None:
        """A bare line of data (a count, a revision): the same in every format."""
        self.out.write(text + "\n")


_COLUMN_GAP = 3  # between two columns of a SIMPLE_HEAD table without edge padding


def _natural_widths(fields: list[str], rows: list[list[str]]) -> dict[str, int]:
    from rich.cells import cell_len

    return {
        name: max(cell_len(name), *(cell_len(row[position]) for row in rows))
        for position, name in enumerate(fields)
    }


def _least_width(shown: list[str], widths: dict[str, int]) -> int:
    """The narrowest a table of `shown` gets without splitting a value that must not wrap."""
    least = sum(
        min(widths[name], WRAP_MIN_WIDTH) if name in WRAPPING else widths[name] for name in shown
    )
    return least + _COLUMN_GAP * (len(shown) - 1)


def _users_table(fields: list[str], rows: list[list[str]], shown: list[str], *, fold: bool) -> Any:
    """A table of `rows` (cells in `fields` order) showing the columns `shown`."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    index = [fields.index(name) for name in shown]
    for name in shown:
        table.add_column(name, overflow="fold", no_wrap=not fold and name not in WRAPPING)
    for row in rows:
        table.add_row(*(Text(row[position]) for position in index))
    return table


def records(users: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for user in users:
        yield user_record(user)
