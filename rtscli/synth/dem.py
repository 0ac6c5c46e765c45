"""A synthetic DEM beside each synthetic scene (``rts synth --dem``): landforms at real scales, slumps as bowls.

The DEM lies on the scene's grid (float32 metres, nodata -9999), written by window from the scene's plan:

* **terrain**: a regional slope (1-3 % rising across the scene), rolling hills of 10-25 m over ~1.2 km and
  hummocks of 1-3 m over ~240 m (coherent noise: windows join without seams);
* **lakes** are flat basins 2-4 m below their shores, **rivers** valleys 3-6 m deep, both with banks a few pixels wide;
* each **slump** is a bowl cut into the slope: its scar drops behind a steep headwall (3-8 m high over about two
  pixels, i.e. 35-55° at 3 m), a floor that falls gently towards the mouth, and a debris tongue standing about 1 m
  above the tundra below it. With ``--years`` each date's DEM follows that date's slumps: the headwall retreats as
  the scar grows. Weak-RGB slumps are carved like the others: terrain shows what the imagery hides.
* the **look-alikes** (river bars, roads, burns, dry patches) are flat: no bowl, no headwall;
* some scenes (every third, counting from the second) have **voids** (nodata patches, as ArcticDEM strips have over
  water and steep shadows).

Sources for the scales: Lantuit and Pollard (2008), Kokelj et al. (2013) on headwall heights (1-25 m, typically a few
metres on low-relief tundra) and scar sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtscli.synth import noise

#: the DEM's nodata value
NODATA = -9999.0


def _bowl(mask: np.ndarray, depth: float, wall_px: float) -> np.ndarray:
    """Depth (m, >= 0) inside ``mask``: rising from 0 at its edge to ``depth`` within ``wall_px`` pixels."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    return depth * np.clip(dist / wall_px, 0.0, 1.0)


def _local(geom: Any, row0: int, col0: int, h: int, w: int, pad: int) -> tuple[np.ndarray, int, int] | None:
    """``geom`` (pixel coordinates of the scene) rasterized on its own box grown by ``pad``, and that box's origin
    (row, col); None when the box misses the window (row0, col0, h, w)."""
    from rtscli.synth.render import _rasterize

    if geom.is_empty:
        return None
    x0, y0, x1, y1 = geom.bounds
    r0, c0 = int(np.floor(y0)) - pad, int(np.floor(x0)) - pad
    r1, c1 = int(np.ceil(y1)) + pad, int(np.ceil(x1)) + pad
    if r1 <= row0 or c1 <= col0 or r0 >= row0 + h or c0 >= col0 + w:
        return None
    return _rasterize([geom], (r1 - r0, c1 - c0), r0, c0), r0, c0


def _paste(dst: np.ndarray, src: np.ndarray, r0: int, c0: int, row0: int, col0: int) -> None:
    """Add ``src`` (origin r0, c0 in scene pixels) into ``dst`` (origin row0, col0), where they overlap."""
    h, w = dst.shape
    a0, b0 = max(r0, row0), max(c0, col0)
    a1, b1 = min(r0 + src.shape[0], row0 + h), min(c0 + src.shape[1], col0 + w)
    if a0 < a1 and b0 < b1:
        dst[a0 - row0:a1 - row0, b0 - col0:b1 - col0] += src[a0 - r0:a1 - r0, b0 - c0:b1 - c0]


