"""Joining the per-tile instances of a scene into one polygon per slump (``rts predict``'s seams).

A slump cut by a tile border is seen in pieces by several tiles; a slump that fits one tile is seen
whole by it and in part by its neighbours. :class:`SeamMerger` joins these views by their overlap in
map coordinates (never by boxes), keeps touching slumps apart, and streams: tiles arrive row by row
and a slump is finished once no later row can reach it. :class:`BoxNMS` is the box non-maximum
suppression of SAHI-like tilers, kept for comparison (``--merge nms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from rtscli.geometry.polygons import union_root

#: two instances of one tile are one slump when this much of the smaller lies inside the larger
SAME_TILE_IOS = 0.5


@dataclass
class Detection:
    """One detection of one tile, as a polygon in the scene's CRS."""

    geometry: Any  # shapely polygon in the scene's CRS
    score: float
    tile: int
    touches_nodata: bool
    touches_edge: bool
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # scene pixels (col0, row0, col1, row1), ends exclusive
    cut: bool = False  # touches a border of its tile that lies inside the scene: a partial view


@dataclass
class Slump:
    """One slump after seam merging: the union of the detections that are one slump, in the scene's CRS."""

    geometry: Any  # shapely (Multi)Polygon in the scene's CRS
    score: float  # the highest score of its detections
    tiles: int  # tiles whose detections it joins
    touches_nodata: bool  # any of its detections touches nodata
    touches_edge: bool  # any of its detections touches the scene's edge


@dataclass
class TileLayout:
    """The tiling of a scene, as the merger needs it."""

    width: int
    height: int
    tile: int
    cols: list[int]  # tile starts, as tile_grid makes them (row-major: index = row_index * len(cols) + col_index)
    rows: list[int]
    pixel: float  # the larger pixel side in map units: the gap tolerance is GAP_PX of these
    row_height: float  # a pixel's height in map units

    @classmethod
    def of(cls, scene: Any, tile: int, origins: list[tuple[int, int]]) -> TileLayout:
        """The grid of ``scene`` (anything with ``width``, ``height`` and an affine ``transform``).

        Args:
            scene: the scene (its ``width`` and ``height`` in pixels, its affine ``transform``).
            tile: the tile side, pixels.
            origins: the tiles' top-left corners (col, row), pixels, as ``tile_grid`` makes them.

        Returns:
            The layout, with the pixel's larger side and its height in map units.
        """
        cols = sorted({c for c, _ in origins})
        rows = sorted({r for _, r in origins})
        t = scene.transform
        width, height = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
        return cls(scene.width, scene.height, tile, cols, rows, float(max(width, height)), float(height))

    @property
    def margin_rows(self) -> int:
        """Pixel rows between a finished slump and the next row of tiles: more than the gap tolerance."""
        return math.ceil(GAP_PX * self.pixel / self.row_height) + 1

    def seeing_whole(self, bbox: tuple[int, int, int, int]) -> set[int]:
        """Tiles that contain the pixel box without touching any of their borders inside the scene."""
        c0, r0, c1, r1 = bbox

        def fits(starts: list[int], a: int, b: int, n: int) -> list[int]:
            return [i for i, s in enumerate(starts) if (a > s or s == 0) and (b < s + self.tile or s + self.tile >= n)]

        return {ri * len(self.cols) + ci for ri in fits(self.rows, r0, r1, self.height)
                for ci in fits(self.cols, c0, c1, self.width)}


#: pieces closer than this many pixels can be one slump (a mask's edge is uncertain by about a pixel)
GAP_PX = 1.5


