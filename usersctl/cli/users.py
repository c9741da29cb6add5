"""User commands: create, list, get, update, passwd, verify-password, disable, enable, delete.

Each command parses, validates input before opening a transaction, calls crud inside one
transaction, and renders after the commit, so nothing is reported that did not happen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from usersctl.cli.audit import show_planned
from usersctl.cli.command import command
from usersctl.cli.completion import complete_roles, complete_sort
from usersctl.cli.options import (
    DryRun,
    Limit,
    Offset,
    Output,
    UserRef,
    UserRefs,
    Yes,
    exclusive,
)
from usersctl.cli.password_input import (
    PasswordInput,
    PasswordStdin,
    RandomPassword,
    existing_password,
    new_password,
)
from usersctl.cli.render import OutputFormat, Renderer, records, user_record
from usersctl.cli.state import AppState, get_state, stdin_is_terminal
from usersctl.cli.text import printable
from usersctl.errors import UsageError, UsersctlError

if TYPE_CHECKING:
    from usersctl.crud import Verification
    from usersctl.database import Database

SORT_HELP = "Sort by id, name, email, role, active, created_at or updated_at; prefix - to reverse."


def _show_user(
    user_data: dict[str, Any], output: OutputFormat, password: PasswordInput | None = None
) -> None:
    """Print one user; a generated password appears exactly once, in the same document."""
    renderer = Renderer(output)
    if password is None or not password.generated:
        renderer.one(user_data)
        return
    if output is OutputFormat.table:
        renderer.one(user_data)
        typer.echo("Generated password (shown only this once):", err=True)
        renderer.line(password.value)
    else:
        renderer.one({**user_data, "password": password.value}, fields=[*user_data, "password"])


def _deliver_password(
    user_data: dict[str, Any], output: OutputFormat, password: PasswordInput
) -> None:
    """A generated password is shown inside the transaction and must reach stdout's file or
    pipe before the change commits: if it cannot (a full disk, stdout closed), the change is
    rolled back, so a rerun can make it again and nobody is left with an unknown password."""
    if not password.generated:
        return
    from usersctl.cli.output import delivered_before_commit

    with delivered_before_commit():
        _show_user(user_data, output, password)


def register(app: typer.Typer) -> None:
    command(app, "create")(create)
    command(app, "list")(list_)
    command(app, "get")(get)
    command(app, "update")(update)
    command(app, "passwd")(passwd)
    command(app, "verify-password")(verify_password)
    command(app, "disable")(disable)
    command(app, "enable")(enable)
    command(app, "delete")(delete)


def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Display name (1-200 characters).")],
    email: Annotated[str, typer.Option("--email", "-e", help="Email; unique, case-insensitive.")],
    role: Annotated[
        str,
        typer.Option(
            "--role", "-r", help="Role, e.g. user or admin.", autocompletion=complete_roles
        ),
    ] = "user",
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create the account locked (cannot log in).")
    ] = False,
    password_stdin: PasswordStdin = False,
    random_password: RandomPassword = False,
    if_not_exists: Annotated[
        bool,
        typer.Option(
            "--if-not-exists",
            help="If the email is taken, print that user and exit 0 instead of failing.",
        ),
    ] = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Create one user and print it.

    \b
    Example:
      usersctl create --name 'Ada Lovelace' --email ada@example.com \\
          --random-password
    """
    from usersctl import crud
    from usersctl.passwords import hash_password
    from usersctl.schemas import UserCreate, parse

    user_in = parse(
        UserCreate, {"name": name, "email": email, "role": role, "is_active": not disabled}
    )
    exclusive(ctx, "password_stdin", "random_password")
    password = new_password(password_stdin=password_stdin, random_password=random_password)
    password_hash = "" if dry_run else hash_password(password.value)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        user, created = crud.create_user(
            session=session,
            user_in=user_in,
            password_hash=password_hash,
            trail=trail,
            if_not_exists=if_not_exists,
        )
        shown = user_record(user) if user.id is not None else {}
        if created and not dry_run:
            _deliver_password(shown, output, password)
    if not created:
        typer.echo(f"User {printable(shown['email'])} already exists; left unchanged.", err=True)
    if dry_run:
        show_planned(trail, output)
    elif not (created and password.generated):
        _show_user(shown, output, password if created else None)


