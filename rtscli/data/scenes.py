"""Scenes read by window: finding rasters, opening a scene (one or several aligned rasters) and reading it.

Every command that reads imagery goes through here: ``rts predict`` and ``rts ssl`` (scenes), ``rts prepare``
(rasters under its inputs) and the quicklook and footprint of a predicted map (decimated reads). A
:class:`Scene` describes the rasters (paths, band maps, nodata, units conversion) and their common grid;
pixels are read by window (:mod:`rtscli.data.tiles`) or decimated (:func:`read_decimated`), never whole.
"""

from __future__ import annotations

import glob
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.data.quality import QualityMask, QualityRequest
from rtscli.data.values import NONE, Conversion
from rtscli.errors import RtsError
from rtscli.io.raster import RASTER_SUFFIXES

log = logging.getLogger("rtscli")

#: georeferenced scene formats (``rts predict`` and ``rts ssl``): JPEG and PNG images carry no map grid of
#: their own, so they are images for ``rts prepare`` (with a COCO file or masks), not scenes
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


@dataclass
class Source:
    """One input raster and which of its bands are which channel (1-based)."""

    path: Path
    bands: dict[str, int]
    nodata: float | None = None  # filled in by open_scene (--nodata, else the raster's own, else this one)
    conversion: Conversion = NONE  # filled in by open_scene: stored values -> the model's units
    #: the values' scale/offset as a catalogue declares them (STAC raster:bands): taken as the raster's own
    declared: Conversion | None = None


@dataclass
class Scene:
    name: str
    sources: list[Source]
    width: int
    height: int
    transform: Any
    crs: Any
    resample: bool = False
    #: its quality mask (clouds, shadow, haze, snow: invalid pixels are nodata), or None
    quality: QualityMask | None = None
    #: its DEM (``--dem``: :class:`rtscli.data.terrain.Dem`): the terrain channels are read from it by window
    dem: Any = None
    item: str | None = None  # the STAC item's id, for a scene read from a STAC item
    date: str | None = None  # when the imagery was taken (ISO 8601), when the input says it (a STAC item's datetime)


def open_scene(sources: list[Source], *, resample: bool = False, name: str | None = None,
               nodata: float | None = None, scale: float | None = None, offset: float | None = None,
               training: dict | None = None, quality: QualityRequest | None = None, dem: Any = None) -> Scene:
    """Check the rasters (readable, CRS, same grid unless ``resample``) and describe the scene.

    Each source keeps its own nodata value (``nodata`` overrides them all, for rasters whose nodata
    is not tagged) and its own conversion of stored values to the model's units
    (:func:`rtscli.data.values.resolve`: ``scale``/``offset``, else the raster's GDAL band scale/offset,
    else the conversion of the model's training data, recorded in ``training``, for a raster stored as
    those data were). With ``quality`` (``--quality``), the scene's quality mask is found and checked
    (:mod:`rtscli.data.quality`; the log says which file and what it counts invalid): its invalid pixels are
    nodata for every reader of the scene. With ``dem`` (``--dem``, a :class:`rtscli.data.terrain.Dem`) the scene also
    has the terrain channels, read from it by window.

    Raises:
        RtsError: a raster that cannot be read, lacks a band or lies on another grid (without ``resample``); a
            quality mask that is not found, not a known encoding or does not overlap the scene; a DEM that covers
            too little of it.
    """
    from rtscli.data import values
    from rtscli.io.raster import crs_name, inspect

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
                               f"({crs_name(inf.crs)} {inf.width}x{inf.height} vs "
                               f"{crs_name(ref.crs)} {ref.width}x{ref.height})",
                               path=s.path, fix="pass --resample to resample it onto the first raster's grid")
            log.info("resampling %s onto the grid of %s (bilinear)", s.path, sources[0].path)
        s.nodata = nodata if nodata is not None else inf.nodata if inf.nodata is not None else s.nodata
        s.conversion = values.resolve(inf, s.bands, scale=scale, offset=offset, declared=s.declared,
                                      training=values.Conversion.from_record(training),
                                      training_dtype=(training or {}).get("stored_dtype"))
    values.report({s.path: s.conversion for s in sources}, (training or {}).get("stored_dtype"))
    mask = None
    if quality is not None:
        mask = quality.open_for(sources[0].path, ref.crs, ref.transform, ref.width, ref.height)
        log.info("%s: %s", name or sources[0].path.name, mask.describe())
    resample = resample and any(not ref.same_grid(inf) for inf in infos)  # rasters on one grid are read as they are
    if dem is not None:  # terrain channels (rtscli.data.terrain): the DEM must cover the scene
        dem.check_covers(ref.crs, ref.transform, ref.width, ref.height, name or sources[0].path.name)
    return Scene(name=name or sources[0].path.stem, sources=sources, width=ref.width, height=ref.height,
                 transform=ref.transform, crs=ref.crs, resample=resample, quality=mask, dem=dem)


