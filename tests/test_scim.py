"""SCIM 2.0 (`usersctl serve --scim`, /scim/v2) in-process over ASGI, on every engine: the
Okta sequence, what Entra sends, filters translated to SQL, paging, attributes, every
error in the SCIM error schema, credentials and the audit trail; then 50 parallel creates
against a real `usersctl serve --scim` (distinct users all succeed; of one user exactly one
wins and the rest answer 409 uniqueness)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("scim2_models")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import Cli  # noqa: E402
from usersctl.api.app import create_app  # noqa: E402
from usersctl.config import load_settings  # noqa: E402

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
PASSWORD = "an orrery of brass"


@dataclass
class Scim:
    client: TestClient
    cli: Cli
    h: dict[str, str]

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get("/scim/v2" + path, params=params, headers=self.h)

    def post(self, path: str, body: Any) -> Any:
        return self.client.post("/scim/v2" + path, json=body, headers=self.h)

    def put(self, path: str, body: Any) -> Any:
        return self.client.put("/scim/v2" + path, json=body, headers=self.h)

    def patch(self, path: str, *operations: dict[str, Any]) -> Any:
        body = {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}
        return self.client.patch("/scim/v2" + path, json=body, headers=self.h)

    def delete(self, path: str) -> Any:
        return self.client.delete("/scim/v2" + path, headers=self.h)

    def create(self, email: str, **extra: Any) -> dict[str, Any]:
        response = self.post("/Users", {"schemas": [USER_SCHEMA], "userName": email, **extra})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def names(self, filter: str, **params: Any) -> list[str]:  # noqa: A002
        response = self.get("/Users", filter=filter, **params)
        assert response.status_code == 200, response.text
        return [user["userName"] for user in response.json()["Resources"]]


@pytest.fixture
def scim(cli: Cli, db_url: str) -> Iterator[Scim]:
    app = create_app(load_settings(database_url=db_url), scim=True)
    with TestClient(app) as client:
        token = cli.json("token", "create", "okta", "--scope", "scim")["token"]
        yield Scim(client=client, cli=cli, h={"Authorization": f"Bearer {token}"})
    app.state.server.database.dispose()


def assert_scim_error(response: Any, status: int, scim_type: str | None, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type, body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])


def test_okta_sequence(scim: Scim) -> None:
    """What Okta does: look the user up by userName, create it, later deactivate it."""
    lookup = scim.get("/Users", filter='userName eq "ada.lovelace@example.com"', startIndex=1,
                      count=100)  # fmt: skip
    assert lookup.status_code == 200
    assert lookup.json()["totalResults"] == 0 and lookup.json()["Resources"] == []
    created = scim.post(
        "/Users",
        {
            "schemas": [USER_SCHEMA],
            "userName": "Ada.Lovelace@example.com",
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"primary": True, "value": "ada.lovelace@example.com", "type": "work"}],
            "displayName": "Ada Lovelace",
            "locale": "en-GB",
            "externalId": "00u1abcd",
            "groups": [],
            "active": True,
        },
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert created.headers["location"] == user["meta"]["location"]
    assert user["meta"]["location"].endswith(f"/scim/v2/Users/{user['id']}")
    assert user["userName"] == "ada.lovelace@example.com"
    assert user["displayName"] == user["name"]["formatted"] == "Ada Lovelace"
    assert user["emails"] == [{"value": "ada.lovelace@example.com"}]
    assert user["active"] is True and user["externalId"] == "00u1abcd"
    assert user["roles"] == [{"value": "user"}]
    assert "password" not in user
    # Found the next time, by userName in any case, and by externalId.
    assert scim.names('userName eq "ADA.LOVELACE@example.com"') == ["ada.lovelace@example.com"]
    assert scim.names('externalId eq "00u1abcd"') == ["ada.lovelace@example.com"]
    # Deactivated: disabled, as `usersctl disable` does.
    patched = scim.patch(f"/Users/{user['id']}", {"op": "replace", "value": {"active": False}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["active"] is False
    shown = scim.cli.json("get", "ada.lovelace@example.com")
    assert shown["active"] is False and shown["has_password"] is False
    assert shown["name"] == "Ada Lovelace"
    entries = scim.cli.json("audit")
    assert [(e["actor"], e["action"]) for e in entries[:2]] == [
        ("scim:okta", "disable"),
        ("scim:okta", "create"),
    ]
    assert entries[1]["changes"]["source"] == {"before": None, "after": "scim"}
    assert entries[1]["changes"]["external_id"] == {"before": None, "after": "00u1abcd"}


def test_entra_quirks(scim: Scim) -> None:
    """What Microsoft Entra ID sends: "False" as a string, capitalised ops, path filters on
    emails, its extension schemas, a remove with a value."""
    user = scim.post(
        "/Users",
        {
            "schemas": [
                USER_SCHEMA,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
            ],
            "externalId": "b1f2",
            "userName": "grace@example.com",
            "active": "True",
            "displayName": "Grace Hopper",
            "emails": [{"primary": True, "type": "work", "value": "grace@example.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "Grace Hopper", "familyName": "Hopper", "givenName": "Grace"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Navy"},
        },
    )
    assert user.status_code == 201, user.text
    path = f"/Users/{user.json()['id']}"
    # Entra's existence check.
    assert scim.names('externalId eq "b1f2"') == ["grace@example.com"]
    response = scim.patch(
        path,
        {"op": "Replace", "path": "displayName", "value": "Grace B. Hopper"},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "gbh@example.com"},
        {"op": "Replace", "path": "name.givenName", "value": "Grace B."},
        {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
                              "employeeNumber", "value": "42"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["displayName"] == "Grace B. Hopper"
    assert response.json()["emails"] == [{"value": "gbh@example.com"}]
    # userName follows the address (usersctl has one), so Entra's next lookup finds it.
    assert response.json()["userName"] == "gbh@example.com"
    response = scim.patch(path, {"op": "Replace", "path": "active", "value": "False"})
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    assert scim.cli.json("get", "gbh@example.com")["active"] is False
    response = scim.patch(path, {"op": "Replace", "value": {"active": "True"}})
    assert response.json()["active"] is True
    response = scim.patch(path, {"op": "Remove", "path": "externalId"})
    assert response.status_code == 200 and "externalId" not in response.json()
    trail = scim.cli.json("audit", "--user", "gbh@example.com")
    actions = [(e["actor"], e["action"]) for e in trail]
    assert ("scim:okta", "disable") in actions and ("scim:okta", "enable") in actions


def test_put_get_delete_and_password(scim: Scim) -> None:
    user = scim.create("ken@example.com", displayName="Ken", externalId="k1")
    path = f"/Users/{user['id']}"
    replaced = scim.put(
        path,
        {
            "schemas": [USER_SCHEMA],
            "userName": "ken@example.com",
            "displayName": "Ken Thompson",
            "roles": [{"value": "staff", "primary": True}],
            "password": PASSWORD,
        },
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["displayName"] == "Ken Thompson" and body["roles"] == [{"value": "staff"}]
    assert "externalId" not in body  # PUT replaces: an absent externalId is cleared
    assert "password" not in body
    assert scim.cli.json("get", "ken@example.com")["has_password"] is True
    verified = scim.cli("verify-password", "ken@example.com", "--password-stdin",
                        input=PASSWORD + "\n")  # fmt: skip
    assert verified.exit_code == 0, verified.stderr
    assert scim.get(path).json() == body
    assert scim.delete(path).status_code == 204
    assert_scim_error(scim.get(path), 404, None, "user not found")
    assert_scim_error(scim.delete(path), 404, None)
    assert scim.cli("get", "ken@example.com").exit_code == 3


def test_filters_are_sql(scim: Scim) -> None:
    scim.create("ada@example.com", displayName="Ada Lovelace", externalId="A-1")
    scim.create("alan@example.org", displayName="Alan Turing", externalId="a-1")
    grace = scim.create("grace@example.com", displayName="Grace Hopper")
    scim.patch(f"/Users/{grace['id']}", {"op": "replace", "path": "active", "value": False})
    everyone = ["ada@example.com", "alan@example.org", "grace@example.com"]
    assert scim.names('userName eq "Ada@Example.COM"') == ["ada@example.com"]
    assert scim.names('userName ne "ada@example.com"') == everyone[1:]
    assert scim.names('userName co "example.com"') == ["ada@example.com", "grace@example.com"]
    assert scim.names('userName sw "A"') == everyone[:2]
    assert scim.names('userName ew ".org"') == ["alan@example.org"]
    assert scim.names('emails.value eq "grace@example.com"') == ["grace@example.com"]
    assert scim.names('emails co "alan"') == ["alan@example.org"]
    assert scim.names('emails[type eq "work" and value sw "gr"]') == ["grace@example.com"]
    assert scim.names('externalId eq "a-1"') == ["alan@example.org"]  # caseExact
    assert scim.names("externalId pr") == everyone[:2]
    assert scim.names('externalId ne "a-1"') == ["ada@example.com", "grace@example.com"]
    assert scim.names("active eq false") == ["grace@example.com"]
    assert scim.names('active eq "True"') == everyone[:2]
    assert scim.names("active ne true") == ["grace@example.com"]
    assert scim.names('displayName co "hopper"') == ["grace@example.com"]
    assert scim.names('name.formatted sw "alan"') == ["alan@example.org"]
    assert scim.names("userName pr and displayName pr") == everyone
    assert scim.names('displayName sw "A" and active eq true') == everyone[:2]
    assert scim.names('externalId eq "A-1" or userName ew "org"') == everyone[:2]
    assert scim.names('not (userName sw "a")') == ["grace@example.com"]
    assert scim.names('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "ada@example.com"'
                      ) == ["ada@example.com"]  # fmt: skip
    assert scim.names('roles.value eq "user"') == everyone
    assert scim.names(f'id eq "{grace["id"]}"') == ["grace@example.com"]
    assert scim.names('meta.created gt "2000-01-01T00:00:00Z"') == everyone
    assert scim.names('userName eq "50%_off@example.com"') == []  # wildcards are literal
    assert scim.names('userName co "%"') == []


def test_paging_and_attributes(scim: Scim) -> None:
    for n in range(7):
        scim.create(f"u{n}@example.com", displayName=f"User {n}")
    page = scim.get("/Users", startIndex=3, count=2).json()
    assert page["totalResults"] == 7 and page["startIndex"] == 3 and page["itemsPerPage"] == 2
    assert [u["userName"] for u in page["Resources"]] == ["u2@example.com", "u3@example.com"]
    assert scim.get("/Users", startIndex=0, count=1).json()["startIndex"] == 1
    counted = scim.get("/Users", count=0).json()
    assert counted["totalResults"] == 7 and counted["Resources"] == []
    last = scim.get("/Users", startIndex=7, count=5).json()
    assert [u["userName"] for u in last["Resources"]] == ["u6@example.com"]
    beyond = scim.get("/Users", startIndex=50).json()
    assert beyond["totalResults"] == 7 and beyond["Resources"] == []
    only = scim.get("/Users", filter='userName eq "u1@example.com"', attributes="userName")
    assert only.json()["Resources"] == [
        {"schemas": [USER_SCHEMA], "id": only.json()["Resources"][0]["id"],
         "userName": "u1@example.com"}
    ]  # fmt: skip
    one = scim.get("/Users", filter='userName eq "u1@example.com"').json()["Resources"][0]
    without = scim.get(f"/Users/{one['id']}", excludedAttributes="emails,roles").json()
    assert "emails" not in without and "roles" not in without and without["userName"]
    searched = scim.post(
        "/Users/.search",
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'displayName ew "4"',
            "attributes": ["displayName"],
        },
    )
    assert searched.status_code == 200, searched.text
    assert [u["displayName"] for u in searched.json()["Resources"]] == ["User 4"]


def test_discovery_is_honest(scim: Scim) -> None:
    config = scim.get("/ServiceProviderConfig").json()
    assert config["patch"] == {"supported": True}
    assert config["filter"] == {"supported": True, "maxResults": 1000}
    assert config["bulk"]["supported"] is False and config["sort"] == {"supported": False}
    assert config["etag"] == {"supported": False}
    assert config["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = scim.get("/ResourceTypes").json()
    assert [t["name"] for t in types["Resources"]] == ["User"]
    schema = scim.get(f"/Schemas/{USER_SCHEMA}").json()
    attributes = {a["name"]: a for a in schema["attributes"]}
    assert set(attributes) == {
        "userName", "name", "displayName", "active", "password", "emails", "roles",
    }  # fmt: skip
    assert [s["name"] for s in attributes["name"]["subAttributes"]] == ["formatted"]
    assert [s["name"] for s in attributes["emails"]["subAttributes"]] == ["value"]
    assert attributes["password"]["returned"] == "never"
    assert attributes["roles"]["subAttributes"][0]["canonicalValues"] == ["user"]
    assert scim.get("/Schemas").json()["Resources"] == [schema]
    assert_scim_error(scim.get("/Schemas/urn:nope"), 404, None)
    assert_scim_error(scim.get("/ResourceTypes/Group"), 404, None)


def test_groups_are_not_served(scim: Scim) -> None:
    assert_scim_error(scim.get("/Groups"), 404, None, "Groups are not supported")
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops"}
    assert_scim_error(scim.post("/Groups", group), 404, None, "Groups are not supported")
    assert_scim_error(scim.get("/Bulk"), 404, None, "no such SCIM endpoint")
    assert_scim_error(scim.client.post("/scim/v2/ServiceProviderConfig", headers=scim.h),
                      405, None)  # fmt: skip


def test_errors(scim: Scim) -> None:
    ada = scim.create("ada@example.com", displayName="Ada")
    path = f"/Users/{ada['id']}"
    before = scim.cli.json("audit")
    # uniqueness: a taken email, in any case, on create and on change
    taken = {"schemas": [USER_SCHEMA], "userName": "ADA@example.com"}
    assert_scim_error(scim.post("/Users", taken), 409, "uniqueness", "email already taken")
    scim.create("bob@example.com")
    assert_scim_error(scim.patch(path, {"op": "replace", "path": "userName",
                                        "value": "bob@example.com"}),
                      409, "uniqueness")  # fmt: skip
    # invalidValue: usersctl's own rules, in its own words
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "not-an-email"}),
                      400, "invalidValue", "invalid email")  # fmt: skip
    short = scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "x@example.com",
                                 "password": "short"})  # fmt: skip
    assert_scim_error(short, 400, "invalidValue", "password too short", "try a passphrase")
    assert "--random-password" not in short.text  # (the CLI's option)
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "x@example.com",
                                           "roles": [{"value": "Not A Role"}]}),
                      400, "invalidValue", "invalid role")  # fmt: skip
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "x@example.com",
                                           "displayName": "bad\u202ename"}),
                      400, "invalidValue", "invalid name")  # fmt: skip
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "x@example.com",
                                           "externalId": "e" * 300}),
                      400, "invalidValue", "externalId")  # fmt: skip
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "active": "maybe",
                                           "userName": "x@example.com"}),
                      400, "invalidValue")  # fmt: skip
    assert_scim_error(scim.post("/Users", {"schemas": [USER_SCHEMA]}), 400, "invalidValue")
    # invalidSyntax: not JSON, not an object
    response = scim.client.post("/scim/v2/Users", content=b"{nope", headers={
        **scim.h, "Content-Type": "application/scim+json"})  # fmt: skip
    assert_scim_error(response, 400, "invalidSyntax")
    assert_scim_error(scim.post("/Users", [1, 2]), 400, "invalidSyntax")
    # invalidFilter
    assert_scim_error(scim.get("/Users", filter="userName eq"), 400, "invalidFilter")
    assert_scim_error(scim.get("/Users", filter='password eq "x"'), 400, "invalidFilter")
    assert_scim_error(scim.get("/Users", filter='active co "t"'), 400, "invalidFilter")
    assert_scim_error(scim.get("/Users", filter="userName eq 5"), 400, "invalidFilter")
    assert_scim_error(scim.get("/Users", filter="(" * 5000), 400, "invalidFilter")
    # PATCH problems
    assert_scim_error(scim.patch(path, {"op": "frobnicate", "path": "active", "value": True}),
                      400, "invalidValue")  # fmt: skip
    assert_scim_error(scim.patch(path, {"op": "remove", "path": "active"}), 400, "mutability")
    assert_scim_error(scim.patch(path, {"op": "remove", "path": "roles"}), 400, "mutability")
    assert_scim_error(scim.patch(path, {"op": "remove", "path": "emails[value"}), 400,
                      "invalidPath")  # fmt: skip
    assert_scim_error(scim.get("/Users/abc"), 404, None)
    assert_scim_error(scim.get("/Users/99999999999"), 404, None)
    assert_scim_error(scim.get("/Users", sortBy="userName"), 400, "invalidValue")
    assert_scim_error(scim.get("/Users", attributes="userName", excludedAttributes="emails"),
                      400, "invalidValue")  # fmt: skip
    # Nothing above changed anything but bob's creation.
    after = scim.cli.json("audit")
    assert [e["action"] for e in after[: len(after) - len(before)]] == ["create"]
    assert scim.cli.json("get", "ada@example.com")["email"] == "ada@example.com"


def test_credentials(scim: Scim, cli: Cli) -> None:
    no = scim.client.get("/scim/v2/Users")
    assert_scim_error(no, 401, None, "not authenticated")
    assert no.headers["www-authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer usc_nope"}
    assert_scim_error(scim.client.get("/scim/v2/Users", headers=bad), 401, None)
    # An admin token is not a SCIM token, and a SCIM token is not an admin token.
    admin = {"Authorization": "Bearer " + cli.json("token", "create", "admin")["token"]}
    assert_scim_error(scim.client.get("/scim/v2/Users", headers=admin), 403, None, "scope scim")
    assert scim.client.get("/users/", headers=scim.h).status_code == 403
    cli.ok("token", "revoke", "okta")
    assert_scim_error(scim.get("/Users"), 401, None)
    assert cli("token", "create", "x", "--scope", "root").exit_code == 2


def test_scim_is_off_without_the_flag(cli: Cli, db_url: str) -> None:
    app = create_app(load_settings(database_url=db_url))
    token = cli.json("token", "create", "okta", "--scope", "scim")["token"]
    with TestClient(app) as client:
        response = client.get("/scim/v2/Users", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 404
    app.state.server.database.dispose()


# --- a real `usersctl serve --scim`: 50 parallel creates ---------------------------------


@pytest.mark.slow
def test_parallel_creates_on_a_real_server(cli: Cli, db_url: str) -> None:
    from test_api_serve import Served

    token = cli.json("token", "create", "okta", "--scope", "scim")["token"]
    h = {"Authorization": f"Bearer {token}"}
    server = Served(db_url, "--scim", "--workers", "2")
    try:

        def create(email: str) -> Any:
            body = {"schemas": [USER_SCHEMA], "userName": email, "displayName": email[:6]}
            return server.client.post("/scim/v2/Users", json=body, headers=h)

        with ThreadPoolExecutor(max_workers=50) as pool:
            distinct = list(pool.map(create, [f"user{n}@example.com" for n in range(50)]))
            same = list(pool.map(create, ["same@example.com"] * 50))
        assert [r.status_code for r in distinct] == [201] * 50, [r.text for r in distinct][:3]
        assert len({r.json()["id"] for r in distinct}) == 50
        codes = sorted(r.status_code for r in same)
        assert codes == [201] + [409] * 49, [r.text for r in same if r.status_code == 503][:2]
        for response in same:
            if response.status_code == 409:
                assert response.json()["scimType"] == "uniqueness"
        listed = server.client.get("/scim/v2/Users", params={"count": 0}, headers=h).json()
        assert listed["totalResults"] == 51
        creates = [e for e in cli.json("audit", "--action", "create") if e["actor"] == "scim:okta"]
        assert len(creates) == 51
    finally:
        assert server.stop() == 0


def test_an_external_id_that_is_not_text_is_a_400(scim: Scim) -> None:
    """A lone surrogate (JSON "\\udc80") in externalId crashed the write: a 500, "a bug"."""
    body = json.dumps(  # ASCII, the surrogate escaped: as an identity provider would send it
        {"schemas": [USER_SCHEMA], "userName": "ada@example.com", "externalId": "x\udc80"}
    )
    headers = {**scim.h, "Content-Type": "application/scim+json"}
    response = scim.client.post("/scim/v2/Users", content=body.encode(), headers=headers)
    assert response.status_code == 400, response.text
    assert "invalid externalId: must be valid Unicode text" in response.json()["detail"]
    assert scim.cli.json("list") == []


def test_an_external_id_with_control_or_invisible_characters_is_a_400(scim: Scim) -> None:
    """An OSC 52 clipboard write was stored raw, and came out raw in a piped CSV export."""
    for value in ("x\x1b]52;c;SGVsbG8=\x07", "a\u202eb", "zero\u200bwidth"):
        body = {"schemas": [USER_SCHEMA], "userName": "ada@example.com", "externalId": value}
        assert_scim_error(scim.post("/Users", body), 400, "invalidValue",
                          "invalid externalId: must not contain control or invisible")  # fmt: skip
    user = scim.create("ada@example.com", externalId="00u1\u00a0abcd")  # (a space is no control)
    replace = {"op": "replace", "path": "externalId", "value": "y\x00\x1b"}
    response = scim.patch(f"/Users/{user['id']}", replace)
    assert response.status_code == 400, response.text
    assert scim.cli.json("get", "ada@example.com")["external_id"] == "00u1\u00a0abcd"
