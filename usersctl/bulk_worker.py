"""An import's input read and validated in a forked child process, while this process plans
and writes the rows the child has already sent: on two cores the two halves of an import
run side by side instead of one after the other (README, "Performance").

The child runs exactly what this process would (the `produce` it is given: bulk.validate
over read_records, then bulk_job.unique) and sends each batch through a pipe, with the
counters that the progress line and the summary read; `validated_batches` yields the same
batches, and keeps the same counters and bad rows, as running the validation here would.
Memory stays flat: the pipe holds two or three batches, and the child waits while this
process writes. The child never touches the database, and ends with os._exit (nothing of
this process's is flushed or closed twice).

Without os.fork (Windows), or for an input under FORK_MIN_BYTES, validation runs here.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from typing import Any, BinaryIO

from usersctl.bulk import CountingReader, ReadCounts, Validated
from usersctl.errors import UsersctlError

Batches = Generator[list[tuple[int, Any]], None, None]

FORK_MIN_BYTES = 1 << 20
"""Inputs smaller than this (about 5,000 rows) are validated in this process: the child's
start would cost more than it saves. Standard input, whose size is unknown, forks."""

_ROWS, _END, _ERROR, _CRASH = "rows", "end", "error", "crash"
_PIPE_BYTES = 1 << 20  # room for two or three batches (Linux's default is 64 KiB)
_PR_SET_PDEATHSIG = 1  # prctl(2)
_dump = pickle.dump  # (what the child sends with; tests replace it)


@contextmanager
def validated_batches(
    produce: Callable[[], Batches],
    seen: Validated,
    counting: CountingReader,
    counts: ReadCounts,
) -> Iterator[Batches]:
    """The batches `produce()` yields, validated in a child process when that helps. Enter it
    before any thread starts (the progress line's): a fork copies only the forking thread."""
    with _few_collections():
        small = counting.size is not None and counting.size < FORK_MIN_BYTES
        receiver = (
            None if small or not hasattr(os, "fork") else _fork(produce, seen, counting, counts)
        )
        if receiver is None:  # (also when the fork failed: out of processes or memory)
            with closing(produce()) as batches:  # (a failed run closes its scratch index)
                yield batches
            return
        with closing(receiver):
            yield receiver.batches()


@contextmanager
def _few_collections() -> Iterator[None]:
    """An import makes millions of short-lived objects that reference counting frees at
    once; Python's cycle collector, by default run every 700 new objects, spent a tenth of
    an import looking among them for cycles that are not there. Run it rarely meanwhile.
    (What is already alive is frozen too: a forked child then shares its pages instead of
    copying the ones a collection would touch.)"""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _fork(
    produce: Callable[[], Batches],
    seen: Validated,
    counting: CountingReader,
    counts: ReadCounts,
) -> _Receiver | None:
    """The child started, and what receives from it; None if it could not be."""
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of file descriptors: validate here
        return None
    _widen(write_end)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: validate, send, and leave without running this process's exits
        code = 1
        try:
            _die_with(parent)
            os.close(read_end)
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                # Die quietly with the command's job, not by its handlers; but a signal the
                # command ignores (nohup, a script's `&`) the child ignores too.
                number = getattr(signal, name, None)
                if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
                    signal.signal(number, signal.SIG_DFL)
            with open(write_end, "wb") as pipe:
                _send_all(produce, seen, counting, counts, pipe)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return _Receiver(pid, read_end, seen, counting, counts)


def _die_with(parent: int) -> None:
    """The child ends when its parent does, however that ends (SIGKILL too), also while it
    waits for standard input (Linux; elsewhere its next write to the pipe fails)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent:  # it had already ended
        os._exit(1)


def _widen(pipe: int) -> None:
    """Room in the pipe for a whole batch (Linux: 64 KiB by default, a batch is ~400 KiB):
    the child then validates the next batch while this process still reads the last."""
    try:
        import fcntl

        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or above the system's limit
        pass


def _send_all(
    produce: Callable[[], Batches],
    seen: Validated,
    counting: CountingReader,
    counts: ReadCounts,
    pipe: BinaryIO,
) -> None:
    """In the child: every batch, then how the input ended (its end, a UsersctlError to
    raise, or a bug's traceback), each with the counters so far."""
    reported = [0, 0]  # messages of bad rows and of duplicates sent so far

    def send(kind: str, payload: Any) -> None:
        news = []
        for index, problems in enumerate((seen.bad, seen.duplicates)):
            news.append((problems.count, problems.messages[reported[index] :]))
            reported[index] = len(problems.messages)
        state = (
            seen.read, seen.valid, news, seen.passwords_missing, counting.consumed,
            counts.blank_rows,
        )  # fmt: skip
        _dump((kind, payload, state), pipe, pickle.HIGHEST_PROTOCOL)

    try:
        for batch in produce():  # (a row's columns pickle faster than the row object)
            send(_ROWS, [(line, row.__dict__) for line, row in batch])
        send(_END, None)
    except BrokenPipeError:
        return  # the parent stopped reading: it has failed or been interrupted
    except UsersctlError as exc:
        send(_ERROR, (type(exc), exc.message, exc.details))
    except BaseException:  # noqa: BLE001 - a bug: the parent reports it (--debug shows where)
        send(_CRASH, traceback.format_exc())
    pipe.flush()


class _Receiver:
    """In this process: the child's batches, its counters copied into `seen`, `counting` and
    `counts`, and the child stopped and reaped at the end."""

    def __init__(
        self,
        pid: int,
        read_end: int,
        seen: Validated,
        counting: CountingReader,
        counts: ReadCounts,
    ) -> None:
        self.pid = pid
        self.pipe = open(read_end, "rb")  # noqa: SIM115 - closed by close()
        self.seen, self.counting, self.counts = seen, counting, counts
        self.finished = False  # the child sent its last message
        self.status: int | None = None  # its wait status, once reaped

    def batches(self) -> Batches:
        from usersctl.schemas import UserImport

        of = UserImport.of
        while True:
            try:
                kind, payload, state = pickle.load(self.pipe)
            except (EOFError, pickle.UnpicklingError):  # killed (out of memory...), maybe
                self.finished = True  # in the middle of a message
                raise UsersctlError(
                    f"the process validating the input ended unexpectedly ({self._reap()}); "
                    "the database is unchanged"
                ) from None
            self._update(state)
            if kind == _ROWS:
                yield [(line, of(fields)) for line, fields in payload]
                continue
            self.finished = True
            self._reap()  # (its last message: it is ending; before anything is committed)
            if kind == _END:
                return
            if kind == _ERROR:
                error_type, message, details = payload
                raise error_type(message, details)
            # A bug in validation: its last line first (what a report shows), then where.
            raise RuntimeError(
                f"{payload.strip().splitlines()[-1]}\n(in the child process) {payload}"
            )

    def _update(self, state: tuple[Any, ...]) -> None:
        """The child's counters and new problems, copied here."""
        seen = self.seen
        seen.read, seen.valid, news, seen.passwords_missing, consumed, blank_rows = state
        for problems, (count, messages) in zip((seen.bad, seen.duplicates), news, strict=True):
            problems.count = count
            problems.messages.extend(messages)
        self.counting.consumed = consumed
        self.counts.blank_rows = blank_rows

    def _reap(self) -> str:
        """Wait for the child to end; how it ended, in words."""
        if self.status is None:
            try:
                self.status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:  # SIGCHLD ignored: the kernel reaped it already
                self.status = -1
        if self.status == -1:
            return "its exit status is unknown"
        if os.WIFSIGNALED(self.status):
            number = os.WTERMSIG(self.status)
            try:
                return f"killed by {signal.Signals(number).name}"
            except ValueError:  # a real-time signal, which has no name
                return f"killed by signal {number}"
        return f"exit status {os.waitstatus_to_exitcode(self.status)}"

    def close(self) -> None:
        """Stop a child still running (this process failed or was interrupted) and reap it."""
        self.pipe.close()
        if not self.finished and self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - it had just ended
                pass
        self._reap()
