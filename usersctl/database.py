"""Engine and sessions. SQLite's pragmas, locking and file permissions live here.

SQLite is opened with WAL, foreign keys, secure_delete (deleted rows are overwritten, so
neither a removed user nor an old plaintext password lingers in free pages), synchronous
FULL (durable commits) and a busy timeout. Write transactions begin IMMEDIATE so that two
writers queue on the lock instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import functools
import itertools
import os
import stat
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, create_engine, event, insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InternalError,
    NoSuchModuleError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    SAWarning,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.types import TypeEngine

from usersctl import rules
from usersctl.config import Settings
from usersctl.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    InvalidData,
    NotFound,
    SchemaMismatch,
    UsageError,
)

_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_READ_ONLY = "usersctl_read_only"
HEAD_RECHECK_SECONDS = 1.0  # a server's reads trust a schema check this recent
_MIN_FREE_BYTES = 64 * 1024
# Connections a server process opens past its pool (closed after use). With its pool of 16
# (usersctl.api.app.SERVER_POOL), 24 a worker at most: 4 workers fit PostgreSQL's default
# max_connections of 100 (97 for ordinary roles).
SERVER_POOL_OVERFLOW = 8
QUICK_LOCK_WAIT_MS = 100  # how long best-effort writes wait for a lock (quick_session)


def _is_secret_key(key: str) -> bool:
    """Query parameters that hold a password: password (psycopg), passwd (PyMySQL),
    sslpassword (libpq), ssl_password, ..."""
    return "pass" in key.lower()


def _mask_text(text: str) -> str:
    """Mask the password of a URL given as text, whatever SQLAlchemy would make of it: the
    user info ends at the *last* @ before the path (an unencoded @ in a password), and
    every query parameter that holds a password."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    at = rest.rfind("@", 0, rest.find("?") if "?" in rest else len(rest))
    slash = rest.find("/", at + 1 if at >= 0 else 0)
    if at > 0 and not rest.startswith("/") and (slash < 0 or at < slash):
        user, colon, _password = rest[:at].partition(":")
        rest = f"{user}:***{rest[at:]}" if colon else rest
    base, question, query = rest.partition("?")
    if question:
        masked = []
        for part in query.split("&"):
            key, equals, value = part.partition("=")
            masked.append(f"{key}=***" if equals and _is_secret_key(key) else part)
        rest = base + "?" + "&".join(masked)
    return f"{scheme}://{rest}"


def display_url(url: URL | str) -> str:
    """The URL with its password masked, for every message that names a database."""
    if isinstance(url, str):
        return _mask_text(url)
    return _mask_text(url.render_as_string(hide_password=True))


def url_secrets(url: URL) -> list[str]:
    """Every password a URL carries (to scrub from a driver's error message)."""
    secrets = [url.password] if isinstance(url.password, str) else []
    for key, value in url.query.items():
        if _is_secret_key(key):
            secrets.extend([value] if isinstance(value, str) else value)
    if url.host and "@" in url.host:  # (the rest of a password with an unencoded @)
        secrets.append(url.host.rsplit("@", 1)[0])
    return [secret for secret in secrets if secret]


# The drivers the extras install, for URLs that name only the engine (SQLAlchemy would
# otherwise pick psycopg2 / mysqlclient, which usersctl does not ship).
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def _sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, `~` expanded (SQLite is handed the same path)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    try:
        return Path(database).expanduser()
    except RuntimeError:  # ~name of no such user
        raise UsageError(
            f"database URL {display_url(url)!r}: cannot expand {database.split('/')[0]!r} "
            "(no such user)"
        ) from None


def in_memory(settings: Settings) -> bool:
    """Is the database a private in-memory SQLite one (`sqlite://`, `sqlite:///:memory:`)?"""
    text = settings.database_url
    if not text.startswith("sqlite") or _looks_like_path(text):
        return False
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        return False
    database = url.database or ""
    if database.startswith("file:"):  # a URI filename (?uri=true): file::memory:, memdb
        database = database[5:].split("?")[0]
    memory = database in ("", ":memory:") or "mode=memory" in text or "vfs=memdb" in text
    return memory and not url.host


