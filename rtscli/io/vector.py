"""Vector labels in, polygons out: any OGR format by extension, any CRS (reprojected explicitly)."""

from __future__ import annotations

import logging
import os

import numpy as np
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rtscli.errors import RtsError
from rtscli.io.atomic import check_output
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


#: two label polygons with at least this IoU are the same slump drawn twice
DUPLICATE_IOU = 0.9
#: pairs overlapping this much (but less than DUPLICATE_IOU) are reported: labels of several dates stacked?
OVERLAP_IOU = 0.5


def duplicate_labels(geoms) -> tuple[list[int], int]:
    """Near-identical label polygons: returns (positions of the features that repeat an earlier one,
    number of other pairs overlapping by IoU >= OVERLAP_IOU).

    A feature whose IoU with an earlier kept feature reaches :data:`DUPLICATE_IOU` repeats it (the same
    slump drawn twice, or the same outline at two dates); the first in file order is the one kept.
    """
    from shapely import STRtree

    geoms = list(geoms)
    if len(geoms) < 2:
        return [], 0
    left, right = STRtree(geoms).query(geoms, predicate="intersects")
    dropped: set[int] = set()
    overlapping = 0
    for a, b in sorted((a, b) for a, b in zip(left.tolist(), right.tolist(), strict=True) if a < b):
        inter = geoms[a].intersection(geoms[b]).area
        if inter <= 0:
            continue
        iou = inter / max(geoms[a].area + geoms[b].area - inter, 1e-12)
        if iou >= DUPLICATE_IOU:
            if a not in dropped:
                dropped.add(b)
        elif iou >= OVERLAP_IOU:
            overlapping += 1
    return sorted(dropped), overlapping


#: Shapefile field names (at most 10 characters) of the rts predict fields that are longer
SHP_NAMES = {"perimeter_m": "perim_m", "touches_nodata": "touch_nd", "touches_edge": "touch_edge"}
#: the layer suffix of a map's coverage (``rts predict`` writes ``rts_footprint`` beside ``rts``)
FOOTPRINT_SUFFIX = "_footprint"
#: the ARTS data set's TrainClass field (and the Shapefile abbreviation of the ARTS tutorial)
TRAIN_CLASS = ("TrainClass", "TrnClss")


def footprint_layer(layer: str) -> str:
    """The name of the layer that holds a map's footprint (``rts_footprint`` beside ``rts``)."""
    return f"{layer}{FOOTPRINT_SUFFIX}"


