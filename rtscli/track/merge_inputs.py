"""The per-scene maps that ``rts merge`` joins: found, checked and described without reading their polygons.

Inputs are files, folders (the outputs a folder's ``manifest.json`` lists, else every vector file in it, as
``rts track`` reads them: :func:`rtscli.track.run.expand`) or globs (``'maps/*.gpkg'``, quoted so that the
shell does not expand thousands of names). Each map is described by :class:`MapInfo` from its header alone
(pyogrio ``read_info``; the GeoParquet ``geo`` metadata): its layer, CRS, fields, extent, footprint layer and
date. The polygons themselves are read later, block by block (:func:`read_features`), so that memory does not
grow with the number of maps' polygons.

Dates come from the ``acquired`` field of ``rts predict`` outputs (a STAC item's datetime), else their ``scene``
field, else the file name, else the folder name
(:func:`rtscli.track.dates.find_date`); a year alone counts as 1 July, and a map without a date is merged
with empty dates (logged).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError, set_vector_crs
from rtscli.io.schema import SHP_NAMES, column, footprint_layer
from rtscli.track.merge_schema import is_merged, parquet_coverage

log = logging.getLogger("rtscli")

PARQUET = (".parquet", ".geoparquet")
#: flag columns of ``rts predict`` outputs (and their Shapefile names)
EDGE = ("touches_edge", SHP_NAMES["touches_edge"])
NODATA = ("touches_nodata", SHP_NAMES["touches_nodata"])


@dataclass
class MapInfo:
    """One per-scene map, from its header (no polygon read)."""

    index: int  # position in the sorted inputs: breaks ties the same way in every block
    path: Path
    layer: str | None  # the GeoPackage layer of slumps (None: the file's only layer)
    crs: Any  # pyproj CRS
    columns: dict[str, str]  # rts's name -> the file's name, for score, model, touches_edge, touches_nodata, scene
    features: int
    bounds: tuple[float, float, float, float] | None  # own CRS: polygons and footprint together; None: empty
    footprint: str | Path | None  # the footprint layer name (GeoPackage) or file (GeoParquet); None: none
    scene: str = ""
    date: date | None = None
    date_text: str = ""  # as the name gave it: YYYY-MM-DD, or the year alone
    feature_bounds: tuple[float, float, float, float] | None = None  # own CRS: the polygons alone
    work_bounds: tuple[float, float, float, float] | None = None  # in the working CRS (set by :func:`to_working`)
    work_features: tuple[float, float, float, float] | None = None  # the polygons' extent in the working CRS


def expand_inputs(inputs: list[Path], out: Path) -> list[Path]:
    """Every map file of ``inputs`` (files, folders, globs), sorted and unique; the output is refused as an input.

    Args:
        inputs: files, folders of ``rts predict`` outputs (or of any vector files), or glob patterns.
        out: the merged map to be written.

    Returns:
        The map files, sorted by path.

    Raises:
        RtsError: a path or glob that matches nothing, a file given twice, a folder without maps, or the output
            among the inputs.
    """
    from rtscli.track.run import expand

    paths: list[Path] = []
    for p in inputs:
        text = str(p)
        if not Path(p).exists() and glob.has_magic(text):
            found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            if not found:
                raise RtsError("the pattern matches no file", path=text,
                               fix="check the pattern (quote it: 'maps/*.gpkg')")
            paths += found
        else:
            paths.append(Path(p))
    files = [f for group in expand(paths) for f in group]
    resolved = Path(out).resolve()
    for f in files:
        if f.resolve() == resolved:
            raise RtsError("the output is one of the maps to merge", path=f,
                           fix="write the merged map outside the folder of per-scene maps (-o region.parquet)")
    return sorted(files, key=lambda f: str(f))


def describe(path: Path, index: int, layer: str | None) -> MapInfo:
    """A map's :class:`MapInfo` from its header, its footprint's and its first feature's scene name.

    Raises:
        RtsError: an unreadable file, an unknown ``layer``, several layers and no ``layer``, or no CRS.
    """
    from rtscli.track.maps import pick_layer

    if path.suffix.lower() in PARQUET:
        info = _parquet_info(path)
        name = None
        fp: str | Path | None = parquet_coverage(path) if parquet_coverage(path).exists() else None
        fp_bounds = _parquet_info(parquet_coverage(path))["total_bounds"] if fp is not None else None
    else:
        name = pick_layer(path, layer)
        info = _ogr_info(path, name)
        fp, fp_bounds = _footprint(path, name)
    if not info["crs"]:
        raise RtsError("the map has no CRS", path=path, fix=set_vector_crs(path))
    fields = [str(f) for f in info["fields"]]
    if is_merged(fields):
        raise RtsError("this is an rts merge output, not a per-scene map", path=path,
                       fix="leave it out of the maps to merge (write merged maps outside the folder of per-scene maps)")
    cols = {key: c for key, names in (("score", ("score",)), ("model", ("model",)), ("touches_edge", EDGE),
                                      ("touches_nodata", NODATA), ("scene", ("scene",)), ("acquired", ("acquired",)))
            if (c := column(_Columns(fields), names)) is not None}
    boxes = [b for b in (info["total_bounds"], fp_bounds) if b is not None and np.isfinite(b).all()]
    bounds = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
              max(b[3] for b in boxes)) if boxes else None
    m = MapInfo(index, path, name, crs_of(str(info["crs"])), cols, int(info["features"]), bounds, fp)
    if info["total_bounds"] is not None and np.isfinite(info["total_bounds"]).all() and m.features:
        m.feature_bounds = tuple(float(v) for v in info["total_bounds"])  # type: ignore[assignment]
    m.scene = _scene_name(m)
    _date(m)
    return m


class _Columns:
    """A list of field names in the shape :func:`rtscli.io.schema.column` reads (``.columns``)."""

    def __init__(self, names: list[str]) -> None:
        self.columns = names


def _ogr_info(path: Path, layer: str | None) -> dict:
    import pyogrio

    try:
        return dict(pyogrio.read_info(path, layer=layer, force_total_bounds=True))
    except Exception as exc:  # pyogrio's DataSourceError and friends: one line naming the file
        raise RtsError(f"cannot read the map ({' '.join(str(exc).split())[:160]})", path=path,
                       fix="check that it is a vector file (open it in QGIS), or leave it out") from None


def _parquet_info(path: Path) -> dict:
    """``read_info``'s keys for a GeoParquet file, from its ``geo`` metadata and row count (no rows read)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        geo = json.loads((pf.metadata.metadata or {}).get(b"geo", b"{}"))
        col = geo.get("columns", {}).get(geo.get("primary_column", "geometry"), {})
    except Exception as exc:  # not a Parquet file, or a damaged one
        raise RtsError(f"cannot read the map as GeoParquet ({' '.join(str(exc).split())[:160]})", path=path,
                       fix="check that it is a GeoParquet file, or leave it out") from None
    if not geo:
        raise RtsError("the Parquet file has no 'geo' metadata (not GeoParquet)", path=path,
                       fix="write it with geopandas (GeoDataFrame.to_parquet), or pass a GeoPackage")
    crs = col.get("crs", "OGC:CRS84")  # GeoParquet: a missing crs means OGC:CRS84, null means unknown
    bbox = col.get("bbox")
    return {"crs": json.dumps(crs) if isinstance(crs, dict) else crs, "fields": pf.schema_arrow.names,
            "features": pf.metadata.num_rows,
            "total_bounds": tuple(bbox[:4]) if bbox and pf.metadata.num_rows else None}


