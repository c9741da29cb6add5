"""The HTTP API's credentials, below both front ends: admin API tokens (made and revoked
by `usersctl token`, checked by `usersctl serve`) and the JWT signing key.

An API token is 256 random bits, shown once; only its SHA-256 digest is stored. A fast
digest is right here (unlike passwords): nobody can guess 2**256 values, so a slow hash
would add nothing but latency to every request.

The signing key lives in the database (api_settings), so every server process on it signs
and checks with the same key, and replacing it (`rotate_signing_key`) invalidates every
login token at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from usersctl.errors import Conflict, InvalidData, NotFound
from usersctl.models import ApiSetting, ApiToken, utcnow

if TYPE_CHECKING:
    from usersctl.audit import Trail

TOKEN_PREFIX = "usc_"
SCOPES = ("read", "write", "scim")  # scim: the SCIM endpoints only (serve --scim)
SIGNING_KEY = "jwt_signing_key"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_api_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidData(
            "invalid token name: 1-100 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def scopes_for(scope: str) -> tuple[str, ...]:
    """`write` implies `read`; `scim` is on its own (an identity provider's token)."""
    if scope not in SCOPES:
        raise InvalidData(f"invalid scope {scope!r}: choose read, write or scim")
    return {"write": ("read", "write"), "read": ("read",), "scim": ("scim",)}[scope]


def token_record(token: ApiToken) -> dict[str, Any]:
    from usersctl.timestamps import iso_utc

    def when(value: datetime | None) -> str | None:
        return None if value is None else iso_utc(value)

    return {
        "name": token.name,
        "scopes": token.scopes.split(),
        "created_at": when(token.created_at),
        "expires_at": when(token.expires_at),
        "last_used_at": when(token.last_used_at),
        "revoked": bool(token.revoked),
    }


def create_token(
    *, session: Session, name: str, scope: str, expires_at: datetime | None, trail: Trail
) -> tuple[ApiToken, str]:
    """A new token: the row (digest only) and the token itself, to be shown once. The
    audit entry (`token-create`) names the token, its scopes and expiry: never the token."""
    check_name(name)
    scopes = scopes_for(scope)
    if session.scalars(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise Conflict(f"token name already taken: {name}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    row = ApiToken(
        name=name,
        digest=digest(secret),
        scopes=" ".join(scopes),
        created_at=utcnow(),
        expires_at=expires_at,
        revoked=False,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"token name already taken: {name}") from None
    record = token_record(row)
    trail.record(
        session,
        "token-create",
        changes={
            "token": name,
            "scopes": {"before": None, "after": " ".join(scopes)},
            "expires_at": {"before": None, "after": record["expires_at"]},
        },
    )
    return row, secret


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_token(*, session: Session, name: str, trail: Trail) -> ApiToken:
    """Revoke the token (`token-revoke`; revoking a revoked one records nothing)."""
    row = session.scalars(select(ApiToken).where(ApiToken.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"token not found: {name}")
    if not row.revoked:
        row.revoked = True
        session.flush()
        trail.record(
            session,
            "token-revoke",
            changes={"token": name, "revoked": {"before": False, "after": True}},
        )
    return row


@dataclass(frozen=True)
class TokenGrant:
    name: str
    scopes: tuple[str, ...]
    stale_use: bool  # last_used_at is due an update


# Built once (the statement, not just its compiled form, costs ~40 us to build per request).
_LIVE_TOKEN = select(
    ApiToken.name, ApiToken.scopes, ApiToken.revoked, ApiToken.expires_at,
    ApiToken.last_used_at, ApiToken.digest,
).where(ApiToken.digest == bindparam("digest"))  # fmt: skip


def find_token(*, session: Session | Connection, token: str, moment: datetime) -> TokenGrant | None:
    """The live (not revoked, not expired) token, or None. Compares digests, so the
    lookup's timing says nothing about the token. (The server passes a Core connection:
    an ORM session would double the cost of every request's credential check.)"""
    wanted = digest(token)
    row = session.execute(_LIVE_TOKEN, {"digest": wanted}).one_or_none()
    if row is None:
        return None
    name, scopes, revoked, expires_at, last_used_at, stored = row
    if revoked or (expires_at is not None and expires_at <= moment):
        return None
    if not hmac.compare_digest(stored, wanted):  # pragma: no cover - same by query
        return None
    stale = last_used_at is None or last_used_at <= moment - LAST_USED_EVERY
    return TokenGrant(name=name, scopes=tuple(scopes.split()), stale_use=stale)


def mark_used(*, session: Session, name: str, moment: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.name == name).values(last_used_at=moment))


def signing_key(*, session: Session) -> str | None:
    return session.scalar(select(ApiSetting.value).where(ApiSetting.name == SIGNING_KEY))


def ensure_signing_key(*, session: Session) -> str:
    """The key, made now if the database has none (by whichever server comes first)."""
    existing = signing_key(session=session)
    if existing is not None:
        return existing
    key = secrets.token_urlsafe(48)
    try:
        with session.begin_nested():
            session.add(ApiSetting(name=SIGNING_KEY, value=key))
    except IntegrityError:  # another server made one meanwhile: use theirs
        found = signing_key(session=session)
        assert found is not None
        return found
    return key


def rotate_signing_key(*, session: Session, trail: Trail) -> None:
    """Replace the key: every login token made so far stops working at once
    (`token-rotate-signing-key`; the entry never holds a key)."""
    key = secrets.token_urlsafe(48)
    done = session.execute(
        update(ApiSetting).where(ApiSetting.name == SIGNING_KEY).values(value=key)
    )
    if not getattr(done, "rowcount", 0):
        session.add(ApiSetting(name=SIGNING_KEY, value=key))
        session.flush()
    trail.record(session, "token-rotate-signing-key", changes={"signing_key": "replaced"})


def password_generation(key: str, password_hash: str | None) -> str:
    """A JWT claim that changes whenever the user's password does (a rehash too), keyed so
    that the token reveals nothing about the hash."""
    mac = hmac.new(key.encode(), (password_hash or "").encode(), hashlib.sha256)
    return mac.hexdigest()[:22]