def column(gdf, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a column of ``gdf`` (case-insensitive), or None."""
    lower = {str(c).lower(): c for c in gdf.columns}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def negatives_of(gdf, path: Path) -> np.ndarray | None:
    """Which features of a label layer are ARTS background areas (``TrainClass`` ``Negative``, case and spaces
    ignored); None when the layer has no TrainClass field. Raises :class:`RtsError` for a value that is neither
    Positive nor Negative (ARTS: github.com/whrc/ARTS, Metadata_Format_Summary.csv)."""
    c = column(gdf, TRAIN_CLASS)
    if c is None:
        return None
    v = gdf[c].astype(str).str.strip().str.lower()
    bad = sorted(set(v) - {"positive", "negative"})
    if bad:
        raise RtsError(f"field {c} holds {bad[0]!r}; ARTS uses Positive and Negative", path=path,
                       fix="fix those features' TrainClass")
    return v.eq("negative").to_numpy()


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
TRUTH = VectorRole("--truth file", "save that layer as a file of its own (ogr2ogr truth.gpkg FILE LAYER)",
                   "save it with its CRS (ogr2ogr -a_srs EPSG:XXXX truth.gpkg FILE)", empty_ok=True)


def read_polygons(path: str | Path, target_crs, *, assume_crs=None, layer: str | None = None,
                  role: VectorRole = LABELS):
    """Read polygon labels, repair invalid ones, reproject to ``target_crs``.

    Returns ``(GeoDataFrame, LabelReport)``. One row per feature; a multipolygon feature stays one
    label. Invalid geometries are repaired with ``make_valid`` and counted; non-polygon and empty
    features are dropped and counted (near-identical ones are :func:`read_labels`' business). Reprojection is
    explicit and logged. ``role`` words the errors (a missing file, several layers, no CRS, no features).
    """
    import geopandas as gpd
    import shapely

    path = Path(path)
    if not path.exists():
        raise RtsError(f"{role.what} not found", path=path, fix="check the path")
    layers = _layers(path)
    if layer is not None and layers and layer not in layers:
        raise RtsError(f"no layer {layer!r} in the {role.what} (it has {', '.join(layers)})", path=path,
                       fix="pass one of them to --labels-layer")
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
        src = crs_name(gdf.crs)
        gdf = gdf.to_crs(target_crs)
        finite = np.isfinite(gdf.total_bounds).all() if len(gdf) else True
        if not finite:
            raise RtsError(f"labels cannot be reprojected from {src} to the raster CRS {crs_name(target_crs)} "
                           "(coordinates become infinite): their stated CRS is probably wrong", path=path,
                           fix="check the label file's CRS (or pass --labels-crs)")
        rep.reprojected_from = src
        log.info("reprojecting labels %s from %s to the raster CRS %s", path.name, src, crs_name(target_crs))
    return gdf, rep


def read_labels(paths: list[Path], target_crs, *, assume_crs=None, dedupe: bool = True, layer: str | None = None):
    """Read one or several label files (one per site, in any CRS each) as one layer in ``target_crs``.

    Each file is read by :func:`read_polygons` (repaired, reprojected explicitly and logged). Every feature keeps
    where it came from: ``label_file`` (the file's path) and ``source_id`` (its row in its file, counted from 0
    as GIS software does; ``"NAME#ROW"`` when there are several files), which the instances carry.
    ``layer`` applies to the files that have several layers.
    A file with an ARTS ``TrainClass`` field gives its ``Negative`` features as background areas: column
    ``negative`` true (chips there are kept as negatives; they never become slumps).
    Near-identical slump features are found across all files (:func:`duplicate_labels`). Returns
    ``(GeoDataFrame, LabelReport)`` with the counts of all files (``reprojected_from``: one entry per file).
    """
    import geopandas as gpd
    import pandas as pd

    frames, total = [], LabelReport()
    sources = []
    for path in paths:
        this_layer = layer if layer is None or len(paths) == 1 or len(_layers(Path(path))) > 1 else None
        gdf, rep = read_polygons(path, target_crs, assume_crs=assume_crs, layer=this_layer)
        rows = [int(i) for i in gdf.index]  # the file's own row numbers (dropped features leave gaps)
        ids = rows if len(paths) == 1 else [f"{Path(path).name}#{i}" for i in rows]
        neg = negatives_of(gdf, Path(path))
        neg = np.zeros(len(gdf), bool) if neg is None else neg
        total.negatives += int(neg.sum())
        frames.append(gdf.assign(label_file=str(path), source_id=ids, negative=neg)[
            ["label_file", "source_id", "negative", "geometry"]])
        total.features += rep.features
        total.repaired += rep.repaired
        total.empty += rep.empty
        total.not_polygon += rep.not_polygon
        total.notes += rep.notes
        sources.append(rep.reprojected_from)
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    total.reprojected_from = sources[0] if len(paths) == 1 else ", ".join(str(s) for s in sources)
    slumps = np.flatnonzero(~gdf["negative"].to_numpy(bool))  # background areas are not slumps drawn twice
    found, total.overlapping_pairs = duplicate_labels(gdf.geometry.values[slumps])
    repeats = [int(slumps[k]) for k in found]
    total.duplicates = len(repeats)
    if repeats and dedupe:
        gdf = gdf.drop(index=gdf.index[repeats])
        total.duplicates_dropped = len(repeats)
    return gdf, total


def _layers(path: Path) -> list[str]:
    """The layers of a vector file (empty when GDAL cannot list them: reading it then gives the error)."""
    try:
        return gpkg_layers(path)
    except RtsError:
        return []


def polygonal(geom):
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
        flat = []
        for p in parts:
            flat.extend(p.geoms if isinstance(p, MultiPolygon) else [p])
        return flat[0] if len(flat) == 1 else MultiPolygon(flat)
    return None


def driver_for(path: Path) -> str:
    try:
        return VECTOR_DRIVERS[path.suffix.lower()]
    except KeyError:
        raise RtsError(
            f"unknown vector format {path.suffix!r}",
            path=path,
            fix="use .gpkg, .shp, .geojson or .parquet",
        ) from None


def gpkg_layers(path: Path) -> list[str]:
    """The layer names of an existing GeoPackage (or any vector file); a clear error when GDAL cannot read it."""
    import pyogrio

    try:
        return [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    except Exception as exc:  # pyogrio raises DataSourceError for a file that is not a GeoPackage
        raise RtsError(f"exists but is not a GeoPackage GDAL can read ({' '.join(str(exc).split())[:120]})",
                       path=path, fix="choose another output, or move that file away") from None


def check_vector_output(path: str | Path, overwrite: bool, layers: list[str] | tuple[str, ...] = ("rts",),
                        other: str = "or choose another --layer") -> Path:
    """Fail early (before any work) when writing ``layers`` to ``path`` would replace something without
    ``overwrite``: an existing file, or, for a GeoPackage, an existing layer of one of those names (the
    other layers of a GeoPackage are never touched, so adding a layer needs no ``overwrite``)."""
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
    return path


def write_layers(layers: dict, path: str | Path, *, overwrite: bool = False, geometry_type: str | None = None) -> Path:
    """Write GeoDataFrames as layers ``{name: gdf}`` of a GeoPackage, atomically.

    A new file is built under a temporary name and renamed. Into an existing GeoPackage, the layers are
    written into a copy, which then replaces the file: only these layers change, every other layer (an
    analyst's ``aoi``, QGIS styles and projects stored in the file) is kept, and an interrupted run leaves
    the file as it was. Replacing a layer that exists needs ``overwrite``.
    """
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

    path = Path(path)
    check_vector_output(path, overwrite, list(layers))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        if path.exists():
            shutil.copy2(path, tmp)
        have = {n.casefold(): n for n in gpkg_layers(tmp)} if tmp.exists() else {}
        for name, gdf in layers.items():
            kw = {"geometry_type": geometry_type} if geometry_type else {}
            # an existing layer of this name (in any case) is replaced; GDAL would refuse a case-only clash
            gdf.to_file(tmp, driver="GPKG", layer=have.get(name.casefold(), name), **kw)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, no permission: one line naming the file
        raise RtsError(f"cannot write the GeoPackage ({exc.strerror or exc})", path=path,
                       fix="check the free space and the permissions of its folder") from None
    except (DataSourceError, DataLayerError, FieldError, GeometryError) as exc:  # GDAL refused: one line
        raise RtsError(f"cannot write layer(s) {', '.join(layers)} ({' '.join(str(exc).split())[:200]})",
                       path=path, fix="check the file (ogrinfo) or write to a new .gpkg") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_vector(gdf, path: str | Path, *, layer: str = "rts", overwrite: bool = False) -> Path:
    """Write a GeoDataFrame by extension, atomically (temporary name, then rename).

    A GeoPackage gets the layer ``layer``; an existing GeoPackage keeps its other layers
    (:func:`write_layers`). Other formats hold one layer: the file is replaced (with ``overwrite``).
    """
    path = Path(path)
    driver = driver_for(path)
    if driver == "GPKG":
        return write_layers({layer: gdf}, path, overwrite=overwrite)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    if driver == "ESRI Shapefile":
        tmpdir = path.parent / f".{path.stem}.tmp-{tag}"
        tmpdir.mkdir()
        try:
            gdf.to_file(tmpdir / path.name, driver=driver)
            stem = path.stem
            for f in tmpdir.iterdir():
                os.replace(f, path.parent / f.name.replace(f.stem, stem, 1))
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return path
    tmp = path.with_name(f".{path.stem}.tmp-{tag}{path.suffix}")
    try:
        if driver == "Parquet":
            gdf.to_parquet(tmp)
        else:  # the layer (GeoJSON's "name") is the file's own name, not the temporary one
            gdf.to_file(tmp, driver=driver, layer=path.stem)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
