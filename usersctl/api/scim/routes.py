"""The SCIM 2.0 endpoints under /scim/v2 (RFC 7644): discovery, and /Users over the same
crud functions, transactions and audit trail as the CLI and the REST API.

Only tokens with scope `scim` get in (`usersctl token create okta --scope scim`); their
changes are audited as `scim:NAME`. Users created here are owned by source `scim`.
/Groups is not served: usersctl has no groups (one role per user, which `roles` maps to),
so it answers 404 as RFC 7644 3.12 says for an endpoint that does not exist, and
ResourceTypes lists User alone.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from usersctl.api.deps import ADMIN_ROLE, HASHING, PrincipalDep, Server, ServerDep, forbidden
from usersctl.api.scim.errors import MEDIA_TYPE, ScimProblem, ScimRoute
from usersctl.api.scim.resources import CORE_USER, DEFAULT_COUNT, MAX_RESULTS, POLICY
from usersctl.errors import InvalidData

PREFIX = "/scim/v2"
SOURCE = "scim"

router = APIRouter(prefix=PREFIX, tags=["scim"], route_class=ScimRoute)


def _scim_principal(principal: PrincipalDep) -> Any:
    if "scim" not in principal.scopes:
        raise forbidden("not allowed: the SCIM endpoints need a token with scope scim")
    return principal


Caller = Annotated[Any, Depends(_scim_principal)]
JsonBody = Annotated[Any, Body()]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


def _answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


# --- discovery -------------------------------------------------------------------------


def _list(resources: list[Any]) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


@router.get("/ServiceProviderConfig", summary="What this SCIM service supports")
def service_provider_config(request: Request, _caller: Caller) -> Response:
    from usersctl.api.scim.resources import dump, service_provider_config

    return _answer(dump(service_provider_config(_base(request))))


@router.get("/ResourceTypes", summary="The resource types served (User)")
def resource_types(request: Request, _caller: Caller) -> Response:
    from usersctl.api.scim.resources import dump, resource_type

    return _answer(_list([dump(resource_type(_base(request)))]))


@router.get("/ResourceTypes/{name}", summary="One resource type")
def one_resource_type(name: str, request: Request, _caller: Caller) -> Response:
    from usersctl.api.scim.resources import dump, resource_type

    if name != "User":
        raise ScimProblem(404, f"no such resource type: {name[:100]} (usersctl serves User)")
    return _answer(dump(resource_type(_base(request))))


def _user_schema(request: Request, server: Server) -> Any:
    from usersctl import crud
    from usersctl.api.scim.resources import dump, user_schema

    roles = server.settings.roles
    if roles is None:
        with server.database.session(write=False) as session:
            roles = tuple(sorted({"user", *crud.roles(session=session)}))
    return dump(user_schema(_base(request), list(roles)))


@router.get("/Schemas", summary="The schemas served (the core User, as supported)")
def schemas(request: Request, server: ServerDep, _caller: Caller) -> Response:
    return _answer(_list([_user_schema(request, server)]))


@router.get("/Schemas/{schema_id}", summary="One schema")
def one_schema(schema_id: str, request: Request, server: ServerDep, _caller: Caller) -> Response:
    if schema_id != CORE_USER:
        raise ScimProblem(404, f"no such schema: {schema_id[:200]}")
    return _answer(_user_schema(request, server))


# --- Users -----------------------------------------------------------------------------


def _response_parameters(attributes: str | None, excluded: str | None) -> Any:
    if not attributes and not excluded:
        return None
    from pydantic import ValidationError
    from scim2_models import ResponseParameters, User

    try:
        return ResponseParameters[User].model_validate(  # type: ignore[type-arg]
            {"attributes": attributes or None, "excludedAttributes": excluded or None},
            scim_policy=POLICY,
        )
    except ValidationError:
        raise ScimProblem(
            400, "invalid attributes or excludedAttributes (give one of them)", "invalidValue"
        ) from None


def _render(user: Any, base: str, parameters: Any = None, *, context: Any = None) -> Any:
    from scim2_models import Context

    from usersctl.api.scim.resources import dump, to_scim

    return dump(
        to_scim(user, base),
        context or Context.RESOURCE_QUERY_RESPONSE,
        response_parameters=parameters,
    )


def _parse_user(body: Any, context: Any) -> Any:
    from scim2_models import User

    with POLICY:
        return User.model_validate(body, scim_ctx=context, scim_policy=POLICY)


def _user_id(user_id: str) -> int:
    from usersctl.crud import MAX_ID

    if not (user_id.isdecimal() and user_id.isascii()) or int(user_id) > MAX_ID:
        raise ScimProblem(404, f"user not found: {user_id[:100]}")
    return int(user_id)


def _load(session: Any, user_id: str, *, lock: bool = False) -> Any:
    from usersctl import crud

    found = crud.find_user(session, str(_user_id(user_id)), lock=lock)
    if found is None:
        raise ScimProblem(404, f"user not found: {user_id[:100]}")
    return found


def _no_admin_role(role: str | None) -> None:
    """A scim token must not be able to mint an admin (whose login opens the REST API)."""
    if role == ADMIN_ROLE:
        raise ScimProblem(
            403,
            "the admin role opens the REST API: it is given by hand (usersctl update --role "
            "admin), never over SCIM",
        )


def _admin_offboarding_only(row: Any, changes: bool, active: bool | None) -> None:
    """An admin's account is managed by hand: SCIM may deactivate it (offboarding) or
    delete it, but change nothing else, nor make it active again (its password, email or
    name, in an identity provider's hands, would be a way into the REST API)."""
    if row.role != ADMIN_ROLE:
        return
    if changes or (active and not row.is_active):
        raise ScimProblem(
            403,
            f"user {row.id} has the admin role: SCIM may only deactivate or delete it; "
            "change it by hand (usersctl update)",
        )


def _hash_new_password(server: Server, password: str | None, name: str, email: str) -> str:
    from usersctl import password_policy
    from usersctl.passwords import hash_password

    if password is None:
        return ""
    password_policy.check(
        password, min_length=server.settings.password_min_length, user_inputs=(name, email)
    )
    with HASHING:
        return hash_password(password)


def _change(server: Server, caller: Any) -> Any:
    from usersctl.service import change, make_trail

    return change(server.database, make_trail(caller.actor))


@router.get("/Users", summary="List users, with filter, startIndex/count and attributes")
def list_users(
    request: Request,
    server: ServerDep,
    _caller: Caller,
    filter: Annotated[str | None, Query()] = None,  # noqa: A002 - the RFC's name
    start_index: Annotated[int, Query(alias="startIndex")] = 1,
    count: Annotated[int | None, Query()] = None,
    attributes: Annotated[str | None, Query()] = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
) -> Response:
    return _search(
        request, server, filter, start_index, count, attributes, excluded_attributes, sort_by
    )


@router.post("/Users/.search", summary="The same search, as a POST body (RFC 7644 3.4.3)")
@router.post("/.search", summary="Search every resource type: here, the users")
def search_users(request: Request, body: JsonBody, server: ServerDep, _caller: Caller) -> Response:
    from pydantic import ValidationError
    from scim2_models import Context, SearchRequest

    try:
        with POLICY:
            asked: Any = SearchRequest.model_validate(
                body, scim_ctx=Context.SEARCH_REQUEST, scim_policy=POLICY
            )
    except ValidationError as exc:
        from usersctl.api.scim.errors import from_validation

        raise from_validation(exc) from None

    def joined(paths: Any) -> str | None:
        return ",".join(str(path) for path in paths) if paths else None

    return _search(
        request,
        server,
        str(asked.filter) if asked.filter is not None else None,
        asked.start_index or 1,
        asked.count,
        joined(asked.attributes),
        joined(asked.excluded_attributes),
        str(asked.sort_by) if asked.sort_by else None,
    )


def _search(
    request: Request,
    server: Server,
    filter: str | None,  # noqa: A002
    start_index: int,
    count: int | None,
    attributes: str | None,
    excluded_attributes: str | None,
    sort_by: str | None,
) -> Response:
    """One page of the users a filter selects: the database filters, counts and pages."""
    from sqlalchemy import func, select

    from usersctl.api.scim.filters import FilterProblem, to_clause
    from usersctl.models import User

    if sort_by:
        raise ScimProblem(400, "sortBy is not supported (ServiceProviderConfig)", "invalidValue")
    parameters = _response_parameters(attributes, excluded_attributes)
    query = select(User)
    if filter is not None and filter.strip():
        try:
            query = query.where(to_clause(filter))
        except FilterProblem as exc:
            raise ScimProblem(400, str(exc), "invalidFilter") from None
    start = min(max(start_index, 1), 2**31)  # RFC 7644 3.4.2.4: below 1 means 1
    size = DEFAULT_COUNT if count is None else min(max(count, 0), MAX_RESULTS)
    base = _base(request)
    with server.database.session(write=False) as session:
        total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        shown = []
        if size:  # count=0: the total alone (RFC 7644 3.4.2.4)
            page = query.order_by(User.id).offset(start - 1).limit(size)
            shown = [_render(user, base, parameters) for user in session.scalars(page)]
    return _answer(
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(shown),
            "Resources": shown,
        }
    )


