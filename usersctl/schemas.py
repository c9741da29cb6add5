"""Pydantic schemas: what users may give (UserCreate, UserUpdate) and what is ever shown
of a user (UserPublic: never the password hash).

Validation of user input lives here and only here. email-validator is imported on first
use, so the commands that only read never pay for it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, KeysView
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from usersctl import rules
from usersctl.errors import InvalidData
from usersctl.rules import (
    EMAIL_LENGTH,
    EXTERNAL_ID_LENGTH,
    NAME_LENGTH,
    ROLE_LENGTH,
    SOURCE_LENGTH,
)

ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # a sync source's name (users.source)
# Control characters, and format characters (Cf: the bidi overrides such as U+202E, the
# zero-width space U+200B, the byte-order mark...) which are invisible or reorder what a
# terminal shows. The zero-width joiners are kept: Persian and Indic spelling and emoji
# sequences need them.
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_JOINERS = frozenset("\u200c\u200d")
# Letters that display as nothing (the Hangul fillers): a name of only these is blank.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
_FILLER = re.compile("[\u115f\u1160\u3164\uffa0]")


def first_invisible(value: str) -> str | None:
    """The first control or invisible format character in `value` (the joiners aside), or
    None: what a name, or an identity provider's id, may not hold."""
    if value.isprintable():
        return None
    return next(
        (
            c
            for c in value
            if c not in _JOINERS and unicodedata.category(c) in _FORBIDDEN_CATEGORIES
        ),
        None,
    )


def clean_name(value: str) -> str:
    """Trim; 1-200 characters; no control or invisible format characters (they would
    corrupt terminals and files, or hide what a name really says); something visible."""
    value = value.strip()
    if not value:
        raise ValueError(rules.NAME_EMPTY)
    if len(value) > NAME_LENGTH:
        raise ValueError(rules.NAME_TOO_LONG)
    if value.isprintable() and not _FILLER.search(value):  # fast path: no Cc/Cf/Zl/Zp/Cs
        return value
    visible = False
    for char in value:
        if char in _JOINERS:
            continue
        category = unicodedata.category(char)
        if category == "Cs":  # a lone surrogate: bytes that were not UTF-8
            raise ValueError(rules.NOT_UNICODE.format("name", ord(char)))
        if category in _FORBIDDEN_CATEGORIES:
            raise ValueError(rules.NAME_INVISIBLE.format(ord(char)))
        if not (char.isspace() or char in _FILLERS):
            visible = True
    if not visible:
        raise ValueError(rules.NAME_ONLY_INVISIBLE)
    return value


# A strict subset of what email-validator accepts, for which its normalization is plain
# lowercasing: ASCII dot-atoms, LDH domain labels without "--", a letters-only TLD.
# Checking it costs ~1 us instead of ~18 us, which is what makes bulk import fast; anything
# else goes through email-validator. tests/test_schemas.py checks the two agree.
_SIMPLE_EMAIL = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
    re.IGNORECASE | re.ASCII,
)


def _simple_email(value: str) -> str | None:
    if len(value) > 254 or not _SIMPLE_EMAIL.fullmatch(value):
        return None
    lowered = value.lower()
    local, _, domain = lowered.partition("@")  # (the pattern allows one @ only)
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    single_labels, suffixes = _REFUSED or _special_use_domains()
    if domain.rpartition(".")[2] in single_labels or domain.endswith(suffixes):
        return None
    return lowered


# Special-use domains that organisations really run mail on (RFC 6762 .local, RFC 8375
# home.arpa, RFC 6761 localhost and .test) are accepted; .invalid and .onion, which never
# route mail, stay refused. email-validator documents SPECIAL_USE_DOMAIN_NAMES as the list
# to edit for this.
ACCEPTED_SPECIAL_USE = ("arpa", "local", "localhost", "test")
# The one single-label domain accepted (`root@localhost`); `ada@examplecom` stays a typo.
_SINGLE_LABEL = "localhost"


_REFUSED: tuple[frozenset[str], tuple[str, ...]] | None = None  # _special_use_domains()


def _special_use_domains() -> tuple[frozenset[str], tuple[str, ...]]:
    """The special-use domains still refused: single labels, and multi-label suffixes;
    worked out (and email-validator configured) once, then kept in _REFUSED."""
    global _REFUSED
    if _REFUSED is not None:
        return _REFUSED
    import email_validator

    refused = list(email_validator.SPECIAL_USE_DOMAIN_NAMES)
    for name in ACCEPTED_SPECIAL_USE:
        if name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
            email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(name)
        if name in refused:
            refused.remove(name)
    single = frozenset(name for name in refused if "." not in name)
    multi = tuple(f".{name}" for name in refused if "." in name)
    _REFUSED = single, multi
    return _REFUSED


