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
from usersctl.cli.lifecycle import (
    Columns,
    Expired,
    Expires,
    InactiveSince,
    Locked,
    MustChange,
    MustChangeFilter,
    NoPassword,
    OptionalUserRefs,
    check_selection,
    columns,
    filters,
    say_none_matched,
    select_users,
)
from usersctl.cli.options import (
    DryRun,
    Limit,
    Offset,
    Output,
    UserRef,
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
from usersctl.cli.render import FIELDS, TABLE_FIELDS, OutputFormat, Renderer, records
from usersctl.cli.state import get_state, stdin_is_terminal
from usersctl.cli.text import say
from usersctl.errors import UsageError, VerificationFailed
from usersctl.escaping import printable
from usersctl.records import user_record

if TYPE_CHECKING:
    from datetime import datetime

    from usersctl.lifecycle import Filters

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
        say("Generated password (shown only this once):")
        renderer.line(password.value)
    else:
        renderer.one({**user_data, "password": password.value}, fields=[*user_data, "password"])


def _deliver_password(
    user_data: dict[str, Any], output: OutputFormat, password: PasswordInput | None
) -> None:
    """A generated password is shown inside the transaction and must reach stdout's file or
    pipe before the change commits: if it cannot (a full disk, stdout closed), the change is
    rolled back, so a rerun can make it again and nobody is left with an unknown password."""
    if password is None or not password.generated:
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
    no_password: Annotated[
        bool,
        typer.Option(
            "--no-password",
            help="Create the account without a password (SSO or HR-provisioned): it cannot "
            "log in until `usersctl passwd` gives it one.",
        ),
    ] = False,
    must_change: MustChange = False,
    expires: Expires = None,
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
    from usersctl.lifecycle import check_role, now, parse_expiry
    from usersctl.passwords import hash_password
    from usersctl.schemas import UserCreate, parse

    exclusive(ctx, "no_password", "password_stdin", "random_password", "must_change")
    exclusive(ctx, "password_stdin", "random_password")
    settings = get_state(ctx).settings
    user_in = parse(
        UserCreate,
        {
            "name": name,
            "email": email,
            "role": role,
            "is_active": not disabled,
            "expires_at": parse_expiry(expires, now()) if expires is not None else None,
            "must_change_password": must_change or random_password,
        },
    )
    check_role(user_in.role, settings)
    password = None
    password_hash = ""
    if not no_password:
        password = new_password(
            password_stdin=password_stdin,
            random_password=random_password,
            user_inputs=(user_in.name, user_in.email),
            min_length=settings.password_min_length,
        )
        password_hash = "" if dry_run else hash_password(password.value)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        user, created = crud.create_user(
            session=session,
            user_in=user_in,
            password_hash=password_hash,
            trail=trail,
            if_not_exists=if_not_exists,
            has_password=not no_password,
        )
        shown = user_record(user) if user.id is not None else {}
        if created and not dry_run:
            _deliver_password(shown, output, password)
    if not created:
        say(f"User {printable(shown['email'])} already exists; left unchanged.")
    if dry_run:
        show_planned(trail, output)
    elif not (created and password is not None and password.generated):
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
    inactive_since: InactiveSince = None,
    expired: Expired = False,
    locked: Locked = False,
    no_password: NoPassword = False,
    must_change: MustChangeFilter = False,
    sort: Annotated[
        str,
        typer.Option("--sort", metavar="FIELD", help=SORT_HELP, autocompletion=complete_sort),
    ] = "id",
    limit: Limit = None,
    offset: Offset = 0,
    count: Annotated[
        bool, typer.Option("--count", help="Print only the number of matching users.")
    ] = False,
    columns_: Columns = None,
    output: Output = OutputFormat.table,
) -> None:
    """List users, ordered by id unless --sort says otherwise.

    \b
    Example:
      usersctl list --role admin --active --sort -created_at -o json
    """
    from usersctl import crud
    from usersctl.lifecycle import check_role, now

    exclusive(ctx, "active", "disabled")
    exclusive(ctx, "count", "limit", "offset", "sort")
    wanted = True if active else False if disabled else None
    descending = sort.startswith("-")
    field = sort.removeprefix("-")
    if field not in crud.SORT_FIELDS:
        raise UsageError(f"cannot sort by {field!r}: choose one of {', '.join(crud.SORT_FIELDS)}")
    fields = columns(columns_, TABLE_FIELDS if output is OutputFormat.table else FIELDS)
    if role is not None:
        from usersctl.schemas import UserUpdate, parse

        parse(UserUpdate, {"role": role})  # the same rules as create --role
        check_role(role, get_state(ctx).settings)
    moment = now()
    chosen = filters(
        inactive_since=inactive_since,
        expired=expired,
        locked=locked,
        no_password=no_password,
        must_change=must_change,
        moment=moment,
    )
    database = get_state(ctx).ready_database()
    if count:
        with database.session(write=False) as session:
            total = crud.count_users(
                session=session,
                role=role,
                active=wanted,
                search=search,
                lifecycle=chosen,
                moment=moment,
            )
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
            lifecycle=chosen,
            moment=moment,
        )
        shown = Renderer(output).many(records(users), fields=fields)
    if shown == 0 and output is OutputFormat.table and limit != 0:  # (0 rows were asked for)
        say("No users.")


