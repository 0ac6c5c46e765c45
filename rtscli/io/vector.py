"""Vector files in and out: any OGR format by extension, any CRS (reprojected explicitly), atomic writes.

Generic reading and writing only; which features are slumps is label policy (:mod:`rtscli.data.labels`),
the names of rts's own layers and fields are in :mod:`rtscli.io.schema`.
"""

from __future__ import annotations

import logging
import os

import shutil

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtscli.errors import RtsError, os_errno, os_fix, set_vector_crs
from rtscli.geometry.footprint import CRSLike
from rtscli.io.atomic import atomic_file, check_output, check_writable, output_lock, tmp_sibling
from rtscli.io.raster import crs_name

log = logging.getLogger("rtscli")

VECTOR_DRIVERS = {
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
}


@dataclass
class LabelReport:
    """What happened to the features of a label file on the way in."""

    features: int = 0
    repaired: int = 0
    empty: int = 0
    not_polygon: int = 0
    reprojected_from: str | None = None
    duplicates: int = 0  # near-identical to an earlier feature (IoU >= DUPLICATE_IOU)
    duplicates_dropped: int = 0
    negatives: int = 0  # ARTS TrainClass = Negative: background areas, not slumps
    overlapping_pairs: int = 0  # pairs overlapping by OVERLAP_IOU <= IoU < DUPLICATE_IOU (several dates stacked?)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VectorRole:
    """What a vector file is to the command that reads it, for its messages: its name, the fixes for a file
    with several layers or without a CRS, and whether an empty file is fine."""

    what: str
    layer_fix: str
    crs_fix: str
    empty_ok: bool = False


LABELS = VectorRole("label file", "pass --labels-layer NAME to say which holds the slumps",
                    "pass --labels-crs EPSG:XXXX, or save the file with its CRS")
TRUTH = VectorRole("--truth file", "pass --truth-layer NAME to say which holds the reference outlines",
                   set_vector_crs(out="truth.gpkg"), empty_ok=True)