def refuse_in_memory(settings: Settings) -> None:
    """A command's (or a server's) database must outlive it: an in-memory one would take
    every change with it (exit 0, and nothing kept)."""
    if in_memory(settings):
        raise UsageError(
            f"database URL {display_url(settings.database_url)!r} is an in-memory database, "
            "gone when the command ends: give a file, e.g. sqlite:////srv/usersctl/users.db"
        )


def missing_database_message(path: object) -> str:
    return f"no database at {path}; create it with `usersctl db upgrade`"


_JOURNALS = ("-wal", "-shm", "-journal")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _private_group(info: os.stat_result) -> bool:
    """Is the file's group its owner's own (a user private group, umask 002 distributions),
    with nobody else in it?"""
    import grp
    import pwd

    try:
        group = grp.getgrgid(info.st_gid)
        owner = pwd.getpwuid(info.st_uid)
    except KeyError:
        return False
    others = [member for member in group.gr_mem if member != owner.pw_name]
    return owner.pw_gid == info.st_gid and group.gr_name == owner.pw_name and not others


def _check_trusted(path: Path, info: os.stat_result, what: str, fix: str) -> None:
    """ssh's StrictModes for one file or folder: owned by the current user or root, and
    writable by nobody else. Otherwise someone else could change (or plant) the users."""
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        owner = _user_name(info.st_uid)
        allowed = "you (root)" if me == 0 else f"you ({_user_name(me)}) or root"
        raise DatabaseUnavailable(
            f"{what} is owned by {owner}, not {allowed}, so {owner} could change its users; "
            f"run usersctl as {owner}, or `chown {_user_name(me)} {path}`"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o002 or (mode & 0o020 and not _private_group(info)):
        who = "every user" if mode & 0o002 else "its group"
        raise DatabaseUnavailable(
            f"{what} is writable by {who} (mode {mode:04o}), so others could change its "
            f"users; {fix}"
        )


def _check_folder(folder: Path, path: Path) -> None:
    # A sticky world-writable folder (/tmp) is refused too: anyone may create the
    # database's -wal file there before it exists, and SQLite would replay it. Such a
    # folder is shared on purpose: the fix is another folder, never chmod (it breaks /tmp).
    info = os.stat(folder)
    move = "move the database to a folder only you can write to"
    shared = info.st_mode & stat.S_ISVTX and stat.S_IMODE(info.st_mode) & 0o002
    fix = (
        f"{move}, e.g. a new folder in it (mkdir -m 700)"
        if shared
        else f"{move}, or `chmod go-w {folder}`"
    )
    _check_trusted(folder, info, f"folder {folder} (of database {path})", fix)


def check_sqlite_file(path: Path) -> None:
    """Before SQLite opens `path`: it exists (SQLite would create it), and neither it, its
    -wal/-shm/-journal nor its folder can be changed by another user."""
    if not os.path.lexists(path):
        raise DatabaseUnavailable(missing_database_message(path))
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows has no such modes
        return
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise DatabaseUnavailable(
            f"database {path} is a symbolic link to {real}, which does not exist; usersctl "
            "never creates a database through a symbolic link"
        )
    try:
        _check_folder(path.absolute().parent, path)
        if real.parent != path.absolute().parent:
            _check_folder(real.parent, path)
        _check_trusted(real, os.stat(real), f"database {path}", f"`chmod 600 {real}`")
        for suffix in _JOURNALS:
            journal = Path(f"{real}{suffix}")
            try:
                info = os.lstat(journal)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                raise DatabaseUnavailable(
                    f"{journal} is a symbolic link; SQLite would follow it: remove it"
                )
            _check_trusted(journal, info, f"SQLite file {journal}", f"`chmod 600 {journal}`")
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot check database {path}: {exc.strerror}") from None


def _prepare_sqlite_file(path: Path, *, create_parent: bool, dry_run: bool = False) -> None:
    """Create the database file (0600) and, for the default location, its folder (0700).
    Never through a symbolic link, never in a folder others can write to. A dry run only
    checks that it could."""
    if os.path.lexists(path):
        check_sqlite_file(path)  # (a dangling symbolic link is refused here)
        return
    parent = path.absolute().parent
    if not parent.is_dir():
        if not create_parent:
            raise DatabaseUnavailable(
                f"cannot create database {path}: folder {parent} does not exist"
            )
        if dry_run:
            return
        try:
            # Every missing folder 0700, as XDG asks (mkdir(parents=True) would make the
            # intermediate ones with the umask's mode, e.g. world-writable under umask 0).
            for folder in reversed([parent, *parent.parents]):
                if not folder.is_dir():
                    folder.mkdir(mode=0o700)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create folder {parent}: {exc.strerror}") from None
    if hasattr(os, "geteuid"):
        _check_folder(parent, path)
    if dry_run:
        return
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except FileExistsError:  # another process just created it
        check_sqlite_file(path)
        return
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create database {path}: {exc.strerror}") from None
    os.close(fd)


def _sqlite_uri(path: Path) -> str:
    """A URI that opens `path` read-write but never creates it (mode=rw)."""
    from urllib.parse import quote

    return "file://" + quote(os.path.abspath(path)) + "?mode=rw"


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _install_sqlite_hooks(engine: Engine, path: Path | None) -> None:
    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _on_do_connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: Any) -> None:
            # Every open of the file: refuse one others could change, and never let SQLite
            # create it (only `db upgrade` and the default location do, explicitly).
            check_sqlite_file(path)
            cargs[0] = _sqlite_uri(path)
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, explicitly
        # SQLite's lower() folds ASCII only; make `list --search ÉLODIE` find "Élodie" as
        # PostgreSQL and MariaDB do.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # VACUUM and checkpoints must run outside a transaction
        if options.get(_READ_ONLY):
            # A deferred BEGIN takes no lock, so it cannot fail busy: straight to the driver,
            # without the statement machinery (a sixth of a server's read otherwise). Should
            # it fail all the same, it is repeated through SQLAlchemy, whose error (wrapped,
            # as translate_errors expects) is the one raised.
            try:
                connection.connection.driver_connection.execute("BEGIN")
            except Exception:  # noqa: BLE001 - the driver's own error types
                connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


