"""The HTTP API in-process (FastAPI's TestClient over ASGI), on every engine: the tutorial's
endpoints, the status table, every credential case, dry runs, and what logs show."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("fastapi")

import jwt  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from conftest import SEED_PASSWORD, Cli  # noqa: E402
from conftest import assert_error as assert_cli_error  # noqa: E402
from usersctl.api.app import create_app  # noqa: E402
from usersctl.config import load_settings  # noqa: E402
from usersctl.database import Database  # noqa: E402
from usersctl.errors import UsersctlError  # noqa: E402
from usersctl.revision import HEAD  # noqa: E402

PASSWORD = "an orrery of brass"
NEW_PASSWORD = "a difference engine of oak"
LOCKOUT = 3  # failed logins that lock an account (the config default is 10)


@dataclass
class Api:
    client: TestClient
    cli: Cli
    admin: dict[str, str]  # headers with a write token

    def token(self, name: str, *extra: str) -> dict[str, str]:
        secret = self.cli.json("token", "create", name, *extra)["token"]
        return {"Authorization": f"Bearer {secret}"}

    def user(self, email: str, *, role: str = "user", password: str = PASSWORD) -> int:
        body = {"name": email.split("@")[0], "email": email, "password": password, "role": role}
        response = self.client.post("/users/", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        response = self.client.post("/auth/token", data={"username": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def api(cli: Cli, db_url: str) -> Iterator[Api]:
    settings = dataclasses.replace(load_settings(database_url=db_url), lockout_threshold=LOCKOUT)
    app = create_app(settings)
    with TestClient(app) as client:
        api = Api(client=client, cli=cli, admin={})
        api.admin = api.token("admin")
        yield api
    app.state.server.database.dispose()


def assert_detail(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_tutorial_calls_and_cli_rendering(api: Api) -> None:
    client, h = api.client, api.admin
    created = client.post(
        "/users/", json={"name": "Ada", "email": "Ada@Example.com", "password": PASSWORD}, headers=h
    )
    assert created.status_code == 201
    user = created.json()
    assert created.headers["location"] == f"/users/{user['id']}"
    assert user == api.cli.json("get", str(user["id"]))  # exactly as `usersctl get -o json`
    assert PASSWORD not in created.text and "argon2" not in created.text
    listed = client.get("/users/", headers=h)
    assert listed.json() == [user] and listed.headers["x-total-count"] == "1"
    assert client.get(f"/users/{user['id']}", headers=h).json() == user
    assert client.delete(f"/users/{user['id']}", headers=h).json() == user
    assert_detail(client.get(f"/users/{user['id']}", headers=h), 404, "user not found")
    changes = [(e["action"], e["actor"]) for e in api.cli.json("audit") if e["user_id"]]
    assert sorted(changes) == [("create", "token:admin"), ("delete", "token:admin")]


def test_list_filters_paging_and_total(api: Api) -> None:
    for n in range(5):
        api.user(f"u{n}@example.com", role="admin" if n % 2 else "user")
    response = api.client.get(
        "/users/", params={"role": "user", "limit": 2, "offset": 1, "sort": "-id"},
        headers=api.admin,
    )  # fmt: skip
    assert [u["email"] for u in response.json()] == ["u2@example.com", "u0@example.com"]
    assert response.headers["x-total-count"] == "3"
    found = api.client.get("/users/", params={"search": "U3"}, headers=api.admin).json()
    assert [u["email"] for u in found] == ["u3@example.com"]
    assert_detail(api.client.get("/users/?sort=hash", headers=api.admin), 400, "cannot sort")


def test_put_patch_password_disable_enable_unlock(api: Api) -> None:
    client, h = api.client, api.admin
    uid = api.user("ada@example.com")
    put = client.put(
        f"/users/{uid}", json={"name": "Ada K", "email": "ada@example.com", "role": "admin"},
        headers=h,
    )  # fmt: skip
    assert (put.status_code, put.json()["name"], put.json()["role"]) == (200, "Ada K", "admin")
    patch = client.patch(f"/users/{uid}", json={"expires_at": "30d"}, headers=h)
    assert patch.json()["expires_at"] is not None
    assert (
        client.patch(f"/users/{uid}", json={"expires_at": None}, headers=h).json()["expires_at"]
        is None
    )
    pw = client.post(f"/users/{uid}/password", json={"password": NEW_PASSWORD}, headers=h)
    assert pw.status_code == 200
    api.login("ada@example.com", NEW_PASSWORD)
    assert client.post(f"/users/{uid}/disable", headers=h).json()["active"] is False
    assert client.post(f"/users/{uid}/enable", headers=h).json()["active"] is True
    for _ in range(LOCKOUT):
        client.post("/auth/token", data={"username": "ada@example.com", "password": "wrong!!!"})
    assert api.cli.json("get", str(uid))["locked"] is True
    assert client.post(f"/users/{uid}/unlock", headers=h).json()["locked"] is False
    actions = [e["action"] for e in api.cli.json("audit")]
    for action in ("create", "update", "passwd", "disable", "enable", "lock", "unlock"):
        assert action in actions


def test_status_table(api: Api) -> None:
    client, h = api.client, api.admin
    api.user("ada@example.com")
    body = {"name": "B", "email": "ADA@example.com", "password": PASSWORD}
    assert_detail(client.post("/users/", json=body, headers=h), 409, "email already taken")
    bad = {"name": "B", "email": "not-an-email", "password": PASSWORD}
    assert_detail(client.post("/users/", json=bad, headers=h), 422, "email")
    weak = {"name": "B", "email": "b@example.com", "password": "password"}
    response = client.post("/users/", json=weak, headers=h)
    assert_detail(response, 422, "password too short", "try a passphrase of several")
    assert 'password"' not in response.json()["detail"]  # the value is never echoed
    assert "--" not in response.json()["detail"]  # no CLI option (--random-password)
    missing = client.post("/users/", json={"name": "B"}, headers=h)
    assert_detail(missing, 422, "missing field 'email'; missing field 'password'")
    extra = {**body, "email": "c@example.com", "admin": True}
    assert_detail(client.post("/users/", json=extra, headers=h), 422, "unknown field 'admin'")
    assert_detail(client.get("/users/?limit=5000", headers=h), 422, "from 0 to 1000")
    assert_detail(client.get("/users/?active=maybe", headers=h), 422, "must be true or false")
    assert_detail(client.get("/users/abc", headers=h), 422, "invalid id: must be a whole")
    broken = client.post("/users/", content=b"{not json", headers=h)
    assert_detail(broken, 422, "not a JSON object")
    assert_detail(client.get("/users/?sort=bogus", headers=h), 400, "cannot sort by")
    assert_detail(client.get("/users/424242", headers=h), 404, "user not found")
    assert_detail(client.patch("/users/424242", json={"role": "x"}, headers=h), 404)
    assert_detail(client.patch("/users/1", json={}, headers=h), 422, "nothing to change")
    wrong = client.post("/auth/token", data={"username": "ada@example.com", "password": "nope"})
    assert_detail(wrong, 401, "incorrect email or password")


def test_http_status_follows_exit_code() -> None:
    from usersctl import errors
    from usersctl.service import http_status

    expected = {
        errors.UsageError: 400, errors.NotFound: 404, errors.Conflict: 409,
        errors.InvalidData: 422, errors.VerificationFailed: 401,
        errors.DatabaseUnavailable: 503, errors.SchemaMismatch: 503,
    }  # fmt: skip
    for cls, status in expected.items():
        assert http_status(cls("x")) == status, cls

    class Refused(UsersctlError):  # exit 9: refused by a safety limit (sync)
        exit_code = 9

    assert http_status(Refused("x")) == 409
    assert http_status(UsersctlError("x")) == 500


def test_database_unavailable_is_503(tmp_path: Any) -> None:
    app = create_app(load_settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/x"))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 503
        response = client.get("/users/", headers={"Authorization": "Bearer usc_whatever"})
        assert_detail(response, 503)


def test_healthz_503_when_schema_behind(empty_db_url: str, engine_name: str) -> None:
    from usersctl import migrations

    database = Database(load_settings(database_url=empty_db_url))
    migrations.upgrade(database, "0004")
    database.dispose()
    app = create_app(load_settings(database_url=empty_db_url))
    with TestClient(app) as client:
        response = client.get("/healthz")
        assert response.status_code == 503 and "detail" in response.json()


def _set_revision(url: str, revision: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


@pytest.mark.parametrize(
    ("revision", "says"),
    [("0099", "newer than this usersctl knows"), ("0006", "run `usersctl db upgrade`")],
)
def test_a_schema_changed_under_the_server_stops_every_request(
    api: Api, db_url: str, revision: str, says: str
) -> None:
    """A newer usersctl's `db upgrade` (or a downgrade) while the server runs: every write
    is 503 at once, as a command would exit 8, not a write under the old schema's rules;
    reads too once one request has seen it (and within a second in any case); back at
    head, the server serves again without a restart."""
    uid = api.user("ada@example.com")
    before = api.cli.json("list")
    _set_revision(db_url, revision)
    client, h = api.client, api.admin
    body = {"name": "Bob", "email": "bob@example.com", "password": PASSWORD}
    assert_detail(client.post("/users/", json=body, headers=h), 503, says)  # a write
    assert_detail(client.patch(f"/users/{uid}", json={"name": "X"}, headers=h), 503, says)
    assert_detail(client.get("/users/", headers=h), 503, says)
    assert_detail(client.get(f"/users/{uid}", headers=h), 503, says)
    login = {"username": "ada@example.com", "password": PASSWORD}
    assert_detail(client.post("/auth/token", data=login), 503, says)
    assert client.get("/healthz").status_code == 503
    _set_revision(db_url, HEAD)
    assert api.cli.json("list") == before  # nothing was written, no login recorded
    assert client.post("/users/", json=body, headers=h).status_code == 201


def test_reads_see_a_changed_schema_within_a_second(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read trusts a check that found head less than HEAD_RECHECK_SECONDS ago (the hot
    path's cost), and checks again after it."""
    import usersctl.database

    uid = api.user("ada@example.com")
    assert api.client.get(f"/users/{uid}", headers=api.admin).status_code == 200
    _set_revision(db_url, "0099")
    monkeypatch.setattr(usersctl.database, "HEAD_RECHECK_SECONDS", 0.0)  # the second passed
    assert_detail(api.client.get(f"/users/{uid}", headers=api.admin), 503, "newer than")
    _set_revision(db_url, HEAD)
    assert api.client.get(f"/users/{uid}", headers=api.admin).status_code == 200


