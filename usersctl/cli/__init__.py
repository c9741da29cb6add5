"""The Typer application. Parsing, rendering and exit codes only: no SQL here."""

import sys

_python_hook = sys.excepthook


def _interrupted_while_starting(
    kind: type[BaseException], value: BaseException, tb: object
) -> None:
    """A Ctrl-C while Python is still importing usersctl (before main() can catch it)
    prints one line, not a traceback; nothing has been done yet. (Python still ends the
    process by SIGINT, exit 130.)"""
    if issubclass(kind, KeyboardInterrupt):
        off_the_echo = "\n" if sys.stderr.isatty() else ""  # (the terminal echoed ^C)
        sys.stderr.write(f"{off_the_echo}error: interrupted; nothing changed\n")
        return
    _python_hook(kind, value, tb)  # type: ignore[arg-type]


if sys.argv and sys.argv[0].endswith("usersctl"):  # the console script (main() restores it)
    sys.excepthook = _interrupted_while_starting

from usersctl.cli import audit, bulk, db, lifecycle, serve, sync, token, users  # noqa: E402
from usersctl.cli.app import app, main  # noqa: E402
from usersctl.cli.command import command  # noqa: E402

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
