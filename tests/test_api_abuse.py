"""What a hostile or careless client can do to the HTTP front end, in-process over ASGI on
every engine: bodies too large to read, guessing the current password, a login racing a
password reset, a SCIM token reaching for admin rights, and the SCIM requests that used to
answer 200 (or 500, or 503) wrongly. Found by a review and a new-admin tryout."""

# ruff: noqa: F811  (the api and scim fixtures are imported from their own test modules)

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("scim2_models")

from test_api_http import LOCKOUT, NEW_PASSWORD, PASSWORD, Api, api, assert_detail  # noqa: E402, F401
from test_scim import PATCH_SCHEMA, USER_SCHEMA, Scim, assert_scim_error, scim  # noqa: E402, F401

from conftest import Cli  # noqa: E402

MIB = 1 << 20


def _users(cli: Cli) -> Any:
    return cli.json("list", "--limit", "1000")


def _audit_count(cli: Cli) -> int:
    return len(cli.json("audit", "--limit", "1000"))


# --- request bodies ------------------------------------------------------------------------


def test_a_body_over_one_mib_is_refused_before_it_is_read_or_the_credential_checked(
    api: Api,
) -> None:
    big = json.dumps({"name": "x" * (2 * MIB), "email": "big@example.com"}).encode()
    # Content-Length says so: 413 at once, with no credential at all.
    response = api.client.post("/users/", content=big, headers={"content-type": "application/json"})
    assert_detail(response, 413, "at most 1 MiB")
    # A chunked body (no Content-Length): refused once the bytes read pass the limit.
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    response = api.client.post("/users/", content=chunks, headers=api.admin)
    assert_detail(response, 413, "at most 1 MiB")
    assert _users(api.cli) == []
    # Just under the limit is read (and then judged on its merits).
    fits = json.dumps({"name": "x" * (MIB - 100), "email": "fits@example.com"}).encode()
    response = api.client.post("/users/", content=fits, headers=api.admin)
    assert response.status_code == 422, response.text


def test_a_scim_body_over_one_mib_is_a_scim_error(scim: Scim) -> None:
    big = json.dumps({"schemas": [USER_SCHEMA], "userName": "a@example.com", "x": "y" * MIB})
    response = scim.client.post(
        "/scim/v2/Users", content=big, headers={"content-type": "application/scim+json"}
    )
    assert_scim_error(response, 413, None, "at most 1 MiB")


# --- one's own password --------------------------------------------------------------------


def test_guessing_the_current_password_counts_and_locks_like_a_login(api: Api) -> None:
    api.user("plain@example.com")
    token = api.login("plain@example.com")
    wrong = {"current_password": "not it at all", "new_password": NEW_PASSWORD}
    for _ in range(LOCKOUT):
        assert_detail(api.client.put("/users/me/password", json=wrong, headers=token), 401)
    record = api.cli.json("get", "plain@example.com")
    assert record["locked"] is True
    assert any(entry["action"] == "lock" for entry in api.cli.json("audit"))
    # Locked: the right password no longer logs in, and the stolen token stops working.
    response = api.client.post(
        "/auth/token", data={"username": "plain@example.com", "password": PASSWORD}
    )
    assert_detail(response, 401)
    assert_detail(api.client.get("/users/me", headers=token), 401)


def test_a_forced_change_cannot_be_answered_with_the_same_password(api: Api) -> None:
    uid = api.user("temp@example.com")
    api.client.post(
        f"/users/{uid}/password",
        json={"password": PASSWORD, "must_change_password": True},
        headers=api.admin,
    )
    token = api.login("temp@example.com")
    before = _audit_count(api.cli)
    same = {"current_password": PASSWORD, "new_password": PASSWORD}
    assert_detail(api.client.put("/users/me/password", json=same, headers=token), 422, "differ")
    assert api.cli.json("get", str(uid))["must_change_password"] is True
    assert _audit_count(api.cli) == before


