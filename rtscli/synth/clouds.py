"""Clouds, their shadows and haze, and snow patches over a synthetic scene, with the quality masks providers write.

``rts synth --clouds 0.2 --snow 0.05`` lays a :class:`Sky` over each scene (:func:`make_sky`): opaque cloud cores
covering about the share asked (some centred on slumps, so that slumps lie under clouds), a ring of light haze around
each, their shadows cast on the ground beside them, and snow patches (late-lying snowbanks) away from water. They are
painted into the scene window by window (:func:`paint`), and the masks are written beside the scene as the
providers write theirs (the encodings of :mod:`rtscli.data.quality`):

* ``<scene>_udm2.tif`` (PlanetScope UDM2): the scene's grid, 8 bands uint8, no nodata value: 1 clear, 2 snow,
  3 shadow, 4 light haze, 5 heavy haze (none here), 6 cloud, 7 confidence (0-100), 8 the legacy UDM1 bits
  (bit 0 blackfill where the scene is nodata, bit 1 cloud);
* ``<scene>_SCL_20m.tif`` (Sentinel-2 L2A SCL, as a GeoTIFF: the SAFE's is JPEG 2000): twice the scene's pixel
  size (SCL's 20 m beside 10 m bands), 1 band uint8, nodata 0: 3 cloud shadow, 4 vegetation, 5 not vegetated
  (slumps, bars, roads, scars), 6 water, 8 cloud of medium probability (the haze ring), 9 of high probability,
  11 snow, 0 no data.

The scene's truth GeoPackage gets a layer ``quality`` (``kind``: cloud, haze, shadow, snow; map coordinates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.affinity import translate
from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from rtscli.synth import noise
from rtscli.synth.plan import Plan, _lobate

#: surface reflectance x 10000 (blue, green, red, NIR) of a thick cloud and of snow
CLOUD = (6400.0, 6500.0, 6600.0, 6900.0)
SNOW = (8600.0, 8500.0, 8300.0, 7000.0)
#: a cloud shadow keeps this share of the ground's reflectance; the haze ring is this much cloud
SHADOW_GAIN = 0.45
HAZE_ALPHA = 0.45
#: the masks rts synth can write beside a scene
MASKS = ("udm2", "scl")
#: painting order: later kinds cover earlier ones
KINDS = ("snow", "shadow", "haze", "cloud")


@dataclass
class Sky:
    """What covers the ground of one scene, in scene pixel coordinates (x = column, y = row)."""

    clouds: list[Polygon] = field(default_factory=list)  # opaque cores
    haze: list[Polygon] = field(default_factory=list)  # light haze rings around the cores
    shadows: list[Polygon] = field(default_factory=list)  # cloud shadows on the ground (not under a cloud)
    snow: list[Polygon] = field(default_factory=list)  # snow patches
    key: int = 0  # noise key of the cloud texture

    def layers(self) -> list[tuple[Polygon, int]]:
        """``(polygon, kind code)`` in painting order; the code is 1 + the index in :data:`KINDS`."""
        out: list[tuple[Polygon, int]] = []
        for code, geoms in enumerate((self.snow, self.shadows, self.haze, self.clouds), start=1):
            out += [(g, code) for g in geoms if not g.is_empty]
        return out

    def kinds(self, row0: int, col0: int, h: int, w: int, scale: int = 1) -> np.ndarray:
        """``(h, w)`` uint8 kind codes of a window (0 clear, else 1 + index in :data:`KINDS`), on the scene's grid
        (``scale`` 1) or on a grid ``scale`` times coarser whose pixel (0, 0) is the scene's (0, 0) block."""
        from rasterio.features import rasterize
        from rasterio.transform import Affine

        shapes = self.layers()
        if not shapes:
            return np.zeros((h, w), np.uint8)
        t = Affine(scale, 0, col0 * scale, 0, scale, row0 * scale)
        return rasterize(shapes, out_shape=(h, w), transform=t, fill=0, dtype="uint8")


