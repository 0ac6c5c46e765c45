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
5. **Output.** Attributes (score, true area in m2 and perimeter in m on the ellipsoid, flags) and an
   atomic write.

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

from rtscli.data.scenes import Scene
from rtscli.data.tiles import TileDataset, collate_tiles
from rtscli.data.tiling import tile_grid
from rtscli.errors import RtsError
from rtscli.modeling.bundle import Bundle
from rtscli.geometry.seams import BoxNMS, Detection, SeamMerger, Slump, TileLayout

log = logging.getLogger("rtscli")


@dataclass
class Timing:
    """Where a scene's time went (seconds) and what happened to its tiles and detections."""

    read: float = 0.0  # waiting for tiles (reading runs in the DataLoader's workers)
    model: float = 0.0  # in the model
    merge: float = 0.0  # polygonizing and seam merging
    write: float = 0.0  # writing the outputs
    tiles: int = 0  # tiles read
    skipped: int = 0  # tiles without a valid pixel (never given to the model)
    extra: dict[str, float] = field(default_factory=dict)  # further counts and seconds, by name

    def as_dict(self) -> dict[str, float]:
        """The stages' seconds (rounded to ms), the tile counts and the extras, as one JSON-ready dict."""
        d = {k: round(getattr(self, k), 3) for k in ("read", "model", "merge", "write")}
        return d | {"tiles": self.tiles, "skipped_nodata_tiles": self.skipped} | self.extra


