"""Engine and sessions. SQLite's pragmas, locking and file permissions live here.

SQLite is opened with WAL, foreign keys, secure_delete (deleted rows are overwritten, so
neither a removed user nor an old plaintext password lingers in free pages), synchronous
FULL (durable commits) and a busy timeout. Write transactions begin IMMEDIATE so that two
writers queue on the lock instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import os
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
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.types import TypeEngine

from usersctl.config import Settings
from usersctl.errors import Conflict, DatabaseUnavailable, NotFound, UsageError

_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_READ_ONLY = "usersctl_read_only"
_MIN_FREE_BYTES = 64 * 1024
QUICK_LOCK_WAIT_MS = 100  # how long best-effort writes wait for a lock (quick_session)


def display_url(url: URL | str) -> str:
    """The URL with its password masked, for every message that names a database."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    if "password" in parsed.query:  # e.g. postgresql+psycopg://u@h/db?password=...
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


# The drivers the extras install, for URLs that name only the engine (SQLAlchemy would
# otherwise pick psycopg2 / mysqlclient, which usersctl does not ship).
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def _sqlite_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _prepare_sqlite_file(path: Path, *, create_parent: bool) -> None:
    """Create the database file (0600) and, for the default location, its folder (0700)."""
    if path.exists():
        return
    parent = path.parent
    if not parent.is_dir():
        if not create_parent:
            raise DatabaseUnavailable(
                f"cannot create database {path}: folder {parent} does not exist"
            )
        try:
            # Every missing folder 0700, as XDG asks (mkdir(parents=True) would make the
            # intermediate ones with the umask's mode, e.g. world-writable under umask 0).
            for folder in reversed([parent, *parent.parents]):
                if not folder.is_dir():
                    folder.mkdir(mode=0o700)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create folder {parent}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create database {path}: {exc.strerror}") from None
    os.close(fd)


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _install_sqlite_hooks(engine: Engine) -> None:
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
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(settings: Settings) -> Engine:
    try:
        url = make_url(settings.database_url)
        url.port  # noqa: B018 - a non-numeric port raises here, not when connecting
        url = url.set(drivername=_DEFAULT_DRIVERS.get(url.drivername, url.drivername))
    except (ArgumentError, ValueError):
        raise UsageError(
            f"invalid database URL {display_url(settings.database_url)!r}: "
            "expected e.g. sqlite:////path/users.db or postgresql+psycopg://user@host/db"
        ) from None
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            _prepare_sqlite_file(path, create_parent=settings.url_is_default)
        connect_args["timeout"] = settings.busy_timeout
    elif backend == "postgresql":
        connect_args["connect_timeout"] = max(1, int(settings.busy_timeout))
    elif backend in ("mysql", "mariadb"):
        connect_args["connect_timeout"] = max(1, int(settings.busy_timeout))
        connect_args["charset"] = "utf8mb4"
    try:
        engine = create_engine(url, hide_parameters=True, connect_args=connect_args)
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
        _install_sqlite_hooks(engine)
    return engine


def describe_db_error(exc: DBAPIError, engine: Engine, busy_timeout: float) -> str:
    """Turn a driver error into one line an admin can act on (never with a password)."""
    url = engine.url
    where = display_url(url)
    raw = str(exc.orig) if exc.orig is not None else str(exc)
    text = raw.lower()
    if url.get_backend_name() == "sqlite":
        where = url.database or where
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
            return f"cannot open database {where} (check the path and its permissions)"
        if "disk is full" in text or "disk i/o" in text:
            return f"cannot write database {where}: {raw}"
    first_line = raw.strip().splitlines()[0] if raw.strip() else type(exc.orig).__name__
    for secret in (url.password, url.query.get("password")):
        if secret and isinstance(secret, str):
            first_line = first_line.replace(secret, "***")
    return f"database {where} unavailable: {first_line}"


def insert_many(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (tuples in `columns` order, values already in the driver's form) with
    one driver executemany of a statement SQLAlchemy compiled once.

    The bulk paths' fast lane: Core's executemany processes every parameter of every row in
    Python, which costs an import of 100,000 users about a second."""
    if not rows:
        return
    dialect = connection.dialect
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    params: Sequence[Any] = rows
    if dialect.positional:
        order = [list(columns).index(name) for name in compiled.positiontup or ()]
        if order != list(range(len(columns))):  # (give columns in table order to skip this)
            params = [tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
    connection.exec_driver_sql(compiled.string, params)


def driver_value(dialect: Dialect, column_type: TypeEngine[Any], value: Any) -> Any:
    """`value` as the driver takes it for a column of `column_type` (for insert_many)."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


class Database:
    """The engine plus error translation: every driver failure becomes a UsersctlError."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)

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
        except (ProgrammingError, DataError, NotSupportedError, InternalError):
            raise  # a bug in usersctl, not the database's state: exit 1 with --debug detail
        except DBAPIError as exc:  # OperationalError, DatabaseError, InterfaceError
            raise DatabaseUnavailable(
                describe_db_error(exc, self.engine, self.settings.busy_timeout)
            ) from None

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
        return self.engine if write else self.engine.execution_options(**{_READ_ONLY: True})

    @contextmanager
    def connect(self, *, write: bool) -> Iterator[Connection]:
        """A connection in one transaction (a read one takes no SQLite write lock)."""
        with self.translate_errors(), self._bind(write=write).connect() as connection:
            with connection.begin():
                yield connection

    @contextmanager
    def session(self, *, write: bool, dry_run: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, else rolled back.
        A dry run is always rolled back: its changes are made, checked, and undone."""
        bind = self._bind(write=write)
        with self.translate_errors(), Session(bind, expire_on_commit=False) as session:
            transaction = session.begin()
            try:
                yield session
            except BaseException:
                transaction.rollback()
                raise
            if dry_run:
                transaction.rollback()
            else:
                transaction.commit()

    @contextmanager
    def quick_session(self) -> Iterator[Session]:
        """A write transaction for best-effort work (a login's hash upgrade): it gives up
        within about a second instead of waiting the busy timeout for another writer's lock
        (SQLite's busy timeout, PostgreSQL's lock_timeout and MariaDB's lock wait timeouts,
        set on a connection that is discarded afterwards). Fails like session()."""
        backend = self.engine.url.get_backend_name()
        with self.translate_errors(), self.engine.connect() as connection:
            try:
                if backend == "sqlite":
                    connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                        f"PRAGMA busy_timeout = {QUICK_LOCK_WAIT_MS}"
                    )
                elif backend in ("mysql", "mariadb"):
                    connection.exec_driver_sql(
                        "SET SESSION innodb_lock_wait_timeout = 1, lock_wait_timeout = 1"
                    )
                    connection.commit()
                with Session(connection, expire_on_commit=False) as session, session.begin():
                    if backend == "postgresql":
                        session.connection().exec_driver_sql(
                            f"SET LOCAL lock_timeout = '{QUICK_LOCK_WAIT_MS}ms'"
                        )
                    yield session
            finally:
                connection.invalidate()  # its shortened timeouts never serve another command

    def empty_stand_in(self) -> Database:
        """An in-memory database at head with no users, for dry runs against a database
        that has no schema yet (which a real run would first create, empty)."""
        from dataclasses import replace

        from usersctl.models import Base

        stand_in = Database(replace(self.settings, database_url="sqlite://"))
        with stand_in.engine.begin() as connection:
            Base.metadata.create_all(connection)
        return stand_in

    def dispose(self) -> None:
        self.engine.dispose()
