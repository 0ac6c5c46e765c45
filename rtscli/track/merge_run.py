"""``rts merge``'s run: describe the maps, then merge and write block by block (rules: :mod:`rtscli.track.merge`).

Memory holds the maps' descriptions (a few hundred bytes each), one block's polygons and the footprints of
the maps that reach it, and at most one row group of output; never the region's polygons.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rtscli.track.merge import (COVER_SHARE, COVERAGE_TYPES, FRAGMENT_GAP_M, MARGIN_M, MAX_GROW, SAME_SCENE_IOS,
                                SLUMP_TYPES, Block, MergeRequest, Observations, Slump, blocks_of, check, components,
                                group, links, near_pairs, ranks, read_region)
from rtscli.track.merge_inputs import MapInfo

log = logging.getLogger("rtscli")


@dataclass
class Tally:
    """What the run did, for the summary and the log."""

    maps: int = 0
    observations: int = 0  # polygons read whose slump a block owns (each counted once)
    slumps: int = 0
    repaired: int = 0
    small: int = 0
    partial_only: int = 0
    grown: int = 0  # blocks whose region grew to take in a connected part whole
    incomplete: int = 0  # connected parts still reaching out after MAX_GROW growths (logged)
    observed: Counter = field(default_factory=Counter)  # n_observed -> slumps
    rates: np.ndarray = field(default_factory=lambda: np.zeros(20, np.int64))  # detection rate in 20 bins of 0.05

    def as_dict(self) -> dict:
        return {"maps": self.maps, "observations": self.observations, "slumps": self.slumps,
                "joined": self.observations - self.slumps, "repaired": self.repaired, "below_min_area": self.small,
                "partial_only": self.partial_only, "blocks_grown": self.grown, "incomplete": self.incomplete,
                "n_observed": dict(sorted(self.observed.items())), "rate_bins": self.rates.tolist()}


@dataclass
class Context:
    """What every block needs: the maps, their extents' index, the CRSs and options."""

    req: MergeRequest
    maps: list[MapInfo]
    tree: Any  # STRtree of the maps' extents (working CRS, polygons and footprint); items: positions in ``placed``
    placed: list[int]  # the maps that have an extent
    feature_tree: Any  # STRtree of the extents of the maps' polygons; items: positions in ``with_features``
    with_features: list[int]
    crs: Any  # working CRS
    out_crs: Any
    coverage_known: bool
    next_id: int = 1
    #: footprints in the working CRS (None: none) of the maps read lately, least recently used first
    footprints: OrderedDict[int, Any] = field(default_factory=OrderedDict)