def _footprint(path: Path, layer: str | None) -> tuple[str | None, Any]:
    """The ``<layer>_footprint`` layer of a GeoPackage and its extent, or ``(None, None)``."""
    if path.suffix.lower() != ".gpkg" or layer is None:
        return None, None
    import pyogrio

    name = footprint_layer(layer)
    try:
        return name, pyogrio.read_info(path, layer=name, force_total_bounds=True)["total_bounds"]
    except pyogrio.errors.DataLayerError:  # no such layer (GDAL finds layers whatever their case)
        return None, None
    except Exception as exc:
        raise RtsError(f"cannot read its footprint layer {name!r} ({' '.join(str(exc).split())[:120]})", path=path,
                       fix="write the map again (rts predict --overwrite), or leave it out") from None


def _first_value(m: MapInfo, key: str) -> str | None:
    """The first feature's value of the field ``m.columns[key]`` as text (a per-scene map holds one scene, one
    date), or None."""
    if key not in m.columns or not m.features or m.path.suffix.lower() in PARQUET:
        return None
    import pyogrio

    try:
        df = pyogrio.read_dataframe(m.path, layer=m.layer, columns=[m.columns[key]], read_geometry=False,
                                    max_features=1)
    except Exception:  # a label only: the file's name will do
        return None
    value = str(df.iloc[0, 0]) if len(df) else ""
    return value if value and value not in ("None", "nan", "NaT") else None


