"""The Typer application. Parsing, rendering and exit codes only: no SQL here."""

from usersctl.cli import db, users
from usersctl.cli.app import app, main

users.register(app)
app.command(name="migrate")(db.migrate)
app.add_typer(db.db_app)

__all__ = ["app", "main"]
