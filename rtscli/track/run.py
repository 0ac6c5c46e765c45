"""``rts track``: slump maps of several dates in, change out (see :mod:`rtscli.track.change`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

from rtscli.errors import RtsError, set_vector_crs
from rtscli.io.vector import VECTOR_DRIVERS
from rtscli.track.change import TrackOptions, Tracker
from rtscli.track.merge_schema import is_coverage_file

log = logging.getLogger("rtscli")

LAYERS = ("observations", "tracks")
#: the vector files taken from a folder: every format rts writes, but not .json (rts predict's manifest.json)
MAP_SUFFIXES = tuple(s for s in VECTOR_DRIVERS if s != ".json")


@dataclass
class TrackRequest:
    maps: list[Path]  # every map file

    out: Path
    dates: list | None = None  # one date per map file
    force_dates: bool = False  # take --dates as given: out of time order, or another year than the maps say
    date_field: str | None = None
    layer: str | None = None
    min_area: float = 0.0
    options: TrackOptions = field(default_factory=TrackOptions)
    stabilized: Path | None = None
    stabilized_layer: str | None = None
    to_crs: str | None = None
    out_crs: object = None  # --to-crs, parsed by check()
    plot: Path | None = None
    plot_top: int = 10
    plot_by: str = "rate"
    quicklook: Path | None = None
    overwrite: bool = False


def expand(inputs: list[Path]) -> list[list[Path]]:
    """The map files of each input: a file, or the maps of a folder: the outputs its ``manifest.json`` lists
    (a folder of ``rts predict`` outputs), else every vector file in it (logged). A file given twice is refused."""
    import json

    out: list[list[Path]] = []
    seen: dict[Path, Path] = {}
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            manifest = p / "manifest.json"
            found = []
            if manifest.exists():
                try:
                    rows = json.loads(manifest.read_text()).get("scenes", [])
                    found = sorted({p / Path(r["output"]).name for r in rows if r.get("output")})
                    found = [f for f in found if f.exists()]
                except (ValueError, OSError, AttributeError, TypeError):
                    found = []
            if not found:
                found = sorted(f for f in p.iterdir()  # not the coverage beside an rts merge map
                               if f.suffix.lower() in MAP_SUFFIXES and not f.name.startswith(".")
                               and not is_coverage_file(f))
                if found:
                    log.info("%s: %d map(s) taken from the folder (%s)", p, len(found),
                             ", ".join(f.name for f in found[:5]) + (", ..." if len(found) > 5 else ""))
            if not found:
                raise RtsError("no map (.gpkg, .shp, .geojson, .parquet) in the folder", path=p,
                               fix="pass the folder of rts predict outputs, or the map files")
            out.append(found)
        elif not p.exists():
            raise RtsError("map not found", path=p, fix="check the path")
        else:
            out.append([p])
        for f in out[-1]:
            key = f.resolve()
            if key in seen:
                raise RtsError("the map is given twice", path=f, fix="give each map once")
            seen[key] = f
    return out


def parse_dates(text: str | None, n: int) -> list[date] | None:
    """``--dates`` as one date per input (a map, or a folder of maps: all get its date), or None."""
    from rtscli.track.dates import parse_date

    if text is None:
        return None
    parts = [t.strip() for t in text.split(",")]
    if len(parts) != n:
        raise RtsError(f"--dates gives {len(parts)} date(s) for {n} input(s)",
                       fix="give one date per map or folder, in the order given")
    out = []
    for t in parts:
        try:
            d = parse_date(t)
        except ValueError as exc:
            raise RtsError(f"--dates: {exc}", fix="use YYYY-MM-DD, e.g. 2019-07-15") from None
        if d is None:
            raise RtsError("--dates has an empty date", fix="use YYYY-MM-DD, e.g. 2019-07-15")
        out.append(d)
    return out


def check_order(maps: list[Path], dates: list[date], force: bool) -> None:
    """Refuse ``--dates`` that are not in time order (a swap of two dates is the likely cause), unless ``force``.
    Maps of one date (equal dates) are in order."""
    for i in range(1, len(dates)):
        if dates[i] < dates[i - 1]:
            if force:
                log.info("--dates are not in time order (%s gets %s, then %s %s): taken as given (--force-dates)",
                         Path(maps[i - 1]).name, dates[i - 1], Path(maps[i]).name, dates[i])
                return
            raise RtsError(f"--dates are not in time order: {Path(maps[i - 1]).name} gets {dates[i - 1]}, then "
                           f"{Path(maps[i]).name} gets {dates[i]}",
                           fix="give the maps (or folders) oldest first and their dates in the same order; "
                               "add --force-dates if this order is meant")


def check_carried(maps: list, dates: list[date], force: bool) -> None:
    """Compare ``--dates`` with the dates the maps carry themselves (:attr:`SlumpMap.carried`). A date in another
    year than every reading of a map's own date is refused (unless ``force``: then a warning), with both values;
    one in the same year but outside it (another day, outside an ARTS range) is a warning with both values."""
    from rtscli.track.dates import date_span

    far: list[tuple[str, date]] = []
    near: list[tuple[str, date]] = []
    for m, given in zip(maps, dates, strict=True):
        if m.carried is None:
            continue
        how, values = m.carried
        off, years_off = [], False
        for readings in values:
            try:
                spans = [date_span(t) for t in readings]
            except ValueError:  # a value that is no date: nothing to compare with
                continue
            if any(lo <= given <= hi for lo, hi in spans):
                continue
            off.append(" or ".join(readings))
            years_off = years_off or all(not lo.year <= given.year <= hi.year for lo, hi in spans)
        if off:
            said = ", ".join(off[:3]) + (f" (and {len(off) - 3} more)" if len(off) > 3 else "")
            (far if years_off else near).append((f"{m.path.name}: --dates gives {given}, its {how} says {said}",
                                                 given))
    if far and not force:
        more = f" (and {len(far) - 3} more)" if len(far) > 3 else ""
        raise RtsError("--dates disagree with the dates the maps carry by a year or more: "
                       + "; ".join(t for t, _ in far[:3]) + more,
                       fix="check the order of --dates (one per map or folder, in the order given), or drop "
                           "--dates to use the maps' own dates; add --force-dates if the maps' dates are wrong")
    differ = far + near
    for text, used in differ[:5]:
        log.warning("%s; %s (from --dates) is used", text, used)
    if len(differ) > 5:
        log.warning("and %d more map(s) whose own dates differ from --dates (--debug lists them)", len(differ) - 5)
        for text, used in differ[5:]:
            log.debug("%s; %s (from --dates) is used", text, used)


def check(req: TrackRequest) -> None:
    """Every check that needs no map read: options, and outputs that would be replaced."""
    from rtscli.io.atomic import check_output
    from rtscli.io.vector import check_vector_output, driver_for

    req.options.check()
    if driver_for(req.out) != "GPKG":
        raise RtsError("rts track writes a GeoPackage (layers observations and tracks)", path=req.out,
                       fix="use -o changes.gpkg")
    if req.min_area < 0:
        raise RtsError(f"--min-area {req.min_area:g} is negative", fix="give a true area in m2, e.g. 100")
    if req.plot_top < 1:
        raise RtsError(f"--plot-top {req.plot_top} shows no slump", fix="e.g. --plot-top 10")
    if req.plot_by not in ("rate", "area"):
        raise RtsError(f"--plot-by {req.plot_by!r} is not rate or area", fix="use rate (fastest-growing) or area")
    if req.dates is not None and req.date_field is not None:
        raise RtsError("--dates and --date-field both give the dates", fix="drop one of them")
    if req.dates is not None:
        check_order(req.maps, req.dates, req.force_dates)
    check_vector_output(req.out, req.overwrite, list(LAYERS), other="or choose another -o")
    for p in (req.plot, req.quicklook):
        if p is not None:
            if p.suffix.lower() != ".png":
                raise RtsError("the figures are PNG", path=p, fix="give a .png path")
            check_output(p, req.overwrite)
    if req.to_crs:
        from rtscli.io.raster import parse_crs

        req.out_crs = parse_crs(req.to_crs, "--to-crs")


def run(req: TrackRequest, progress: Callable[[int], object] | None = None) -> dict:
    """Read, follow, write. Returns a summary (counts of relations and ends, the fastest-growing tracks)."""
    from rtscli.io.vector import write_layers
    from rtscli.geometry.footprint import to_crs
    from rtscli.track.maps import load_maps, read_map
    from rtscli.track.tables import layers

    check(req)
    scars = None
    if req.stabilized is not None:  # read first: a bad file fails before the maps are read
        from rtscli.io.vector import VectorRole, read_polygons

        role = VectorRole("--stabilized file", "pass --stabilized-layer NAME to say which holds the scars",
                          set_vector_crs(req.stabilized), empty_ok=True)
        scars, _ = read_polygons(req.stabilized, None, role=role, layer=req.stabilized_layer)
    maps = []
    for i, p in enumerate(req.maps):
        maps.append(read_map(p, given=req.dates[i] if req.dates else None, date_field=req.date_field,
                             layer=req.layer))
        log.info("%s: %d slump(s), dated by %s%s", p.name, len(maps[-1].gdf), maps[-1].date_from,
                 "" if maps[-1].coverage is not None else " (no footprint layer: taken to cover everything)")
        if progress:
            progress(1)
    if req.dates is not None:
        check_carried(maps, req.dates, req.force_dates)
    frames, crs, report = load_maps(maps, min_area=req.min_area, metric=req.options.metric,
                                    threshold=req.options.threshold)
    if len(frames) < 2:
        raise RtsError(f"the maps hold {len(frames)} date(s); change needs at least two",
                       fix="pass maps of different dates (check --dates / --date-field)")
    if scars is not None:
        req.options.stabilized = to_crs(scars.geometry.values, scars.crs, crs) if len(scars) else []
    tracker = Tracker(crs, req.options)
    tracker.run(frames)
    out_crs = req.out_crs or next((m.gdf.crs for m in maps if m.gdf.crs is not None), None)
    result = layers(tracker, out_crs)
    write_layers(result, req.out, overwrite=req.overwrite)
    obs, tracks = result["observations"], result["tracks"]
    if req.plot is not None or req.quicklook is not None:
        from rtscli.track.figures import growth_figure, pick_tracks, plot_what, span_title, tracks_figure, write_png

        title = span_title(obs)
        if req.plot is not None:
            ids = pick_tracks(tracks, req.plot_top, req.plot_by)
            what = plot_what(len(ids), req.plot_top, req.plot_by)
            fig = growth_figure(obs, tracks, ids, title=f"{title}: {what}", growing=req.plot_by == "rate")
            write_png(fig, req.plot, overwrite=req.overwrite)
        if req.quicklook is not None:
            write_png(tracks_figure(obs, tracks, title=title), req.quicklook, overwrite=req.overwrite)
    return {"dates": [f.date.isoformat() for f in frames], "maps": len(maps), "tracks": len(tracks),
            "relations": dict(Counter(obs["relation"])), "ends": dict(Counter(tracks["end"])),
            "uncertain": int(obs["uncertain"].sum()), "report": report,
            "fastest": _fastest(tracks)}


def _fastest(tracks: object) -> list[dict]:
    """The three fastest-growing slumps (as on the growth plot: grown, and not gone) for the summary."""
    from rtscli.track.figures import pick_tracks

    ids = pick_tracks(tracks, 3, "rate")
    rows = tracks.set_index("track_id").loc[ids].reset_index()  # type: ignore[attr-defined]
    return rows[["track_id", "growth_rate_m2_yr", "last_area_m2"]].to_dict("records")
