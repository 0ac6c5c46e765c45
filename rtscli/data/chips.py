"""Chips of ``rts prepare``: pixels read by window, stored values made physical, and their instances.

:func:`iter_chips` reads each item's window (never a whole scene), decides nodata on the stored
values, converts them (:mod:`rtscli.data.values`) and finds the instances: from a mask band or mask
file (:func:`rtscli.data.coco.instances_from_mask`) or from label polygons taken into the chip's
pixels through its affine transform (:func:`instances_from_labels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from affine import Affine
from numpy.typing import DTypeLike
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.windows import Window

from rtscli.data import coco
from rtscli.data.bands import BandMap
from rtscli.data.coco_masks import CocoReader
from rtscli.data.inputs import Item
from rtscli.data.modalities import valid_mask
from rtscli.data.options import PrepareOptions
from rtscli.data.values import Conversion
from rtscli.errors import RtsError
from rtscli.geometry.affine import window_transform
from rtscli.io.raster import check_whole_read, read_window


def chip_transform(item: Item) -> Affine:
    """The chip's geotransform: its window's on the raster's grid; the identity (its own pixels) for an image
    without georeference, whose chips carry none either."""
    t = item.image.transform
    if item.window is None or item.image.pixel_grid:
        return t
    c, r, _, _ = item.window
    return window_transform(t, c, r)


def crs_text(crs: CRS | None) -> str | None:
    """``EPSG:n`` or WKT; None for an image without georeference (a pixel grid)."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def write_chip(path: Path, image: np.ndarray, transform: Affine, crs: CRS | None, nodata: float | None,
               names: list[str]) -> None:
    """Write a chip ``image`` (C, H, W) as a GeoTIFF with its georeference and one named band per channel."""
    from rtscli.io.raster import write_geotiff

    write_geotiff(path, image, transform=transform, crs=crs, nodata=nodata, band_names=names)


#: a chip whose data pixels are more than this share invalid in its raster's quality mask (clouds, shadow, haze,
#: snow) is left out of the dataset and counted (``rts prepare --quality``)
MAX_INVALID_SHARE = 0.5

MASK_KINDS = ("auto", "binary", "instances")
#: a noisy binary mask (JPEG): values below LOW are background, from HIGH up slump, between them "mid" values;
#: it is thresholded at the midpoint when mid values are at most MID_SHARE of the non-background pixels (or
#: MID_FLOOR pixels), else refused
LOW, HIGH, MID_SHARE, MID_FLOOR = 64, 192, 0.02, 16


