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
from functools import lru_cache, partial

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from usersctl import rules
from usersctl.errors import InvalidData

MIN_LENGTH = rules.PASSWORD_MIN_LENGTH_FLOOR  # the backstop under the policy
MAX_LENGTH = rules.PASSWORD_MAX_LENGTH

_hasher = PasswordHasher()

# Verified against when the user does not exist, so that the time taken does not reveal
# whether an account exists. Made with the current parameters (a test keeps it so).
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$DxCHmOOU14pQiqD0LibgEA$"
    "Yrb0HrTvAua2OBlVA2LFg8nESaCm2DngDY9BOuwBm2U"
)


def check_policy(password: str) -> None:
    """Raise InvalidData when the password's length is outside what any configuration
    allows (the lowest minimum, the maximum): a backstop under the policy that the commands
    apply first (usersctl.password_policy). Never echoes it."""
    problem = rules.password_problem(password, min_length=rules.PASSWORD_MIN_LENGTH_FLOOR)
    if problem is not None:
        raise InvalidData(problem)


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
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        for hashed in pool.map(work, passwords):
            hashes.append(hashed)
            if advance is not None:
                advance(1)
    finally:
        # On Ctrl-C (or a bad password) drop the queued work instead of hashing it all.
        pool.shutdown(wait=True, cancel_futures=True)
    return hashes


def generate_password(length: int = 24) -> str:
    """A random password of `length` (at least 24) URL-safe characters: 144 bits of entropy
    or more, so it passes the password policy by construction. It starts with a letter or
    digit: one starting with `-` would be quoted by CSV output (`'-...`, against formula
    injection), so that what an admin copies is not the password, and reads as an option
    to a shell command."""
    length = max(length, 24)
    while True:
        password = secrets.token_urlsafe(length)[:length]
        if password[0].isalnum():
            return password


def is_argon2_hash(value: str) -> bool:
    return value.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))


def is_bcrypt_hash(value: str) -> bool:
    return value.startswith(("$2a$", "$2b$", "$2y$")) and len(value) == 60


def is_supported_hash(value: str) -> bool:
    return is_argon2_hash(value) or is_bcrypt_hash(value)