_ENGINES = ("sqlite", "postgresql", "mysql", "mariadb")


def _looks_like_path(text: str) -> bool:
    return "://" not in text and (
        text.startswith(("/", "~", "./", "../")) or text.endswith((".db", ".sqlite", ".sqlite3"))
    )


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    text = settings.database_url
    if _looks_like_path(text):
        raise UsageError(f"database URL {text!r} is a file path, not a URL: use sqlite:///{text}")
    try:
        url = make_url(text)
        url.port  # noqa: B018 - a non-numeric port raises here, not when connecting
        url = url.set(drivername=_DEFAULT_DRIVERS.get(url.drivername, url.drivername))
    except (ArgumentError, ValueError):
        raise UsageError(
            f"invalid database URL {display_url(text)!r}: "
            "expected e.g. sqlite:////path/users.db or postgresql+psycopg://user@host/db"
        ) from None
    backend = url.get_backend_name()
    if backend not in _ENGINES:
        raise UsageError(
            f"unsupported database engine {backend!r} in {display_url(text)!r}: usersctl "
            "supports sqlite, postgresql, mysql and mariadb"
        )
    if url.host and "@" in url.host:
        raise UsageError(
            f"database URL {display_url(text)!r}: its password contains an @; write it "
            "percent-encoded, as %40"
        )
    if backend == "sqlite" and url.host:
        raise UsageError(
            f"invalid SQLite URL {display_url(text)!r}: a file takes three slashes, "
            f"sqlite:///{url.host}{'/' + url.database if url.database else ''} (relative to "
            "the current folder), or four for an absolute path (sqlite:////srv/users.db)"
        )
    connect_args: dict[str, Any] = {}
    path = _sqlite_path(url) if backend == "sqlite" else None
    if backend == "sqlite":
        connect_args["timeout"] = settings.busy_timeout
    elif backend == "postgresql":
        connect_args["connect_timeout"] = max(1, int(settings.busy_timeout))
    elif backend in ("mysql", "mariadb"):
        connect_args["connect_timeout"] = max(1, int(settings.busy_timeout))
        connect_args["charset"] = "utf8mb4"
    pooling: dict[str, Any] = {}
    if pool_size is not None and (backend != "sqlite" or path is not None):
        # A server keeps this many connections open (QueuePool's default of 5 closes and
        # reopens one per request past the fifth concurrent one: on SQLite, a third of a
        # request's time went into opening the file and its pragmas).
        # Waiting for a free connection is bounded like waiting for a lock: the busy timeout.
        pooling = {
            "pool_size": pool_size,
            "max_overflow": SERVER_POOL_OVERFLOW,
            "pool_timeout": settings.busy_timeout,
        }
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SAWarning)
            engine = create_engine(url, hide_parameters=True, connect_args=connect_args, **pooling)
        for warning in caught:  # an ignored argument (sqlite ?mode=ro without uri=true)
            if issubclass(warning.category, SAWarning) and "ignored" in str(warning.message):
                engine.dispose()
                reason = str(warning.message).split(" (Background")[0]
                raise UsageError(
                    f"database URL {display_url(text)!r}: {reason[:1].lower()}{reason[1:]}"
                )
    except NoSuchModuleError:
        raise UsageError(f"unsupported database URL scheme {url.drivername!r}") from None
    except ImportError as exc:
        extra = _DRIVER_EXTRAS.get(backend)
        hint = ""
        if extra and url.drivername in _DEFAULT_DRIVERS.values():
            hint = f": pip install 'usersctl[{extra}]'"
        elif extra:
            hint = f"; use {_DEFAULT_DRIVERS[backend]}:// (pip install 'usersctl[{extra}]')"
        raise DatabaseUnavailable(
            f"database driver for {url.drivername} is not installed ({exc.name}){hint}"
        ) from None
    if backend == "sqlite":
        _install_sqlite_hooks(engine, path)
    return engine


