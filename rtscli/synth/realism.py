"""How hard synthetic data is: ``rts synth --realism demo|hard`` (:class:`Realism`, :data:`LEVELS`).

``demo`` is the look the demo was built on: horseshoe slumps of 0.5 to tens of hectares in the site's soil spectra
(1.5-1.8 times as bright as the tundra in RGB), ~5 per chip, chips stored exactly. Models learn it well and learnt
nothing on real data (issue 23): real slumps are smaller, fainter, more irregular and fewer per chip, and real chips
are JPEGs. ``hard`` draws them as the real data has them, in chips and scenes alike (JPEG: chips only):

* **size**: in a real dataset of 1,467 expert-drawn slumps on ~300 px chips at 3 m the median box side
  (``sqrt(w * h)``) is ~37 px and 5 % are under 11 px. ``hard`` draws areas from a log-normal of median 0.9 ha,
  0.01-20 ha (:attr:`Realism.area_ha`), and keeps slumps down to 100 m2 after water cuts them;
* **shape** (:func:`rtscli.synth.outlines.gullied_shape`): elongated (aspect 2-5, 70 % downslope along drainage
  lines, the others along the slope), with a scalloped headwall cut by 1-4 gullies and a narrow debris tongue;
* **count**: ~2.4 slumps per chip in the real data; ``hard`` chips are planned at 1.2 times the site's slump
  density (:attr:`Realism.chip_density`; ``demo``: 3 times);
* **contrast**: each slump's RGB is a ratio of the ground around it (:func:`draw_tone`; painted by
  :func:`rtscli.synth.render._tone_slumps`), not the site's soil spectrum; NIR 0.42-0.68 of the ground's; the dry
  patches (the RGB look-alikes) get a slump's RGB ratio and the tundra's NIR; burnt patches reach up to the slumps
  (no halo of tundra around them) and slump floors shade the relief half as deep;
* **JPEG**: each chip's RGB (one colour JPEG, 4:2:0) and NIR (a grey one) go through JPEG at quality 70-85
  (:func:`jpeg_roundtrip`); NDVI is then computed from the decoded red and NIR, and the file stays a float32 GeoTIFF.
  Scenes stay lossless, as providers deliver them.

The contrast of real slumps, measured by :func:`real_contrast` on the two Sentinel-2 scenes with expert outlines of
Nitze et al. (2024) in ``shared/data/rts-digitization`` (10 m; consensus = the pixels drawn by at least half of the
experts, each connected part one slump; the ratio is the mean over red, green and blue of the mean inside over the
mean in a ring 20-60 m out that leaves out every expert's outline, nodata and water)::

    .venv/bin/python -c "from rtscli.synth.realism import real_contrast; \\
        print(real_contrast('/work/shared/data/rts-digitization'))"

    Peel (12 experts, 10 slumps):   1.067 1.145 1.023 1.035 1.047 0.998 1.021 1.067 1.046 1.108   (median 1.046)
    Bykovsky (10 experts, 3 slumps; a 4th has only water around it): 0.880 0.809 0.848           (median 0.848)

Per band (the same rings): red departs most from the tundra's (Peel 0.98-1.22, Bykovsky 0.72-0.82), green least
(0.97-1.09; 0.80-0.87), blue between (1.03-1.13; 0.91-0.95); NIR is 0.40-0.77 of the tundra's (median ~0.53) and
NDVI 0.16-0.39 inside against 0.46-0.61 around (a first, square-ring measurement). So real slumps are 0-15 %
brighter than the tundra in mean RGB (red 5-22 %) or, where wet, 10-20 % darker. ``hard`` draws 75 % of the slumps
that are not weak-RGB in [1.03, 1.18] and 25 % in [0.80, 0.94] (:attr:`Realism.bright`, :attr:`Realism.dark`), red
departing 1.5 times, green 0.6 times and blue 0.9 times as far from 1 as the mean (:data:`BAND_SPREAD`). Weak-RGB
slumps (``weak_rgb``) stay within 3 % (times ``--weak-contrast``), with NIR as low as the others'. Measured on hard
chips the same way (:func:`chip_stats`; ``rts synth OUT --chips 60 --scenes 0 --realism hard --seed 0``): 2.3
slumps per chip with a slump, median box side 38 px (5-95 %: 13-94 px), aspect 2.5, RGB ratio of the slumps that are
not weak-RGB 0.84 / 1.08 / 1.19 (5 / 50 / 95 %), 25 % darker than the ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: how far each of red, green, blue departs from 1 per unit of the mean RGB ratio's departure (measured: real slumps
#: change red most and green least, whether brighter or darker)
BAND_SPREAD = (1.5, 0.6, 0.9)


@dataclass(frozen=True)
class Realism:
    """The settings of one realism level (:data:`LEVELS`); ``demo``'s defaults keep today's look, draw for draw.

    Attributes:
        name: the level's name (``--realism``).
        area_ha: slump area, hectares: ``(median, sigma of its log, smallest, largest)`` of a truncated log-normal.
        min_area_m2: the smallest slump kept after water cuts it, m2 (half of it after a nodata edge cuts it).
        aspect: ``(low, high)`` of the outline's aspect ratio (log-uniform); None: the demo's horseshoe.
        along_slope: share of elongated slumps whose long axis runs downslope (the others run along the slope).
        gullies: ``(low, high)`` number of gullies cut into the headwall.
        bright: ``(low, high)`` mean RGB ratio of a slump over the tundra around it; None: the site's soil spectra.
        dark: ``(low, high)`` of the wet, darker slumps.
        dark_share: share of slumps drawn from ``dark``.
        weak: largest departure from 1 of a weak-RGB slump's mean RGB ratio (times the site's weak contrast).
        nir: ``(low, high)`` NIR ratio of a slump over the tundra.
        floor_m: how far slump floors lie below the tundra in the relief shading, metres (their rim's shade).
        burn_gap: pixels of unburnt tundra between a burnt patch and the slumps in it (a halo that gives them away).
        chip_density: chips' slump density, times the site's slumps per km2.
        jpeg_quality: ``(low, high)`` JPEG quality of the chips; None: stored exactly.
    """

    name: str
    area_ha: tuple[float, float, float, float] = (2.5, 0.9, 0.5, 40.0)
    min_area_m2: float = 4000.0
    aspect: tuple[float, float] | None = None
    along_slope: float = 0.7
    gullies: tuple[int, int] = (0, 0)
    bright: tuple[float, float] | None = None
    dark: tuple[float, float] = (1.0, 1.0)
    dark_share: float = 0.0
    weak: float = 0.03
    nir: tuple[float, float] = (0.42, 0.68)
    floor_m: float = 3.0
    burn_gap: float = 4.0
    chip_density: float = 3.0
    jpeg_quality: tuple[int, int] | None = None


DEMO = Realism("demo")
HARD = Realism("hard", area_ha=(0.9, 1.0, 0.01, 20.0), min_area_m2=100.0, aspect=(2.0, 5.0), gullies=(1, 4),
               bright=(1.03, 1.18), dark=(0.80, 0.94), dark_share=0.25, floor_m=1.5, burn_gap=0.0, chip_density=1.2,
               jpeg_quality=(70, 85))
#: the levels of ``rts synth --realism``
LEVELS: dict[str, Realism] = {r.name: r for r in (DEMO, HARD)}


def realism(name: str) -> Realism:
    """The realism level called ``name``.

    Args:
        name: one of :data:`LEVELS` (``demo``, ``hard``).

    Returns:
        Its :class:`Realism`.

    Raises:
        RtsError: ``name`` is not a level.
    """
    from rtscli.errors import unknown_choice

    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise unknown_choice("--realism", name, LEVELS) from None


def draw_tone(rng: np.random.Generator, real: Realism, weak: bool, weak_contrast: float) -> tuple[float, float] | None:
    """A slump's ``(mean RGB ratio, NIR ratio)`` over the tundra around it; None under ``demo`` (no draw made).

    Args:
        rng: the random generator (two draws, three for a normal slump).
        real: the realism level.
        weak: a weak-RGB slump (its RGB within ``real.weak * weak_contrast`` of the tundra's).
        weak_contrast: the site's scale of weak slumps' RGB contrast (``--weak-contrast``).

    Returns:
        The ratios (1: the tundra's), or None when the level keeps the site's soil spectra.
    """
    if real.bright is None:
        return None
    if weak:
        rgb = 1.0 + weak_contrast * real.weak * float(rng.uniform(-1.0, 1.0))
    elif rng.random() < real.dark_share:
        rgb = float(rng.uniform(*real.dark))
    else:
        rgb = float(rng.uniform(*real.bright))
    return rgb, float(rng.uniform(*real.nir))


def look_alike_tone(real: Realism, key: int) -> tuple[float, float]:
    """The tone of a dry patch (the RGB look-alike of a slump) under a level with slump tones: a slump's RGB ratio
    and the tundra's NIR (0.9-1.05 of it), so that NIR tells them apart as under ``demo``.

    Args:
        real: the realism level (its :attr:`Realism.bright` is not None).
        key: the patch's stable key (:func:`rtscli.synth.noise.key_of`): the same patch, the same tone.

    Returns:
        ``(mean RGB ratio, NIR ratio)`` over the ground around it.
    """
    rng = np.random.default_rng(key)
    tone = draw_tone(rng, real, False, 1.0)
    assert tone is not None
    return tone[0], float(rng.uniform(0.9, 1.05))


def band_ratios(rgb: Any) -> tuple[Any, Any, Any]:
    """Red, green and blue ratios over the tundra of a slump whose mean RGB ratio is ``rgb`` (:data:`BAND_SPREAD`).

    Args:
        rgb: the mean of the three ratios (1: as the tundra), a number or an array.

    Returns:
        ``(red, green, blue)`` ratios, each like ``rgb``; their mean is ``rgb``.
    """
    mean = sum(BAND_SPREAD) / len(BAND_SPREAD)
    red, green, blue = (1.0 + (rgb - 1.0) * (k / mean) for k in BAND_SPREAD)
    return red, green, blue


def jpeg_roundtrip(rgb: np.ndarray, nir: np.ndarray, valid: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB and NIR as they come out of an 8-bit JPEG: quantized to 256 levels, blocky, colour subsampled.

    Each is stretched linearly from 0 to its largest valid value (one stretch for the three colour bands), encoded
    (RGB as one colour JPEG, NIR as a grey one; cv2, 4:2:0 chroma) and decoded back to reflectance.

    Args:
        rgb: ``(3, h, w)`` red, green, blue reflectance (0-1).
        nir: ``(h, w)`` NIR reflectance.
        valid: ``(h, w)`` bool, the valid pixels (the others are filled with the valid mean before encoding and come
            back as they were).
        quality: JPEG quality, 1-100.

    Returns:
        ``(rgb, nir)`` float32, same shapes.
    """
    import cv2

    def code(planes: np.ndarray) -> np.ndarray:
        top = float(planes[:, valid].max()) if valid.any() else 1.0
        top = top if top > 0 else 1.0
        filled = planes.copy()
        if valid.any() and not valid.all():
            filled[:, ~valid] = planes[:, valid].mean(axis=1)[:, None]
        q = np.clip(np.rint(filled / top * 255.0), 0, 255).astype(np.uint8)
        img = q[0] if len(q) == 1 else np.ascontiguousarray(q[::-1].transpose(1, 2, 0))  # cv2 wants BGR
        ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        if not ok:  # pragma: no cover - cv2 encodes any uint8 image
            raise RuntimeError("JPEG encoding failed")
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if out is None:  # pragma: no cover - cv2 decodes what it encoded
            raise RuntimeError("JPEG decoding failed")
        out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)[::-1]
        back = out.astype(np.float32) * np.float32(top / 255.0)
        back[:, ~valid] = planes[:, ~valid]
        return back

    return code(np.asarray(rgb, np.float32)), code(np.asarray(nir, np.float32)[None])[0]


def ring_contrast(rgb: np.ndarray, objects: np.ndarray, *, ring_px: tuple[float, float], keep: np.ndarray,
                  min_pixels: int = 4, min_ring: int = 10) -> list[tuple[int, int, float]]:
    """Each object's mean RGB ratio over a ring of ground around it: how bright it is against its surroundings.

    Args:
        rgb: ``(3, h, w)`` red, green, blue.
        objects: ``(h, w)`` int labels, 0 outside any object, ``k`` inside object ``k``.
        ring_px: the ring's inner and outer distance from the object, pixels.
        keep: ``(h, w)`` bool, pixels the ring may use (e.g. valid, not water, not in any object or label).
        min_pixels: objects with fewer pixels are skipped.
        min_ring: objects whose ring has fewer pixels are skipped.

    Returns:
        ``(label, pixels, ratio)`` per object measured, in label order: ``ratio`` is the mean over the three bands of
        the band's mean inside over its mean in the ring (1: as the surroundings).
    """
    import cv2

    def grow(m: np.ndarray, r: float) -> np.ndarray:
        k = 2 * int(math.ceil(r)) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        return cv2.dilate(m.astype(np.uint8), kernel).astype(bool)

    out = []
    for k in np.unique(objects):
        if k == 0:
            continue
        m = objects == k
        if m.sum() < min_pixels:
            continue
        ring = grow(m, ring_px[1]) & ~grow(m, ring_px[0]) & keep
        if ring.sum() < min_ring:
            continue
        ratio = rgb[:, m].mean(axis=1) / rgb[:, ring].mean(axis=1)
        out.append((int(k), int(m.sum()), float(ratio.mean())))
    return out


def real_contrast(folder: str | Path, *, ring_m: tuple[float, float] = (20.0, 60.0),
                  bands: tuple[int, int, int, int] = (3, 2, 1, 7)) -> dict[str, list[float]]:
    """The RGB contrast of real slumps: each consensus outline against a ring of tundra around it.

    ``folder`` is laid out as ``shared/data/rts-digitization`` (or ``tests/data/rts-digitization``): one folder per
    site with its Sentinel-2 scene (``S2_*.tif``) and the experts' outlines (``experts/*.shp`` or ``*.shp``). The
    consensus is the pixels drawn by at least half of the experts; each connected part is one slump; the ring
    (:func:`ring_contrast`) leaves out every pixel any expert drew, nodata, and water (NDVI < 0.1).

    Args:
        folder: the data folder.
        ring_m: the ring's inner and outer distance from the slump, metres.
        bands: the 1-based band numbers of red, green, blue and NIR in the scenes.

    Returns:
        ``{site: [ratio, ...]}``, the mean RGB ratio of each slump (1: as the tundra around it).

    Raises:
        RtsError: the folder has no site with a scene and outlines.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize
    import cv2

    from rtscli.errors import RtsError

    out: dict[str, list[float]] = {}
    for site in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        scenes = sorted(site.glob("S2_*.tif"))
        experts = sorted(site.glob("experts/*.shp")) or sorted(site.glob("*.shp"))
        if not scenes or not experts:
            continue
        with rasterio.open(scenes[0]) as src:
            img = src.read(list(bands)).astype(np.float64)
            shape, transform, crs, res = (src.height, src.width), src.transform, src.crs, src.res[0]
            valid = (src.read_masks(1) > 0) & (img > 0).all(axis=0)
        votes = np.zeros(shape, np.int32)
        for shp in experts:
            g = gpd.read_file(shp).to_crs(crs)
            g = g[g.geometry.notna() & g.is_valid & ~g.is_empty]
            if len(g):
                votes += rasterize([(x, 1) for x in g.geometry], out_shape=shape, transform=transform, dtype="uint8")
        _, objects = cv2.connectedComponents((votes >= len(experts) / 2).astype(np.uint8))
        red, nir = img[0], img[3]
        ndvi = (nir - red) / np.maximum(nir + red, 1e-9)
        keep = valid & (votes == 0) & (ndvi >= 0.1)
        found = ring_contrast(img[:3], objects, ring_px=(ring_m[0] / res, ring_m[1] / res), keep=keep)
        out[site.name] = [round(r, 3) for _, _, r in found]
    if not out:
        raise RtsError(f"no site with an S2_*.tif scene and expert outlines in {folder}",
                       fix="pass the rts-digitization folder (one folder per site)")
    return out


def chip_stats(folder: str | Path, *, ring_m: tuple[float, float] = (20.0, 60.0)) -> dict[str, Any]:
    """How hard the chips of an ``rts synth`` output are, in the terms of the real data (to compare the levels).

    Reads ``folder/chips/*/*.tif`` (bands red, green, blue, ndvi, nir, mask) and ``folder/chips/labels.gpkg``.
    The contrast is :func:`ring_contrast` of each truth polygon, the ring leaving out every slump, nodata and water
    (NDVI < 0.1), as :func:`real_contrast` measures the real slumps.

    Args:
        folder: the output folder of ``rts synth``.
        ring_m: the ring's inner and outer distance from the slump, metres.

    Returns:
        ``chips``, ``positive`` (chips with a slump), ``slumps``, ``slumps_per_positive_chip``, ``box_side_px``
        (percentiles 5, 25, 50, 75, 95 of ``sqrt(w * h)``, pixels), ``under_11px`` (share), ``aspect_p50`` (long over
        short side of the slumps' minimum rotated rectangles), ``contrast`` (percentiles 5, 25, 50, 75, 95 of the
        mean RGB ratio of the slumps not flagged ``weak_rgb``), ``darker`` (their share under 1), ``departure`` (their
        median ``|ratio - 1|``) and ``weak_departure`` (that of the weak-RGB slumps; NaN when there are none).

    Raises:
        RtsError: the folder has no chips.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    from rtscli.errors import RtsError

    root = Path(folder) / "chips"
    tifs = sorted(root.rglob("*.tif"))
    if not tifs or not (root / "labels.gpkg").exists():
        raise RtsError(f"no rts synth chips in {folder}", fix="pass the output folder of rts synth")
    labels = gpd.read_file(root / "labels.gpkg")
    contrast = np.full(len(labels), np.nan)
    sides, aspects, positive = [], [], 0
    for tif in tifs:
        rows = np.flatnonzero((labels["chip"] == tif.name).to_numpy())
        if not len(rows):
            continue
        positive += 1
        with rasterio.open(tif) as src:
            data, transform, nodata, res = src.read(), src.transform, src.nodata, src.res[0]
        for g in labels.geometry.iloc[rows]:
            x0, y0, x1, y1 = g.bounds
            sides.append(math.sqrt((x1 - x0) * (y1 - y0)) / res)
            rect = np.array(g.minimum_rotated_rectangle.exterior.coords)
            edges = sorted(np.hypot(*np.diff(rect[:3], axis=0).T))
            aspects.append(edges[1] / max(edges[0], 1e-9))
        objects = rasterize([(g, k + 1) for k, g in enumerate(labels.geometry.iloc[rows])], out_shape=data.shape[1:],
                            transform=transform, dtype="int32")
        keep = (data[0] != nodata) & (data[5] == 0) & (data[3] >= 0.1)
        for k, _, ratio in ring_contrast(data[:3], objects, ring_px=(ring_m[0] / res, ring_m[1] / res), keep=keep):
            contrast[rows[k - 1]] = ratio
    weak = labels["weak_rgb"].to_numpy(bool) if len(labels) else np.zeros(0, bool)
    strong, faint = contrast[~weak & ~np.isnan(contrast)], contrast[weak & ~np.isnan(contrast)]
    side = np.array(sides)

    def pct(v: np.ndarray) -> list[float]:
        return [round(float(x), 3) for x in np.percentile(v, [5, 25, 50, 75, 95])] if len(v) else []

    def departure(v: np.ndarray) -> float:
        return round(float(np.median(np.abs(v - 1))), 3) if len(v) else float("nan")

    return {
        "chips": len(tifs), "positive": positive, "slumps": len(labels),
        "slumps_per_positive_chip": round(len(labels) / positive, 2) if positive else 0.0,
        "box_side_px": pct(side), "under_11px": round(float((side < 11).mean()), 3) if len(side) else 0.0,
        "aspect_p50": round(float(np.median(aspects)), 2) if aspects else float("nan"),
        "contrast": pct(strong), "darker": round(float((strong < 1).mean()), 3) if len(strong) else 0.0,
        "departure": departure(strong), "weak_departure": departure(faint),
    }