def test_healthz_needs_no_credential(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def _signing_key(url: str) -> str:
    from usersctl import tokens

    database = Database(load_settings(database_url=url))
    with database.session(write=True) as session:
        key = tokens.ensure_signing_key(session=session)
    database.dispose()
    return key


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_every_credential_case(api: Api, db_url: str) -> None:
    client = api.client
    uid = api.user("ada@example.com", role="admin")
    good = api.login("ada@example.com")
    assert client.get("/users/", headers=good).status_code == 200
    raw = good["Authorization"].removeprefix("Bearer ")
    key = _signing_key(db_url)
    claims = jwt.decode(raw, key, algorithms=["HS256"])
    cases = {
        "missing": {},
        "malformed": {"Authorization": "Bearer"},
        "not bearer": {"Authorization": f"Basic {raw}"},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "unknown api token": {"Authorization": "Bearer usc_" + "A" * 43},
        "tampered": {"Authorization": f"Bearer {raw[:-2]}{'AA' if raw[-2:] != 'AA' else 'BB'}"},
        "alg none": {
            "Authorization": "Bearer "
            + _b64({"alg": "none", "typ": "JWT"})
            + "."
            + _b64(claims)
            + "."
        },
        "expired": {
            "Authorization": "Bearer "
            + jwt.encode({**claims, "exp": claims["iat"] - 60}, key, algorithm="HS256")
        },
        "other key": {"Authorization": "Bearer " + jwt.encode(claims, "x" * 64, algorithm="HS256")},
    }
    for case, headers in cases.items():
        response = client.get("/users/", headers=headers)
        assert response.status_code == 401, case
        assert response.headers["www-authenticate"] == "Bearer", case
    # A read token may read, not write.
    reader = api.token("ro", "--scope", "read")
    assert client.get("/users/", headers=reader).status_code == 200
    assert_detail(client.post(f"/users/{uid}/disable", headers=reader), 403)
    assert_detail(client.delete(f"/users/{uid}", headers=reader), 403)
    # Revoked and expired API tokens.
    api.cli.ok("token", "revoke", "ro")
    assert_detail(client.get("/users/", headers=reader), 401)
    listed = api.cli.json("token", "list")
    assert {t["name"]: t["revoked"] for t in listed} == {"admin": False, "ro": True}
    assert "usc_" not in json.dumps(listed)


def test_login_token_stops_at_once(api: Api) -> None:
    client, h = api.client, api.admin
    ids = {name: api.user(f"{name}@example.com", role="admin") for name in
           ("disabled", "deleted", "locked", "changed", "rotated")}  # fmt: skip
    tokens = {name: api.login(f"{name}@example.com") for name in ids}
    for headers in tokens.values():
        assert client.get("/users/me", headers=headers).status_code == 200
    client.post(f"/users/{ids['disabled']}/disable", headers=h)
    client.delete(f"/users/{ids['deleted']}", headers=h)
    for _ in range(LOCKOUT):
        client.post("/auth/token", data={"username": "locked@example.com", "password": "wrong!!"})
    client.post(f"/users/{ids['changed']}/password", json={"password": NEW_PASSWORD}, headers=h)
    for name in ("disabled", "deleted", "locked", "changed"):
        assert_detail(client.get("/users/me", headers=tokens[name]), 401)
    assert client.get("/users/me", headers=tokens["rotated"]).status_code == 200
    api.cli.ok("token", "rotate-signing-key")
    assert_detail(client.get("/users/me", headers=tokens["rotated"]), 401)
    assert client.get("/users/", headers=h).status_code == 200  # admin tokens unaffected
    assert client.get("/users/me", headers=api.login("rotated@example.com")).status_code == 200


def test_a_change_to_the_account_ends_its_login_tokens(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disabled and enabled again within a token's lifetime, the account does not take the
    token back; nor after any other change an admin makes. Logins and failed guesses are
    not changes."""
    from sqlalchemy import update

    from usersctl import lifecycle
    from usersctl.models import User, utcnow

    client, h = api.client, api.admin
    names = ("again", "renamed", "kept", "ahead")
    ids = {name: api.user(f"{name}@example.com") for name in names}
    # Last changed 20 s ago, logged in 10 s ago: the changes below come seconds later.
    # "ahead" was last changed in an hour, by the clock of whatever wrote it (a restored
    # backup, another host's clock): a time still to come ends no session.
    database = Database(load_settings(database_url=db_url))
    with database.session(write=True) as session:
        session.execute(update(User).values(updated_at=utcnow() - timedelta(seconds=20)))
        later = utcnow() + timedelta(hours=1)
        session.execute(update(User).where(User.id == ids["ahead"]).values(updated_at=later))
    database.dispose()
    real_now = lifecycle.now
    monkeypatch.setattr(lifecycle, "now", lambda: real_now() - timedelta(seconds=10))
    tokens = {name: api.login(f"{name}@example.com") for name in ids}
    monkeypatch.setattr(lifecycle, "now", real_now)
    for headers in tokens.values():
        assert client.get("/users/me", headers=headers).status_code == 200
    assert client.post(f"/users/{ids['again']}/disable", headers=h).status_code == 200
    assert client.post(f"/users/{ids['again']}/enable", headers=h).status_code == 200
    renamed = client.patch(f"/users/{ids['renamed']}", json={"name": "New Name"}, headers=h)
    assert renamed.status_code == 200
    client.post("/auth/token", data={"username": "kept@example.com", "password": "wrong!!"})
    api.login("kept@example.com")
    assert_detail(client.get("/users/me", headers=tokens["again"]), 401)
    assert_detail(client.get("/users/me", headers=tokens["renamed"]), 401)
    assert client.get("/users/me", headers=tokens["kept"]).status_code == 200
    assert client.get("/users/me", headers=tokens["ahead"]).status_code == 200
    assert client.get("/users/me", headers=api.login("again@example.com")).status_code == 200


def test_roles_self_service_and_must_change(api: Api) -> None:
    client, h = api.client, api.admin
    api.user("plain@example.com")
    plain = api.login("plain@example.com")
    assert client.get("/users/me", headers=plain).json()["email"] == "plain@example.com"
    assert_detail(client.get("/users/", headers=plain), 403)
    assert_detail(client.get("/users/me", headers=h), 403)  # an API token is nobody
    wrong = {"current_password": "not it at all", "new_password": NEW_PASSWORD}
    assert_detail(client.put("/users/me/password", json=wrong, headers=plain), 401)
    weak = {"current_password": PASSWORD, "new_password": "plain@example.com"}
    assert_detail(client.put("/users/me/password", json=weak, headers=plain), 422)
    ok = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.put("/users/me/password", json=ok, headers=plain).status_code == 200
    assert_detail(client.get("/users/me", headers=plain), 401)  # its password changed
    uid = api.user("temp@example.com")
    client.post(
        f"/users/{uid}/password", json={"password": PASSWORD, "must_change_password": True},
        headers=h,
    )  # fmt: skip
    temp = api.login("temp@example.com")
    assert_detail(client.get("/users/me", headers=temp), 403)
    response = client.put("/users/me/password", json=ok, headers=temp)
    assert response.json()["must_change_password"] is False
    assert client.get("/users/me", headers=api.login("temp@example.com", NEW_PASSWORD)).is_success


def test_dry_runs_change_nothing(api: Api) -> None:
    client, h = api.client, api.admin
    uid = api.user("ada@example.com")
    before = api.cli.json("get", str(uid))
    audit_before = api.cli.json("audit")
    calls = [
        ("post", "/users/", {"name": "B", "email": "b@example.com", "password": PASSWORD}),
        ("put", f"/users/{uid}", {"name": "X", "email": "x@example.com", "role": "admin"}),
        ("patch", f"/users/{uid}", {"role": "admin"}),
        ("post", f"/users/{uid}/password", {"password": NEW_PASSWORD}),
        ("post", f"/users/{uid}/disable", None),
        ("delete", f"/users/{uid}", None),
    ]
    for method, path, body in calls:
        kwargs: dict[str, Any] = {"headers": h, "params": {"dry_run": "true"}}
        if body is not None:
            kwargs["json"] = body
        response = client.request(method.upper(), path, **kwargs)
        assert response.status_code == 200, (path, response.text)
        planned = response.json()
        assert isinstance(planned, list) and len(planned) == 1, planned
        assert set(planned[0]) == {"action", "user_id", "email", "changes"}
        if path == "/users/":  # what the real request would record (it hashes nothing)
            assert planned[0]["changes"]["password"] == "set", planned
    assert client.post(f"/users/{uid}/enable?dry_run=true", headers=h).json() == []
    assert api.cli.json("get", str(uid)) == before
    assert api.cli.json("audit") == audit_before
    assert api.cli.json("list") == [before]


def test_docs_are_published_only_when_asked(api: Api, db_url: str) -> None:
    for path in ("/docs", "/openapi.json"):  # by default: no route at all, even with a token
        assert api.client.get(path).status_code == 404
        assert api.client.get(path, headers=api.admin).status_code == 404
    app = create_app(load_settings(database_url=db_url), docs=True)
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "usersctl"
    app.state.server.database.dispose()


def test_openapi_documents_every_endpoint_with_an_example(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    text = json.dumps(spec)
    for path in ("/users/", "/users/{user_id}", "/auth/token", "/healthz", "/users/me"):
        assert path in spec["paths"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            content = json.dumps(operation.get("responses", {})) + json.dumps(
                operation.get("requestBody", {})
            )
            assert "example" in content or "$ref" in content, (method, path)
    assert '"examples"' in text


def test_no_secret_in_logs_or_errors(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.user("ada@example.com", role="admin")
    login = api.client.post(
        "/auth/token", data={"username": "ada@example.com", "password": PASSWORD}
    )
    access = login.json()["access_token"]
    wrong = api.client.post(
        "/auth/token", data={"username": "ada@example.com", "password": SEED_PASSWORD}
    )
    api.client.get("/users/me", headers={"Authorization": f"Bearer {access}"})
    api.client.get("/users/", headers={"Authorization": f"Bearer {access}x"})
    secret = api.admin["Authorization"].removeprefix("Bearer ")
    logged = caplog.text + wrong.text
    for value in (PASSWORD, SEED_PASSWORD, access, secret, "$argon2"):
        assert value not in logged


def test_expired_api_token_is_refused(api: Api, db_url: str) -> None:
    from sqlalchemy import update

    from usersctl.models import ApiToken

    soon = api.token("soon", "--expires", "1h")
    assert api.client.get("/users/", headers=soon).status_code == 200
    database = Database(load_settings(database_url=db_url))
    with database.session(write=True) as session:  # an hour later, without waiting for it
        session.execute(
            update(ApiToken)
            .where(ApiToken.name == "soon")
            .values(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    database.dispose()
    assert_detail(api.client.get("/users/", headers=soon), 401, "invalid credentials")
    assert api.client.get("/users/", headers=api.admin).status_code == 200


def test_login_spends_the_same_argon2_work_for_unknown_accounts(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usersctl import passwords

    api.user("ada@example.com")
    verified: list[str] = []
    real = passwords.verify

    def counting(stored_hash: str, password: str) -> tuple[bool, str | None]:
        verified.append(stored_hash.split("$")[1])
        return real(stored_hash, password)

    monkeypatch.setattr(passwords, "verify", counting)
    answers = []
    for email in ("ada@example.com", "nobody@example.com"):
        verified.clear()
        response = api.client.post("/auth/token", data={"username": email, "password": "wrong"})
        answers.append((response.status_code, response.json(), verified[:]))
    refused = (401, {"detail": "incorrect email or password"}, ["argon2id"])
    assert answers[0] == answers[1] == refused


@pytest.mark.parametrize("engine_name", ["sqlite"])  # SQLite locks the whole database
def test_failed_logins_are_never_uncounted_while_the_database_is_busy(
    api: Api, db_url: str
) -> None:
    """A failure waits for the write lock (the busy timeout) and, if another writer holds
    it that long (a long import), is answered 503, remembered, and counted by the next
    login of that user before any password is checked (until then, every login of that
    user is 503 unchecked). It used to give up after 0.1 s and answer 401 uncounted:
    guesses during a long import never locked the account."""
    import sqlite3

    from sqlalchemy.engine import make_url

    api.user("ada@example.com")
    settings = dataclasses.replace(
        load_settings(database_url=db_url), lockout_threshold=LOCKOUT, busy_timeout=0.3
    )
    app = create_app(settings)
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    try:
        with TestClient(app) as client:

            def log_in(email: str, password: str) -> Any:
                return client.post("/auth/token", data={"username": email, "password": password})

            holder.execute("BEGIN IMMEDIATE")  # another process's long write
            for guess in range(LOCKOUT):  # the first is checked; the others wait for it
                answer = log_in("ada@example.com", f"guess {guess}")
                assert_detail(answer, 503, "database busy")
                assert answer.headers["Retry-After"] == "1"
            # No answer tells a wrong guess or an unknown account from the right password:
            assert_detail(log_in("nobody@example.com", "guess"), 503, "database busy")
            assert_detail(log_in("ada@example.com", PASSWORD), 503, "database busy")
            holder.execute("ROLLBACK")
            # The remembered failure is counted first: with two more, the account locks.
            for guess in range(LOCKOUT - 1):
                assert_detail(log_in("ada@example.com", f"again {guess}"), 401, "incorrect")
            assert_detail(log_in("ada@example.com", PASSWORD), 401, "incorrect")
        app.state.server.database.dispose()
    finally:
        holder.close()
    got = api.cli.json("get", "ada@example.com")
    assert got["locked"] is True
    (entry,) = api.cli.json("audit", "--action", "lock")
    assert entry["changes"]["failed_logins"] == {"before": LOCKOUT - 1, "after": LOCKOUT}


@pytest.mark.parametrize("engine_name", ["sqlite"])  # SQLite locks the whole database
def test_guesses_sent_together_are_not_all_checked_while_the_first_waits(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One login of an account is checked at a time: while the first wrong guess waits
    for a busy database, the others sent with it get 503 without their password being
    checked (they were all checked first, and uncounted ones told wrong from right)."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.engine import make_url

    from usersctl import passwords

    api.user("ada@example.com")
    checked: list[str] = []
    real = passwords.verify

    def counting(stored_hash: str, password: str) -> tuple[bool, str | None]:
        checked.append(password)
        return real(stored_hash, password)

    monkeypatch.setattr(passwords, "verify", counting)
    settings = dataclasses.replace(
        load_settings(database_url=db_url), lockout_threshold=LOCKOUT, busy_timeout=0.5
    )
    app = create_app(settings)
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    try:
        with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
            holder.execute("BEGIN IMMEDIATE")
            answers = list(pool.map(
                lambda n: client.post("/auth/token",
                                      data={"username": "ada@example.com", "password": f"g{n}"}),
                range(4),
            ))  # fmt: skip
            holder.execute("ROLLBACK")
        app.state.server.database.dispose()
    finally:
        holder.close()
    assert [a.status_code for a in answers] == [503] * 4
    assert len(checked) == 1, checked


def test_logins_waiting_for_the_database_are_bounded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each login waiting for a lock holds a connection: past WAITING_LOGINS the answer
    is 503 at once (wrong passwords for the users a sync holds took every pooled
    connection, and every other request got 503). Such a failure is still counted later."""
    import threading

    from sqlalchemy import create_engine, text

    from usersctl import lifecycle

    api.user("ada@example.com")
    full = threading.BoundedSemaphore(1)
    full.acquire()  # every waiting place taken
    monkeypatch.setattr(lifecycle, "_WAITING", full)
    login = {"username": "ada@example.com", "password": "a wrong one"}
    assert_detail(api.client.post("/auth/token", data=login), 503, "logins are already waiting")
    right = {"username": "ada@example.com", "password": PASSWORD}
    assert api.client.post("/auth/token", data=right).status_code == 503  # (counted first)
    full.release()
    assert api.client.post("/auth/token", data=login).status_code == 401
    engine = create_engine(api.cli.url)
    with engine.connect() as connection:
        failures = connection.execute(text("SELECT failed_logins FROM users")).scalar_one()
    engine.dispose()
    assert failures == 2  # the remembered one, then this one


def test_token_commands_are_audited_and_checked(api: Api) -> None:
    cli = api.cli
    cli.ok("--actor", "alice", "token", "create", "ci", "--scope", "read", "--expires", "never")
    cli.ok("token", "revoke", "ci", "--actor", "bob")  # global options after the command too
    cli.ok("token", "revoke", "ci")  # already revoked: nothing to record
    cli.ok("token", "rotate-signing-key")
    entries = [e for e in cli.json("audit") if e["action"].startswith("token-")]
    assert [(e["action"], e["changes"]) for e in reversed(entries)] == [
        ("token-create", {"token": "admin", "scopes": {"before": None, "after": "read write"},
                          "expires_at": {"before": None, "after": entries[-1]["changes"]
                                         ["expires_at"]["after"]}}),
        ("token-create", {"token": "ci", "scopes": {"before": None, "after": "read"},
                          "expires_at": {"before": None, "after": None}}),
        ("token-revoke", {"token": "ci", "revoked": {"before": False, "after": True}}),
        ("token-rotate-signing-key", {"signing_key": "replaced"}),
    ]  # fmt: skip
    assert [e["actor"] for e in entries[1:3]] == ["bob", "alice"]
    assert_cli_error(cli("token", "create", "ci"), 4, "token name already taken: ci")
    assert_cli_error(cli("token", "create", "-bad"), 2)
    assert_cli_error(cli("token", "create", "bad name"), 5, "invalid token name")
    assert_cli_error(cli("token", "create", "x", "--scope", "admin"), 2, "--scope")
    assert_cli_error(cli("token", "create", "x", "--expires", "soon"), 2, "--expires")
    assert_cli_error(cli("token", "revoke", "nobody"), 3, "token not found: nobody")
    assert cli.ok("token", "list", "-o", "json").stdout.count('"name"') == 2


def test_token_scopes_read_the_same_in_create_and_list(cli: Cli) -> None:
    """CSV and tab-separated plain: "read write", one field; JSON: a list."""
    made = cli.ok("token", "create", "both", "-o", "csv").stdout.splitlines()
    assert made[0] == "name,token,scopes,expires_at"
    assert made[1].split(",")[2] == "read write"
    plain = cli.ok("token", "create", "one", "--scope", "read", "-o", "plain").stdout
    assert plain.split("\t")[2] == "read"
    assert cli.json("token", "create", "json")["scopes"] == ["read", "write"]
    listed = cli.ok("token", "list", "-o", "csv").stdout.splitlines()
    scopes = dict(line.split(",")[:2] for line in listed[1:])
    assert scopes == {"both": "read write", "one": "read", "json": "read write"}


def test_an_unexpected_error_is_one_log_line_and_a_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from usersctl import crud

    def broken(**_kwargs: Any) -> Any:
        raise RuntimeError("INSERT ... parameters: ('$argon2id$v=19$secret',)")

    monkeypatch.setattr(crud, "get_user", broken)
    caplog.set_level(logging.INFO, logger="usersctl.access")
    response = api.client.get("/users/1", headers=api.admin)
    assert response.status_code == 500
    assert response.json() == {"detail": "unexpected error (a bug): see the server log"}
    assert "unexpected error (a bug) in GET /users/1: RuntimeError" in caplog.text
    assert "argon2" not in caplog.text and "Traceback" not in caplog.text


PUBLIC = {("GET", "/healthz"), ("POST", "/auth/token")}


def test_every_route_checks_the_credential(api: Api, db_url: str) -> None:
    """Each route of the app's routers (the SCIM ones too), found by walking them rather
    than listed by hand: no credential, a garbage one and an unknown API token are 401; a read
    token writing and a plain user's login on an admin route are 403; nothing changes."""
    from fastapi.routing import APIRoute

    from usersctl.api.routes import auth, health, users
    from usersctl.api.scim.routes import router as scim_router

    uid = api.user("target@example.com")
    api.user("plain@example.com")
    plain = api.login("plain@example.com")
    reader = api.token("ro", "--scope", "read")
    before = api.cli.json("list", "--sort", "id")
    settings = dataclasses.replace(load_settings(database_url=db_url), lockout_threshold=LOCKOUT)
    app = create_app(settings, scim=True)
    calls = [
        (method, route.path)
        for router in (health.router, auth.router, users.router, scim_router)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods)
        if (method, route.path) not in PUBLIC
    ]
    assert len(calls) > 20, calls
    bad = {
        "missing": {},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "unknown api token": {"Authorization": "Bearer usc_" + "A" * 43},
    }
    with TestClient(app) as client:
        for method, template in calls:
            path = template.replace("{user_id}", str(uid)).replace("{path:path}", "x")
            path = re.sub(r"\{[a-z_]+(:[a-z]+)?\}", "x", path)
            for case, headers in bad.items():
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, case, response.text)
            if method != "GET" and not path.startswith("/scim"):
                response = client.request(method, path, headers=reader, json={})
                assert response.status_code == 403, (method, path, response.text)
            if not path.startswith("/users/me"):
                response = client.request(method, path, headers=plain, json={})
                assert response.status_code == 403, (method, path, response.text)
    app.state.server.database.dispose()
    assert api.cli.json("list", "--sort", "id") == before