def elevation(plan: Any, row0: int, col0: int, h: int, w: int, *, seed: int) -> np.ndarray:
    """The DEM of one window of a scene plan, metres, float32 ``(h, w)`` (no voids: :func:`write_dem` adds them).

    Args:
        plan: the scene's :class:`rtscli.synth.plan.Plan` (pixel coordinates, its resolution in metres).
        row0: the window's first row, pixels.
        col0: the window's first column, pixels.
        h: rows, pixels.
        w: columns, pixels.
        seed: the scene's seed (the same place gives the same terrain at every date).
    """
    res = float(plan.resolution)
    rng = np.random.default_rng(seed)
    grade = rng.uniform(0.01, 0.03)
    hills = rng.uniform(10.0, 25.0)
    cols = (col0 + np.arange(w, dtype=np.float32)) * res
    z = 60.0 + grade * cols[None, :] + np.zeros((h, 1), np.float32)
    z = z + hills * noise.value_noise(row0, col0, h, w, 1200.0 / res, noise.key_of(seed, "dem-hills"))
    z = z + rng.uniform(1.0, 3.0) * noise.value_noise(row0, col0, h, w, 240.0 / res, noise.key_of(seed, "dem-hum"))
    z = z.astype(np.float32)
    cut = np.zeros((h, w), np.float32)
    bank = max(2.0, 6.0 / res)
    for k, g in enumerate(plan.lakes):
        loc = _local(g, row0, col0, h, w, 2)
        if loc is not None:
            _paste(cut, _bowl(loc[0], 2.0 + (k % 3), bank), loc[1], loc[2], row0, col0)
    for k, g in enumerate(plan.rivers):
        loc = _local(g, row0, col0, h, w, 2)
        if loc is not None:
            _paste(cut, _bowl(loc[0], 3.0 + (k % 4), 2 * bank), loc[1], loc[2], row0, col0)
    tongue = np.zeros((h, w), np.float32)
    for k, s in enumerate(plan.slumps):
        scar = s.geometry.difference(s.tongue)
        loc = _local(scar, row0, col0, h, w, 2)
        if loc is not None:  # a steep headwall around the scar, and a floor falling towards the mouth
            depth = 3.0 + 5.0 * ((k * 0.618034) % 1.0)
            _paste(cut, _bowl(loc[0], depth, 2.0), loc[1], loc[2], row0, col0)
        loc = _local(s.tongue, row0, col0, h, w, 2)
        if loc is not None:  # the debris tongue stands about a metre above the tundra
            _paste(tongue, _bowl(loc[0], 1.0, 3.0), loc[1], loc[2], row0, col0)
    return (z - cut + tongue).astype(np.float32)


def write_dem(path: Path, plan: Any, *, transform: Any, crs: Any, seed: int, index: int, block: int = 1024) -> Path:
    """Write the DEM of a scene plan beside it (GeoTIFF, float32 metres, nodata :data:`NODATA`), by window.

    Args:
        path: the DEM's file.
        plan: the scene's plan.
        transform: the scene's affine transform.
        crs: the scene's CRS.
        seed: the scene's seed (its terrain; the same at every date).
        index: the scene's number: every third (1, 4, 7, ...) gets voids.
        block: window side, pixels.

    Returns:
        ``path``.
    """
    import rasterio
    from rasterio.windows import Window

    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import gdal_env

    height, width = plan.height, plan.width
    rng = np.random.default_rng(seed + 17)
    voids = []
    if index % 3 == 1:  # a few nodata patches, as ArcticDEM strips have
        for _ in range(3):
            r, c = rng.integers(0, height), rng.integers(0, width)
            voids.append((int(r), int(c), int(rng.integers(height // 20 + 2, height // 8 + 3)),
                          int(rng.integers(width // 20 + 2, width // 8 + 3))))
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="float32", crs=crs, transform=transform,
                   nodata=NODATA, tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=3)
    with atomic_file(path, overwrite=True) as tmp, gdal_env(), rasterio.open(tmp, "w", **profile) as dst:
        dst.set_band_description(1, "elevation")
        dst.update_tags(1, UNITTYPE="m")
        dst.units = ("m",)
        for row0 in range(0, height, block):
            for col0 in range(0, width, block):
                h, w = min(block, height - row0), min(block, width - col0)
                z = elevation(plan, row0, col0, h, w, seed=seed)
                for r, c, vh, vw in voids:
                    a0, b0 = max(r, row0), max(c, col0)
                    a1, b1 = min(r + vh, row0 + h), min(c + vw, col0 + w)
                    if a0 < a1 and b0 < b1:
                        z[a0 - row0:a1 - row0, b0 - col0:b1 - col0] = NODATA
                dst.write(z, 1, window=Window(col0, row0, w, h))
    return path