_BCRYPT = re.compile(r"\$2[aby]\$(?P<cost>[0-9]{2})\$[./A-Za-z0-9]{53}")
# The PHC string argon2-cffi writes. Stricter than argon2.extract_parameters (which takes
# e.g. "m=+1" or an empty salt), and ~10x faster: import checks every row's hash with it.
# tests/test_passwords.py checks that whatever it accepts, extract_parameters accepts.
_ARGON2 = re.compile(
    r"\$argon2(?:id|i|d)\$v=(?P<v>[0-9]{1,10})"
    r"\$m=(?P<m>[0-9]{1,10}),t=(?P<t>[0-9]{1,10}),p=(?P<p>[0-9]{1,10})"
)
_ARGON2_SALT_AND_HASH = re.compile(r"[A-Za-z0-9+/]+")
# A whole argon2 hash of that shape in one match, its parameters as group 1: what nearly
# every row of a bulk file holds (hash_problem's fast path; the same verdict as the rest).
_ARGON2_WHOLE = re.compile(
    r"(\$argon2(?:id|i|d)\$v=[0-9]{1,10}\$m=[0-9]{1,10},t=[0-9]{1,10},p=[0-9]{1,10})"
    r"\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)

# The parameters a stored hash may have (README, "Security notes"): every hash real apps
# make verifies within a few seconds and at most 1 GiB of memory; nothing outside can stall
# a login for minutes, exhaust memory, or never verify at all.
BCRYPT_COSTS = range(4, 16)  # 4 is bcrypt's minimum; 12 its default; 15 takes ~2-3 s
ARGON2_VERSION = 19  # 0x13, the only version argon2-cffi writes since 2016
ARGON2_PARALLELISM = range(1, 17)
ARGON2_TIME_COSTS = range(1, 21)
ARGON2_MAX_MEMORY_KIB = 1024 * 1024  # 1 GiB; the minimum is argon2's own, 8 KiB per lane
ARGON2_MAX_WORK = 2 * ARGON2_MAX_MEMORY_KIB  # m x t: at most as much as m=1 GiB, t=2


MALFORMED_HASH = "must be a well-formed argon2 ($argon2id$...) or bcrypt ($2b$...) hash"


def hash_problem(value: str) -> str | None:
    """Why `value` cannot be stored as a password hash, or None when it can: a parseable
    argon2 PHC string or a well-formed bcrypt hash, no longer than the column, with
    parameters inside the bounds above."""
    whole = _ARGON2_WHOLE.fullmatch(value)
    if whole is not None and len(value) <= rules.HASH_LENGTH:
        return _argon2_parameters_problem(whole[1])
    if len(value) > rules.HASH_LENGTH or not value.isascii() or not value.isprintable():
        return MALFORMED_HASH
    if is_bcrypt_hash(value):
        bcrypt_match = _BCRYPT.fullmatch(value)
        if bcrypt_match is None:
            return MALFORMED_HASH
        cost = int(bcrypt_match["cost"])
        if cost not in BCRYPT_COSTS:
            return f"bcrypt cost {cost} is outside {BCRYPT_COSTS.start}..{BCRYPT_COSTS.stop - 1}"
        return None
    parts = value.rsplit("$", 2)
    if len(parts) != 3 or not all(map(_ARGON2_SALT_AND_HASH.fullmatch, parts[1:])):
        return MALFORMED_HASH
    return _argon2_parameters_problem(parts[0])


@lru_cache(maxsize=256)
def _argon2_parameters_problem(parameters: str) -> str | None:
    """hash_problem's verdict on an argon2 hash's `$argon2id$v=..$m=..,t=..,p=..` part,
    remembered: a bulk file's hashes nearly all share their parameters."""
    match = _ARGON2.fullmatch(parameters)
    if match is None:
        return MALFORMED_HASH
    version, memory = int(match["v"]), int(match["m"])
    time_cost, lanes = int(match["t"]), int(match["p"])
    if version != ARGON2_VERSION:
        return f"argon2 version {version} is not supported (only v={ARGON2_VERSION})"
    if lanes not in ARGON2_PARALLELISM:
        return f"argon2 parallelism p={lanes} is outside 1..{ARGON2_PARALLELISM.stop - 1}"
    if not 8 * lanes <= memory <= ARGON2_MAX_MEMORY_KIB:
        return (
            f"argon2 memory m={memory} KiB is outside {8 * lanes}..{ARGON2_MAX_MEMORY_KIB} "
            "(8 KiB per lane to 1 GiB)"
        )
    if time_cost not in ARGON2_TIME_COSTS:
        return f"argon2 time cost t={time_cost} is outside 1..{ARGON2_TIME_COSTS.stop - 1}"
    if memory * time_cost > ARGON2_MAX_WORK:
        return (
            f"argon2 work m*t={memory * time_cost} is above {ARGON2_MAX_WORK} "
            "(as much as m=1 GiB, t=2)"
        )
    return None


def is_valid_hash(value: str) -> bool:
    """A hash `import` may store (see hash_problem)."""
    return hash_problem(value) is None


def _verify_bcrypt(stored_hash: str, password: str) -> bool:
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - bcrypt ships with usersctl
        return False
    # Every bcrypt before bcrypt 5 used only the first 72 bytes of a password (bcrypt 5
    # raises instead): the app that made this hash did the same, so its users' passwords
    # still verify.
    try:
        return bool(bcrypt.checkpw(password.encode()[:72], stored_hash.encode()))
    except ValueError:
        return False


def verify(stored_hash: str, password: str) -> tuple[bool, str | None]:
    """Check `password` against `stored_hash` in constant time.

    Returns (matches, new_hash); new_hash is set when the stored hash should be replaced
    (weaker argon2 parameters, or a bcrypt hash) and is None otherwise.
    """
    if hash_problem(stored_hash) is not None:
        # Never spend unbounded time or memory on a hash outside the bounds (one written
        # straight into the database): it cannot match.
        return False, None
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


def pad_failure(stored_hash: str, password: str) -> None:
    """After a failed check against `stored_hash`: when that hash is cheaper than the
    current parameters (an imported bcrypt or weaker argon2 hash, or one that could not be
    checked at all), also spend the dummy verification, so that a failure for this account
    takes at least as long as one for an unknown account."""
    if is_argon2_hash(stored_hash) and hash_problem(stored_hash) is None:
        try:
            if not _hasher.check_needs_rehash(stored_hash):
                return  # the current parameters: it already cost what the dummy costs
        except InvalidHashError:
            pass
    dummy_verify(password)
