"""Paths that come from inside files stay inside the folders they belong to.

A COCO file, a manifest, a ``.txt`` list or a split file is data from elsewhere (a labelling tool, a
colleague, a download). A path it holds (``file_name``) is resolved against the folder it belongs to and must
stay inside it (:func:`inside`, :func:`contained`): ``..`` parts, absolute paths and symlinks are resolved
first, then containment is checked. A name it holds that becomes part of an output path (a site, a chip name)
is made one safe path component (:func:`safe_component`).
"""

from __future__ import annotations

import re
from pathlib import Path

from rtscli.errors import RtsError

#: characters that never go into a path component rts writes: separators, control characters and those
#: Windows forbids in file names
_UNSAFE = re.compile(r'[/\\\x00-\x1f<>:"|?*]+')


def _as_path(name: str | Path) -> Path:
    """``name`` as a path, Windows separators read as separators (files from Windows tools use them)."""
    return Path(str(name).replace("\\", "/"))


def contained(base: str | Path, name: str | Path) -> Path | None:
    """``name`` (relative to ``base``, or absolute) resolved, symlinks too, when it lies inside ``base``
    (resolved too); None when it leads outside. The file need not exist."""
    root = Path(base).resolve()
    target = (root / _as_path(name)).resolve()
    return target if target == root or target.is_relative_to(root) else None


def inside(base: str | Path, name: str | Path, what: str, *, path: str | Path | None = None,
           fix: str | None = None) -> Path:
    """``name`` (relative to ``base``, or absolute) resolved, symlinks too; refused when it leads outside ``base``.

    Args:
        base: the folder the name belongs to (a dataset, an image folder, a list's folder).
        name: the path as the file holds it.
        what: the entry that holds it, for the message (``image 3 of train.json``).
        path: the file that holds it, named first in the message (default: none).
        fix: what the user can do (default: keep the file inside ``base``).

    Returns:
        The resolved path, inside ``base``.

    Raises:
        RtsError: ``name`` leads outside ``base`` (``..``, an absolute path elsewhere, a symlink out).
    """
    target = contained(base, name)
    if target is None:
        raise RtsError(f"{what}: {str(name)!r} leads outside {base}; it is not read", path=path,
                       fix=fix or f"keep the file inside {base} and give its path relative to it")
    return target


def safe_component(name: str, what: str, *, path: str | Path | None = None) -> str:
    """``name`` as one safe path component: separators, control characters and ``<>:"|?*`` become ``_``,
    surrounding spaces and dots are dropped. A name that tries to leave (absolute, or with a ``..`` part) is
    refused.

    Args:
        name: the name as a file holds it (a site, an image name).
        what: the entry that holds it, for the message (``site of image 3 in train.json``).
        path: the file that holds it, named first in the message (default: none).

    Returns:
        The name, unchanged when it is already one plain component (``Peel Plateau``, ``site_2``).

    Raises:
        RtsError: the name is absolute, has a ``..`` part, or is empty once cleaned.
    """
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[/\\]", text) or ".." in parts:
        raise RtsError(f"{what}: {text!r} is a path that leads elsewhere, not a name", path=path,
                       fix="use a plain name (letters, digits, '_', '-', '.'), e.g. by editing the file")
    clean = _UNSAFE.sub("_", text).strip(" .")
    if not clean:
        raise RtsError(f"{what}: {text!r} is not a usable name", path=path,
                       fix="use a plain name (letters, digits, '_', '-', '.')")
    return clean
