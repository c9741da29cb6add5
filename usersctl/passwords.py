"""Password policy and hashing: argon2id through argon2-cffi.

Parameters are argon2-cffi's defaults (RFC 9106 "low memory" profile: t=3, m=64 MiB, p=4),
above OWASP's minimum (t=2, m=19 MiB, p=1). A hash made with other parameters, or a
bcrypt hash brought in by `import`, is re-hashed after the next successful verification.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from usersctl.errors import InvalidData

MIN_LENGTH = 8
MAX_LENGTH = 1024

_hasher = PasswordHasher()

# Verified against when the user does not exist, so that the time taken does not reveal
# whether an account exists. Made with the current parameters (a test keeps it so).
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$DxCHmOOU14pQiqD0LibgEA$"
    "Yrb0HrTvAua2OBlVA2LFg8nESaCm2DngDY9BOuwBm2U"
)


def check_policy(password: str) -> None:
    """Raise InvalidData when the password is too short or too long. Never echoes it."""
    if len(password) < MIN_LENGTH:
        raise InvalidData(f"password too short: at least {MIN_LENGTH} characters are required")
    if len(password) > MAX_LENGTH:
        raise InvalidData(f"password too long: at most {MAX_LENGTH} characters are allowed")


def hash_password(password: str, *, enforce_policy: bool = True) -> str:
    """Hash with the current parameters. Only the 0002 migration, which must hash whatever
    plaintext the tutorial app stored, turns the policy off."""
    if enforce_policy:
        check_policy(password)
    return _hasher.hash(password)


def hash_many(
    passwords: Sequence[str],
    *,
    enforce_policy: bool = True,
    advance: Callable[[int], None] | None = None,
) -> list[str]:
    """Hash on every core (argon2 releases the GIL), in order, reporting each one done."""
    hashes: list[str] = []
    work = partial(hash_password, enforce_policy=enforce_policy)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for hashed in pool.map(work, passwords):
            hashes.append(hashed)
            if advance is not None:
                advance(1)
    return hashes


def generate_password(length: int = 24) -> str:
    """A random password of `length` (at least 24) URL-safe characters: 144 bits of entropy
    or more, so it passes the password policy by construction."""
    length = max(length, 24)
    return secrets.token_urlsafe(length)[:length]


def is_argon2_hash(value: str) -> bool:
    return value.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))


def is_bcrypt_hash(value: str) -> bool:
    return value.startswith(("$2a$", "$2b$", "$2y$")) and len(value) == 60


def is_supported_hash(value: str) -> bool:
    return is_argon2_hash(value) or is_bcrypt_hash(value)


_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# The PHC string argon2-cffi writes. Stricter than argon2.extract_parameters (which takes
# e.g. "m=+1" or an empty salt), and ~10x faster: import checks every row's hash with it.
# tests/test_passwords.py checks that whatever it accepts, extract_parameters accepts.
_ARGON2 = re.compile(
    r"\$argon2(?:id|i|d)\$v=[0-9]{1,10}\$m=[0-9]{1,10},t=[0-9]{1,10},p=[0-9]{1,10}"
    r"\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)


def is_valid_hash(value: str) -> bool:
    """A hash `import` may store: a parseable argon2 PHC string or a well-formed bcrypt hash,
    no longer than the column."""
    if len(value) > 255 or not value.isascii() or not value.isprintable():
        return False
    if is_bcrypt_hash(value):
        return _BCRYPT.fullmatch(value) is not None
    return _ARGON2.fullmatch(value) is not None


def _verify_bcrypt(stored_hash: str, password: str) -> bool:
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - bcrypt ships with usersctl
        return False
    try:
        return bool(bcrypt.checkpw(password.encode(), stored_hash.encode()))
    except ValueError:
        return False


def verify(stored_hash: str, password: str) -> tuple[bool, str | None]:
    """Check `password` against `stored_hash` in constant time.

    Returns (matches, new_hash); new_hash is set when the stored hash should be replaced
    (weaker argon2 parameters, or a bcrypt hash) and is None otherwise.
    """
    if is_bcrypt_hash(stored_hash):
        if _verify_bcrypt(stored_hash, password):
            return True, _hasher.hash(password)
        return False, None
    try:
        _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if _hasher.check_needs_rehash(stored_hash):
        return True, _hasher.hash(password)
    return True, None


def dummy_verify(password: str) -> None:
    """Spend the time a real verification takes, for an account that does not exist."""
    verify(DUMMY_HASH, password)
