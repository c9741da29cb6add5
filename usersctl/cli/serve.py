"""`usersctl serve`: the HTTP API (extra `usersctl[server]`), loopback only by default."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from usersctl.cli.state import get_state
from usersctl.cli.text import say
from usersctl.errors import DatabaseUnavailable, UsageError

EXTRA_HINT = "pip install 'usersctl[server]'"
LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_extra(*, scim: bool = False) -> None:
    import importlib.util

    needed = ("fastapi", "uvicorn", "jwt", "multipart") + (("scim2_models",) if scim else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise DatabaseUnavailable(
            f"the HTTP server needs the 'server' extra ({', '.join(missing)} missing): {EXTRA_HINT}"
        )


def _within(low: int, high: int, what: str) -> Callable[[int], int]:
    """A range check whose help shows the metavar, not Click's `0<=x<=65535` notation."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise typer.BadParameter(f"{value} is not {what} ({low}-{high})")
        return value

    return check


def _raise_open_files_limit() -> None:
    """Each client connection is a file descriptor: the usual soft limit of 1024 is a few
    hundred slow clients from refusing everyone. Raised to the hard limit, which needs no
    privilege (a systemd unit's LimitNOFILE= sets both)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # (a kernel cap below the hard limit: keep what we have)


def _ranged(flag: str, metavar: str, bounds: tuple[int, int, str], help: str) -> Any:  # noqa: A002
    """A whole-number option checked against (low, high, what it is)."""
    return typer.Option(flag, metavar=metavar, callback=_within(*bounds), help=help)


def free_port(host: str, port: int) -> int:
    """`port` if it can be listened on (0: a free one, so that the banner names it), else a
    usage error (exit 2). uvicorn would log the failure and exit 3, "not found" here."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host.strip("[]"), port))
            return int(probe.getsockname()[1])
    except UnicodeError:  # a host name IDNA cannot encode: a..b
        raise UsageError(f"cannot listen on {host}: not a valid host name") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        busy = exc.errno == errno.EADDRINUSE
        hint = "another server? give another --port" if busy else "check --host"
        raise UsageError(f"cannot listen on {host}:{port}: {reason} ({hint})") from None


def _exit_cleanly(_signum: int, _frame: object) -> None:
    sys.exit(0)


def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host", metavar="ADDRESS", help="Address to bind; loopback unless --allow-remote."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        _ranged("--port", "PORT", (0, 65535, "a TCP port"), "TCP port (0-65535)."),
    ] = 8000,
    workers: Annotated[
        int,
        _ranged(
            "--workers",
            "N",
            (1, 64, "a number of worker processes"),
            "Worker processes (1-64).",
        ),
    ] = 1,
    read_threads: Annotated[
        int,
        _ranged(
            "--read-threads",
            "N",
            (1, 256, "a number of threads"),
            "Threads per worker for reads (1-256); more help only when the database "
            "is far away (README: Serving the API).",
        ),
    ] = 2,
    request_timeout: Annotated[
        int,
        _ranged(
            "--request-timeout",
            "SECONDS",
            (1, 3600, "a number of seconds"),
            "Close a connection whose request has not arrived whole this long after it "
            "opened or after the previous response (1-3600; slow or idle clients).",
        ),
    ] = 30,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host (put a TLS proxy in front: README).",
        ),
    ] = False,
    token_minutes: Annotated[
        int,
        _ranged(
            "--token-minutes",
            "MINUTES",
            (1, 1440, "a number of minutes"),
            "Lifetime of the login tokens POST /auth/token issues (1-1440).",
        ),
    ] = 15,
    scim: Annotated[
        bool,
        typer.Option(
            "--scim",
            help="Also serve SCIM 2.0 at /scim/v2 for an identity provider (tokens with "
            "--scope scim).",
        ),
    ] = False,
    docs: Annotated[
        bool,
        typer.Option(
            "--docs",
            help="Also publish the API's OpenAPI description at /docs and /openapi.json, "
            "without a credential (off: every request but /healthz needs one).",
        ),
    ] = False,
) -> None:
    """Serve the users API over HTTP (needs the extra: pip install 'usersctl[server]').

    Every request except GET /healthz needs `Authorization: Bearer <token>`: an admin
    token from `usersctl token create`, or a login token from POST /auth/token. SIGTERM
    finishes the requests in flight and exits 0.

    \b
    Example:
      usersctl token create deploy --scope write
      usersctl serve --port 8000
    """
    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"refusing to listen on {host}: not a loopback address; put a TLS proxy in front "
            "and give --allow-remote"
        )
    _require_extra(scim=scim)
    port = free_port(host, port)
    state = get_state(ctx)
    database = state.ready_database(write=True)
    from usersctl import tokens

    with database.session(write=True) as session:
        tokens.ensure_signing_key(session=session)
    database.dispose()

    import uvicorn

    from usersctl.api.protocol import DeadlineH11Protocol

    # The worker processes resolve the same settings from the environment.
    os.environ["USERSCTL_DATABASE_URL"] = state.settings.database_url
    os.environ["USERSCTL_ACTOR"] = state.settings.actor
    os.environ["USERSCTL_TOKEN_MINUTES"] = str(token_minutes)
    os.environ["USERSCTL_SCIM"] = "1" if scim else "0"
    os.environ["USERSCTL_DOCS"] = "1" if docs else "0"
    os.environ["USERSCTL_READ_THREADS"] = str(read_threads)
    os.environ["USERSCTL_REQUEST_TIMEOUT"] = str(request_timeout)
    say(
        f"Serving {database.display_url} on http://{host}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''})"
        + ("; docs at /docs" if docs else "")
        + ("; SCIM 2.0 at /scim/v2" if scim else "")
    )
    # Uvicorn finishes the requests in flight, then raises the signal again with the handler
    # that was in place before it started: make that one a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # The CLI lets SIGPIPE end it quietly (`usersctl list | head`); a server must instead
    # survive a client that closes its connection mid-response.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _exit_cleanly)
    # A hangup does to a server what it did before usersctl handled it for commands: it
    # ends it, unless ignored (`nohup usersctl serve`). (uvicorn's --workers parent
    # handles it itself, restarting the workers.)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _raise_open_files_limit()
    uvicorn.run(
        "usersctl.api.app:create_app_from_env",
        http=DeadlineH11Protocol,  # (usersctl.api.protocol: slow clients time out)
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # ours logs no query string (usersctl.api.app.AccessLog)
        log_level="info",
        server_header=False,
        timeout_worker_healthcheck=60,  # a worker busy hashing still answers, only later
    )