class MaskReader:
    """Masks as instances: binary masks (one instance per 8-connected component, the paper's method) or
    instance-id masks (0 = background, 1..N = one slump each, as CVAT, Label Studio and many labelling tools
    export: touching slumps stay apart). ``kind`` is ``auto``, ``binary`` or ``instances``
    (``rts prepare --mask-kind``); what was decided per file is kept for one note per kind at the end
    (:meth:`notes`).

    ``auto``: values 0/1 or 0/255 are binary; values near 0 and near 255 with few in between (JPEG compression
    noise, e.g. 0-6 and 248-255) are thresholded at 128; other whole numbers in a lossless file are instance
    ids; anything else (many mid values in a JPEG, fractions) is refused with the fix.
    """

    def __init__(self, kind: str = "auto") -> None:
        if kind not in MASK_KINDS:
            raise RtsError(f"unknown mask kind {kind!r}", fix=f"use one of {', '.join(MASK_KINDS)}")
        self.kind = kind
        self.thresholded: set[Path] = set()
        self.as_ids: set[Path] = set()
        self.nonzero_binary: set[Path] = set()

    def labels(self, values: np.ndarray, path: Path, *, lossy: bool = False) -> tuple[np.ndarray, bool]:
        """(labels, is_ids): an int32 label image (H, W) from a mask window (H, W) of stored values (nodata
        already 0, NaN counts as 0) and whether its values are instance ids (else 0/1 binary).
        Raises :class:`RtsError` naming ``path`` for a mask that is neither."""
        v = np.nan_to_num(values.astype(np.float64, copy=False)) if np.issubdtype(values.dtype, np.floating) \
            else values
        u = np.unique(v)
        vals = set(u.tolist())
        if self.kind != "instances" and (vals <= {0, 1} or vals <= {0, 255}):
            return (v > 0).astype(np.int32), False
        whole = not np.issubdtype(u.dtype, np.floating) or bool(np.all(u == np.round(u)))
        if u.min() < 0 or not whole:
            shown = ", ".join(f"{x:g}" for x in u[:6]) + (", ..." if len(u) > 6 else "")
            raise RtsError(f"mask holds values that are neither 0/1, 0/255 nor instance ids ({shown})", path=path,
                           fix="write 0 for background and 1 (or 255) for slumps, or 1..N for N slumps "
                               "(e.g. rio calc '(> (read 1) 0.5)' MASK OUT.tif)")
        if self.kind == "instances":
            if lossy:
                raise RtsError("instance ids do not survive lossy (JPEG) compression", path=path,
                               fix="export the instance masks as PNG or GeoTIFF, or use --mask-kind binary")
            self.as_ids.add(path)
            return v.astype(np.int32), True
        top = float(u.max())
        near = self._near_binary(v, top) if top <= 255 else None
        if near is not None:
            self.thresholded.add(path)
            return near, False
        if lossy and top <= 3:  # a 0/1 mask saved as JPEG: noise of a few grey levels
            self.thresholded.add(path)
            return (v >= 0.5 * top).astype(np.int32), False
        if self.kind == "binary":
            self.nonzero_binary.add(path)
            return (v > 0).astype(np.int32), False
        if lossy:
            mid = int(((v >= LOW) & (v < HIGH)).sum())
            raise RtsError(f"mask is not binary: {mid} pixel(s) lie between {LOW} and {HIGH - 1} (a greyscale "
                           "image, or a JPEG mask compressed too hard?)", path=path,
                           fix="save masks losslessly (PNG or GeoTIFF) with 0 for background and 255 (or 1) for "
                               "slumps, or 1..N for N slumps")
        self.as_ids.add(path)
        return v.astype(np.int32), True

    @staticmethod
    def _near_binary(v: np.ndarray, top: float) -> np.ndarray | None:
        """Threshold at 128 a 0/255 mask with compression noise, or None when it is not one."""
        if top < HIGH:
            return None
        high = int((v >= HIGH).sum())
        mid = int(((v >= LOW) & (v < HIGH)).sum())
        if mid > max(MID_SHARE * (high + mid), MID_FLOOR):
            return None
        return (v >= 128).astype(np.int32)

    def instances(self, values: np.ndarray, path: Path, valid: np.ndarray, *, lossy: bool, min_area: int,
                  fmt: str) -> tuple[list, int]:
        """(instances, specks dropped) of one mask window; pixels outside ``valid`` are background."""
        labels, ids = self.labels(values, path, lossy=lossy)
        labels[~valid] = 0
        if ids:
            return coco.instances_from_ids(labels, min_area=min_area, fmt=fmt)
        return coco.instances_from_mask(labels > 0, min_area=min_area, fmt=fmt)

    def notes(self) -> list[str]:
        """One line per kind of decision, naming a file of each (for the log and the manifest)."""
        out = []
        for files, text in ((self.thresholded, "held values near 0 and near 255 (compression noise) and were "
                             "thresholded at the midpoint"),
                            (self.as_ids, "hold instance ids (0 = background, 1..N = one slump each): one instance "
                             "per id (--mask-kind binary reads every non-zero pixel as slump instead)"),
                            (self.nonzero_binary, "hold several values; read as binary (--mask-kind binary): every "
                             "non-zero pixel is slump")):
            if files:
                first = sorted(files)[0].name
                out.append(f"{len(files)} mask file(s) {text} (e.g. {first})")
        return out


def read_mask(src: DatasetReader, win: Window, band: int, path: Path, reader: MaskReader, valid: np.ndarray, *,
              lossy: bool, min_area: int, fmt: str) -> tuple[list[coco.Instance], int]:
    """The instances of a mask window (binary or instance ids: :class:`MaskReader`); the file's nodata value
    counts as "no slump"."""
    m = read_window(src, win, [band], fill=0)[0]
    if src.nodata is not None:
        m = np.where(m == src.nodata, 0, m)
    return reader.instances(m, path, valid, lossy=lossy, min_area=min_area, fmt=fmt)


