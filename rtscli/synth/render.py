"""Rendering a synthetic scene's plan (:mod:`rtscli.synth.plan`) window by window into surface reflectance.

Textures come from coherent hash noise (:mod:`rtscli.synth.noise`) and every kernel reads a margin around
its window, so windows rendered separately join without seams and a scene of any size is written with
bounded memory.
"""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import box

from rtscli.synth import noise
from rtscli.synth.plan import Plan
from rtscli.synth.realism import band_ratios, look_alike_tone
from rtscli.synth.sites import (
    DRY, HEADWALL, MUD, SAND, SOIL, VEG, WATER, WHEAD, WMUD, WSOIL,
    spectra_table,
)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _rasterize(shapes, shape, row0, col0):
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    if not shapes:
        return np.zeros(shape, dtype=np.uint8)
    return rasterize(shapes, out_shape=shape, transform=Affine(1, 0, col0, 0, 1, row0), fill=0, dtype="uint8")


#: px: scale of the ground around a slump that its tone is a ratio of (--realism hard); 4 of it fit the render margin
TONE_SIGMA = 12.0


def _tone_slumps(img: np.ndarray, plan: Plan, cls: np.ndarray, r0: int, c0: int) -> None:
    """Paint, in place, the slumps that have a tone (``--realism hard``), and then the dry patches, as ratios of the
    ground around them.

    The ground around is the Gaussian-weighted mean (:data:`TONE_SIGMA`) of the land that is neither slump, dry patch
    nor water: tundra mostly, and burnt patches, bars and roads where they are near (where no land is near, deep
    inside a large slump, the site's mean tundra). Each slump's mean RGB is ``tone[0]`` times that, spread over the
    bands as :func:`rtscli.synth.realism.band_ratios`; its headwall is 0.06 brighter and its wet tongue 0.05 darker
    (not on weak-RGB slumps); NIR is ``tone[1]`` times the ground's (the tongue 0.85 of that, the headwall 1.1).
    Dry patches, the RGB look-alikes, get a slump's RGB tone and the ground's NIR
    (:func:`rtscli.synth.realism.look_alike_tone`). Under ``demo`` (no tones) nothing changes.

    Args:
        img: ``(4, H, W)`` reflectance x 10000 (blue, green, red, NIR) of the window with its margin, before texture.
        plan: the plan.
        cls: ``(H, W)`` class ids of the window.
        r0: the window's first row (with its margin), scene pixels.
        c0: the window's first column (with its margin), scene pixels.
    """
    import cv2
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    if plan.style.realism.bright is None:
        return
    H, W = cls.shape
    win = box(c0, r0, c0 + W, r0 + H)
    toned = [(s.geometry, s.tone) for s in plan.slumps if s.tone is not None and s.geometry.intersects(win)]
    toned += [(g, look_alike_tone(plan.style.realism, noise.key_of("dry-tone", plan.seed, i)))
              for i, g in enumerate(plan.dry) if g.intersects(win)]
    if not toned:
        return
    t = Affine(1, 0, c0, 0, 1, r0)

    def burn(values: list[float], fill: float, dtype: str) -> np.ndarray:
        shapes = [(g, v) for (g, _), v in zip(toned, values, strict=True)]
        return rasterize(shapes, out_shape=(H, W), transform=t, fill=fill, dtype=dtype)

    rgb = burn([tone[0] for _, tone in toned], 1.0, "float32")
    nir = burn([tone[1] for _, tone in toned], 1.0, "float32")
    inside = burn([1.0] * len(toned), 0, "uint8") == 1
    rgb = rgb + np.where(cls == HEADWALL, 0.06, 0.0) - np.where(cls == MUD, 0.05, 0.0)
    nir = nir * np.where(cls == MUD, 0.85, 1.0) * np.where(np.isin(cls, [HEADWALL, WHEAD]), 1.1, 1.0)
    painted = [SOIL, MUD, HEADWALL, WSOIL, WMUD, WHEAD, DRY]
    toned_px = inside & np.isin(cls, painted)
    land = (~np.isin(cls, [WATER, *painted])).astype(np.float32)
    eps = np.float32(1e-3)
    weight = cv2.GaussianBlur(land, (0, 0), TONE_SIGMA) + eps
    vmid = (np.array(plan.style.veg_a, np.float32) + np.array(plan.style.veg_b, np.float32)) / 2
    red, green, blue = band_ratios(rgb)
    for b, ratio in ((0, blue), (1, green), (2, red), (3, nir)):
        ground = (cv2.GaussianBlur(img[b] * land, (0, 0), TONE_SIGMA) + eps * vmid[b]) / weight
        img[b] = np.where(toned_px, ground * ratio, img[b])


