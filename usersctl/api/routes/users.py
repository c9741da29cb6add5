"""The tutorial's /users endpoints (same paths and shapes), plus PUT, PATCH and actions.

Each route parses, calls crud in one transaction (usersctl.service.change, as the CLI
does), and renders the user as `usersctl get -o json` does. `?dry_run=true` on a change
returns the audit entries the real request would write and changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, Field
from sqlalchemy.orm import Session

from usersctl import rules
from usersctl.api.deps import (
    HASHING,
    OwnPassword,
    Principal,
    Reader,
    Self,
    ServerDep,
    Writer,
    read,
)
from usersctl.api.schemas import (
    USER_EXAMPLE,
    Detail,
    OwnPasswordIn,
    PasswordIn,
    PlannedChange,
    UserCreateIn,
    UserOut,
    UserPatchIn,
    UserPutIn,
)
from usersctl.errors import InvalidData, UsageError
from usersctl.lifecycle import now
from usersctl.records import user_record

router = APIRouter(prefix="/users", tags=["users"])


def _digits(value: Any) -> Any:
    """`/users/1.0` and `/users/+1` are not user 1: an id in a path is digits only."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("not a whole number")
    return value


UserId = Annotated[int, BeforeValidator(_digits), Field(ge=1, le=rules.ID_MAX)]
DryRun = Annotated[
    bool, Query(description="Return the audit entries this would write; change nothing.")
]
ONE = {
    "model": UserOut,
    "content": {"application/json": {"example": USER_EXAMPLE}},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Detail, "description": "no or bad credential"},
    403: {"model": Detail, "description": "credential not allowed this"},
    404: {"model": Detail, "description": "no such user"},
}
CHANGE = {
    **ERRORS,
    409: {"model": Detail, "description": "email taken"},
    422: {"model": Detail, "description": "invalid data"},
}
PLANNED = {
    "model": list[PlannedChange],
    "description": "with ?dry_run=true: the audit entries it would write",
}


def _planned(trail: Any) -> JSONResponse:
    return JSONResponse(
        [
            {"action": e.action, "user_id": e.user_id, "email": e.email, "changes": e.changes}
            for e in trail.entries
        ]
    )


def _expiry(text: str | None) -> Any:
    from usersctl.lifecycle import now, parse_expiry

    if text is None:
        return None
    try:
        return parse_expiry(text, now())
    except UsageError as exc:
        raise InvalidData(exc.message.replace("--expires", "expires_at")) from None


def _check_password(server: Any, password: str, inputs: tuple[str, ...]) -> None:
    from usersctl import password_policy

    password_policy.check(
        password, min_length=server.settings.password_min_length, user_inputs=inputs
    )


def _change(server: Any, principal: Any, dry_run: bool) -> Any:
    from usersctl.service import change, make_trail

    return change(server.database, make_trail(principal.actor, dry_run=dry_run))


