"""The one timestamp format every output uses: ISO-8601, UTC, to the second, with `Z`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from usersctl.errors import unreadable_time


def iso_utc(value: datetime) -> str:
    """(Not strftime: its %Y writes the year 202 as "202" on Linux, which no parser takes
    back; a naive time is UTC, as stored.)"""
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def iso_from_sqlite_text(value: str) -> str:
    """The same format straight from SQLite's stored text ('YYYY-MM-DD HH:MM:SS[.ffffff]',
    naive UTC as usersctl writes it): export's hot path. Every value is parsed, so text
    another program wrote that only looks like a time (month 13) is refused as get refuses
    it; the output is then cut from the text instead of formatted from the datetime."""
    try:
        parsed = datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise unreadable_time(value) from None
    # Only the two shapes usersctl writes are cut: one with an offset ('...+05:00') or in
    # ISO's basic format ('20240101T000000') is converted.
    if (
        parsed.tzinfo is None
        and (len(value) == 19 or (len(value) == 26 and value[19] == "."))
        and value[4] == "-"
        and value[13] == ":"
    ):
        return f"{value[:10]}T{value[11:19]}Z"
    return iso_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, now: datetime) -> datetime:
    """A point in time from ISO-8601 (a date is its midnight; no offset means UTC) or a time
    ago (`45s`, `30m`, `12h`, `7d`, `2w`). Raises ValueError."""
    value = text.strip()
    match = re.fullmatch(r"(\d{1,9})\s*([smhdw])", value, flags=re.IGNORECASE)
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2).lower()]
        try:
            return now - timedelta(**{unit: amount})
        except OverflowError:
            raise ValueError(f"{text!r} reaches before the year 1") from None
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
