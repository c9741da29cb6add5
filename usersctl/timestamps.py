"""The one timestamp format every output uses: ISO-8601, UTC, to the second, with `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_from_sqlite_text(value: str) -> str:
    """The same format straight from SQLite's stored text ('YYYY-MM-DD HH:MM:SS[.ffffff]',
    naive UTC as usersctl writes it), without building a datetime: export's hot path."""
    if len(value) >= 19 and value[10] in " T" and value[4] == "-" and value[13] == ":":
        return f"{value[:10]}T{value[11:19]}Z"
    parsed = datetime.fromisoformat(value)
    return iso_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
