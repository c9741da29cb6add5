"""Pydantic schemas: what users may give (UserCreate, UserUpdate) and what is ever shown
of a user (UserPublic: never the password hash).

Validation of user input lives here and only here. email-validator is imported on first
use, so the commands that only read never pay for it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from usersctl.errors import InvalidData
from usersctl.models import NAME_LENGTH, ROLE_LENGTH

ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


def clean_name(value: str) -> str:
    """Trim; 1-200 characters; no control characters (they would corrupt terminals/files)."""
    value = value.strip()
    if not value:
        raise ValueError("name must not be empty")
    if len(value) > NAME_LENGTH:
        raise ValueError(f"name must be at most {NAME_LENGTH} characters")
    if value.isprintable():  # fast path: no Cc/Zl/Zp/Cs (nor Cf, which are allowed)
        return value
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ValueError(f"name must not contain control characters (found U+{ord(char):04X})")
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
    local, _, domain = value.partition("@")
    if len(value) > 254 or len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    if not _SIMPLE_EMAIL.fullmatch(value):
        return None
    lowered = value.lower()
    domain = lowered.rpartition("@")[2]
    single_labels, suffixes = _special_use_domains()
    if domain.rpartition(".")[2] in single_labels or domain.endswith(suffixes):
        return None
    return lowered


@functools.cache
def _special_use_domains() -> tuple[frozenset[str], tuple[str, ...]]:
    """email-validator's special-use domains: single labels, and multi-label suffixes."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    single = frozenset(name for name in SPECIAL_USE_DOMAIN_NAMES if "." not in name)
    multi = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES if "." in name)
    return single, multi


def normalize_email(value: str) -> str:
    """Trimmed, syntax-checked (no DNS), normalized by email-validator, then lowercased."""
    value = value.strip()
    simple = _simple_email(value)
    if simple is not None:
        return simple
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.normalized.lower()


ModelT = TypeVar("ModelT", bound=BaseModel)

Name = Annotated[str, AfterValidator(clean_name)]
Email = Annotated[str, AfterValidator(normalize_email)]
Role = Annotated[str, StringConstraints(pattern=ROLE_PATTERN, max_length=ROLE_LENGTH)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    role: Role = "user"
    is_active: bool = True
    expires_at: AwareDatetime | None = None
    must_change_password: bool = False


class UserUpdate(BaseModel):
    """Every field optional; applied with `model_dump(exclude_unset=True)`."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None
    role: Role | None = None
    expires_at: AwareDatetime | None = None  # given as None: never expires


def check_password_hash(value: str) -> str:
    from usersctl.passwords import is_valid_hash

    if not is_valid_hash(value):
        raise ValueError("must be a well-formed argon2 ($argon2id$...) or bcrypt ($2b$...) hash")
    return value


class UserImport(BaseModel):
    """One row of `usersctl import`: every column `export` writes, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    role: Role = "user"
    active: bool = True
    password: str | None = Field(default=None, min_length=8, max_length=1024, repr=False)
    password_hash: Annotated[str, AfterValidator(check_password_hash)] | None = Field(
        default=None, repr=False
    )
    id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    last_login_at: AwareDatetime | None = None
    password_changed_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    must_change_password: bool = False
    locked: bool = False  # as exported; a lock is transient and is not restored
    has_password: bool = True  # false, with no password columns: an account without one

    @model_validator(mode="after")
    def _one_password(self) -> UserImport:
        given = (self.password is not None) + (self.password_hash is not None)
        if not self.has_password:
            if given:
                raise ValueError("has_password is false but a password is given")
            return self
        if given != 1:
            raise ValueError("give exactly one of password and password_hash")
        return self


IMPORT_COLUMNS = tuple(UserImport.model_fields)


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


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"])
    if not field:  # a whole-row rule (model validator)
        return str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown column {field!r}"
    if error["type"] == "missing":
        return f"missing column {field!r}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "string_pattern_mismatch" and field == "role":
        message = "must be lowercase letters, digits, '_' or '-', starting with a letter"
    return f"invalid {field}: {message}"


def validation_message(exc: ValidationError) -> str:
    """One line for the user: every problem, without echoing the input back."""
    return "; ".join(_describe(error) for error in exc.errors())


def parse(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """Validate `data` into `model`, raising InvalidData (exit 5) on any problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidData(validation_message(exc)) from None