# Errors that say the tables differ from what the recorded revision promises (a table or
# column missing or already there): PostgreSQL SQLSTATEs, MariaDB error numbers, SQLite text.
_SCHEMA_SQLSTATES = {"42P01", "42P07", "42703", "42701", "42704", "42P06"}
_SCHEMA_MYSQL_ERRORS = {1050, 1051, 1054, 1060, 1061, 1091, 1146}
_SCHEMA_SQLITE_TEXT = ("already exists", "no such table", "no such column", "duplicate column")


def _raise_if_schema_error(exc: DBAPIError) -> None:
    """A schema problem is exit 8 (schema mismatch), never 7 (database unavailable)."""
    orig = exc.orig
    raw = str(orig) if orig is not None else str(exc)
    sqlstate = getattr(orig, "sqlstate", None)
    code = orig.args[0] if orig is not None and orig.args else None
    if not (
        sqlstate in _SCHEMA_SQLSTATES
        or (isinstance(code, int) and code in _SCHEMA_MYSQL_ERRORS)
        or (type(orig).__module__ == "sqlite3" and any(t in raw for t in _SCHEMA_SQLITE_TEXT))
    ):
        return
    first_line = raw.strip().splitlines()[0] if raw.strip() else type(orig).__name__
    raise SchemaMismatch(
        f"the database's tables do not match its recorded schema revision ({first_line}); "
        "see `usersctl db current` and `usersctl db check`"
    ) from None


def _sqlite_temp_folder() -> str:
    """Where SQLite writes its temporary files (statement journals, sorts) on Unix: the
    first of these that is a writable folder (os_unix.c, unixTempFileDir)."""
    for folder in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp",
                   "/usr/tmp", "/tmp"):  # fmt: skip
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return "."


