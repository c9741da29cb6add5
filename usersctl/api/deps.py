"""The dependencies routes declare: the server's database, and the caller (principal)
resolved from `Authorization: Bearer ...` on every request.

Two kinds of credential: admin API tokens (`usc_...`, `usersctl token create`), checked
by digest; and login JWTs (`POST /auth/token`), HS256 with the key every server on the
database shares, checked against the user's row on every request (active, not locked, not
expired, same password), so they stop at once. Every failure is 401 with
`WWW-Authenticate: Bearer`; a credential that is good but not allowed this is 403.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from anyio.to_thread import run_sync
from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from usersctl.api.errors import BEARER
from usersctl.config import Settings
from usersctl.database import Database

ALGORITHM = "HS256"
# The role whose login token gets the REST API's read and write scopes (SCIM may not give
# it: usersctl.api.scim.routes).
ADMIN_ROLE = "admin"

# argon2 takes 64 MiB and a core per hash: more at once than there are cores only queues
# the work in memory (40 request threads would take 2.5 GiB). Every hash and verify of a
# request waits here.
HASHING = threading.BoundedSemaphore(os.cpu_count() or 1)


# Reads run on a few threads of their own. They never wait for a lock (SQLite's WAL, and
# PostgreSQL's and MariaDB's MVCC, read without one), so more threads would only take turns
# at the GIL, and each turn costs: on 2 cores, GET /users/{id} on anyio's default of 40
# threads served half the requests a second that 2 threads do. Writes and hashing, which
# may wait for a lock or a core, keep the default pool.
DEFAULT_READ_THREADS = 2


@dataclass(frozen=True)
class Server:
    """What every request of one server process shares."""

    settings: Settings
    database: Database
    token_minutes: int = 15
    read_threads: int = DEFAULT_READ_THREADS


# An anyio limiter belongs to one event loop: each loop that serves an app (uvicorn runs
# one per process; tests and embedders may run several) gets its own, per server.
_READ_LIMITERS: RunVar[dict[int, CapacityLimiter]] = RunVar("usersctl_read_limiters")


def _read_limiter(server: Server) -> CapacityLimiter:
    try:
        limiters = _READ_LIMITERS.get()
    except LookupError:
        limiters = {}
        _READ_LIMITERS.set(limiters)
    limiter = limiters.get(id(server))
    if limiter is None:
        limiter = limiters[id(server)] = CapacityLimiter(server.read_threads)
    return limiter


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token (`kind` "token") or a logged-in user ("user")."""

    kind: str
    name: str  # the audit trail's actor: token:NAME or user:ID
    scopes: frozenset[str]  # read, write (admin endpoints); scim; password (own password only)
    user_id: int | None = None

    @property
    def actor(self) -> str:
        return self.name


async def get_server(request: Request) -> Server:
    """(async: a dependency that does no I/O costs no trip to the thread pool)"""
    server: Server = request.app.state.server
    return server


ServerDep = Annotated[Server, Depends(get_server)]


def unauthorized(detail: str = "not authenticated") -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers=BEARER)


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status_code=403, detail=detail)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("not authenticated: send Authorization: Bearer <token>")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise unauthorized("invalid credentials")
    return credential


def _api_token(connection: Connection, credential: str, moment: datetime) -> Checked:
    from usersctl import tokens

    grant = tokens.find_token(session=connection, token=credential, moment=moment)
    if grant is None:
        raise unauthorized("invalid credentials")
    # An identity provider's token (scope scim) is audited as scim:NAME.
    kind = "scim" if "scim" in grant.scopes else "token"
    principal = Principal(kind="token", name=f"{kind}:{grant.name}", scopes=frozenset(grant.scopes))
    return Checked(principal, stale_token=grant.name if grant.stale_use else None)