def get(
    ctx: typer.Context,
    user: UserRef,
    columns_: Columns = None,
    output: Output = OutputFormat.table,
) -> None:
    """Show one user.

    \b
    Example:
      usersctl get ada@example.com -o json
    """
    from usersctl import crud

    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        shown = user_record(crud.get_user(session=session, ref=user))
    Renderer(output).one(shown, fields=columns(columns_, FIELDS))


def update(
    ctx: typer.Context,
    user: UserRef,
    name: Annotated[str | None, typer.Option("--name", "-n", help="New name.")] = None,
    email: Annotated[str | None, typer.Option("--email", "-e", help="New email.")] = None,
    role: Annotated[
        str | None,
        typer.Option("--role", "-r", help="New role.", autocompletion=complete_roles),
    ] = None,
    expires: Expires = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="NAME",
            help="Hand the user to this sync source (`sync --source NAME` then manages it).",
        ),
    ] = None,
    no_source: Annotated[
        bool,
        typer.Option(
            "--no-source",
            help="Release the user from its sync source (or SCIM): managed by hand again; "
            "its external id is cleared too.",
        ),
    ] = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Change a user's name, email, role, expiry or owner, and print the user.

    \b
    Example:
      usersctl update ada@example.com --role admin
    """
    from usersctl import crud
    from usersctl.lifecycle import check_role, now, parse_expiry
    from usersctl.schemas import UserUpdate, parse

    given: dict[str, Any] = {
        k: v for k, v in {"name": name, "email": email, "role": role}.items() if v is not None
    }
    if expires is not None:
        given["expires_at"] = parse_expiry(expires, now())
    exclusive(ctx, "source", "no_source")
    if source is not None or no_source:
        given["source"] = source
    if not given:
        raise UsageError(
            "nothing to change: give --name, --email, --role, --expires and/or --source/--no-source"
        )
    user_in = parse(UserUpdate, given)
    if user_in.role is not None:
        check_role(user_in.role, get_state(ctx).settings)
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
    must_change: MustChange = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Set a new password for a user (also one that had none).

    Without --must-change (or --random-password) the must-change flag is cleared.

    \b
    Example:
      printf '%s\\n' "$NEW_PASSWORD" |
          usersctl passwd ada@example.com --password-stdin
    """
    from usersctl import crud
    from usersctl.passwords import hash_password

    exclusive(ctx, "password_stdin", "random_password")
    state = get_state(ctx)
    with state.ready_database(write=True, dry_run=dry_run).session(write=False) as session:
        found = crud.get_user(session=session, ref=user)  # its name and email guide the policy
        context = (found.name, found.email)
    password = new_password(
        password_stdin=password_stdin,
        random_password=random_password,
        user_inputs=context,
        min_length=state.settings.password_min_length,
    )
    password_hash = "" if dry_run else hash_password(password.value)
    with state.change(dry_run=dry_run) as (session, trail):
        target = crud.get_user(session=session, ref=user, lock=True)
        crud.set_password_hash(
            session=session,
            user=target,
            password_hash=password_hash,
            trail=trail,
            must_change=must_change or random_password,
        )
        shown = user_record(target)
        if not dry_run:
            _deliver_password(shown, output, password)
    if dry_run:
        show_planned(trail, output)
        return
    say(f"Password changed for {printable(shown['email'])}.")
    if not password.generated:
        _show_user(shown, output, password)


def verify_password(
    ctx: typer.Context,
    user: UserRef,
    password_stdin: PasswordStdin = False,
    output: Output = OutputFormat.table,
) -> None:
    """Check a password: exit 0 if it matches an active user, 6 if not.

    Unknown users, wrong passwords, and disabled, locked, expired or password-less accounts
    all fail the same way (exit 6, same message, about the same time), so the answer does
    not reveal which accounts exist. Each attempt is recorded: a success sets the last login
    and resets the failure counter; too many failures in a row lock the account for a
    while (config lockout_threshold, lockout_minutes). With -o json and the like, prints
    whether the password was verified and whether it must be changed now.

    \b
    Example:
      printf '%s\\n' "$PASSWORD" |
          usersctl verify-password ada@example.com --password-stdin
    """
    from usersctl.lifecycle import login

    password = existing_password(password_stdin=password_stdin)
    state = get_state(ctx)
    database = state.ready_database()
    result = login(database=database, settings=state.settings, ref=user, password=password)
    if output is not OutputFormat.table:
        Renderer(output).one(
            {"verified": result.verified, "must_change_password": result.must_change_password},
            fields=("verified", "must_change_password"),
        )
    if result.not_recorded is not None and state.debug:
        what = (
            "the password hash was not upgraded (kept the old one), nor the attempt recorded"
            if result.hash_kept
            else "the attempt was not recorded"
        )
        say(f"note: {what}: {result.not_recorded}")
    if not result.verified:
        raise VerificationFailed("password verification failed")
    if result.must_change_password:
        say("Password verified; it must be changed now (usersctl passwd).")
    else:
        say("Password verified.")


