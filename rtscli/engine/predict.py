"""``rts predict``: streaming sliding-window inference over a scene -> one georeferenced polygon per slump.

The pipeline, per scene:

1. **Tiles.** The scene is cut into windows of the bundle's tile size, overlapping by ``overlap``
   pixels (default: 25% of the tile), edge tiles padded (as nodata). A :class:`TileDataset` reads
   each window with rasterio (never the whole raster; each DataLoader worker opens its own file
   handles), builds the bundle's modalities with the bundle's band map and normalization, and
   reports tiles with no valid pixel, which are skipped (never given to the model).
2. **Model.** Tiles go to the model in batches; masks stay at RoI resolution (28 x 28).
3. **Polygons.** Each mask is resampled into its box only (not a full tile), thresholded at 0.5
   and polygonized with holes kept (``rasterio.features.shapes``) straight into map coordinates
   through the window's transform (pixel edges, no half-pixel shift).
4. **Seams.** Instances from different tiles that overlap in map coordinates by at least
   ``match_threshold`` (intersection over the smaller, or IoU) are merged by union: a slump cut
   by a tile border comes out as one polygon, with the highest member score. Touching slumps
   (no shared area) stay apart. Partial views along a tile border that the tile seeing the place
   whole did not confirm are joined to the slump they touch, or dropped (:class:`SeamMerger`).
   Merging streams row by row, so memory stays at about two rows of tiles. ``merge="nms"``
   instead keeps the best-scoring box among overlapping ones (what box-NMS tilers do), for
   comparison.
5. **Output.** Attributes (score, area and perimeter in metres, flags) and an atomic write.

Times spent reading, in the model, merging/polygonizing and writing are kept in ``timing``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: two instances of one tile are one slump when this much of the smaller lies inside the larger
SAME_TILE_IOS = 0.5


@dataclass
class Source:
    """One input raster and which of its bands are which channel (1-based)."""

    path: Path
    bands: dict[str, int]
    nodata: float | None = None  # filled in by open_scene (the raster's own, or --nodata)


@dataclass
class Scene:
    name: str
    sources: list[Source]
    width: int
    height: int
    transform: Any
    crs: Any
    resample: bool = False


@dataclass
class Timing:
    read: float = 0.0
    model: float = 0.0
    merge: float = 0.0
    write: float = 0.0
    tiles: int = 0
    skipped: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        d = {k: round(getattr(self, k), 3) for k in ("read", "model", "merge", "write")}
        return d | {"tiles": self.tiles, "skipped_nodata_tiles": self.skipped} | self.extra


def open_scene(sources: list[Source], *, resample: bool = False, name: str | None = None,
               nodata: float | None = None) -> Scene:
    """Check the rasters (readable, CRS, same grid unless ``resample``) and describe the scene.

    Each source keeps its own nodata value (``nodata`` overrides them all, for rasters whose nodata
    is not tagged).
    """
    from rtscli.io.raster import inspect

    infos = [inspect(s.path) for s in sources]
    ref = infos[0]
    for s, inf in zip(sources, infos, strict=True):
        top = max(s.bands.values())
        if inf.count < top:
            raise RtsError(f"the band map needs band {top}, the raster has {inf.count}", path=s.path,
                           fix="pass --bands matching the raster (see `rts bands`)")
        if inf is not ref and not ref.same_grid(inf):
            if not resample:
                raise RtsError(f"this raster is on another grid than {sources[0].path.name} "
                               f"({inf.crs} {inf.width}x{inf.height} vs {ref.crs} {ref.width}x{ref.height})",
                               path=s.path, fix="pass --resample to resample it onto the first raster's grid")
            log.info("resampling %s onto the grid of %s (bilinear)", s.path, sources[0].path)
        s.nodata = nodata if nodata is not None else inf.nodata
    return Scene(name=name or sources[0].path.stem, sources=sources, width=ref.width, height=ref.height,
                 transform=ref.transform, crs=ref.crs, resample=resample)


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left (col, row) of every tile; the last row/column of tiles ends at the scene's edge."""
    if overlap < 0 or overlap >= tile:
        raise RtsError(f"overlap {overlap} px must be in [0, tile size {tile})", fix="use e.g. --overlap 0.25")
    step = tile - overlap

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        return s + [n - tile]

    return [(c, r) for r in starts(height) for c in starts(width)]


