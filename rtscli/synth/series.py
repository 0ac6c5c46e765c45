"""One synthetic scene at several dates, with slumps that change as real ones do, and the truth of it.

Between one year and the next (:func:`evolve`):

* every active slump **grows along its headwall**: its outline is joined with itself moved upslope
  (against its downslope direction) by 5-15 m, the headwall moves with it, water and neighbours cut
  it (touching slumps keep touching, never overlap). Slumps are placed with room for their growth
  (:func:`series_margin_px`), and the scene's edge margin cuts growth too: no slump grows off the image;
* at the first step two **touching slumps merge** into one (a pair is made if the scene has none);
* a slump **appears** (placed as in :func:`rtscli.synth.plan.make_plan`);
* a slump **stabilizes**: it leaves the map of active slumps, and its scar, revegetating, is drawn as
  a dry patch (a look-alike), so a model must learn to leave it out.

The truth of each date is a GeoPackage beside its scene: layer ``rts`` (the active slumps: ``track``,
the truth track; ``relation`` as ``rts track`` names them; ``related``, the truth tracks it came from)
and layer ``gone`` (slumps that stabilized since the date before). Every slump of every date, the merge
and the new ones lie whole inside the scene, so each truth polygon is what the image shows (``area_m2`` is the
true area of that part; :func:`rtscli.synth.plan.shown` guards it). :func:`relation_recovery` scores the output
of ``rts track`` against it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from shapely.affinity import translate
from shapely.geometry import box
from shapely.ops import unary_union

from rtscli.synth import Progress
from rtscli.synth.plan import (
    Plan, Slump, SpatialHash, edge_margin_px, largest, neighbour, place_slump, poly, shown,
)

#: headwall retreat per year of a synthetic slump, metres (retreat of active slumps: a few to 20+ m/yr)
GROWTH_M = (5.0, 15.0)
FIRST_DATE = date(2019, 7, 15)


def series_margin_px(width: int, height: int, years: int, resolution: float) -> float:
    """How far inside the scene's edge the slumps of a series are placed: the edge margin plus room to grow.

    Args:
        width: scene width, pixels.
        height: scene height, pixels.
        years: number of dates of the series.
        resolution: pixel size, metres.

    Returns:
        Pixels: :func:`rtscli.synth.plan.edge_margin_px` plus the most a headwall retreats in ``years - 1`` years
        (:data:`GROWTH_M`), at most a quarter of the shorter side (then the edge margin stops the growth).
    """
    room = GROWTH_M[1] * max(years - 1, 0) / resolution
    return min(edge_margin_px(width, height) + room, 0.25 * min(width, height))


@dataclass
class Active:
    track: str
    slump: Slump
    relation: str
    related: list[str] = field(default_factory=list)


@dataclass
class Year:
    date: date
    plan: Plan
    active: list[Active]
    gone: list[Active] = field(default_factory=list)  # stabilized since the year before (their last polygon)


def _grow(s: Slump, d_px: float, others: Any, water: Any, inside: Any) -> Slump:
    """``s`` one year on: its outline joined with itself moved ``d_px`` pixels upslope, its headwall moved with it.

    Args:
        s: the slump.
        d_px: the headwall's retreat, pixels.
        others: the other slumps (or None), which cut the growth.
        water: lakes and rivers (or None), which cut the growth.
        inside: where slumps may lie (the scene shrunk by its edge margin); the growth stops at its edge.

    Returns:
        The grown slump (a new :class:`Slump`).
    """
    ux, uy = s.direction
    moved = translate(s.geometry, -ux * d_px, -uy * d_px)
    g = unary_union([s.geometry, moved]).intersection(inside)
    if others is not None and not others.is_empty:
        g = g.difference(others)
    if water is not None and not water.is_empty:
        g = g.difference(water)
    g = largest(g.buffer(0))
    head = translate(s.headwall, -ux * d_px, -uy * d_px).intersection(g)
    return dataclasses.replace(s, geometry=g, headwall=poly(head), tongue=poly(s.tongue.intersection(g)))


def evolve(plan: Plan, years: int, seed: int, first: date = FIRST_DATE) -> list[Year]:
    """The plan at ``years`` dates one year apart (see the module docstring). Deterministic in ``seed``.

    Args:
        plan: the first date's plan (:func:`rtscli.synth.plan.make_plan`).
        years: how many dates.
        seed: the random seed of the changes.
        first: the first date; the others follow a year apart.

    Returns:
        One :class:`Year` per date. Slumps grow up to the scene's edge margin (the smaller of ``plan.edge_margin``
        and :func:`rtscli.synth.plan.edge_margin_px`), never beyond it; new ones are placed inside
        ``plan.interior()``.
    """
    from rtscli.synth import noise

    rng = np.random.default_rng(noise.key_of("series", seed, plan.seed))
    water = SpatialHash()
    for g in plan.water():
        water.add(g)
    water_all = unary_union(plan.water()) if plan.water() else None
    m = min(plan.edge_margin, edge_margin_px(plan.width, plan.height))
    inside = box(m, m, plan.width - m, plan.height - m)  # growth stops here: never off the image
    slumps = list(plan.slumps)
    if years > 1 and not any(s.touching for s in slumps):  # the merge needs a touching pair
        taken = SpatialHash()
        for s in slumps:
            taken.add(s.geometry)
        for s in slumps:
            t = neighbour(plan, rng, s, water, taken)
            if t is not None:
                s.touching = t.touching = True
                slumps.append(t)
                break
    plan = dataclasses.replace(plan, slumps=slumps)
    active = [Active(f"s{i:03d}", s, "first") for i, s in enumerate(slumps)]
    out = [Year(first, plan, active)]
    n = len(active)
    for k in range(1, years):
        prev = out[-1]
        dry = list(prev.plan.dry)
        now: list[Active] = []
        gone: list[Active] = []
        pool = list(prev.active)
        # merge: the first touching pair (at the first step)
        if k == 1:
            pairs = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1:]
                     if a.slump.touching and b.slump.touching and a.slump.geometry.distance(b.slump.geometry) < 1e-6]
            if pairs:
                a, b = pairs[0]
                g = largest(unary_union([a.slump.geometry, b.slump.geometry]).buffer(1).buffer(-1))
                merged = dataclasses.replace(a.slump, geometry=g, touching=False,
                                             tongue=poly(unary_union([a.slump.tongue, b.slump.tongue])),
                                             headwall=poly(unary_union([a.slump.headwall, b.slump.headwall])))
                now.append(Active(f"s{n:03d}", merged, "merged", [a.track, b.track]))
                n += 1
                pool = [p for p in pool if p is not a and p is not b]
        # stabilize one (not one of a touching pair, so the merge and the neighbours stay readable)
        calm = [p for p in pool if not p.slump.touching]
        if calm:
            ends = calm[int(rng.integers(0, len(calm)))]
            gone.append(dataclasses.replace(ends, relation="stabilized"))
            dry.append(ends.slump.geometry)
            pool = [p for p in pool if p is not ends]
        # grow the rest along their headwalls, each cut by the others
        for p in pool:
            others = unary_union([q.slump.geometry for q in pool + now if q is not p])
            d_px = rng.uniform(*GROWTH_M) / plan.resolution
            now.append(Active(p.track, _grow(p.slump, d_px, others, water_all, inside), "continued"))
        # a new one, clear of the others and of the scars
        taken = SpatialHash()
        for q in now:
            taken.add(q.slump.geometry)
        for g in dry:
            taken.add(g)
        for _ in range(50):
            born = place_slump(prev.plan, rng, water, taken)
            if born is not None:
                now.append(Active(f"s{n:03d}", born, "new"))
                n += 1
                break
        year_plan = dataclasses.replace(prev.plan, slumps=[a.slump for a in now], dry=dry)
        out.append(Year(first.replace(year=first.year + k), year_plan, now, gone))
    return out


def write_series(folder: Path, stem: str, height: int, width: int, years: int, *, seed: int, site_name: str,
                 crs: str, resolution: float, index: int = 0,
                 progress: Progress | None = None, clouds: float = 0.0, snow: float = 0.0,
                 masks: tuple[str, ...] = (), dem_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """Write the scene of each date (``<stem>_<YYYY-MM-DD>.tif``) and its truth GeoPackage.

    The truth of each date has layers ``rts`` (active slumps) and ``gone`` (stabilized since the date before),
    with ``track``, ``relation``, ``related``, ``weak_rgb``, ``touching``, ``clipped`` and ``area_m2`` (m2, true
    area on the ellipsoid of the part the scene shows); every polygon lies inside its scene.

    Args:
        folder: the output folder (exists).
        stem: file name stem; the date is appended.
        height: scene height, pixels.
        width: scene width, pixels.
        years: number of dates, one year apart from :data:`FIRST_DATE`.
        seed: the random seed; the same seed gives the same files.
        site_name: the synthetic site (:mod:`rtscli.synth.sites`).
        crs: the projected CRS of the outputs (metre units).
        resolution: pixel size, metres.
        index: the scene's index at its site (scenes of one site are placed 200 km apart).
        progress: called with the number of pixels written, as they are written.
        clouds: share of every date's scene under clouds, each date its own (:func:`rtscli.synth.clouds.make_sky`);
            0: clear.
        snow: share of every date's scene under snow patches.
        masks: the quality masks written beside each date's scene (:func:`rtscli.synth.clouds.write_masks`).
        dem_dir: write each date's DEM into this folder (:func:`rtscli.synth.dem.write_dem`); None: no DEM.

    Returns:
        ``(scene GeoTIFF, truth GeoPackage)`` per date, in date order.

    Raises:
        RtsError: ``crs`` is geographic, or an output cannot be written.
    """
    import geopandas as gpd

    from rtscli.geometry.footprint import to_map
    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.vector import write_layers
    from rtscli.synth import scene_plan, site_origin, write_scene

    base = scene_plan(height, width, seed=seed, site_name=site_name, resolution=resolution, nodata_margin=False,
                      edge_margin=series_margin_px(width, height, years, resolution))
    geo = site_origin(site_name, crs, resolution, index=index)
    transform = geo.transform()

    image = base.image()

    def frame(rows: list[Active]) -> Any:
        """The truth layer of ``rows`` (Active slumps) in map coordinates: the part of each the image shows
        (:func:`rtscli.synth.plan.shown`), with its true area."""
        parts = [(a, *shown(a.slump.geometry, image)) for a in rows]
        parts = [(a, g, cut) for a, g, cut in parts if not g.is_empty]
        g = gpd.GeoDataFrame(
            {"track": [a.track for a, _, _ in parts], "relation": [a.relation for a, _, _ in parts],
             "related": [",".join(a.related) for a, _, _ in parts],
             "weak_rgb": [a.slump.weak for a, _, _ in parts], "touching": [a.slump.touching for a, _, _ in parts],
             "clipped": np.array([a.slump.clipped or cut for a, _, cut in parts], dtype=bool)},
            geometry=[to_map(geom, transform) for _, geom, _ in parts], crs=geo.crs)
        g["area_m2"] = geodesic_area_perimeter(g.geometry.values, geo.crs)[0] if len(g) else []
        return g

    out = []
    for k, y in enumerate(evolve(base, years, seed)):
        sky = None
        if clouds > 0 or snow > 0:
            from rtscli.synth.clouds import make_sky

            sky = make_sky(y.plan, clouds=clouds, snow=snow, seed=seed * 100 + k)  # each date its own clouds
        tif, gpkg = write_scene(folder / f"{stem}_{y.date.isoformat()}.tif", height, width, seed=seed,
                                site_name=site_name, crs=crs, resolution=resolution, plan=y.plan, index=index,
                                progress=progress, sky=sky, masks=masks, dem_dir=dem_dir)
        write_layers({"rts": frame(y.active), "gone": frame(y.gone)}, gpkg, overwrite=True)
        out.append((tif, gpkg))
    return out


# --- scoring --------------------------------------------------------------------------------------------------


def relation_recovery(truth: list[Path], observations: Any, *, min_overlap: float = 0.5) -> dict:
    """How many truth relations (``continued``, ``merged``, ``new``, ``stabilized``) of a series ``rts track``
    recovered. ``truth``: the truth GeoPackages of the dates after the first, in date order; ``observations``: the
    ``observations`` layer of ``rts track`` (any CRS). A truth slump is found when an observation of its date
    overlaps it by intersection over the smaller of at least ``min_overlap``; its relation is recovered when that
    observation has the same relation (for ``merged``, also as many parents). Returns counts per relation:
    ``{"continued": [recovered, total], ...}`` and ``share``.
    """
    import geopandas as gpd

    from rtscli.geometry.polygons import overlap
    from rtscli.track.dates import find_date

    score: dict[str, list[int]] = {}
    for path in truth:
        found = find_date(Path(path).stem)
        assert found is not None  # write_series names each truth file <stem>_<YYYY-MM-DD>.gpkg
        d = found[0].isoformat()
        obs = observations[observations["date"] == d]
        for layer in ("rts", "gone"):
            t = gpd.read_file(path, layer=layer)
            if not len(t):
                continue
            o = obs.to_crs(t.crs)
            o = o[o["present"] == (layer == "rts")]
            for _, row in t.iterrows():
                rel = row["relation"]
                s = score.setdefault(rel, [0, 0])
                s[1] += 1
                best = max(((overlap(row.geometry, g, "ios"), i) for i, g in zip(o.index, o.geometry, strict=True)
                            if g.intersects(row.geometry)), default=(0.0, None))
                if best[0] < min_overlap:
                    continue
                got = o.loc[best[1]]
                ok = got["relation"] == rel
                if ok and rel == "merged":
                    ok = len([x for x in str(got["related"]).split(",") if x]) == len(row["related"].split(","))
                s[0] += int(ok)
    rec = sum(v[0] for v in score.values())
    tot = sum(v[1] for v in score.values())
    return {**score, "share": rec / tot if tot else float("nan")}