@router.post("/Users", status_code=201, summary="Create a user (owned by source scim)")
def create_user(request: Request, body: JsonBody, server: ServerDep, caller: Caller) -> Response:
    from scim2_models import Context

    from usersctl import crud
    from usersctl.api.scim.resources import wanted
    from usersctl.lifecycle import check_role
    from usersctl.schemas import UserCreate, parse

    asked = wanted(_parse_user(body, Context.RESOURCE_CREATION_REQUEST))
    user_in = parse(
        UserCreate,
        {
            "name": asked.name or asked.email,
            "email": asked.email,
            "role": asked.role or "user",
            "is_active": True if asked.active is None else asked.active,
        },
    )
    _no_admin_role(user_in.role)
    check_role(user_in.role, server.settings)
    external_id = _external_id(asked.external_id)
    password_hash = _hash_new_password(server, asked.password, user_in.name, user_in.email)
    base = _base(request)
    with _change(server, caller) as (session, trail):
        user, _ = crud.create_user(
            session=session,
            user_in=user_in,
            password_hash=password_hash,
            trail=trail,
            source=SOURCE,
            external_id=external_id,
        )
        shown = _render(user, base, context=Context.RESOURCE_CREATION_RESPONSE)
    return _answer(shown, 201, headers={"Location": shown["meta"]["location"]})


