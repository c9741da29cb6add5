"""The Typer application. Parsing, rendering and exit codes only: no SQL here."""

from usersctl.cli import audit, bulk, db, lifecycle, serve, sync, token, users
from usersctl.cli.app import app, main
from usersctl.cli.command import command

users.register(app)
lifecycle.register(app)
command(app, "import")(bulk.import_)
command(app, "export")(bulk.export)
command(app, "sync")(sync.sync)
command(app, "audit")(audit.audit)
command(app, "migrate")(db.migrate)
app.add_typer(db.db_app)
command(app, "serve")(serve.serve)
app.add_typer(token.token_app)

__all__ = ["app", "main"]
