from conftest import Cli


def test_create_then_get(cli: Cli) -> None:
    created = cli.create("Ada Lovelace", "Ada@Example.com")
    assert created["email"] == "ada@example.com"
    shown = cli.json("get", "ADA@example.COM")
    assert shown == created
    assert "password_hash" not in shown