def _external_id(value: str | None) -> str | None:
    from usersctl import rules
    from usersctl.schemas import first_invisible

    if value is not None and (len(value) > rules.EXTERNAL_ID_LENGTH or "\x00" in value):
        raise InvalidData(f"invalid externalId: at most {rules.EXTERNAL_ID_LENGTH} characters")
    surrogate = None if value is None else rules.lone_surrogate(value)
    if surrogate is not None:
        raise InvalidData(rules.NOT_UNICODE.format("externalId", surrogate))
    # No control or invisible character, as in a name (they came out raw in a piped CSV
    # export).
    bad = None if value is None else first_invisible(value)
    if bad is not None:
        raise InvalidData(
            "invalid externalId: must not contain control or invisible characters "
            f"(found U+{ord(bad):04X})"
        )
    return value


@router.get("/Users/{user_id}", summary="One user")
def get_user(
    user_id: str,
    request: Request,
    server: ServerDep,
    _caller: Caller,
    attributes: Annotated[str | None, Query()] = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes")] = None,
) -> Response:
    parameters = _response_parameters(attributes, excluded_attributes)
    with server.database.session(write=False) as session:
        shown = _render(_load(session, user_id), _base(request), parameters)
    return _answer(shown)


def _store(server: Server, session: Any, trail: Any, row: Any, asked: Any, hashed: str) -> None:
    """Apply what a PUT or PATCH asks for to the locked row, through crud: each change
    audited as the CLI's would be; what is already so changes nothing."""
    from usersctl import crud
    from usersctl.lifecycle import check_role
    from usersctl.schemas import UserUpdate, parse

    given: dict[str, Any] = {}
    if asked.name is not None and asked.name != row.name:
        given["name"] = asked.name
    if crud.stored_form(asked.email) != row.email:
        given["email"] = asked.email
    if asked.role is not None and asked.role != row.role:
        _no_admin_role(asked.role)
        given["role"] = asked.role
    external_id = _external_id(asked.external_id)
    changes = bool(given) or bool(hashed) or external_id != row.external_id
    _admin_offboarding_only(row, changes, asked.active)
    if given:
        user_in = parse(UserUpdate, given)
        if user_in.role is not None:
            check_role(user_in.role, server.settings)
        crud.update_user(session=session, user=row, user_in=user_in, trail=trail)
    if asked.active is not None and asked.active != row.is_active:
        crud.set_active(session=session, users=[row], active=asked.active, trail=trail)
    crud.set_external_id(session=session, user=row, external_id=external_id, trail=trail)
    if hashed:
        crud.set_password_hash(session=session, user=row, password_hash=hashed, trail=trail)