def make_sky(plan: Plan, *, clouds: float, snow: float, seed: int) -> Sky:
    """Clouds over about ``clouds`` of the scene (a third of them centred on slumps), with haze rings and shadows,
    and snow patches over about ``snow`` of it, away from water. Deterministic in ``seed`` and the plan.

    Args:
        plan: the scene's plan (its size, slumps and water).
        clouds: share of the scene under opaque cloud cores (0-0.9).
        snow: share of the scene under snow (0-0.5).
        seed: the random seed.

    Returns:
        The :class:`Sky` (shapes clipped to the scene).
    """
    rng = np.random.default_rng(noise.key_of("sky", seed, plan.seed))
    scene = box(0, 0, plan.width, plan.height)
    side = min(plan.width, plan.height)
    sky = Sky(key=noise.key_of("sky-texture", seed, plan.seed))
    cores: list[Polygon] = []
    target = clouds * scene.area
    slumps = [s.geometry for s in plan.slumps if not s.geometry.is_empty]
    covered = 0.0
    for k in range(400):
        if covered >= target:
            break
        r = max(8.0, rng.uniform(0.05, 0.12) * side)
        if k % 3 == 0 and slumps:  # a third of the clouds sit over a slump
            c = slumps[int(rng.integers(0, len(slumps)))].centroid
            cx, cy = c.x + rng.uniform(-0.3, 0.3) * r, c.y + rng.uniform(-0.3, 0.3) * r
        else:
            cx, cy = rng.uniform(0, plan.width), rng.uniform(0, plan.height)
        cores.append(_lobate(cx, cy, r, rng, amp=0.3, stretch=rng.uniform(0.8, 1.6), angle=rng.uniform(0, math.pi))
                     .intersection(scene))
        covered = unary_union(cores).area
    if cores:
        core = unary_union(cores)
        ring = core.buffer(max(3.0, 0.02 * side)).difference(core).intersection(scene)
        ux, uy = 0.1 * side, 0.06 * side  # the sun's side: shadows fall beside their clouds
        cast = translate(core, ux, uy).difference(core.union(ring)).intersection(scene)
        sky.clouds, sky.haze, sky.shadows = _parts(core), _parts(ring), _parts(cast)
    water = unary_union(plan.water()) if plan.water() else Polygon()
    patches: list[Polygon] = []
    area = 0.0
    for _ in range(400 if snow > 0 else 0):
        if area >= snow * scene.area:
            break
        r = max(4.0, rng.uniform(0.015, 0.04) * side)
        g = _lobate(rng.uniform(0, plan.width), rng.uniform(0, plan.height), r, rng, amp=0.35,
                    stretch=rng.uniform(1.0, 2.5), angle=rng.uniform(0, math.pi)).intersection(scene)
        patches.append(g.difference(water))
        area = unary_union(patches).area
    sky.snow = _parts(unary_union(patches)) if patches else []
    return sky


def _parts(g: Any) -> list[Polygon]:
    """The polygons of a (multi)polygon, without empty ones."""
    if g.is_empty:
        return []
    return [p for p in getattr(g, "geoms", [g]) if isinstance(p, Polygon) and not p.is_empty]


def paint(img: np.ndarray, valid: np.ndarray, sky: Sky, row0: int, col0: int) -> np.ndarray:
    """Paint the sky into a rendered window (surface reflectance x 10000, as :func:`rtscli.synth.render.render`).

    Args:
        img: ``(4, h, w)`` float32 reflectance x 10000 (blue, green, red, NIR), changed in place.
        valid: ``(h, w)`` bool, the scene's valid pixels (nodata stays 0).
        sky: the scene's sky.
        row0: the window's first row in the scene, pixels.
        col0: the window's first column, pixels.

    Returns:
        ``(h, w)`` uint8 kind codes of the window (:meth:`Sky.kinds`).
    """
    h, w = valid.shape
    kinds = sky.kinds(row0, col0, h, w)
    if not kinds.any():
        return kinds
    tex = 1.0 + 0.08 * noise.fbm(row0, col0, h, w, 40.0, 3, sky.key)
    cloud = np.array(CLOUD, np.float32)[:, None, None] * tex[None]
    snowy = np.array(SNOW, np.float32)[:, None, None] * (1.0 + 0.03 * noise.fbm(row0, col0, h, w, 8.0, 2,
                                                                                  sky.key + 1))[None]
    code = {k: i + 1 for i, k in enumerate(KINDS)}
    img[:] = np.where((kinds == code["snow"])[None], snowy, img)
    img[:] = np.where((kinds == code["shadow"])[None], img * SHADOW_GAIN, img)
    img[:] = np.where((kinds == code["haze"])[None], (1 - HAZE_ALPHA) * img + HAZE_ALPHA * cloud, img)
    img[:] = np.where((kinds == code["cloud"])[None], cloud, img)
    img[:, ~valid] = 0.0
    return kinds


