"""The FastAPI application factory, and the access log (method, path, status, time, caller:
never a query string, header or body, which may hold a password or token)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI

from usersctl import __version__
from usersctl.api.deps import DEFAULT_READ_THREADS, Server
from usersctl.config import Settings
from usersctl.escaping import printable

log = logging.getLogger("usersctl.access")

# Database connections a server process keeps open, for the requests it has in flight at
# once; past that it opens (and closes after use) up to SERVER_POOL_OVERFLOW more.
SERVER_POOL = 16

DESCRIPTION = """\
The users of an application's database, over HTTP: the same crud layer, transactions,
audit trail and errors as the `usersctl` commands.

Every request except `/healthz` needs `Authorization: Bearer <token>`: an admin API token
(`usersctl token create NAME`) or a login token from `POST /auth/token`.
Errors are `{"detail": "..."}`.
"""


class _HttpMiddleware:
    """Pure ASGI middleware (no per-request task as BaseHTTPMiddleware makes) for HTTP
    requests; anything else (lifespan) passes through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError


class AccessLog(_HttpMiddleware):
    """An unexpected error (a bug) answers 500 `{"detail": ...}` and logs one line naming
    its type: never a traceback, whose messages may hold a statement's parameters (a hash,
    a password)."""

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        status = [0]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # a bug: one line, no traceback, no message
            log_bug(scope, exc)
            if status[0]:  # the answer had begun: all we can do is end the connection
                return
            await _refuse(scope, receive, sending, 500, UNEXPECTED)
        finally:
            caller = scope.get("state", {}).get("caller", "-")
            log.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                printable(scope["path"]),  # anyone's text, percent-decoded: ESC, CR, LF...
                status[0] or 500,
                (time.perf_counter() - started) * 1000,
                printable(caller),
            )


UNEXPECTED = "unexpected error (a bug): see the server log"


def log_bug(scope: Any, exc: BaseException) -> None:
    """The one line a bug gets in the server log: where, and the error's type (never its
    message, which may hold a statement's parameters, nor a traceback)."""
    log.error(
        "unexpected error (a bug) in %s %s: %s",
        scope["method"],
        printable(scope["path"]),
        type(exc).__name__,
    )


# The largest request body read (a user, a password, a SCIM resource are a few KiB). The
# body is read before the credential is checked (FastAPI parses it first): without a bound,
# anyone could make the server hold hundreds of MiB per request.
MAX_BODY = 1 << 20
TOO_LARGE = "request body too large: at most 1 MiB"


class RequestLimits(_HttpMiddleware):
    """Refuses a body over MAX_BODY with 413: at once when Content-Length says so, else
    (a chunked body) as soon as the bytes read pass it. And a query parameter given twice
    with 400 (`?dry_run=true&dry_run=false` must not be "the last one wins")."""

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await _refuse(scope, receive, send, 413, TOO_LARGE)
            return
        problem = _query_problem(scope.get("query_string", b""))
        if problem is not None:
            await _refuse(scope, receive, send, 400, problem)
            return
        read = 0

        async def limited() -> Any:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > MAX_BODY:
                from fastapi import HTTPException

                raise HTTPException(status_code=413, detail=TOO_LARGE)
            return message

        await self.app(scope, limited, send)


MAX_PARAMETERS = 100  # query parameters a request may have (the most any route takes: ~10)


def _query_problem(query: bytes) -> str | None:
    """Why the query string is refused: a parameter given twice (named when it is a plain
    name; a hostile one is not echoed back), or too many of them. One pass: this runs
    before any credential is checked."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(
            query.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_PARAMETERS
        )
    except ValueError:
        return f"too many query parameters: at most {MAX_PARAMETERS}"
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            shown = repr(name) if name.isidentifier() and len(name) <= 40 else "(one of them)"
            return f"the query parameter {shown} is given twice"
        seen.add(name)
    return None


async def _refuse(scope: Any, receive: Any, send: Any, status: int, detail: str) -> None:
    """Answer from a middleware, as the routes would: in the SCIM error schema under
    /scim/, else `{"detail": ...}`; the connection closed (a body may be left unread)."""
    headers = {"connection": "close"}
    if scope["path"].startswith("/scim/"):
        from usersctl.api.scim.errors import error_response as scim_error

        response = scim_error(status, detail, headers=headers)
    else:
        from usersctl.api.errors import error_response

        response = error_response(status, detail, headers)
    await response(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    token_minutes: int = 15,
    scim: bool = False,
    read_threads: int = DEFAULT_READ_THREADS,
    docs: bool = False,
) -> FastAPI:
    from usersctl.api import errors
    from usersctl.api.routes import auth, health, users
    from usersctl.database import Database
    from usersctl.errors import UsageError

    if read_threads < 1:  # (anyio would take 0, and every read would wait forever)
        raise UsageError(f"read threads must be at least 1, not {read_threads}")
    app = FastAPI(
        title="usersctl",
        version=__version__,
        description=DESCRIPTION,
        # Published only on request (serve --docs): every request but /healthz needs a
        # credential (DESIGN.md), and a browser fetching /docs has none to give.
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        redoc_url=None,
    )
    app.state.server = Server(
        settings=settings,
        database=Database(settings, pool_size=SERVER_POOL, require_head=True),
        token_minutes=token_minutes,
        read_threads=read_threads,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(users.router)
    if scim:  # `serve --scim`: SCIM 2.0 at /scim/v2 (usersctl.api.scim)
        from usersctl.api.scim.routes import router as scim_router

        app.include_router(scim_router)
    app.add_middleware(RequestLimits)
    app.add_middleware(AccessLog)  # (outermost: it logs the 413s too)
    return app


def create_app_from_env() -> FastAPI:
    """For `usersctl serve` (also with --workers): settings from the environment and config
    file, as the parent resolved them."""
    import os

    from usersctl.config import load_settings

    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    minutes = int(os.environ.get("USERSCTL_TOKEN_MINUTES", "15"))
    scim = os.environ.get("USERSCTL_SCIM") == "1"
    threads = int(os.environ.get("USERSCTL_READ_THREADS", str(DEFAULT_READ_THREADS)))
    docs = os.environ.get("USERSCTL_DOCS") == "1"
    return create_app(
        load_settings(), token_minutes=minutes, scim=scim, read_threads=threads, docs=docs
    )
