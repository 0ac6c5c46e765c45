"""Rich consoles: results go to stdout, logs and progress to stderr."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def progress(transient: bool = False):
    """Progress on stderr: a Rich bar with count, rate and ETA on a terminal; otherwise log lines at
    an interval (:mod:`rtscli.progress`), so batch-job logs show progress too."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rtscli.progress import bar

    return bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), transient=transient)
