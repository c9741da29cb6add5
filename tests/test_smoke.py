from conftest import Cli


def test_create_then_get(cli: Cli) -> None:
    created = cli.create("Ada Lovelace", "Ada@Example.com")
    assert created["email"] == "ada@example.com"
    shown = cli.json("get", "ADA@example.COM")
    assert shown == created
    assert "password_hash" not in shown


def test_every_format_renders_exactly_the_public_schema() -> None:
    from usersctl.cli.render import FIELDS
    from usersctl.schemas import UserPublic

    assert tuple(UserPublic.model_fields) == FIELDS
    assert "password_hash" not in FIELDS
