"""The exit-code table as HTTP statuses (usersctl.service.HTTP_STATUS), and error bodies
`{"detail": "..."}` that never echo the input back (a password may be in it)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from usersctl.errors import UsersctlError
from usersctl.service import http_status

BEARER = {"WWW-Authenticate": "Bearer"}


def error_response(status: int, detail: str) -> JSONResponse:
    headers = BEARER if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UsersctlError)
    return error_response(http_status(exc), exc.message)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    return error_response(422, "invalid request: " + "; ".join(problems))


def install(app: FastAPI) -> None:
    app.add_exception_handler(UsersctlError, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