def _set_active(
    ctx: typer.Context,
    users: list[str] | None,
    chosen_filters: dict[str, Any],
    active: bool,
    dry_run: bool,
    output: OutputFormat,
) -> None:
    from usersctl import crud
    from usersctl.lifecycle import now

    moment = now()
    chosen = filters(**chosen_filters, moment=moment)
    refs = check_selection(users, chosen)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        targets = select_users(session, refs, chosen, moment, lock=True)
        changed = crud.set_active(session=session, users=targets, active=active, trail=trail)
        shown = [user_record(u) for u in changed]
    if not targets:
        say_none_matched(chosen)
        return
    if dry_run:
        show_planned(trail, output)
    else:
        Renderer(output).many(shown)


def disable(
    ctx: typer.Context,
    users: OptionalUserRefs = None,
    inactive_since: InactiveSince = None,
    expired: Expired = False,
    locked: Locked = False,
    no_password: NoPassword = False,
    must_change: MustChangeFilter = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Lock users out (they can no longer log in). All or nothing: one unknown USER changes none.

    Instead of USER arguments, filters select the users (e.g. everyone inactive for 90 days).

    \b
    Example:
      usersctl disable ada@example.com 42
      usersctl disable --inactive-since 90d --dry-run
    """
    selection = {"inactive_since": inactive_since, "expired": expired, "locked": locked,
                 "no_password": no_password, "must_change": must_change}  # fmt: skip
    _set_active(ctx, users, selection, False, dry_run, output)


def enable(
    ctx: typer.Context,
    users: OptionalUserRefs = None,
    inactive_since: InactiveSince = None,
    expired: Expired = False,
    locked: Locked = False,
    no_password: NoPassword = False,
    must_change: MustChangeFilter = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Unlock users. All or nothing: one unknown USER changes none.

    Instead of USER arguments, filters select the users.

    \b
    Example:
      usersctl enable ada@example.com
    """
    selection = {"inactive_since": inactive_since, "expired": expired, "locked": locked,
                 "no_password": no_password, "must_change": must_change}  # fmt: skip
    _set_active(ctx, users, selection, True, dry_run, output)


def _confirm_delete(
    ctx: typer.Context, users: list[str], chosen: Filters, moment: datetime, missing_ok: bool
) -> None:
    """Ask before deleting, in a read transaction: no lock is held while a person thinks."""
    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        targets = [
            user_record(u)
            for u in select_users(session, users, chosen, moment, missing_ok=missing_ok)
        ]
    if not targets:
        return
    listing = ", ".join(f"{printable(u['email'])} (id {u['id']})" for u in targets[:5])
    more = f" and {len(targets) - 5} more" if len(targets) > 5 else ""
    if not typer.confirm(f"Delete {len(targets)} user(s): {listing}{more}?", default=False):
        raise typer.Abort()


def delete(
    ctx: typer.Context,
    users: OptionalUserRefs = None,
    inactive_since: InactiveSince = None,
    expired: Expired = False,
    locked: Locked = False,
    no_password: NoPassword = False,
    must_change: MustChangeFilter = False,
    yes: Yes = False,
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="Ignore users that do not exist (exit 0).")
    ] = False,
    dry_run: DryRun = False,
    output: Output = OutputFormat.table,
) -> None:
    """Delete users and print what was deleted. Asks first on a terminal.

    All or nothing: one unknown USER (without --missing-ok) deletes none. Instead of USER
    arguments, filters select the users.

    \b
    Example:
      usersctl delete ada@example.com --yes
    """
    from usersctl import crud
    from usersctl.lifecycle import now

    moment = now()
    chosen = filters(
        inactive_since=inactive_since,
        expired=expired,
        locked=locked,
        no_password=no_password,
        must_change=must_change,
        moment=moment,
    )
    refs = check_selection(users, chosen)
    if not yes:
        if not stdin_is_terminal():
            raise UsageError("refusing to delete without --yes when stdin is not a terminal")
        if not dry_run:  # nothing to confirm: a dry run deletes nothing
            _confirm_delete(ctx, refs, chosen, moment, missing_ok)
    with get_state(ctx).change(dry_run=dry_run) as (session, trail):
        targets = select_users(session, refs, chosen, moment, missing_ok=missing_ok, lock=True)
        shown = [user_record(u) for u in targets]
        crud.delete_users(session=session, users=targets, trail=trail)
    if chosen and not targets:
        say_none_matched(chosen)
        return
    if dry_run:
        show_planned(trail, output)
        return
    if not shown:
        say("Nothing to delete.")
    elif output is OutputFormat.table:
        say(f"Deleted {len(shown)} user(s).")
    Renderer(output).many(shown)
