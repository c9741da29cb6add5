"""The Typer application. Parsing, rendering and exit codes only: no SQL here."""

from usersctl.cli import audit, bulk, db, lifecycle, users
from usersctl.cli.app import app, main

users.register(app)
lifecycle.register(app)
app.command(name="import")(bulk.import_)
app.command(name="export")(bulk.export)
app.command(name="audit")(audit.audit)
app.command(name="migrate")(db.migrate)
app.add_typer(db.db_app)

__all__ = ["app", "main"]