def _scene_name(m: MapInfo) -> str:
    """The scene a map was made from: its features' ``scene`` field (``rts predict``), else the file's stem."""
    return _first_value(m, "scene") or m.path.stem


def _date(m: MapInfo) -> None:
    from rtscli.track.dates import find_date, parse_date

    acquired = _first_value(m, "acquired")  # rts predict of a STAC item: the item's datetime
    if acquired is not None:
        try:
            d = parse_date(acquired)
        except ValueError:
            d = None
        if d is not None:
            m.date, m.date_text = d, d.isoformat()
            return
    for text in (m.scene, m.path.stem, m.path.parent.name):
        f = find_date(text)
        if f is not None:
            m.date = f[0]
            m.date_text = str(f[0].year) if f[1] else f[0].isoformat()
            return


# --- one working CRS ---------------------------------------------------------------------------------------------


def working_crs(maps: list[MapInfo]) -> Any:
    """A Lambert azimuthal equal-area CRS (WGS 84) centred on the maps' extents (as ``rts track`` takes).

    Areas of polygons and of their overlaps are true in it (equal-area: shapes are distorted far from the centre
    but every area ratio is kept), so one CRS serves a region as large as the pan-Arctic domain.
    """

    pts = []
    for m in maps:
        if m.bounds is None:
            continue
        x, y = (m.bounds[0] + m.bounds[2]) / 2, (m.bounds[1] + m.bounds[3]) / 2
        t, _ = _mover(m.crs, crs_of("EPSG:4326"))
        lon, lat = t.transform(x, y)
        if np.isfinite(lon) and np.isfinite(lat):
            pts.append((lon, lat))
    from rtscli.geometry.measure import centred_equal_area_crs

    return centred_equal_area_crs(np.asarray(pts) if pts else np.empty((0, 2)))


@functools.lru_cache(maxsize=256)
def crs_of(text: str) -> Any:
    """The pyproj CRS of ``text`` (an authority code, WKT or PROJJSON), one object per text: maps that share a CRS
    share the object, so that reprojections between them are looked up, not worked out, per block."""
    from pyproj import CRS

    return CRS.from_user_input(text)


#: (id(src), id(dst)) -> (src, dst, transformer or None when equal, longest edge kept): the CRS objects are held,
#: so their ids are not reused
_MOVES: dict[tuple[int, int], tuple[Any, Any, Any, float]] = {}