class SeamMerger:
    """Joins the per-tile instances of a scene into one polygon per slump, as the tiles come in.

    Rules, pairwise and transitive (union-find):

    * instances of different tiles whose overlap (``ios``: intersection over the smaller area, or
      ``iou``) reaches ``threshold`` are one slump;
    * instances of one tile are one slump only when ``SAME_TILE_IOS`` of the smaller lies inside the
      larger (a partial mask nested in a whole one); touching slumps stay apart;
    * a fragment -- a group made only of partial views (instances touching a border of their tile
      inside the scene) that lies whole inside another tile -- was not seen as a slump of its own
      by the tile that saw the place whole (else that tile's instance would overlap it and be in
      the group). It is joined to the instance it touches (within ``GAP_PX`` pixels), or dropped
      when it touches none: the whole view wins over the partial one, as in the "keep what lies
      in the tile's core" rule of segmentation tilers. These fragments are the slivers a model
      finds along a tile border beside the slump's mask from the neighbouring tile.

    Streaming: tiles come in row-major order. :meth:`finished` hands out the slumps that no tile of
    the rows still to come can touch, so that memory stays bounded by about two rows of tiles
    however large the scene; the result equals merging all instances at once.
    """

    def __init__(self, grid: TileLayout, *, metric: str = "ios", threshold: float = 0.2) -> None:
        self.grid, self.metric, self.threshold = grid, metric, threshold
        self.pending: list[Detection] = []
        self.dropped = 0  # partial views contradicted by a tile that saw the place whole

    def add(self, items: list[Detection]) -> None:
        """Take a tile's detections (tiles in row-major order); they wait until :meth:`finished` can merge them."""
        self.pending += items

    def finished(self, next_row: int) -> list[Slump]:
        """Merge and hand out the slumps that end more than the gap tolerance above pixel row
        ``next_row`` (the top of the next row of tiles); the others stay pending."""
        if not self.pending:
            return []
        groups, dropped, ties = self._groups(self.pending)
        limit = next_row - self.grid.margin_rows
        # a group is final when it, and every group whose fate it decides or that decides its fate
        # (a fragment and its neighbours), lie above the rows still to come
        open_ = {ties(i) for i in range(len(self.pending)) if self.pending[i].bbox[3] > limit}
        done: list[list[int]] = []
        keep: list[int] = []
        for g in groups:
            if ties(g[0]) in open_:
                keep += g
            else:
                done.append(g)
        for i in dropped:
            if ties(i) in open_:
                keep.append(i)
            else:
                self.dropped += 1
        out = [self._merge([self.pending[i] for i in g]) for g in done]
        self.pending = [self.pending[i] for i in sorted(keep)]
        return out

    def finish(self) -> list[Slump]:
        """Merge and hand out every slump still pending (after the last tile)."""
        return self.finished(1 << 62)

    def _groups(self, items: list[Detection]) -> tuple[list[list[int]], set[int], Callable[[int], int]]:
        """``(groups, dropped, tied)``: the indices of ``items`` that are one slump each, the fragments dropped,
        and the root of an item among groups tied by a fragment and its neighbours (for streaming)."""
        from shapely import STRtree

        geoms = [it.geometry for it in items]
        tree = STRtree(geoms)
        parent = list(range(len(items)))

        def find(i: int) -> int:
            return union_root(parent, i)

        left, right = tree.query(geoms, predicate="intersects")
        for a, b in zip(left.tolist(), right.tolist(), strict=True):
            if a >= b:
                continue
            ga, gb = geoms[a], geoms[b]
            inter = ga.intersection(gb).area
            if inter <= 0:
                continue
            if items[a].tile == items[b].tile:
                if inter / max(min(ga.area, gb.area), 1e-12) >= SAME_TILE_IOS:
                    parent[find(a)] = find(b)
                continue
            denom = min(ga.area, gb.area) if self.metric == "ios" else ga.union(gb).area
            if inter / max(denom, 1e-12) >= self.threshold:
                parent[find(a)] = find(b)

        members: dict[int, list[int]] = {}
        for i in range(len(items)):
            members.setdefault(find(i), []).append(i)
        # fragments: groups made only of partial views that lie whole inside a tile that did not see them
        contradicted = []
        for g in members.values():
            if all(items[i].cut for i in g) and self.grid.seeing_whole(
                    (min(items[i].bbox[0] for i in g), min(items[i].bbox[1] for i in g),
                     max(items[i].bbox[2] for i in g), max(items[i].bbox[3] for i in g))):
                contradicted.append(g)
        suspect = {i for g in contradicted for i in g}
        gap = GAP_PX * self.grid.pixel
        dropped: set[int] = set()
        tie = parent.copy()  # groups, and each fragment with its neighbours (for streaming)

        def tied(i: int) -> int:
            return union_root(tie, i)

        for g in contradicted:
            best = None
            for i in g:
                for j in tree.query(geoms[i], predicate="dwithin", distance=gap).tolist():
                    tie[tied(i)] = tied(j)
                    if j not in suspect:
                        key = (geoms[i].distance(geoms[j]), -geoms[j].area, j)
                        best = key if best is None or key < best else best
            if best is not None:
                parent[find(g[0])] = find(best[2])
            else:
                dropped.update(g)
        by_root: dict[int, list[int]] = {}
        for i in range(len(items)):
            if i not in dropped:
                by_root.setdefault(find(i), []).append(i)
        return list(by_root.values()), dropped, tied

    def _merge(self, group: list[Detection]) -> Slump:
        from shapely.ops import unary_union

        geom = group[0].geometry if len(group) == 1 else unary_union([it.geometry for it in group])
        if geom.geom_type == "MultiPolygon":
            # a fragment a pixel away: close the gap (square joins keep pixel corners; this also fills
            # notches under 1.5 px). A diagonal gap does not close: the slump stays one MultiPolygon.
            d = 0.5 * GAP_PX * self.grid.pixel
            closed = geom.buffer(d, join_style="mitre").buffer(-d, join_style="mitre")
            geom = closed if closed.geom_type == "Polygon" else geom.buffer(0)
        return Slump(geometry=geom, score=max(it.score for it in group), tiles=len({it.tile for it in group}),
                     touches_nodata=any(it.touches_nodata for it in group),
                     touches_edge=any(it.touches_edge for it in group))


