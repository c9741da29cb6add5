"""Request and response bodies of the HTTP API (OpenAPI shows each with an example).

Users render exactly as `usersctl get -o json` (usersctl.records.user_record); input is
validated again by usersctl.schemas, as for the CLI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

USER_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "user",
    "active": True,
    "created_at": "2026-12-01T09:00:00Z",
    "updated_at": "2026-12-01T09:00:00Z",
    "last_login_at": None,
    "password_changed_at": "2026-12-01T09:00:00Z",
    "expires_at": None,
    "must_change_password": False,
    "locked": False,
    "has_password": True,
    "source": None,
    "external_id": None,
}
ENTRY_EXAMPLE: dict[str, Any] = {
    "action": "update",
    "user_id": 1,
    "email": "ada@example.com",
    "changes": {"role": {"before": "user", "after": "admin"}},
}


class UserOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [USER_EXAMPLE]})

    id: int
    name: str
    email: str
    role: str
    active: bool
    created_at: str
    updated_at: str
    last_login_at: str | None
    password_changed_at: str | None
    expires_at: str | None
    must_change_password: bool
    locked: bool
    has_password: bool
    source: str | None
    external_id: str | None


class PlannedChange(BaseModel):
    """What a `?dry_run=true` request would write to the audit trail."""

    model_config = ConfigDict(json_schema_extra={"examples": [ENTRY_EXAMPLE]})

    action: str
    user_id: int | None
    email: str | None
    changes: dict[str, Any]


class UserCreateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "password": "an orrery of brass",
                }
            ]
        },
    )

    name: str
    email: str
    password: str = Field(repr=False)
    role: str = "user"
    active: bool = True
    must_change_password: bool = False
    expires_at: str | None = Field(default=None, description="ISO-8601, or a duration: 90d")


class UserPutIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "Ada King", "email": "ada@example.com", "role": "admin"}]
        },
    )

    name: str
    email: str
    role: str
    expires_at: str | None = Field(default=None, description="ISO-8601, a duration, or null")


class UserPatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "admin"}]})

    name: str | None = None
    email: str | None = None
    role: str | None = None
    expires_at: str | None = Field(default=None, description="ISO-8601, a duration, or never")


class PasswordIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"password": "a new and long passphrase"}]},
    )

    password: str = Field(repr=False)
    must_change_password: bool = False


class OwnPasswordIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"current_password": "an orrery of brass", "new_password": "a difference engine"}
            ]
        },
    )

    current_password: str = Field(repr=False)
    new_password: str = Field(repr=False)


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"access_token": "eyJhbGciOi...", "token_type": "bearer", "expires_in": 900}
            ]
        }
    )

    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Detail(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "user not found: 7"}]})

    detail: str
