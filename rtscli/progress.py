"""Progress that reaches a person whether or not stderr is a terminal.

On a terminal, long work shows a Rich progress bar. Under SLURM, ``nohup`` or a pipe nobody sees a
bar (Rich draws nothing there), so :class:`LineProgress` logs one plain line per task at most every
:func:`interval` seconds, and one when the task ends::

    rts: predict scene_00: 1200/8100 tiles (15%), 10.9 tiles/s, 11,760 km²/h, ETA 10 min 33 s

The interval is 30 s, or ``RTS_PROGRESS_SECONDS`` (0 logs every update). :func:`bar` picks one or
the other; both offer the part of Rich's ``Progress`` API that rts uses (``add_task``,
``update``, ``advance``, use as a context manager).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID

log = logging.getLogger("rtscli")

DEFAULT_SECONDS = 30.0


def interval() -> float:
    """Seconds between two progress lines in logs (``RTS_PROGRESS_SECONDS``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("RTS_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def duration(seconds: float) -> str:
    """``3 h 05 min``, ``10 min 33 s``, ``42 s``: a human duration for ETAs and elapsed times.

    Args:
        seconds: the duration; negative counts as 0.

    Returns:
        The duration rounded to the second (to the minute from an hour on).
    """
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def is_terminal() -> bool:
    from rtscli.console import err_console

    return bool(err_console.is_terminal)


@dataclass
class _Task:
    description: str
    total: float | None
    fields: dict[str, Any]
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_line: float = 0.0
    ended: bool = False


class LineProgress:
    """Progress as log lines (stderr is not a terminal). Drop-in for the Rich ``Progress`` calls rts makes.

    Fields a task may carry: ``unit`` (what is counted: ``tiles``, ``chips``...; default ``items``)
    and ``area_km2`` (the area the whole task covers, km²: adds an area rate in km²/h, for ``rts predict``).
    """

    def __init__(self, every: float | None = None) -> None:
        self.every = interval() if every is None else every
        self.tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:  # a task that reached its end was logged then; one left open says where it stopped
            for t in self.tasks:
                if not t.ended and t.completed:
                    self._line(t)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        self.tasks.append(_Task(description, total, fields))
        # an int, typed as Rich's TaskID (an int too): callers of bar() get ids that fit either kind of bar
        return cast("TaskID", len(self.tasks) - 1)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float = 0, total: float | None = None, **fields: Any) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t.total = total
        t.fields.update(fields)
        t.completed += advance
        now = time.monotonic()
        done = t.total is not None and t.completed >= t.total
        if done and not t.ended:
            t.ended = True
            self._line(t, now)
        elif not done and now - max(t.last_line, t.started) >= self.every:
            self._line(t, now)

    def _line(self, t: _Task, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        t.last_line = now
        log.info("%s", describe(t.description, t.completed, t.total, now - t.started, **t.fields))


def describe(what: str, done: float, total: float | None, elapsed: float, *, unit: str = "items",
             area_km2: float = 0.0, **_: Any) -> str:
    """One progress line: ``what: done/total unit (pct), rate, [km²/h,] ETA`` (or elapsed when done).

    Args:
        what: the task's description.
        done: units done since ``elapsed`` started.
        total: units of the whole task; None when unknown (no percentage, no ETA).
        elapsed: seconds since the task started.
        unit: what is counted (``tiles``, ``chips``...).
        area_km2: the area the whole task covers (adds an area rate); 0: none.
        **_: other task fields, ignored.

    Returns:
        The line, without a trailing newline.
    """
    parts = [f"{int(done)}/{int(total)} {unit} ({done / total:.0%})" if total else f"{int(done)} {unit}"]
    return f"{what.strip()}: " + ", ".join(parts + pace(done, total, elapsed, unit=unit, area_km2=area_km2))


def pace(done: float, total: float | None, elapsed: float, *, rate: float | None = None, unit: str = "items",
         area_km2: float = 0.0) -> list[str]:
    """The rate and time parts of a progress line: ``2.1 steps/s``, ``[km²/h,]`` then ``ETA 20 s``, or
    ``done in 35 s`` once ``done`` reaches ``total`` (:func:`describe`, and the training lines of
    :class:`rtscli.engine.lightning_task.LogProgress`).

    Args:
        done: units done of ``total``.
        total: units of the whole task; None or 0 when unknown (no ETA, no area rate).
        elapsed: seconds the task has run.
        rate: units per second; default ``done / elapsed`` (a resumed run counts only what it ran itself).
        unit: what is counted, for the rate.
        area_km2: the area the whole task covers, km²: adds an area rate in km²/h; 0: none.

    Returns:
        The parts, in order (none when nothing was done yet and the total is unknown).
    """
    if rate is None:
        rate = done / elapsed if elapsed > 0 else 0.0
    parts: list[str] = []
    if rate > 0:
        parts.append(f"{rate:.3g} {unit}/s")
        if area_km2 and total:
            parts.append(f"{area_km2 * rate / total * 3600:,.0f} km²/h")
    if total and done >= total:
        parts.append(f"done in {duration(elapsed)}")
    elif total and rate > 0:
        parts.append(f"ETA {duration((total - done) / rate)}")
    return parts


def bar(*columns, transient: bool = False):
    """A Rich ``Progress`` with ``columns`` on a terminal, else a :class:`LineProgress`."""
    if not is_terminal():
        return LineProgress()
    from rich.progress import Progress

    from rtscli.console import err_console

    return Progress(*columns, console=err_console, transient=transient)


def progress(transient: bool = False) -> Progress | LineProgress:
    """Progress on stderr: a Rich bar with count, rate and ETA on a terminal; otherwise log lines at
    an interval (:class:`LineProgress`), so batch-job logs show progress too."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), transient=transient)


def tile_progress() -> Progress | LineProgress:
    """Tiles done, tiles/s, km²/h and time left (``rts predict``): a Rich bar on a terminal, log lines otherwise.

    Tasks carry ``area_km2`` (the scene's true area): its share done is tiles done / tiles (tiles overlap, so
    counting tile areas would inflate the rate).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """Tiles/s and km²/h of a task (its ``area_km2`` field)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("")
            km2 = task.fields.get("area_km2", 0.0) * speed / task.total * 3600 if task.total else 0.0
            return Text(f"{speed:.1f} tiles/s  {km2:,.0f} km²/h")

    return bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
               transient=True)
