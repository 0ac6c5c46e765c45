"""The layers of ``rts track``: ``observations`` (one row per slump per date) and ``tracks`` (one per slump).

Dates are ISO ``YYYY-MM-DD`` text (QGIS, R and pandas read them as such), lists of track ids are
comma-separated, areas are true m2 on the ellipsoid, distances metres, rates per year of 365.25 days.
``boundary_change_m`` is signed (:func:`rtscli.track.change.boundary_change`): + for a slump that grew (how far
its outline advanced), - for one that shrank (how far it drew back).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtscli.track.change import Obs, Track, Tracker
from rtscli.track.dates import years_between

OBS_COLUMNS = ["track_id", "date", "date_given", "present", "relation", "related", "formed_on", "area_m2", "prev_date",
               "years",
               "area_change_m2", "area_rate_m2_yr", "boundary_change_m", "boundary_rate_m_yr", "centroid_shift_m",
               "touches_edge", "touches_nodata", "uncertain", "source", "score", "model"]
TRACK_COLUMNS = ["track_id", "start", "first_date", "last_date", "end", "end_date", "observations", "first_area_m2",
                 "last_area_m2", "growth_m2", "growth_rate_m2_yr", "max_advance_m", "boundary_rate_m_yr", "parents",
                 "children", "history", "uncertain"]


def _r(v: float, nd: int = 3) -> float:
    return round(float(v), nd) if v == v else float("nan")


def obs_row(o: Obs) -> dict:
    """One row of ``observations`` (the columns of :data:`OBS_COLUMNS` and the geometry) for ``o``."""
    years = o.years
    change = o.area_m2 - o.prev_area_m2 if o.present else float("nan")

    def per_year(v: float) -> float:
        return v / years if years and years > 0 and v == v else float("nan")

    return {"track_id": o.track, "date": o.date.isoformat(), "date_given": o.date_given or o.date.isoformat(),
            "present": o.present, "relation": o.relation,
            "related": ",".join(o.related), "formed_on": ",".join(o.on_scar), "area_m2": _r(o.area_m2),
            "prev_date": o.prev_date.isoformat() if o.prev_date else None, "years": _r(years, 4),
            "area_change_m2": _r(change), "area_rate_m2_yr": _r(per_year(change)),
            "boundary_change_m": _r(o.boundary_change_m), "boundary_rate_m_yr": _r(per_year(o.boundary_change_m)),
            "centroid_shift_m": _r(o.centroid_shift_m), "touches_edge": bool(o.touches_edge),
            "touches_nodata": bool(o.touches_nodata), "uncertain": bool(o.uncertain), "source": o.source,
            "score": _r(o.score, 4), "model": o.model or None, "geometry": o.geometry}


def track_row(t: Track) -> dict:
    """One row of ``tracks`` (:data:`TRACK_COLUMNS` and the last polygon seen) for ``t``."""
    seen = [o for o in t.obs if o.present]
    first, last = seen[0], seen[-1]
    years = years_between(first.date, last.date)
    growth = last.area_m2 - first.area_m2
    steps = [o for o in seen[1:] if o.relation == "continued" and o.boundary_change_m == o.boundary_change_m]
    moved = sum(o.boundary_change_m for o in steps)  # signed: advances less draw-backs
    step_years = sum(o.years for o in steps)
    words = [f"{o.date.isoformat()} {o.relation}" for o in t.obs]
    if t.end in ("merged", "split", "unknown"):
        assert t.end_date is not None  # Tracker.step sets end and end_date together
        words.append(f"{t.end_date.isoformat()} {t.end} into {', '.join(c[:8] for c in t.children)}")
    return {"track_id": t.id, "start": t.start, "first_date": first.date.isoformat(),
            "last_date": last.date.isoformat(), "end": t.end,
            "end_date": t.end_date.isoformat() if t.end_date else None, "observations": len(seen),
            "first_area_m2": _r(first.area_m2), "last_area_m2": _r(last.area_m2),
            "growth_m2": _r(growth) if len(seen) > 1 else float("nan"),
            "growth_rate_m2_yr": _r(growth / years) if years > 0 else float("nan"),
            "max_advance_m": _r(max((max(o.boundary_change_m, 0.0) for o in steps), default=float("nan"))),
            "boundary_rate_m_yr": _r(moved / step_years) if step_years > 0 else float("nan"),
            "parents": ",".join(t.parents), "children": ",".join(t.children), "history": "; ".join(words),
            "uncertain": any(o.uncertain for o in t.obs), "geometry": last.geometry}


def layers(tracker: Tracker, out_crs: Any = None) -> dict:
    """``{"observations": GeoDataFrame, "tracks": GeoDataFrame}`` in ``out_crs`` (default: the working CRS).

    A track's geometry is its last polygon seen; an observation's, its polygon at that date (for a row
    with ``present`` false, the last polygon of the track that ended there).
    """
    import geopandas as gpd

    obs = [obs_row(o) for o in tracker.observations()]
    trk = [track_row(t) for t in sorted(tracker.tracks.values(), key=lambda t: (t.obs[0].date, t.id))]
    o = gpd.GeoDataFrame(obs, columns=OBS_COLUMNS + ["geometry"], geometry="geometry", crs=tracker.crs)
    t = gpd.GeoDataFrame(trk, columns=TRACK_COLUMNS + ["geometry"], geometry="geometry", crs=tracker.crs)
    for df, cols in ((o, OBS_COLUMNS), (t, TRACK_COLUMNS)):  # numbers stay numbers in an empty layer too
        for c in cols:
            if c.endswith(("_m2", "_m", "_yr", "years", "score")):
                df[c] = df[c].astype(float)
    t["observations"] = t["observations"].astype(np.int64)
    if out_crs is not None:
        o, t = o.to_crs(out_crs), t.to_crs(out_crs)
    return {"observations": o, "tracks": t}