def _is_lock_timeout(exc: DBAPIError) -> bool:
    """PostgreSQL's lock_timeout (SQLSTATE 55P03) or MariaDB's lock wait timeout (1205)."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "55P03":
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] == 1205


def describe_db_error(exc: DBAPIError, engine: Engine, busy_timeout: float) -> str:
    """Turn a driver error into one line an admin can act on (never with a password)."""
    url = engine.url
    where = display_url(url)
    raw = str(exc.orig) if exc.orig is not None else str(exc)
    text = raw.lower()
    if url.get_backend_name() == "sqlite":
        where = str(_sqlite_path(url) or url.database or where)
        if "locked" in text or "busy" in text:
            return (
                f"database busy: {where} stayed locked by another process for the whole "
                f"busy timeout ({busy_timeout:g}s); retry later or raise USERSCTL_BUSY_TIMEOUT"
            )
        if "file is not a database" in text or "malformed" in text:
            return f"{where} is not a usable SQLite database ({raw})"
        if "readonly" in text or "read-only" in text:
            return f"database {where} is read-only (check file and folder permissions)"
        if "unable to open" in text:
            path = _sqlite_path(url)
            folder = path.parent if path is not None else None
            if path is not None and folder is not None and path.exists():
                if not os.access(folder, os.W_OK):
                    return (
                        f"cannot open database {where}: its folder {folder} is read-only, and "
                        "SQLite must create the -wal and -shm files beside a WAL database "
                        "even to read it (copy the file to a folder you can write to)"
                    )
            return f"cannot open database {where} (check the path and its permissions)"
        if "disk is full" in text:
            return (
                f"cannot write database {where}: {raw} (the disk it is on, or the "
                f"temporary folder {_sqlite_temp_folder()} where SQLite keeps its scratch "
                "files; SQLITE_TMPDIR or TMPDIR chooses another)"
            )
        if "disk i/o" in text:
            return f"cannot write database {where}: {raw}"
    if _is_lock_timeout(exc):  # (PostgreSQL and MariaDB lock rows, not the database)
        return (
            f"database busy: {display_url(url)}: a row stayed locked by another transaction "
            "for the whole lock timeout; retry later or raise USERSCTL_BUSY_TIMEOUT"
        )
    first_line = raw.strip().splitlines()[0] if raw.strip() else type(exc.orig).__name__
    for secret in url_secrets(url):
        first_line = first_line.replace(secret, "***")
    return f"database {where} unavailable: {first_line}"


def insert_many(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (tuples in `columns` order, values already in the driver's form) with
    a statement SQLAlchemy compiled once: one driver executemany, or on SQLite multi-row
    VALUES (see _insert_values).

    The bulk paths' fast lane: Core's executemany processes every parameter of every row in
    Python, which costs an import of 100,000 users about a second."""
    if not rows:
        return
    dialect = connection.dialect
    statement, order = _compiled_insert(dialect, table, tuple(columns))
    params: Sequence[Any] = rows
    if not dialect.positional:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
    elif order != tuple(range(len(columns))):  # (give columns in table order to skip this)
        params = [tuple(row[i] for i in order) for row in rows]
    if dialect.name == "sqlite":
        _insert_values(connection, statement, len(columns), params)
    else:
        connection.exec_driver_sql(statement, params)