class TileDataset(torch.utils.data.Dataset):
    """Windows of a scene, composed into the bundle's modalities. Each worker opens its own handles."""

    def __init__(self, scene: Scene, origins: list[tuple[int, int]], *, tile: int, modalities, stats,
                 repeat_to: int | None, scale: float = 1.0) -> None:
        self.scene, self.origins, self.tile, self.scale = scene, origins, tile, float(scale)
        self.modalities, self.stats, self.repeat_to = modalities, stats, repeat_to
        self._handles: dict[int, list] = {}
        names: dict[str, int] = {}
        for s in scene.sources:
            for n in s.bands:
                names.setdefault(n, len(names) + 1)
        from rtscli.data.bands import BandMap

        self.band_map = BandMap.from_mapping(names)

    def __len__(self) -> int:
        return len(self.origins)

    def _open(self) -> list:
        pid = os.getpid()
        if pid not in self._handles:
            import rasterio
            from rasterio.vrt import WarpedVRT

            handles = []
            for i, s in enumerate(self.scene.sources):
                src = rasterio.open(s.path)
                if i and self.scene.resample:
                    from rasterio.enums import Resampling

                    src = WarpedVRT(src, crs=self.scene.crs, transform=self.scene.transform,
                                    width=self.scene.width, height=self.scene.height, resampling=Resampling.bilinear,
                                    nodata=s.nodata)
                handles.append(src)
            self._handles = {pid: handles}
        return self._handles[pid]

    def __getitem__(self, i: int):
        try:
            return self._load(i)
        except RtsError as exc:
            return {"index": i, "error": str(exc)}
        except Exception as exc:  # a worker's traceback would be one huge line: report it cleanly
            return {"index": i, "error": f"cannot read tile {i} of {self.scene.name}: "
                                         f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"}

    def _load(self, i: int) -> dict:
        from rasterio.windows import Window

        from rtscli.data.modalities import compose

        t0 = time.perf_counter()
        col, row = self.origins[i]
        t, sc = self.tile, self.scene
        # the part of the tile inside the scene is read; the rest is padding (never valid)
        h, w = max(0, min(t, sc.height - row)), max(0, min(t, sc.width - col))
        raw = np.zeros((len(self.band_map.names), t, t), np.float32)
        inside = np.zeros((t, t), bool)
        inside[:h, :w] = True
        valid = inside.copy()
        k = 0
        for src, s in zip(self._open(), sc.sources, strict=True):
            data = src.read(list(s.bands.values()), window=Window(col, row, w, h)).astype(np.float32, copy=False)
            n = data.shape[0]
            raw[k:k + n, :h, :w] = data
            if s.nodata is not None and not np.isnan(s.nodata):
                valid[:h, :w] &= ~(data == np.float32(s.nodata)).all(axis=0)
            valid[:h, :w] &= np.isfinite(data).all(axis=0)
            k += n
        if self.scale != 1.0:
            raw *= np.float32(self.scale)
        if not valid.any():
            return {"index": i, "empty": True, "seconds": time.perf_counter() - t0}
        # share of valid pixels clipped by the model's normalization range (units check)
        clipped = 0.0
        for name, st in self.stats.items():
            if name in self.band_map:
                x = raw[self.band_map[name] - 1][valid]
                clipped = max(clipped, float(np.mean((x <= st.low) | (x >= st.high))))
        arrays, _ = compose(raw, self.band_map, self.modalities, self.stats, nodata=None, repeat_to=self.repeat_to)
        image = np.concatenate([arrays[m.name] for m in self.modalities], axis=0)
        image[:, ~valid] = 0.0
        return {"index": i, "empty": False, "image": torch.from_numpy(np.ascontiguousarray(image)),
                "valid": torch.from_numpy(valid), "inside": torch.from_numpy(inside), "clipped": clipped,
                "seconds": time.perf_counter() - t0}


def _collate(batch: list[dict]) -> list[dict]:
    return batch


def mask_in_box(probs: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Resample a (28, 28) RoI mask into its box on the tile grid. Returns (probabilities, col0, row0).

    Pixel (c, r) of the tile takes the mask's value at its centre (c + 0.5, r + 0.5) in box
    coordinates (bilinear), as torchvision's paste does, but only over the box's pixels.
    """
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = shape
    c0, r0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    c1, r1 = min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), np.float32), c0, r0
    m = probs.shape[-1]
    cols = (np.arange(c0, c1, dtype=np.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * m - 0.5
    rows = (np.arange(r0, r1, dtype=np.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * m - 0.5
    mapx = np.broadcast_to(cols[None, :], (r1 - r0, c1 - c0)).astype(np.float32)
    mapy = np.broadcast_to(rows[:, None], (r1 - r0, c1 - c0)).astype(np.float32)
    # beyond the mask's outer cells the value falls off to 0, as in torchvision's zero-padded paste
    out = cv2.remap(probs.astype(np.float32), mapx, mapy, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out, c0, r0


def polygonize(binary: np.ndarray, transform) -> Any | None:
    """The largest polygon (holes kept) of a binary crop, in map coordinates via ``transform``."""
    from rasterio.features import shapes
    from shapely.geometry import shape

    best, best_area = None, 0.0
    for geom, val in shapes(binary.astype(np.uint8), mask=binary.astype(bool), transform=transform,
                            connectivity=4):
        if val != 1:
            continue
        poly = shape(geom)
        if poly.area > best_area:
            best, best_area = poly, poly.area
    return best


def instances_from_tile(pred: dict[str, torch.Tensor], *, origin: tuple[int, int], scene: Scene, tile: int,
                        valid: np.ndarray, inside: np.ndarray, tile_index: int, min_score: float,
                        threshold: float = 0.5) -> list[Instance]:
    """Polygons of one tile's detections, in the scene's CRS."""
    import cv2

    from rtscli.io.raster import apply, window_transform

    col, row = origin
    inverse = ~scene.transform
    out = []
    scores = pred["scores"].cpu().numpy()
    boxes = pred["boxes"].cpu().numpy()
    probs = pred.get("mask_probs")
    probs = probs.cpu().numpy()[:, 0] if probs is not None else None
    invalid_in_scene = inside & ~valid
    for k in np.flatnonzero(scores >= min_score):
        if probs is not None:
            p, c0, r0 = mask_in_box(probs[k], boxes[k], (tile, tile))
            binary = (p >= threshold) & valid[r0:r0 + p.shape[0], c0:c0 + p.shape[1]]
        else:  # a detection-only model: the box is the polygon
            x0, y0, x1, y1 = boxes[k]
            c0, r0 = int(round(x0)), int(round(y0))
            binary = np.ones((max(0, int(round(y1)) - r0), max(0, int(round(x1)) - c0)), bool)
            binary &= valid[r0:r0 + binary.shape[0], c0:c0 + binary.shape[1]]
        if not binary.any():
            continue
        geom = polygonize(binary, window_transform(scene.transform, col + c0, row + r0))
        if geom is None or geom.is_empty:
            continue
        # does the instance touch nodata (8-neighbourhood)?
        hh, ww = binary.shape
        ra, rb, ca, cb = max(0, r0 - 1), min(tile, r0 + hh + 1), max(0, c0 - 1), min(tile, c0 + ww + 1)
        ring = np.zeros((rb - ra, cb - ca), np.uint8)
        ring[r0 - ra:r0 - ra + hh, c0 - ca:c0 - ca + ww] = binary
        ring = cv2.dilate(ring, np.ones((3, 3), np.uint8)).astype(bool)
        touches_nodata = bool((ring & invalid_in_scene[ra:rb, ca:cb]).any())
        # the polygon's pixel box in the scene (its vertices back to pixels: exact for rotated grids too);
        # it touches the scene's edge, or a border of its tile inside the scene (a partial view)
        xy = np.asarray(geom.exterior.coords)
        xs, ys = apply(inverse, xy[:, 0], xy[:, 1])
        box = (round(float(xs.min())), round(float(ys.min())), round(float(xs.max())), round(float(ys.max())))
        touches_edge = box[0] <= 0 or box[1] <= 0 or box[2] >= scene.width or box[3] >= scene.height
        cut = ((box[0] <= col and col > 0) or (box[1] <= row and row > 0)
               or (box[2] >= col + tile and col + tile < scene.width)
               or (box[3] >= row + tile and row + tile < scene.height))
        out.append(Instance(geom, float(scores[k]), tile_index, touches_nodata, bool(touches_edge), box, bool(cut)))
    return out


@dataclass
class Instance:
    geometry: Any  # shapely polygon in the scene's CRS
    score: float
    tile: int
    touches_nodata: bool
    touches_edge: bool
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # scene pixels (col0, row0, col1, row1), ends exclusive
    cut: bool = False  # touches a border of its tile that lies inside the scene: a partial view


@dataclass
class Grid:
    """The tiling of a scene, as the merger needs it."""

    width: int
    height: int
    tile: int
    cols: list[int]  # tile starts, as tile_grid makes them (row-major: index = row_index * len(cols) + col_index)
    rows: list[int]
    pixel: float  # the larger pixel side in map units: the gap tolerance is GAP_PX of these
    row_height: float  # a pixel's height in map units

    @classmethod
    def of(cls, scene: Scene, tile: int, origins: list[tuple[int, int]]) -> Grid:
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


def _root(parent: list[int], i: int) -> int:
    """Union-find: the root of ``i`` (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


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

    def __init__(self, grid: Grid, *, metric: str = "ios", threshold: float = 0.2):
        self.grid, self.metric, self.threshold = grid, metric, threshold
        self.pending: list[Instance] = []
        self.dropped = 0  # partial views contradicted by a tile that saw the place whole

    def add(self, items: list[Instance]) -> None:
        self.pending += items

    def finished(self, next_row: int) -> list[dict]:
        """Merge and hand out the slumps that end more than the gap tolerance above pixel row
        ``next_row`` (the top of the next row of tiles); the others stay pending."""
        if not self.pending:
            return []
        groups, dropped, ties = self._groups(self.pending)
        limit = next_row - self.grid.margin_rows
        # a group is final when it, and every group whose fate it decides or that decides its fate
        # (a fragment and its neighbours), lie above the rows still to come
        open_ = {ties(i) for i in range(len(self.pending)) if self.pending[i].bbox[3] > limit}
        done, keep = [], []
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

    def finish(self) -> list[dict]:
        return self.finished(1 << 62)

    def _groups(self, items: list[Instance]) -> list[list[int]]:
        from shapely import STRtree

        geoms = [it.geometry for it in items]
        tree = STRtree(geoms)
        parent = list(range(len(items)))

        def find(i: int) -> int:
            return _root(parent, i)

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
            return _root(tie, i)

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

    def _merge(self, group: list[Instance]) -> dict:
        from shapely.ops import unary_union

        geom = group[0].geometry if len(group) == 1 else unary_union([it.geometry for it in group])
        if geom.geom_type == "MultiPolygon":
            # a fragment a pixel away: close the gap (square joins keep pixel corners; this also fills
            # notches under 1.5 px). A diagonal gap does not close: the slump stays one MultiPolygon.
            d = 0.5 * GAP_PX * self.grid.pixel
            closed = geom.buffer(d, join_style="mitre").buffer(-d, join_style="mitre")
            geom = closed if closed.geom_type == "Polygon" else geom.buffer(0)
        return {"geometry": geom, "score": max(it.score for it in group), "tiles": len({it.tile for it in group}),
                "touches_nodata": any(it.touches_nodata for it in group),
                "touches_edge": any(it.touches_edge for it in group)}


class BoxNMS:
    """``--merge nms``, with the merger's interface: box-NMS needs all of a scene's instances at once."""

    def __init__(self, threshold: float = 0.5):
        self.threshold, self.items, self.dropped = threshold, [], 0

    def add(self, items: list[Instance]) -> None:
        self.items += items

    def finished(self, next_row: int) -> list[dict]:
        return []

    def finish(self) -> list[dict]:
        return box_nms(self.items, self.threshold)


def box_nms(items: list[Instance], threshold: float = 0.5) -> list[dict]:
    """Greedy non-maximum suppression on bounding boxes at IoU ``threshold``: the merging of
    SAHI-like tilers, kept for comparison (``--merge nms``)."""
    from shapely import STRtree
    from shapely.geometry import box as sbox

    if not items:
        return []
    boxes = [sbox(*it.geometry.bounds) for it in items]
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
    return [{"geometry": it.geometry, "score": it.score, "tiles": 1, "touches_nodata": it.touches_nodata,
             "touches_edge": it.touches_edge} for i, it in enumerate(items) if not dropped[i]]


def metric_lengths(gdf) -> tuple[np.ndarray, np.ndarray]:
    """(area_m2, perimeter_m) of every geometry: in the CRS's own metres when projected, else (and for
    Mercator projections, whose scale grows fast toward the pole) in a Lambert azimuthal equal-area
    projection centred on the data."""
    if len(gdf) == 0:
        return np.zeros(0), np.zeros(0)
    crs = gdf.crs
    if crs is None:
        raise RtsError("the scene has no CRS", fix="assign one (gdal_edit.py -a_srs EPSG:...)")
    from pyproj import CRS as PCRS

    method = (PCRS.from_user_input(crs).coordinate_operation.method_name or "") if crs.is_projected else ""
    mercator = "mercator" in method.lower() and "transverse" not in method.lower()
    if crs.is_geographic or mercator:  # Web Mercator areas are ~8x too large at 70 N
        c = gdf.geometry.to_crs(4326).union_all().centroid
        laea = f"+proj=laea +lat_0={c.y} +lon_0={c.x} +datum=WGS84 +units=m +no_defs"
        g = gdf.geometry.to_crs(laea)
        return g.area.to_numpy(), g.length.to_numpy()
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return gdf.geometry.area.to_numpy() * unit**2, gdf.geometry.length.to_numpy() * unit


def to_frame(merged: list[dict], *, scene: Scene, bundle, model_name: str, to_crs: Any = None,
             min_area: float = 0.0, simplify: float = 0.0):
    import geopandas as gpd

    from rtscli.io.raster import parse_crs

    cols = ["id", "score", "area_m2", "perimeter_m", "scene", "model", "modalities", "fusion", "tile_size",
            "touches_nodata", "touches_edge", "tiles", "created"]
    geoms = [m["geometry"] for m in merged]
    if simplify > 0:
        geoms = [g.simplify(simplify, preserve_topology=True) for g in geoms]
    gdf = gpd.GeoDataFrame({"score": [m["score"] for m in merged]}, geometry=geoms, crs=scene.crs)
    if to_crs:
        gdf = gdf.to_crs(parse_crs(to_crs, "--to-crs"))
    area, perim = metric_lengths(gdf)
    gdf["area_m2"] = np.round(area, 3)
    gdf["perimeter_m"] = np.round(perim, 3)
    gdf["touches_nodata"] = np.array([bool(m["touches_nodata"]) for m in merged], dtype=bool)
    gdf["touches_edge"] = np.array([bool(m["touches_edge"]) for m in merged], dtype=bool)
    gdf["tiles"] = np.array([int(m["tiles"]) for m in merged], dtype=np.int64)
    if min_area > 0:
        gdf = gdf[gdf["area_m2"] >= min_area]
    gdf = gdf.sort_values("score", ascending=False, kind="mergesort").reset_index(drop=True)  # stable: same ids
    gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
    fusion = (bundle.config.get("fusion") or {}).get("strategy", "none")
    gdf["scene"] = scene.name
    gdf["model"] = model_name
    gdf["modalities"] = ",".join(m.name for m in bundle.modalities)
    gdf["fusion"] = fusion
    gdf["tile_size"] = np.full(len(gdf), int(bundle.tile_size), dtype=np.int64)
    gdf["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    gdf["score"] = gdf["score"].astype(float).round(4)
    return gdf[cols + ["geometry"]]


@dataclass
class PredictOptions:
    overlap: int | None = None  # pixels; None: 25% of the tile
    batch_size: int = 4
    workers: int = 2
    min_score: float = 0.5
    min_area: float = 0.0
    simplify: float = 0.0
    merge: str = "union"  # union | nms
    match_metric: str = "ios"
    match_threshold: float = 0.2
    to_crs: str | None = None
    device: str | None = None
    scale: float = 1.0  # multiplies the band values before normalization (units of the training data)


def predict_scene(model, bundle, scene: Scene, opts: PredictOptions, *,
                  progress: Callable[[int, int], None] | None = None,
                  on_tile: Callable[[list[Instance]], None] | None = None) -> tuple[Any, Timing]:
    """Run the model over a scene. Returns (GeoDataFrame, timing).

    Tiles are read, predicted and merged in row-major order; slumps no later tile can touch are
    merged as soon as their rows are done, so memory does not grow with the number of raw
    detections. ``on_tile`` sees every tile's raw instances (for diagnostics and benchmarks).
    """
    tile = bundle.tile_size
    overlap = opts.overlap if opts.overlap is not None else default_overlap(tile, bundle.config)
    origins = tile_grid(scene.width, scene.height, tile, overlap)
    ds = TileDataset(scene, origins, tile=tile, modalities=bundle.modalities, stats=bundle.stats,
                     repeat_to=bundle.config.get("repeat_to", 3), scale=opts.scale)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=opts.batch_size, shuffle=False, collate_fn=_collate,
                                         num_workers=opts.workers, persistent_workers=False,
                                         prefetch_factor=2 if opts.workers else None)
    merger = (BoxNMS(opts.match_threshold) if opts.merge == "nms" else
              SeamMerger(Grid.of(scene, tile, origins), metric=opts.match_metric, threshold=opts.match_threshold))
    merged: list[dict] = []
    row = 0
    timing = Timing()
    clipped: list[float] = []
    t_wait = time.perf_counter()
    for batch in loader:
        timing.read += time.perf_counter() - t_wait  # waiting for tiles (reading runs in the workers)
        bad = next((b for b in batch if "error" in b), None)
        if bad is not None:
            raise RtsError(bad["error"], fix="check the raster (gdalinfo -checksum); --workers 0 --debug shows more")
        busy = sum(b["seconds"] for b in batch)
        timing.extra["read_in_workers_s"] = timing.extra.get("read_in_workers_s", 0.0) + busy
        full = [b for b in batch if not b["empty"]]
        clipped += [b["clipped"] for b in full]
        timing.skipped += len(batch) - len(full)
        timing.tiles += len(batch)
        preds = []
        if full:
            t = time.perf_counter()
            images = torch.stack([b["image"] for b in full]).to(device)
            with torch.inference_mode():
                preds = model.predict(images)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            timing.model += time.perf_counter() - t
        t = time.perf_counter()
        for b, p in zip(full, preds, strict=True):
            top = origins[b["index"]][1]
            if top > row:  # a new row of tiles: hand out what the rows above finished
                merged += merger.finished(top)
                release_freed_memory()
                row = top
            items = instances_from_tile(p, origin=origins[b["index"]], scene=scene, tile=tile,
                                        valid=b["valid"].numpy(), inside=b["inside"].numpy(),
                                        tile_index=b["index"], min_score=opts.min_score)
            if on_tile:
                on_tile(items)
            merger.add(items)
        timing.merge += time.perf_counter() - t
        if progress:
            progress(len(batch), len(origins))
        t_wait = time.perf_counter()
    if clipped and float(np.median(clipped)) > 0.9:
        log.warning("%s: most pixels lie outside the value range the model was trained on (%s); the scene may be in "
                    "other units (e.g. reflectance x 10000 vs 0-1: --scale 0.0001) or another band order: check "
                    "--bands and the training data", scene.name,
                    ", ".join(f"{k} {v.low:g}..{v.high:g}" for k, v in bundle.stats.items()))
    t = time.perf_counter()
    merged += merger.finish()
    gdf = to_frame(merged, scene=scene, bundle=bundle, model_name=bundle.path.name, to_crs=opts.to_crs,
                   min_area=opts.min_area, simplify=opts.simplify)
    timing.merge += time.perf_counter() - t
    timing.extra["overlap_px"] = overlap
    timing.extra["fragments_dropped"] = merger.dropped
    if merger.dropped:
        log.info("%s: %d partial detections along tile borders dropped (the tile that saw the place whole did not "
                 "find a slump there)", scene.name, merger.dropped)
    return gdf, timing


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the OS (glibc ``malloc_trim``). Without it, the resident
    size of a long run creeps up as the model's varying-size buffers fragment the heap; elsewhere
    a no-op. ``RTS_MALLOC_TRIM=0`` turns it off."""
    trim = _malloc_trim()
    if trim is not None and os.environ.get("RTS_MALLOC_TRIM", "1") != "0":
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def default_overlap(tile: int, config: dict | None = None) -> int:
    """At least 25% of the tile, more when the training slumps were large: the 75th percentile of
    their box sides (recorded in the bundle), so that a typical slump lies whole in at least one
    tile (seam merging joins the others); at most half the tile."""
    sizes = ((config or {}).get("instance_sizes") or {}).get("box_side_px_percentiles") or {}
    big = float(sizes.get("p75", 0.0) or 0.0)
    return int(min(tile // 2, max(round(0.25 * tile), math.ceil(big))))
