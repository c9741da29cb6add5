"""Progress on stderr for long work, only when stderr is a terminal: a Rich progress bar
(export), and the live line of import and sync (rows read, validated, passwords hashed
with their rate, an ETA once the rate is known)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

ProgressFactory = Callable[[int], Callable[[int], None]]


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressFactory | None]:
    """Yields a factory (total -> advance(n)), or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:

        def factory(total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda steps: progress.advance(task, steps)

        yield factory


def duration(seconds: float) -> str:
    """A rough duration for people: 40 s, 3 min, 2 h 10 min."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class RowProgress:
    """import's and sync's progress line. `seen` (usersctl.bulk.Validated) counts rows read
    and valid, `counting` (bulk.CountingReader) how far through the input the reading is,
    the followed outcome (usersctl.bulk_job.Outcome) the passwords hashed. Off a terminal it
    shows nothing, and `hasher` is plain hash_many."""

    def __init__(self, seen: Any, counting: Any, *, enabled: bool | None = None) -> None:
        self.seen = seen
        self.counting = counting
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.outcome: Any = None
        self.started = time.monotonic()
        self.hashing_time = 0.0  # spent hashing in the batches done
        self.hash_started: float | None = None  # the batch being hashed
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = None

    def __enter__(self) -> RowProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._console = Console(stderr=True)
            # The ETA first and a short bar: at 80 columns the counts are what may be cut.
            self._progress = Progress(
                TextColumn("{task.fields[eta]}", markup=False),
                BarColumn(bar_width=12),
                TextColumn("{task.description}", markup=False),
                console=self._console,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "reading", total=self.counting.size or None, eta=""
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def follow(self, outcome: Any) -> None:
        self.outcome = outcome

    def _hash_rate(self) -> float:
        spent = self.hashing_time
        if self.hash_started is not None:
            spent += time.monotonic() - self.hash_started
        hashed = self.outcome.hashed if self.outcome is not None else 0
        return hashed / spent if spent else 0.0

    def _to_hash(self) -> int:
        """How many passwords the whole input will have hashed: those of the batches so
        far, scaled by how much of the input is still unread."""
        known = int(max(self.outcome.to_hash, self.outcome.hashed)) if self.outcome else 0
        size, done = self.counting.size, self.counting.consumed
        if size and done and done < size:
            return int(known * size / done + 0.5)
        return known

    def text(self) -> tuple[str, str]:
        """(what has been done, the ETA or "") as shown. While passwords are hashed, that is
        the slow part: its count, rate and what is left decide the ETA (rows/s would only
        fall); otherwise rows/s and how much of the input is left."""
        parts = [f"{self.seen.read:,} rows read", f"{self.seen.valid:,} valid"]
        hashed = self.outcome.hashed if self.outcome is not None else 0
        elapsed = time.monotonic() - self.started
        size, done = self.counting.size, self.counting.consumed
        remaining = None
        if size and done and elapsed >= 1 and self.seen.read and done < size:  # rate known
            remaining = elapsed * (size - done) / done
        if hashed:
            rate, total = self._hash_rate(), self._to_hash()
            parts.append(f"{hashed:,} of ~{total:,} passwords hashed ({rate:,.1f}/s)")
            if rate and total > hashed:
                remaining = max(remaining or 0.0, (total - hashed) / rate)
        elif self.seen.read and elapsed:
            parts.append(f"{self.seen.read / elapsed:,.0f} rows/s")
        return " · ".join(parts), f"ETA {duration(remaining)}" if remaining else ""

    def update(self) -> None:
        if self._progress is None:
            return
        description, eta = self.text()
        hashed = self.outcome.hashed if self.outcome is not None else 0
        if hashed:  # the bar follows the hashing, the slow part
            completed, total = hashed, max(self._to_hash(), hashed)
        else:
            completed, total = self.counting.consumed, self.counting.size or None
        self._progress.update(
            self._task, completed=completed, total=total, description=description, eta=eta
        )

    def hasher(self) -> Callable[[Sequence[str]], list[str]]:
        """Hashes a batch's plaintext passwords on every core, counting them; the first
        batch first says how long hashing will take at the rate measured on its first
        password (on a terminal)."""
        from usersctl.passwords import hash_many

        def hash_batch(passwords: Sequence[str]) -> list[str]:
            start = self.hash_started = time.monotonic()
            first: list[str] = []
            if self.outcome is not None and not self.outcome.hashed and self.enabled:
                # The rate, from as many passwords as there are cores hashed at once: one
                # argon2 hash alone already uses several cores (p=4), so cores / (one
                # hash's time) promised twice the real rate.
                first = hash_many(passwords[: os.cpu_count() or 1])
                self._announce(len(passwords), len(first) / (time.monotonic() - start))
            try:
                hashed = first + hash_many(passwords[len(first) :], advance=self._advance)
            finally:
                self.hashing_time += time.monotonic() - start
                self.hash_started = None
            if first:
                self._advance(len(first))
            return hashed

        return hash_batch

    def _advance(self, count: int) -> None:
        if self.outcome is not None:
            self.outcome.hashed += count
        if self.outcome is not None and self.outcome.hashed % 4 == 0:
            self.update()

    def _announce(self, in_batch: int, rate: float) -> None:
        cores = os.cpu_count() or 1
        size, done = self.counting.size, self.counting.consumed
        if size and done:
            expected = max(in_batch, round(in_batch * size / done))
            message = (
                f"Hashing passwords: about {expected:,} at about {rate:,.1f}/s "
                f"({cores} cores) will take about {duration(expected / rate)}."
            )
        else:
            message = (
                f"Hashing passwords at about {rate:,.1f}/s ({cores} cores): about "
                f"{duration(in_batch / rate)} for the first {in_batch:,}; more as the input "
                "goes on."
            )
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