@router.post(
    "/",
    status_code=201,
    response_model=None,
    responses={201: ONE, 200: PLANNED, **CHANGE},
    summary="Create a user (the tutorial's POST /users/)",
)
def create_user(
    body: UserCreateIn, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    from usersctl import crud
    from usersctl.lifecycle import check_role
    from usersctl.passwords import hash_password
    from usersctl.schemas import UserCreate, parse

    user_in = parse(
        UserCreate,
        {
            "name": body.name,
            "email": body.email,
            "role": body.role,
            "is_active": body.active,
            "expires_at": _expiry(body.expires_at),
            "must_change_password": body.must_change_password,
        },
    )
    check_role(user_in.role, server.settings)
    _check_password(server, body.password, (user_in.name, user_in.email))
    with HASHING:
        password_hash = "" if dry_run else hash_password(body.password)
    with _change(server, principal, dry_run) as (session, trail):
        user, _ = crud.create_user(
            session=session,
            user_in=user_in,
            password_hash=password_hash,
            trail=trail,
            has_password=True,  # (a dry run hashes nothing, but the real request would)
        )
        shown = user_record(user) if user.id is not None else {}
    if dry_run:
        return _planned(trail)
    return JSONResponse(shown, status_code=201, headers={"Location": f"/users/{shown['id']}"})


SORTABLE = "id, name, email, role, active, created_at or updated_at; prefix - to reverse"


@router.get(
    "/",
    response_model=list[UserOut],
    responses={
        200: {
            "content": {"application/json": {"example": [USER_EXAMPLE]}},
            "headers": {"X-Total-Count": {"description": "users matching, before limit/offset"}},
        },
        **ERRORS,
    },
    summary="List users (the tutorial's GET /users/), with filters and paging",
)
async def list_users(
    server: ServerDep,
    caller: Reader,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    role: str | None = None,
    active: bool | None = None,
    search: str | None = None,
    sort: Annotated[str, Query(description=SORTABLE)] = "id",
) -> Response:
    from usersctl import crud

    descending = sort.startswith("-")
    filters: dict[str, Any] = {"role": role, "active": active, "search": search}

    def work(session: Session, _principal: Principal) -> Response:
        query = crud.user_query(
            **filters, sort=sort.removeprefix("-"), descending=descending, limit=limit,
            offset=offset,
        )  # fmt: skip
        shown = [user_record(user) for user in session.scalars(query)]
        total = crud.count_users(session=session, **filters)
        return JSONResponse(shown, headers={"X-Total-Count": str(total)})

    return await read(server, caller, work)


@router.get("/me", response_model=UserOut, responses={200: ONE, **ERRORS}, summary="The caller")
async def get_me(server: ServerDep, caller: Self) -> Response:
    from usersctl import crud

    def work(session: Session, principal: Principal) -> Response:
        return JSONResponse(user_record(crud.get_user(session=session, ref=str(principal.user_id))))

    return await read(server, caller, work)


@router.put(
    "/me/password",
    response_model=UserOut,
    responses={200: ONE, **CHANGE},
    summary="Change the caller's own password (current + new)",
)
def change_own_password(
    body: OwnPasswordIn, server: ServerDep, principal: OwnPassword, dry_run: DryRun = False
) -> Response:
    from usersctl import crud
    from usersctl.lifecycle import record_attempt
    from usersctl.passwords import hash_password

    ref = str(principal.user_id)
    if body.new_password == body.current_password:  # (it would end must_change_password)
        raise InvalidData("the new password must differ from the current one")
    with server.database.session(write=False) as session:
        credentials = crud.read_credentials(session=session, ref=ref)
        user = crud.get_user(session=session, ref=ref)
        inputs = (user.name, user.email)
    with HASHING:  # no transaction open while the hash is checked
        check = crud.check_password(
            credentials=credentials, password=body.current_password, moment=now()
        )
    if not check.matches:
        from usersctl.errors import VerificationFailed

        # A wrong current password counts as a failed login, and locks the account at the
        # threshold as one does: a stolen login token must buy no unlimited guesses.
        settings = dataclasses.replace(server.settings, actor=principal.name)
        record_attempt(database=server.database, settings=settings, check=check, moment=now())
        raise VerificationFailed("current password is wrong")
    _check_password(server, body.new_password, inputs)
    with HASHING:
        password_hash = "" if dry_run else hash_password(body.new_password)
    with _change(server, principal, dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=ref, lock=True)
        crud.set_password_hash(
            session=session, user=target, password_hash=password_hash, trail=trail
        )
        shown = user_record(target)
    return _planned(trail) if dry_run else JSONResponse(shown)


@router.get(
    "/{user_id}",
    response_model=UserOut,
    responses={200: ONE, **ERRORS},
    summary="One user (the tutorial's GET /users/{id})",
)
async def get_user(user_id: UserId, server: ServerDep, caller: Reader) -> Response:
    from usersctl import crud

    def work(session: Session, _principal: Principal) -> Response:
        return JSONResponse(user_record(crud.get_user(session=session, ref=str(user_id))))

    return await read(server, caller, work)


@router.delete(
    "/{user_id}",
    response_model=UserOut,
    responses={200: ONE, **ERRORS},
    summary="Delete a user and return it (the tutorial's DELETE /users/{id})",
)
def delete_user(
    user_id: UserId, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    from usersctl import crud

    with _change(server, principal, dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=str(user_id), lock=True)
        shown = user_record(target)
        crud.delete_users(session=session, users=[target], trail=trail)
    return _planned(trail) if dry_run else JSONResponse(shown)


def _update(
    server: Any, principal: Any, user_id: int, given: dict[str, Any], dry_run: bool
) -> Response:
    from usersctl import crud
    from usersctl.lifecycle import check_role
    from usersctl.schemas import UserUpdate, parse

    user_in = parse(UserUpdate, given)
    if user_in.role is not None:
        check_role(user_in.role, server.settings)
    with _change(server, principal, dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=str(user_id), lock=True)
        crud.update_user(session=session, user=target, user_in=user_in, trail=trail)
        shown = user_record(target)
    return _planned(trail) if dry_run else JSONResponse(shown)


@router.put(
    "/{user_id}",
    response_model=UserOut,
    responses={200: ONE, **CHANGE},
    summary="Replace a user's name, email, role and expiry (the tutorial's next step)",
)
def put_user(
    user_id: UserId, body: UserPutIn, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    given = body.model_dump()
    given["expires_at"] = _expiry(body.expires_at)
    return _update(server, principal, user_id, given, dry_run)


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    responses={200: ONE, **CHANGE},
    summary="Change some of a user's fields",
)
def patch_user(
    user_id: UserId,
    body: UserPatchIn,
    server: ServerDep,
    principal: Writer,
    dry_run: DryRun = False,
) -> Response:
    given = body.model_dump(exclude_unset=True)
    if "expires_at" in given:
        given["expires_at"] = _expiry(body.expires_at or "never")
    if not given:
        raise InvalidData("nothing to change: give name, email, role and/or expires_at")
    return _update(server, principal, user_id, given, dry_run)


@router.post(
    "/{user_id}/password",
    response_model=UserOut,
    responses={200: ONE, **CHANGE},
    summary="Set a user's password (policy applied)",
)
def set_password(
    user_id: UserId, body: PasswordIn, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    from usersctl import crud
    from usersctl.passwords import hash_password

    ref = str(user_id)
    with server.database.session(write=False) as session:
        found = crud.get_user(session=session, ref=ref)
        inputs = (found.name, found.email)
    _check_password(server, body.password, inputs)
    with HASHING:
        password_hash = "" if dry_run else hash_password(body.password)
    with _change(server, principal, dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=ref, lock=True)
        crud.set_password_hash(
            session=session,
            user=target,
            password_hash=password_hash,
            trail=trail,
            must_change=body.must_change_password,
        )
        shown = user_record(target)
    return _planned(trail) if dry_run else JSONResponse(shown)


def _action(server: Any, principal: Any, user_id: int, action: str, dry_run: bool) -> Response:
    from usersctl import crud

    with _change(server, principal, dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=str(user_id), lock=True)
        if action == "unlock":
            crud.unlock_users(session=session, users=[target], trail=trail)
        else:
            crud.set_active(session=session, users=[target], active=action == "enable", trail=trail)
        shown = user_record(target)
    return _planned(trail) if dry_run else JSONResponse(shown)


@router.post(
    "/{user_id}/disable",
    response_model=UserOut,
    responses={200: ONE, **ERRORS},
    summary="Disable login (its login tokens stop at once)",
)
def disable_user(
    user_id: UserId, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    return _action(server, principal, user_id, "disable", dry_run)


@router.post(
    "/{user_id}/enable", response_model=UserOut, responses={200: ONE, **ERRORS}, summary="Enable"
)
def enable_user(
    user_id: UserId, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    return _action(server, principal, user_id, "enable", dry_run)


@router.post(
    "/{user_id}/unlock",
    response_model=UserOut,
    responses={200: ONE, **ERRORS},
    summary="Clear a lockout and the failure counter",
)
def unlock_user(
    user_id: UserId, server: ServerDep, principal: Writer, dry_run: DryRun = False
) -> Response:
    return _action(server, principal, user_id, "unlock", dry_run)