@functools.lru_cache(maxsize=16)
def _compiled_insert(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[str, tuple[int, ...]]:
    """The INSERT's SQL, and for a positional driver the order its parameters take (as
    indexes into `columns`). Compiled once: an import inserts twice a batch."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    order = tuple(columns.index(name) for name in compiled.positiontup or ())
    return compiled.string, order


def _insert_values(
    connection: Connection, statement: str, width: int, rows: Sequence[Sequence[Any]]
) -> None:
    """SQLite: the rows as multi-row VALUES, up to SQLite's limits of parameters and of
    length a statement (2,978 users), the way SQLAlchemy's "insertmanyvalues" batches an
    INSERT: the one VALUES group of the statement it compiled, repeated. SQLite then
    inserts them in one step instead of one step a row: about 30% faster than
    executemany."""
    import sqlite3

    head, marker, group = statement.rpartition(" VALUES ")
    if not marker or not group.startswith("(") or not group.endswith(")"):
        raise RuntimeError(f"unexpected INSERT statement: {statement}")
    driver = connection.connection.driver_connection
    parameters = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[union-attr]
    length = driver.getlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH)  # type: ignore[union-attr]
    per_statement = max(1, min(parameters // width, (length - len(head) - 8) // (len(group) + 2)))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        sql = f"{head} VALUES {', '.join([group] * len(chunk))}"
        connection.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))


def driver_value(dialect: Dialect, column_type: TypeEngine[Any], value: Any) -> Any:
    """`value` as the driver takes it for a column of `column_type` (for insert_many)."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


class Database:
    """The engine plus error translation: every driver failure becomes a UsersctlError."""

    def __init__(
        self, settings: Settings, *, pool_size: int | None = None, require_head: bool = False
    ) -> None:
        """`require_head`: every transaction first checks that the schema is still at head
        (a server's; a command checks once, at its start)."""
        self.settings = settings
        self.engine = make_engine(settings, pool_size=pool_size)
        self.require_head = require_head
        self._head_seen = -HEAD_RECHECK_SECONDS  # when a check last found head
        # Made once: execution_options() builds a new engine proxy on every call, and a
        # server opens a read session on every request.
        self._read_engine = self.engine.execution_options(**{_READ_ONLY: True})

    @property
    def display_url(self) -> str:
        return display_url(self.engine.url)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.url.get_backend_name() == "sqlite"

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise Conflict("conflict: a unique value (email) is already taken") from None
        except StaleDataError:
            raise NotFound("user not found: another process deleted it meanwhile") from None
        except PoolTimeout:  # a server with every pooled connection in use
            raise DatabaseBusy(
                f"database busy: no free connection within {self.settings.busy_timeout:g} s "
                "(every connection of this server process is in use); retry, or raise "
                "USERSCTL_BUSY_TIMEOUT"
            ) from None
        except (ProgrammingError, DataError, NotSupportedError, InternalError) as exc:
            _raise_if_schema_error(exc)
            if isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig):
                # PostgreSQL's text holds no NUL: a value asked for (a search, a login name
                # from a form) that no row can hold. (SQLite and MariaDB just find nothing.)
                raise InvalidData(rules.NUL_IN_TEXT) from None
            raise  # a bug in usersctl, not the database's state: exit 1 with --debug detail
        except DBAPIError as exc:  # OperationalError, DatabaseError, InterfaceError
            _raise_if_schema_error(exc)
            message = describe_db_error(exc, self.engine, self.settings.busy_timeout)
            busy = message.startswith("database busy")
            raise (DatabaseBusy if busy else DatabaseUnavailable)(message) from None

    def use_wal(self) -> None:
        """Switch a SQLite database usersctl owns to WAL (persistent; done once). Never done
        before the schema check, so a database usersctl refuses is left exactly as it was."""
        if not self.is_sqlite or self.sqlite_path is None:
            return
        with self.translate_errors(), self.engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            if autocommit.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal":
                return
            try:
                autocommit.exec_driver_sql("PRAGMA journal_mode=WAL")
            except OperationalError:
                # Busy (the switch needs every other process out) or read-only: the
                # rollback journal is just as safe, and a later command switches.
                pass

    @property
    def sqlite_path(self) -> Path | None:
        return _sqlite_path(self.engine.url) if self.is_sqlite else None

    @property
    def missing(self) -> bool:
        """A SQLite database whose file does not exist (yet)."""
        path = self.sqlite_path
        return path is not None and not os.path.lexists(path)

    def create_file(self, *, dry_run: bool = False) -> None:
        """Create a missing SQLite file (0600; its folders 0700 at the default location).
        Only `db upgrade` and first use of the default location do. A dry run only checks
        that it could."""
        path = self.sqlite_path
        if path is not None:
            _prepare_sqlite_file(path, create_parent=self.settings.url_is_default, dry_run=dry_run)

    def check_writable(self) -> None:
        """Before a write to a SQLite file: fail (exit 7) without touching anything when the
        file or its folder cannot be written or the disk is full. SQLite would find out
        only after opening the file, leaving -wal/-shm files behind."""
        path = self.sqlite_path
        if path is None or not path.exists():
            return
        folder = path.parent
        if not os.access(path, os.W_OK):
            raise DatabaseUnavailable(f"database {path} is read-only (check its permissions)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DatabaseUnavailable(
                f"database {path} cannot be written: its folder {folder} is read-only"
            )
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < _MIN_FREE_BYTES:
            raise DatabaseUnavailable(f"cannot write database {path}: the disk is full")

    def _bind(self, *, write: bool) -> Engine:
        return self.engine if write else self._read_engine

    @contextmanager
    def connect(self, *, write: bool) -> Iterator[Connection]:
        """A connection in one transaction (a read one takes no SQLite write lock)."""
        with self.translate_errors(), self._bind(write=write).connect() as connection:
            with connection.begin():
                self._check_head(connection, write=write)
                yield connection

    @contextmanager
    def session(self, *, write: bool, dry_run: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, else rolled back.
        A dry run is always rolled back: its changes are made, checked, and undone."""
        bind = self._bind(write=write)
        with self.translate_errors(), Session(bind, expire_on_commit=False) as session:
            transaction = session.begin()
            try:
                self._check_head(session.connection(), write=write)
                yield session
            except BaseException:
                transaction.rollback()
                raise
            if dry_run:
                transaction.rollback()
            else:
                transaction.commit()

    @contextmanager
    def quick_session(self, *, wait: float | None = None) -> Iterator[Session]:
        """A write transaction that waits for another writer's lock at most `wait` seconds
        (None: about 0.1 s, for best-effort work such as a login's record) on every
        engine: SQLite's busy timeout, PostgreSQL's lock_timeout and MariaDB's lock wait
        timeouts (whole seconds, at least 1), set on a connection that is discarded
        afterwards. (A plain session() waits that long only on SQLite: PostgreSQL and
        MariaDB wait for a row lock as long as it is held.) Fails like session(); a lock
        not had in time is DatabaseBusy."""
        backend = self.engine.url.get_backend_name()
        wait_ms = QUICK_LOCK_WAIT_MS if wait is None else max(1, int(wait * 1000))
        with self.translate_errors(), self.engine.connect() as connection:
            try:
                if backend == "sqlite":
                    connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                        f"PRAGMA busy_timeout = {wait_ms}"
                    )
                elif backend in ("mysql", "mariadb"):
                    seconds = max(1, -(-wait_ms // 1000))
                    connection.exec_driver_sql(
                        f"SET SESSION innodb_lock_wait_timeout = {seconds}, "
                        f"lock_wait_timeout = {seconds}"
                    )
                    connection.commit()
                with Session(connection, expire_on_commit=False) as session, session.begin():
                    if backend == "postgresql":
                        session.connection().exec_driver_sql(
                            f"SET LOCAL lock_timeout = '{wait_ms}ms'"
                        )
                    self._check_head(session.connection(), write=True)
                    yield session
            finally:
                connection.invalidate()  # its shortened timeouts never serve another command

    def _check_head(self, connection: Connection, *, write: bool) -> None:
        """Every write transaction checks; a read trusts a check that found head less than
        a second ago (GET /users/{id} is a server's hottest path), and none once one did
        not."""
        if not self.require_head:
            return
        moment = time.monotonic()
        if not write and moment - self._head_seen < HEAD_RECHECK_SECONDS:
            return
        from usersctl.revision import require_head

        try:
            require_head(connection)
        except BaseException:
            self._head_seen = -HEAD_RECHECK_SECONDS  # every request checks until it is back
            raise
        self._head_seen = moment

    def empty_stand_in(self, *, schema: bool = True) -> Database:
        """An in-memory database at head with no users, for dry runs against a database
        that has no schema yet (which a real run would first create, empty). Without
        `schema`, one with no tables at all (for `db upgrade --dry-run`)."""
        from dataclasses import replace

        from usersctl.models import Base

        stand_in = Database(replace(self.settings, database_url="sqlite://"))
        if schema:
            with stand_in.engine.begin() as connection:
                Base.metadata.create_all(connection)
        return stand_in

    def dispose(self) -> None:
        self.engine.dispose()