def normalize_email(value: str) -> str:
    """Trimmed, syntax-checked (no DNS), normalized by email-validator, then lowercased."""
    value = value.strip()
    simple = _simple_email(value)
    if simple is not None:
        return simple
    surrogate = rules.lone_surrogate(value)
    if surrogate is not None:  # bytes that were not UTF-8 (an argument, a file)
        raise ValueError(rules.NOT_UNICODE.format("email", surrogate))
    _special_use_domains()  # email-validator configured before its first use
    from email_validator import EmailNotValidError, validate_email

    domain = value.rpartition("@")[2].lower().rstrip(".")
    try:
        result = validate_email(
            value, check_deliverability=False, globally_deliverable=domain != _SINGLE_LABEL
        )
    except EmailNotValidError as exc:
        raise ValueError(rules.email_reason(str(exc))) from None
    return result.normalized.lower()


def in_utc(value: datetime) -> datetime:
    """An aware time converted to UTC, as stored and shown (also in a dry run's plan); one
    that UTC cannot hold (9999-12-31T23:00:00-05:00) is refused here, not when written."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("moment_range", "out of range") from None


ModelT = TypeVar("ModelT", bound=BaseModel)

Moment = Annotated[AwareDatetime, AfterValidator(in_utc)]
Name = Annotated[str, AfterValidator(clean_name)]
Email = Annotated[str, AfterValidator(normalize_email)]
Role = Annotated[str, StringConstraints(pattern=ROLE_PATTERN, max_length=ROLE_LENGTH)]
Source = Annotated[str, StringConstraints(pattern=SOURCE_PATTERN, max_length=SOURCE_LENGTH)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    role: Role = "user"
    is_active: bool = True
    expires_at: Moment | None = None
    must_change_password: bool = False


class UserUpdate(BaseModel):
    """Every field optional; applied with `model_dump(exclude_unset=True)`."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None
    role: Role | None = None
    expires_at: Moment | None = None  # given as None: never expires
    source: Source | None = None  # given as None: managed by hand (external_id cleared too)


_hash_problem: Callable[[str], str | None] | None = None  # passwords.hash_problem, once loaded


def check_password_hash(value: str) -> str:
    # (An import statement here would cost more than the check itself, once a row.)
    global _hash_problem
    if _hash_problem is None:
        from usersctl.passwords import hash_problem

        _hash_problem = hash_problem
    problem = _hash_problem(value)
    if problem is not None:
        raise ValueError(f"invalid password_hash: {problem}")
    return value


def check_password(value: str) -> str:
    """The maximum length; the policy proper (the configured minimum, guessability) is
    checked by import with the config at hand, in the same words as create."""
    problem = rules.password_problem(value, min_length=0)
    if problem is not None:
        raise ValueError(problem)
    return value


class _ImportIdentity(TypedDict):
    name: Name
    email: Email
    role: NotRequired[Role]


def _stored(field: str, limit: int, *, empty: bool) -> Any:
    """A value kept exactly as a backup holds it: only what every engine can store."""

    def check(value: str) -> str:
        if not value and not empty:
            raise ValueError(f"invalid {field}: must not be empty")
        if len(value) > limit:
            raise ValueError(f"invalid {field}: at most {limit} characters are allowed")
        if "\x00" in value:
            raise ValueError(rules.STORED_NUL.format(field))
        surrogate = rules.lone_surrogate(value)
        if surrogate is not None:
            raise ValueError(rules.NOT_UNICODE.format(field, surrogate))
        return value

    return Annotated[str, AfterValidator(check)]


class _RestoreIdentity(TypedDict):
    """A restore (a usersctl backup) keeps name, email and role exactly as stored, also
    values today's rules refuse (a database adopted from the tutorial app may hold
    `not-an-email`); their types, lengths and uniqueness are still checked. See README,
    "Bulk import and export"."""

    name: _stored("name", NAME_LENGTH, empty=True)  # type: ignore[valid-type]
    email: _stored("email", EMAIL_LENGTH, empty=False)  # type: ignore[valid-type]
    role: NotRequired[_stored("role", ROLE_LENGTH, empty=False)]  # type: ignore[valid-type]