@router.put("/Users/{user_id}", summary="Replace a user")
def replace_user(
    user_id: str, request: Request, body: JsonBody, server: ServerDep, caller: Caller
) -> Response:
    from scim2_models import Context

    from usersctl.api.scim.resources import wanted

    _user_id(user_id)
    asked = wanted(_parse_user(body, Context.RESOURCE_REPLACEMENT_REQUEST))
    hashed = _hash_new_password(server, asked.password, asked.name or "", asked.email)
    with _change(server, caller) as (session, trail):
        row = _load(session, user_id, lock=True)
        _store(server, session, trail, row, asked, hashed)
        shown = _render(row, _base(request), context=Context.RESOURCE_REPLACEMENT_RESPONSE)
    return _answer(shown)


def _patched(row: Any, base: str, body: Any) -> Any:
    """What the PATCH operations (scim2-models' semantics) make of the stored user."""
    from pydantic import ValidationError
    from scim2_models import Context, PatchOp, SCIMException, User

    from usersctl import rules
    from usersctl.api.scim.errors import from_validation
    from usersctl.api.scim.resources import to_scim, unknown_path, wanted

    with POLICY:
        patch = PatchOp[User].model_validate(  # type: ignore[type-arg]
            _paths_out_of_values(body), scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=POLICY
        )
        for operation in patch.operations or []:
            if operation.path is not None and unknown_path(operation.path):
                where = repr(rules.cut(str(operation.path)))
                problem = f"invalid path {where}: not an attribute of the User schema"
                raise ScimProblem(400, problem, "invalidPath")
        resource = to_scim(row, base)
        try:
            patch.patch(resource)
        except SCIMException as exc:
            # A value of the wrong type (`"active": "maybe"`): scim2-models puts pydantic's
            # multi-line text in the detail; say it in usersctl's words instead.
            if isinstance(exc.__cause__, ValidationError):
                raise from_validation(exc.__cause__) from None
            raise
    # What every usersctl user has cannot be unassigned (RFC 7644 3.5.2.2 lets a service
    # provider refuse): an explicit error rather than a silent no-op.
    if resource.active is None:
        raise ScimProblem(400, "active cannot be removed: set it to false to disable", "mutability")
    if not any(role.value for role in resource.roles or []):
        raise ScimProblem(400, "every user has one role: replace it instead", "mutability")
    parts = resource.name
    if not resource.display_name and not (
        parts and (parts.formatted or parts.given_name or parts.family_name)
    ):
        raise ScimProblem(400, "every user has a name: replace it instead", "mutability")
    return wanted(resource, row)