def render(plan: Plan, row0: int, col0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one window.

    Returns ``(reflectance, valid, slump_mask)``: reflectance float32 (4, h, w) as surface
    reflectance x 10000 in band order blue, green, red, NIR; ``valid`` bool (h, w); ``slump_mask``
    uint8 (h, w), 1 inside any slump label.
    """
    style = plan.style
    m = 48  # margin for blur and slope kernels, so windows agree at their joins
    H, W = h + 2 * m, w + 2 * m
    r0, c0 = row0 - m, col0 - m
    nr, nc = r0 + plan.noise_offset[0], c0 + plan.noise_offset[1]
    key = noise.key_of("render", plan.seed, style.name)
    res_scale = 3.0 / plan.resolution  # noise cells are set for 3 m pixels

    layers = plan.query(c0, r0, c0 + W, r0 + H)
    cls = _rasterize([(g, cid + 1) for cid, _, g in layers if not g.is_empty], (H, W), r0, c0)
    cls = cls.astype(np.int16) - 1
    cls[cls < 0] = VEG

    table = np.array(spectra_table(style), dtype=np.float32)  # (classes, 4)
    img = table[cls].transpose(2, 0, 1).copy()  # (4, H, W)

    # vegetation: a mix of lush and sparse tundra, with an ice-wedge polygon network
    veg = cls == VEG
    t = np.clip(0.5 + 0.9 * noise.fbm(nr, nc, H, W, 90 * res_scale, 4, key + 1), 0, 1)
    va = np.array(style.veg_a, np.float32)[:, None, None]
    vb = np.array(style.veg_b, np.float32)[:, None, None]
    vegmix = va * t + vb * (1 - t)
    ridges = 1.0 - np.abs(2.0 * noise.value_noise(nr, nc, H, W, 9 * res_scale, key + 2) - 1.0)
    trough = (ridges**10) * style.polygons
    vegmix = vegmix * (1.0 - 0.2 * trough)[None]
    vegmix[3] *= 1.0 - 0.12 * trough
    img = np.where(veg[None], vegmix, img)
    _tone_slumps(img, plan, cls, r0, c0)

    # texture: fine for land, stronger in slump floors (gullies), almost none on water
    tex = 0.6 * noise.fbm(nr, nc, H, W, 6 * res_scale, 3, key + 3) + 0.4 * noise.fbm(
        nr, nc, H, W, 28 * res_scale, 2, key + 6
    )
    amp = np.full((H, W), style.texture, np.float32)
    soilish = np.isin(cls, [SOIL, MUD, WSOIL, WMUD, HEADWALL, WHEAD, SAND])
    amp[soilish] = style.texture * 2.2
    amp[cls == WATER] = style.texture * 0.25
    img *= (1.0 + amp * tex)[None]
    # water turbidity: smooth variation, mostly in the visible bands
    turb = noise.fbm(nr, nc, H, W, 120 * res_scale, 2, key + 4)
    wat = cls == WATER
    img[:3] = np.where(wat[None], img[:3] * (1.0 + 0.25 * turb)[None], img[:3])

    # relief: large-scale slopes, valleys at water, slump floors below their headwalls
    elev = style.relief_m * noise.fbm(nr, nc, H, W, 300 * res_scale, 3, key + 5)
    import cv2

    wet = wat.astype(np.float32)
    elev -= 8.0 * cv2.GaussianBlur(wet, (0, 0), 14 * res_scale)
    inside = np.isin(cls, [SOIL, MUD, WSOIL, WMUD]).astype(np.float32)
    elev -= style.realism.floor_m * cv2.GaussianBlur(inside, (0, 0), 1.5)
    gy, gx = np.gradient(elev, plan.resolution)
    az, alt = math.radians(315.0), math.radians(35.0)
    sx, sy = math.sin(az) * math.cos(alt), -math.cos(az) * math.cos(alt)
    shade = (math.sin(alt) - gx * sx + gy * sy) / np.sqrt(1.0 + gx * gx + gy * gy)
    shade = shade / math.sin(alt)
    img *= np.clip(shade, 0.5, 1.5)[None].astype(np.float32)

    # slight optical blur, sensor gain, sensor noise
    for b in range(4):
        img[b] = cv2.GaussianBlur(img[b], (0, 0), 0.6)
    img *= np.float32(style.gain)
    for b in range(4):
        n = noise.white(nr, nc, H, W, key + 10 + b) - 0.5
        img[b] *= 1.0 + 0.03 * n

    img = img[:, m : m + h, m : m + w]
    if plan.footprint is not None:
        valid = _rasterize([(plan.footprint, 1)], (h, w), row0, col0).astype(bool)
    else:
        valid = np.ones((h, w), dtype=bool)
    slump_shapes = [(s.geometry, 1) for s in plan.slumps
                    if s.geometry.intersects(box(col0, row0, col0 + w, row0 + h))]
    mask = _rasterize(slump_shapes, (h, w), row0, col0)
    mask[~valid] = 0
    img = np.clip(img, 1.0, 65535.0)
    img[:, ~valid] = 0.0
    return img.astype(np.float32), valid, mask
