"""A user as both front ends show it: the public schema's fields as output-ready values
(ISO 8601 UTC times), never the hash. `usersctl get -o json` and the HTTP API's user
bodies are this record."""

from __future__ import annotations

from typing import Any

from usersctl.timestamps import iso_utc

TIME_FIELDS = ("created_at", "updated_at", "last_login_at", "password_changed_at", "expires_at")


def user_record(user: Any) -> dict[str, Any]:
    """A user (ORM object) through the public schema, as output-ready values.

    Call it inside the session. Only UserPublic's fields exist here: never the hash.
    """
    from usersctl.schemas import UserPublic

    record = UserPublic.model_validate(user).model_dump()
    for name in TIME_FIELDS:
        value = record[name]
        record[name] = None if value is None else iso_utc(value)
    return record