def _paths_out_of_values(body: Any) -> Any:
    """The PATCH body with each key of a path-less operation's value that holds a value
    filter (Entra sends `emails[type eq "work"].value` as such a key) made an operation of
    its own, with that key as its path, in their order. scim2-models takes a key that is an
    attribute path but drops one with a filter (a 200 that changes nothing), where the same
    path in `path` is applied."""
    if not isinstance(body, dict):
        return body
    key = next((k for k in body if isinstance(k, str) and k.lower() == "operations"), None)
    operations = body.get(key) if key is not None else None
    if not isinstance(operations, list):
        return body
    split: list[Any] = []
    for operation in operations:
        split.extend(_split(operation))
    return {**body, key: split}


def _split(operation: Any) -> list[Any]:
    """One operation, or the operations it stands for (anything malformed left as it is,
    for scim2-models to refuse)."""
    if not isinstance(operation, dict):
        return [operation]
    names = {k.lower(): k for k in operation if isinstance(k, str)}
    op = operation.get(names.get("op", "op"))
    value = operation.get(names.get("value", "value"))
    if operation.get(names.get("path", "path")) is not None or not isinstance(value, dict):
        return [operation]
    if not (isinstance(op, str) and op.lower() in ("add", "replace")):
        return [operation]  # (a remove needs a path: scim2-models says so)
    if not any(isinstance(k, str) and "[" in k for k in value):
        return [operation]
    rest = {k: v for k, v in operation.items() if k not in (names.get("path"), names.get("value"))}
    split: list[Any] = []
    plain: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(name, str) and "[" in name:
            if plain:
                split.append({**rest, "value": plain})
                plain = {}
            split.append({**rest, "path": name, "value": item})
        else:
            plain[name] = item
    if plain:
        split.append({**rest, "value": plain})
    return split


@router.patch("/Users/{user_id}", summary="Change a user (add, replace, remove)")
def patch_user(
    user_id: str, request: Request, body: JsonBody, server: ServerDep, caller: Caller
) -> Response:
    from scim2_models import Context

    base = _base(request)
    # The password is checked and hashed with no transaction open (argon2 takes a core
    # for a while): the operations are worked out on a read, then applied again below.
    with server.database.session(write=False) as session:
        first = _patched(_load(session, user_id), base, body)
    hashed = _hash_new_password(server, first.password, first.name or "", first.email)
    with _change(server, caller) as (session, trail):
        row = _load(session, user_id, lock=True)
        asked = _patched(row, base, body)
        _store(server, session, trail, row, asked, hashed if asked.password else "")
        shown = _render(row, base, context=Context.RESOURCE_PATCH_RESPONSE)
    return _answer(shown)


@router.delete("/Users/{user_id}", status_code=204, summary="Delete a user")
def delete_user(user_id: str, server: ServerDep, caller: Caller) -> Response:
    from usersctl import crud

    with _change(server, caller) as (session, trail):
        row = _load(session, user_id, lock=True)  # (an admin too: offboarding)
        crud.delete_users(session=session, users=[row], trail=trail)
    return Response(status_code=204)


# --- everything else -------------------------------------------------------------------


@router.api_route(
    "/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
def not_served(rest: str, request: Request, _caller: Caller) -> Response:
    """404 for an endpoint that does not exist (/Groups, /Bulk, /Me...), 405 for a method
    an existing one does not take."""
    path = request.url.path
    for route in router.routes:
        if route is not _CATCH_ALL and getattr(route, "path_regex", None) is not None:
            if route.path_regex.match(path):  # type: ignore[attr-defined]
                raise ScimProblem(405, f"method {request.method} not allowed on {path[:200]}")
    first = rest.split("/", 1)[0]
    if first.lower() == "groups":
        raise ScimProblem(
            404, "Groups are not supported: usersctl has one role per user (User.roles)"
        )
    raise ScimProblem(404, f"no such SCIM endpoint: {first[:100]}")


_CATCH_ALL = router.routes[-1]
