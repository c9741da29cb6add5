"""Request bodies the HTTP front end used to answer wrongly, in-process over ASGI on every
engine: SCIM PATCH paths that named nothing (or hid in a value) answering 200 and changing
nothing, bodies json cannot read (too deep, a huge number, not UTF-8) answering FastAPI's
own 400, pydantic's text in a SCIM detail, and a bug under /scim/v2 answering outside the
SCIM error schema."""

# ruff: noqa: F811  (the api and scim fixtures are imported from their own test modules)

from __future__ import annotations

import logging
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("scim2_models")

from test_api_http import Api, api, assert_detail  # noqa: E402, F401
from test_scim import PATCH_SCHEMA, USER_SCHEMA, Scim, assert_scim_error, scim  # noqa: E402, F401

from usersctl import rules  # noqa: E402

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PYDANTIC_WORDS = ("Input should", "validation error", "pydantic", "[type=", "\n")

# Bodies json.loads gives up on with something other than a syntax error.
TOO_DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_NUMBER = b"1" * 5000
HUGE_NUMBER_INSIDE = b'{"name": "x", "email": "x@example.com", "role": ' + b"9" * 5000 + b"}"
NOT_UTF8 = b'{"name": "\xff", "email": "x@example.com"}'
UNREADABLE = [TOO_DEEP, HUGE_NUMBER, HUGE_NUMBER_INSIDE, NOT_UTF8]


def _user(scim: Scim, email: str = "ada@example.com") -> str:
    return f"/Users/{scim.create(email, displayName='Ada')['id']}"


def _audit_count(scim: Scim) -> int:
    return len(scim.cli.json("audit", "--limit", "1000"))


# --- 1. PATCH paths ----------------------------------------------------------------------


def test_a_patch_path_naming_no_attribute_is_invalid_path(scim: Scim) -> None:
    path = _user(scim)
    before = _audit_count(scim)
    unknown = [
        {"op": "replace", "path": "nosuch", "value": 1},
        {"op": "add", "path": "nosuch", "value": "x"},
        {"op": "remove", "path": "nosuch"},
        {"op": "replace", "path": "name.nosuch", "value": "x"},
        {"op": "replace", "path": 'emails[type eq "work"].nosuch', "value": "x"},
        {"op": "replace", "path": f"{USER_SCHEMA}:nosuch", "value": "x"},
    ]
    for operation in unknown:
        response = scim.patch(path, operation)
        assert_scim_error(response, 400, "invalidPath", "not an attribute of the User schema")
    # With a good operation before it: the whole PATCH is refused, nothing is applied.
    response = scim.patch(
        path,
        {"op": "replace", "path": "displayName", "value": "Ada Lovelace"},
        {"op": "replace", "path": "nosuch", "value": 1},
    )
    assert_scim_error(response, 400, "invalidPath", "nosuch")
    assert scim.cli.json("get", "ada@example.com")["name"] == "Ada"
    assert _audit_count(scim) == before


def test_what_the_user_schema_has_and_usersctl_does_not_store_stays_accepted(
    scim: Scim,
) -> None:
    """The README's "accepted and not stored": phone numbers, addresses, an email's type,
    the enterprise extension (and another extension), in a path and in a value."""
    path = _user(scim)
    accepted = [
        {"op": "replace", "path": 'phoneNumbers[type eq "work"].value', "value": "+1 555"},
        {"op": "add", "path": "addresses", "value": [{"type": "work", "locality": "London"}]},
        {"op": "replace", "path": 'emails[value eq "ada@example.com"].type', "value": "work"},
        {"op": "add", "path": f"{ENTERPRISE}:department", "value": "Analytics"},
        {"op": "replace", "path": f"{ENTERPRISE}:manager.value", "value": "12"},
        {
            "op": "add",
            "path": "urn:example:params:scim:schemas:extension:Custom:2.0:User:x",
            "value": "y",
        },  # fmt: skip
        {"op": "remove", "path": "phoneNumbers"},
        {"op": "replace", "path": f"{USER_SCHEMA}:displayName", "value": "Ada"},
        {"op": "replace", "value": {f"{ENTERPRISE}:department": "Analytics", "nickName": "A"}},
    ]
    for operation in accepted:
        response = scim.patch(path, operation)
        assert response.status_code == 200, (operation, response.text)
    assert scim.cli.json("get", "ada@example.com")["name"] == "Ada"


