"""Outputs appear whole or not at all.

Every output is built under a hidden temporary name beside its final path (same filesystem) and
renamed when complete; a crash or Ctrl-C removes the temporary. An existing output is replaced only
when the caller passes ``overwrite=True``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rtscli.errors import RtsError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) when ``path`` exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RtsError("output exists", path=path, fix="pass --overwrite to replace it, or choose another path")
    return path


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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
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
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        _remove_empty(made)
        raise
    os.replace(tmp, final)


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
