"""User-facing errors.

A :class:`RtsError` is a problem with the user's input or settings. The CLI prints its message on
one line and exits with code 2, without a traceback (``rts --debug`` shows it). The message names
the file at fault and says how to fix it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable


class RtsError(Exception):
    """An error the user can fix; the message is shown as is."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None) -> None:
        """The message, as one line: ``PATH: message -- fix``.

        Args:
            message: what is wrong (a trailing full stop is dropped).
            path: the file at fault, or None.
            fix: what the user can do about it, or None.
        """
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        text = " ".join(parts)
        if fix:
            text += f" -- {fix.rstrip('.')}"
        super().__init__(text.replace("\n", " "))


class Stopped(RtsError):
    """A training run stopped by SIGTERM (SLURM's time limit, ``scancel``, ``kill``): the message says where it
    stopped and what it kept; the CLI adds the command that continues it and exits with 143 (128 + 15, as a
    process ended by SIGTERM)."""

    exit_code = 143



# How to repair a file with what rts installs (rasterio's ``rio``, Python with geopandas): rts never suggests GDAL's
# command-line programs (gdal_edit.py, gdal_translate, gdalwarp, gdalinfo, ogr2ogr, ogrinfo), which a pip-installed
# rts does not have.

def set_raster_crs(path: str | Path = "FILE") -> str:
    """The fix that gives raster ``path`` a CRS: rasterio's ``rio edit-info`` (installed with rts)."""
    return f"set it with `rio edit-info --crs EPSG:XXXX {path}` (rasterio's rio, installed with rts)"


def set_raster_nodata(path: str | Path = "FILE") -> str:
    """The fix that gives raster ``path`` a nodata value: rasterio's ``rio edit-info``."""
    return f"set it with `rio edit-info --nodata VALUE {path}` (rasterio's rio, installed with rts)"


def georeference_raster(path: str | Path = "FILE") -> str:
    """The fix for an image without a geotransform: a world file, or ``rio edit-info`` with CRS and transform."""
    return (f"put a world file (.tfw/.jgw/.pgw) beside it, or set CRS and transform with `rio edit-info --crs "
            f"EPSG:XXXX --transform '[XRES, 0, ULX, 0, -YRES, ULY]' {path}` (rasterio's rio, installed with rts)")


def resample_like(path: str | Path = "AUX", like: str | Path = "IMAGE") -> str:
    """The fix for a raster on another grid than ``like``: ``rio warp --like`` (rasterio's rio)."""
    return f"resample it onto the image's grid with `rio warp {path} resampled.tif --like {like}`"


def inspect_raster(path: str | Path = "FILE") -> str:
    """How to look at a raster's header: ``rio info`` (rasterio's rio)."""
    return f"`rio info {path}`"


def set_vector_crs(path: str | Path = "FILE", out: str = "out.gpkg") -> str:
    """The fix that saves vector ``path`` with a CRS, in Python with geopandas (installed with rts)."""
    return (f"save it with its CRS in Python: python -c \"import geopandas as g; g.read_file('{path}')"
            f".set_crs('EPSG:XXXX', allow_override=True).to_file('{out}')\"")


#: OS errors the user can fix, by errno: what to do about each
_OS_FIXES = {
    errno.EACCES: "give yourself permission on it or its folder (ls -ld; chmod u+w), or choose another path",
    errno.EPERM: "give yourself permission on it or its folder (ls -ld; chmod u+w), or choose another path",
    errno.EROFS: "it is on a read-only file system: choose a path on a writable one",
    errno.ENOSPC: "free space on that disk (df -h), or choose a path on another one",
    getattr(errno, "EDQUOT", 122): "your disk quota is used up: free space (quota -s), or choose a path on another "
                                   "disk",
    errno.EFBIG: "the file system cannot hold a file this large (FAT32: 4 GB): choose a path on another one",
}
#: how those errors read inside the messages of libraries that do not raise an OSError (GDAL, safetensors, SQLite)
_OS_TEXTS = {
    "permission denied": errno.EACCES,
    "operation not permitted": errno.EPERM,
    "read-only file system": errno.EROFS,
    "attempt to write a readonly database": errno.EROFS,
    "no space left on device": errno.ENOSPC,
    "storagefull": errno.ENOSPC,
    "database or disk is full": errno.ENOSPC,
    "disk quota exceeded": getattr(errno, "EDQUOT", 122),
    "file too large": errno.EFBIG,
    "file write failed": errno.ENOSPC,  # torch.save (a checkpoint) on a full disk
}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (GDAL's "see previous exception")."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OS condition the user can fix (no permission, read-only file system, disk full, over quota,
    file too large) that ``exc`` (or an exception it was raised from) reports, or None. An ``OSError`` carries it;
    GDAL's, SQLite's, torch's and safetensors' errors carry it in their message only."""
    for e in _chain(exc):
        if isinstance(e, RtsError):
            return None
        if isinstance(e, OSError) and e.errno in _OS_FIXES:
            return e.errno
        text = str(e).casefold()
        code = next((c for words, c in _OS_TEXTS.items() if words in text), None)
        if code is not None:
            return code
    return None


def failed_write(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a write failed, without saying why (GDAL's
    "Write failed", libtiff's "Write error at scanline ..."): with no space left where it wrote, the disk is full."""
    return any(w in str(e).casefold() for e in _chain(exc) for w in ("write failed", "write error", "error writing",
                                                                      "failed writing", "io error writing"))