def _mover(src: Any, dst: Any) -> tuple[Any, float]:
    from pyproj import CRS, Transformer

    from rtscli.geometry.footprint import MAX_EDGE_DEG, MAX_EDGE_M

    hit = _MOVES.get((id(src), id(dst)))
    if hit is None or hit[0] is not src or hit[1] is not dst:
        s, d = CRS.from_user_input(src), CRS.from_user_input(dst)
        t = None if s.equals(d) else Transformer.from_crs(s, d, always_xy=True)
        hit = (src, dst, t, MAX_EDGE_DEG if s.is_geographic else MAX_EDGE_M)
        if len(_MOVES) > 1024:  # CRSs given as new text each time: do not grow without bound
            _MOVES.clear()
        _MOVES[(id(src), id(dst))] = hit
    return hit[2], hit[3]


def move(geoms: Any, src: Any, dst: Any) -> Any:
    """Geometries (a numpy object array) from ``src`` to ``dst`` (edges first cut to 1 km / 0.01 degree so that
    they follow the target's curves: :func:`rtscli.geometry.footprint.reproject`); unchanged when the CRSs are
    equal. ``src``, ``dst``: pyproj CRSs (best: the same objects each time, as :func:`crs_of` gives them)."""
    from rtscli.geometry.footprint import reproject

    t, edge = _mover(src, dst)
    if t is None or not len(geoms):
        return geoms
    return reproject(geoms, t, edge)


def to_working(maps: list[MapInfo], crs: Any) -> None:
    """Set each map's extent in the working CRS ``crs`` (its box densified, then reprojected).

    Raises:
        RtsError: a map whose extent does not fit its stated CRS (infinite coordinates after reprojection).
    """
    from shapely import bounds
    from shapely.geometry import box

    for m in maps:
        if m.bounds is None:
            continue
        b, f = bounds(move(np.asarray([box(*m.bounds), box(*(m.feature_bounds or m.bounds))], dtype=object),
                           m.crs, crs))
        if not (np.isfinite(b).all() and np.isfinite(f).all()):
            raise RtsError(f"the map's extent {tuple(round(v, 3) for v in m.bounds)} does not fit its CRS "
                           f"{m.crs.name}: its stated CRS is probably wrong", path=m.path,
                           fix=set_vector_crs(m.path).replace("its CRS", "its true CRS"))
        m.work_bounds = _padded(b)
        if m.feature_bounds is not None:
            m.work_features = _padded(f)


#: extents in the working CRS are padded by this much (m): a reprojected box's edges are chords of curves
PAD_M = 1.0


def _padded(b: Any) -> tuple[float, float, float, float]:
    return float(b[0]) - PAD_M, float(b[1]) - PAD_M, float(b[2]) + PAD_M, float(b[3]) + PAD_M


def output_crs(maps: list[MapInfo], given: Any | None) -> Any:
    """The CRS of the merged map: ``given`` (``--to-crs``), else the maps' own when they share one, else the one
    most maps use (logged: the others are reprojected to it; a region across UTM zones wants ``--to-crs``)."""
    from collections import Counter

    from rtscli.io.raster import crs_name

    if given is not None:
        return given
    if not maps:
        raise RtsError("no map to merge", fix="pass per-scene maps (rts predict outputs)")
    counts = Counter(m.crs.to_wkt() for m in maps)
    wkt, n = counts.most_common(1)[0]
    crs = next(m.crs for m in maps if m.crs.to_wkt() == wkt)
    if len(counts) > 1:
        others = ", ".join(f"{crs_name(next(m.crs for m in maps if m.crs.to_wkt() == w))} ({k})"
                           for w, k in counts.most_common()[1:4])
        log.warning("the maps are in %d CRSs: the merged map is in %s (%d of %d maps); reprojected: %s%s. Pass "
                    "--to-crs EPSG:3413 (or another) for a region across zones", len(counts), crs_name(crs), n,
                    len(maps), others, ", ..." if len(counts) > 4 else "")
    return crs


# --- reading by region ---------------------------------------------------------------------------------------------


