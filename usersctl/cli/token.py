"""`usersctl token`: the HTTP API's admin tokens and its login-token signing key."""

from __future__ import annotations

from typing import Annotated

import typer

from usersctl.cli.options import Output
from usersctl.cli.render import OutputFormat, Renderer
from usersctl.cli.state import get_state
from usersctl.cli.text import printable

token_app = typer.Typer(
    name="token",
    help="Admin tokens for the HTTP API (usersctl serve), and its signing key.\n\n"
    "Example:\n\n\b\n  usersctl token create deploy --scope write --expires 90d",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

LIST_FIELDS = ("name", "scopes", "created_at", "expires_at", "last_used_at", "revoked")
Name = Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")]


@token_app.command("create")
def create(
    ctx: typer.Context,
    name: Name,
    scope: Annotated[
        str,
        typer.Option(
            "--scope",
            help="read (GET only), write (also changes) or scim (the SCIM endpoints only).",
        ),
    ] = "write",
    expires: Annotated[
        str,
        typer.Option(
            "--expires", help="A duration (90d, 12h, 4w, 1y), a date, or never.", metavar="WHEN"
        ),
    ] = "90d",
    output: Output = OutputFormat.table,
) -> None:
    """Make an admin API token and print it, once (only a digest is kept).

    \b
    Example:
      usersctl token create deploy --scope read --expires 30d -o json
    """
    from usersctl import tokens
    from usersctl.lifecycle import now, parse_expiry

    expires_at = parse_expiry(expires, now())
    tokens.check_name(name)
    tokens.scopes_for(scope)
    database = get_state(ctx).ready_database(write=True)
    with database.session(write=True) as session:
        row, secret = tokens.create_token(
            session=session, name=name, scope=scope, expires_at=expires_at
        )
        record = tokens.token_record(row)
    if output is OutputFormat.table:
        typer.echo(secret)
        typer.echo(
            f"Token {printable(name)} ({' '.join(record['scopes'])}, expires "
            f"{record['expires_at'] or 'never'}): shown only this once.",
            err=True,
        )
        return
    shown = {"name": name, "token": secret, "scopes": record["scopes"],
             "expires_at": record["expires_at"]}  # fmt: skip
    Renderer(output).one(shown, fields=("name", "token", "scopes", "expires_at"))


@token_app.command("list")
def list_(ctx: typer.Context, output: Output = OutputFormat.table) -> None:
    """List the tokens (never the tokens themselves).

    \b
    Example:
      usersctl token list -o json
    """
    from usersctl import tokens

    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        records = [tokens.token_record(row) for row in tokens.list_tokens(session=session)]
    if output in (OutputFormat.table, OutputFormat.csv, OutputFormat.plain):
        records = [{**r, "scopes": " ".join(r["scopes"])} for r in records]
    Renderer(output).many(records, fields=LIST_FIELDS)


@token_app.command("revoke")
def revoke(ctx: typer.Context, name: Name) -> None:
    """Revoke a token: the next request with it is refused.

    \b
    Example:
      usersctl token revoke deploy
    """
    from usersctl import tokens

    database = get_state(ctx).ready_database(write=True)
    with database.session(write=True) as session:
        tokens.revoke_token(session=session, name=name)
    typer.echo(f"Token {printable(name)} revoked.", err=True)


@token_app.command("rotate-signing-key")
def rotate_signing_key(ctx: typer.Context) -> None:
    """Replace the login tokens' signing key: every login token stops working at once
    (admin tokens are not affected). Every server on the database uses the new key.

    \b
    Example:
      usersctl token rotate-signing-key
    """
    from usersctl import tokens

    database = get_state(ctx).ready_database(write=True)
    with database.session(write=True) as session:
        tokens.rotate_signing_key(session=session)
    typer.echo("Signing key replaced; every login token issued so far is now refused.", err=True)
