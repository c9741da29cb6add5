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
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from usersctl.api.errors import BEARER
from usersctl.config import Settings
from usersctl.database import Database

ALGORITHM = "HS256"

# argon2 takes 64 MiB and a core per hash: more at once than there are cores only queues
# the work in memory (40 request threads would take 2.5 GiB). Every hash and verify of a
# request waits here.
HASHING = threading.BoundedSemaphore(os.cpu_count() or 1)


@dataclass(frozen=True)
class Server:
    """What every request of one server process shares."""

    settings: Settings
    database: Database
    token_minutes: int = 15


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


def _api_token(server: Server, credential: str) -> Principal:
    from usersctl import tokens
    from usersctl.lifecycle import now

    moment = now()
    with server.database.connect(write=False) as connection:
        grant = tokens.find_token(session=connection, token=credential, moment=moment)
    if grant is None:
        raise unauthorized("invalid credentials")
    if grant.stale_use:
        with server.database.session(write=True) as session:
            tokens.mark_used(session=session, name=grant.name, moment=moment)
    # An identity provider's token (scope scim) is audited as scim:NAME.
    kind = "scim" if "scim" in grant.scopes else "token"
    return Principal(kind="token", name=f"{kind}:{grant.name}", scopes=frozenset(grant.scopes))


def _login_token(server: Server, credential: str) -> Principal:
    import jwt

    from usersctl import tokens
    from usersctl.lifecycle import now
    from usersctl.models import User

    with server.database.session(write=False) as session:
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
            user_id = int(claims["sub"])
        except (jwt.PyJWTError, ValueError, TypeError):
            raise unauthorized("invalid credentials") from None
        user = session.get(User, user_id)
        moment = now()
        if (
            user is None
            or not user.is_active
            or (user.locked_until is not None and user.locked_until > moment)
            or (user.expires_at is not None and user.expires_at <= moment)
            or claims["gen"] != tokens.password_generation(key, user.password_hash)
        ):
            raise unauthorized("invalid credentials")
        scopes = {"password"} if user.must_change_password else {"self", "password"}
        if user.role == "admin" and not user.must_change_password:
            scopes |= {"read", "write"}
    return Principal(kind="user", name=f"user:{user_id}", scopes=frozenset(scopes), user_id=user_id)


def get_principal(request: Request, server: ServerDep) -> Principal:
    from usersctl.tokens import looks_like_api_token

    credential = _bearer(request)
    if looks_like_api_token(credential):
        principal = _api_token(server, credential)
    else:
        principal = _login_token(server, credential)
    request.state.caller = principal.name  # for the access log
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _require(scope: str, detail: str) -> Any:
    async def check(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise forbidden(detail)
        return principal

    return check


Reader = Annotated[
    Principal, Depends(_require("read", "not allowed: an admin token or an admin's login"))
]
Writer = Annotated[
    Principal,
    Depends(_require("write", "not allowed: needs a write token or an admin's login")),
]
Self = Annotated[
    Principal,
    Depends(
        _require(
            "self",
            "not allowed: a user's login (and the password must be changed first if required)",
        )
    ),
]
OwnPassword = Annotated[
    Principal, Depends(_require("password", "not allowed: only a user's own login"))
]
