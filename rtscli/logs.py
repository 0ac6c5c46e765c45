"""How messages reach the user: one line each, on stderr.

* rts's own log (logger ``rtscli``): Rich lines on a terminal; plain ``rts: ...`` lines otherwise,
  so a batch-job log keeps one message per line (Rich would wrap them at 80 columns there).
* GDAL's messages (they reach Python through the loggers of rasterio and pyogrio), what other
  libraries log (Lightning, torch) and warnings that libraries raise with :mod:`warnings` (pyogrio,
  Lightning, ...) go through the same handler, one line each: warnings and errors only (everything
  with ``--debug``), no site-packages path, no source line, each distinct message once per command.
  Known-harmless ones are silenced (:data:`HARMLESS`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from typing import Iterator, TextIO

log = logging.getLogger("rtscli")

#: library loggers whose records are shown as rts's own (GDAL's CPL messages arrive through them)
LIBRARY_LOGGERS = ("rasterio", "pyogrio", "fiona")

#: warnings that say nothing a user can act on (patterns on the message text)
HARMLESS = (
    r"__array__ implementation doesn't accept a copy keyword",  # pycocotools on numpy 2
    r"Use `@` matmul instead of `\*` mul operator",  # affine, inside rasterio
    r"isinstance\(treespec, LeafSpec\)",  # torch/Lightning internals
    r"does not have many workers",  # Lightning: rts chooses the workers on purpose
    r"exists and is not empty",  # Lightning: rts manages the run directory (resume, --overwrite)
    r"module\(s\) in eval mode at the start of training",  # frozen backbones (rts finetune)
    r"The number of training batches .* is smaller than the logging interval",
    r"TIFFReadDirectory.*Sum of Photometric type-related color channels and ExtraSamples",
)
_HARMLESS = re.compile("|".join(HARMLESS))
_SITE = re.compile(r"\S*site-packages\S*")


def one_line(text: str, limit: int = 400) -> str:
    """A message as one line: newlines folded, site-packages paths dropped, at most ``limit`` characters."""
    text = _SITE.sub("", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _OncePerMessage(logging.Filter):
    """Library messages: warnings and errors only (all levels with ``--debug``), each distinct text once,
    harmless ones never. rts's own messages all pass."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "rtscli":
            return True
        if record.levelno < logging.WARNING and not self.debug and not record.name.startswith("rtscli"):
            return False  # Lightning's "GPU available" and tips, GDAL's informational messages
        text = record.getMessage()
        if _HARMLESS.search(text) or text in self.seen:
            return False
        self.seen.add(text)
        return True


class _Rich(logging.Formatter):
    """A record as one line, a library's prefixed with where it comes from (``GDAL: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = one_line(record.getMessage(), limit=2000)
        return msg if record.name.startswith("rtscli") else f"{_origin(record.name)}: {msg}"


class _Plain(_Rich):
    """:class:`_Rich`'s line for logs that are not a terminal: ``rts: ...``, ``rts: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"rts: {record.levelname.lower()}: {msg}"
        return f"rts: {msg}"


def _origin(name: str) -> str:
    if name.startswith(("rasterio", "pyogrio", "fiona")):
        return "GDAL"
    return name.split(".")[0] or "python"


def setup(level: int) -> None:
    """Send rts's log, GDAL's messages and library warnings and logs to stderr, one line each.

    rts's logger ``rtscli`` gets the handler; so does the root logger, so that every library that logs
    (GDAL through rasterio and pyogrio, Lightning, torch) comes through it, filtered (:class:`_OncePerMessage`).
    Lightning gives its loggers a raw handler of their own when the root logger has none; that is undone.
    """
    from rtscli.console import err_console

    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_time=False, show_path=False,
                                               markup=False)
        handler.setFormatter(_Rich())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Plain())
    handler.addFilter(_OncePerMessage(debug=level <= logging.DEBUG))
    # marks the handler as ours (replaced by the next setup, e.g. in tests): an attribute logging.Handler does
    # not declare, so it goes into the instance's __dict__, where getattr(h, "_rts", False) finds it
    vars(handler)["_rts"] = True
    logger = logging.getLogger("rtscli")
    logger.handlers.clear()
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_rts", False)]:
        root.removeHandler(h)
    root.addHandler(handler)
    for name in LIBRARY_LOGGERS:  # GDAL's messages: warnings and errors (everything with --debug)
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
        lib.propagate = True
    adopt_lightning()


def adopt_lightning() -> None:
    """Send Lightning's log through rts's handler (call after ``import lightning``, before a ``Trainer``).

    ``import lightning`` gives its loggers a raw handler of their own ("INFO: GPU available...", tips
    about cloud services): when rts's logging is set up (:func:`setup`), those handlers are removed and
    the records go to the root logger, where rts's handler shows the warnings as one line each.
    """
    if not any(getattr(h, "_rts", False) for h in logging.getLogger().handlers):
        return  # rts's logging is not set up (rtscli used as a library): leave Lightning's own
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        lib = logging.getLogger(name)
        lib.handlers = [h for h in lib.handlers if getattr(h, "_rts", False)]
        lib.propagate = True


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for rts: ``package: Category: message`` as one log line (no path, no source)."""
    text = str(message)
    if _HARMLESS.search(text):
        return
    m = re.search(r"site-packages[/\\]([A-Za-z_][\w]*)", str(filename))
    origin = m.group(1) if m else ""
    name = "" if category is UserWarning else f"{category.__name__}: "
    logging.getLogger("rtscli.library").warning("%s%s%s", f"{origin}: " if origin else "", name, one_line(text))


@contextlib.contextmanager
def library_warnings() -> Iterator[None]:
    """Within the block, Python warnings are logged as one line each (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield
