"""The exit-code table as HTTP statuses (usersctl.service.HTTP_STATUS), and error bodies
`{"detail": "..."}` that never echo the input back (a password may be in it)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from usersctl.errors import DatabaseUnavailable, UsersctlError
from usersctl.service import http_status

BEARER = {"WWW-Authenticate": "Bearer"}
RETRY = {"Retry-After": "1"}  # the database busy or unreachable: worth another try


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = BEARER if status == 401 else headers
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UsersctlError)
    if isinstance(exc, DatabaseUnavailable):
        return error_response(http_status(exc), unplaced(exc.message, request), RETRY)
    return error_response(http_status(exc), http_wording(exc.message))


def http_wording(message: str) -> str:
    """A domain error's words for an HTTP client: without the hints that name the CLI's
    options (the password policy's --random-password)."""
    from usersctl import rules

    return message.replace(rules.PASSWORD_ACCEPTED, rules.PASSWORD_ACCEPTED_HTTP)


def unplaced(message: str, request: Request) -> str:
    """The message without where the database is (a file path, a host): the commands show
    it to the admin; an HTTP client has no business knowing it."""
    database = request.app.state.server.database
    url = database.engine.url
    places = {database.display_url, str(url.database or ""), str(database.sqlite_path or "")}
    for place in sorted((p for p in places if p), key=len, reverse=True):
        message = message.replace(f"no database at {place}", "the database file is missing")
        message = message.replace(f"database {place}", "the database")
        message = message.replace(place, "the database")
    return message


def _problem(error: Any) -> str:
    """usersctl's wording (usersctl.rules) for one problem pydantic found in a request: never
    pydantic's own words, never the value."""
    from usersctl import rules

    kind = error.get("type", "")
    where = [str(part) for part in error.get("loc", ())]
    if kind in ("json_invalid", "model_attributes_type", "dict_type"):
        return rules.NOT_JSON
    name = ".".join(where[1:]) if where and where[0] in LOCATIONS else ".".join(where)
    name = rules.cut({"user_id": "id"}.get(name, name))
    if kind == "missing":
        return rules.MISSING_FIELD.format(name)
    if kind == "extra_forbidden":
        return rules.UNKNOWN_FIELD.format(name)
    if kind == "string_type":
        return rules.NOT_TEXT.format(name)
    if name in rules.FIELD_RULES:
        return rules.FIELD_RULES[name]
    if name in NUMBER_RANGES:
        return rules.NUMBER_RANGE.format(name, *NUMBER_RANGES[name])
    if kind.startswith("int_"):
        return rules.WHOLE_NUMBER.format(name)
    return f"invalid {name}"


LOCATIONS = ("body", "query", "path", "header", "cookie")
NUMBER_RANGES = {"limit": (0, 1000), "offset": (0, 2**62)}  # = the routes' Query bounds


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = dict.fromkeys(_problem(error) for error in exc.errors())
    return error_response(422, "; ".join(problems))


# FastAPI's words (fastapi/routing.py) for a body json.loads gave up on with something other
# than a syntax error: nested too deep (RecursionError), a number of more than 4,300 digits
# (ValueError), bytes that are not UTF-8. A syntax error is a RequestValidationError.
UNPARSABLE_BODY = "There was an error parsing the body"


def unparsable_body(exc: HTTPException) -> bool:
    """Whether `exc` is FastAPI's 400 for a request body it could not parse."""
    return exc.status_code == 400 and exc.detail == UNPARSABLE_BODY and exc.__cause__ is not None


async def _http_error(request: Request, exc: Exception) -> Response:
    """A malformed body is 422 in usersctl's words, as a truncated one is; every other
    HTTPException (405, 413, ...) is answered as FastAPI would."""
    from fastapi.exception_handlers import http_exception_handler

    from usersctl import rules

    assert isinstance(exc, HTTPException)
    if unparsable_body(exc):
        return error_response(422, rules.NOT_JSON)
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(UsersctlError, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
