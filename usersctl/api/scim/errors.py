"""SCIM errors (RFC 7644 3.12): every failure under /scim/v2 answers in the Error schema,
`{"schemas": [...Error], "status": "409", "scimType": "uniqueness", "detail": "..."}`,
with application/scim+json. The rest of the API keeps its `{"detail": ...}` bodies: the
SCIM routes use their own route class (ScimRoute) that catches what their handlers and
dependencies raise, so nothing else of the app changes.

usersctl's own errors map by their exit code: not found 404, conflict (a taken email)
409 uniqueness, invalid data 400 invalidValue, database unavailable 503.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from usersctl.api.errors import RETRY
from usersctl.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidData,
    NotFound,
    UsageError,
    UsersctlError,
)
from usersctl.service import http_status

MEDIA_TYPE = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimProblem(Exception):
    """A failure to answer in the SCIM error schema."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def error_response(
    status: int, detail: str, scim_type: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def from_validation(exc: ValidationError) -> ScimProblem:
    """A payload scim2-models refused: its keyword (invalidSyntax, invalidValue...) and a
    message naming the attribute (pydantic's messages never echo the value)."""
    from scim2_models import Error

    errors = Error.from_validation_errors(exc)
    first = errors[0] if errors else Error(status=400, scim_type="invalidValue", detail="invalid")
    details = "; ".join(e.detail or "" for e in errors[:5])
    return ScimProblem(first.status or 400, details or "invalid request", first.scim_type)


def from_scim_exception(exc: Exception) -> ScimProblem:
    from scim2_models import SCIMException

    assert isinstance(exc, SCIMException)
    return ScimProblem(exc.status, exc.detail, exc.scim_type or None)


def _domain(exc: UsersctlError) -> ScimProblem:
    if isinstance(exc, Conflict):
        return ScimProblem(409, exc.message, "uniqueness")
    if isinstance(exc, InvalidData | UsageError):
        return ScimProblem(400, exc.message, "invalidValue")
    if isinstance(exc, NotFound):
        return ScimProblem(404, exc.message)
    return ScimProblem(http_status(exc), exc.message)


def _request_problem(exc: RequestValidationError) -> ScimProblem:
    for error in exc.errors():
        where = [str(part) for part in error.get("loc", ())]
        if where[:1] == ["body"]:
            return ScimProblem(400, "the body must be a SCIM JSON object", "invalidSyntax")
        if where[:1] == ["query"] and len(where) > 1:
            return ScimProblem(400, f"invalid query parameter {where[1]}", "invalidValue")
    return ScimProblem(400, "invalid request", "invalidSyntax")


def problem_for(
    exc: Exception, request: Request
) -> tuple[ScimProblem, dict[str, str] | None] | None:
    """The SCIM problem for what a handler raised, or None for a bug."""
    from scim2_models import SCIMException

    from usersctl.api.errors import unplaced

    if isinstance(exc, ScimProblem):
        return exc, None
    if isinstance(exc, DatabaseUnavailable):
        return ScimProblem(http_status(exc), unplaced(exc.message, request)), RETRY
    if isinstance(exc, UsersctlError):
        return _domain(exc), RETRY if isinstance(exc, DatabaseUnavailable) else None
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return ScimProblem(exc.status_code, detail), dict(exc.headers or {}) or None
    if isinstance(exc, RequestValidationError):
        return _request_problem(exc), None
    if isinstance(exc, SCIMException):
        return from_scim_exception(exc), None
    if isinstance(exc, ValidationError):
        return from_validation(exc), None
    return None


class ScimRoute(APIRoute):
    """A route whose every failure, its dependencies' too (401, 403), is a SCIM Error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def scim_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                found = problem_for(exc, request)
                if found is None:
                    raise
                problem, headers = found
                return error_response(problem.status, problem.detail, problem.scim_type, headers)

        return scim_handler
