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


class AccessLog:
    """Pure ASGI middleware (no per-request task as BaseHTTPMiddleware makes). An unexpected
    error (a bug) answers 500 `{"detail": ...}` and logs one line naming its type: never a
    traceback, whose messages may hold a statement's parameters (a hash, a password)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # a bug: one line, no traceback, no message
            log.error(
                "unexpected error (a bug) in %s %s: %s",
                scope["method"],
                scope["path"],
                type(exc).__name__,
            )
            if status[0]:  # the answer had begun: all we can do is end the connection
                return
            status[0] = 500
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": UNEXPECTED})
        finally:
            caller = scope.get("state", {}).get("caller", "-")
            log.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                scope["path"],
                status[0] or 500,
                (time.perf_counter() - started) * 1000,
                caller,
            )


UNEXPECTED = b'{"detail":"unexpected error (a bug): see the server log"}'


def create_app(
    settings: Settings,
    *,
    token_minutes: int = 15,
    scim: bool = False,
    read_threads: int = DEFAULT_READ_THREADS,
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
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.server = Server(
        settings=settings,
        database=Database(settings, pool_size=SERVER_POOL),
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
    app.add_middleware(AccessLog)
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
    return create_app(load_settings(), token_minutes=minutes, scim=scim, read_threads=threads)
