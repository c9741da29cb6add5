"""Make text from the database or the user safe to show on a terminal.

Control characters (C0, DEL, C1: the start of every terminal escape sequence) are shown as
visible `\\xNN` escapes. usersctl never stores them, but another application sharing the
database might, and a name must never be able to move the cursor or retitle a window.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: str) -> str:
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", value)
