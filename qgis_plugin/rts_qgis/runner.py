"""Run the ``rts`` command line as a separate program and follow it: its lines, its progress, its end.

QGIS's Python never imports rts (nor torch): the plugin finds the ``rts`` executable of the user's environment
and runs it. This module imports nothing from QGIS, so it is tested without QGIS too.

* :func:`find_rts`: the executable, from the plugin's setting, ``$RTS_EXECUTABLE`` or the ``PATH``.
* :func:`run`: runs it, hands each output line to a callback with the progress it carries (rts prints lines
  such as ``rts: predict scene_00: 1200/8100 tiles (15%), ...`` when its output is not a terminal), stops it
  when asked (SIGINT first: rts then removes its temporary files and keeps no partial output; SIGTERM and SIGKILL
  only if it does not end), and returns its exit code with its one-line error.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

#: environment variable naming the rts executable (beside the plugin's setting)
ENV_EXECUTABLE = "RTS_EXECUTABLE"

#: variables QGIS sets for its own Python, GDAL and PROJ that would make another Python environment's programs load
#: the wrong standard library or an older PROJ database: removed from rts's environment
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PROJ_LIB", "PROJ_DATA",
               "GDAL_DATA", "GDAL_DRIVER_PATH", "QT_PLUGIN_PATH")

#: seconds between two progress lines of rts (its ``RTS_PROGRESS_SECONDS``): often enough for a live progress bar
PROGRESS_SECONDS = "1"

#: seconds rts is given to stop after SIGINT (it removes its temporary files), then after SIGTERM
STOP_GRACE_S = (15.0, 5.0)

_PROGRESS = re.compile(r"(\d+)/(\d+) [^()\n]*?\((\d+)%\)")
_ERROR = re.compile(r"^(rts: (internal )?error: .*|Error: .*)$")


class RtsNotFound(Exception):
    """No usable rts executable: the message says where the plugin looked and how to point it at rts."""


@dataclass
class RunResult:
    """How an rts run ended.

    Attributes:
        code: its exit code (negative: ended by that signal).
        canceled: it was stopped on request.
        error: its one-line error (``rts: error: ...``), or its last line when it printed none; empty on success.
        pid: its process id.
        lines: every line it printed (stdout and stderr, in order).
    """

    code: int
    canceled: bool
    error: str
    pid: int
    lines: List[str] = field(default_factory=list)


def find_rts(configured: Optional[str] = None, environ: Optional[Dict[str, str]] = None) -> str:
    """The rts executable to run.

    Args:
        configured: the plugin's setting (a path; empty or None: not set).
        environ: the environment to read ``RTS_EXECUTABLE`` and ``PATH`` from (default: this process's).

    Returns:
        The executable's absolute path: the setting, else ``$RTS_EXECUTABLE``, else ``rts`` on the ``PATH``.

    Raises:
        RtsNotFound: the setting or ``$RTS_EXECUTABLE`` names no executable file, or none was set and ``rts`` is not
            on the ``PATH``.
    """
    env = os.environ if environ is None else environ
    fix = ("set the path of the rts executable of your environment in Settings > Options > Processing > "
           "Providers > rts (in a terminal where rts works, `which rts` on Linux and macOS or `where rts` on "
           "Windows prints it), or set RTS_EXECUTABLE")
    for origin, value in (("the rts plugin's setting", configured), (ENV_EXECUTABLE, env.get(ENV_EXECUTABLE))):
        if value and value.strip():
            path = os.path.expanduser(value.strip())
            if os.path.isdir(path):  # a folder: the environment's bin/ (or Scripts\ on Windows)
                found = shutil.which("rts", path=path)
                if found:
                    return os.path.abspath(found)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return os.path.abspath(path)
            raise RtsNotFound(f"{origin} names {path}, which is not the rts executable; {fix}")
    found = shutil.which("rts", path=env.get("PATH", os.defpath))
    if found:
        return os.path.abspath(found)
    raise RtsNotFound(f"rts was not found on QGIS's PATH; {fix}")


def child_environment(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment rts runs in: this one without QGIS's own Python, GDAL and PROJ settings
    (:data:`FOREIGN_ENV`), with progress lines every :data:`PROGRESS_SECONDS` s (unless ``RTS_PROGRESS_SECONDS`` is
    set), unbuffered output, no colours and wide lines (rts's messages are not wrapped at 80 columns).

    Args:
        environ: the environment to start from (default: this process's).

    Returns:
        A new dictionary.
    """
    env = dict(os.environ if environ is None else environ)
    for name in FOREIGN_ENV:
        env.pop(name, None)
    env.setdefault("RTS_PROGRESS_SECONDS", PROGRESS_SECONDS)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "1000"
    return env


def progress_of(line: str) -> Optional[float]:
    """The percentage a progress line of rts carries (``... 1200/8100 tiles (15%), ...`` -> 14.8), or None.

    Args:
        line: one line rts printed.

    Returns:
        ``done / total`` in percent (0-100), or None for a line without progress.
    """
    m = _PROGRESS.search(line)
    if not m:
        return None
    done, total = int(m.group(1)), int(m.group(2))
    return min(100.0, 100.0 * done / total) if total else float(m.group(3))


def error_of(lines: Sequence[str]) -> str:
    """rts's one-line error among its output lines: the last ``rts: error: ...`` (or ``rts: internal error``,
    or a usage ``Error: ...``) line; else the last line it printed.

    Args:
        lines: the lines rts printed, in order.

    Returns:
        The line, without surrounding blanks; empty when it printed nothing.
    """
    for line in reversed(lines):
        if _ERROR.match(line.strip()):
            return line.strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


def run(argv: Sequence[str], *, on_line: Callable[[str, Optional[float]], None],
        is_canceled: Callable[[], bool], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
        poll_s: float = 0.1, grace: Sequence[float] = STOP_GRACE_S) -> RunResult:
    """Run ``argv`` (rts and its arguments) to its end, or until ``is_canceled()`` says stop.

    Its standard output and error are read as one stream, line by line, in a thread; each line goes to
    ``on_line`` in the calling thread (with its progress in percent, or None). Cancelling sends SIGINT to rts's
    process group as Ctrl-C in a terminal does (on Windows CTRL_BREAK), on which rts stops, removes its temporary
    files and keeps no partial output; SIGTERM follows after ``grace[0]`` s and SIGKILL after ``grace[1]`` more if
    it still runs. rts runs in its own process group (a session on POSIX), and whatever is left of that group when
    it ends (tile-reading workers) is killed, so no process outlives the run, nor holds its output open.

    Args:
        argv: the command: the rts executable, then its arguments.
        on_line: called with each line (without its newline) and its progress.
        is_canceled: polled every ``poll_s`` seconds; True stops rts.
        env: its environment (default: :func:`child_environment`).
        cwd: its working folder.
        poll_s: seconds between two polls of ``is_canceled``.
        grace: seconds to wait after SIGINT, then after SIGTERM.

    Returns:
        The :class:`RunResult`.

    Raises:
        OSError: the program could not be started (the caller names it).
    """
    posix = os.name == "posix"
    kw: Dict[str, object] = {"start_new_session": True} if posix else \
        {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=child_environment() if env is None else env, cwd=cwd, **kw)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        lines.put(None)

    reader = threading.Thread(target=read, name="rts-output", daemon=True)
    reader.start()
    seen: List[str] = []
    canceled = False
    stop_at: List[float] = []  # when each stop signal was sent
    exited_at: Optional[float] = None  # when rts itself was seen ended
    ended = False
    while not ended:
        try:
            line = lines.get(timeout=poll_s)
        except queue.Empty:
            pass
        else:
            if line is None:
                ended = True
            else:
                seen.append(line)
                on_line(line, progress_of(line))
        if proc.poll() is not None and not ended:  # rts has ended; a process it left may still hold the output
            exited_at = exited_at or time.monotonic()
            if posix and time.monotonic() - exited_at > 5:
                _kill_group(proc.pid, wait_s=0)
        if not canceled and proc.poll() is None and is_canceled():
            canceled = True
            _signal(proc, "interrupt")
            stop_at.append(time.monotonic())
        if canceled and proc.poll() is None and stop_at:
            waited = time.monotonic() - stop_at[-1]
            if len(stop_at) == 1 and waited > grace[0]:
                _signal(proc, "terminate")
                stop_at.append(time.monotonic())
            elif len(stop_at) == 2 and waited > grace[1]:
                _signal(proc, "kill")
                stop_at.append(time.monotonic())
    code = proc.wait()
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    if posix:
        _kill_group(proc.pid)
    return RunResult(code=code, canceled=canceled, error="" if code == 0 else error_of(seen), pid=proc.pid,
                     lines=seen)


def _signal(proc: "subprocess.Popen[bytes]", how: str) -> None:
    """Send rts's process group SIGINT (``interrupt``: what Ctrl-C in a terminal sends to rts and its tile-reading
    workers), SIGTERM (``terminate``) or SIGKILL. On Windows: CTRL_BREAK, then kill."""
    try:
        if os.name != "posix":
            if how == "interrupt":
                proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
            else:
                proc.kill()
        else:
            sig = {"interrupt": signal.SIGINT, "terminate": signal.SIGTERM}.get(how, signal.SIGKILL)
            os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass  # it has ended meanwhile


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """Kill whatever is left of rts's process group (nothing, when rts stopped its workers itself), and wait up to
    ``wait_s`` seconds until the group is gone."""
    killpg = getattr(os, "killpg", None)
    if killpg is None:
        return
    sigkill = getattr(signal, "SIGKILL", signal.SIGTERM)
    end = time.monotonic() + wait_s
    try:
        killpg(pgid, sigkill)
        while time.monotonic() < end:
            time.sleep(0.05)
            killpg(pgid, 0)  # ProcessLookupError once no process of the group is left
    except (ProcessLookupError, PermissionError, OSError):
        pass


def describe_command(argv: Sequence[str]) -> str:
    """The command as one line a user can paste into a terminal."""
    if sys.platform.startswith("win"):
        return subprocess.list2cmdline(list(argv))
    import shlex

    return " ".join(shlex.quote(a) for a in argv)