def run(req: MergeRequest, progress: Callable[[str, int, int], object] | None = None) -> dict:
    """Merge ``req.maps`` into ``req.out``. Returns a summary (:meth:`Tally.as_dict`, plus the CRSs and layers).

    Args:
        req: the request (checked here again).
        progress: called as ``progress(stage, done, total)`` with stage ``maps`` (describing) or ``blocks``.

    Returns:
        The summary.

    Raises:
        RtsError: a bad option or output, a map that cannot be read or has no CRS, no map with a polygon or
            footprint.
    """
    import shapely

    from rtscli.errors import RtsError
    from rtscli.io.raster import crs_name
    from rtscli.io.schema import footprint_layer
    from rtscli.track.merge_inputs import describe, output_crs, to_working, working_crs
    from rtscli.track.merge_schema import parquet_coverage
    from rtscli.track.merge_write import MergedOutput

    check(req)
    _system_allocator()
    maps = []
    for i, p in enumerate(req.maps):
        maps.append(describe(p, i, req.layer))
        if progress:
            progress("maps", i + 1, len(req.maps))
    crs = working_crs(maps)
    to_working(maps, crs)
    out_crs = output_crs(maps, req.out_crs)
    moved = [m for m in maps if not m.crs.equals(out_crs)]
    if moved:
        log.info("%d map(s) reprojected to %s (e.g. %s from %s)", len(moved), crs_name(out_crs), moved[0].path.name,
                 crs_name(moved[0].crs))
    log.info("merging in %s (equal-area, centred on the maps), blocks of %g km", crs.srs, req.options.block_km)
    no_fp = [m for m in maps if m.footprint is None]
    if no_fp:
        log.warning("%d of %d map(s) have no footprint layer (e.g. %s): where they looked is unknown, so n_covered "
                    "and detection_rate are left empty and no coverage is written. rts predict writes the footprint "
                    "into GeoPackage outputs (-o folder/ or -o scene.gpkg)", len(no_fp), len(maps), no_fp[0].path.name)
    undated = [m for m in maps if m.date is None]
    if undated:
        log.info("%d map(s) have no date in their scene, file or folder name (e.g. %s): their slumps' dates are "
                 "left empty", len(undated), undated[0].path.name)
    placed = [k for k, m in enumerate(maps) if m.work_bounds is not None]
    if not placed:
        raise RtsError("the maps hold no polygon and no footprint", path=req.maps[0] if req.maps else None,
                       fix="pass rts predict outputs (GeoPackages with their footprint layer)")
    tree = shapely.STRtree([shapely.box(*maps[k].work_bounds) for k in placed])  # type: ignore[misc]
    with_features = [k for k, m in enumerate(maps) if m.work_features is not None]
    feature_tree = shapely.STRtree([shapely.box(*maps[k].work_features) for k in with_features])  # type: ignore[misc]
    ctx = Context(req, maps, tree, placed, feature_tree, with_features, crs, out_crs, coverage_known=not no_fp)
    blocks = blocks_of(maps, req.options.block_km * 1000.0)
    tally = Tally(maps=len(maps))
    with MergedOutput(req.out, req.out_layer, out_crs, SLUMP_TYPES, COVERAGE_TYPES, overwrite=req.overwrite) as w:
        for k, b in enumerate(blocks):
            slumps, cover = merge_block(ctx, b, tally)
            w.add(slumps)
            if cover is not None:
                w.add_coverage(cover)
            if progress:
                progress("blocks", k + 1, len(blocks))
            _trim()
    if tally.incomplete:
        log.warning("%d group(s) of overlapping polygons reach beyond %d growths of their block's region (a chain "
                    "of overlaps over many km): they may be split; a larger --block-km joins them", tally.incomplete,
                    MAX_GROW)
    layers = [req.out_layer, footprint_layer(req.out_layer)] if req.out.suffix.lower() == ".gpkg" else \
        [req.out.name, parquet_coverage(req.out).name]
    return {**tally.as_dict(), "blocks": len(blocks), "crs": crs_name(out_crs), "working_crs": crs.srs,
            "layers": layers, "coverage_known": not no_fp, "reprojected": len(moved), "undated": len(undated)}


def _grown(bounds: tuple[float, float, float, float], extra: np.ndarray) -> tuple[float, float, float, float]:
    return (min(bounds[0], float(extra[:, 0].min())) - MARGIN_M, min(bounds[1], float(extra[:, 1].min())) - MARGIN_M,
            max(bounds[2], float(extra[:, 2].max())) + MARGIN_M, max(bounds[3], float(extra[:, 3].max())) + MARGIN_M)


def _read(ctx: Context, b: Block, tally: Tally) -> tuple[Observations, np.ndarray, list[int], Any]:
    """The block's observations and connected parts (labels), read from a region that holds every part the block
    may own whole; also the maps read and the region."""
    import shapely

    x0, y0, x1, y1 = b.bounds
    region_b = (x0 - MARGIN_M, y0 - MARGIN_M, x1 + MARGIN_M, y1 + MARGIN_M)
    for attempt in range(MAX_GROW + 1):
        region = shapely.box(*region_b)
        which = sorted(ctx.placed[int(i)] for i in ctx.tree.query(region, predicate="intersects"))
        holding = sorted(ctx.with_features[int(i)] for i in ctx.feature_tree.query(region, predicate="intersects"))
        obs = read_region(ctx.maps, holding, region, ctx.crs, ctx.req.options.min_area)
        left, right, ov = links(obs.geom, obs.area, obs.unit, ctx.req.options.metric, ctx.req.options.threshold)
        near = near_pairs(obs.geom, obs.unit, obs.edge | obs.nodata, FRAGMENT_GAP_M)
        comp = components(len(obs), np.concatenate([left, near[0]]), np.concatenate([right, near[1]]))
        if not len(obs):
            return obs, comp, which, (left, right, ov, near)
        cb = _part_bounds(obs.geom, comp)
        touches = (cb[:, 0] <= x1) & (cb[:, 2] >= x0) & (cb[:, 1] <= y1) & (cb[:, 3] >= y0)
        g = FRAGMENT_GAP_M  # a part is whole when it lies this far inside the region: its near pieces were read too
        inside = (cb[:, 0] >= region_b[0] + g) & (cb[:, 1] >= region_b[1] + g) & (cb[:, 2] <= region_b[2] - g) & \
                 (cb[:, 3] <= region_b[3] - g)
        out = touches & ~inside
        if not out.any():
            break
        if attempt == MAX_GROW:
            tally.incomplete += int(out.sum())
            break
        if attempt == 0:
            tally.grown += 1
        region_b = _grown(region_b, cb[out])
    return obs, comp, which, (left, right, ov, near)