def find_rasters(inputs: list[str] | list[Path], exclude: list[Path] | tuple[Path, ...] = (), *,
                 suffixes: tuple[str, ...] = RASTER_SUFFIXES) -> list[tuple[Path, Path]]:
    """Every raster the inputs name, as ``(file, root it was found under)``: the one raster finder of rts.

    Args:
        inputs: files, folders (searched recursively: site subfolders), glob patterns (``scenes/*.tif``) and
            ``.txt`` lists (one path per line, ``#`` comments; relative paths are relative to the list's folder).
        exclude: folders and files left out (the output dataset, a mask folder).
        suffixes: the file types a folder or pattern contributes (``rts prepare``: images of any kind,
            :data:`rtscli.io.raster.RASTER_SUFFIXES`; ``rts predict`` and ``rts ssl``: :data:`SCENE_SUFFIXES`).

    Returns:
        ``(file, root)`` pairs in input order, folders sorted; the root is the folder a file was found under
        (its first subfolder is the file's site), a named file's own folder.

    Raises:
        RtsError: an input that does not exist, a folder without rasters or a pattern that matches none.

    Hidden files and folders (including rts's own temporary builds) are left out of folders, and so are quality
    masks named as their providers name them (``*_udm2.tif``, ``*_SCL_20m.jp2``, ``SCL.tif``, ``*_QA_PIXEL.TIF``:
    :func:`rtscli.data.quality.product_by_name`), counted in the log; a file named on its own is kept.
    """
    from rtscli.data.quality import product_by_name

    out: list[tuple[Path, Path]] = []
    ex = [Path(e).resolve() for e in exclude]
    masks: list[Path] = []

    def excluded(p: Path) -> bool:
        rp = p.resolve()
        if product_by_name(p) is not None:  # a cloud mask beside its scene is not a scene
            masks.append(p)
            return True
        return any(e == rp or e in rp.parents for e in ex)

    kinds = ", ".join("*" + x for x in suffixes)
    for item in inputs:
        inp = Path(item)
        if inp.is_dir():
            files = [p for p in sorted(inp.rglob("*"))
                     if p.suffix.lower() in suffixes and p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(inp).parts) and not excluded(p)]
            if not files:
                raise RtsError(f"no images ({kinds}) found in this folder or its subfolders", path=inp,
                               fix="point to the folder that holds your rasters")
            out.extend((p, inp) for p in files)
        elif inp.suffix.lower() == ".txt" and inp.is_file():
            lines = [s.strip() for s in inp.read_text().splitlines() if s.strip() and not s.strip().startswith("#")]
            for line in lines:
                p = Path(line) if Path(line).is_absolute() else inp.parent / line
                if not p.exists():
                    raise RtsError(f"{line!r}, listed in this file, is not found", path=inp, fix="check the list")
                out.append((p, p.parent))
        elif not inp.exists() and any(c in str(item) for c in "*?["):
            found = sorted(Path(s) for s in glob.glob(str(item)))
            found = [p for p in found if p.is_file() and p.suffix.lower() in suffixes and not excluded(p)]
            if not found:
                raise RtsError(f"the pattern {str(item)!r} matches no raster ({kinds})",
                               fix="check the pattern (quote it so that the shell leaves it to rts)")
            out.extend((p, p.parent) for p in found)
        elif not inp.exists():
            raise RtsError("input not found", path=inp, fix="check the path")
        else:
            out.append((inp, inp.parent))
    if masks:
        log.info("%d quality mask file(s) left out of the images (e.g. %s): they are read with --quality",
                 len(masks), masks[0].name)
    return out