def test_a_login_racing_a_password_reset_gets_a_token_the_reset_ends(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usersctl.lifecycle

    api.user("bob@example.com")
    real = usersctl.lifecycle.login

    def login_then_reset(**kwargs: Any) -> Any:
        result = real(**kwargs)  # verified with the old password; now the admin resets it
        api.cli.ok("passwd", "bob@example.com", "--password-stdin", input=NEW_PASSWORD + "\n")
        return result

    monkeypatch.setattr(usersctl.lifecycle, "login", login_then_reset)
    response = api.client.post(
        "/auth/token", data={"username": "bob@example.com", "password": PASSWORD}
    )
    monkeypatch.setattr(usersctl.lifecycle, "login", real)
    assert response.status_code == 200, response.text
    token = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert_detail(api.client.get("/users/me", headers=token), 401)  # the reset ended it
    assert api.client.get(
        "/users/me", headers=api.login("bob@example.com", NEW_PASSWORD)
    ).is_success


def test_a_search_longer_than_any_name_or_email_is_a_client_error(api: Api) -> None:
    api.user("ada@example.com")
    response = api.client.get("/users/", params={"search": "a" * 60_000}, headers=api.admin)
    assert_detail(response, 400, "at most 320 characters")
    assert "retry-after" not in response.headers
    found = api.client.get("/users/", params={"search": "ADA@"}, headers=api.admin)
    assert [user["email"] for user in found.json()] == ["ada@example.com"]
    result = api.cli("list", "--search", "b" * 321)
    assert result.exit_code == 2, result.output
    assert "at most 320 characters" in result.stderr


# --- SCIM: no way to admin rights ----------------------------------------------------------


def test_a_scim_token_cannot_make_an_admin(scim: Scim) -> None:
    body = {"schemas": [USER_SCHEMA], "userName": "eve@example.com", "roles": [{"value": "admin"}]}
    assert_scim_error(scim.post("/Users", body), 403, None, "admin role")
    assert _users(scim.cli) == []
    uid = scim.create("mallory@example.com")["id"]
    before = _audit_count(scim.cli)
    grant = {"op": "replace", "path": "roles", "value": [{"value": "admin"}]}
    assert_scim_error(scim.patch(f"/Users/{uid}", grant), 403, None, "admin role")
    put = {
        "schemas": [USER_SCHEMA],
        "userName": "mallory@example.com",
        "roles": [{"value": "admin"}],
    }
    assert_scim_error(scim.put(f"/Users/{uid}", put), 403, None, "admin role")
    assert scim.cli.json("get", "mallory@example.com")["role"] == "user"
    assert _audit_count(scim.cli) == before


def test_a_scim_token_may_only_offboard_an_admin(scim: Scim) -> None:
    admin = scim.cli.create("Root", "root@example.com", "--role", "admin")
    before = (_users(scim.cli), _audit_count(scim.cli))
    password = {"op": "replace", "path": "password", "value": "a takeover passphrase 42"}
    assert_scim_error(scim.patch(f"/Users/{admin['id']}", password), 403, None, "by hand")
    rename = {"op": "replace", "path": "displayName", "value": "Not Root"}
    assert_scim_error(scim.patch(f"/Users/{admin['id']}", rename), 403, None, "by hand")
    email = {"op": "replace", "path": "userName", "value": "eve@example.com"}
    assert_scim_error(scim.patch(f"/Users/{admin['id']}", email), 403, None, "by hand")
    assert (_users(scim.cli), _audit_count(scim.cli)) == before
    assert scim.get(f"/Users/{admin['id']}").status_code == 200  # readable

    # Offboarding works: a SCIM user promoted by hand, then deactivated by a PUT that
    # repeats what it has (Okta), and deleted.
    uid = scim.create("ops@example.com")["id"]
    scim.cli.ok("update", "ops@example.com", "--role", "admin")
    put = {"schemas": [USER_SCHEMA], "userName": "ops@example.com", "active": False,
           "roles": [{"value": "admin"}]}  # fmt: skip
    response = scim.put(f"/Users/{uid}", put)
    assert response.status_code == 200, response.text
    assert scim.cli.json("get", "ops@example.com")["active"] is False
    again = {"op": "replace", "path": "active", "value": True}
    assert_scim_error(scim.patch(f"/Users/{uid}", again), 403, None, "only deactivate")
    assert scim.delete(f"/Users/{uid}").status_code == 204
    off = {"op": "replace", "path": "active", "value": False}
    assert scim.patch(f"/Users/{admin['id']}", off).status_code == 200
    assert scim.delete(f"/Users/{admin['id']}").status_code == 204
    assert _users(scim.cli) == []


# --- SCIM: answers that were wrong ---------------------------------------------------------


@pytest.mark.parametrize("user_name", ["Ada.Lovelace@EXAMPLE.com ", "ada@xn--bcher-kva.example"])
def test_userName_eq_finds_the_user_that_same_userName_created(scim: Scim, user_name: str) -> None:
    created = scim.create(user_name)
    assert created["userName"] != user_name  # stored normalized
    assert scim.names(f'userName eq "{user_name}"') == [created["userName"]]
    assert scim.names(f'emails.value eq "{user_name}"') == [created["userName"]]
    assert scim.names(f'userName ne "{user_name}"') == []


def test_a_filter_with_text_that_is_not_unicode_is_invalid_filter(scim: Scim) -> None:
    body = (
        b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],'
        b'"filter":"userName eq \\"\\ud800\\""}'
    )
    headers = {**scim.h, "content-type": "application/scim+json"}
    for path in ("/scim/v2/Users/.search", "/scim/v2/.search"):
        response = scim.client.post(path, content=body, headers=headers)
        assert_scim_error(response, 400, "invalidFilter", "not Unicode")


