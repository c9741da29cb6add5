"""Alembic environment.

Called from usersctl (usersctl/migrations.py), it receives the live connection in
`config.attributes["connection"]` and leaves logging alone. For a dry run on MariaDB (whose
DDL cannot be rolled back) usersctl asks for offline mode: the SQL is rendered, not run, and
the migrations read what they must check through that same live connection.

Run as plain `alembic` from the repository root, it configures logging from alembic.ini
and connects with the same settings usersctl would use (USERSCTL_DATABASE_URL, the config
file, or the default SQLite file).
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from usersctl.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs table copies for ALTER
        compare_type=True,
        on_version_apply=config.attributes.get("on_version_apply") or (),
    )
    with context.begin_transaction():
        context.run_migrations()


def render_sql(connection: Connection) -> None:
    """Offline mode: write the SQL to config.output_buffer instead of running it."""
    context.configure(
        dialect_name=connection.dialect.name,
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
        output_buffer=config.output_buffer,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_standalone() -> None:
    from usersctl.config import load_settings
    from usersctl.database import Database

    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    database = Database(load_settings())
    with database.engine.begin() as connection:
        run_migrations(connection)


_connection = config.attributes.get("connection")
if context.is_offline_mode():
    if _connection is None:
        raise SystemExit(
            "plain `alembic --sql` is not supported: use `usersctl db upgrade --dry-run`"
        )
    render_sql(_connection)
elif _connection is not None:
    run_migrations(_connection)
else:
    run_standalone()
