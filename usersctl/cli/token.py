"""`usersctl token`: the HTTP API's admin tokens and its login-token signing key."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from usersctl.cli.command import command
from usersctl.cli.options import Output
from usersctl.cli.render import OutputFormat, Renderer
from usersctl.cli.state import get_state
from usersctl.cli.text import say
from usersctl.errors import UsageError
from usersctl.escaping import printable

token_app = typer.Typer(
    name="token",
    help="Admin tokens for the HTTP API (usersctl serve), and its signing key.\n\n"
    "Example:\n\n\b\n  usersctl token create deploy --scope write --expires 90d",
    no_args_is_help=True,
)

LIST_FIELDS = ("name", "scopes", "created_at", "expires_at", "last_used_at", "revoked")
Name = Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")]


class Scope(StrEnum):
    read = "read"
    write = "write"
    scim = "scim"


@command(token_app, "create")
def create(
    ctx: typer.Context,
    name: Name,
    scope: Annotated[
        Scope,
        typer.Option(
            "--scope",
            metavar="read|write|scim",
            help="read: GET requests only; write: also changes; scim: the SCIM endpoints only.",
            case_sensitive=False,
        ),
    ] = Scope.write,
    expires: Annotated[
        str,
        typer.Option(
            "--expires",
            help="A duration (90d, 12h, 4w, 1y), a future date, or never.",
            metavar="WHEN",
        ),
    ] = "90d",
    output: Output = OutputFormat.table,
) -> None:
    """Make an admin API token and print it, once (only a digest is kept).

    The token reaches stdout before the change commits: if it cannot be written (stdout
    closed, disk full), nothing is created.

    \b
    Example:
      usersctl token create deploy --scope read --expires 30d -o json
    """
    from usersctl import tokens
    from usersctl.cli.output import delivered_before_commit
    from usersctl.lifecycle import now, parse_expiry

    moment = now()
    expires_at = parse_expiry(expires, moment)
    if expires_at is not None and expires_at <= moment:
        # A token that is expired the moment it is made (0d, a date gone by) is a mistake.
        # (`update USER --expires` allows it: expiring an account now is legitimate.)
        raise UsageError(
            f"invalid --expires {expires!r}: must be in the future (e.g. 90d or never)"
        )
    tokens.check_name(name)
    with get_state(ctx).change() as (session, trail):
        row, secret = tokens.create_token(
            session=session, name=name, scope=scope.value, expires_at=expires_at, trail=trail
        )
        record = tokens.token_record(row)
        with delivered_before_commit("the token"):
            if output is OutputFormat.table:
                typer.echo(secret)
            else:
                shown = {"name": name, "token": secret, "scopes": record["scopes"],
                         "expires_at": record["expires_at"]}  # fmt: skip
                Renderer(output).one(
                    _scopes_as_text(shown, output), fields=("name", "token", "scopes", "expires_at")
                )
    if output is OutputFormat.table:
        say(
            f"Token {printable(name)} ({' '.join(record['scopes'])}, expires "
            f"{record['expires_at'] or 'never'}): shown only this once."
        )


def _scopes_as_text(record: dict[str, Any], output: OutputFormat) -> dict[str, Any]:
    """Scopes as one field, space separated ("read write"), where the format is text: a
    table, CSV, tab-separated plain. JSON keeps the list."""
    if output in (OutputFormat.table, OutputFormat.csv, OutputFormat.plain):
        return {**record, "scopes": " ".join(record["scopes"])}
    return record


@command(token_app, "list")
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
    records = [_scopes_as_text(r, output) for r in records]
    shown = Renderer(output).many(records, fields=LIST_FIELDS)
    if shown == 0 and output is OutputFormat.table:
        say("No tokens.")


@command(token_app, "revoke")
def revoke(ctx: typer.Context, name: Name) -> None:
    """Revoke a token: the next request with it is refused.

    \b
    Example:
      usersctl token revoke deploy
    """
    from usersctl import tokens

    with get_state(ctx).change() as (session, trail):
        tokens.revoke_token(session=session, name=name, trail=trail)
    say(f"Token {printable(name)} revoked.")


@command(token_app, "rotate-signing-key")
def rotate_signing_key(ctx: typer.Context) -> None:
    """Replace the login tokens' signing key: every login token stops working at once
    (admin tokens are not affected). Every server on the database uses the new key.

    \b
    Example:
      usersctl token rotate-signing-key
    """
    from usersctl import tokens

    with get_state(ctx).change() as (session, trail):
        tokens.rotate_signing_key(session=session, trail=trail)
    say("Signing key replaced; every login token issued so far is now refused.")
