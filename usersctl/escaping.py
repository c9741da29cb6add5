"""Make text from the database or the user safe to show on a terminal or in a log.

Control characters (C0, DEL, C1: the start of every terminal escape sequence) are shown as
visible `\\xNN` escapes; invisible format characters (U+202E RIGHT-TO-LEFT OVERRIDE and the
other bidi controls, U+200B ZERO WIDTH SPACE, U+FEFF...) and the line/paragraph separators
as `\\uNNNN`. usersctl never stores them, but another application sharing the database (or
an adopted tutorial database) might, and a name must never be able to move the cursor,
retitle a window, reverse what follows it or hide part of itself. The zero-width joiners
(U+200C, U+200D) are shown as they are: Persian and Indic names and emoji need them. A
backslash that starts what reads as such an escape (`\\x`, `\\u`, `\\U`) is doubled, so the
text `\\x1b` typed into a name never shows as a real ESC would.

Used by the CLI's output and by the server's log (a request path is anyone's text).
"""

from __future__ import annotations

import re

# Unicode category Cf (format characters) except the joiners, as of Unicode 15; a test
# keeps it in step with the running Python's unicodedata.
FORMAT_CHARACTERS = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b\u200e-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
_CONTROLS = f"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029{FORMAT_CHARACTERS}]"
_UNSAFE = re.compile(_CONTROLS)
# (A backslash before one of those is doubled too: a real backslash then ESC must not
# read as the typed text `\\x1b`.)
_UNSAFE_OR_ESCAPE_LIKE = re.compile(f"{_CONTROLS}|\\\\(?=[xuU]|{_CONTROLS})")


def _escape(match: re.Match[str]) -> str:
    if match.group() == "\\":
        return "\\\\"
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: str, *, backslashes: bool = True) -> str:
    """`value` safe to show. Without `backslashes` (a message of usersctl's own, whose
    quoted values are Python reprs such as `b'\\x00'`), backslashes are left alone."""
    return (_UNSAFE_OR_ESCAPE_LIKE if backslashes else _UNSAFE).sub(_escape, value)