def test_patching_one_part_of_the_name_alone_is_refused_not_dropped(scim: Scim) -> None:
    uid = scim.create("ada@example.com", name={"givenName": "Ada", "familyName": "Lovelace"})["id"]
    before = _audit_count(scim.cli)
    surname = {"op": "Replace", "path": "name.familyName", "value": "King"}
    assert_scim_error(scim.patch(f"/Users/{uid}", surname), 400, "invalidValue", "both")
    assert scim.cli.json("get", "ada@example.com")["name"] == "Ada Lovelace"
    assert _audit_count(scim.cli) == before
    # Both parts, or displayName, are applied.
    given = {"op": "Replace", "path": "name.givenName", "value": "Augusta"}
    response = scim.patch(f"/Users/{uid}", given, surname)
    assert response.status_code == 200, response.text
    assert scim.cli.json("get", "ada@example.com")["name"] == "Augusta King"


# --- what an error tells a client ----------------------------------------------------------


def test_a_query_parameter_given_twice_is_refused_not_last_one_wins(api: Api, scim: Scim) -> None:
    uid = api.user("ada@example.com")
    response = api.client.delete(f"/users/{uid}?dry_run=true&dry_run=false", headers=api.admin)
    assert_detail(response, 400, "'dry_run' is given twice")
    assert api.cli.json("get", str(uid))["email"] == "ada@example.com"
    response = scim.client.get("/scim/v2/Users?count=1&count=2", headers=scim.h)
    assert_scim_error(response, 400, None, "'count' is given twice")
    many = "&".join(f"p{i}" for i in range(101))  # (one pass, before any credential)
    assert_detail(api.client.get(f"/users/?{many}"), 400, "too many query parameters")
    hostile = "&".join(["<x>"] * 2)
    assert_detail(api.client.get(f"/users/?{hostile}"), 400, "(one of them) is given twice")


