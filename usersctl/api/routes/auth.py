"""POST /auth/token: login with the OAuth2 password form, through the same function as
`usersctl verify-password` (usersctl.lifecycle.login: lockout counter, expiry, last
login, rehash, audit). Answers a short-lived HS256 JWT."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm

from usersctl.api.deps import ALGORITHM, HASHING, ServerDep, unauthorized
from usersctl.api.schemas import Detail, TokenOut

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=TokenOut,
    responses={401: {"model": Detail, "description": "wrong email or password, or the "
                     "account is disabled, locked or expired (all alike)"}},
    summary="Log in (username = email): a login token for `Authorization: Bearer`",
)  # fmt: skip
def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], server: ServerDep) -> TokenOut:
    import jwt

    from usersctl import tokens
    from usersctl.lifecycle import login as check_login
    from usersctl.lifecycle import now

    settings = dataclasses.replace(server.settings, actor="api:login")
    result = check_login(
        database=server.database,
        settings=settings,
        ref=form.username,
        password=form.password,
        hashing=HASHING,  # only the check: a failure may wait for the database's lock
    )
    if not result.verified or result.user_id is None:
        raise unauthorized("incorrect email or password")
    # Signed from the hash the login verified: a password reset after it makes this token
    # invalid, as it does every older one (tokens.password_generation).
    password_hash, user_id = result.password_hash, result.user_id
    # A read transaction: `serve` made the key at start-up (a write only if it is gone).
    with server.database.session(write=False) as session:
        key = tokens.signing_key(session=session)
    if key is None:
        with server.database.session(write=True) as session:
            key = tokens.ensure_signing_key(session=session)
    generation = tokens.password_generation(key, password_hash)
    issued = int(now().timestamp())
    lifetime = server.token_minutes * 60
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + lifetime, "gen": generation}
    token = jwt.encode(claims, key, algorithm=ALGORITHM)
    return TokenOut(access_token=token, expires_in=lifetime)
