"""Pydantic schemas: what users may give (UserCreate, UserUpdate) and what is ever shown
of a user (UserPublic: never the password hash).

Validation of user input lives here and only here. email-validator is imported on first
use, so the commands that only read never pay for it.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
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
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ValueError(f"name must not contain control characters (found U+{ord(char):04X})")
    return value


def normalize_email(value: str) -> str:
    """Trimmed, syntax-checked (no DNS), normalized by email-validator, then lowercased."""
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(value.strip(), check_deliverability=False)
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


class UserUpdate(BaseModel):
    """Every field optional; applied with `model_dump(exclude_unset=True)`."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None
    role: Role | None = None


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


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "value"
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