def os_fix(code: int) -> str | None:
    """What the user can do about the OS error ``code`` (an errno of :func:`os_errno`), or None."""
    return _OS_FIXES.get(code)


def user_error(exc: BaseException, *, path: str | Path | None = None) -> RtsError | None:
    """``exc`` as the one-line error of a condition the user can fix, or None when it is not one (a bug).

    The conditions: an OS error of :func:`os_errno` (named by its file: ``path``, else the exception's ``filename``,
    with the fix), and ``MemoryError`` (an input too large for this machine's memory).

    Args:
        exc: the exception.
        path: the file at fault, when the caller knows it better than the exception.

    Returns:
        The :class:`RtsError` to raise or show, or None.
    """
    if isinstance(exc, RtsError):  # already one line
        return None
    if isinstance(exc, MemoryError):
        return RtsError("out of memory (an input or a setting too large for this machine)", path=path,
                        fix="use smaller inputs (crop the scene, fewer windows), a smaller --batch-size or "
                            "--tile-size, or a machine with more memory")
    code = os_errno(exc)
    if code is None:
        return None
    # a copy or a rename names both files: the second (where it was going) is the one that could not be written
    where = path if path is not None else getattr(exc, "filename2", None) or getattr(exc, "filename", None)
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or os.strerror(code)
    if where is None:  # a library's error without the file's name: say what happened
        what = "written or read" if code in (errno.EACCES, errno.EPERM) else "written"
        reason += f": a file could not be {what} ({type(exc).__name__})"
    return RtsError(reason, path=where, fix=_OS_FIXES[code])


def unknown_choice(what: str, given: str, choices: Iterable[str], *, also: str | None = None,
                   path: str | Path | None = None) -> RtsError:
    """The error for a value that is not one of ``choices``: ``unknown WHAT 'x'`` and, when a choice is close to
    it (:func:`difflib.get_close_matches`), ``did you mean 'y'?`` before the list of choices. Every refused choice
    of a fixed set (band presets, model presets, modalities, fusion strategies, modes ...) is said this way.

    Args:
        what: what the value is (``band preset``, ``--merge``, ``fusion``).
        given: the value given.
        choices: the accepted values.
        also: a further way out, added to the fix (``or name bands as blue=1,...``), or None.
        path: the file at fault, or None.

    Returns:
        The :class:`RtsError` to raise.
    """
    options = list(dict.fromkeys(str(c) for c in choices))
    close = close_matches(given, options)
    listed = f"use one of {', '.join(options)}" if options else "see --help"
    if also:
        listed += f", {also}" if also.startswith("or ") else f"; {also}"
    if close:
        guess = " or ".join(repr(c) for c in close)
        return RtsError(f"unknown {what} {given!r}; did you mean {guess}?", path=path, fix=listed)
    return RtsError(f"unknown {what} {given!r}", path=path, fix=listed)


def close_matches(given: str, choices: Iterable[str]) -> list[str]:
    """The choices close to ``given`` (:func:`difflib.get_close_matches`, case-insensitive), best first, at most 3."""
    import difflib

    options = list(dict.fromkeys(str(c) for c in choices))
    found = difflib.get_close_matches(str(given).strip().lower(), [c.lower() for c in options], n=3, cutoff=0.6)
    return [next(c for c in options if c.lower() == m) for m in found]