def _expiry_as_written(value: Any) -> Any:
    """An import's expires_at as people write it, read as `--expires` reads it: a date is
    its midnight UTC, a time without an offset is UTC, `never` is no expiry."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() == "never":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(rules.FIELD_RULES["expires_at"]) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Expiry = Annotated[Moment | None, BeforeValidator(_expiry_as_written)]


class _ImportRest(TypedDict, total=False):
    active: bool
    password: Annotated[str, AfterValidator(check_password)] | None
    password_hash: Annotated[str, AfterValidator(check_password_hash)] | None
    id: Annotated[int, Field(ge=1, le=rules.ID_MAX)] | None
    created_at: Moment | None
    updated_at: Moment | None
    last_login_at: Moment | None
    password_changed_at: Moment | None
    expires_at: Expiry
    must_change_password: bool
    locked: bool
    has_password: bool
    source: Source | None
    external_id: Annotated[str, StringConstraints(max_length=EXTERNAL_ID_LENGTH)] | None


@with_config(ConfigDict(extra="forbid"))
class _ImportFields(_ImportIdentity, _ImportRest):
    pass


@with_config(ConfigDict(extra="forbid"))
class _RestoreFields(_RestoreIdentity, _ImportRest):
    pass


class UserImport:
    """One validated row of `usersctl import`: every column `export` writes, and nothing
    else. The columns the row gave are attributes (`given` names them); those it left out
    read as the defaults below.

    Not a pydantic model: an import validates a TypedDict (in pydantic-core, against the
    same annotated types) and wraps the resulting dict, which costs half of what building a
    model instance per row does (README, "Performance")."""

    name: str
    email: str
    role: str = "user"
    active: bool = True
    password: str | None = None
    password_hash: str | None = None
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_login_at: datetime | None = None
    password_changed_at: datetime | None = None
    expires_at: datetime | None = None
    must_change_password: bool = False
    locked: bool = False  # as exported; a lock is transient and is not restored
    has_password: bool = True  # as exported; false with a password given is refused
    source: str | None = None  # as exported; kept only by --restore
    external_id: str | None = None

    @property
    def given(self) -> KeysView[str]:
        """The columns the row gave (also those given as null)."""
        return self.__dict__.keys()

    @property
    def gives_password(self) -> bool:
        return self.password is not None or self.password_hash is not None

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if k not in ("password", "password_hash")}
        return f"UserImport({shown!r})"

    @classmethod
    def of(cls, fields: dict[str, Any]) -> UserImport:
        """The row whose validated columns are `fields` (kept, not copied)."""
        row = object.__new__(cls)
        row.__dict__ = fields
        return row


def _import_row(fields: dict[str, Any]) -> UserImport:
    """At most one password column. A new user from a row without one has no password
    (has_password false); an existing user's password is left as it is."""
    password, password_hash = fields.get("password"), fields.get("password_hash")
    if password is not None and password_hash is not None:
        raise ValueError(rules.ONE_PASSWORD)
    if not fields.get("has_password", True) and (password is not None or password_hash):
        raise ValueError("has_password is false but a password is given")
    row = object.__new__(UserImport)  # (UserImport.of, without a call: once a row)
    row.__dict__ = fields
    return row


@functools.cache
def import_validator(restore: bool = False) -> Callable[[Any], UserImport]:
    """Validates one record (a dict) of an import, or of a restore, into a UserImport;
    raises pydantic's ValidationError (see validation_message)."""
    fields = _RestoreFields if restore else _ImportFields
    shape = Annotated[fields, AfterValidator(_import_row)]  # type: ignore[valid-type]
    adapter: TypeAdapter[UserImport] = TypeAdapter(shape)
    return adapter.validator.validate_python


IMPORT_COLUMNS = tuple(_ImportFields.__annotations__)


class UserPublic(BaseModel):
    """The public view of a user, the only shape any output format renders."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    id: int
    name: str
    email: str
    role: str
    active: bool = Field(validation_alias="is_active")
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = None
    password_changed_at: datetime | None = None
    expires_at: datetime | None = None
    must_change_password: bool = False
    locked: bool = False
    has_password: bool = True
    source: str | None = None  # the sync source (or "scim") that manages the user
    external_id: str | None = None  # the identity provider's id for it (SCIM externalId)


def _describe(error: Any) -> str:
    """usersctl's wording (usersctl.rules) for one problem: never pydantic's."""
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "value_error":  # our own validators: already in usersctl's words
        return str(error["ctx"]["error"])
    if not field:
        return "invalid row"
    if error["type"] == "extra_forbidden":
        return rules.UNKNOWN_COLUMN.format(field)
    if error["type"] == "missing":
        return rules.MISSING_COLUMN.format(field)
    if error["type"] == "string_unicode":  # pydantic's own check, on constrained strings
        return rules.NOT_UNICODE.format(field, rules.lone_surrogate(str(error["input"])) or 0)
    if error["type"] == "moment_range":
        return rules.MOMENT_RANGE.format(field)
    if error["type"] == "string_type":
        return rules.NOT_TEXT.format(field)
    return rules.FIELD_RULES.get(field, f"invalid {field}")


def validation_message(exc: ValidationError) -> str:
    """One line for the user: every problem, without echoing the input back."""
    return "; ".join(_describe(error) for error in exc.errors())


def parse(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """Validate `data` into `model`, raising InvalidData (exit 5) on any problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidData(validation_message(exc)) from None