class BoxNMS:
    """``--merge nms``, with the merger's interface: box-NMS needs all of a scene's instances at once."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.items: list[Detection] = []
        self.dropped = 0

    def add(self, items: list[Detection]) -> None:
        """Take a tile's detections; they are all kept until :meth:`finish`."""
        self.items += items

    def finished(self, next_row: int) -> list[Slump]:
        """Nothing before the end: box-NMS needs all of a scene's detections (``next_row`` is ignored)."""
        return []

    def finish(self) -> list[Slump]:
        """The detections that survive box-NMS at ``threshold`` (IoU of pixel boxes), as slumps."""
        return box_nms(self.items, self.threshold)


def box_nms(items: list[Detection], threshold: float = 0.5) -> list[Slump]:
    """Greedy non-maximum suppression on bounding boxes at IoU ``threshold``: the merging of
    SAHI-like tilers, kept for comparison (``--merge nms``)."""
    from shapely import STRtree
    from shapely.geometry import box as sbox

    if not items:
        return []
    # boxes in scene pixels, as tilers compare them (a map-space box of a polygon on a rotated grid is not its box)
    boxes = [sbox(*it.bbox) for it in items]
    left, right = STRtree(boxes).query(boxes, predicate="intersects")
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        if a != b:
            neighbours.setdefault(a, []).append(b)
    dropped = np.zeros(len(items), bool)
    for i in sorted(range(len(items)), key=lambda i: -items[i].score):
        if dropped[i]:
            continue
        for j in neighbours.get(i, []):
            if dropped[j] or items[j].score > items[i].score:
                continue
            if boxes[i].intersection(boxes[j]).area / max(boxes[i].union(boxes[j]).area, 1e-12) >= threshold:
                dropped[j] = True
    return [Slump(geometry=it.geometry, score=it.score, tiles=1, touches_nodata=it.touches_nodata,
                  touches_edge=it.touches_edge) for i, it in enumerate(items) if not dropped[i]]