def test_api_token_use_is_recorded_by_reads_and_writes(api: Api) -> None:
    """A token's last use is written (best effort, at most once a minute) after a read,
    which runs on the read threads, and after a write."""
    client = api.client
    reader = api.token("ro", "--scope", "read")
    writer = api.token("rw")

    def last_used(name: str) -> Any:
        return {t["name"]: t["last_used_at"] for t in api.cli.json("token", "list")}[name]

    assert last_used("ro") is None and last_used("rw") is None
    assert client.get("/users/", headers=reader).status_code == 200
    assert last_used("ro") is not None
    uid = api.user("used@example.com")
    assert client.post(f"/users/{uid}/disable", headers=writer).status_code == 200
    assert last_used("rw") is not None


def test_read_with_malformed_query_answers_401_without_header_else_422(api: Api) -> None:
    """As the README says: no Authorization header is 401 first; a malformed query with
    some credential is 422 before the credential is looked up (nothing is read)."""
    client = api.client
    assert_detail(client.get("/users/?limit=5000"), 401)
    bad = {"Authorization": "Bearer usc_" + "A" * 43}
    assert client.get("/users/?limit=5000", headers=bad).status_code == 422
    assert_detail(client.get("/users/?limit=5", headers=bad), 401)
    assert client.get("/users/?limit=5000", headers=api.admin).status_code == 422