def test_a_value_key_with_a_filter_is_applied_as_its_path_form_is(scim: Scim) -> None:
    path = _user(scim, "one@example.com")
    response = scim.patch(
        path,
        {
            "op": "replace",
            "value": {
                'emails[type eq "work"].value': "new@example.com",
                "displayName": "X One",
            },
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["displayName"] == "X One"
    assert body["userName"] == "new@example.com"
    assert body["emails"] == [{"value": "new@example.com"}]
    stored = scim.cli.json("get", "new@example.com")
    assert (stored["name"], stored["email"]) == ("X One", "new@example.com")
    # Entra's capitalised spelling, the filtered key between two plain ones.
    response = scim.patch(
        path,
        {
            "op": "Replace",
            "value": {
                "displayName": "X Two",
                'emails[type eq "work"].value': "two@example.com",
                "active": "False",
            },
        },
    )
    assert response.status_code == 200, response.text
    stored = scim.cli.json("get", "two@example.com")
    assert (stored["name"], stored["active"]) == ("X Two", False)
    # A filtered key on no attribute is refused as its path form is.
    response = scim.patch(
        path, {"op": "replace", "value": {'nosuch[type eq "x"].value': 1, "displayName": "Z"}}
    )
    assert_scim_error(response, 400, "invalidPath", "nosuch")
    assert scim.cli.json("get", "two@example.com")["name"] == "X Two"


# --- 2. bodies json cannot read ----------------------------------------------------------


@pytest.mark.parametrize("body", UNREADABLE, ids=["too-deep", "huge", "huge-inside", "not-utf8"])
def test_an_unreadable_body_is_422_in_usersctls_words(api: Api, body: bytes) -> None:
    headers = {**api.admin, "content-type": "application/json"}
    truncated = api.client.post("/users/", content=b'{"name": ', headers=headers)
    assert_detail(truncated, 422, rules.NOT_JSON)
    for path in ("/users/", "/users/1", "/users/1/password"):
        method = "POST" if path != "/users/1" else "PUT"
        response = api.client.request(method, path, content=body, headers=headers)
        assert response.json() == truncated.json(), (path, response.text)
        assert response.status_code == 422
    assert api.cli.json("list") == []


@pytest.mark.parametrize("body", UNREADABLE, ids=["too-deep", "huge", "huge-inside", "not-utf8"])
def test_an_unreadable_scim_body_is_invalid_syntax(scim: Scim, body: bytes) -> None:
    path = _user(scim)
    headers = {**scim.h, "content-type": "application/scim+json"}
    for method, where in (("POST", "/Users"), ("PATCH", path), ("PUT", path), ("POST", "/.search")):
        response = scim.client.request(method, "/scim/v2" + where, content=body, headers=headers)
        assert_scim_error(response, 400, "invalidSyntax", "JSON object")


def test_other_http_errors_are_unchanged(api: Api) -> None:
    response = api.client.request("PATCH", "/users/", headers=api.admin)
    assert_detail(response, 405)


# --- 3. one line in usersctl's words ------------------------------------------------------


def _assert_own_words(response: Any, *fragments: str) -> None:
    assert_scim_error(response, 400, "invalidValue", *fragments)
    detail = response.json()["detail"]
    assert not any(word in detail for word in PYDANTIC_WORDS), detail
    assert "maybe" not in detail and "secret" not in detail, detail


def test_a_patch_value_of_the_wrong_type_is_one_line_in_usersctls_words(scim: Scim) -> None:
    path = _user(scim)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"op": "replace", "path": "active", "value": "maybe"}, rules.FIELD_RULES["active"]),
        ({"op": "replace", "value": {"active": "maybe"}}, rules.FIELD_RULES["active"]),
        ({"op": "replace", "path": "userName", "value": {"secret": 1}}, "invalid userName"),
        ({"op": "replace", "path": "userName", "value": 5}, "invalid userName: must be text"),
        ({"op": "replace", "path": "displayName", "value": ["secret"]}, "invalid displayName"),
        ({"op": "replace", "path": "emails", "value": "secret"}, "invalid emails"),
        ({"op": "replace", "path": "emails", "value": [1]}, "invalid emails: must be a list of"),
        ({"op": "replace", "path": "name", "value": "secret"}, "invalid name: must be an object"),
    ]
    for operation, words in cases:
        _assert_own_words(scim.patch(path, operation), words)
    assert scim.cli.json("get", "ada@example.com")["active"] is True


def test_a_created_user_of_the_wrong_type_is_in_usersctls_words(scim: Scim) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"userName": "a@example.com", "active": "maybe"}, rules.FIELD_RULES["active"]),
        ({"userName": 5}, "invalid userName: must be text"),
        ({"userName": "a@example.com", "emails": "secret"}, "invalid emails: must be a list"),
    ]
    for body, words in cases:
        _assert_own_words(scim.post("/Users", {"schemas": [USER_SCHEMA], **body}), words)
    # scim2-models' own refusals keep their words.
    response = scim.patch(_user(scim), {"op": "frobnicate", "path": "active", "value": True})
    assert_scim_error(response, 400, "invalidValue", "not a PATCH operation")


# --- 4. a bug under /scim/v2 ---------------------------------------------------------------


def test_a_bug_under_scim_is_a_500_in_the_scim_error_schema(
    scim: Scim, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from usersctl import crud

    path = _user(scim)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("SELECT ... parameters: ('$argon2id$v=19$secret',)")

    monkeypatch.setattr(crud, "find_user", broken)
    caplog.set_level(logging.INFO, logger="usersctl.access")
    response = scim.get(path)
    assert_scim_error(response, 500, None, "unexpected error (a bug): see the server log")
    assert "argon2" not in response.text
    assert f"unexpected error (a bug) in GET /scim/v2{path}: RuntimeError" in caplog.text
    assert f"GET /scim/v2{path} 500" in caplog.text
    assert "argon2" not in caplog.text and "Traceback" not in caplog.text
    # A change too.
    assert_scim_error(scim.delete(path), 500, None, "unexpected error")
