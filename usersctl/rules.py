"""The one wording of every validation rule, shared by the commands and import rows.

Each message is complete (`invalid name: ...`), so `create --name ''` and an import row
with an empty name say the same thing. No heavy imports here: the password prompt and the
schemas both use it.
"""

from __future__ import annotations

PASSWORD_MIN_LENGTH_FLOOR = 8  # config password_min_length may lower the minimum to this
PASSWORD_MIN_LENGTH = 15  # the default minimum (NIST SP 800-63B-4, single-factor)
PASSWORD_MAX_LENGTH = 1024
# The columns' sizes (usersctl.models), here where validation reads them without loading
# SQLAlchemy (an import's validating child process never needs it).
NAME_LENGTH = 200
EMAIL_LENGTH = 320
ROLE_LENGTH = 32
HASH_LENGTH = 255
SOURCE_LENGTH = 64
EXTERNAL_ID_LENGTH = 255
ACTOR_LENGTH = 200
ACTION_LENGTH = 32
ID_MAX = 2**31 - 1

QUOTED_MAX = 40  # characters of a refused name or key a message quotes (not the value)


def cut(text: str) -> str:
    """A name or key the user gave, as a message quotes it: at most QUOTED_MAX characters
    (an error never hands a long input back)."""
    return text if len(text) <= QUOTED_MAX else text[:QUOTED_MAX] + "..."


NAME_EMPTY = "invalid name: must not be empty"
NAME_TOO_LONG = f"invalid name: at most {NAME_LENGTH} characters are allowed"
NAME_INVISIBLE = "invalid name: must not contain control or invisible characters (found U+{:04X})"
NAME_ONLY_INVISIBLE = "invalid name: must contain a visible character"
EMAIL_INVALID = "invalid email: {}"
ROLE_INVALID = (
    "invalid role: must be 1-32 lowercase letters, digits, '_' or '-', starting with a letter"
)
PASSWORD_ACCEPTED_HTTP = "try a passphrase of several unrelated words"
PASSWORD_ACCEPTED = PASSWORD_ACCEPTED_HTTP + ", or --random-password"  # (the CLI's option)
PASSWORD_TOO_SHORT = (
    "password too short: {length} characters, at least {minimum} are required ("
    + PASSWORD_ACCEPTED
    + ")"
)
PASSWORD_TOO_LONG = f"password too long: at most {PASSWORD_MAX_LENGTH} characters are allowed"
PASSWORD_GUESSABLE = "password too easy to guess: {} (" + PASSWORD_ACCEPTED + ")"
PASSWORD_ON_CONTEXT = "it is built on your name, email or the service name"
PASSWORD_HASH_INVALID = (
    "invalid password_hash: must be a well-formed argon2 ($argon2id$...) or bcrypt ($2b$...) hash"
)
ONE_PASSWORD = "give at most one of password and password_hash"
SOURCE_INVALID = (
    "invalid source: 1-64 characters: lowercase letters, digits, '_', '.', '-', "
    "starting with a letter or digit"
)

# What a field must be, for any problem pydantic itself finds (a wrong type, a number out
# of range, an unparsable timestamp): pydantic's own words never reach the user.
FIELD_RULES = {
    "role": ROLE_INVALID,
    "source": SOURCE_INVALID,
    "active": "invalid active: must be true or false",
    "is_active": "invalid active: must be true or false",
    "password_hash": PASSWORD_HASH_INVALID,
    "id": f"invalid id: must be a whole number from 1 to {ID_MAX}",
    **{
        name: f"invalid {name}: must be an ISO-8601 time with a time zone, e.g. "
        "2026-01-31T09:00:00Z"
        for name in ("created_at", "updated_at", "last_login_at", "password_changed_at")
    },
    "expires_at": (
        "invalid expires_at: give a date (2027-06-30: its midnight UTC), an ISO-8601 time "
        "(2027-06-30T12:00:00Z; without an offset, UTC) or never"
    ),
}
STORED_NUL = "invalid {}: must not contain NUL (U+0000), which no database engine stores"
# A lone surrogate (U+D800-U+DFFF, e.g. JSON's "\ud800") is not text: no database stores it
# and argon2 cannot hash it.
NOT_UNICODE = "invalid {}: must be valid Unicode text (found a lone surrogate, U+{:04X})"
NOT_UNICODE_HINT = "; is the input UTF-8?"
NUL_IN_TEXT = "invalid text: must not contain NUL characters (U+0000)"
MOMENT_RANGE = "invalid {}: out of range once converted to UTC (years 1 to 9999)"
NOT_TEXT = "invalid {}: must be text"
UNKNOWN_COLUMN = "unknown column {!r}"
MISSING_COLUMN = "missing column {!r}"
# The HTTP API's request bodies and parameters (fields, not columns).
UNKNOWN_FIELD = "unknown field {!r}"
MISSING_FIELD = "missing field {!r}"
WHOLE_NUMBER = "invalid {}: must be a whole number"
NUMBER_RANGE = "invalid {}: must be a whole number from {} to {}"
NOT_JSON = "invalid request body: not a JSON object"


def email_reason(message: str) -> str:
    """email-validator's sentence as a clause: `An email address must have an @-sign.` ->
    `an email address must have an @-sign`, so that clauses join cleanly with `; `."""
    message = message.strip().rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    return EMAIL_INVALID.format(message)


def unicode_problem(field: str, value: str) -> str | None:
    """Why `value` is no text a database can hold or match, or None: a lone surrogate, which
    is what Python makes of an argument's bytes that are not UTF-8 (a line of a Latin-1
    file given as an argument, a C locale)."""
    surrogate = lone_surrogate(value)
    return None if surrogate is None else NOT_UNICODE.format(field, surrogate) + NOT_UNICODE_HINT


def lone_surrogate(value: str) -> int | None:
    """The first lone surrogate's code point in `value`, if any."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return ord(value[exc.start])
    return None


def password_length(password: str) -> int:
    """Length in Unicode code points after NFKC normalisation (NIST SP 800-63B-4)."""
    import unicodedata

    return len(unicodedata.normalize("NFKC", password))


def password_problem(password: str, *, min_length: int = PASSWORD_MIN_LENGTH) -> str | None:
    """The length rules' message for `password`, or None when its length is acceptable (the
    rest of the policy, guessability, is usersctl.password_policy.check)."""
    if len(password) > PASSWORD_MAX_LENGTH:
        return PASSWORD_TOO_LONG
    surrogate = lone_surrogate(password)
    if surrogate is not None:
        return NOT_UNICODE.format("password", surrogate)
    length = password_length(password)
    if length < min_length:
        return PASSWORD_TOO_SHORT.format(length=length, minimum=min_length)
    return None
