"""``rts qgis-plugin -o rts_qgis.zip``: the QGIS plugin of this rts, as a zip to install in QGIS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: files of the plugin folder that go into the zip (relative patterns); anything else (caches) stays out
PLUGIN_FILES = ("*.py", "metadata.txt", "LICENSE", "icon.svg", "icon.png", "styles/*.qml")

#: metadata.txt keys the official plugin repository requires, and the one that makes QGIS load the provider
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "hasProcessingProvider")

#: the time stamp of every zip entry: the same plugin makes the same zip, byte for byte
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def qgis_plugin(
    out: Annotated[Path, typer.Option("--out", "-o", help="The zip to write; install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP.")] = Path("rts_qgis.zip"),
    overwrite: Annotated[bool, typer.Option(help="Replace the zip if it exists.")] = False,
) -> None:
    """Write the QGIS plugin of this rts: a Processing provider whose algorithms (predict, track, export to ARTS, prepare) run this rts and load their outputs styled.

    QGIS's Python never imports rts: the plugin runs the rts program. Install the zip in QGIS, then, unless rts is on QGIS's PATH, set its path once in Settings > Options > Processing > Providers > rts (printed below).
    """
    import shutil
    import sys

    from rtscli import __version__
    from rtscli.console import console
    from rtscli.io.atomic import check_output

    check_output(out, overwrite)
    files = write_plugin_zip(plugin_source(), out, version=__version__, overwrite=overwrite)
    exe = shutil.which("rts", path=str(Path(sys.executable).parent)) or shutil.which("rts") or "rts"
    console.print(f"QGIS plugin rts_qgis {__version__} -> {out} ({files} files)", markup=False, soft_wrap=True)
    console.print("In QGIS: Plugins > Manage and Install Plugins > Install from ZIP. Unless rts is on QGIS's PATH, set "
                  f"Settings > Options > Processing > Providers > rts > rts executable to {Path(exe).absolute()}",
                  markup=False, soft_wrap=True)


def plugin_source() -> Path:
    """The plugin's folder: package data of rtscli (``rtscli/qgis-plugin/rts_qgis``; in the repository a link to
    ``qgis_plugin/rts_qgis``).

    Raises:
        RtsError: an installation of rts without it.
    """
    from rtscli.errors import RtsError

    folder = Path(__file__).resolve().parents[1] / "qgis-plugin" / "rts_qgis"
    if not (folder / "metadata.txt").is_file():
        raise RtsError("this installation of rts lacks its QGIS plugin", path=folder,
                       fix="reinstall rts (pip install --force-reinstall rtscli)")
    return folder


def write_plugin_zip(source: Path, out: Path, *, version: str, overwrite: bool) -> int:
    """Zip the plugin folder ``source`` as ``rts_qgis/...`` into ``out``, with ``version`` in its metadata.

    Args:
        source: the plugin folder (:func:`plugin_source`).
        out: the zip to write (through a temporary name: whole or not at all).
        version: the version written into ``metadata.txt`` (this rts's: the plugin's options are this rts's).
        overwrite: replace an existing zip.

    Returns:
        The number of files in the zip.

    Raises:
        RtsError: ``metadata.txt`` lacks a field QGIS's plugin repository requires.
    """
    import configparser
    import re
    import zipfile

    from rtscli.errors import RtsError
    from rtscli.io.atomic import atomic_file

    text = (source / "metadata.txt").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^version=.*$", f"version={version}", text)
    meta = configparser.ConfigParser()
    meta.read_string(text)
    missing = [k for k in REQUIRED_METADATA if not meta.get("general", k, fallback="").strip()]
    if missing or meta.get("general", "hasProcessingProvider", fallback="") != "yes":
        raise RtsError(f"the plugin's metadata.txt lacks {', '.join(missing) or 'hasProcessingProvider=yes'}",
                       path=source / "metadata.txt", fix="reinstall rts (pip install --force-reinstall rtscli)")
    files = sorted({p for pattern in PLUGIN_FILES for p in source.glob(pattern) if p.is_file()})
    with atomic_file(out, overwrite=overwrite) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            rel = path.relative_to(source).as_posix()
            info = zipfile.ZipInfo(f"rts_qgis/{rel}", ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = text.encode("utf-8") if rel == "metadata.txt" else path.read_bytes()
            z.writestr(info, data)
    return len(files)
