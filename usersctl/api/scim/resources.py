"""A usersctl user as a SCIM core User, and back; and what the discovery endpoints publish.

One user is one SCIM User:

    id                      users.id (as a string)
    userName                users.email: it must be an email address
    emails                  [{"value": email}]: one address, the userName
    displayName             users.name, also name.formatted
    active                  users.is_active (false: disabled, as `usersctl disable`)
    roles                   [{"value": role}]: one role per user
    externalId              users.external_id
    password                write-only: set (policy applied), never returned
    meta                    created, lastModified, location, resourceType

Whatever else an identity provider sends (phone numbers, addresses, the enterprise
extension, an email's type and primary flag...) is accepted and not stored; the published
schema lists only the above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    Email,
    ETag,
    Filter,
    Meta,
    Name,
    Patch,
    ResourceType,
    Role,
    Schema,
    ScimPolicy,
    ServiceProviderConfig,
    Sort,
    User,
)

from usersctl.errors import InvalidData
from usersctl.models import User as UserRow

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
MAX_RESULTS = 1000  # the largest `count` answered in one page
DEFAULT_COUNT = 100

# How far usersctl reads past the letter of RFC 7643/7644, for what Okta and Entra send:
# attributes and extensions it does not store are dropped (not refused); a PATCH `remove`
# with a value, and a path filter that matches nothing, behave as Entra expects.
POLICY = ScimPolicy(
    unknown=ScimPolicy.Unknown.ignore,
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)


def to_scim(user: UserRow, base_url: str) -> User[Any]:
    """The SCIM User for a row (inside its session)."""
    return User(
        id=str(user.id),
        external_id=user.external_id,
        user_name=user.email,
        name=Name(formatted=user.name),
        display_name=user.name,
        emails=[Email(value=user.email)],
        active=bool(user.is_active),
        roles=[Role(value=user.role)],
        meta=Meta(
            resource_type="User",
            created=user.created_at,
            last_modified=user.updated_at,
            location=f"{base_url}/Users/{user.id}",
        ),
    )


@dataclass(frozen=True)
class Wanted:
    """What a SCIM User asks usersctl to store. None: not given."""

    email: str
    name: str | None
    active: bool | None
    role: str | None
    external_id: str | None
    password: str | None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _name(user: User[Any], current: UserRow | None) -> str | None:
    """displayName, else name.formatted, else givenName and familyName (what Okta sends).
    Against a stored user (PATCH), whichever of them changed wins."""
    parts = user.name
    composed = None
    if parts and (parts.given_name or parts.family_name):
        both = parts.given_name and parts.family_name
        if both or current is None:  # (a PATCH of one part alone would lose the other)
            composed = " ".join(p for p in (parts.given_name, parts.family_name) if p)
    candidates = [
        _text(user.display_name),
        _text(parts.formatted) if parts else None,
        _text(composed),
    ]
    given = [name for name in candidates if name is not None]
    if current is not None:
        changed = [name for name in given if name != current.name]
        if not changed and parts and composed is None and (parts.given_name or parts.family_name):
            # One part alone (Entra's "Replace name.familyName"): usersctl keeps one name and
            # cannot tell which words of it the other part is; a 200 would drop the change.
            raise InvalidData(
                "usersctl stores one name: send displayName, name.formatted, or both "
                "name.givenName and name.familyName"
            )
        return changed[0] if changed else current.name
    return given[0] if given else None


def _email(user: User[Any], current: UserRow | None) -> str:
    """userName is the email. With a stored user (PATCH), when userName is unchanged, a new
    address in `emails` counts: the one marked primary, else the one new work (or untyped)
    address; home and other addresses are not the login name and are ignored."""
    user_name = _text(user.user_name)
    if user_name is None:
        raise InvalidData("userName is required: the user's email address")
    if current is None or user_name.lower() != current.email:
        return user_name
    new = [e for e in user.emails or [] if _text(e.value) and _text(e.value) != current.email]
    primary = [e for e in new if e.primary]
    work = [e for e in new if e.type in (None, "work")]
    chosen = primary or (work if len(work) == 1 else [])
    return _text(chosen[0].value) or user_name if chosen else user_name


def _role(user: User[Any]) -> str | None:
    roles = [r for r in user.roles or [] if _text(r.value) is not None]
    if not roles:
        return None
    primary = [r for r in roles if r.primary]
    if len(roles) > 1 and not primary:
        raise InvalidData("usersctl keeps one role per user: mark one of the roles primary")
    return _text((primary or roles)[0].value)


def wanted(user: User[Any], current: UserRow | None = None) -> Wanted:
    """What to store for a SCIM User (a create, a PUT, or a patched copy of `current`)."""
    return Wanted(
        email=_email(user, current),
        name=_name(user, current),
        active=user.active,
        role=_role(user),
        external_id=_text(user.external_id),
        password=user.password,
    )


def unknown_path(path: Any) -> bool:
    """Whether a PATCH path names no attribute of the core User schema (`nosuch`,
    `name.nosuch`): 400 invalidPath (RFC 7644 3.5.2). What the schema has and usersctl does
    not store (phoneNumbers, emails.type) is known, and so is an extension's attribute
    (the enterprise extension's department): both are accepted and dropped."""
    if path.model is not None or path.resolve() is not None:
        return False
    schema = path.schema
    return schema is None or str(schema).lower() == CORE_USER.lower()


# --- discovery -------------------------------------------------------------------------

_KEPT = {
    "userName": None,
    "name": {"formatted"},
    "displayName": None,
    "active": None,
    "password": None,
    "emails": {"value"},
    "roles": {"value"},
}


def user_schema(base_url: str, roles: list[str]) -> Schema:
    """The core User schema, cut down to the attributes usersctl stores: everything else
    an identity provider sends is dropped, so it is not announced. `roles`: the suggested
    values of roles.value (the config's roles when it pins them, else those in use)."""
    schema = User.to_schema()
    kept = []
    for attribute in schema.attributes or []:
        if attribute.name not in _KEPT:
            continue
        subs = _KEPT[attribute.name]
        if subs is not None:
            attribute.sub_attributes = [
                sub for sub in attribute.sub_attributes or [] if sub.name in subs
            ]
            if attribute.name == "roles":
                for sub in attribute.sub_attributes:
                    sub.canonical_values = roles
        if attribute.name == "userName":
            attribute.description = "The user's email address (usersctl's login name)."
        kept.append(attribute)
    schema.attributes = kept
    schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{CORE_USER}")
    return schema


def resource_type(base_url: str) -> ResourceType:
    found = ResourceType.from_resource(User)
    found.meta = Meta(resource_type="ResourceType", location=f"{base_url}/ResourceTypes/User")
    found.description = "The users of this usersctl database"
    return found


def service_provider_config(base_url: str) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=True),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="Bearer token",
                description="A usersctl API token with scope scim: "
                "usersctl token create NAME --scope scim",
                primary=True,
            )
        ],
        meta=Meta(
            resource_type="ServiceProviderConfig",
            location=f"{base_url}/ServiceProviderConfig",
        ),
    )


def dump(resource: Any, context: Context = Context.RESOURCE_QUERY_RESPONSE, **kw: Any) -> Any:
    return resource.model_dump(scim_ctx=context, scim_policy=POLICY, **kw)
