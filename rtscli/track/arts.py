"""The ARTS data set's schema: slump maps and ``rts track`` changes as ARTS features, and ARTS negatives.

ARTS, the Arctic Retrogressive Thaw Slumps data set (Yang et al. 2023; github.com/whrc/ARTS,
``Metadata_Format_Summary.csv`` and ``Tutorial/dataformatting.py``), fixes the fields of a contribution:

* required: ``CentroidLat``/``CentroidLon`` (the polygon's centroid in EPSG:4326, decimal degrees
  rounded to 5 places; computed as ARTS does, as the centroid of the polygon taken to EPSG:4326),
  ``RegionName``, ``CreatorLab``, ``BaseMapDate`` (``YYYY-MM-DD``, a range as two dates separated by a
  comma), ``BaseMapSource``, ``BaseMapResolution`` (m), ``TrainClass`` (``Positive``/``Negative``),
  ``LabelType`` (``Polygon``);
* generated: the change relations ``MergedRTS``, ``SplitRTS``, ``NewRTS``, ``StabilizedRTS``,
  ``UnknownRelationship`` (comma-separated UIDs), ``ContributionDate`` and ``UID``: a UUID5 in the DNS
  namespace of the required fields' values concatenated as text (latitude and longitude rounded to 5
  places, the resolution without ``.0`` when whole). A slump seen again at a later date keeps the UID of
  its first entry (the tutorial's ``RepeatRTS`` rule), so a track has one UID;
* optional: ``BaseMapID`` (the image's id), ``Area`` (m2; here the true area on the ellipsoid), ``Notes``.

ARTS is a curated data set: the polygons of a map of model predictions (a ``score`` field, as ``rts predict``
writes) are exported only above a score threshold (``min_score``) or all of them on request (``keep_all``), and
each one's ``Notes`` say that it is a model prediction, with its score and model.

Geometries are MultiPolygons in EPSG:3413 (NSIDC polar stereographic north), the CRS of the main file.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

ARTS_CRS = "EPSG:3413"
REQUIRED = ["CentroidLat", "CentroidLon", "RegionName", "CreatorLab", "BaseMapDate", "BaseMapSource",
            "BaseMapResolution", "TrainClass", "LabelType"]
RELATIONS = ["MergedRTS", "SplitRTS", "NewRTS", "StabilizedRTS", "UnknownRelationship"]
FIELDS = REQUIRED + RELATIONS + ["ContributionDate", "UID", "BaseMapID", "Area", "Notes"]
#: the options that give the required fields rts cannot derive
OPTION_OF = {"RegionName": "--region NAME", "CreatorLab": '--creator "NAME, ORGANIZATION"',
             "BaseMapSource": "--basemap-source SENSOR (e.g. PlanetScope)",
             "BaseMapResolution": "--basemap-resolution M",
             "BaseMapDate": "--basemap-date YYYY-MM-DD (or a range YYYY-MM-DD,YYYY-MM-DD)"}
#: Shapefile field names (at most 10 characters), as the ARTS tutorial abbreviates them
ARTS_SHP_NAMES = {"CentroidLat": "CntrdLt", "CentroidLon": "CntrdLn", "RegionName": "ReginNm", "CreatorLab": "CretrLb",
             "BaseMapDate": "BasMpDt", "BaseMapSource": "BsMpSrc", "BaseMapResolution": "BsMpRsl",
             "TrainClass": "TrnClss", "LabelType": "LablTyp", "MergedRTS": "MrgdRTS", "StabilizedRTS": "StblRTS",
             "ContributionDate": "ContrDt", "BaseMapID": "BsMpID", "UnknownRelationship": "UnknwnRl"}
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def resolution_text(r: float) -> str:
    """``BaseMapResolution`` as the UID seed writes it: ``3`` for 3.0, ``3.125`` otherwise."""
    return str(int(r)) if float(r) == int(r) else str(float(r))


def arts_uid(values: dict) -> str:
    """The ARTS UID of a feature: ``uuid5(NAMESPACE_DNS, seed)``, the seed being the required fields' values
    as text, in the order of :data:`REQUIRED` (ARTS ``dataformatting.seed_gen``)."""
    parts = []
    for f in REQUIRED:
        v = values[f]
        if f in ("CentroidLat", "CentroidLon"):
            v = str(round(float(v), 5))
        elif f == "BaseMapResolution":
            v = resolution_text(v)
        parts.append(str(v))
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, "".join(parts)))


def _slash_range(text: str) -> str | None:
    """``text`` as an ARTS range (``YYYY-MM-DD,YYYY-MM-DD``) when it is two dates joined by one slash (ISO 8601's
    interval, ``2020-07-05/2020-08-20``); None for anything else (``2020/07/05`` is one date)."""
    from rtscli.track.dates import parse_date

    parts = [p.strip() for p in text.split("/")]
    if len(parts) != 2 or not all(parts):
        return None
    try:
        days = [parse_date(p) for p in parts]
    except ValueError:
        return None
    if any(d is None for d in days):
        return None
    return ",".join(d.isoformat() for d in days if d is not None)


def check_basemap_date(text: str, option: str = "--basemap-date", ranges: bool = True) -> str:
    """An ARTS date checked: one ``YYYY-MM-DD``, or (``ranges``) two separated by a comma, the first not after
    the second. Raises RtsError naming ``option``."""
    parts = [p.strip() for p in str(text).split(",")]
    ok = 1 <= len(parts) <= (2 if ranges else 1) and all(_DAY.match(p) for p in parts)
    days = []
    if ok:
        try:
            days = [date.fromisoformat(p) for p in parts]
        except ValueError:
            ok = False
    if not ok:
        forms = "YYYY-MM-DD" + (" or a range YYYY-MM-DD,YYYY-MM-DD" if ranges else "")
        comma = _slash_range(str(text))
        if comma is not None:  # ISO 8601's interval: ARTS writes a range with a comma
            raise RtsError(f"{option} {text!r} is a range written with a slash" + (
                ", which ARTS writes with a comma" if ranges else f"; {option} is one date"),
                fix=f"use {forms}" + (f" (here {comma})" if ranges else ""))
        raise RtsError(f"{option} {text!r} is not an ARTS date", fix=f"use {forms}")
    if len(days) == 2 and days[1] < days[0]:
        raise RtsError(f"{option} {text!r} ends before it starts", fix="give the earlier date first")
    return ",".join(parts)


# --- export ------------------------------------------------------------------------------------------------------


def export_arts(src: Path, out: Path, *, region: str | None, creator: str | None, basemap_source: str | None,
                basemap_resolution: float | None, basemap_date: str | None = None, basemap_id: str | None = None,
                contribution_date: str | None = None, notes: str | None = None, layer: str | None = None,
                date_field: str | None = None, min_score: float | None = None, keep_all: bool = False,
                overwrite: bool = False) -> dict:
    """Write ``src`` (a slump map, or the GeoPackage of ``rts track`` with its change relations) as ARTS
    features at ``out`` (GeoJSON, GeoPackage, Shapefile with ARTS's short names, or GeoParquet).

    Values rts cannot derive are arguments; a missing one raises RtsError naming the ARTS field and its
    option. ``BaseMapDate`` comes from ``basemap_date``, else the dates of ``rts track``'s observations, else
    the date in the scene name (``rts predict``) or the file name. Model predictions (features with a ``score``)
    need ``min_score`` (those below it are left out) or ``keep_all``; their ``Notes`` record the score and model,
    before ``notes``. Features without a score (hand labels) are exported as they are. Returns counts.
    """
    import geopandas as gpd

    from rtscli.geometry.footprint import lonlat_centroids
    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.atomic import check_output
    from rtscli.io.vector import check_vector_output, driver_for, gpkg_layers, write_vector

    missing = [f for f, v in (("RegionName", region), ("CreatorLab", creator), ("BaseMapSource", basemap_source),
                              ("BaseMapResolution", basemap_resolution)) if v is None or not str(v).strip()]
    if missing:
        raise RtsError(f"ARTS field{'s' if len(missing) > 1 else ''} {', '.join(missing)} cannot be derived from the "
                       "map", fix="pass " + " ".join(OPTION_OF[f] for f in missing))
    assert basemap_resolution is not None  # a missing one was refused just above
    if not (math.isfinite(float(basemap_resolution)) and float(basemap_resolution) > 0):
        raise RtsError(f"--basemap-resolution {basemap_resolution} is not a resolution in metres",
                       fix="e.g. --basemap-resolution 3")
    if basemap_date is not None:
        basemap_date = check_basemap_date(basemap_date)
    if min_score is not None and keep_all:
        raise RtsError("--min-score and --all both say which predictions to export", fix="drop one of them")
    if min_score is not None and not (0 <= float(min_score) <= 1):
        raise RtsError(f"--min-score {min_score} is not a score (0 to 1)", fix="e.g. --min-score 0.8")
    contribution = check_basemap_date(contribution_date or date.today().isoformat(), "--contribution-date",
                                      ranges=False)
    driver = driver_for(out)
    if driver == "GPKG":
        check_vector_output(out, overwrite, ["arts"])
    else:
        check_output(out, overwrite)
    if not Path(src).exists():
        raise RtsError("map not found", path=src, fix="check the path")
    tracked = Path(src).suffix.lower() == ".gpkg" and "observations" in gpkg_layers(Path(src))
    if tracked and layer not in (None, "observations"):
        raise RtsError(f"this is an rts track output; its layer {layer!r} is not slumps at a date", path=src,
                       fix="drop --layer: the observations layer is exported, with its change relations")
    if tracked and (basemap_date or date_field):
        raise RtsError("the dates of an rts track output are its observations' own", path=src,
                       fix="drop --basemap-date and --date-field")
    if tracked:
        obs = gpd.read_file(src, layer="observations")
        lack = [c for c in ("track_id", "date", "present", "relation", "related", "formed_on") if c not in obs.columns]
        if lack:
            raise RtsError(f"its observations layer lacks {', '.join(lack)}: not an rts track output", path=src,
                           fix="export the map itself, or run rts track again")
        obs = obs[obs["present"].astype(bool)].reset_index(drop=True)
        given = obs["date_given"] if "date_given" in obs.columns else obs["date"]  # an ARTS range stays a range
        dates = [basemap_date_of(d, src) for d in given]
        scene = [None] * len(obs)
        gdf = obs
    else:
        gdf, dates = _plain_map(Path(src), basemap_date, layer, date_field)
        scene = list(gdf["scene"]) if "scene" in gdf.columns else [None] * len(gdf)
    scores, models = _predictions(gdf)
    keep = _curate(scores, min_score, keep_all, Path(src))
    below = int((~keep).sum())
    if below:
        log.info("%d prediction(s) below --min-score %g left out", below, min_score)
        gdf = gdf[keep].reset_index(drop=True)
        dates = [v for v, k in zip(dates, keep, strict=True) if k]
        scene = [v for v, k in zip(scene, keep, strict=True) if k]
        models = [v for v, k in zip(models, keep, strict=True) if k]
        scores = scores[keep]
    gdf = gdf.to_crs(ARTS_CRS) if len(gdf) else gdf.set_crs(ARTS_CRS, allow_override=True)
    lon, lat = lonlat_centroids(gdf.geometry.values, ARTS_CRS) if len(gdf) else (np.zeros(0), np.zeros(0))
    area = geodesic_area_perimeter(gdf.geometry.values, ARTS_CRS)[0] if len(gdf) else np.zeros(0)
    rows = []
    for i in range(len(gdf)):
        r = {"CentroidLat": round(float(lat[i]), 5), "CentroidLon": round(float(lon[i]), 5), "RegionName": region,
             "CreatorLab": creator, "BaseMapDate": dates[i], "BaseMapSource": basemap_source,
             "BaseMapResolution": float(basemap_resolution), "TrainClass": "Positive", "LabelType": "Polygon"}
        r.update({k: None for k in RELATIONS})
        r.update(ContributionDate=contribution, UID=arts_uid(r), BaseMapID=basemap_id or scene[i],
                 Area=round(float(area[i]), 2), Notes=_notes(scores[i], models[i], min_score, notes))
        rows.append(r)
    if tracked:
        _relations(rows, gdf)
    from shapely.geometry import MultiPolygon

    geoms = [g if g.geom_type == "MultiPolygon" else MultiPolygon([g]) for g in gdf.geometry]
    res = gpd.GeoDataFrame(rows, columns=FIELDS, geometry=geoms, crs=ARTS_CRS)
    if driver == "ESRI Shapefile":
        res = res.rename(columns=ARTS_SHP_NAMES)
    write_vector(res, out, layer="arts", overwrite=overwrite)
    counts = {"features": len(res), "tracked": tracked,
              "with_relations": int(sum(any(r[k] for k in RELATIONS) for r in rows)),
              "predictions": int(np.isfinite(scores).sum()), "below_min_score": below}
    if tracked:
        counts["uids"] = len({r["UID"] for r in rows})
    return counts


def _predictions(gdf: Any) -> tuple[np.ndarray, list[str]]:
    """Each feature's ``score`` (nan: not a model prediction) and ``model`` ("" where not recorded)."""
    import pandas as pd

    n = len(gdf)
    scores = pd.to_numeric(gdf["score"], errors="coerce").to_numpy(float) if "score" in gdf else np.full(n, np.nan)
    models = ["" if v is None or v != v else str(v) for v in gdf["model"].tolist()] if "model" in gdf else [""] * n
    return scores, models


def _curate(scores: np.ndarray, min_score: float | None, keep_all: bool, src: Path) -> np.ndarray:
    """Which features go to ARTS: every one that is not a prediction; predictions at ``min_score`` or above, or all
    with ``keep_all``. Predictions without either are refused (ARTS is curated), as is ``min_score`` on a map
    without scores (it would keep everything, unasked)."""
    predicted = np.isfinite(scores)
    if min_score is not None and not predicted.any():
        raise RtsError("--min-score: the map's features have no score (they are not rts predict detections)",
                       path=src, fix="drop --min-score: every feature is exported")
    if predicted.any() and min_score is None and not keep_all:
        lo, hi = float(scores[predicted].min()), float(scores[predicted].max())
        raise RtsError(f"the map holds {int(predicted.sum())} model prediction(s) (scores {lo:.2f} to {hi:.2f}); "
                       "ARTS is a curated data set of slumps", path=src,
                       fix="pass --min-score S to export those scoring S or more (e.g. --min-score 0.8), or --all to "
                           "export every prediction")
    if min_score is None:
        return np.ones(len(scores), bool)
    return ~predicted | (np.nan_to_num(scores, nan=-1.0) >= float(min_score))


def _notes(score: float, model: str, min_score: float | None, notes: str | None) -> str | None:
    """ARTS ``Notes``: for a model prediction, that it is one, its score and model (then ``notes``); else ``notes``."""
    if not score == score:
        return notes
    kept = f"kept at --min-score {min_score:g}" if min_score is not None else "exported with --all, no threshold"
    text = f"model prediction (rts predict), score {score:.3f} ({kept}), model {model or 'not recorded'}"
    return f"{text}; {notes}" if notes else text


def _plain_map(src: Path, basemap_date: str | None, layer: str | None,
               date_field: str | None) -> tuple[Any, list[str]]:
    """A slump map's polygons (ARTS negatives left out) and each one's BaseMapDate."""
    from rtscli.track.maps import read_map

    try:
        m = read_map(src, given=date(1900, 1, 1) if basemap_date else None, layer=layer, date_field=date_field)
    except RtsError as exc:
        if "imagery date" in str(exc) or "no date in its name" in str(exc):
            raise RtsError("ARTS field BaseMapDate cannot be derived (no date in the map's scene or file name)",
                           path=src, fix="pass " + OPTION_OF["BaseMapDate"]) from None
        raise
    gdf = m.gdf
    dates = [basemap_date] * len(gdf) if basemap_date else [basemap_date_of(d, src) for d in gdf["date_given"]]
    return gdf, dates


def basemap_date_of(text: object, path: Path) -> str:
    """An ARTS ``BaseMapDate`` from a map's date as written: every date as ``YYYY-MM-DD`` (a range stays a range),
    a year alone as the range of that year (``2019-01-01,2019-12-31``: ARTS wants days, and rts does not invent
    one). Raises RtsError naming ``path`` for text that holds no date."""
    from rtscli.track.dates import parse_date

    comma = _slash_range(str(text))
    if comma is not None:
        raise RtsError(f"BaseMapDate {str(text)!r} is a range written with a slash, which ARTS writes with a comma",
                       path=path, fix=f"write it {comma} in the map (dates as YYYY-MM-DD, a range as "
                                      "YYYY-MM-DD,YYYY-MM-DD), or pass " + OPTION_OF["BaseMapDate"])
    parts = []
    for p in str(text).split(","):
        p = p.strip()
        if not p:
            continue
        if re.fullmatch(r"(?:19|20)\d\d", p):
            parts += [f"{p}-01-01", f"{p}-12-31"]
            continue
        try:
            d = parse_date(p)
        except ValueError as exc:
            raise RtsError(f"BaseMapDate: {exc}", path=path, fix="pass " + OPTION_OF["BaseMapDate"]) from None
        if d is None:  # "nan", "None", "NaT", "null": an empty value, like an empty part
            continue
        parts.append(d.isoformat())
    if not parts:
        raise RtsError("BaseMapDate is empty", path=path, fix="pass " + OPTION_OF["BaseMapDate"])
    return check_basemap_date(",".join([min(parts), max(parts)] if len(parts) > 1 else parts), "BaseMapDate")


def _relations(rows: list[dict], obs: Any) -> None:
    """Fill the ARTS change fields and the one-UID-per-track rule from ``rts track``'s observations."""
    track = list(obs["track_id"])
    first: dict[str, str] = {}
    for i in sorted(range(len(rows)), key=lambda i: (obs["date"].iloc[i], i)):
        first.setdefault(track[i], rows[i]["UID"])
    formed_here: dict[str, list[str]] = {}
    for i in range(len(rows)):
        for s in _ids(obs["formed_on"].iloc[i]):
            formed_here.setdefault(s, []).append(track[i])

    def uids(ids: list[str]) -> str | None:
        got = [first[t] for t in ids if t in first]
        return ",".join(dict.fromkeys(got)) or None

    for i, r in enumerate(rows):
        rel, related = obs["relation"].iloc[i], _ids(obs["related"].iloc[i])
        r["UID"] = first[track[i]]
        if rel == "merged":
            r["MergedRTS"] = uids(related)
        elif rel == "split":
            r["SplitRTS"] = uids(related)
        elif rel == "unknown":
            r["UnknownRelationship"] = uids(related)
        r["StabilizedRTS"] = uids(_ids(obs["formed_on"].iloc[i]))
        r["NewRTS"] = uids(formed_here.get(track[i], []))


def _ids(v: object) -> list[str]:
    return [t for t in str(v or "").split(",") if t and t != "nan" and t != "None"]