def scene_paths(inputs: list[str] | list[Path]) -> list[Path]:
    """The scenes that ``inputs`` name: raster files (:func:`find_rasters` with :data:`SCENE_SUFFIXES`) and STAC
    items (an item, a folder or ``.txt`` list of items, a catalog or an item collection:
    :func:`rtscli.data.stac.stac_refs`), in input order; a STAC item stands as its ``.json`` file
    (:func:`open_item` opens it)."""
    from rtscli.data.stac import stac_refs

    out: list[Path] = []
    for entry in inputs:
        refs = stac_refs(entry)
        out.extend([p for p, _ in find_rasters([Path(entry)], suffixes=SCENE_SUFFIXES)] if refs is None
                   else [ref for ref, _ in refs])
    return out


def is_item(scene: Path) -> bool:
    """Whether a scene path of :func:`scene_paths` stands for a STAC item (its ``.json``)."""
    return Path(scene).suffix.lower() == ".json"


def open_item(ref: Path, channels: list[str], *, nodata: float | None = None, scale: float | None = None,
              offset: float | None = None, training: dict | None = None,
              quality: QualityRequest | None = None, dem: Any = None) -> tuple[Scene, list[str], list[str]]:
    """A STAC item as a scene (:mod:`rtscli.data.stac`): its assets' bands by name, on the finest asset's grid (the
    others read onto it, bilinear), named by the item's id and dated by its ``datetime``; with ``--quality auto`` its
    mask asset is the quality mask.

    Args:
        ref: the item's ``.json`` (:func:`scene_paths`).
        channels: the channels wanted (``mask`` left out).
        nodata: ``--nodata`` (else each file's own, else ``raster:bands`` nodata).
        scale: ``--scale`` (else ``raster:bands`` scale/offset, else the file's own).
        offset: ``--offset``.
        training: the model's recorded conversion (:func:`open_scene`).
        quality: ``--quality``: ``auto`` takes the item's mask asset; a folder or file as for rasters.
        dem: ``--dem`` (:class:`rtscli.data.terrain.Dem`), or None.

    Returns:
        ``(scene, the channels no asset has, every asset as "key (common names)")``; with channels missing the scene
        has the others (the caller says whether the model needs them).

    Raises:
        RtsError: an unreadable item, no asset with a wanted channel, an asset that cannot be read or lies outside
            the folder named, ``--quality auto`` for an item without a mask asset.
    """
    import dataclasses

    from rtscli.data.quality import AUTO
    from rtscli.data.stac import item_scene

    its = item_scene(ref, channels)
    if not its.sources:
        raise RtsError(f"STAC item {its.item_id} has no asset with the bands needed ({', '.join(channels)}); "
                       f"its assets: {'; '.join(its.assets) or 'none'}", path=ref,
                       fix="pass --bands naming the item's bands (eo:bands common names or asset keys)")
    srcs = [Source(a.path, dict(a.bands), nodata=a.nodata, declared=a.declared) for a in its.sources]
    if quality is not None and quality.where == AUTO:
        if its.mask is None:
            raise RtsError(f"STAC item {its.item_id} has no quality-mask asset (scl, udm2, qa_pixel); its assets: "
                           f"{'; '.join(its.assets)}", path=ref, fix="pass --quality MASK, or drop --quality")
        quality = dataclasses.replace(quality, where=str(its.mask[0]), product=its.mask[1])
        log.info("%s: quality mask from asset %r (%s)", its.item_id, its.mask[2], its.mask[1])
    scene = open_scene(srcs, resample=len(srcs) > 1, name=its.item_id, nodata=nodata, scale=scale, offset=offset,
                       training=training, quality=quality, dem=dem)
    scene.item, scene.date = its.item_id, its.date
    return scene, its.missing, its.assets


