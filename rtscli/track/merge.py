"""``rts merge``: the per-scene maps of one period in, one regional map out, each slump once.

Overlapping scenes of one period see the same slump several times. The observations are joined as
``rts predict`` joins a scene's tiles and ``rts track`` joins dates: by the overlap of their polygons in one
equal-area CRS (:func:`rtscli.track.merge_inputs.working_crs`), never by boxes.

**Grouping.** Polygons of different maps that overlap by ``metric`` (``ios``: intersection over the smaller,
robust to a view cut by a scene edge; or ``iou``) of at least ``threshold`` are linked; each connected part of
that graph is then split into slumps best view first (:func:`group`): the best-viewed observation starts a
slump, and every other one joins the slump whose first outline it overlaps most (by at least ``threshold``)
and which holds no observation of its scene yet, else it starts a slump of its own. So one scene never counts
twice for one slump: two slumps that one scene mapped apart stay apart even where a coarser map of another
scene saw them as one. Two exceptions follow ``rts predict``'s own seam rules: a second polygon of a scene that
lies at least half inside the slump's outline is a piece of that scene's view of it (:data:`SAME_SCENE_IOS`),
and a fragment, a slump seen only in views cut by a scene edge or nodata that lies within
:data:`FRAGMENT_GAP_M` of a slump of other scenes reaching beyond the cut scene's footprint, joins that slump
(a misregistered sliver along an edge shares no area with the whole views); two such fragments make one
outline, the union of their pieces.

**The outline** of a slump is its best-viewed observation: one not touching nodata (clouds, quality masks)
or a scene edge before one that does, then the highest score, then the largest area. It is an outline that
one image shows, at one date and from one scene (its ``date`` and ``best_scene``, as ARTS's ``BaseMapDate``
and ``BaseMapID`` want); a view cut by an edge or a cloud is partial by construction and is kept only when no
other exists (then the slump is flagged ``partial_only``). A consensus outline (where most views agree) would
mix dates and scenes; ``benchmarks/merge_synth.py`` compares both with the truth.

**Confidence.** ``n_observed`` is the number of scenes that detected the slump; ``n_covered`` the number
whose valid footprint (the ``<layer>_footprint`` layer of ``rts predict``: valid pixels, quality masks left
out) holds at least :data:`COVER_SHARE` of its outline, the detecting scenes included;
``detection_rate = n_observed / n_covered``. When any map has no footprint layer, ``n_covered`` and the rate
are unknown (null) for every slump, since that map may have looked anywhere.

**Blocks.** The working CRS is cut into square blocks (``block_km``) from the south-west corner of the maps'
extents. A slump belongs to the block that holds
the representative point (shapely ``point_on_surface``) of its outline (half-open: each point in one block).
Each block reads the polygons of the maps that reach it plus a margin (:data:`MARGIN_M`), through each file's
spatial index; a connected part that reaches out of what was read is read again with a larger region, so
that every block sees every part it may own whole and the same slumps come out whatever the block size.
Memory is that of one block's polygons and the footprints of the maps that reach it, not of the region.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtscli.errors import RtsError
from rtscli.geometry.polygons import union_root
from rtscli.track.merge_inputs import MapInfo

log = logging.getLogger("rtscli")

#: a scene covered a slump when its valid footprint holds at least this share of the slump's outline
COVER_SHARE = 0.5
#: read this far (m, working CRS) beyond each block: slumps are far smaller, so one read is nearly always enough
MARGIN_M = 2000.0
#: how many times a block's region may grow to take in a connected part that reaches out of it
MAX_GROW = 8
#: a second polygon of one scene is a piece of a slump that scene already saw when this share of it lies inside the
#: slump's outline (``rts predict``'s rule for two instances of one tile: :data:`rtscli.geometry.seams.SAME_TILE_IOS`)
SAME_SCENE_IOS = 0.5
#: a partial view this close (m) to a slump of other scenes that reaches beyond its own scene is a piece of it
FRAGMENT_GAP_M = 5.0

SLUMP_TYPES = {"id": "int64", "n_observed": "int64", "n_covered": "int64", "detection_rate": "float64",
               "partial_only": "bool", "date": "string", "first_date": "string", "last_date": "string",
               "best_scene": "string", "scenes": "string", "score": "float64", "outline_score": "float64",
               "area_m2": "float64", "perimeter_m": "float64", "touches_edge": "bool", "touches_nodata": "bool",
               "model": "string", "source": "string"}
COVERAGE_TYPES = {"block": "string", "n_scenes": "int64", "first_date": "string", "last_date": "string",
                  "area_km2": "float64"}


@dataclass
class MergeOptions:
    """How observations are joined, and the blocks they are processed in."""

    metric: str = "ios"
    threshold: float = 0.3
    min_area: float = 0.0  # true m2: smaller polygons are left out
    block_km: float = 50.0

    def check(self) -> None:
        """Raises :class:`RtsError` for an unknown metric, a threshold outside (0, 1], a negative area or a block
        size that is not positive."""
        if self.metric not in ("ios", "iou"):
            raise RtsError(f"--match {self.metric!r} is not ios or iou", fix="use --match ios (or iou)")
        if not 0 < self.threshold <= 1:
            raise RtsError(f"--match-threshold {self.threshold:g} is not in (0, 1]", fix="e.g. --match-threshold 0.3")
        if not self.min_area >= 0:
            raise RtsError(f"--min-area {self.min_area:g} is negative", fix="give a true area in m², e.g. 100")
        if not (math.isfinite(self.block_km) and self.block_km > 0):
            raise RtsError(f"--block-km {self.block_km:g} is not a size", fix="e.g. --block-km 50")


@dataclass
class MergeRequest:
    maps: list[Path]  # every per-scene map file (expanded)
    out: Path
    layer: str | None = None
    options: MergeOptions = field(default_factory=MergeOptions)
    to_crs: str | None = None
    out_crs: Any = None  # --to-crs, parsed by check()
    overwrite: bool = False

    @property
    def out_layer(self) -> str:
        return self.layer or "rts"


def check(req: MergeRequest) -> None:
    """Every check that needs no map read: options, the output format, and outputs that would be replaced.

    Raises:
        RtsError: a bad option, an output that is not GeoParquet or GeoPackage, or an output (a GeoPackage: its
            layers) that exists without ``overwrite``.
    """
    from rtscli.io.atomic import check_output
    from rtscli.io.schema import footprint_layer
    from rtscli.io.vector import check_vector_output, driver_for
    from rtscli.track.merge_schema import parquet_coverage

    req.options.check()
    driver = driver_for(req.out)
    if driver == "GPKG":
        check_vector_output(req.out, req.overwrite, [req.out_layer, footprint_layer(req.out_layer)],
                            other="or choose another -o")
    elif driver == "Parquet":
        check_output(req.out, req.overwrite)
        check_output(parquet_coverage(req.out), req.overwrite)
    else:
        raise RtsError("rts merge writes GeoParquet or a GeoPackage (written as it goes, in bounded memory)",
                       path=req.out, fix="use -o region.parquet (or region.gpkg)")
    if req.to_crs:
        from rtscli.io.raster import parse_crs

        req.out_crs = parse_crs(req.to_crs, "--to-crs")


# --- grouping ----------------------------------------------------------------------------------------------------


def links(geoms: np.ndarray, areas: np.ndarray, units: np.ndarray, metric: str,
          threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs ``(i, j)`` (i < j) of polygons of different units (scenes) that overlap by ``metric`` >=
    ``threshold``, and their overlap. ``geoms`` in one CRS (equal-area: the ratios are true), ``areas`` theirs."""
    import shapely

    if len(geoms) < 2:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = (left < right) & (units[left] != units[right])
    left, right = left[keep], right[keep]
    inter = _intersection_areas(geoms[left], geoms[right])
    if metric == "iou":
        ov = inter / np.maximum(areas[left] + areas[right] - inter, 1e-12)
    else:
        ov = inter / np.maximum(np.minimum(areas[left], areas[right]), 1e-12)
    ok = (inter > 0) & (ov >= threshold)
    return left[ok], right[ok], ov[ok]


