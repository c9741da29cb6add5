"""Alembic environment.

Called from usersctl (usersctl/migrations.py), it receives the live connection in
`config.attributes["connection"]` and leaves logging alone. Run as plain `alembic` from the
repository root, it configures logging from alembic.ini and connects with the same settings
usersctl would use (USERSCTL_DATABASE_URL, the config file, or the default SQLite file).
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


if context.is_offline_mode():
    raise SystemExit("usersctl migrations run online only (the data migrations need a database)")

_connection = config.attributes.get("connection")
if _connection is not None:
    run_migrations(_connection)
else:
    run_standalone()