def test_a_busy_database_answers_503_without_saying_where_it_is(tmp_path: Any) -> None:
    import dataclasses
    import sqlite3

    from fastapi.testclient import TestClient

    from usersctl.api.app import create_app
    from usersctl.config import load_settings

    path = tmp_path / "secret-place" / "users.db"
    cli = _sqlite_cli(path)
    secret = cli.json("token", "create", "w", "--scope", "write")["token"]
    write = {"Authorization": f"Bearer {secret}"}
    scim_token = cli.json("token", "create", "idp", "--scope", "scim")["token"]
    settings = dataclasses.replace(load_settings(database_url=cli.url), busy_timeout=0.3)
    app = create_app(settings, scim=True)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than 0.3 s
    try:
        with TestClient(app) as client:
            body = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
            response = client.post("/users/", json=body, headers=write)
            assert_detail(response, 503, "database busy")
            scim_body = {"schemas": [USER_SCHEMA], "userName": "ada@example.com"}
            scim_response = client.post(
                "/scim/v2/Users", json=scim_body, headers={"Authorization": f"Bearer {scim_token}"}
            )
            assert_scim_error(scim_response, 503, None, "database busy")
            for answer in (response, scim_response):
                assert answer.headers["retry-after"] == "1"
                assert "secret-place" not in answer.text, answer.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        app.state.server.database.dispose()


def test_a_user_id_in_a_path_is_digits_only(api: Api) -> None:
    uid = api.user("ada@example.com")
    assert api.client.get(f"/users/{uid}", headers=api.admin).status_code == 200
    # (an Arabic-Indic digit, too; and ids no user can have, which were a 404 after the
    # credential check, unlike every other bad id)
    for path in (f"{uid}.0", f"+{uid}", f" {uid}", "١", "0", "2147483648", "9" * 30):
        response = api.client.get(f"/users/{path}", headers=api.admin)
        assert_detail(response, 422, "invalid id: must be a whole number from 1 to 2147483647")
        assert_detail(api.client.delete(f"/users/{path}", headers=api.admin), 422, "invalid id")


def _sqlite_cli(path: Any) -> Cli:
    from typer.testing import CliRunner

    path.parent.mkdir()
    cli = Cli(url=f"sqlite:///{path}", runner=CliRunner())
    cli.ok("db", "upgrade")
    return cli


def test_healthz_is_503_while_the_sqlite_file_is_gone(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from usersctl.api.app import create_app
    from usersctl.config import load_settings

    path = tmp_path / "data" / "users.db"
    cli = _sqlite_cli(path)
    token = cli.json("token", "create", "w", "--scope", "write")["token"]
    app = create_app(load_settings(database_url=cli.url))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        path.rename(path.with_name("moved.db"))  # reads would still answer on open connections
        assert client.get("/healthz").status_code == 503
        body = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
        headers = {"Authorization": f"Bearer {token}"}
        response = client.post("/users/", json=body, headers=headers)
        assert_detail(response, 503, "the database file is missing; create it with")
        assert str(tmp_path) not in response.text
        path.with_name("moved.db").rename(path)
        assert client.get("/healthz").status_code == 200
    app.state.server.database.dispose()


def test_an_error_never_hands_a_long_input_back(api: Api) -> None:
    long = "<script>" + "x" * 3000
    response = api.client.get("/users/", params={"sort": long}, headers=api.admin)
    assert_detail(response, 400, "cannot sort by '<script>xxx")
    body = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD, long: 1}
    unknown = api.client.post("/users/", json=body, headers=api.admin)
    assert_detail(unknown, 422, "unknown field '<script>xxx")
    for answer in (response, unknown):
        assert len(answer.text) < 300, answer.text


def test_a_nul_in_a_login_or_a_query_is_no_bug(api: Api) -> None:
    """PostgreSQL's text cannot hold NUL: a login name or a filter carrying one finds
    no one (401), a filter carrying one is invalid (422) on every engine, never a 500."""
    api.user("ada@example.com")
    login = {"username": "ada@example.com\x00", "password": PASSWORD}
    assert_detail(api.client.post("/auth/token", data=login), 401, "incorrect email or password")
    for params in ({"search": "a\x00"}, {"role": "user\x00"}):
        response = api.client.get("/users/", params=params, headers=api.admin)
        assert_detail(response, 422, "must not contain NUL characters")