def test_one_app_served_by_two_event_loops_at_once(api: Api, db_url: str) -> None:
    """The read limiter is per event loop: one app behind two TestClients (two loops) at
    the same time, with one read thread, answers every request (a limiter shared across
    loops woke no waiter and hung)."""
    from concurrent.futures import ThreadPoolExecutor, wait

    settings = load_settings(database_url=db_url)
    app = create_app(settings, read_threads=1)
    with TestClient(app) as one, TestClient(app) as two, ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(lambda c: c.get("/users/", headers=api.admin).status_code, client)
            for client in [one, two] * 100
        ]
        done, pending = wait(futures, timeout=120)
        assert not pending, f"{len(pending)} requests hung"
        assert {future.result() for future in done} == {200}
    assert app.state.server.database.engine.pool.checkedout() == 0
    app.state.server.database.dispose()


def test_a_server_out_of_connections_answers_503_with_retry_after(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection in use: a request waits the busy timeout for one, then gets
    503 "database busy" and Retry-After (it was a 500, "a bug", after 30 s), on the users
    API and on SCIM; the next request, once a connection is free, succeeds."""
    import usersctl.api.app
    import usersctl.database

    monkeypatch.setattr(usersctl.api.app, "SERVER_POOL", 1)
    monkeypatch.setattr(usersctl.database, "SERVER_POOL_OVERFLOW", 0)
    settings = dataclasses.replace(load_settings(database_url=db_url), busy_timeout=0.3)
    app = create_app(settings, scim=True)
    scim = {**api.token("idp", "--scope", "scim"), "Accept": "application/scim+json"}
    with TestClient(app) as client:
        held = app.state.server.database.engine.connect()
        try:
            for path, headers in (("/users/", api.admin), ("/scim/v2/Users", scim)):
                response = client.get(path, headers=headers)
                assert response.status_code == 503, response.text
                assert "database busy" in response.json()["detail"], response.text
                assert response.headers["retry-after"] == "1"
        finally:
            held.close()
        assert client.get("/users/", headers=api.admin).status_code == 200
    app.state.server.database.dispose()
