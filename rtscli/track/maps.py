"""Slump maps of several dates, read into one equal-area frame for ``rts track``.

Each input is a polygon layer (an ``rts predict`` output, expert labels, an ARTS file; any OGR format,
any CRS). :func:`read_map` finds its layer, the date of every feature (``--dates``, a date field, an
ARTS ``BaseMapDate``, the ``scene`` name of ``rts predict`` outputs, or the file name), the
``touches_edge``/``touches_nodata`` flags, ``score`` and ``model`` of ``rts predict``, and its coverage: the
``<layer>_footprint`` layer that ``rts predict`` writes beside its polygons. With ``--dates``, the dates the
map carries itself (an ARTS ``BaseMapDate``, scene names, the file or folder name) are kept in
:attr:`SlumpMap.carried`, so that ``rts track`` can say where they disagree. :func:`load_maps` takes every map to one
Lambert azimuthal equal-area CRS centred on the data (areas of overlap and distances are true there to
better than 0.1 % within about 100 km of the centre), drops slivers below ``min_area`` (true m2), and
groups the polygons by date (:class:`DateFrame`); the same slump mapped twice at one date (overlapping
scenes) becomes one polygon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError, set_vector_crs
from rtscli.geometry.footprint import to_crs
from rtscli.geometry.polygons import overlap, union_root
from rtscli.data.labels import negatives_of
from rtscli.io.schema import FOOTPRINT_SUFFIX, SHP_NAMES, column
from rtscli.track.dates import dates_in, find_date, parse_date
from rtscli.track.merge_schema import is_merged, parquet_coverage

log = logging.getLogger("rtscli")

#: flag columns of ``rts predict`` outputs, with their Shapefile names
FLAG_COLUMNS = {k: (k, SHP_NAMES[k]) for k in ("touches_edge", "touches_nodata")}
#: ARTS field names (and the Shapefile abbreviations the ARTS tutorial uses)
BASEMAP_DATE = ("BaseMapDate", "BasMpDt")
#: what ``rts predict`` says of each polygon's source: its detection score and the model that made it
PREDICTION_COLUMNS = ("score", "model")


@dataclass
class SlumpMap:
    """One input map: its polygons (own CRS) with a ``date`` column, flags, and coverage (or None: unknown)."""

    path: Path
    layer: str | None
    gdf: Any  # GeoDataFrame: geometry, date, touches_edge, touches_nodata, source (and score, model, scene)
    coverage: Any | None  # shapely geometry in the map's CRS
    date_from: str
    negatives_dropped: int = 0
    map_date: date | None = None  # the one date of the whole map, when it has one (an empty map needs it)
    #: with --dates: where the map's own dates come from, and for each date it holds the ways it may be read
    #: (a name holding several dates gives several); None when the map carries no date
    carried: tuple[str, list[list[str]]] | None = None


@dataclass
class DateFrame:
    """Every slump polygon of one date, in the working CRS."""

    date: date
    geoms: list
    touches_edge: list[bool]
    touches_nodata: list[bool]
    sources: list[str]  # "file.gpkg#row"
    given: list[str] = field(default_factory=list)  # each polygon's date as its map wrote it (ARTS ranges stay)
    coverage: Any | None = None  # shapely geometry; None: the date's maps do not say where they looked
    files: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # rts predict's score (nan: not a prediction)
    models: list[str] = field(default_factory=list)  # rts predict's model ("": not a prediction)


def pick_layer(path: Path, layer: str | None) -> str | None:
    """The slump layer of ``path``: ``layer``, else ``rts``, else its only layer that is not a footprint."""
    from rtscli.io.vector import gpkg_layers

    if path.suffix.lower() != ".gpkg":
        return layer
    layers = gpkg_layers(path)
    if layer is not None:
        if layer not in layers:
            raise RtsError(f"no layer {layer!r} (it has {', '.join(layers)})", path=path,
                           fix="pass one of them to --layer")
        return layer
    slumps = [n for n in layers if not n.endswith(FOOTPRINT_SUFFIX)]
    if "rts" in slumps:
        return "rts"
    if len(slumps) == 1:
        return slumps[0]
    raise RtsError(f"the map has {len(slumps)} layers ({', '.join(slumps[:6])})", path=path,
                   fix="pass --layer NAME to say which holds the slumps")


def read_map(path: Path, *, given: date | None = None, date_field: str | None = None,
             layer: str | None = None) -> SlumpMap:
    """Read one map (see the module docstring). Raises :class:`RtsError` for a missing or unreadable file,
    a file without a CRS, an unknown ``--layer`` or ``--date-field``, and features whose date cannot be told."""
    from rtscli.io.vector import VectorRole, read_polygons

    path = Path(path)
    role = VectorRole("map", "pass --layer NAME to say which holds the slumps",
                      set_vector_crs(path), empty_ok=True)
    name = pick_layer(path, layer) if path.exists() else layer
    gdf, rep = read_polygons(path, None, layer=name, role=role)
    if gdf.crs is None:
        raise RtsError("the map has no CRS", path=path, fix=set_vector_crs(path))
    check_coordinates(gdf, path)
    gdf = gdf.assign(source=[f"{path.name}#{i}" for i in gdf.index]).reset_index(drop=True)
    negatives = 0
    neg = negatives_of(gdf, path)
    if neg is not None:  # an ARTS file: background (Negative) areas are not slumps
        negatives = int(neg.sum())
        gdf = gdf[~neg].reset_index(drop=True)
    done = [f"{n} {what}" for n, what in ((rep.repaired, "invalid polygon(s) repaired (make_valid)"),
                                           (rep.not_polygon, "feature(s) that are not polygons left out"),
                                           (rep.empty, "empty feature(s) left out"),
                                           (negatives, "ARTS background area(s) (TrainClass Negative) left out"))
            if n] + rep.notes
    if done:
        log.info("%s: %s", path.name, "; ".join(done))
    dates, how, given_text = _dates(path, gdf, given, date_field)
    gdf = gdf.assign(date=dates, date_given=given_text)
    one = sorted(set(dates))
    map_date = one[0] if len(one) == 1 else given
    if not len(gdf) and map_date is None:  # an empty map still says that the slumps where it looked are gone
        f = find_date(path.stem) or find_date(path.parent.name)
        if f is None:
            raise RtsError("the map has no slumps and no date in its name", path=path,
                           fix="pass --dates YYYY-MM-DD,... (one per map, in order)")
        map_date = f[0]
    for key, names in FLAG_COLUMNS.items():
        c = column(gdf, names)
        gdf[key] = _flags(gdf[c]) if c is not None else np.zeros(len(gdf), bool)
    carried = _carried(path, gdf) if given is not None else None
    if is_merged(gdf.columns):  # the scene of each outline, for ARTS's BaseMapID
        gdf["scene"] = gdf["best_scene"]
    for key in PREDICTION_COLUMNS:  # under rts's own names (a Shapefile or GeoJSON may spell them otherwise)
        c = column(gdf, (key,))
        if c is not None and c != key:
            gdf = gdf.rename(columns={c: key})
    keep = ["date", "date_given", "touches_edge", "touches_nodata", "source"] + \
        [c for c in ("scene", *PREDICTION_COLUMNS) if c in gdf]
    gdf = gdf[keep + ["geometry"]]
    return SlumpMap(path, name, gdf, _coverage(path, name, gdf.crs), how, negatives, map_date, carried)


def _carried(path: Path, gdf: Any) -> tuple[str, list[list[str]]] | None:
    """The dates a map carries itself (read as :func:`_dates` reads them when ``--dates`` is not given), to be
    compared with ``--dates``: where they come from, and for each date the ways it may be read. None when the map
    carries none."""
    c = column(gdf, BASEMAP_DATE)
    if c is not None and len(gdf):
        texts = sorted(set(_as_text(gdf[c])) - {"", "nan", "None", "NaT"})
        if texts:
            return f"ARTS field {c}", [[t] for t in texts]
    if "scene" in gdf.columns and len(gdf):
        scenes = [dates_in(str(s)) for s in gdf["scene"].unique()]
        if all(scenes):
            return "scene name", [list(x) for x in sorted({tuple(x) for x in scenes})]
    for text, how in ((path.stem, "file name"), (path.parent.name, "folder name")):
        found = dates_in(text)
        if found:
            return how, [found]
    return None


def _dates(path: Path, gdf: Any, given: date | None, date_field: str | None) -> tuple[list, str, list]:
    """The date of every feature of ``gdf``, where it came from, and each feature's date as written (an ARTS
    ``BaseMapDate`` range stays a range there)."""
    if given is not None:
        return [given] * len(gdf), "--dates", [given.isoformat()] * len(gdf)
    if date_field is not None:
        c = column(gdf, (date_field,))
        if c is None and len(gdf):
            raise RtsError(f"the map has no field {date_field!r} (it has {', '.join(map(str, gdf.columns[:12]))})",
                           path=path, fix="pass the field that holds each slump's imagery date to --date-field")
        if c is None:
            return [], f"field {date_field}", []
        return _parse_column(path, gdf, c), f"field {date_field}", _as_text(gdf[c])
    c = column(gdf, BASEMAP_DATE)
    if c is not None:
        return _parse_column(path, gdf, c), f"ARTS field {c}", _as_text(gdf[c])
    merged = _merged_dates(gdf) if is_merged(gdf.columns) and len(gdf) else None
    if merged is not None:  # an rts merge map: one date (its outlines' median), each outline's own kept as given
        return [merged[0]] * len(gdf), "rts merge (the median date of its outlines)", merged[1]
    if "acquired" in gdf.columns and len(gdf) and gdf["acquired"].notna().all():  # rts predict of a STAC item
        return _parse_column(path, gdf, "acquired"), "field acquired (the imagery's date)", _as_text(gdf["acquired"])
    if "scene" in gdf.columns and len(gdf):
        found_in = {s: find_date(str(s)) for s in gdf["scene"].unique()}
        found = {s: f for s, f in found_in.items() if f is not None}
        if len(found) == len(found_in):  # every scene name holds a date
            _year_note(path, [f for f in found.values() if f[1]])
            out = [found[s][0] for s in gdf["scene"]]
            return out, "scene name", [_written(found[s]) for s in gdf["scene"]]
    for name, how in ((path.stem, "file name"), (path.parent.name, "folder name")):
        f = find_date(name)
        if f is not None:
            _year_note(path, [f] if f[1] else [])
            return [f[0]] * len(gdf), how, [_written(f)] * len(gdf)
    raise RtsError("cannot tell the imagery date of the map (no date in its scene, file or folder name)", path=path,
                   fix="pass --dates YYYY-MM-DD,... (one per map, in order) or --date-field NAME")


def _merged_dates(gdf: Any) -> tuple[date, list[str]] | None:
    """The date of an ``rts merge`` map, the median of its outlines' ``date`` (the lower middle one), and each
    outline's date as written (an undated one gets the median); None when no outline has a date."""
    texts = _as_text(gdf["date"])
    days = []
    for t in texts:
        try:
            d = parse_date(t) if t not in ("", "nan", "None") else None
        except ValueError:
            d = None
        days.append(d)
    known = sorted(d for d in days if d is not None)
    if not known:
        return None
    mid = known[(len(known) - 1) // 2]
    return mid, [t if d is not None else mid.isoformat() for t, d in zip(texts, days, strict=True)]


def _flags(values: Any) -> np.ndarray:
    """A flag column as booleans: GeoPackage booleans and 0/1, but also text (``"false"`` is False)."""
    import pandas as pd

    if values.dtype == object:
        text = values.astype(str).str.strip().str.lower()
        return text.isin(["true", "1", "yes", "t", "y"]).to_numpy()
    return pd.Series(values).fillna(False).astype(bool).to_numpy()


def _written(found: tuple[date, bool]) -> str:
    """A date found in a name as the name gives it: ``YYYY-MM-DD``, or the year alone."""
    return str(found[0].year) if found[1] else found[0].isoformat()


def _as_text(values: Any) -> list[str]:
    """Date field values as text: ``YYYY-MM-DD`` for dates GDAL read as dates, the text itself otherwise."""
    out = []
    for v in values.tolist():
        if hasattr(v, "to_pydatetime"):
            v = v.to_pydatetime()
        out.append(v.date().isoformat() if hasattr(v, "date") and callable(v.date) else
                   v.isoformat() if hasattr(v, "isoformat") else str(v).strip())
    return out


def check_coordinates(gdf: Any, path: Path) -> None:
    """Refuse a layer whose coordinates do not fit its stated CRS (UTM metres labelled EPSG:4326, a GeoJSON
    without a CRS, which GDAL takes as longitude/latitude): they would become infinite or wrap around."""
    if not len(gdf):
        return
    from pyproj import Transformer

    from rtscli.io.raster import crs_name

    x0, y0, x1, y1 = gdf.total_bounds
    ok = np.isfinite([x0, y0, x1, y1]).all()
    if ok:
        xs, ys = [x0, x1, x0, x1], [y0, y0, y1, y1]
        lon, lat = Transformer.from_crs(gdf.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
        ok = np.isfinite(lon).all() and np.isfinite(lat).all() and (np.abs(lat) <= 90).all()
        if gdf.crs.is_geographic:
            ok = ok and -360 <= x0 and x1 <= 360 and -90 <= y0 and y1 <= 90
    if not ok:
        raise RtsError(f"the coordinates ({x0:.6g}, {y0:.6g} .. {x1:.6g}, {y1:.6g}) do not fit the map's CRS "
                       f"{crs_name(gdf.crs)}: its stated CRS is probably wrong", path=path,
                       fix=set_vector_crs(path).replace("its CRS", "its true CRS"))


def _parse_column(path: Path, gdf: Any, c: str) -> list:
    out, bad = [], []
    for i, v in enumerate(gdf[c].tolist()):
        try:
            d = parse_date(v)
        except ValueError:
            d = None
        if d is None:
            bad.append((i, v))
        out.append(d)
    if bad:
        i, v = bad[0]
        raise RtsError(f"{len(bad)} feature(s) have no readable date in field {c!r} (e.g. row {i}: {v!r})", path=path,
                       fix="fill the field with dates as YYYY-MM-DD (or YYYYMMDD, DD.MM.YYYY, a year) or ranges as "
                           "YYYY-MM-DD,YYYY-MM-DD (a comma, not a slash), or drop those features")
    return out


def _year_note(path: Path, year_only: list) -> None:
    if year_only:
        log.info("%s: only a year in the name; taken as 1 July of it (rates per year carry up to half a year of "
                 "error: pass --dates for exact ones)", path.name)


def _coverage(path: Path, layer: str | None, crs: Any) -> Any | None:
    """The union of the ``<layer>_footprint`` layer of a GeoPackage (or of the ``<name>_footprint.parquet`` that
    ``rts merge`` writes beside a GeoParquet map), in ``crs``; None when it has none."""
    import geopandas as gpd
    import shapely
    from shapely import union_all

    side = parquet_coverage(path)
    if path.suffix.lower() in (".parquet", ".geoparquet") and side.exists():
        fp = gpd.read_parquet(side)
        if not len(fp):
            return None
        fp = fp.to_crs(crs) if fp.crs is not None and crs is not None and fp.crs != crs else fp
        return union_all(shapely.make_valid(fp.geometry.values))
    if path.suffix.lower() != ".gpkg" or layer is None:
        return None

    from rtscli.io.vector import gpkg_layers

    name = f"{layer}{FOOTPRINT_SUFFIX}"
    if name not in gpkg_layers(path):
        return None
    try:
        fp = gpd.read_file(path, layer=name)
        if not len(fp):
            return None
        if fp.crs is not None and crs is not None and fp.crs != crs:
            fp = fp.to_crs(crs)
        return union_all(shapely.make_valid(fp.geometry.values))
    except Exception as exc:  # a damaged footprint layer: one line, not a traceback
        raise RtsError(f"cannot read its footprint layer {name!r} ({' '.join(str(exc).split())[:120]})", path=path,
                       fix="write the map again (rts predict --overwrite), or delete that layer in QGIS, then run "
                           "again") from None


# --- one frame for all dates ------------------------------------------------------------------------------------


def working_crs(maps: list[SlumpMap]) -> Any:
    """A Lambert azimuthal equal-area CRS (WGS 84) centred on the maps' polygons (else their coverage)."""
    from pyproj import Transformer

    pts = []
    for m in maps:
        geoms = list(m.gdf.geometry) or ([m.coverage] if m.coverage is not None else [])
        if not geoms:
            continue
        b = np.array([g.bounds for g in geoms])
        x, y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        lon, lat = Transformer.from_crs(m.gdf.crs, "EPSG:4326", always_xy=True).transform(x, y)
        pts.append(np.column_stack([lon, lat]))
    from rtscli.geometry.measure import centred_equal_area_crs

    return centred_equal_area_crs(np.concatenate(pts) if pts else np.empty((0, 2)))


def load_maps(maps: list[SlumpMap], *, min_area: float = 0.0, metric: str = "ios",
              threshold: float = 0.3) -> tuple[list[DateFrame], Any, dict]:
    """Every map in one equal-area CRS, grouped by date (sorted). Returns ``(frames, crs, report)``.

    Polygons below ``min_area`` (true m2 on the ellipsoid) are dropped (``report["slivers_dropped"]``).
    Polygons of one date from different files that overlap by ``metric`` >= ``threshold`` are the same
    slump seen in two overlapping scenes: they are joined (``report["joined_across_files"]``). A date's
    coverage is the union of its maps' footprints, or None when one of its maps has none.
    """
    from shapely import union_all

    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.raster import crs_name

    crs = working_crs(maps)
    log.info("matching in %s (equal-area, centred on the maps)", crs.srs)
    report = {"slivers_dropped": 0, "joined_across_files": 0, "negatives_dropped": 0}
    by_date: dict[date, dict] = {}
    for m in maps:
        if m.gdf.crs is not None and not m.gdf.crs.equals(crs):
            log.info("%s: reprojected from %s", m.path.name, crs_name(m.gdf.crs))
        report["negatives_dropped"] += m.negatives_dropped
        geoms = to_crs(m.gdf.geometry.values, m.gdf.crs, crs)
        area = geodesic_area_perimeter(geoms, crs)[0] if geoms else np.zeros(0)
        cover = to_crs([m.coverage], m.gdf.crs, crs)[0] if m.coverage is not None else None
        if len(m.gdf):
            dates_here = sorted(set(m.gdf["date"]))
        else:
            assert m.map_date is not None  # read_map dates an empty map (or refuses it)
            dates_here = [m.map_date]
        for d in dates_here:
            f = by_date.setdefault(d, {"rows": [], "covers": [], "files": []})
            f["covers"].append(cover)
            f["files"].append(m.path.name)
        scores, models = _prediction(m.gdf)
        for i, row in enumerate(m.gdf.itertuples(index=False)):
            if area[i] < min_area:
                report["slivers_dropped"] += 1
                continue
            by_date[row.date]["rows"].append((geoms[i], bool(row.touches_edge), bool(row.touches_nodata),
                                              row.source, m.path.name, str(row.date_given), scores[i], models[i]))
    frames = []
    for d in sorted(by_date):
        f = by_date[d]
        rows, joined = _join_across_files(f["rows"], metric, threshold)
        report["joined_across_files"] += joined
        covers = f["covers"]
        coverage = None if any(c is None for c in covers) else union_all(covers)
        frames.append(DateFrame(d, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                [r[3] for r in rows], [r[5] for r in rows], coverage, f["files"],
                                [r[6] for r in rows], [r[7] for r in rows]))
    if report["slivers_dropped"]:
        log.info("%d polygon(s) below --min-area %g m2 left out", report["slivers_dropped"], min_area)
    if report["joined_across_files"]:
        log.info("%d polygon(s) mapped twice at one date (overlapping scenes) joined", report["joined_across_files"])
    return frames, crs, report


def _join_across_files(rows: list, metric: str, threshold: float) -> tuple[list, int]:
    """Join polygons of one date that come from different files and overlap by ``threshold`` or more."""
    from shapely import STRtree, union_all

    files = {r[4] for r in rows}
    if len(files) < 2:
        return rows, 0
    geoms = [r[0] for r in rows]
    parent = list(range(len(rows)))
    left, right = STRtree(geoms).query(geoms, predicate="intersects")
    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        if a < b and rows[a][4] != rows[b][4] and overlap(geoms[a], geoms[b], metric) >= threshold:
            parent[union_root(parent, b)] = union_root(parent, a)
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(union_root(parent, i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(rows[members[0]])
            continue
        g = union_all([geoms[i] for i in members])
        scores = [rows[i][6] for i in members if rows[i][6] == rows[i][6]]
        out.append((g, any(rows[i][1] for i in members), any(rows[i][2] for i in members),
                    "+".join(rows[i][3] for i in members), rows[members[0]][4], rows[members[0]][5],
                    max(scores) if scores else float("nan"),
                    ",".join(dict.fromkeys(rows[i][7] for i in members if rows[i][7]))))
    return out, len(rows) - len(out)


def _prediction(gdf: Any) -> tuple[list[float], list[str]]:
    """Each polygon's ``score`` (nan where there is none, or it is not a number) and ``model`` ("" where none)."""
    import pandas as pd

    n = len(gdf)
    scores = pd.to_numeric(gdf["score"], errors="coerce").astype(float).tolist() if "score" in gdf else [np.nan] * n
    models = ["" if v is None or v != v else str(v) for v in gdf["model"].tolist()] if "model" in gdf else [""] * n
    return scores, models