def udm2_bands(kinds: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The eight UDM2 bands of a window (PlanetScope ``ortho_udm2``; :data:`rtscli.data.quality.UDM2_BANDS`).

    Args:
        kinds: ``(h, w)`` kind codes (:meth:`Sky.kinds`).
        valid: ``(h, w)`` bool, the scene's valid pixels.

    Returns:
        ``(8, h, w)`` uint8: clear, snow, shadow, light haze, heavy haze, cloud (0/1, one class per imaged pixel,
        all 0 in blackfill), confidence (90 where imaged, 0 in blackfill), UDM1 (bit 0 blackfill, bit 1 cloud).
    """
    from rtscli.data.quality import UDM2_BANDS

    code = {k: i + 1 for i, k in enumerate(KINDS)}
    out = np.zeros((8,) + kinds.shape, np.uint8)
    b = {k: v - 1 for k, v in UDM2_BANDS.items()}
    out[b["clear"]] = valid & (kinds == 0)
    out[b["snow"]] = valid & (kinds == code["snow"])
    out[b["shadow"]] = valid & (kinds == code["shadow"])
    out[b["haze_light"]] = valid & (kinds == code["haze"])
    out[b["cloud"]] = valid & (kinds == code["cloud"])
    out[b["confidence"]] = np.where(valid, 90, 0)
    out[b["udm1"]] = np.where(valid, 0, 1) | np.where(valid & (kinds == code["cloud"]), 2, 0)
    return out


def write_masks(path: Path, plan: Plan, sky: Sky, *, transform: Any, crs: Any, masks: tuple[str, ...],
                block: int = 1024) -> list[Path]:
    """Write the scene's quality masks beside it (``<stem>_udm2.tif``, ``<stem>_SCL_20m.tif``), by window.

    Args:
        path: the scene's GeoTIFF (the masks take its stem).
        plan: its plan (valid footprint, water and land cover for the SCL).
        sky: its sky.
        transform: the scene's affine transform.
        crs: the scene's CRS.
        masks: which to write, of :data:`MASKS`.
        block: window side, pixels.

    Returns:
        The files written.

    Raises:
        RtsError: a file cannot be written.
    """
    import rasterio
    from rasterio.features import rasterize
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from rtscli.data.quality import SCL, UDM2_BANDS
    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import gdal_env
    from rtscli.synth.sites import WATER

    out = []
    width, height = plan.width, plan.height
    if "udm2" in masks:
        target = path.with_name(f"{path.stem}_udm2.tif")
        profile = dict(driver="GTiff", width=width, height=height, count=8, dtype="uint8", crs=crs,
                       transform=transform, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
        with atomic_file(target, overwrite=True) as tmp, gdal_env(), rasterio.open(tmp, "w", **profile) as dst:
            for name, band in UDM2_BANDS.items():
                dst.set_band_description(band, name)
            for r in range(0, height, block):
                for c in range(0, width, block):
                    h, w = min(block, height - r), min(block, width - c)
                    valid = _valid(plan, r, c, h, w)
                    dst.write(udm2_bands(sky.kinds(r, c, h, w), valid), window=Window(c, r, w, h))
        out.append(target)
    if "scl" in masks:
        target = path.with_name(f"{path.stem}_SCL_20m.tif")
        sw, sh = -(-width // 2), -(-height // 2)
        profile = dict(driver="GTiff", width=sw, height=sh, count=1, dtype="uint8", crs=crs, nodata=SCL["no_data"],
                       transform=transform * Affine.scale(2), tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate")
        code = {k: i + 1 for i, k in enumerate(KINDS)}
        with atomic_file(target, overwrite=True) as tmp, gdal_env(), rasterio.open(tmp, "w", **profile) as dst:
            dst.set_band_description(1, "SCL")
            for r in range(0, sh, block):
                for c in range(0, sw, block):
                    h, w = min(block, sh - r), min(block, sw - c)
                    t = Affine(2, 0, 2 * c, 0, 2, 2 * r)  # scene pixel coordinates of the coarse window
                    scl = np.full((h, w), SCL["vegetation"], np.uint8)
                    layers = [(cid, g) for cid, _, g in plan.query(2 * c, 2 * r, 2 * (c + w), 2 * (r + h))
                              if not g.is_empty]
                    bare = [(g, 1) for cid, g in layers if cid != WATER]  # slumps, bars, roads, scars, burns
                    if bare:
                        land = rasterize(bare, out_shape=(h, w), transform=t, fill=0, dtype="uint8")
                        scl[land > 0] = SCL["not_vegetated"]
                    wet = [(g, 1) for cid, g in layers if cid == WATER]
                    if wet:
                        scl[rasterize(wet, out_shape=(h, w), transform=t, fill=0, dtype="uint8") > 0] = SCL["water"]
                    kinds = sky.kinds(r, c, h, w, scale=2)
                    for kind, value in (("snow", SCL["snow"]), ("shadow", SCL["cloud_shadow"]),
                                        ("haze", SCL["cloud_medium"]), ("cloud", SCL["cloud_high"])):
                        scl[kinds == code[kind]] = value
                    if plan.footprint is not None:
                        inside = rasterize([(plan.footprint, 1)], out_shape=(h, w), transform=t, fill=0,
                                           dtype="uint8")
                        scl[inside == 0] = SCL["no_data"]
                    dst.write(scl, 1, window=Window(c, r, w, h))
        out.append(target)
    return out


def _valid(plan: Plan, row0: int, col0: int, h: int, w: int) -> np.ndarray:
    """``(h, w)`` bool: the window's pixels inside the plan's valid footprint (all of them without one)."""
    from rtscli.synth.render import _rasterize

    if plan.footprint is None:
        return np.ones((h, w), bool)
    return _rasterize([(plan.footprint, 1)], (h, w), row0, col0).astype(bool)


def quality_frame(sky: Sky, transform: Any, crs: Any) -> Any:
    """The truth layer ``quality``: one row per cloud, haze ring, shadow and snow patch (``kind``), map coordinates."""
    import geopandas as gpd

    from rtscli.geometry.footprint import to_map

    rows = [(kind, to_map(g, transform)) for kind, geoms in (("cloud", sky.clouds), ("haze", sky.haze),
                                                              ("shadow", sky.shadows), ("snow", sky.snow))
            for g in geoms]
    return gpd.GeoDataFrame({"kind": [k for k, _ in rows]}, geometry=[g for _, g in rows], crs=crs)
