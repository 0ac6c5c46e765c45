"""Images as ``rts ssl``'s input: the chips of a prepared dataset (its train split) and a COCO set's images.

:class:`ImageWindows` draws random windows over many small images, each opened, read and closed per item;
:func:`dataset_images` and :func:`coco_images` find them, with how their stored values become the model's units;
:func:`sample_image_stats` samples normalization statistics from them. Used by :mod:`rtscli.engine.ssl`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rtscli.errors import RtsError

if TYPE_CHECKING:
    from rtscli.data.bands import BandMap
    from rtscli.data.dataset import DatasetInfo
    from rtscli.data.modalities import BandStats, Modality
    from rtscli.data.values import Conversion

log = logging.getLogger("rtscli")


@dataclass(frozen=True)
class ImageRef:
    """One image that :class:`ImageWindows` reads: its file, size in pixels, how its stored values become the
    model's units and its nodata value (a stored value; None: none)."""

    path: Path
    width: int
    height: int
    conversion: Conversion | None = None  # None: values as stored (a dataset's chips are in the model's units)
    nodata: float | None = None


class ImageWindows(torch.utils.data.Dataset):
    """``n`` random ``tile`` x ``tile`` windows per epoch over many small images (the chips of a prepared dataset,
    the images of a COCO set), each opened, read by window and closed per item (thousands of images never hold
    thousands of open files). The same items as :class:`rtscli.data.windows.RandomWindows`: ``(index, epoch)`` or
    ``(index, epoch, stream)`` -> ``(image (C, T, T) float32 normalized, valid (T, T) bool, mask (T/32, T/32)
    bool)``, drawn from (seed, stream, epoch, index) alone (resume and workers see the same windows).

    An image is drawn in proportion to its area, a window inside it at random (an image smaller than the tile is
    padded: padding is never valid). A window with less than ``min_valid`` of its image's pixels valid is redrawn
    (up to :data:`rtscli.data.windows.TRIES` times). Channels are built by
    :func:`rtscli.data.modalities.compose`, as :class:`rtscli.data.dataset.ChipDataset` builds them: nodata (every
    band equal to the image's nodata value, or not finite) is invalid, and 0 after normalization.

    Args:
        images: the images (:class:`ImageRef`).
        band_map: channel name -> 1-based band of every image (a dataset's chip band map).
        tile: window side, pixels (a multiple of the mask block, 32).
        modality: the modality built.
        stats: normalization statistics per channel; None: raw values (to sample statistics).
        repeat_to: 1-channel modalities are repeated to this many channels (None: not).
        n: windows per epoch.
        seed: the run's seed.
        mask_ratio: share of the mask blocks hidden (:func:`rtscli.data.windows.block_mask`).
        min_valid: least share of valid pixels (of the window's part inside its image).
    """

    def __init__(self, images: list[ImageRef], *, band_map: BandMap, tile: int, modality: Modality,
                 stats: dict[str, BandStats] | None, repeat_to: int | None, n: int, seed: int = 0,
                 mask_ratio: float = 0.6, min_valid: float = 0.5) -> None:
        from rtscli.data.bands import BandMap as _BandMap

        if not images:
            raise RtsError("no image to read windows from", fix="pass a dataset with train chips or a COCO file")
        self.images, self.tile, self.modality, self.stats = images, tile, modality, stats
        self.repeat_to, self.n, self.seed, self.epoch = repeat_to, n, seed, 0
        self.mask_ratio, self.min_valid = mask_ratio, min_valid
        bands = {k: v for k, v in band_map.as_dict().items() if k != "mask"}
        self.names = list(bands)
        self.indexes = list(bands.values())  # the bands read, in this order
        self.band_map = _BandMap(tuple((name, i + 1) for i, name in enumerate(self.names)))  # of the read array
        area = np.array([im.width * im.height for im in images], np.float64)
        self.weights = area / area.sum()
        self.redrawn = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def origin(self, idx: int, epoch: int, attempt: int, stream: int = 0) -> tuple[int, int, int]:
        """(image index, col, row) of a window; deterministic in (seed, stream, epoch, idx, attempt). Streams: 0
        training, 1 statistics, 2 pictures."""
        rng = np.random.default_rng([self.seed, stream, epoch, idx, attempt])
        k = int(rng.choice(len(self.images), p=self.weights))
        im = self.images[k]
        col = int(rng.integers(0, max(1, im.width - self.tile + 1)))
        row = int(rng.integers(0, max(1, im.height - self.tile + 1)))
        return k, col, row

    def read(self, k: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The window of image ``k`` whose top-left pixel is (col, row): ``(raw (bands, T, T) float32 in the model's
        units, valid (T, T) bool, inside (T, T) bool)``; bands in :attr:`names` order (:attr:`band_map`).

        Raises:
            RtsError: the image cannot be read, or has fewer bands than the band map needs.
        """
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        from rtscli.data.modalities import valid_mask
        from rtscli.io.raster import open_raster, read_error, read_window

        im, t = self.images[k], self.tile
        try:
            with open_raster(im.path) as src:
                if src.count < max(self.indexes):
                    raise RtsError(f"the band map needs band {max(self.indexes)}, the image has {src.count}",
                                   path=im.path, fix="pass --bands matching the images (see `rts bands`)")
                h, w = max(0, min(t, src.height - row)), max(0, min(t, src.width - col))
                data = read_window(src, Window(col, row, w, h), self.indexes, path=im.path).astype(np.float32)
        except RasterioIOError as exc:
            raise read_error(im.path, exc) from None
        raw = np.zeros((len(self.names), t, t), np.float32)
        inside = np.zeros((t, t), bool)
        inside[:h, :w] = True
        valid = inside.copy()
        # nodata is a stored value: before the conversion (as rts prepare and the scenes' reader)
        valid[:h, :w] = valid_mask(data, self.band_map, im.nodata)
        raw[:, :h, :w] = data if im.conversion is None else im.conversion.apply(data, self.names)
        return raw, valid, inside

    def raw(self, idx: int, epoch: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The first window of (idx, epoch) with enough valid pixels (or the last try): ``(raw, valid)``."""
        from rtscli.data.windows import TRIES

        for attempt in range(TRIES):
            raw, valid, inside = self.read(*self.origin(idx, epoch, attempt, stream))
            if valid.sum() >= self.min_valid * max(1, inside.sum()):
                break
            self.redrawn += 1
        return raw, valid

    def __getitem__(self, index: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One window: ``(image (C, T, T) float32 normalized, valid (T, T) bool, mask (T/32, T/32) bool)``.

        Args:
            index: an int, ``(index, epoch)`` or ``(index, epoch, stream)`` (as
                :meth:`rtscli.data.windows.RandomWindows.__getitem__`).

        Returns:
            The image (invalid pixels 0), its valid pixels and the SimMIM block mask.
        """
        from rtscli.data.modalities import compose
        from rtscli.data.windows import TRIES, block_mask

        idx, epoch, stream = (tuple(index) + (0,))[:3] if isinstance(index, tuple) else (index, self.epoch, 0)
        raw, valid = self.raw(idx, epoch, stream)
        arrays, ok = compose(raw, self.band_map, [self.modality], self.stats, nodata=None, repeat_to=self.repeat_to)
        valid = valid & ok
        image = arrays[self.modality.name]
        image[:, ~valid] = 0.0
        mask = block_mask(self.tile, np.random.default_rng([self.seed, stream, epoch, idx, TRIES]),
                          ratio=self.mask_ratio)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(valid), torch.from_numpy(mask)


def sample_image_stats(windows: ImageWindows, count: int, seed: int) -> tuple[dict[str, BandStats], int]:
    """Normalization statistics of the modality's channels from ``count`` windows of stream 1 (not the training
    windows), as :func:`rtscli.data.windows.sample_stats` for scenes. Returns ``(stats, valid pixels sampled)``.

    Raises:
        RtsError: the windows hold no valid pixel.
    """
    from rtscli.data.modalities import channel
    from rtscli.data.stats import StatsSampler

    names = list(dict.fromkeys(windows.modality.channels))
    sampler = StatsSampler(names, seed=seed)
    for i in range(count):
        raw, valid = windows.raw(i, 0, stream=1)
        if valid.any():
            sampler.add({n: channel(n, raw, windows.band_map, valid) for n in names}, valid)
    if sampler.count == 0:
        raise RtsError(f"the {count} windows sampled for statistics hold no valid pixel",
                       path=windows.images[0].path,
                       fix="check the images' nodata value (--nodata) and the band map (--bands)")
    return sampler.result(), sampler.count


def dataset_images(root: Path, *, include_val: bool = False) -> tuple[DatasetInfo, list[ImageRef], dict[str, int]]:
    """The chips of a prepared dataset that ``rts ssl`` reads: those of its train split, and of its val split with
    ``include_val``; never the test split's (pretraining on them would leak what the model is scored on).

    Args:
        root: the dataset folder (``manifest.yaml``, ``train.json``, ``chips/``), as the user named it.
        include_val: also the val split's chips.

    Returns:
        ``(dataset, chips, chips per split)``; chips in the order of the COCO files.

    Raises:
        RtsError: not a dataset, a COCO file that cannot be read, an image entry whose ``file_name`` leads outside
            ``root`` (:func:`rtscli.io.paths.inside`), missing chips, or no chip at all.
    """
    import json

    from rtscli.data.dataset import DatasetInfo
    from rtscli.io.paths import inside
    from rtscli.io.raster import inspect

    info = DatasetInfo.open(root)
    chips: list[ImageRef] = []
    counts: dict[str, int] = {}
    missing: list[Path] = []
    for split in ("train", "val") if include_val else ("train",):
        path = root / f"{split}.json"
        if not path.is_file():
            if split == "train":
                raise RtsError("the dataset has no train split (train.json)", path=root, fix="re-run rts prepare")
            continue
        try:
            doc = json.loads(path.read_text())
            entries = list(doc["images"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise RtsError(f"not a COCO file of rts prepare ({exc.__class__.__name__})", path=path,
                           fix="re-run rts prepare, or restore the dataset's COCO file") from None
        for im in entries:
            chip = inside(root, str(im.get("file_name", "")), f"image {im.get('id')} of {split}.json", path=path,
                          fix="re-run rts prepare, or restore the dataset's COCO file")
            if not chip.is_file():
                missing.append(chip)
                continue
            w, h = im.get("width"), im.get("height")
            if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
                r = inspect(chip, need_crs=False, pixel_grid_ok=True)
                w, h = r.width, r.height
            chips.append(ImageRef(chip, w, h, None, info.nodata))
        counts[split] = len(entries)
    if missing:
        raise RtsError(f"{len(missing)} chip(s) listed in the dataset's COCO files are missing, e.g. {missing[0]}",
                       path=root, fix="re-run rts prepare, or restore the dataset's chips")
    if not chips:
        raise RtsError("the dataset's train split has no chips", path=root,
                       fix="re-run rts prepare with more imagery, or run rts ssl on scenes")
    return info, chips, counts


def coco_images(files: list[Path], *, images_dir: Path | None, band_map: BandMap | None, scale: float | None,
                offset: float | None, nodata: float | None) -> tuple[list[ImageRef], BandMap, dict[str, Any]]:
    """The images of COCO instances files (their annotations are not read), found as ``rts prepare --coco`` finds
    them (:func:`rtscli.data.coco_import.image_roots`: ``images_dir``, beside the JSON, its ``images/``) and kept
    inside the folder each is found in (:func:`rtscli.data.coco_import.locate`).

    Args:
        files: the COCO JSON files; a file whose name says it is a test split (``*test*``) is refused.
        images_dir: ``--images``: the folder of the images, or None.
        band_map: ``--bands``; None: from the first image's band names or colour interpretation.
        scale: ``--scale`` (physical = stored x scale + offset), or None: the images' GDAL scale/offset.
        offset: ``--offset``, or None.
        nodata: ``--nodata`` for images that tag none, or None.

    Returns:
        ``(images, band map, record)``; the record names the files and counts the images, for the bundle.

    Raises:
        RtsError: a test split, an unreadable COCO file, an image not found or leading outside its folder, an
            image the band map does not fit, no band map to be had.
    """
    from rtscli.data import values
    from rtscli.data.bands import check_fits
    from rtscli.data.coco_import import image_roots, locate, read_coco, split_of
    from rtscli.data.inputs import band_map_from_descriptions
    from rtscli.io.paths import contained
    from rtscli.io.raster import inspect

    found: list[tuple[Path, Any]] = []
    per_file: dict[str, int] = {}
    for f in files:
        if split_of(f) == "test":
            raise RtsError("this COCO file is a test split (its name says so): rts ssl never pretrains on test "
                           "images, which would leak what the model is scored on", path=f,
                           fix="pass the train (and val) COCO files")
        doc = read_coco(f)
        roots = image_roots(f, images_dir, [])
        for im in doc["images"]:
            name = str(im["file_name"])
            path = locate(name, roots)
            if path is None:
                rel = Path(name.replace("\\", "/"))
                outside = [r for r in roots for c in (rel, Path(rel.name))
                           if rel.name and (r / c).is_file() and contained(r, c) is None]
                if outside:
                    raise RtsError(f"image {im['id']}: its file_name {name!r} leads outside {outside[0]}; it is not "
                                   "read", path=f, fix="put the image itself (not a link) in the folder given with "
                                                       "--images, or fix its file_name")
                raise RtsError(f"image {im['id']} ({name}) not found beside the COCO file or in --images", path=f,
                               fix="pass the folder that holds the images with --images DIR")
            found.append((path, inspect(path, need_crs=False, pixel_grid_ok=True)))
        per_file[str(f.resolve())] = len(doc["images"])
    if not found:
        raise RtsError("the COCO file(s) list no images", path=files[0], fix="check the COCO file")
    if band_map is None:
        band_map = band_map_from_descriptions(found[0][1])
        if band_map is None:
            raise RtsError("no band map given and the images' bands are not named", path=found[0][0],
                           fix="pass --bands (e.g. red=1,green=2,blue=3 for RGB images)")
    bm = band_map.without(["mask"])
    bands = bm.as_dict()
    images, conversions = [], {}
    for path, r in found:
        check_fits(bm, r.count, r.descriptions, path)
        conv = values.resolve(r, bands, scale=scale, offset=offset)
        conversions[path] = conv
        images.append(ImageRef(path, r.width, r.height, None if conv.identity else conv,
                               nodata if nodata is not None else r.nodata))
    values.report(conversions)
    first = found[0]
    record = {"kind": "coco", "files": per_file, "images": len(images),
              "values": conversions[first[0]].record(str(first[1].dtype))}
    return images, bm, record