def iter_chips(
    items: Iterable[Item],
    opts: PrepareOptions,
    mode: str,
    band_map: BandMap,
    image_bands: BandMap,
    labels: Mapping[str, tuple[Any, Any]] | None,
    chip_dtype: DTypeLike,
    conversions: Mapping[Path, Conversion],
    chip_nodata: float | None,
    masks: MaskReader | None = None,
    annotations: CocoReader | None = None,
    small_labels: set[Any] | None = None,
    quality: Mapping[Path, Any] | None = None,
    cloudy: set[str] | None = None,
    dem: Any = None,
) -> Iterator[tuple[Item, np.ndarray | None, np.ndarray | None, list[coco.Instance], int, int]]:
    """Read, convert and label each item's chip, one item at a time (never a whole scene in memory).

    Nodata is decided on the stored values (and padding beyond the raster's edge is never data); the
    values are then made physical by each file's conversion. Rasters are opened once and kept open (at
    most 17 at a time) until the generator ends.

    Args:
        items: the items to cut, in order; each is a whole image (``window`` None) or a window
            (col_off, row_off, width, height) of its raster, in pixels, with its aligned ``--aux`` rasters.
        opts: the run's options; ``min_area`` (pixels: smaller specks and clipped pieces are dropped) and
            ``segmentation`` (``auto``, ``polygon`` or ``rle``) are used here.
        mode: where the instances come from: ``paper`` (the raster's ``mask`` band), ``masks`` (the
            item's mask file), ``coco`` (the COCO annotations) or ``vectors`` (label polygons).
        band_map: the raster's band map (band name -> 1-based band number), with the ``mask`` band in
            ``paper`` mode.
        image_bands: the bands read into the chip (``band_map`` without ``mask``), in chip order.
        labels: ``vectors`` mode: ``{CRS WKT: (labels GeoDataFrame in that CRS, its spatial index)}``;
            None otherwise.
        chip_dtype: the data type of the chips' values (float32 when values are converted).
        conversions: ``{raster file: Conversion}`` from stored to physical values, for every image and
            ``--aux`` raster the items read.
        chip_nodata: the chips' nodata value: when any values were converted, every invalid pixel of
            every chip is set to it; None keeps the stored values.
        masks: reads mask bands and mask files (binary or instance ids); default: ``MaskReader()``.
        annotations: the COCO items' annotations (:class:`rtscli.data.coco_masks.CocoReader`);
            default in ``coco`` mode: a new one.
        small_labels: ``vectors`` mode: filled with the labels (their ``uid``) that lie whole in a chip but cover
            fewer than ``opts.min_area`` pixels, once per label however many chips hold it; None: not collected.
        quality: ``{raster file: rtscli.data.quality.QualityMask}`` (``--quality``): the mask's invalid pixels
            (clouds, shadow, haze, snow), read onto the chip's window by nearest neighbour, are nodata (set to
            ``chip_nodata`` in the chip; no instance pixel lies on them); a chip whose data pixels are more than
            :data:`MAX_INVALID_SHARE` invalid is left out (yielded as a chip without valid pixels).
        cloudy: filled with the keys of the chips ``quality`` left out; None: not collected.
        dem: ``--dem`` (:class:`rtscli.data.terrain.Dem`) or a band named ``dem`` of the rasters or ``--aux``
            (:class:`rtscli.data.terrain.BandDem`): slope, relief and hillshade of each chip's window (read with a
            margin: no seam between chips) follow the bands; its voids are nodata.

    Returns:
        An iterator of ``(item, image, valid, instances, specks_dropped, clipped_dropped)`` per item:
        ``image`` (C, H, W) in ``chip_dtype``, the image bands then the aux rasters; ``valid`` (H, W)
        bool, the pixels with data; ``instances`` the slumps (and COCO crowd regions) in chip pixels;
        ``specks_dropped`` mask specks and ``clipped_dropped`` pieces of labels cut by the chip's edge that
        were below ``opts.min_area`` pixels (a label lying whole in the chip is not a piece: ``small_labels``).
        A chip without any valid pixel comes as
        ``(item, None, None, [], 0, 0)``.

    Raises:
        RtsError: a raster or mask that cannot be read, or a mask whose values are neither binary nor
            instance ids (:class:`MaskReader`).
    """
    masks = masks or MaskReader()
    if mode == "coco" and annotations is None:
        annotations = CocoReader()
    from rtscli.io.raster import open_raster

    open_files: dict[Path, Any] = {}

    def handle(path: Path) -> DatasetReader:
        if path not in open_files:
            if len(open_files) > 16:
                for f in open_files.values():
                    f.close()
                open_files.clear()
            open_files[path] = open_raster(path)  # images on a pixel grid (plain JPEG/PNG) too
        return open_files[path]

    idx = [image_bands[n] for n in image_bands.names]
    image_bands_bm = BandMap(tuple((n, i + 1) for i, n in enumerate(image_bands.names)))
    # values were converted somewhere, or a quality mask marks pixels invalid: every chip's invalid pixels (stored
    # nodata, padding, clouds) become chip_nodata
    refill = chip_nodata is not None and (any(not c.identity for c in conversions.values()) or bool(quality)
                                          or dem is not None)
    try:
        for item in items:
            if item.window is None:  # a whole image: its header's size is checked before anything is read
                check_whole_read(item.image.path, item.image.width, item.image.height, len(idx) + len(item.aux))
                win = Window(0, 0, item.image.width, item.image.height)
            else:
                win = Window(*item.window)
            src = handle(item.image.path)
            data = read_window(src, win, idx)
            stored = [data] + [read_window(handle(info.path), win, [1]) for info in item.aux.values()]
            valid = valid_mask(data, image_bands_bm, item.image.nodata, names=image_bands.names)  # stored values
            # padding beyond the raster's edge is never data, whatever the nodata setting
            inside_h = max(0, min(int(win.height), item.image.height - int(win.row_off)))
            inside_w = max(0, min(int(win.width), item.image.width - int(win.col_off)))
            valid[inside_h:, :] = False
            valid[:, inside_w:] = False
            mask = quality.get(item.image.path) if quality else None
            if mask is not None and inside_h and inside_w:  # clouds, shadow, haze, snow: nodata
                t = window_transform(item.image.transform, int(win.col_off), int(win.row_off))
                data_px = int(valid.sum())
                valid &= ~mask.read_invalid(handle(mask.path), t, item.image.crs, int(win.height), int(win.width))
                if data_px and int(valid.sum()) < (1.0 - MAX_INVALID_SHARE) * data_px:
                    if cloudy is not None:
                        cloudy.add(item.key)
                    yield item, None, None, [], 0, 0
                    continue
            paths = [item.image.path] + [info.path for info in item.aux.values()]
            names = [image_bands.names] + [[n] for n in item.aux]
            planes = [conversions[p].apply(x, nm) if not conversions[p].identity else x
                      for p, x, nm in zip(paths, stored, names, strict=True)]
            if dem is not None:  # terrain channels on the chip's window; DEM voids are nodata
                terrain = _terrain(dem, item, win, handle, conversions, band_map.get("dem"))
                planes += [terrain[n][None] for n in terrain]
                valid &= np.isfinite(np.stack(list(terrain.values()))).all(axis=0)
            image = np.concatenate(planes, axis=0).astype(chip_dtype, copy=False)
            if refill:
                image[:, ~valid] = chip_nodata
            if not valid.any():
                yield item, None, None, [], 0, 0
                continue
            specks = clipped = 0
            if mode == "paper":
                instances, specks = read_mask(src, win, band_map["mask"], item.image.path, masks, valid,
                                              lossy=item.image.lossy, min_area=opts.min_area, fmt=opts.segmentation)
            elif mode == "masks":
                assert item.mask is not None  # sample_items gives every item of mode 'masks' its mask file
                instances, specks = read_mask(handle(item.mask.path), win, 1, item.mask.path, masks, valid,
                                              lossy=item.mask.lossy, min_area=opts.min_area, fmt=opts.segmentation)
            elif mode == "coco":
                assert annotations is not None  # made above in mode 'coco' when not given
                instances, specks, clipped = annotations.instances(item, valid, opts)
            else:
                assert labels is not None  # vectors mode: the caller passes vector_items' labels (see Args)
                instances, clipped, small = instances_from_labels(item, labels, valid, opts)
                if small_labels is not None:
                    small_labels.update(small)
            yield item, image, valid, instances, specks, clipped
    finally:
        for f in open_files.values():
            f.close()


