"""Messages for the person at the terminal (stderr), wrapped at its width. Values are made
safe to show by usersctl.escaping."""

from __future__ import annotations

import os
import sys
import textwrap

import typer


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
