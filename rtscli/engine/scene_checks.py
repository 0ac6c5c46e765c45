"""Does a scene fit a model? The inputs of ``rts predict`` checked against a bundle before the model loads.

A scene's sources (one multi-band raster, or aligned per-modality rasters), its band layout against the
layout of the model's training rasters (band count and GDAL band descriptions), and the channels every
modality of the model needs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from rtscli.data.bands import BandMap
from rtscli.data.scenes import Scene, Source
from rtscli.errors import RtsError
from rtscli.modeling.bundle import Bundle

log = logging.getLogger("rtscli")


def scene_sources(scene: Path | None, *, band_map: BandMap, rgb: Path | None = None, nir: Path | None = None,
                  ndvi: Path | None = None, aux: list[str] | tuple[str, ...] = ()) -> list[Source]:
    """The rasters of one scene and which of their bands are which channel.

    Args:
        scene: one multi-band raster read with ``band_map``; None when the modalities come as aligned rasters.
        band_map: the scene's band map (its ``mask`` band, if any, is left out: a scene to map has no labels).
        rgb: an RGB raster (bands 1-3 = red, green, blue), instead of ``scene``.
        nir: an aligned NIR raster (band 1).
        ndvi: an aligned NDVI raster (band 1).
        aux: further aligned rasters as ``NAME=PATH`` (band 1 each).

    Returns:
        The sources, the one that sets the grid first.

    Raises:
        RtsError: a named raster does not exist, an ``--aux`` item is malformed, or the band map does not fit
            ``scene`` (:func:`rtscli.data.bands.check_fits`: band count, band descriptions, a preset made for
            another sensor).
    """
    if scene is not None:
        from rtscli.data.bands import check_fits
        from rtscli.io.raster import inspect

        image_bands = band_map.without(["mask"])
        info = inspect(scene)
        if image_bands.preset is not None or image_bands.max_index() <= info.count:
            # (a model's own band map with a band beyond the scene's: check_band_layout says it with the layout)
            check_fits(image_bands, info.count, info.descriptions, scene)
        return [Source(scene, image_bands.as_dict())]
    srcs = []
    if rgb:
        srcs.append(Source(Path(rgb), {"red": 1, "green": 2, "blue": 3}))
    if nir:
        srcs.append(Source(Path(nir), {"nir": 1}))
    if ndvi:
        srcs.append(Source(Path(ndvi), {"ndvi": 1}))
    from rtscli.data.inputs import parse_aux

    for name, path in parse_aux(list(aux)).items():
        srcs.append(Source(path, {name: 1}))
    for s in srcs:
        if not s.path.exists():
            raise RtsError("raster not found", path=s.path, fix="check the path")
    return srcs


def band_label(description: str | None) -> str:
    """A band description made comparable: lower case, and Sentinel-2/Landsat names without leading zeros
    (``B02`` = ``b2``, ``SR_B4`` = ``b4``, ``B8A`` = ``b8a``)."""
    text = (description or "").strip().lower()
    m = re.fullmatch(r"(?:sr_|st_)?b0*(\d+a?)", text)
    return f"b{m.group(1)}" if m else text


def check_band_layout(bundle: Bundle, scene: Path) -> None:
    """Without ``--bands`` a scene is read with the band layout of the model's training rasters: refuse, with the
    fix, a scene whose band count or band descriptions (GDAL) say it is laid out otherwise."""

    from rtscli.io.raster import inspect

    layout = bundle.source_bands
    bm = bundle.source_band_map or bundle.band_map
    text = ", ".join(f"{k}={v}" for k, v in bm.as_dict().items())
    fix = "pass --bands naming this scene's bands (`rts bands` lists the presets)"
    if bundle.source_band_map is None:
        log.warning("%s predates band-layout records: %s is read with the band map of its training chips (%s); pass "
                    "--bands if the scene is laid out otherwise", bundle.path, scene.name, text)
    if not layout:
        return
    info = inspect(scene)
    counts = {layout["count"]}
    mask = bundle.source_mask_band
    if mask == layout["count"]:  # the label band of the paper's layout: a scene to map has none
        counts.add(layout["count"] - 1)
    if info.count not in counts:
        raise RtsError(f"the model was trained on {layout['count']}-band rasters ({text}) and this scene has "
                       f"{info.count} bands", path=scene, fix=fix)
    mine = [band_label(d) for d in info.descriptions]
    theirs = [band_label(d) for d in layout.get("descriptions") or []]
    used = sorted(set(bm.as_dict().values()))
    for i in used:
        if i > len(mine) or i > len(theirs) or not mine[i - 1] or not theirs[i - 1] or mine[i - 1] == theirs[i - 1]:
            continue
        if mine[i - 1] in theirs:  # the scene holds the training rasters' bands in another order: a contradiction
            raise RtsError(f"band {i} of this scene is described as {mine[i - 1]!r} but the model's training rasters "
                           f"had {theirs[i - 1]!r} there ({text})", path=scene, fix=fix)
        log.warning("%s: band %d is described as %r, the training rasters' as %r; reading it as %s (pass --bands if "
                    "that is wrong)", scene.name, i, mine[i - 1], theirs[i - 1],
                    next(k for k, v in bm.as_dict().items() if v == i))


def check_modalities(bundle: Bundle, sources: list[Source], where: str, *, dem: bool = False) -> None:
    """Every channel the bundle's modalities need must come from the inputs (NDVI may be derived; the terrain
    channels come from ``--dem``).

    Args:
        bundle: the model's bundle (its modalities).
        sources: the scene's sources (:func:`scene_sources`).
        where: what the inputs are, for the message (e.g. the scene's path).
        dem: a DEM gives the terrain channels (slope, relief, hillshade).

    Raises:
        RtsError: a modality needs a channel no source has (and that cannot be derived).
    """
    from rtscli.data.modalities import missing_channel

    from rtscli.data.modalities import TERRAIN

    have = {n for s in sources for n in s.bands} | (set(TERRAIN) if dem else set())
    for mod in bundle.modalities:
        ch = missing_channel(mod, have)
        if ch is not None:
            raise RtsError(f"the model needs modality {mod.name} (channel {ch!r}), which {where} lacks",
                           fix=f"pass --bands naming {ch}, or an aligned raster (--{ch} PATH or --aux {ch}=PATH)")


def open_checked(scene: Path, *, bundle: Bundle, band_map: BandMap, bands_given: bool, nodata: float | None,
                 units: dict[str, Any], resample: bool = False) -> Scene:
    """One scene of ``rts predict`` (a raster, or a STAC item's ``.json``) opened and checked against the model, before
    any pixel is read.

    Args:
        scene: the raster or the item (:func:`rtscli.data.scenes.scene_paths`).
        bundle: the model's bundle.
        band_map: the scene's band map (``--bands`` or the model's); for a STAC item only its names count (the
            channels looked for among the item's assets).
        bands_given: the user gave ``--bands`` (else a raster's layout is checked against the model's).
        nodata: ``--nodata``, or None.
        units: ``scale``, ``offset``, ``training`` and ``quality`` (:func:`rtscli.data.scenes.open_scene`).
        resample: ``--resample`` (a STAC item's assets are always read onto its finest grid).

    Returns:
        The scene.

    Raises:
        RtsError: the scene does not fit the model (bands, layout, a modality's channel), or cannot be opened.
    """
    from rtscli.data.scenes import is_item, open_item, open_scene

    if is_item(scene):
        channels = list(band_map.without(["mask"]).as_dict())
        opened, missing, assets = open_item(scene, channels, nodata=nodata, **units)
        check_modalities(bundle, opened.sources, f"STAC item {opened.item} (assets: {'; '.join(assets)})",
                         dem=opened.dem is not None)
        if missing:
            log.debug("%s: no asset has %s (not needed by the model)", opened.item, ", ".join(missing))
        return opened
    srcs = scene_sources(scene, band_map=band_map)
    if not bands_given:
        check_band_layout(bundle, scene)
    check_modalities(bundle, srcs, str(scene), dem=units.get("dem") is not None)
    return open_scene(srcs, resample=resample, nodata=nodata, **units)
