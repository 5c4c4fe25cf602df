"""Where progress and logs go: rich on stderr, tables on stdout (shared by the CLI, training and the edge)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def stderr_console() -> Console:
    """Progress and logs on stderr; written to a file or a pipe they keep a readable width. Silent in
    the processes other than 0 of a torchrun (process 0 speaks for all)."""
    if int(os.environ.get("RANK", "0")) > 0:
        return Console(stderr=True, quiet=True)
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=150)


def stdout_console() -> Console:
    """Tables on stdout; piped into a file or another program, they keep their full width. Silent in the
    processes other than 0 of a torchrun."""
    if int(os.environ.get("RANK", "0")) > 0:
        return Console(quiet=True)
    console = Console()
    return console if console.is_terminal else Console(width=160)


def progress_bar(console: Console | None = None, transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=transient,
    )


@contextmanager
def logs_on(console: Console, level: int = logging.WARNING) -> Iterator[None]:
    """Show the library's log records (``askexpert.*``, e.g. the edge's "server down" / "server back")
    on ``console`` while the block runs: between a live progress bar's redraws, not through it."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, level=level, show_time=False, show_path=False, markup=False)
    logger = logging.getLogger("askexpert")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(min(level, old) if old else level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
