"""QGIS styles stored in GeoPackages, so that rts's layers open styled in QGIS, with or without the rts plugin.

QGIS keeps a layer's default style in the GeoPackage's ``layer_styles`` table (the table its "Save style... >
In database" writes). :func:`write_layer_style` writes one row there as QGIS does: the style's QML, marked as the
layer's default unless the user saved a default style of their own for that layer (theirs stays the default). The
QML files are those of the QGIS plugin (``rtscli/qgis-plugin/rts_qgis/styles``, package data): one style for both.

What GDAL (and so QGIS) lists of the file does not change but for the table itself: GDAL lists the tables not
registered in ``gpkg_contents`` (an analyst's own ``notes``) only while no table is registered as attributes. So the
new table is registered (as QGIS registers it) only when the file already has attributes tables; otherwise it stays
unregistered, and GDAL lists it and every other table as before. QGIS finds it either way.

Writing a style never fails a run: the map is complete before it; a GeoPackage that refuses the row (locked,
read-only, not a GeoPackage) gets a warning.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from rtscli.errors import RtsError
from rtscli.io.atomic import output_lock

log = logging.getLogger("rtscli")

#: the styles rts ships (``NAME.qml``) and what each shows
STYLES = {
    "slumps": "outlines coloured by score, labelled with their id",
    "tracks": "slump tracks filled by growth rate (m²/year)",
    "observations": "outlines of each date coloured by growth rate since the date before",
}

#: the ``styleName`` of the rows rts writes (a re-run replaces its own row, never a user's)
STYLE_NAME = "rts"

#: tables QGIS keeps in a GeoPackage beside its layers (styles, projects); GDAL lists them as layers, but they
#: never hold slumps: a reader that picks "the only layer" of a file leaves them out
QGIS_TABLES = frozenset({"layer_styles", "qgis_projects"})

#: the table QGIS reads a layer's stored styles from, with its columns as QGIS creates them
_CREATE = (
    'CREATE TABLE IF NOT EXISTS "layer_styles" ("id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def style_folder() -> Path:
    """The folder of the QML styles shipped with rts (the QGIS plugin's ``styles``)."""
    return Path(__file__).resolve().parents[1] / "qgis-plugin" / "rts_qgis" / "styles"


def style_qml(style: str) -> str:
    """The QML text of one of rts's styles.

    Args:
        style: a key of :data:`STYLES` (``slumps``, ``tracks``, ``observations``).

    Returns:
        The QML document.

    Raises:
        RtsError: an unknown style, or a installation of rts without its styles.
    """
    if style not in STYLES:
        raise RtsError(f"unknown style {style!r}", fix=f"use one of {', '.join(STYLES)}")
    path = style_folder() / f"{style}.qml"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RtsError(f"rts's QGIS style is missing ({exc.strerror or exc})", path=path,
                       fix="reinstall rts (pip install --force-reinstall rtscli)") from None


def write_layer_style(path: str | Path, layer: str, style: str) -> bool:
    """Store ``style`` in the GeoPackage ``path`` as the QGIS style of its layer ``layer``.

    The row is QGIS's own kind (``layer_styles``, created when missing): QGIS opens the layer with it.
    An earlier row of rts for the layer is replaced; a default style the user saved for the layer stays the
    default (rts's row is then one more style to choose in the layer's properties). The GeoPackage's lock
    (:func:`rtscli.io.atomic.output_lock`) is held, so that another rts writer's copy of the file never loses the
    row.

    Args:
        path: the GeoPackage (rts has just written ``layer`` into it).
        layer: the layer (a table with a geometry column).
        style: a key of :data:`STYLES`.

    Returns:
        True when the style was written; False (with a warning logged) when the file refused it.
    """
    path = Path(path)
    try:
        qml = style_qml(style)
        with output_lock(path, wait=60.0), closing(sqlite3.connect(path, timeout=30.0)) as db, db:
            row = db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns "
                             "WHERE lower(table_name) = lower(?)", (layer,)).fetchone()
            if row is None:
                raise RtsError(f"no layer {layer!r} with geometry", path=path, fix="write the layer first")
            table, geometry = str(row[0]), str(row[1])
            db.execute(_CREATE)
            now = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
            # registered only where GDAL already hides unregistered tables (see the module's docstring)
            db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
                       f"srs_id) SELECT 'layer_styles', 'attributes', 'layer_styles', '', {now}, 0 "
                       "WHERE NOT EXISTS (SELECT 1 FROM gpkg_contents WHERE table_name = 'layer_styles') "
                       "AND EXISTS (SELECT 1 FROM gpkg_contents WHERE data_type = 'attributes')")
            db.execute("DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (table, STYLE_NAME))
            theirs = db.execute("SELECT 1 FROM layer_styles WHERE f_table_name = ? AND useAsDefault",
                                (table,)).fetchone()
            from rtscli import __version__

            db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                       "styleName, styleQML, styleSLD, useAsDefault, description, owner, update_time) "
                       f"VALUES ('', '', ?, ?, ?, ?, '', ?, ?, '', {now})",
                       (table, geometry, STYLE_NAME, qml, 0 if theirs else 1,
                        f"rts {__version__}: {STYLES[style]}"))
    except (sqlite3.Error, OSError, RtsError) as exc:
        log.warning("%s: the QGIS style of layer %s was not stored (%s); the layer is complete, unstyled",
                    path, layer, " ".join(str(exc).split())[:200])
        return False
    return True
