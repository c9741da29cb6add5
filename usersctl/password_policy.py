"""The password policy, after NIST SP 800-63B-4 (section 3.1.1.2) and OWASP ASVS 5.0 (V6).

- Length counted in Unicode code points after NFKC normalisation; at least
  `password_min_length` (config, default 15, never below 8), at most 1024; no composition
  rules; never truncated (the whole password is hashed).
- Common, breached-list-like or context-guessable passwords are rejected with zxcvbn's
  frequency lists and pattern matching, given the user's name and email parts and
  "usersctl" as context. zxcvbn loads (~0.1 s) only where a password is being set.

Hashes made before this policy keep verifying: the policy applies to new passwords only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from usersctl import rules
from usersctl.errors import InvalidData

MIN_LENGTH_FLOOR = rules.PASSWORD_MIN_LENGTH_FLOOR
DEFAULT_MIN_LENGTH = rules.PASSWORD_MIN_LENGTH
MAX_LENGTH = rules.PASSWORD_MAX_LENGTH
MIN_SCORE = 3  # zxcvbn 0-4: 3 = "safely unguessable: moderate protection from offline attack"
SERVICE_WORDS = ("usersctl",)
ZXCVBN_MAX = 72

length = rules.password_length


def context_words(user_inputs: Iterable[str]) -> list[str]:
    """The words an attacker would try first: the name, the email's parts, the service."""
    words: list[str] = list(SERVICE_WORDS)
    for value in user_inputs:
        value = value.strip().lower()
        if not value:
            continue
        words.append(value)
        words.extend(part for part in re.split(r"[\s@._+-]+", value) if len(part) >= 2)
    return list(dict.fromkeys(words))


def check(
    password: str, *, min_length: int = DEFAULT_MIN_LENGTH, user_inputs: Iterable[str] = ()
) -> None:
    """Raise InvalidData (exit 5) naming why the password is refused and what would do.
    Never echoes the password. The wordings are usersctl.rules'."""
    problem = rules.password_problem(password, min_length=min_length)
    if problem is not None:
        raise InvalidData(problem)
    # zxcvbn judges at most 72 characters (its matching is quadratic in the length); a
    # longer password is guessable only if its first 72 characters are.
    sample = password[:ZXCVBN_MAX]
    words = context_words(user_inputs)
    result = _zxcvbn(sample, words)
    if result["score"] < MIN_SCORE:
        raise InvalidData(rules.PASSWORD_GUESSABLE.format(_reason(result)))
    # What an attacker knows adds nothing: the rest must be strong on its own.
    rest = sample.lower()
    for word in sorted((w for w in words if len(w) >= 3), key=len, reverse=True):
        rest = rest.replace(word, "")
    if rest != sample.lower() and _zxcvbn(rest, words)["score"] < MIN_SCORE:
        raise InvalidData(rules.PASSWORD_GUESSABLE.format(rules.PASSWORD_ON_CONTEXT))


def _zxcvbn(password: str, words: list[str]) -> dict[str, Any]:
    from zxcvbn import zxcvbn  # type: ignore[import-untyped]  # loads its frequency lists: only where a password is set

    result: dict[str, Any] = zxcvbn(password, user_inputs=words)
    return result


def _reason(result: dict[str, Any]) -> str:
    """One line: what made the password guessable, from zxcvbn's matches."""
    sequence = result.get("sequence") or []
    for match in sequence:
        if match.get("pattern") == "dictionary":
            if match.get("dictionary_name") == "user_inputs":
                return rules.PASSWORD_ON_CONTEXT
            return "it is built on a common password or word"
    for match in sequence:
        pattern = match.get("pattern")
        if pattern == "repeat":
            return "it repeats characters or a pattern"
        if pattern == "sequence":
            return "it contains a simple sequence (abc, 1234)"
        if pattern == "spatial":
            return "it contains a keyboard pattern (qwerty)"
        if pattern == "date":
            return "it contains a date"
    warning = (result.get("feedback") or {}).get("warning")
    return str(warning).rstrip(".").lower() if warning else "it is easy to guess"
