"""A Rich progress bar on stderr for long work, only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