def read_decimated(scene: Scene, path: Path, bands: list[int], h: int, w: int, **read_options: Any) -> np.ndarray:
    """``bands`` (1-based) of the raster ``path``, on the scene's grid (resampled onto it with ``--resample``),
    read whole but decimated to (len(bands), h, w) by GDAL (overviews when the file has them): bounded memory
    whatever the scene's size.

    Args:
        scene: the scene whose grid the values are read on.
        path: one of the scene's rasters.
        bands: 1-based band numbers to read.
        h: rows of the decimated read, pixels.
        w: columns of the decimated read, pixels.
        **read_options: passed to rasterio's ``read`` (``masked``, ``resampling``).

    Returns:
        The values, ``(len(bands), h, w)`` in the raster's data type (a masked array with ``masked=True``).

    Raises:
        RtsError: naming the file, when GDAL cannot read it.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    from rtscli.io.raster import read_error

    try:
        with rasterio.open(path) as src, _on_scene_grid(src, scene, path) as grid:
            return grid.read(bands, out_shape=(len(bands), h, w), **read_options)
    except RasterioIOError as exc:
        raise read_error(path, exc) from None


def valid_footprint(scene: Scene, max_side: int = 1024) -> Any:
    """Where the scene has data: the polygon (scene CRS) of the pixels valid in every band of every source.

    Read decimated to at most ``max_side`` pixels a side (bounded memory whatever the scene's size;
    nearest-neighbour, so the outline is exact to one decimated pixel), with each source's nodata (its own
    or ``--nodata``; NaN too) and the invalid pixels of the scene's quality mask (clouds, shadow, haze, snow:
    :attr:`Scene.quality`, read onto the decimated grid), polygonized through the decimated grid's transform and
    clipped to the scene's true footprint. A scene without nodata gives that footprint itself.

    Args:
        scene: the scene (its sources' nodata already set by :func:`open_scene`).
        max_side: the longest side of the decimated read, pixels.

    Returns:
        A shapely (multi)polygon in the scene's CRS; an empty polygon when no pixel is valid.
    """
    from rasterio.enums import Resampling
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely import union_all
    from shapely.geometry import shape

    from rtscli.geometry.footprint import window_footprint

    whole = window_footprint(scene.transform, 0, 0, scene.width, scene.height)
    scale = max(1, int(np.ceil(max(scene.width, scene.height) / max_side)))
    h, w = max(1, int(np.ceil(scene.height / scale))), max(1, int(np.ceil(scene.width / scale)))
    valid = np.ones((h, w), bool)
    for s in scene.sources:
        data = read_decimated(scene, s.path, sorted(set(s.bands.values())), h, w, resampling=Resampling.nearest)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.isfinite(data).all(axis=0)
        if s.nodata is not None and s.nodata == s.nodata:
            valid &= (data != s.nodata).all(axis=0)
    t = scene.transform @ Affine.scale(scene.width / w, scene.height / h)
    if scene.quality is not None:  # where the view was clouded the map did not look
        from rtscli.io.raster import gdal_env

        with gdal_env(), scene.quality.open() as src:
            valid &= ~scene.quality.read_invalid(src, t, scene.crs, h, w)
    if valid.all():
        return whole
    parts = [shape(g) for g, v in shapes(valid.astype(np.uint8), mask=valid, transform=t) if v == 1]
    if not parts:
        from shapely.geometry import Polygon

        return Polygon()
    return union_all(parts).intersection(whole)


def _on_scene_grid(src: Any, scene: Scene, path: Path) -> AbstractContextManager[Any]:
    """``src`` itself, or (a source resampled with ``--resample``) a bilinear view of it on the scene's grid."""
    import contextlib

    if not scene.resample or path == scene.sources[0].path:
        return contextlib.nullcontext(src)
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    return WarpedVRT(src, crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                     resampling=Resampling.bilinear)
