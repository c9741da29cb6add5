"""`usersctl import` and `usersctl export`: bulk moves in and out, all or nothing."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from usersctl.cli.options import Output, exclusive
from usersctl.cli.output import writing
from usersctl.cli.progress import progress_bar
from usersctl.cli.render import FIELDS, OutputFormat, Renderer
from usersctl.cli.state import get_state
from usersctl.cli.text import say
from usersctl.errors import InvalidData, UsageError

if TYPE_CHECKING:
    from usersctl.config import Settings


class BulkFormat(StrEnum):
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


class OnConflict(StrEnum):
    error = "error"
    skip = "skip"
    update = "update"


FormatOption = Annotated[
    BulkFormat | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help="csv, json (one array) or jsonl. Default: from the file name's extension.",
        case_sensitive=False,
    ),
]
ExportFormat = Annotated[
    BulkFormat | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FORMAT",
        help="csv, json (one array) or jsonl. Default: from the --output-file name's "
        "extension, else jsonl.",
        case_sensitive=False,
    ),
]
ExportFormatAlias = Annotated[
    BulkFormat | None,
    typer.Option(
        "--format", "-f", metavar="FORMAT", help="Same as --output.", case_sensitive=False
    ),
]


EncodingOption = Annotated[
    str | None,
    typer.Option(
        "--encoding",
        metavar="ENCODING",
        help="The file's character encoding (default UTF-8, with or without a byte-order "
        "mark; cp1252 for old Excel files).",
    ),
]
DelimiterOption = Annotated[
    str | None,
    typer.Option(
        "--delimiter",
        metavar="CHAR",
        help="CSV delimiter: , ; tab or |. Default: detected from the header line.",
    ),
]
IgnoreColumnsOption = Annotated[
    str | None,
    typer.Option(
        "--ignore-columns",
        metavar="A,B",
        help="CSV columns to drop (other unknown columns are an error).",
    ),
]
UpdatePasswordsOption = Annotated[
    bool,
    typer.Option(
        "--update-passwords",
        help="Also set the password of existing users from a password or password_hash "
        "column (never done otherwise).",
    ),
]


def _row_check(settings: Settings, restore: bool) -> Callable[[Any], None]:
    """What the configuration adds to a row's validation: the password policy for
    plaintext passwords, and the pinned roles (not in a restore, which brings back the
    roles a database held, as it does names and emails)."""
    from usersctl import password_policy
    from usersctl.lifecycle import check_role

    def check(row: Any) -> None:
        if not restore:
            check_role(row.role, settings)
        if row.password is not None:
            password_policy.check(
                row.password,
                min_length=settings.password_min_length,
                user_inputs=(row.name, row.email),
            )

    return check


def csv_options(fmt: str, delimiter: str | None, ignore_columns: str | None) -> Any:
    from usersctl.bulk import DELIMITERS, CsvOptions

    if fmt != "csv" and (delimiter is not None or ignore_columns is not None):
        raise UsageError("--delimiter and --ignore-columns apply to CSV input only")
    chosen = None
    if delimiter is not None:
        chosen = DELIMITERS.get(delimiter.strip().lower() or delimiter)
        if chosen is None:
            raise UsageError(f"invalid --delimiter {delimiter!r}: give , ; tab or |")
    ignore = frozenset(
        name.strip().lower() for name in (ignore_columns or "").split(",") if name.strip()
    )
    return CsvOptions(delimiter=chosen, ignore=ignore)


@contextmanager
def _dry_run_scope(database: Any, actor: str) -> Iterator[tuple[Any, Any]]:
    """A read transaction and a trail that only collects: what a dry run works in."""
    from usersctl.service import make_trail

    with database.session(write=False) as session:
        yield session, make_trail(actor, dry_run=True)


def run_rows(
    ctx: typer.Context,
    source: str,
    fmt: BulkFormat | None,
    *,
    job: Any,
    encoding: str | None,
    delimiter: str | None,
    ignore_columns: str | None,
    counts: Any,
    plan: Any = None,
) -> Any:
    """Read, validate and apply `source` in batches in one transaction (usersctl.sync), and
    return the outcome; blank rows go to `counts` (bulk.ReadCounts), a dry run's changes
    to `plan` (bulk_job.PlanWriter). Raises as the run ends badly; the transaction is then
    rolled back."""
    from usersctl import bulk, bulk_worker
    from usersctl.bulk_job import unique
    from usersctl.cli.progress import RowProgress
    from usersctl.dialects import dialect_of, email_key

    chosen = bulk.guess_format(source, fmt.value if fmt else None)
    options = csv_options(chosen, delimiter, ignore_columns)
    state = get_state(ctx)
    row_check = _row_check(state.settings, job.restore)
    seen = bulk.Validated()
    with ExitStack() as stack:  # (left in reverse: the run, its transaction, the progress...)
        stream, counting = stack.enter_context(bulk.open_input(source, encoding))
        records = bulk.read_records(stream, chosen, options, counts)
        key = email_key(dialect_of(state.settings.database_url))

        def produce() -> Generator[Any, None, None]:
            rows = bulk.validate(records, row_check, restore=job.restore, seen=seen)
            return unique(rows, key=key, restore=job.restore, validated=seen)

        # The worker first: it may fork, which copies only this thread (not the progress
        # line's), and before the database's libraries load: the child validates meanwhile.
        valid_rows = stack.enter_context(
            bulk_worker.validated_batches(produce, seen, counting, counts)
        )
        database = state.ready_database(write=True, dry_run=job.dry_run)
        from usersctl.sync import Run

        progress = stack.enter_context(RowProgress(seen, counting))
        # A dry run reads in a read transaction and collects its trail and plan; a real run
        # writes in the command's write transaction and hashes as it goes.
        extra: dict[str, Any]
        if job.dry_run:
            scope = _dry_run_scope(database, state.settings.actor)
            extra = {"plan": plan}
        else:
            scope = state.change()
            extra = {"hasher": progress.hasher()}
        session, trail = stack.enter_context(scope)
        run = Run(session, trail, job, seen, key=key, **extra)
        stack.callback(run.close)
        progress.follow(run.outcome)
        for batch in valid_rows:
            run.add(batch)
            progress.update()
        if job.source is not None and seen.read == 0:
            # A failed export, surely (nothing, a byte-order mark, blank lines, a header
            # alone): a sync of no users would report (or prune) every user the source owns.
            what = "is empty (0 bytes)" if counting.consumed == 0 else "lists no users"
            raise InvalidData(
                f"{'standard input' if source == '-' else source} {what}: a "
                "source's export always lists some; nothing changed"
            )
        return run.finish()


def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="File to read, or - for stdin.")],
    fmt: FormatOption = None,
    on_conflict: Annotated[
        OnConflict,
        typer.Option(
            "--on-conflict",
            help="For emails already in the database: error (nothing is imported), skip them, "
            "or update them (never their password, unless --update-passwords).",
            case_sensitive=False,
        ),
    ] = OnConflict.error,
    update_passwords: UpdatePasswordsOption = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate and report what would change; write nothing."),
    ] = False,
    restore: Annotated[
        bool,
        typer.Option(
            "--restore",
            help="Keep id, created_at, updated_at and source from the input (into an empty "
            "database).",
        ),
    ] = False,
    encoding: EncodingOption = None,
    delimiter: DelimiterOption = None,
    ignore_columns: IgnoreColumnsOption = None,
    output: Output = OutputFormat.table,
) -> None:
    """Create or update users from CSV, JSON or JSONL, in one transaction: all or nothing.

    Columns: name, email, role, active, expires_at, and optionally password (plaintext,
    hashed on import) or password_hash (argon2 or bcrypt, kept); a new user without either
    has no password. Every column `export` writes is accepted. Every bad row is reported
    with its line number, and then nothing is written.

    \b
    Example:
      usersctl import hr-onboarding.csv --on-conflict skip --dry-run
    """
    from usersctl.bulk import ReadCounts
    from usersctl.bulk_job import Job

    counts = ReadCounts()
    job = Job(
        on_conflict=on_conflict.value,
        update_passwords=update_passwords,
        restore=restore,
        dry_run=dry_run,
    )
    outcome = run_rows(
        ctx, source, fmt, job=job, encoding=encoding, delimiter=delimiter,
        ignore_columns=ignore_columns, counts=counts,
    )  # fmt: skip
    summary = {
        "created": outcome.created,
        "updated": outcome.updated,
        "unchanged": outcome.unchanged,
        "skipped": outcome.skipped,
        "dry_run": dry_run,
        "blank_rows": counts.blank_rows,  # last: `-o plain` fields keep their places
    }
    if outcome.passwords_missing:
        say(
            f"warning: {outcome.passwords_missing} user(s) {'would be' if dry_run else 'were'} "
            "restored without a password: their rows say has_password true but carry no "
            "password_hash (a backup needs `export --include-hashes`); they cannot log in "
            "until given one (usersctl passwd)"
        )
    if dry_run:
        say("Dry run: nothing was written.")
    Renderer(output).one(summary, fields=list(summary))


def _destination(path: Path) -> tuple[Path, bool]:
    """Where and how `export --output-file` writes: (target, atomically?).

    A regular file or a new path is replaced atomically; a symbolic link is followed (the
    file it points to is replaced, never the link), but only one of your own or root's. A
    FIFO, a character device (/dev/null, a terminal) and any path under /dev or /proc
    (/dev/stdout: a stream, which may be a file the shell opened) are written directly:
    they are streams, never replaced."""
    current = str(path)
    for _ in range(40):
        absolute = os.path.abspath(current)
        if absolute.split(os.sep)[1:2] in (["dev"], ["proc"]):
            return Path(current), False
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return Path(current), True
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            if hasattr(os, "geteuid") and info.st_uid not in (os.geteuid(), 0):
                raise UsageError(
                    f"cannot write {path}: {current} is a symbolic link owned by another "
                    "user (usersctl follows only yours and root's)"
                )
            current = os.path.join(os.path.dirname(absolute), os.readlink(current))
            continue
        if stat.S_ISREG(info.st_mode):
            return Path(current), True
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            return Path(current), False
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a file, FIFO or device"
        raise UsageError(f"cannot write {path}: it is {kind}")
    raise UsageError(f"cannot write {path}: too many levels of symbolic links")


@contextmanager
def _direct_file(path: Path) -> Any:
    """A stream (FIFO, device, /dev/stdout) opened as it is: appended to, never created,
    truncated or replaced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with open(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle


@contextmanager
def _atomic_file(path: Path, *, private: bool) -> Any:
    """Write to a temporary file beside `path`, renamed into place only on success."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with open(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def export(
    ctx: typer.Context,
    output: ExportFormat = None,
    fmt: ExportFormatAlias = None,
    include_hashes: Annotated[
        bool,
        typer.Option(
            "--include-hashes",
            help="Add password_hash (needed for a full restore). A file is then created 0600.",
        ),
    ] = False,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output-file",
            help="Write here (atomically: a failed export leaves no partial file) "
            "instead of stdout; - is stdout. A symbolic link is followed; a FIFO or a "
            "device is written directly.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Stream every user, by id, as CSV, JSON or JSONL. `import` of it restores them.

    \b
    Example:
      usersctl export --include-hashes --output-file users-$(date +%F).jsonl
      usersctl export -o csv > users.csv
    """
    from usersctl import crud

    exclusive(ctx, "output", "fmt")
    fmt = output or fmt
    if output_file is not None and str(output_file) == "-":
        output_file = None  # stdout, as for `import -`
    target, atomic = _destination(output_file) if output_file is not None else (None, False)
    if fmt is not None:
        chosen = fmt.value
    elif output_file is not None and (atomic or output_file.suffix):
        from usersctl.bulk import guess_format

        try:
            chosen = guess_format(str(output_file), None)
        except UsageError:  # its wording names import's --format; export's option is -o
            raise UsageError(
                f"cannot tell the format of {str(output_file)!r} from its name: "
                "give -o csv|json|jsonl"
            ) from None
    else:
        chosen = "jsonl"  # stdout, and streams named without an extension (/dev/stdout)
    fields = [*FIELDS, "password_hash"] if include_hashes else list(FIELDS)
    database = get_state(ctx).ready_database()
    with database.session(write=False) as session:
        if output_file is None:
            rows = crud.export_rows(session=session, include_hashes=include_hashes)
            Renderer(OutputFormat(chosen)).many(rows, fields=fields, exact=True)
            return
        assert target is not None
        opened = _atomic_file(target, private=include_hashes) if atomic else _direct_file(target)
        # A full disk or read-only folder: exit 10 naming the file (and no partial file).
        with writing(str(target)), opened as handle:
            count = _export_to(handle, session, chosen, include_hashes, fields)
    say(f"Exported {count} user(s) to {output_file}.")


def _export_to(
    handle: IO[str], session: Any, fmt: str, include_hashes: bool, fields: list[str]
) -> int:
    from usersctl import crud

    rows: Any = crud.export_rows(session=session, include_hashes=include_hashes)
    with progress_bar("Exporting") as factory:
        if factory is not None:
            advance = factory(crud.count_users(session=session))
            rows = _counting(rows, advance)
        return Renderer(OutputFormat(fmt), handle).many(rows, fields=fields, exact=True)


def _counting(rows: Any, advance: Any, every: int = 1000) -> Any:
    pending = 0
    for row in rows:
        yield row
        pending += 1
        if pending == every:
            advance(pending)
            pending = 0
    if pending:
        advance(pending)