def list_(
    ctx: typer.Context,
    role: Annotated[
        str | None,
        typer.Option("--role", "-r", help="Only this role.", autocompletion=complete_roles),
    ] = None,
    active: Annotated[bool, typer.Option("--active", help="Only active users.")] = False,
    disabled: Annotated[bool, typer.Option("--disabled", help="Only disabled users.")] = False,
    search: Annotated[
        str | None,
        typer.Option(
            "--search", "-s", metavar="TEXT", help="Case-insensitive substring of name or email."
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option("--sort", metavar="FIELD", help=SORT_HELP, autocompletion=complete_sort),
    ] = "id",
    limit: Limit = None,
    offset: Offset = 0,
    count: Annotated[
        bool, typer.Option("--count", help="Print only the number of matching users.")
    ] = False,
    output: Output = OutputFormat.table,
) -> None:
    """List users, ordered by id unless --sort says otherwise.

    \b
    Example:
      usersctl list --role admin --active --sort -created_at -o json
    """
    from usersctl import crud

    exclusive(ctx, "active", "disabled")
    exclusive(ctx, "count", "limit", "offset", "sort")
    wanted = True if active else False if disabled else None
    descending = sort.startswith("-")
    field = sort.removeprefix("-")
    if field not in crud.SORT_FIELDS:
        raise UsageError(f"cannot sort by {field!r}: choose one of {', '.join(crud.SORT_FIELDS)}")
    database = get_state(ctx).ready_database()
    if count:
        with database.session(write=False) as session:
            total = crud.count_users(session=session, role=role, active=wanted, search=search)
        Renderer(output).line(str(total))
        return
    with database.session(write=False) as session:
        users = crud.iter_users(
            session=session,
            role=role,
            active=wanted,
            search=search,
            sort=field,
            descending=descending,
            limit=limit,
            offset=offset,
        )
        shown = Renderer(output).many(records(users))
    if shown == 0 and output is OutputFormat.table:
        typer.echo("No users.", err=True)


def get(ctx: typer.Context, user: UserRef, output: Output = OutputFormat.table) -> None:
    """Show one user.

    \b
    Example:
      usersctl get ada@example.com -o json
    """
    from usersctl import crud

    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        shown = user_record(crud.get_user(session=session, ref=user))
    Renderer(output).one(shown)


def update(
    ctx: typer.Context,
    user: UserRef,
    name: Annotated[str | None, typer.Option("--name", "-n", help="New name.")] = None,
    email: Annotated[str | None, typer.Option("--email", "-e", help="New email.")] = None,
    role: Annotated[
        str | None,
        typer.Option("--role", "-r", help="New role.", autocompletion=complete_roles),
    ] = None,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Change a user's name, email or role, and print the user.

    \b
    Example:
      usersctl update ada@example.com --role admin
    """
    from usersctl import crud
    from usersctl.schemas import UserUpdate, parse

    given = {k: v for k, v in {"name": name, "email": email, "role": role}.items() if v is not None}
    if not given:
        raise UsageError("nothing to change: give --name, --email and/or --role")
    user_in = parse(UserUpdate, given)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=user, lock=True)
        updated = crud.update_user(session=session, user=target, user_in=user_in, trail=trail)
        shown = user_record(updated)
    if dry_run:
        show_planned(trail, output)
        return
    Renderer(output).one(shown)


def passwd(
    ctx: typer.Context,
    user: UserRef,
    password_stdin: PasswordStdin = False,
    random_password: RandomPassword = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Set a new password for a user.

    \b
    Example:
      printf '%s\\n' "$NEW_PASSWORD" |
          usersctl passwd ada@example.com --password-stdin
    """
    from usersctl import crud
    from usersctl.passwords import hash_password

    exclusive(ctx, "password_stdin", "random_password")
    password = new_password(password_stdin=password_stdin, random_password=random_password)
    password_hash = "" if dry_run else hash_password(password.value)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=user, lock=True)
        crud.set_password_hash(
            session=session, user=target, password_hash=password_hash, trail=trail
        )
        shown = user_record(target)
        if not dry_run:
            _deliver_password(shown, output, password)
    if dry_run:
        show_planned(trail, output)
        return
    typer.echo(f"Password changed for {printable(shown['email'])}.", err=True)
    if not password.generated:
        _show_user(shown, output, password)


def verify_password(
    ctx: typer.Context, user: UserRef, password_stdin: PasswordStdin = False
) -> None:
    """Check a password: exit 0 if it matches an active user, 6 if not.

    Unknown users, wrong passwords and disabled accounts all fail the same way (exit 6, same
    message, about the same time), so the answer does not reveal which accounts exist.

    \b
    Example:
      printf '%s\\n' "$PASSWORD" |
          usersctl verify-password ada@example.com --password-stdin
    """
    from usersctl import crud

    password = existing_password(password_stdin=password_stdin)
    state = get_state(ctx)
    database = state.ready_database()
    # The hash is read in a short read transaction and checked after it ended: a login
    # check, however slow its hash, never waits for, or holds up, another command.
    with database.session(write=False) as session:
        credentials = crud.read_credentials(session=session, ref=user)
    verification = crud.check_password(credentials=credentials, password=password)
    if verification.new_hash is not None:
        _upgrade_hash(state, database, verification)
    typer.echo("Password verified.", err=True)


def _upgrade_hash(state: AppState, database: Database, verification: Verification) -> None:
    """Store the upgraded hash, best effort: a database that cannot be written now (read-only
    file or folder, a SELECT-only role, another writer holding the lock) does not fail the
    login. The old hash stays, and a later successful verification tries again."""
    from sqlalchemy.exc import SQLAlchemyError

    from usersctl import crud

    try:
        database.check_writable()
        with database.quick_session() as session:
            crud.upgrade_hash(session=session, verification=verification, trail=state.trail())
    except (UsersctlError, SQLAlchemyError) as exc:
        if state.debug:
            reason = exc.message if isinstance(exc, UsersctlError) else _first_line(exc)
            typer.echo(
                f"note: the password hash was not upgraded (kept the old one): {reason}",
                err=True,
            )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _set_active(
    ctx: typer.Context, users: list[str], active: bool, dry_run: bool, output: OutputFormat
) -> None:
    from usersctl import crud

    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        targets = crud.get_users(session=session, refs=users, lock=True)
        changed = crud.set_active(session=session, users=targets, active=active, trail=trail)
        shown = [user_record(u) for u in changed]
    if dry_run:
        show_planned(trail, output)
    else:
        Renderer(output).many(shown)


def disable(
    ctx: typer.Context,
    users: UserRefs,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Lock users out (they can no longer log in). All or nothing: one unknown USER changes none.

    \b
    Example:
      usersctl disable ada@example.com 42
    """
    _set_active(ctx, users, False, dry_run, output)


def enable(
    ctx: typer.Context,
    users: UserRefs,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Unlock users. All or nothing: one unknown USER changes none.

    \b
    Example:
      usersctl enable ada@example.com
    """
    _set_active(ctx, users, True, dry_run, output)


def _confirm_delete(ctx: typer.Context, users: list[str], missing_ok: bool) -> None:
    """Ask before deleting, in a read transaction: no lock is held while a person thinks."""
    from usersctl import crud

    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        targets = [
            user_record(u)
            for u in crud.get_users(session=session, refs=users, missing_ok=missing_ok)
        ]
    if not targets:
        return
    listing = ", ".join(f"{printable(u['email'])} (id {u['id']})" for u in targets[:5])
    more = f" and {len(targets) - 5} more" if len(targets) > 5 else ""
    if not typer.confirm(f"Delete {len(targets)} user(s): {listing}{more}?", default=False):
        raise typer.Abort()


def delete(
    ctx: typer.Context,
    users: UserRefs,
    yes: Yes = False,
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="Ignore users that do not exist (exit 0).")
    ] = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Delete users and print what was deleted. Asks first on a terminal.

    All or nothing: one unknown USER (without --missing-ok) deletes none.

    \b
    Example:
      usersctl delete ada@example.com --yes
    """
    from usersctl import crud

    if not yes:
        if not stdin_is_terminal():
            raise UsageError("refusing to delete without --yes when stdin is not a terminal")
        if not dry_run:  # nothing to confirm: a dry run deletes nothing
            _confirm_delete(ctx, users, missing_ok)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        targets = crud.get_users(session=session, refs=users, missing_ok=missing_ok, lock=True)
        shown = [user_record(u) for u in targets]
        crud.delete_users(session=session, users=targets, trail=trail)
    if dry_run:
        show_planned(trail, output)
        return
    if not shown:
        typer.echo("Nothing to delete.", err=True)
    elif output is OutputFormat.table:
        typer.echo(f"Deleted {len(shown)} user(s).", err=True)
    Renderer(output).many(shown)