def read_polygons(path: str | Path, target_crs: CRSLike | None, *, assume_crs: CRSLike | None = None,
                  layer: str | None = None, role: VectorRole = LABELS) -> tuple[Any, LabelReport]:
    """Read polygon labels, repair invalid ones, reproject to ``target_crs``.

    Returns ``(GeoDataFrame, LabelReport)``. One row per feature; a multipolygon feature stays one
    label. Invalid geometries are repaired with ``make_valid`` and counted; non-polygon and empty
    features are dropped and counted (near-identical ones are :func:`read_labels`' business). Reprojection is
    explicit and logged. ``role`` words the errors (a missing file, several layers, no CRS, no features).

    Args:
        path: the vector file (any OGR format; GeoParquet through pyarrow).
        target_crs: the CRS to reproject to; None keeps the file's.
        assume_crs: the CRS of a file that has none.
        layer: the layer to read; None: the only one (a file with several is refused).
        role: what the file is to the command, for the messages.

    Returns:
        ``(GeoDataFrame, LabelReport)``.

    Raises:
        RtsError: a missing or unreadable file, an unknown layer, several layers and no ``layer``, no CRS and no
            ``assume_crs``, no features (unless ``role.empty_ok``), or a reprojection to infinite coordinates.
    """
    import geopandas as gpd
    import shapely

    path = Path(path)
    if not path.exists():
        raise RtsError(f"{role.what} not found", path=path, fix="check the path")
    layers = layer_names(path)
    if layer is not None and layers and layer not in layers:
        raise RtsError(f"no layer {layer!r} in the {role.what} (it has {', '.join(layers)})", path=path,
                       fix=role.layer_fix.split(" NAME")[0] + " with one of them")
    if layer is None and len(layers) > 1:  # pyogrio would read the first one with a warning: maybe the wrong one
        raise RtsError(f"the {role.what} has {len(layers)} layers ({', '.join(layers[:6])})", path=path,
                       fix=role.layer_fix.replace("FILE", path.name))
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):  # GeoParquet through pyarrow: GDAL's driver may
            gdf = gpd.read_parquet(path)                         # lack its libraries (libduckdb, libarrow)
        else:
            gdf = gpd.read_file(path, layer=layer) if layer is not None else gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RtsError(
            f"cannot read vector labels ({first})",
            path=path,
            fix="pass a GeoPackage, shapefile or GeoJSON",
        ) from None
    if not isinstance(gdf, gpd.GeoDataFrame) or (len(gdf) == 0 and not role.empty_ok):
        raise RtsError(f"{role.what} has no features", path=path, fix="check that it is the right file and layer")
    rep = LabelReport(features=len(gdf))
    if len(gdf) == 0:
        log.info("%s %s has no features", role.what, path.name)
        return gdf, rep
    if gdf.crs is None:
        if assume_crs is None:
            raise RtsError(f"{role.what} has no CRS", path=path, fix=role.crs_fix.replace("FILE", path.name))
        gdf = gdf.set_crs(assume_crs)
    # QGIS often digitizes PolygonZ: drop Z, or x,y,z triples would be read as x,y pairs
    if shapely.has_z(gdf.geometry.values).any():
        gdf = gdf.set_geometry(shapely.force_2d(gdf.geometry.values), crs=gdf.crs)
        rep.notes.append("Z values dropped")
    geoms = gdf.geometry.values
    empty = shapely.is_empty(geoms) | gdf.geometry.isna().to_numpy()
    rep.empty = int(empty.sum())
    gdf = gdf[~empty].copy()
    invalid = ~shapely.is_valid(gdf.geometry.values)
    rep.repaired = int(invalid.sum())
    if rep.repaired:
        fixed = shapely.make_valid(gdf.geometry.values[invalid])
        gdf.loc[invalid, "geometry"] = [polygonal(g) for g in fixed]
    polys = gdf.geometry.apply(polygonal)
    bad = polys.isna() | polys.apply(lambda g: g is None or g.is_empty)
    rep.not_polygon = int(bad.sum())
    gdf = gdf.assign(geometry=polys)[~bad]
    gdf = gpd.GeoDataFrame(gdf, geometry="geometry", crs=gdf.crs)
    if target_crs is not None and gdf.crs != target_crs:
        rep.reprojected_from = crs_name(gdf.crs)
        gdf = reproject_polygons(gdf, target_crs, path)
    return gdf, rep


def reproject_polygons(gdf: Any, target_crs: CRSLike, path: Path) -> Any:
    """``gdf`` (read from ``path``) reprojected to the raster CRS ``target_crs``, explicitly and logged (one line).

    Args:
        gdf: a GeoDataFrame with a CRS other than ``target_crs``.
        target_crs: the raster CRS to reproject to.
        path: the file it was read from, for the log line and the error.

    Returns:
        The reprojected GeoDataFrame.

    Raises:
        RtsError: the coordinates become infinite (the file's stated CRS is probably wrong).
    """
    src = crs_name(gdf.crs)
    out = gdf.to_crs(target_crs)
    if len(out) and not np.isfinite(out.total_bounds).all():
        raise RtsError(f"labels cannot be reprojected from {src} to the raster CRS {crs_name(target_crs)} "
                       "(coordinates become infinite): their stated CRS is probably wrong", path=path,
                       fix="check the label file's CRS (or pass --labels-crs)")
    log.info("reprojecting labels %s from %s to the raster CRS %s", path.name, src, crs_name(target_crs))
    return out


def layer_names(path: Path) -> list[str]:
    """The layers of a vector file (empty when GDAL cannot list them: reading it then gives the error)."""
    try:
        return gpkg_layers(path)
    except RtsError:
        return []


def polygonal(geom: Any) -> Any | None:
    """The polygonal part of a geometry, or None (make_valid and clipping can return collections)."""
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if geom is None:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    if isinstance(geom, GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, (Polygon, MultiPolygon))]
        if not parts:
            return None
        flat: list[Any] = []
        for p in parts:
            flat.extend(p.geoms if isinstance(p, MultiPolygon) else [p])
        return flat[0] if len(flat) == 1 else MultiPolygon(flat)
    return None


