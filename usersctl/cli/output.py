"""Delivering the result, and what it means when that fails.

Writing the output can fail for reasons that are nobody's bug: stdout is closed (`>&-`) or
on a full disk, an export file's disk is full or its folder read-only. That is exit 10 with
one line saying what failed and whether the change was committed (the change of a command
that prints after its commit stays: rerun it with --if-not-exists/--missing-ok, or look the
result up). A generated password is different: it is delivered before its change commits,
and if it cannot be, the change is rolled back (a password nobody received is useless).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from usersctl.errors import OutputFailed

# Errors that mean "this output cannot be written", not a fault of usersctl.
OUTPUT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EIO,
        errno.EPIPE,
        errno.EBADF,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    }
)

_committed: ContextVar[bool] = ContextVar("usersctl_committed", default=False)


def report_broken_pipes() -> None:
    """For a command that changes data: from now on a reader that went away (`usersctl
    enable ... | true`) is an output failure, exit 10 saying whether the change was
    committed, not a silent death by SIGPIPE (which main() keeps for reads, so that
    `usersctl list | head -1` ends quietly)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def note_committed() -> None:
    """Called when this command's change has committed (for the output-failure message)."""
    _committed.set(True)


def start_command() -> None:
    """A new command (CliRunner runs many in one process): nothing committed yet."""
    _committed.set(False)


def is_output_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS


def output_failed(exc: OSError, destination: str | None = None) -> OutputFailed:
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" to {destination}" if destination else ""
    outcome = "; the change was committed" if _committed.get() else ""
    return OutputFailed(f"could not write the output{where} ({reason}){outcome}")


@contextmanager
def writing(destination: str | None = None) -> Iterator[None]:
    """Report a failure to write inside the block as an output failure naming `destination`."""
    try:
        yield
    except OSError as exc:
        if not is_output_error(exc):
            raise
        raise output_failed(exc, destination) from None


def flush_stdout(*, durable: bool = False) -> None:
    """Push what was written to stdout to the file or pipe behind it (with `durable`, a
    regular file also to the disk). Raises OutputFailed when that fails."""
    stream = sys.stdout
    try:
        stream.flush()
        if durable:
            fd = stream.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fsync(fd)
    except io.UnsupportedOperation:
        return  # not backed by a file (a test runner's buffer)
    except OSError as exc:
        raise output_failed(exc) from None


@contextmanager
def delivered_before_commit(what: str = "the generated password") -> Iterator[None]:
    """Around writing a generated password (or API token), inside its change's transaction:
    the output must have left usersctl before the change commits; if it cannot, the change
    is rolled back (the error leaves the caller's transaction)."""
    try:
        yield
        flush_stdout(durable=True)
    except OSError as exc:
        if not is_output_error(exc):
            raise
        failure = output_failed(exc)
    except OutputFailed as exc:
        failure = exc
    else:
        return
    raise OutputFailed(
        f"{failure.message}; nothing changed: {what} could not be "
        "delivered, so the change was rolled back"
    )


def discard_stdout() -> None:
    """After an output failure of the real stdout: send what is still buffered to
    /dev/null, so that the interpreter's own flush at exit does not fail again."""
    if sys.stdout is not sys.__stdout__ or sys.stdout is None:
        return  # a test runner's stream: nothing to do
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError):
        pass


class ClosedStream(io.TextIOBase):
    """sys.stdout when usersctl was started with stdout closed (`>&-`): writing fails."""

    def write(self, _text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def guard_standard_streams() -> None:
    """Started with a standard descriptor closed: hold it with /dev/null so no file usersctl
    opens (the database!) becomes fd 1 or 2, make writes to a closed stdout fail, and
    reads from a closed stdin find it empty."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    if sys.stdout is None:
        sys.stdout = ClosedStream()
    if sys.stdin is None:  # closed: read as empty, as from </dev/null
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the whole process
