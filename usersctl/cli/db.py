"""`usersctl db ...` and `usersctl migrate`: thin forwarding to usersctl.migrations."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from usersctl.cli.command import command
from usersctl.cli.completion import complete_revisions, sqlite_file_exists
from usersctl.cli.options import Output, Yes
from usersctl.cli.progress import progress_bar
from usersctl.cli.render import OutputFormat, Renderer
from usersctl.cli.state import get_state, stdin_is_terminal
from usersctl.cli.text import say
from usersctl.errors import SchemaMismatch, UsageError

if TYPE_CHECKING:
    from usersctl.database import Database
    from usersctl.migrations import MigrationResult

db_app = typer.Typer(
    name="db",
    help="Schema migrations (embedded Alembic): upgrade, downgrade, current, history, "
    "check, stamp.\n\n\b\nExample:\n  usersctl db current && usersctl db upgrade",
    no_args_is_help=True,
)

Revision = Annotated[
    str,
    typer.Argument(
        metavar="REV",
        help="Revision id (0001), 'head' or 'base'.",
        autocompletion=complete_revisions,
    ),
]


SqlDryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Run the checks, print the revisions and the SQL; change nothing. Exits as the "
        "real run would.",
    ),
]


def _describe_revision(revision: str | None) -> str:
    return revision or "base (no schema)"


def _report(verb: str, where: str, result: MigrationResult) -> None:
    if result.before == result.after:
        message = f"Already at revision {_describe_revision(result.after)}; nothing to do."
    else:
        message = (
            f"{verb} {where} from {_describe_revision(result.before)} "
            f"to {_describe_revision(result.after)}."
        )
    say(message)


def _show_dry_run(verb: str, where: str, result: MigrationResult) -> None:
    """The SQL on stdout (a script an admin could read or review), the summary on stderr."""
    from usersctl.revision import KNOWN_REVISIONS

    if result.before == result.after and not result.adopted:
        say(f"Dry run: already at revision {_describe_revision(result.after)}; nothing to do.")
        return
    order = [None, *KNOWN_REVISIONS]
    low, high = sorted((order.index(result.before), order.index(result.after)))
    steps = [str(revision) for revision in order[low + 1 : high + 1]]
    if verb == "downgrade":
        steps.reverse()
    sys.stdout.write(
        f"-- usersctl db {verb} --dry-run: {where} from {_describe_revision(result.before)} "
        f"to {_describe_revision(result.after)}\n"
        f"-- revisions: {', '.join(steps)} (statement parameters are not shown)\n"
        + ("-- adopts the tutorial users table: stamps 0001 first\n" if result.adopted else "")
        + result.sql
    )
    say(
        f"Dry run: would {verb} {where} from {_describe_revision(result.before)} to "
        f"{_describe_revision(result.after)} ({len(steps)} revision(s)); nothing was written."
    )


def _migrating(ctx: typer.Context, database: Database) -> Callable[[], None]:
    """Keeps the Ctrl-C message honest during a migration; returns its on_commit."""
    state = get_state(ctx)
    if database.engine.dialect.name in ("mysql", "mariadb"):
        state.interrupt_note = (
            "MariaDB commits each migration step as it goes: check `usersctl db current`"
        )

    def committed() -> None:
        state.interrupt_note = "the migration was committed; only its report was cut short"

    return committed


def run_upgrade(ctx: typer.Context, revision: str, dry_run: bool = False) -> None:
    from usersctl import migrations

    database = get_state(ctx).database()
    on_commit = None if dry_run else _migrating(ctx, database)
    with progress_bar("Hashing plaintext passwords") as progress:
        result = migrations.upgrade(
            database, revision, progress, dry_run=dry_run, on_commit=on_commit
        )
    for warning in result.warnings:
        say(f"warning: {warning}")
    if dry_run:
        _show_dry_run("upgrade", database.display_url, result)
        return
    if result.adopted and result.after == "0001":
        say(
            "Adopted the tutorial database: stamped revision 0001. Its passwords are still "
            "plaintext: `usersctl db upgrade` (0002 or later) hashes them."
        )
    elif result.adopted:
        say(
            "Adopted the tutorial database: stamped revision 0001, then upgraded "
            f"(plaintext passwords are now argon2id hashes; {_plaintext_left(result)})."
        )
    if result.finished_scrub:
        say("Scrubbed the old plaintext passwords an earlier upgrade left in free space.")
    if not (result.adopted and result.before == result.after):  # (adopted at 0001: said)
        _report("Upgraded", database.display_url, result)


def _plaintext_left(result: MigrationResult) -> str:
    """What is true of old plaintext copies after an adoption, per engine."""
    if result.engine == "sqlite":
        private = "; the file is now private (0600)" if result.private else ""
        return f"no plaintext copy is left in the file{private}"
    if result.engine == "postgresql":
        return (
            "the table was rewritten, but the server's WAL and backups may keep old copies "
            "until they are recycled"
        )
    return "the server's binary and redo logs and backups may keep old copies until recycled"


@command(db_app, "upgrade")
def upgrade(
    ctx: typer.Context,
    revision: Annotated[
        str,
        typer.Argument(
            metavar="REV",
            help="Target revision: an id (0002) or 'head'.",
            autocompletion=complete_revisions,
        ),
    ] = "head",
    dry_run: SqlDryRun = False,
) -> None:
    """Upgrade the schema (default: to head). Adopts a tutorial users.db.

    \b
    Examples:
      usersctl db upgrade --dry-run > upgrade.sql
      usersctl db upgrade
    """
    run_upgrade(ctx, revision, dry_run)


def _consent(verb: str, question: str, *, yes: bool, dry_run: bool) -> None:
    """The same rule for every command that rewrites the schema: a dry run needs no
    consent; otherwise ask on a terminal, and require --yes off one."""
    if yes or dry_run:
        return
    if not stdin_is_terminal():
        raise UsageError(f"refusing to {verb} without --yes when stdin is not a terminal")
    if not typer.confirm(question, default=False):
        raise typer.Abort()


@command(db_app, "downgrade")
def downgrade(
    ctx: typer.Context,
    revision: Revision,
    yes: Yes = False,
    discard_audit_trail: Annotated[
        bool,
        typer.Option(
            "--discard-audit-trail",
            help="Allow going below 0003, which drops the audit trail (keep a copy first: "
            "usersctl audit -o jsonl).",
        ),
    ] = False,
    discard_api_tokens: Annotated[
        bool,
        typer.Option(
            "--discard-api-tokens",
            help="Allow going below 0005 while API tokens still work (they, and every login "
            "token, stop working).",
        ),
    ] = False,
    dry_run: SqlDryRun = False,
) -> None:
    """Downgrade the schema to REV. Refuses where data would be lost; 'base' drops the tables.

    \b
    Examples:
      usersctl db downgrade 0002 --dry-run
      usersctl audit -o jsonl > audit.jsonl
      usersctl db downgrade 0002 --discard-audit-trail --yes
    """
    from usersctl import migrations

    migrations.resolve_revision(revision, aliases=("base",))  # before asking for consent
    database = get_state(ctx).database()
    if revision == "base" and not (yes or dry_run):
        users = migrations.count_users(database)
        question = (
            f"Downgrade {database.display_url} to base? This drops every table: it deletes "
            f"every user ({users} user{'' if users == 1 else 's'}) and the audit trail."
        )
    else:
        question = f"Downgrade {database.display_url} to {revision}?"
    _consent("downgrade", question, yes=yes, dry_run=dry_run)
    result = migrations.downgrade(
        database,
        revision,
        discard_audit_trail=discard_audit_trail,
        discard_api_tokens=discard_api_tokens,
        dry_run=dry_run,
        on_commit=None if dry_run else _migrating(ctx, database),
    )
    if dry_run:
        _show_dry_run("downgrade", database.display_url, result)
    else:
        _report("Downgraded", database.display_url, result)


@command(db_app, "current")
def current(ctx: typer.Context, output: Output = OutputFormat.table) -> None:
    """Print the database's schema revision and how it relates to this usersctl's head.

    \b
    Example:
      usersctl db current
    """
    from usersctl import migrations
    from usersctl.revision import HEAD

    status = migrations.current(get_state(ctx).database())
    Renderer(output).one(
        {"revision": status.revision, "head": HEAD, "state": status.state.value},
        fields=["revision", "head", "state"],
    )


@command(db_app, "history")
def history(ctx: typer.Context, output: Output = OutputFormat.table) -> None:
    """List the migrations this usersctl ships, oldest first; mark the database's revision.

    \b
    Example:
      usersctl db history -o json
    """
    from usersctl import migrations
    from usersctl.errors import UsersctlError

    current_revision = None  # the list needs no database: without one, nothing is marked
    try:
        state = get_state(ctx)
        if sqlite_file_exists(state.settings.database_url):
            current_revision = migrations.current(state.database()).revision
    except UsersctlError:
        pass
    rows = []
    for r in migrations.history():
        is_current = r.revision == current_revision
        shown = f"{r.revision} (current)" if is_current and output is OutputFormat.table else None
        rows.append(
            {
                "revision": shown or r.revision,
                "down_revision": r.down_revision,
                "current": is_current,
                "message": r.message,
            }
        )
    fields = ["revision", "down_revision", "message"]
    if output is not OutputFormat.table:
        fields.insert(2, "current")
    Renderer(output).many(rows, fields=fields)


@command(db_app, "check")
def check(ctx: typer.Context) -> None:
    """Exit 0 if the database is at head and matches the models, 8 otherwise. Changes nothing.

    \b
    Example:
      usersctl db check || usersctl db upgrade
    """
    from usersctl import migrations
    from usersctl.revision import HEAD, State, mismatch_message

    database = get_state(ctx).database()
    status = migrations.current(database)
    if status.state is State.EMPTY:
        raise SchemaMismatch("database has no schema yet: run `usersctl db upgrade`")
    if status.state is not State.CURRENT:
        raise SchemaMismatch(mismatch_message(status))
    differences = migrations.schema_differences(database)
    if differences:
        raise SchemaMismatch(
            f"database is stamped {HEAD} but its tables differ from the models: {differences[0]}"
            + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")
        )
    say(f"Database is at head ({HEAD}) and matches the models.")


@command(db_app, "stamp")
def stamp(
    ctx: typer.Context,
    revision: Revision,
    yes: Yes = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Run the checks, print the revision change and its SQL; change nothing.",
        ),
    ] = False,
) -> None:
    """Record REV as the schema revision without running migrations.

    For a database whose tables were migrated by other means. Refuses (exit 8) when
    the tables present do not fit REV.

    \b
    Examples:
      usersctl db stamp head --dry-run
      usersctl db stamp 0003 --yes
    """
    from usersctl import migrations

    database = get_state(ctx).database()
    where = database.display_url
    # The checks first (a rehearsal, rolled back): a refusal never waits for an answer.
    planned = migrations.stamp(database, revision, dry_run=True)
    before, after = _describe_revision(planned.before), _describe_revision(planned.after)
    if planned.before == planned.after:
        say(f"Already at revision {after}; nothing to do.")
        return
    if dry_run:
        sys.stdout.write(f"-- usersctl db stamp --dry-run: {where} from {before} to {after}\n")
        sql = [line for line in planned.sql.splitlines() if not line.startswith("-- Running")]
        sys.stdout.write("".join(f"{line}\n" for line in sql if line))
        say(
            f"Dry run: would stamp {where} as revision {after} (was {before}) without "
            "running migrations; nothing was written."
        )
        return
    question = f"Stamp {where} as revision {after} (was {before}) without running migrations?"
    _consent("stamp", question, yes=yes, dry_run=False)
    result = migrations.stamp(database, revision, on_commit=_migrating(ctx, database))
    say(
        f"Stamped revision {_describe_revision(result.after)} "
        f"(was {_describe_revision(result.before)})."
    )


def migrate(ctx: typer.Context) -> None:
    """Upgrade the schema to head (same as `usersctl db upgrade head`).

    \b
    Example:
      usersctl migrate
    """
    run_upgrade(ctx, "head")