def driver_for(path: Path) -> str:
    """The OGR driver that writes ``path``, by its extension (:data:`VECTOR_DRIVERS`); :class:`RtsError` for an
    unknown one."""
    try:
        return VECTOR_DRIVERS[path.suffix.lower()]
    except KeyError:
        raise RtsError(
            f"unknown vector format {path.suffix!r}",
            path=path,
            fix="use .gpkg, .shp, .geojson or .parquet",
        ) from None


def gpkg_layers(path: Path) -> list[str]:
    """The layer names of an existing GeoPackage (or any vector file), without QGIS's own tables (``layer_styles``,
    ``qgis_projects``: styles and projects, not maps); a clear error when GDAL cannot read it."""
    import pyogrio

    from rtscli.io.styles import QGIS_TABLES

    try:
        return [str(n) for n in pyogrio.list_layers(path)[:, 0] if str(n).casefold() not in QGIS_TABLES]
    except Exception as exc:  # pyogrio raises DataSourceError for a file that is not a GeoPackage
        raise RtsError(f"exists but is not a GeoPackage GDAL can read ({' '.join(str(exc).split())[:120]})",
                       path=path, fix="choose another output, or move that file away") from None


def check_vector_output(path: str | Path, overwrite: bool, layers: list[str] | tuple[str, ...] = ("rts",),
                        other: str = "or choose another --layer") -> Path:
    """Fail early (before any work) when writing ``layers`` to ``path`` would replace something without
    ``overwrite``: an existing file, or, for a GeoPackage, an existing layer of one of those names (the
    other layers of a GeoPackage are never touched, so adding a layer needs no ``overwrite``).

    Args:
        path: the vector file to write.
        overwrite: whether replacing is allowed.
        layers: the layers to write into a GeoPackage.
        other: the error's second fix (after ``--overwrite``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        RtsError: an unknown format, an output (or GeoPackage layer) that exists without ``overwrite``, a GeoPackage
            open in another program, or a file GDAL cannot read as a GeoPackage.
    """
    path = Path(path)
    if driver_for(path) != "GPKG" or not path.exists():
        return check_output(path, overwrite)
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:  # checked before anything opens the file
        # SQLite keeps recent edits in the -wal file while the GeoPackage is open (QGIS): a copy would lose them
        raise RtsError("the GeoPackage is open in another program (it has a -wal file with pages not yet in the "
                       "file)", path=path,
                       fix="close it in QGIS (or remove its layers from the project), then run again")
    have = {n.casefold() for n in gpkg_layers(path)}  # GeoPackage layer names ignore case
    taken = [name for name in layers if name.casefold() in have]
    if taken and not overwrite:
        raise RtsError(f"the GeoPackage already has a layer {', '.join(repr(t) for t in taken)}", path=path,
                       fix="pass --overwrite to replace that layer (the GeoPackage's other layers are kept), "
                           f"{other}")
    check_writable(path)  # the layers go into a copy beside it, renamed over it
    return path


