"""Outputs appear whole or not at all, and one writer at a time.

Every output is built under a hidden temporary name beside its final path (same filesystem) and
renamed when complete; a crash or Ctrl-C removes the temporary. An existing output is replaced only
when the caller passes ``overwrite=True``. A writer that reads an output before replacing it (a layer added
to a GeoPackage, a manifest merged with other processes' records) holds the output's lock
(:func:`output_lock`) from the read to the rename, so two runs writing one file never lose each other's work.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rtscli.errors import RtsError, failed_write, os_errno, os_fix, user_error

log = logging.getLogger("rtscli")

#: how long a writer waits for another process's lock on the same output before it gives up, seconds
LOCK_WAIT_S = 1800.0
#: after this long waiting, the writer says what it waits for, seconds
LOCK_NOTICE_S = 2.0


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) when ``path`` exists and ``overwrite`` is false, or its folder cannot be
    written (:func:`check_writable`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RtsError("output exists", path=path, fix="pass --overwrite to replace it, or choose another path")
    check_writable(path)
    return path


def check_writable(path: str | Path, *, into: bool = False) -> Path:
    """Fail early (before any work) when an output at ``path`` could not be written.

    The folder the output goes in (its parent; with ``into``, ``path`` itself: a folder written into), or the
    nearest of that folder's parents that exists (the missing ones are created), must take a new file: one is
    created and removed there (``os.access`` would say yes to root on a read-only mount or without
    ``CAP_DAC_OVERRIDE``), and the file system must have space left.

    Args:
        path: the output (a file, or a folder built beside its final name), or with ``into`` a folder.
        into: check ``path`` itself (a folder that outputs go into) rather than its parent.

    Returns:
        The folder checked.

    Raises:
        RtsError: one line naming the folder and the fix: not a folder, no permission, a read-only file system,
            no space left.
    """
    folder = Path(os.path.abspath(Path(path) if into else Path(path).parent))
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise RtsError("is a file (or a broken link), so no output can go in it", path=folder,
                       fix="choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rts-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        st = os.statvfs(folder) if hasattr(os, "statvfs") else None  # not on Windows
        root = getattr(os, "geteuid", lambda: -1)() == 0
        if st is not None and (st.f_bfree if root else st.f_bavail) == 0:  # root may use the blocks kept for it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    except OSError as exc:
        code = os_errno(exc)
        raise RtsError(f"cannot write in this folder ({exc.strerror or exc})", path=folder,
                       fix=os_fix(code) if code is not None else "choose another output path") from None
    return folder


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parent folders of ``path``; return them (deepest first) for clean-up."""
    made = []
    p = path.parent
    while not p.exists():
        made.append(p)
        p = p.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            break