def _terrain(dem: Any, item: Item, win: Window, handle: Callable[[Path], Any],
             conversions: Mapping[Path, Conversion], band: int | None) -> dict[str, np.ndarray]:
    """The terrain channels of an item's window: from ``--dem`` (a :class:`rtscli.data.terrain.Dem`), or from the
    band named ``dem`` of its raster (number ``band``) or of its ``--aux dem=`` raster (a
    :class:`rtscli.data.terrain.BandDem`), with that file's stored -> physical conversion."""
    from rtscli.data.terrain import DEM_BAND, Dem

    col, row, w, h = int(win.col_off), int(win.row_off), int(win.width), int(win.height)
    if isinstance(dem, Dem):
        return dem.read(item.image.crs, item.image.transform, col, row, w, h)
    if DEM_BAND in item.aux:
        path, band = item.aux[DEM_BAND].path, 1
    else:
        assert band is not None  # prepare makes a BandDem only when the band map or --aux names dem
        path = item.image.path
    conv = conversions[path]
    return dem.read_band(handle(path), band, item.image.transform, col, row, w, h,
                         scale=conv.scale.get(DEM_BAND, 1.0), offset=conv.offset.get(DEM_BAND, 0.0))


def instances_from_labels(item: Item, labels: Mapping[str, tuple[Any, Any]], valid: np.ndarray,
                          opts: PrepareOptions) -> tuple[list[coco.Instance], int, list[Any]]:
    """One instance per slump label polygon that reaches the chip, rasterized on the chip's own grid (background
    areas, ARTS ``TrainClass = Negative``, are left out: their chips are negatives).

    The labels are found by the chip's true footprint (all four corners) and taken into chip pixels
    through the inverse of the chip's affine transform, then clipped to the chip in pixel space: right on
    rotated and sheared grids, where the map-space box of two corners is not the chip.

    Args:
        item: a chip window (col_off, row_off, width, height) of a scene, pixels (``vectors`` mode).
        labels: ``{CRS WKT: (labels GeoDataFrame, its spatial index)}``, with the scene's CRS among them.
        valid: bool ``(H, W)``: the chip's pixels with data.
        opts: the run's options (``min_area``, pixels; ``segmentation``).

    Returns:
        ``(instances, pieces cut by the chip's edge and below opts.min_area pixels, dropped, the labels lying
        whole in the chip and below opts.min_area pixels, dropped)``: the labels by their ``uid`` (their
        ``source_id`` where the layer has no ``uid``). A label that only touches the chip's edge is neither.
    """
    from shapely.geometry import box

    from rtscli.geometry.footprint import to_pixels, window_footprint

    gdf, sindex = labels[item.image.crs.to_wkt()]
    assert item.window is not None  # vector_items cuts every scene into chip windows
    c, r, w, h = item.window
    t = window_transform(item.image.transform, c, r)
    out, clipped, small = [], 0, []
    geoms = gdf.geometry.values
    ids = gdf["source_id"].tolist()  # each label's row in its file (plain ints or "NAME#ROW")
    uids = gdf["uid"].tolist() if "uid" in gdf.columns else ids  # one per feature of all the label files
    chip = box(0, 0, w, h)
    negative = gdf["negative"].to_numpy(bool) if "negative" in gdf.columns else np.zeros(len(gdf), bool)
    for k in sorted(sindex.query(window_footprint(item.image.transform, c, r, w, h), predicate="intersects")):
        if negative[k]:  # a background area (ARTS TrainClass Negative): never a slump
            continue
        geom = to_pixels(geoms[k], t)
        inst = coco.instance_from_polygon(geom, (h, w), valid=valid, min_area=opts.min_area, fmt=opts.segmentation,
                                          source_id=ids[k])
        if inst is not None:
            out.append(inst)
        elif chip.covers(geom):  # the whole label is in the chip, and too small
            small.append(uids[k])
        elif geom.intersection(chip).area > 0:  # a piece cut off by the chip's edge (not a label touching it)
            clipped += 1
    return out, clipped, small