def write_layers(layers: dict[str, Any], path: str | Path, *, overwrite: bool = False,
                 geometry_type: str | None = None) -> Path:
    """Write GeoDataFrames as layers ``{name: gdf}`` of a GeoPackage, atomically.

    A new file is built under a temporary name and renamed. Into an existing GeoPackage, the layers are
    written into a copy, which then replaces the file: only these layers change, every other layer (an
    analyst's ``aoi``, QGIS styles and projects stored in the file) is kept, and an interrupted run leaves
    the file as it was. Replacing a layer that exists needs ``overwrite``. Writers of one file take turns
    (:func:`rtscli.io.atomic.output_lock`, from the check of the layers to the rename): two runs adding
    different layers at once both keep theirs.

    Args:
        layers: ``{layer name: GeoDataFrame}``.
        path: the GeoPackage.
        overwrite: replace layers of these names that exist.
        geometry_type: the OGR geometry type of every layer (e.g. ``MultiPolygon``); None: GDAL's guess.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        RtsError: a layer exists without ``overwrite`` (also: written by another process while this one waited for
            the file's lock), another process holds the lock too long, or GDAL or the file system refuses the write.
    """
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

    path = Path(path)
    check_vector_output(path, overwrite, list(layers))  # before waiting for the lock: a clash is told at once
    try:
        # one writer at a time: another run adding its layer to this file waits, then copies the file with it
        with output_lock(path):
            check_vector_output(path, overwrite, list(layers))  # again: the file may have changed while waiting
            with atomic_file(path, overwrite=True) as tmp:  # only the named layers are replaced (checked above)
                if path.exists():
                    shutil.copy2(path, tmp)
                have = {n.casefold(): n for n in gpkg_layers(tmp)} if tmp.exists() else {}
                for name, gdf in layers.items():
                    kw = {"geometry_type": geometry_type} if geometry_type else {}
                    # an existing layer of this name (in any case) is replaced; GDAL would refuse a case-only clash
                    gdf.to_file(tmp, driver="GPKG", layer=have.get(name.casefold(), name), **kw)
    except OSError as exc:  # disk full, no permission: one line naming the file
        code = os_errno(exc)
        raise RtsError(f"cannot write the GeoPackage ({exc.strerror or exc})", path=path,
                       fix=os_fix(code) if code is not None else "check the free space and the permissions of its "
                                                                 "folder") from None
    except (DataSourceError, DataLayerError, FieldError, GeometryError) as exc:  # GDAL refused: one line
        text = " ".join(str(exc).split())[:200]
        code = os_errno(exc)  # GDAL's message says "Permission denied", "No space left on device" ...
        if code is None:
            check_writable(path)  # the folder became unwritable (or full) meanwhile: say that, not "check the file"
        raise RtsError(f"cannot write layer(s) {', '.join(layers)} ({text})", path=path,
                       fix=os_fix(code) if code is not None else "check the file (open it in QGIS) or write to a new "
                                                                 ".gpkg"
                       ) from None
    return path


def write_vector(gdf: Any, path: str | Path, *, layer: str = "rts", overwrite: bool = False) -> Path:
    """Write a GeoDataFrame by extension, atomically (temporary name, then rename).

    A GeoPackage gets the layer ``layer``; an existing GeoPackage keeps its other layers
    (:func:`write_layers`). Other formats hold one layer: the file is replaced (with ``overwrite``).

    Args:
        gdf: the GeoDataFrame.
        path: the file (.gpkg, .shp, .geojson/.json, .parquet/.geoparquet).
        layer: the GeoPackage layer.
        overwrite: replace an existing file (a GeoPackage: an existing ``layer``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        RtsError: an unknown format, an existing output without ``overwrite``, or a failed write.
    """
    path = Path(path)
    driver = driver_for(path)
    if driver == "GPKG":
        return write_layers({layer: gdf}, path, overwrite=overwrite)
    check_output(path, overwrite)
    with output_lock(path):  # one writer at a time; the check is repeated under the lock
        if driver == "ESRI Shapefile":  # several files (.shp, .dbf, .shx, .prj ...): built in a folder, then moved
            check_output(path, overwrite)
            tmpdir = tmp_sibling(path)
            tmpdir.mkdir()
            try:
                gdf.to_file(tmpdir / path.name, driver=driver)
                stem = path.stem
                for f in tmpdir.iterdir():
                    os.replace(f, path.parent / f.name.replace(f.stem, stem, 1))
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            return path
        with atomic_file(path, overwrite=overwrite) as tmp:
            if driver == "Parquet":
                gdf.to_parquet(tmp)
            else:  # the layer (GeoJSON's "name") is the file's own name, not the temporary one
                gdf.to_file(tmp, driver=driver, layer=path.stem)
    return path