def tmp_sibling(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (``.NAME.tmp-1a2b3c4d``): renamed to ``path`` when complete."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block finishes without error."""
    final = check_output(path, overwrite)
    made = _make_parents(final)
    tmp = tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        full = _nearly_full(final.parent)  # before the clean-up frees what the failed write took
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        _raise_user_error(exc, final, full)
        raise
    if final.exists():
        old = tmp_sibling(final)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path (same suffix) that becomes ``path`` on success."""
    final = check_output(path, overwrite)
    made = _make_parents(final)
    tmp = final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
    except BaseException as exc:
        full = _nearly_full(final.parent)  # before the clean-up frees what the failed write took
        if tmp.exists():
            tmp.unlink()
        _remove_empty(made)
        _raise_user_error(exc, final, full)
        raise
    os.replace(tmp, final)


#: a file system with less space left than this, bytes, is taken to be full when a write fails without saying why
NEARLY_FULL = 1 << 20


def _nearly_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` (or of its nearest existing parent) has less than :data:`NEARLY_FULL`
    bytes left for this user."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    root = getattr(os, "geteuid", lambda: -1)() == 0
    return (st.f_bfree if root else st.f_bavail) * st.f_frsize < NEARLY_FULL


def _raise_user_error(exc: BaseException, final: Path, full: bool) -> None:
    """A write that failed on a condition the user can fix becomes one line naming the output, not its temporary
    name (:func:`rtscli.errors.user_error`): no permission, a read-only file system, no space (an ``OSError``, or
    GDAL's, SQLite's or safetensors' error saying so; or a write that failed without saying why on a file system
    that is ``full``). Anything else goes on as it is."""
    if isinstance(exc, RtsError) or not isinstance(exc, Exception):
        return
    code = os_errno(exc)
    if code is None and full and failed_write(exc):
        code = errno.ENOSPC
    if code is None:
        return
    err = user_error(OSError(code, os.strerror(code)), path=final)
    if err is not None:
        raise err from exc


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """``text`` written to ``path`` through a temporary sibling renamed when complete (:func:`atomic_file`).

    Args:
        path: the file to write.
        text: its whole content (UTF-8).
        overwrite: replace an existing file (default: yes; records such as manifests are rewritten as work
            proceeds).

    Returns:
        ``path``.

    Raises:
        RtsError: ``path`` exists and ``overwrite`` is false.
    """
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it (hidden; it exists only while a writer holds it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: str | Path, *, wait: float | None = None) -> Iterator[Path]:
    """Hold the lock of the output ``path`` for the block: other processes that take it wait their turn.

    The lock is ``filelock``'s existence lock (:func:`lock_path`, created exclusively, removed on release: no file is
    left behind, and it works on network filesystems without ``flock``). A lock left by a process that died on this
    host is taken over; one left by a process on another host is waited for, then refused with the fix.

    Args:
        path: the output (its folder is created if missing, and removed again when the block fails).
        wait: seconds to wait for another writer (None: :data:`LOCK_WAIT_S`).

    Yields:
        ``path`` as a ``Path``.

    Raises:
        RtsError: another process held the lock for longer than ``wait``.
    """
    from filelock import SoftFileLock, Timeout

    final = Path(path)
    made = _make_parents(final)
    wait = LOCK_WAIT_S if wait is None else wait
    lock = SoftFileLock(lock_path(final))
    try:
        try:
            lock.acquire(timeout=min(wait, LOCK_NOTICE_S))
        except Timeout:
            log.info("%s: waiting for another process that is writing it (lock file %s)", final, lock_path(final))
            lock.acquire(timeout=max(0.0, wait - LOCK_NOTICE_S))
    except Timeout:
        _remove_empty(made)
        raise RtsError(f"another process has been writing this file for more than {wait:.0f} s (its lock file "
                       f"{lock_path(final).name} is still there)", path=final,
                       fix=f"wait for that run to finish; if no rts run is writing it (one on another machine "
                           f"was killed), delete {lock_path(final)} and run again") from None
    try:
        yield final
    except BaseException:
        lock.release()
        _remove_empty(made)
        raise
    lock.release()


@contextmanager
def run_lock(folder: str | Path, name: str) -> Iterator[Path]:
    """Hold ``folder``'s lock of the run ``name`` (one output layer of a many-scene run) for the whole run: a second
    run of that name into the folder is refused at once, so that two runs never interleave their scenes.

    The lock is ``filelock``'s existence lock (:func:`output_lock`'s kind): ``.run-NAME.lock`` in the folder, removed
    on release; one left by a process that died on this host is taken over.

    Args:
        folder: the output folder (must exist).
        name: what the run writes (its layer).

    Yields:
        The lock file's path.

    Raises:
        RtsError: another run holds the lock.
    """
    from filelock import SoftFileLock, Timeout

    from rtscli.io.paths import safe_component

    path = Path(folder) / f".run-{safe_component(name, what='layer')}.lock"
    lock = SoftFileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RtsError(f"another rts run is writing layer {name!r} into this folder now", path=folder,
                       fix=f"wait for it to finish, or write into another folder (-o); if no rts run is writing "
                           f"there (one on another machine was killed), delete {path} and run again") from None
    try:
        yield path
    finally:
        lock.release()