def mask_in_box(probs: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Resample a (28, 28) RoI mask into its box on the tile grid. Returns (probabilities, col0, row0).

    Pixel (c, r) of the tile takes the mask's value at its centre (c + 0.5, r + 0.5) in box
    coordinates (bilinear), as torchvision's paste does, but only over the box's pixels.

    Args:
        probs: the (M, M) mask probabilities of one detection (M = 28).
        box: its box ``(x0, y0, x1, y1)``, tile pixels.
        shape: the tile's ``(H, W)``, pixels.

    Returns:
        ``(probabilities, col0, row0)``: a float32 (rows, cols) array over the box's pixels clipped to the tile
        (``(0, 0)`` when nothing is left) and its top-left pixel in the tile.
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


def instances_from_tile(pred: dict[str, torch.Tensor], *, origin: tuple[int, int], scene: Scene, tile: int,
                        valid: np.ndarray, inside: np.ndarray, tile_index: int, min_score: float,
                        threshold: float = 0.5) -> list[Detection]:
    """Polygons of one tile's detections, in the scene's CRS.

    ``pred`` is one image's :meth:`Detector.predict` output (boxes in tile pixels, (N, 1, 28, 28)
    mask probabilities); ``valid`` and ``inside`` are (tile, tile) booleans (valid data; inside the
    scene). A detection's mask may fall apart into several parts: the largest (4-connected) is the
    slump and is kept, and every attribute (nodata and edge flags, pixel box, partial view) is
    computed from that kept part, never from the parts that were dropped.

    Args:
        pred: one image's predictions: ``boxes`` (N, 4) tile pixels, ``scores`` (N,), optionally
            ``mask_probs`` (N, 1, 28, 28).
        origin: the tile's top-left pixel (col, row) in the scene.
        scene: the scene (its grid, CRS and size).
        tile: the tile side, pixels.
        valid: (tile, tile) booleans, valid data.
        inside: (tile, tile) booleans, inside the scene.
        tile_index: the tile's index in the scene's tile grid.
        min_score: detections scoring below this are skipped.
        threshold: the mask probability at which a pixel is inside.

    Returns:
        The tile's :class:`Detection` s, polygons in the scene's CRS.
    """
    import cv2

    from rtscli.geometry.polygons import largest_part, mask_to_polygon
    from rtscli.geometry.affine import window_transform

    col, row = origin
    out = []
    scores = pred["scores"].cpu().numpy()
    boxes = pred["boxes"].cpu().numpy()
    mask_probs = pred.get("mask_probs")
    probs = mask_probs.cpu().numpy()[:, 0] if mask_probs is not None else None
    invalid_in_scene = inside & ~valid
    for k in np.flatnonzero(scores >= min_score):
        if probs is not None:
            p, c0, r0 = mask_in_box(probs[k], boxes[k], (tile, tile))
            binary = (p >= threshold) & valid[r0:r0 + p.shape[0], c0:c0 + p.shape[1]]
        else:  # a detection-only model: the box is the polygon
            x0, y0, x1, y1 = boxes[k]
            c0, r0 = max(0, int(round(x0))), max(0, int(round(y0)))
            binary = np.ones((max(0, min(tile, int(round(y1))) - r0), max(0, min(tile, int(round(x1))) - c0)), bool)
            binary &= valid[r0:r0 + binary.shape[0], c0:c0 + binary.shape[1]]
        binary = largest_part(binary, connectivity=4)  # the polygon written is this part, and only it
        if not binary.any():
            continue
        geom = mask_to_polygon(binary, window_transform(scene.transform, col + c0, row + r0), connectivity=4)
        if geom is None or geom.is_empty:
            continue
        # does the kept part touch nodata (8-neighbourhood)?
        hh, ww = binary.shape
        ra, rb, ca, cb = max(0, r0 - 1), min(tile, r0 + hh + 1), max(0, c0 - 1), min(tile, c0 + ww + 1)
        ring = np.zeros((rb - ra, cb - ca), np.uint8)
        ring[r0 - ra:r0 - ra + hh, c0 - ca:c0 - ca + ww] = binary
        ring = cv2.dilate(ring, np.ones((3, 3), np.uint8)).astype(bool)
        touches_nodata = bool((ring & invalid_in_scene[ra:rb, ca:cb]).any())
        # the kept part's pixel box in the scene (pixel space: right on rotated grids too); it touches the
        # scene's edge, or a border of its tile inside the scene (a partial view)
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        box = (col + c0 + int(cols[0]), row + r0 + int(rows[0]), col + c0 + int(cols[-1]) + 1,
               row + r0 + int(rows[-1]) + 1)
        touches_edge = box[0] <= 0 or box[1] <= 0 or box[2] >= scene.width or box[3] >= scene.height
        cut = ((box[0] <= col and col > 0) or (box[1] <= row and row > 0)
               or (box[2] >= col + tile and col + tile < scene.width)
               or (box[3] >= row + tile and row + tile < scene.height))
        out.append(Detection(geom, float(scores[k]), tile_index, touches_nodata, bool(touches_edge), box, bool(cut)))
    return out


def to_frame(merged: list[Slump], *, scene: Scene, bundle: Bundle, model_name: str, to_crs: str | None = None,
             simplify: float = 0.0) -> Any:
    """The output layer of a scene's merged slumps: one row each, ids 1..N by decreasing score.

    Args:
        merged: the slumps after seam merging, in the scene's CRS.
        scene: the scene (its name and CRS).
        bundle: the model's bundle (modalities, fusion strategy, tile size: recorded per row).
        model_name: what the ``model`` column says (:func:`model_label`).
        to_crs: reproject the polygons to this CRS (anything ``--to-crs`` takes); None keeps the scene's.
        simplify: Douglas-Peucker tolerance, map units of the scene's CRS (0: exact pixel edges).

    Returns:
        A GeoDataFrame with the README's columns: ``id``, ``score``, ``area_m2`` and ``perimeter_m`` (true
        values on the ellipsoid, m2 and m), ``scene``, ``model``, ``modalities``, ``fusion``, ``tile_size``
        (pixels), ``touches_nodata``, ``touches_edge``, ``tiles``, ``created`` (UTC, ISO 8601), and ``acquired``
        (ISO 8601, after ``scene``) when the scene says when its imagery was taken (a STAC item's datetime).

    Raises:
        RtsError: ``to_crs`` is not a CRS.
    """
    import geopandas as gpd

    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.raster import parse_crs

    cols = ["id", "score", "area_m2", "perimeter_m", "scene", "model", "modalities", "fusion", "tile_size",
            "touches_nodata", "touches_edge", "tiles", "created"]
    geoms = [m.geometry for m in merged]
    if simplify > 0:
        geoms = [g.simplify(simplify, preserve_topology=True) for g in geoms]
    gdf = gpd.GeoDataFrame({"score": [m.score for m in merged]}, geometry=geoms, crs=scene.crs)
    if to_crs:
        gdf = gdf.to_crs(parse_crs(to_crs, "--to-crs"))
    area, perim = geodesic_area_perimeter(gdf.geometry.values, gdf.crs)  # true m2 and m, on the ellipsoid
    gdf["area_m2"] = np.round(area, 3)
    gdf["perimeter_m"] = np.round(perim, 3)
    gdf["touches_nodata"] = np.array([bool(m.touches_nodata) for m in merged], dtype=bool)
    gdf["touches_edge"] = np.array([bool(m.touches_edge) for m in merged], dtype=bool)
    gdf["tiles"] = np.array([int(m.tiles) for m in merged], dtype=np.int64)
    gdf = gdf.sort_values("score", ascending=False, kind="mergesort").reset_index(drop=True)  # stable: same ids
    gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
    gdf["scene"] = scene.name
    gdf["model"] = model_name
    gdf["modalities"] = ",".join(m.name for m in bundle.modalities)
    gdf["fusion"] = bundle.fusion_strategy
    gdf["tile_size"] = np.full(len(gdf), int(bundle.tile_size), dtype=np.int64)
    gdf["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    gdf["score"] = gdf["score"].astype(float).round(4)
    if scene.date:  # when the imagery was taken, where the input says it (a STAC item's datetime)
        gdf["acquired"] = scene.date
        cols.insert(cols.index("scene") + 1, "acquired")
    return gdf[cols + ["geometry"]]


@dataclass
class PredictOptions:
    """How ``rts predict`` maps a scene (the options that decide the polygons, and the device)."""

    overlap: int | None = None  # pixels; None: 25% of the tile
    batch_size: int = 4
    workers: int = 2
    min_score: float = 0.5
    min_area: float = 0.0  # true area, m2
    simplify: float = 0.0  # Douglas-Peucker tolerance, map units
    merge: str = "union"  # union | nms
    match_metric: str = "ios"
    match_threshold: float = 0.2
    to_crs: str | None = None
    device: str | None = None


def predict_scene(model: Any, bundle: Bundle, scene: Scene, opts: PredictOptions, *,
                  progress: Callable[[int, int], None] | None = None,
                  on_tile: Callable[[list[Detection]], None] | None = None) -> tuple[Any, Timing]:
    """Run the model over a scene by tiles and merge the detections into one polygon per slump.

    Tiles are read, predicted and merged in row-major order; slumps no later tile can touch are
    merged as soon as their rows are done, so memory does not grow with the number of raw
    detections (about two rows of tiles are held).

    Args:
        model: the detector (:func:`rtscli.modeling.bundle.load_model`); moved to ``opts.device``.
        bundle: its bundle (tile size, modalities, normalization).
        scene: the scene (:func:`rtscli.data.scenes.open_scene`).
        opts: prediction options (overlap in pixels, batch size, score and area thresholds, merging).
        progress: called with (tiles just done, tiles in all) after each batch.
        on_tile: sees every tile's raw detections (diagnostics and benchmarks).

    Returns:
        ``(slumps, timing)``: the GeoDataFrame of :func:`to_frame` (after ``--min-area``, true m2) and the
        seconds spent reading, in the model, merging and writing (:class:`Timing`).

    Raises:
        RtsError: a tile cannot be read (the message names the file), or the overlap is not below the tile.
    """
    tile = bundle.tile_size
    overlap = opts.overlap if opts.overlap is not None else default_overlap(tile, bundle.instance_sizes)
    origins = tile_grid(scene.width, scene.height, tile, overlap)
    ds = TileDataset(scene, origins, tile=tile, modalities=bundle.modalities, stats=bundle.stats,
                     repeat_to=bundle.repeat_to)
    from rtscli.engine.devices import default_device

    device = opts.device or default_device()
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=opts.batch_size, shuffle=False, collate_fn=collate_tiles,
                                         num_workers=opts.workers, persistent_workers=False,
                                         prefetch_factor=2 if opts.workers else None)
    merger = (BoxNMS(opts.match_threshold) if opts.merge == "nms" else
              SeamMerger(TileLayout.of(scene, tile, origins), metric=opts.match_metric, threshold=opts.match_threshold))
    merged: list[Slump] = []
    row = 0
    timing = Timing()
    clipped: list[float] = []
    medians: dict[str, list[float]] = {}
    t_wait = time.perf_counter()
    for batch in loader:
        timing.read += time.perf_counter() - t_wait  # waiting for tiles (reading runs in the workers)
        bad = next((b for b in batch if b.error is not None), None)
        if bad is not None:
            raise RtsError(bad.error) if bad.user_error else RtsError(
                bad.error, fix="run again with --workers 0 --debug for the traceback, and please report it")
        busy = sum(b.seconds for b in batch)
        timing.extra["read_in_workers_s"] = timing.extra.get("read_in_workers_s", 0.0) + busy
        full = [b for b in batch if not b.empty]
        clipped += [b.clipped for b in full]
        for b in full:
            for name, v in b.medians.items():
                medians.setdefault(name, []).append(v)
        timing.skipped += len(batch) - len(full)
        timing.tiles += len(batch)
        preds = []
        if full:
            t = time.perf_counter()
            images = torch.stack([b.image for b in full]).to(device)
            with torch.inference_mode():
                preds = model.predict(images)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            timing.model += time.perf_counter() - t
        t = time.perf_counter()
        for b, p in zip(full, preds, strict=True):
            scores = p["scores"].detach().cpu().numpy()
            low = scores[scores < opts.min_score]
            if low.size:  # what --min-score drops, so that "0 slumps" can say why
                timing.extra["below_min_score"] = timing.extra.get("below_min_score", 0) + int(low.size)
                timing.extra["best_below_min_score"] = max(timing.extra.get("best_below_min_score", 0.0),
                                                           below(float(low.max()), opts.min_score))
            top = origins[b.index][1]
            if top > row:  # a new row of tiles: hand out what the rows above finished
                merged += merger.finished(top)
                release_freed_memory()
                row = top
            items = instances_from_tile(p, origin=origins[b.index], scene=scene, tile=tile,
                                        valid=b.valid.numpy(), inside=b.inside.numpy(),
                                        tile_index=b.index, min_score=opts.min_score)
            if on_tile:
                on_tile(items)
            merger.add(items)
        timing.merge += time.perf_counter() - t
        if progress:
            progress(len(batch), len(origins))
        t_wait = time.perf_counter()
    if clipped and float(np.median(clipped)) > 0.9:
        from rtscli.data.values import REFLECTANCE, Conversion, suggestion

        ref = next((n for n in medians if n in REFLECTANCE), next(iter(medians), None))
        hint = "check --bands"
        if ref:  # the advice comes from the conversions the scene and the model's training data went through
            read = next((s.conversion for s in scene.sources if ref in s.bands), scene.sources[0].conversion)
            hint = suggestion(float(np.median(medians[ref])), bundle.stats[ref].mean, band=ref, scene=read,
                              training=Conversion.from_record(getattr(bundle, "values", None)))
        conv = "; ".join(f"{s.path.name}: {s.conversion.describe()}" for s in scene.sources)
        log.warning("%s: most pixels lie outside the value range the model was trained on (%s; values read %s), "
                    "so the scene is probably in other units or another band order: %s", scene.name,
                    ", ".join(f"{k} {v.low:g}..{v.high:g}" for k, v in bundle.stats.items()), conv, hint)
    t = time.perf_counter()
    merged += merger.finish()
    gdf = to_frame(merged, scene=scene, bundle=bundle, model_name=model_label(bundle), to_crs=opts.to_crs,
                   simplify=opts.simplify)
    if opts.min_area > 0:  # after the merge: a slump's true area, whatever the tiles that saw it
        small = gdf["area_m2"] < opts.min_area
        if small.any():
            timing.extra["below_min_area"] = int(small.sum())
            timing.extra["best_below_min_area"] = round(float(gdf.loc[small, "score"].max()), 4)
            gdf = gdf[~small].reset_index(drop=True)
            gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
    timing.merge += time.perf_counter() - t
    timing.extra["overlap_px"] = overlap
    timing.extra["fragments_dropped"] = merger.dropped
    if merger.dropped:
        log.info("%s: %d partial detections along tile borders dropped (the tile that saw the place whole did not "
                 "find a slump there)", scene.name, merger.dropped)
    return gdf, timing


def model_label(bundle: Bundle) -> str:
    """What the output's ``model`` field says: the bundle's folder name and the start of its weights' SHA-256
    (``fused@3f2a9c1d``), so that maps made by two runs that share a folder name are told apart."""
    from rtscli.modeling.bundle import WEIGHTS

    weights = Path(bundle.path) / WEIGHTS
    if not weights.exists():
        return Path(bundle.path).name
    return f"{Path(bundle.path).name}@{weights_sha256(weights)[:8]}"


def weights_sha256(path: Path) -> str:
    """SHA-256 of a bundle's weights (cached per process and file version: many scenes, one model)."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    from rtscli.data.inputs import sha256

    return sha256(Path(path))


def below(score: float, threshold: float) -> float:
    """``score`` (below ``threshold``) with the 4 decimals scores are written with, rounded down when rounding would
    make it reach the threshold (0.14996 under 0.15 is 0.1499, never 0.1500)."""
    shown = round(score, 4)
    return shown if shown < threshold else math.floor(score * 1e4) / 1e4


def dropped_note(timing: Timing, opts: PredictOptions) -> str | None:
    """Why detections are missing from the output: how many ``--min-score`` and ``--min-area`` dropped, with the
    highest score among them, and the option to change; None when nothing was dropped."""
    ex = timing.extra
    parts = []
    if ex.get("below_min_score"):
        # scores are written with 4 decimals; the best one dropped is kept so (:func:`below`), never reading as the
        # threshold itself
        parts.append(f"{ex['below_min_score']} raw detection(s) scored below --min-score {opts.min_score:g} and were "
                     f"dropped (the best of them scored {ex['best_below_min_score']:.4f}): lower --min-score to keep "
                     "them")
    if ex.get("below_min_area"):
        parts.append(f"{ex['below_min_area']} slump(s) smaller than --min-area {opts.min_area:g} m2 were dropped "
                     f"(the best scored {ex['best_below_min_area']:.4f}): lower --min-area to keep them")
    return "; ".join(parts) or None


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


def default_overlap(tile: int, instance_sizes: dict[str, Any] | None = None) -> int:
    """The default tile overlap, pixels: at least 25% of the tile, more when the training slumps were large.

    Args:
        tile: tile side, pixels.
        instance_sizes: the bundle's record of its training slumps' sizes (:attr:`Bundle.instance_sizes`):
            the 75th percentile of their box sides, so that a typical slump lies whole in at least one tile
            (seam merging joins the others).

    Returns:
        The overlap in pixels, at most half the tile.
    """
    sizes = (instance_sizes or {}).get("box_side_px_percentiles") or {}
    big = float(sizes.get("p75", 0.0) or 0.0)
    return int(min(tile // 2, max(round(0.25 * tile), math.ceil(big))))
