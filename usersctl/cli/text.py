"""Make text from the database or the user safe to show on a terminal.

Control characters (C0, DEL, C1: the start of every terminal escape sequence) are shown as
visible `\\xNN` escapes; invisible format characters (U+202E RIGHT-TO-LEFT OVERRIDE and the
other bidi controls, U+200B ZERO WIDTH SPACE, U+FEFF...) and the line/paragraph separators
as `\\uNNNN`. usersctl never stores them, but another application sharing the database (or
an adopted tutorial database) might, and a name must never be able to move the cursor,
retitle a window, reverse what follows it or hide part of itself. The zero-width joiners
(U+200C, U+200D) are shown as they are: Persian and Indic names and emoji need them.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap

import typer

# Unicode category Cf (format characters) except the joiners, as of Unicode 15; a test
# keeps it in step with the running Python's unicodedata.
FORMAT_CHARACTERS = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b\u200e-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
_UNSAFE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029{FORMAT_CHARACTERS}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: str) -> str:
    return _UNSAFE.sub(_escape, value)


def _stderr_width() -> int | None:
    """The width of the terminal stderr is, or None when stderr is not a terminal."""
    try:
        if not sys.stderr.isatty():
            return None
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() else os.get_terminal_size(2).columns
    except (AttributeError, ValueError, OSError):
        return None


def for_stderr(text: str) -> str:
    """A message as stderr shows it: on a terminal, wrapped at spaces at its width (a word,
    such as an email, a URL or a path without spaces, is never cut; continuation lines are
    indented by two spaces); piped or redirected, the one line scripts read."""
    width = _stderr_width()
    if width is None or len(text) <= width or width < 40:
        return text
    return textwrap.fill(
        text,
        width=width,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def say(text: str) -> None:
    """A message for the person at the terminal, on stderr (stdout is the data)."""
    typer.echo(for_stderr(text), err=True)