def _intersection_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas of the pairwise intersections; a pair GEOS cannot intersect (a topology fault) is retried repaired."""
    import shapely

    try:
        return np.asarray(shapely.area(shapely.intersection(a, b)), float)
    except shapely.errors.GEOSException:
        out = np.zeros(len(a))
        for k, (g, h) in enumerate(zip(a, b, strict=True)):
            try:
                out[k] = g.intersection(h).area
            except shapely.errors.GEOSException:
                out[k] = shapely.make_valid(g).buffer(0).intersection(shapely.make_valid(h).buffer(0)).area
        return out


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The connected part (a label 0..K-1) of each of ``n`` nodes linked by the pairs ``(left, right)``."""
    parent = list(range(n))
    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = union_root(parent, a), union_root(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.asarray([union_root(parent, i) for i in range(n)], np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64) if n else roots


def near_pairs(geoms: np.ndarray, units: np.ndarray, partial: np.ndarray,
               gap: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(i, j)`` (i < j) of polygons of different scenes, one of them a partial view (touching its
    scene's edge or nodata), that lie within ``gap`` (working CRS units) of each other: the candidates for a
    fragment (:func:`group`)."""
    import shapely

    if len(geoms) < 2:
        e = np.zeros(0, np.int64)
        return e, e
    left, right = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=gap)
    keep = (left < right) & (units[left] != units[right]) & (partial[left] | partial[right])
    return left[keep], right[keep]


@dataclass
class Slump:
    """A slump made of observations: ``members`` (the outline's observation first), and ``parts``, the
    observations whose union is its outline (the first alone, unless it is made of cut pieces only)."""

    members: list[int]
    parts: list[int]


def group(members: list[int], rank: np.ndarray, units: np.ndarray, partial: np.ndarray,
          overlap: dict[tuple[int, int], float], near: set[tuple[int, int]],
          nested: Callable[[int, int], bool] | None = None) -> list[Slump]:
    """Split a connected part into slumps, best view first (see the module docstring), then join the fragments.

    A fragment is a slump seen only in partial views (every one touches its scene's edge or nodata) that is
    linked to another slump (by overlap, or by a pair of ``near``: within :data:`FRAGMENT_GAP_M`, the other
    reaching beyond the partial view's scene) with which it shares no scene: a slump cut by the edge of one
    scene, whose piece misregistration keeps from overlapping the views of the others (as ``rts predict``
    joins a tile's fragment to the slump it touches). It joins that slump (one with a whole view first); two
    fragments that join make one outline, the union of their pieces.

    Args:
        members: the observations of one connected part.
        rank: each observation's place in the order of views (lower: better viewed).
        units: each observation's scene.
        partial: whether each observation touches its scene's edge or nodata.
        overlap: ``{(i, j): overlap}`` for the pairs linked by overlap (i < j).
        near: the fragment pairs ``(i, j)`` (i < j) allowed.
        nested: ``nested(i, seed)``: whether :data:`SAME_SCENE_IOS` of observation ``i`` lies inside ``seed``. An
            observation whose scene is already in the slump it overlaps most is a second piece of that scene's view
            of it when it is nested so in the slump's outline (the rule of ``rts predict`` for two instances of one
            tile); it joins the slump without counting its scene twice. None: never.

    Returns:
        The slumps.
    """
    slumps: list[list[int]] = []
    seen: list[set[int]] = []
    for i in sorted(members, key=lambda k: rank[k]):
        best, best_ov, piece = -1, -1.0, -1
        for s, obs in enumerate(slumps):
            seed = obs[0]
            ov = overlap.get((min(seed, i), max(seed, i)), -1.0)
            if units[i] in seen[s]:
                if ov >= 0 and piece < 0 and nested is not None and nested(i, seed):
                    piece = s
                continue
            if ov > best_ov:
                best, best_ov = s, ov
        if best >= 0 and best_ov >= 0:
            slumps[best].append(i)
            seen[best].add(int(units[i]))
        elif piece >= 0:
            slumps[piece].append(i)
        else:
            slumps.append([i])
            seen.append({int(units[i])})
    parts = [[s[0]] for s in slumps]
    cut = [all(partial[i] for i in s) for s in slumps]
    gone = [False] * len(slumps)

    def linked(a: int, b: int) -> bool:
        key = (min(a, b), max(a, b))
        return key in overlap or key in near

    for s in range(len(slumps)):
        if not cut[s] or gone[s]:
            continue
        into = [t for t in range(len(slumps)) if t != s and not gone[t] and not seen[s] & seen[t]
                and any(linked(a, b) for a in slumps[s] for b in slumps[t])]
        if not into:
            continue
        t = min(into, key=lambda t: (cut[t], t))  # a slump with a whole view first, then the better seen
        slumps[t] += slumps[s]
        seen[t] |= seen[s]
        if cut[t]:
            parts[t] += parts[s]
        gone[s] = True
    return [Slump(m, p) for m, p, g in zip(slumps, parts, gone, strict=True) if not g]


# --- one block ---------------------------------------------------------------------------------------------------


@dataclass
class Observations:
    """The polygons read for one region, in the working CRS (``geom``) and in their map's own (``own``)."""

    geom: np.ndarray
    own: np.ndarray
    unit: np.ndarray  # index of the map (scene)
    fid: np.ndarray
    score: np.ndarray
    edge: np.ndarray
    nodata: np.ndarray
    area: np.ndarray  # m2 (the working CRS is equal-area)
    model: list[str]
    repaired: int = 0
    small: int = 0

    def __len__(self) -> int:
        return len(self.geom)


def read_region(maps: list[MapInfo], which: list[int], region: Any, crs: Any, min_area: float) -> Observations:
    """Every polygon of the maps ``which`` that reaches ``region`` (a box in the working CRS ``crs``), cleaned
    (invalid ones repaired, non-polygons and empties left out) and without those below ``min_area`` (m2).

    Raises:
        RtsError: a map cannot be read.
    """
    import shapely

    from rtscli.io.vector import polygonal
    from rtscli.track.merge_inputs import move, read_features, region_in

    parts: dict[str, list] = {k: [] for k in ("geom", "own", "unit", "fid", "score", "edge", "nodata", "model")}
    repaired = small = 0
    shapely.prepare(region)
    for k in which:
        m = maps[k]
        f = read_features(m, region_in(m, region, crs))
        if not len(f):
            continue
        own = f.geometry
        present = ~(shapely.is_missing(own) | shapely.is_empty(own))
        bad = present & ~shapely.is_valid(own)
        if bad.any():
            repaired += int(bad.sum())
            own = own.copy()
            own[bad] = [polygonal(g) for g in shapely.make_valid(own[bad])]
            present &= ~shapely.is_missing(own)
        keep = present & np.isin(shapely.get_type_id(own), (3, 6))  # Polygon, MultiPolygon
        geom = np.asarray(move(own[keep], m.crs, crs), dtype=object)
        inside = shapely.intersects(region, geom)
        idx = np.flatnonzero(keep)[inside]
        n = len(idx)
        if not n:
            continue
        parts["geom"].append(geom[inside])
        parts["own"].append(own[idx])
        parts["unit"].append(np.full(n, k, np.int64))
        parts["fid"].append(f.fid[idx])
        parts["score"].append(_numbers(f.fields.get("score"), idx))
        parts["edge"].append(_flags(f.fields.get("touches_edge"), idx))
        parts["nodata"].append(_flags(f.fields.get("touches_nodata"), idx))
        names = f.fields.get("model")
        parts["model"].append(["" if v is None or v != v else str(v) for v in names[idx].tolist()]
                              if names is not None else [""] * n)
    if not parts["geom"]:
        e = np.zeros(0)
        return Observations(np.zeros(0, object), np.zeros(0, object), e.astype(np.int64), e.astype(np.int64), e,
                            e.astype(bool), e.astype(bool), e, [], repaired, 0)
    geom = np.concatenate(parts["geom"])
    area = np.asarray(shapely.area(geom), float)
    big = area >= min_area if min_area > 0 else np.ones(len(geom), bool)
    small = int((~big).sum())
    cat = {k: np.concatenate(v)[big] for k, v in parts.items() if k != "model"}
    model = [s for s, b in zip((s for v in parts["model"] for s in v), big, strict=True) if b]
    return Observations(cat["geom"], cat["own"], cat["unit"], cat["fid"], cat["score"].astype(float),
                        cat["edge"].astype(bool), cat["nodata"].astype(bool), area[big], model, repaired, small)


def _numbers(values: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """A numeric field at ``idx`` as floats (nan where missing or not a number; all nan without the field)."""
    import pandas as pd

    if values is None:
        return np.full(len(idx), np.nan)
    return pd.to_numeric(pd.Series(values[idx]), errors="coerce").to_numpy(float)


def _flags(values: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """A flag field at ``idx`` as booleans: booleans and 0/1, but also text (``"false"`` is False)."""
    if values is None:
        return np.zeros(len(idx), bool)
    v = values[idx]
    if v.dtype == object:
        return np.asarray([str(x).strip().lower() in ("true", "1", "yes", "t", "y") for x in v], bool)
    return np.nan_to_num(v.astype(float), nan=0.0) != 0


def ranks(obs: Observations, maps: list[MapInfo]) -> np.ndarray:
    """The order of views (0: best): whole views (touching neither nodata nor a scene edge) first, then by score
    (highest first; no score last), then area (largest first), then map and feature id (the same in every
    block)."""
    partial = obs.edge | obs.nodata
    score = np.where(np.isfinite(obs.score), -obs.score, np.inf)
    order = np.lexsort((obs.fid, np.asarray([maps[u].index for u in obs.unit]), -obs.area, score, partial))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


@dataclass
class Block:
    """One square of the grid: ``[x0, x1) x [y0, y1)`` in the working CRS, counted from the grid's origin."""

    col: int
    row: int
    size: float
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        s, (ox, oy) = self.size, self.origin
        return ox + self.col * s, oy + self.row * s, ox + (self.col + 1) * s, oy + (self.row + 1) * s

    @property
    def name(self) -> str:
        return f"r{self.row}c{self.col}"


def grid_origin(maps: list[MapInfo]) -> tuple[float, float]:
    """The grid's origin: the south-west corner of the maps' extents in the working CRS (whole metres), so that
    the first blocks are full ones."""
    boxes = [m.work_bounds for m in maps if m.work_bounds is not None]
    if not boxes:
        return 0.0, 0.0
    return float(math.floor(min(b[0] for b in boxes))), float(math.floor(min(b[1] for b in boxes)))


def blocks_of(maps: list[MapInfo], size: float) -> list[Block]:
    """The blocks that some map's extent reaches, row by row from the north, west to east."""
    ox, oy = grid_origin(maps)
    cells: set[tuple[int, int]] = set()
    for m in maps:
        if m.work_bounds is None:
            continue
        x0, y0, x1, y1 = m.work_bounds
        for r in range(math.floor((y0 - oy) / size), math.floor((y1 - oy) / size) + 1):
            for c in range(math.floor((x0 - ox) / size), math.floor((x1 - ox) / size) + 1):
                cells.add((r, c))
    return [Block(c, r, size, (ox, oy)) for r, c in sorted(cells, key=lambda rc: (-rc[0], rc[1]))]