def region_in(m: MapInfo, region: Any, crs: Any) -> tuple[float, float, float, float]:
    """The box, in ``m``'s own CRS, that holds the working-CRS polygon ``region`` (densified edges)."""
    from shapely import bounds

    b = bounds(move(np.asarray([region], dtype=object), crs, m.crs)[0])
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


@dataclass
class Features:
    """Features of one map read for a region: shapely geometries (own CRS), feature ids and the fields of
    :attr:`MapInfo.columns` (numpy arrays, under rts's names)."""

    geometry: np.ndarray
    fid: np.ndarray
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.geometry)


def read_features(m: MapInfo, bbox: tuple[float, float, float, float]) -> Features:
    """The features of ``m`` whose extent reaches ``bbox`` (its own CRS), with their feature ids (GeoPackage fid;
    row number of other formats). A GeoPackage is read through its spatial index (pyogrio's numpy API: no data
    frame is built); a GeoParquet map (one scene: small) is read whole and filtered.

    Raises:
        RtsError: the file cannot be read (it changed or was damaged since it was described).
    """
    import shapely

    keys = [k for k in m.columns if k != "scene"]
    cols = [m.columns[k] for k in keys]
    try:
        if m.path.suffix.lower() in PARQUET:
            import geopandas as gpd

            gdf = gpd.read_parquet(m.path, columns=[*cols, _parquet_geometry(m.path)])
            geoms = np.asarray(gdf.geometry.values, dtype=object)
            hit = np.flatnonzero(shapely.intersects(geoms, shapely.box(*bbox)))
            return Features(geoms[hit], hit.astype(np.int64),
                            {k: gdf[c].to_numpy()[hit] for k, c in zip(keys, cols, strict=True)})
        import pyogrio.raw

        _, fids, wkb, values = pyogrio.raw.read(m.path, layer=m.layer, columns=cols, bbox=bbox, return_fids=True)
    except Exception as exc:
        raise RtsError(f"cannot read the map's polygons ({' '.join(str(exc).split())[:160]})", path=m.path,
                       fix="check the file (open it in QGIS), or leave it out") from None
    geoms = shapely.from_wkb(wkb, on_invalid="ignore") if wkb is not None else np.zeros(0, object)
    return Features(np.asarray(geoms, dtype=object), np.asarray(fids, np.int64), dict(zip(keys, values, strict=True)))


def read_footprint(m: MapInfo) -> Any | None:
    """The union of ``m``'s footprint (valid pixels; quality masks left out by ``rts predict``), own CRS; None
    when it has none or it is empty.

    Raises:
        RtsError: the footprint cannot be read.
    """
    import pyogrio.raw
    import shapely

    if m.footprint is None:
        return None
    try:
        if isinstance(m.footprint, Path):
            import geopandas as gpd

            fp = gpd.read_parquet(m.footprint)
            geoms, crs = np.asarray(fp.geometry.values, dtype=object), fp.crs
        else:
            meta, _, wkb, _ = pyogrio.raw.read(m.path, layer=m.footprint, columns=[])
            geoms, crs = shapely.from_wkb(wkb), meta["crs"]
    except Exception as exc:
        raise RtsError(f"cannot read its footprint ({' '.join(str(exc).split())[:120]})", path=m.path,
                       fix="write the map again (rts predict --overwrite), or leave it out") from None
    valid = np.asarray([g for g in shapely.make_valid(geoms) if g is not None and not g.is_empty], dtype=object)
    if not len(valid):
        return None
    if crs is not None:
        valid = move(valid, crs_of(crs) if isinstance(crs, str) else crs, m.crs)
    return shapely.union_all(valid)


def _parquet_geometry(path: Path) -> str:
    import pyarrow.parquet as pq

    geo = json.loads((pq.ParquetFile(path).metadata.metadata or {}).get(b"geo", b"{}"))
    return str(geo.get("primary_column", "geometry"))
