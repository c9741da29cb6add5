"""SCIM errors (RFC 7644 3.12): every failure under /scim/v2 answers in the Error schema,
`{"schemas": [...Error], "status": "409", "scimType": "uniqueness", "detail": "..."}`,
with application/scim+json. The rest of the API keeps its `{"detail": ...}` bodies: the
SCIM routes use their own route class (ScimRoute) that catches what their handlers and
dependencies raise, so nothing else of the app changes.

usersctl's own errors map by their exit code: not found 404, conflict (a taken email)
409 uniqueness, invalid data 400 invalidValue, database unavailable 503; a body json
cannot read is 400 invalidSyntax, and a bug 500 (still in the Error schema).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException  # (FastAPI's own is a subclass of it)

from usersctl.api.errors import RETRY, unparsable_body
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
    """A payload scim2-models refused: its keyword (invalidSyntax, invalidValue...) and, on
    one line, what each attribute must be in usersctl's words (never pydantic's, never the
    value). scim2-models' own refusals (an unknown PATCH op...) keep their words."""
    from scim2_models import Error

    problems = exc.errors()
    errors = Error.from_validation_errors(problems)
    first = errors[0] if errors else Error(status=400, scim_type="invalidValue", detail="invalid")
    details = dict.fromkeys(
        (error.detail or "") if problem["type"].startswith("scim_") else attribute_problem(problem)
        for problem, error in zip(problems[:5], errors[:5], strict=True)
    )
    return ScimProblem(
        first.status or 400, "; ".join(details) or "invalid request", first.scim_type
    )


def _attribute(location: Any) -> str:
    """The SCIM path of what pydantic's `loc` points at: `("user_name",)` -> `userName`,
    `("emails", 0, "value")` -> `emails.value` (pydantic's union members left out)."""

    def camel(part: str) -> str:  # (pydantic names the field: user_name)
        first, *rest = part.split("_")
        return first + "".join(word[:1].upper() + word[1:] for word in rest)

    parts = [
        part if part.startswith("urn:") else camel(part)
        for part in location
        if isinstance(part, str) and "[" not in part and "(" not in part
    ]
    return ".".join(parts)[:200] or "the request"


def attribute_problem(problem: Any) -> str:
    """usersctl's wording (usersctl.rules) for one problem pydantic found in a SCIM payload."""
    from usersctl import rules

    kind = str(problem.get("type", ""))
    name = _attribute(problem.get("loc", ()))
    if kind == "missing":
        return f"missing attribute {name}"
    if kind.startswith("string_"):
        return rules.NOT_TEXT.format(name)
    if kind.startswith("bool_"):  # (= rules.FIELD_RULES["active"] for active)
        return f"invalid {name}: must be true or false"
    if kind.startswith("int_"):
        return rules.WHOLE_NUMBER.format(name)
    if kind.startswith("list_"):
        return f"invalid {name}: must be a list"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        listed = any(isinstance(part, int) for part in problem.get("loc", ()))
        return f"invalid {name}: must be {'a list of objects' if listed else 'an object'}"
    if kind.startswith(("datetime_", "date_", "time_")):
        return f"invalid {name}: must be an ISO-8601 time with a time zone"
    return f"invalid {name}"


def from_scim_exception(exc: Exception) -> ScimProblem:
    from scim2_models import SCIMException

    assert isinstance(exc, SCIMException)
    return ScimProblem(exc.status, exc.detail, exc.scim_type or None)


def _domain(exc: UsersctlError) -> ScimProblem:
    from usersctl.api.errors import http_wording

    message = http_wording(exc.message)
    if isinstance(exc, Conflict):
        return ScimProblem(409, message, "uniqueness")
    if isinstance(exc, InvalidData | UsageError):
        return ScimProblem(400, message, "invalidValue")
    if isinstance(exc, NotFound):
        return ScimProblem(404, message)
    return ScimProblem(http_status(exc), message)


NOT_JSON = "the body must be a SCIM JSON object"


def _request_problem(exc: RequestValidationError) -> ScimProblem:
    for error in exc.errors():
        where = [str(part) for part in error.get("loc", ())]
        if where[:1] == ["body"]:
            return ScimProblem(400, NOT_JSON, "invalidSyntax")
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
        return _domain(exc), None
    if isinstance(exc, HTTPException) and unparsable_body(exc):
        return ScimProblem(400, NOT_JSON, "invalidSyntax"), None
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


def unexpected(exc: Exception, request: Request) -> JSONResponse:
    """A bug: the app's one log line (usersctl.api.app.AccessLog's, naming the error's type,
    never its message or a traceback) and its 500, in the SCIM error schema."""
    from usersctl.api.app import UNEXPECTED, log_bug

    log_bug(request.scope, exc)
    return error_response(500, UNEXPECTED)


class ScimRoute(APIRoute):
    """A route whose every failure, its dependencies' too (401, 403), is a SCIM Error: a
    bug's 500 too, which the app's AccessLog would answer as `{"detail": ...}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def scim_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                found = problem_for(exc, request)
                if found is None:
                    return unexpected(exc, request)
                problem, headers = found
                return error_response(problem.status, problem.detail, problem.scim_type, headers)

        return scim_handler
