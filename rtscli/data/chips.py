"""Chips of ``rts prepare``: pixels read by window, stored values made physical, and their instances.

:func:`iter_chips` reads each item's window (never a whole scene), decides nodata on the stored
values, converts them (:mod:`rtscli.data.values`) and finds the instances: from a mask band or mask
file (:func:`rtscli.data.coco.instances_from_mask`) or from label polygons taken into the chip's
pixels through its affine transform (:func:`instances_from_labels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtscli.data import coco
from rtscli.data.bands import BandMap
from rtscli.data.inputs import Item
from rtscli.data.modalities import valid_mask
from rtscli.errors import RtsError
from rtscli.io.raster import read_window, window_transform


def chip_transform(item: Item):
    t = item.image.transform
    if item.window is None:
        return t
    c, r, _, _ = item.window
    return window_transform(t, c, r)


def crs_text(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def write_chip(path, image, transform, crs, nodata, names):
    from rtscli.io.raster import write_geotiff

    write_geotiff(path, image, transform=transform, crs=crs, nodata=nodata, band_names=names)


def check_binary(values: np.ndarray, path: Path) -> np.ndarray:
    u = np.unique(values[np.isfinite(values)]) if np.issubdtype(values.dtype, np.floating) else np.unique(values)
    if not (set(u.tolist()) <= {0, 1} or set(u.tolist()) <= {0, 255}):
        shown = ", ".join(f"{v:g}" for v in u[:6]) + (", ..." if len(u) > 6 else "")
        raise RtsError(
            f"mask is not binary (values {shown})",
            path=path,
            fix="write 0 for background and 1 (or 255) for slumps, e.g. gdal_calc.py --calc 'A>0'",
        )
    return np.nan_to_num(values) > 0


def read_mask(src, win, band: int, path: Path) -> np.ndarray:
    """A binary mask window; the file's nodata value counts as "no slump"."""
    m = read_window(src, win, [band])[0]
    if src.nodata is not None:
        m = np.where(m == src.nodata, 0, m)
    return check_binary(m, path)


def iter_chips(items, opts, mode, band_map, image_bands, labels, chip_dtype, conversions, chip_nodata):
    """Yield (item, image, valid, instances, specks_dropped, clipped_dropped) per item.

    ``image`` is (bands, rows, cols) in ``chip_dtype``: the stored values turned into physical ones by
    ``conversions`` (per file); nodata is decided on the stored values, and when values were converted
    the invalid pixels are set to ``chip_nodata``.
    """
    import rasterio
    from rasterio.windows import Window

    open_files: dict[Path, Any] = {}

    def handle(path: Path):
        if path not in open_files:
            if len(open_files) > 16:
                for f in open_files.values():
                    f.close()
                open_files.clear()
            open_files[path] = rasterio.open(path)
        return open_files[path]

    idx = [image_bands[n] for n in image_bands.names]
    image_bands_bm = BandMap(tuple((n, i + 1) for i, n in enumerate(image_bands.names)))
    # values were converted somewhere: every chip's invalid pixels (stored nodata, padding) become chip_nodata
    refill = chip_nodata is not None and any(not c.identity for c in conversions.values())
    try:
        for item in items:
            src = handle(item.image.path)
            if item.window is None:
                win = Window(0, 0, item.image.width, item.image.height)
            else:
                win = Window(*item.window)
            data = read_window(src, win, idx)
            stored = [data] + [read_window(handle(info.path), win, [1]) for info in item.aux.values()]
            valid = valid_mask(data, image_bands_bm, item.image.nodata, names=image_bands.names)  # stored values
            # padding beyond the raster's edge is never data, whatever the nodata setting
            inside_h = max(0, min(int(win.height), item.image.height - int(win.row_off)))
            inside_w = max(0, min(int(win.width), item.image.width - int(win.col_off)))
            valid[inside_h:, :] = False
            valid[:, inside_w:] = False
            paths = [item.image.path] + [info.path for info in item.aux.values()]
            names = [image_bands.names] + [[n] for n in item.aux]
            planes = [conversions[p].apply(x, nm) if not conversions[p].identity else x
                      for p, x, nm in zip(paths, stored, names, strict=True)]
            image = np.concatenate(planes, axis=0).astype(chip_dtype, copy=False)
            if refill:
                image[:, ~valid] = chip_nodata
            if not valid.any():
                yield item, None, None, [], 0, 0
                continue
            specks = clipped = 0
            if mode == "paper":
                binary = read_mask(src, win, band_map["mask"], item.image.path) & valid
                instances, specks = coco.instances_from_mask(binary, min_area=opts.min_area, fmt=opts.segmentation)
            elif mode == "masks":
                binary = read_mask(handle(item.mask.path), win, 1, item.mask.path) & valid
                instances, specks = coco.instances_from_mask(binary, min_area=opts.min_area, fmt=opts.segmentation)
            else:
                instances, clipped = instances_from_labels(item, labels, valid, opts)
            yield item, image, valid, instances, specks, clipped
    finally:
        for f in open_files.values():
            f.close()


def instances_from_labels(item: Item, labels, valid, opts):
    """One instance per label polygon that reaches the chip, rasterized on the chip's own grid.

    The labels are found by the chip's true footprint (all four corners) and taken into chip pixels
    through the inverse of the chip's affine transform, then clipped to the chip in pixel space: right on
    rotated and sheared grids, where the map-space box of two corners is not the chip.
    """
    from rtscli.geometry.footprint import to_pixels, window_footprint

    gdf, sindex = labels[item.image.crs.to_wkt()]
    c, r, w, h = item.window
    t = window_transform(item.image.transform, c, r)
    out, clipped = [], 0
    geoms = gdf.geometry.values
    ids = gdf["source_id"].tolist()  # each label's row in its file (plain ints or "NAME#ROW")
    for k in sorted(sindex.query(window_footprint(item.image.transform, c, r, w, h), predicate="intersects")):
        inst = coco.instance_from_polygon(to_pixels(geoms[k], t), (h, w), valid=valid, min_area=opts.min_area,
                                          fmt=opts.segmentation, source_id=ids[k])
        if inst is None:
            clipped += 1
        else:
            out.append(inst)
    return out, clipped