def _login_token(session: Session, credential: str, moment: datetime) -> Checked:
    import jwt

    from usersctl import tokens
    from usersctl.models import User

    key = tokens.signing_key(session=session)
    if key is None:
        raise unauthorized("invalid credentials")
    try:
        claims: dict[str, Any] = jwt.decode(
            credential,
            key,
            algorithms=[ALGORITHM],  # pinned: never the token's own `alg` (none)
            options={"require": ["sub", "exp", "iat", "gen"]},
        )
        user_id, issued = int(claims["sub"]), float(claims["iat"])
    except (jwt.PyJWTError, ValueError, TypeError):
        raise unauthorized("invalid credentials") from None
    user = session.get(User, user_id)
    if (
        user is None
        or not user.is_active
        or (user.locked_until is not None and user.locked_until > moment)
        or (user.expires_at is not None and user.expires_at <= moment)
        or claims["gen"] != tokens.password_generation(key, user.password_hash)
        # Changed since (disabled and enabled again, renamed, another role...): a login
        # and a failed guess are not changes (updated_at stays); the same second is not;
        # nor a time still to come (a restored row, another host's clock running ahead).
        or issued < user.updated_at.timestamp() <= moment.timestamp()
    ):
        raise unauthorized("invalid credentials")
    scopes = {"password"} if user.must_change_password else {"self", "password"}
    if user.role == ADMIN_ROLE and not user.must_change_password:
        scopes |= {"read", "write"}
    principal = Principal(
        kind="user", name=f"user:{user_id}", scopes=frozenset(scopes), user_id=user_id
    )
    return Checked(principal)


@dataclass(frozen=True)
class Checked:
    principal: Principal
    stale_token: str | None = None  # an API token whose last use is due to be recorded


def _check(session: Session, credential: str) -> Checked:
    """The caller of `credential`, read in the caller's transaction (401 if none)."""
    from usersctl.lifecycle import now
    from usersctl.tokens import looks_like_api_token

    if looks_like_api_token(credential):
        return _api_token(session.connection(), credential, now())
    return _login_token(session, credential, now())


def _record_use(server: Server, checked: Checked) -> None:
    """Best effort (a lock held elsewhere is not waited for): a later request records it."""
    if checked.stale_token is not None:
        from sqlalchemy.exc import SQLAlchemyError

        from usersctl import tokens
        from usersctl.errors import UsersctlError
        from usersctl.lifecycle import now

        try:
            with server.database.quick_session() as session:
                tokens.mark_used(session=session, name=checked.stale_token, moment=now())
        except (UsersctlError, SQLAlchemyError):
            pass


def get_principal(request: Request, server: ServerDep) -> Principal:
    """The caller, checked in a read transaction of its own (for routes that then write)."""
    credential = _bearer(request)
    with server.database.session(write=False) as session:
        checked = _check(session, credential)
    _record_use(server, checked)
    request.state.caller = checked.principal.name  # for the access log
    return checked.principal


@dataclass(frozen=True)
class Caller:
    """A read route's credential and the scope it needs, parsed without I/O (an async
    dependency: no trip to the thread pool). The handler checks it with `read`, in the
    same read transaction as its read: one thread hop and one transaction a request, where
    a checking dependency costs two of each."""

    request: Request
    credential: str
    scope: str
    refusal: str


async def read(
    server: Server, caller: Caller, work: Callable[[Session, Principal], Response]
) -> Response:
    """`work` on one of the server's read threads, in a read transaction in which the
    caller has been checked first (401, or 403 without the route's scope)."""

    def run() -> Response:
        with server.database.session(write=False) as session:
            checked = _check(session, caller.credential)
            caller.request.state.caller = checked.principal.name  # for the access log
            if caller.scope not in checked.principal.scopes:
                raise forbidden(caller.refusal)
            answer = work(session, checked.principal)
        _record_use(server, checked)
        return answer

    return await run_sync(run, limiter=_read_limiter(server))


def _reading(scope: str, refusal: str) -> Any:
    async def parse(request: Request) -> Caller:
        return Caller(request=request, credential=_bearer(request), scope=scope, refusal=refusal)

    return parse


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _require(scope: str, detail: str) -> Any:
    async def check(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise forbidden(detail)
        return principal

    return check


READ_REFUSAL = "not allowed: an admin token or an admin's login"
SELF_REFUSAL = "not allowed: a user's login (and the password must be changed first if required)"
Reader = Annotated[Caller, Depends(_reading("read", READ_REFUSAL))]
Writer = Annotated[
    Principal,
    Depends(_require("write", "not allowed: needs a write token or an admin's login")),
]
Self = Annotated[Caller, Depends(_reading("self", SELF_REFUSAL))]
OwnPassword = Annotated[
    Principal, Depends(_require("password", "not allowed: only a user's own login"))
]
