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
    notes: list[str] = field(default_factory=list)


def read_polygons(path: str | Path, target_crs, *, assume_crs=None):
    """Read polygon labels, repair invalid ones, reproject to ``target_crs``.

    Returns ``(GeoDataFrame, LabelReport)``. One row per feature; a multipolygon feature stays one
    label. Invalid geometries are repaired with ``make_valid`` and counted; non-polygon and empty
    features are dropped and counted. Reprojection is explicit and logged.
    """
    import geopandas as gpd
    import shapely

    path = Path(path)
    if not path.exists():
        raise RtsError("label file not found", path=path, fix="check the path")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RtsError(
            f"cannot read vector labels ({first})",
            path=path,
            fix="pass a GeoPackage, shapefile or GeoJSON",
        ) from None
    if not isinstance(gdf, gpd.GeoDataFrame) or len(gdf) == 0:
        raise RtsError("label file has no features", path=path, fix="check that it is the right file and layer")
    rep = LabelReport(features=len(gdf))
    if gdf.crs is None:
        if assume_crs is None:
            raise RtsError(
                "label file has no CRS",
                path=path,
                fix="pass --labels-crs EPSG:XXXX, or save the file with its CRS",
            )
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
        src = gdf.crs.to_string()
        gdf = gdf.to_crs(target_crs)
        finite = np.isfinite(gdf.total_bounds).all() if len(gdf) else True
        if not finite:
            raise RtsError(f"labels cannot be reprojected from {src} to the raster CRS (coordinates become "
                           "infinite): their stated CRS is probably wrong", path=path,
                           fix="check the label file's CRS (or pass --labels-crs)")
        rep.reprojected_from = src
        log.info("reprojecting labels %s from %s to the raster CRS %s", path.name, src, target_crs)
    return gdf, rep


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


def write_vector(gdf, path: str | Path, *, layer: str = "rts", overwrite: bool = False) -> Path:
    """Write a GeoDataFrame by extension, atomically (temporary name, then rename)."""
    path = Path(path)
    driver = driver_for(path)
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
        elif driver == "GPKG":
            gdf.to_file(tmp, driver=driver, layer=layer)
        else:
            gdf.to_file(tmp, driver=driver)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