def _part_bounds(geoms: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """The bounding box (x0, y0, x1, y1) of each connected part."""
    import shapely

    g = shapely.bounds(geoms)
    k = int(comp.max()) + 1
    out = np.empty((k, 4))
    out[:, :2] = np.inf
    out[:, 2:] = -np.inf
    np.minimum.at(out[:, 0], comp, g[:, 0])
    np.minimum.at(out[:, 1], comp, g[:, 1])
    np.maximum.at(out[:, 2], comp, g[:, 2])
    np.maximum.at(out[:, 3], comp, g[:, 3])
    return out


def merge_block(ctx: Context, b: Block, tally: Tally) -> tuple[dict[str, list], dict[str, list] | None]:
    """The slumps a block owns, as output columns, and its coverage row (None: nothing, or coverage unknown)."""
    import shapely

    obs, comp, which, (left, right, ov, near) = _read(ctx, b, tally)
    tally.repaired += obs.repaired
    tally.small += obs.small
    footprints = _footprints(ctx, which)
    cover = _coverage_row(ctx, b, footprints) if ctx.coverage_known else None
    empty: dict[str, list] = {k: [] for k in [*SLUMP_TYPES, "geometry"]}
    if not len(obs):
        return empty, cover
    x0, y0, x1, y1 = b.bounds
    cb = _part_bounds(obs.geom, comp)
    here = np.flatnonzero((cb[:, 0] <= x1) & (cb[:, 2] >= x0) & (cb[:, 1] <= y1) & (cb[:, 3] >= y0))
    rank = ranks(obs, ctx.maps)
    partial = obs.edge | obs.nodata
    overlap = {(int(a), int(c)): float(o) for a, c, o in zip(left, right, ov, strict=True)}
    pieces = _fragment_pairs(ctx, obs, near, footprints)

    def nested(i: int, seed: int) -> bool:
        a = obs.area[i]
        return a > 0 and shapely.intersection(obs.geom[i], obs.geom[seed]).area / a >= SAME_SCENE_IOS

    order = np.argsort(comp, kind="stable")
    starts = np.searchsorted(comp[order], np.arange(int(comp.max()) + 2))
    slumps: list[Slump] = []
    for c in here.tolist():
        members = order[starts[c]:starts[c + 1]].tolist()
        slumps += [Slump(members, members)] if len(members) == 1 else \
            group(members, rank, obs.unit, partial, overlap, pieces, nested)
    if not slumps:
        return empty, cover
    outlines = _outlines(obs.geom, slumps)
    xy = shapely.get_coordinates(shapely.point_on_surface(outlines))
    mine = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    owned = [(s, g) for s, g, k in zip(slumps, outlines, mine, strict=True) if k]
    owned.sort(key=lambda sg: rank[sg[0].members[0]])
    return _columns(ctx, obs, owned, footprints, tally), cover


def _outlines(geoms: np.ndarray, slumps: list[Slump]) -> np.ndarray:
    """Each slump's outline in the working CRS: its first observation, or the union of its cut pieces."""
    import shapely

    return np.asarray([geoms[s.parts[0]] if len(s.parts) == 1 else shapely.union_all(geoms[s.parts])
                       for s in slumps], dtype=object)


def _fragment_pairs(ctx: Context, obs: Observations, near: tuple[np.ndarray, np.ndarray],
                    footprints: dict[int, Any]) -> set[tuple[int, int]]:
    """The pairs of ``near`` that may join as a fragment: the partial view's scene does not see all of the other
    polygon (it reaches beyond that scene's valid footprint, or the footprint is unknown), as a slump cut by that
    scene's edge or nodata does."""
    import shapely

    out = set()
    partial = obs.edge | obs.nodata
    for a, b in zip(near[0].tolist(), near[1].tolist(), strict=True):
        for p, q in ((a, b), (b, a)):
            if not partial[p]:
                continue
            fp = footprints.get(int(obs.unit[p]))
            g = obs.geom[q]
            if fp is None or shapely.difference(g, fp).area > 1e-3 * g.area:
                out.add((a, b))
                break
    return out


#: footprints kept between blocks (a map reaches a few neighbouring blocks): bounded, so memory does not grow with
#: the number of maps
FOOTPRINT_CACHE = 256


def _footprints(ctx: Context, which: list[int]) -> dict[int, Any]:
    """The footprints (working CRS) of the maps read, by map index (read once while in the cache)."""
    from rtscli.track.merge_inputs import move, read_footprint

    out = {}
    cache = ctx.footprints
    for k in which:
        if k in cache:
            cache.move_to_end(k)
        else:
            m = ctx.maps[k]
            fp = read_footprint(m)
            cache[k] = move(np.asarray([fp], dtype=object), m.crs, ctx.crs)[0] if fp is not None else None
            if len(cache) > FOOTPRINT_CACHE:
                cache.popitem(last=False)
        if cache[k] is not None:
            out[k] = cache[k]
    return out


def _coverage_row(ctx: Context, b: Block, footprints: dict[int, Any]) -> dict[str, list] | None:
    """The part of the period's coverage (the union of the valid footprints) in block ``b``, as one row."""
    import shapely

    from rtscli.geometry.measure import geodesic_area
    from rtscli.track.merge_inputs import move

    cell = shapely.box(*b.bounds)
    pieces, scenes = [], []
    for k, fp in footprints.items():
        part = shapely.intersection(fp, cell)
        if part is not None and not part.is_empty and part.area > 0:
            pieces.append(part)
            scenes.append(ctx.maps[k])
    if not pieces:
        return None
    from rtscli.io.vector import polygonal

    union = polygonal(shapely.union_all(pieces))
    if union is None or union.is_empty:
        return None
    dated = sorted((m.date, m.date_text) for m in scenes if m.date is not None)
    return {"block": [b.name], "n_scenes": [len(scenes)], "first_date": [dated[0][1] if dated else ""],
            "last_date": [dated[-1][1] if dated else ""],
            "area_km2": [round(geodesic_area(union, ctx.crs) / 1e6, 4)],
            "geometry": [move(np.asarray([union], dtype=object), ctx.crs, ctx.out_crs)[0]]}


def _covered(geoms: np.ndarray, seen: list[set[int]], keys: list[int], fps: list[Any]) -> np.ndarray:
    """For each outline of ``geoms`` (working CRS), how many scenes other than those in its ``seen`` have a valid
    footprint (``fps``, the footprints of the maps ``keys``) holding :data:`COVER_SHARE` of it."""
    import shapely

    out = np.zeros(len(geoms), np.int64)
    if not fps or not len(geoms):
        return out
    fp_arr = np.asarray(fps, dtype=object)
    which, hit = shapely.STRtree(fp_arr).query(geoms, predicate="intersects")
    other = np.asarray([keys[f] not in seen[w] for w, f in zip(which.tolist(), hit.tolist(), strict=True)], bool)
    which, hit = which[other], hit[other]
    if not len(which):
        return out
    whole = shapely.contains(fp_arr[hit], geoms[which])
    part = ~whole
    share = np.ones(len(which))
    if part.any():
        inter = shapely.area(shapely.intersection(fp_arr[hit[part]], geoms[which[part]]))
        share[part] = inter / np.maximum(shapely.area(geoms[which[part]]), 1e-12)
    np.add.at(out, which[share >= COVER_SHARE], 1)
    return out


def _columns(ctx: Context, obs: Observations, owned: list[tuple[Slump, Any]], footprints: dict[int, Any],
             tally: Tally) -> dict[str, list]:
    """The output columns of the slumps ``owned`` (each with its outline in the working CRS)."""
    import shapely

    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.track.merge_inputs import move

    maps = ctx.maps
    keys = list(footprints)
    fps = [footprints[k] for k in keys]
    for fp in fps:
        shapely.prepare(fp)
    seeds = np.asarray([s.members[0] for s, _ in owned], np.int64)
    geoms = np.empty(len(seeds), dtype=object)
    area = np.zeros(len(seeds))
    perim = np.zeros(len(seeds))
    by_crs: dict[int, list[int]] = {}
    for j, i in enumerate(seeds.tolist()):
        if len(owned[j][0].parts) == 1:
            by_crs.setdefault(id(maps[int(obs.unit[i])].crs), []).append(j)
    for js in by_crs.values():  # an outline as its map drew it, moved to the output CRS only if need be
        crs = maps[int(obs.unit[seeds[js[0]]])].crs
        own = obs.own[seeds[js]]
        area[js], perim[js] = geodesic_area_perimeter(own, crs)
        geoms[js] = move(own, crs, ctx.out_crs)
    for j, (s, _) in enumerate(owned):  # cut pieces of several scenes: their union, in the output CRS
        if len(s.parts) > 1:
            moved = [move(obs.own[[i]], maps[int(obs.unit[i])].crs, ctx.out_crs)[0] for i in s.parts]
            geoms[j] = shapely.union_all(moved)
            a, p = geodesic_area_perimeter([geoms[j]], ctx.out_crs)
            area[j], perim[j] = a[0], p[0]
    more = _covered(np.asarray([g for _, g in owned], dtype=object),
                    [set(int(obs.unit[i]) for i in s.members) for s, _ in owned], keys, fps) \
        if ctx.coverage_known else np.zeros(len(seeds), np.int64)
    cols: dict[str, list] = {k: [] for k in [*SLUMP_TYPES, "geometry"]}
    for j, (slump, _) in enumerate(owned):
        members, parts = slump.members, slump.parts
        seed = members[0]
        units = [int(obs.unit[i]) for i in members]
        seen = set(units)
        partial = bool(all(obs.edge[i] or obs.nodata[i] for i in members))
        if ctx.coverage_known:
            n_cov: int | None = len(seen) + int(more[j])
            rate = len(seen) / n_cov if n_cov else float("nan")
        else:
            n_cov, rate = None, float("nan")
        dated = sorted((maps[u].date, maps[u].date_text) for u in units if maps[u].date is not None)
        scenes = sorted({(_iso(maps[u]), maps[u].scene) for u in units})
        scores = obs.score[members]
        m = maps[units[0]]
        tally.observed[len(seen)] += 1
        tally.partial_only += partial
        if rate == rate:
            tally.rates[min(int(rate * 20), 19)] += 1
        cols["id"].append(ctx.next_id + j)
        cols["n_observed"].append(len(seen))
        cols["n_covered"].append(n_cov)
        cols["detection_rate"].append(round(rate, 4) if rate == rate else None)
        cols["partial_only"].append(partial)
        cols["date"].append(m.date_text)
        cols["first_date"].append(dated[0][1] if dated else "")
        cols["last_date"].append(dated[-1][1] if dated else "")
        cols["best_scene"].append(m.scene)
        cols["scenes"].append(",".join(s for _, s in scenes))
        cols["score"].append(round(float(np.nanmax(scores)), 4) if np.isfinite(scores).any() else None)
        cols["outline_score"].append(round(float(obs.score[seed]), 4) if np.isfinite(obs.score[seed]) else None)
        cols["area_m2"].append(round(float(area[j]), 2))
        cols["perimeter_m"].append(round(float(perim[j]), 2))
        cols["touches_edge"].append(bool(obs.edge[parts].any()))
        cols["touches_nodata"].append(bool(obs.nodata[parts].any()))
        cols["model"].append(",".join(dict.fromkeys(obs.model[i] for i in members if obs.model[i])))
        cols["source"].append("+".join(f"{maps[int(obs.unit[i])].path.name}#{int(obs.fid[i])}" for i in parts))
        cols["geometry"].append(geoms[j])
    ctx.next_id += len(owned)
    tally.slumps += len(owned)
    tally.observations += sum(len(s.members) for s, _ in owned)
    return cols


def _system_allocator() -> None:
    """Arrow allocates through the C library's allocator from here on: its default pool (mimalloc) keeps the
    pages that each row group freed (about 90 MB more at 1,000,000 polygons), where ``malloc_trim`` after each
    block hands them back to the OS."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _iso(m: MapInfo) -> str:
    return m.date.isoformat() if m.date is not None else ""


def _trim() -> None:
    """Give the heap's freed pages back to the OS after a block (glibc ``malloc_trim``; elsewhere nothing), so
    that the resident memory follows the block in hand, not the largest block so far."""
    import os

    if os.environ.get("RTS_MALLOC_TRIM", "1") == "0":
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
