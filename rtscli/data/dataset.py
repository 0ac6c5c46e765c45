"""Training samples from a dataset directory made by ``rts prepare``.

A sample is one chip: the chosen modalities built from its bands and normalized with the
manifest's statistics (no hidden ImageNet mean/std), padded or cropped to the model's square tile
(no hidden resize), plus its instances (boxes, labels, masks). Augmentation acts identically on
image and masks: flips, 90-degree rotations, scale jitter within the tile, and brightness/contrast
on optical channels only (never on NDVI or elevation); optionally Simple Copy-Paste (Ghiasi et al., CVPR 2021):
slumps of another training chip pasted on (:mod:`rtscli.data.copy_paste`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtscli.data.bands import BandMap
from rtscli.data.modalities import BandStats, Modality, compose
from rtscli.errors import RtsError
from rtscli.io.readers import read_yaml

OPTICAL = {"red", "green", "blue", "nir", "coastal", "green_i", "yellow", "rededge", "rededge1", "rededge2",
           "rededge3", "nir08", "swir1", "swir2", "pan"}


@dataclass
class DatasetInfo:
    root: Path
    manifest: dict
    band_map: BandMap
    stats: dict[str, BandStats]
    nodata: float | None

    @classmethod
    def open(cls, root: str | Path) -> "DatasetInfo":
        root = Path(root)
        mf = root / "manifest.yaml"
        if not mf.exists():
            raise RtsError("not a dataset directory (no manifest.yaml)", path=root,
                           fix="point to a folder made by `rts prepare`")
        m = read_yaml(mf, what="dataset manifest", fix="re-run `rts prepare`")
        if not isinstance(m, dict) or m.get("kind") != "rts-dataset":
            raise RtsError("manifest.yaml is not an rts dataset manifest", path=mf, fix="re-run `rts prepare`")
        bm = BandMap.from_mapping(m["band_map"])
        stats = {k: BandStats.from_dict(v) for k, v in m["normalization"].items()}
        return cls(root, m, bm, stats, m.get("nodata"))

    def modality(self, name: str) -> Modality:
        mods = self.manifest["modalities"]
        if name not in mods:
            from rtscli.data.modalities import resolve

            try:
                return resolve(name, self.band_map)
            except RtsError:
                raise RtsError(f"the dataset has no modality {name!r} (it has {', '.join(mods)})", path=self.root,
                               fix="choose one of them, or re-run `rts prepare --modalities ...`") from None
        return Modality(name, tuple(mods[name]))

    def checksum(self) -> str:
        """A checksum of the dataset's manifest and COCO files (recorded in model bundles)."""
        import hashlib

        h = hashlib.sha256()
        for name in ("manifest.yaml", "train.json", "val.json", "test.json"):
            p = self.root / name
            if p.exists():
                h.update(p.read_bytes())
        return h.hexdigest()


def stack_modalities(arrays: dict[str, np.ndarray], order: list[str]) -> np.ndarray:
    return np.concatenate([arrays[m] for m in order], axis=0)


class ChipDataset(torch.utils.data.Dataset):
    """Chips of one split as (image tensor C x T x T, target dict, meta dict)."""

    def __init__(self, info: DatasetInfo, split: str, modalities: list[Modality], tile_size: int, *,
                 repeat_to: int | None = 3, augment: bool = False, seed: int = 0, copy_paste: float = 0.0) -> None:
        """Open the split's COCO file (chips are read per item).

        Args:
            info: the dataset (:meth:`DatasetInfo.open`).
            split: ``train``, ``val`` or ``test``.
            modalities: the modalities stacked into the image, in order.
            tile_size: the model's square tile T in px (chips are cropped or zero-padded to it).
            repeat_to: a 1-channel modality is repeated to this many channels (None: not).
            augment: draw flips, rotations, scale jitter, brightness/contrast and random crops per item.
            seed: the seed of the augmentation (with the epoch and the item's position).
            copy_paste: with ``augment``, the probability per item of Simple Copy-Paste (Ghiasi et al., "Simple
                Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation", CVPR 2021): a
                random subset of another chip's slumps, that chip jittered on its own, pasted at a random place
                (:mod:`rtscli.data.copy_paste`). 0 (the default) leaves the items exactly as without it.
        """
        from pycocotools.coco import COCO

        if not 0.0 <= copy_paste <= 1.0:
            raise RtsError(f"the copy-paste probability must be between 0 and 1, not {copy_paste}",
                           fix="give e.g. --copy-paste 0.5")
        self.info, self.split, self.modalities, self.tile = info, split, modalities, tile_size
        self.repeat_to, self.augment, self.copy_paste = repeat_to, augment, float(copy_paste)
        path = info.root / f"{split}.json"
        if not path.exists():
            raise RtsError(f"the dataset has no {split} split", path=info.root, fix="re-run `rts prepare`")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(path))
        self.ids = sorted(self.coco.getImgIds())
        # donors of copy-paste: the chips with a (non-crowd) slump
        self.donors = [i for i, im in enumerate(self.ids)
                       if any(not a.get("iscrowd") for a in self.coco.imgToAnns.get(im, []))]
        if not augment:  # scoring a crop of a larger chip would be wrong (masks and truth differ in size)
            big = [im for im in self.coco.dataset["images"] if max(im["width"], im["height"]) > tile_size]
            if big:
                side = max(max(im["width"], im["height"]) for im in big)
                from rtscli.data.tiling import TOTAL_STRIDE

                fit = -(-side // TOTAL_STRIDE) * TOTAL_STRIDE  # the smallest tile that holds them
                raise RtsError(
                    f"{len(big)} chip(s) of the {split} split are larger than the model's {tile_size} px tile "
                    f"(e.g. {big[0]['file_name']}, {big[0]['width']}x{big[0]['height']})",
                    path=info.root, fix=f"train a model with --tile-size {fit} (the largest chip is {side} px), or "
                                        f"re-run `rts prepare ... --chip-size {tile_size}`")
        self.seed = seed
        self.epoch = 0
        flags: list[bool] = []  # per channel of the stacked image: may brightness/contrast touch it?
        for m in modalities:
            if m.num_channels == 1 and repeat_to and repeat_to > 1:
                flags += [m.channels[0] in OPTICAL] * repeat_to
            else:
                flags += [c in OPTICAL for c in m.channels]
        self.optical = np.array(flags, dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, idx: int) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
        from rasterio.errors import RasterioIOError

        from rtscli.io.paths import inside
        from rtscli.io.raster import check_whole_read, open_raster, read_error

        img_id = self.ids[idx]
        entry = self.coco.loadImgs(img_id)[0]
        what = f"image {img_id} of {self.split}.json"
        # a dataset may come from elsewhere: its COCO file names only chips inside it
        path = inside(self.info.root, entry["file_name"], what,
                      fix="re-run rts prepare, or restore the dataset's COCO file")
        try:
            with open_raster(path) as src:  # chips of images without georeference too
                # read whole: the chip's header must agree with its COCO entry (which sizes its masks) and be
                # within the whole-read budget before anything is allocated
                if (src.width, src.height) != (entry.get("width"), entry.get("height")):
                    raise RtsError(f"{what}: the chip's header says {src.width} x {src.height} px but its entry "
                                   f"says {entry.get('width')} x {entry.get('height')}", path=path,
                                   fix="re-run rts prepare, or restore the dataset's chips and COCO files together")
                check_whole_read(path, src.width, src.height, src.count, "chip",
                                 fix="re-run rts prepare (its chips are at most --chip-size px)")
                raw = src.read()
        except RasterioIOError as exc:
            raise read_error(path, exc) from None
        arrays, valid = compose(raw, self.info.band_map, self.modalities, self.info.stats,
                                nodata=self.info.nodata, repeat_to=self.repeat_to)
        image = stack_modalities(arrays, [m.name for m in self.modalities])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id))
        self._check_annotations(anns, raw.shape[1], raw.shape[2])
        # crowd regions (COCO iscrowd) are not slumps to learn: AP ignores detections on them, training skips them
        return image, valid, [a for a in anns if not a.get("iscrowd")], entry

    def _check_annotations(self, anns: list[dict], h: int, w: int) -> None:
        """Refuse an annotation that pycocotools would decode into more than its chip (``h`` x ``w`` px): an RLE of
        another size, a polygon reaching far outside (:func:`rtscli.data.coco_masks.check_segmentation`)."""
        from rtscli.data.coco_masks import check_segmentation

        for a in anns:
            try:
                check_segmentation(a.get("segmentation"), h, w)
            except ValueError as exc:
                raise RtsError(f"annotation {a.get('id')} of {self.split}.json: {exc}",
                               path=self.info.root / f"{self.split}.json",
                               fix="re-run rts prepare, or fix or remove that annotation") from None

    def __getitem__(self, index: int | tuple[int, int]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """One chip: ``(image (C, T, T) float32, target {boxes (N, 4), labels (N,), masks (N, T, T)}, meta)``.

        Args:
            index: a position in the split, or ``(position, epoch)`` (from EpochSampler: the epoch seeds the
                augmentation, in any worker process); a plain position uses :meth:`set_epoch`'s epoch.

        Returns:
            The image tensor, the target dict (instances of the tile, boxes in tile pixels) and ``meta``
            (``image_id``, ``size``: the chip's ``(h, w)`` inside the tile, ``file_name``; with copy-paste
            also ``pasted``: the number of slumps pasted from another chip, 0 when none).
        """
        idx, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        image, valid, anns, entry = self.load(idx)
        h, w = image.shape[1:]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        rng = np.random.default_rng([self.seed, epoch, idx]) if self.augment else None
        pasting = rng is not None and self.copy_paste > 0
        if pasting:  # the valid mask moves with the masks (as their last plane); no draw changes
            masks = _with_valid(masks, valid)
        if rng is not None:
            image, masks = self._augment(image, masks, rng)
        image, masks, size = self._fit(image, masks, rng)
        meta = {"image_id": int(entry["id"]), "size": size, "file_name": entry["file_name"]}
        if pasting:
            assert rng is not None
            # drawn after everything else: the target chip is the one without copy-paste, plus the pasted slumps
            masks, valid = masks[:-1], masks[-1].astype(bool)
            pasted = 0
            if rng.random() < self.copy_paste:
                image, masks, pasted = self._paste(idx, image, masks, valid, size, rng)
            meta["pasted"] = pasted
        target = _target(masks)
        return torch.from_numpy(np.ascontiguousarray(image)), target, meta

    def _paste(self, idx: int, image: np.ndarray, masks: np.ndarray, valid: np.ndarray, size: tuple[int, int],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """Simple Copy-Paste (Ghiasi et al., CVPR 2021) onto item ``idx``: a donor chip with slumps (another
        position, drawn by ``rng``; up to 3 tries while one pastes nothing) is loaded, jittered by
        :meth:`_augment` with its valid mask, and a random subset of its slumps pasted at a random place.

        Args:
            idx: the target's position (never its own donor).
            image: the target image in the tile, (C, T, T) float32.
            masks: the target's masks, (N, T, T) 0/1.
            valid: the target's valid pixels, (T, T) bool (False on padding and nodata).
            size: the chip's ``(h, w)`` inside the tile.
            rng: the item's generator.

        Returns:
            ``(image (C, T, T), masks (N' + M, T, T) uint8, M)``, M the number pasted (0: the inputs unchanged).
        """
        from rtscli.data.copy_paste import copy_paste

        donors = [i for i in self.donors if i != idx]
        for _ in range(3 if donors else 0):
            d = donors[int(rng.integers(len(donors)))]
            d_image, d_valid, d_anns, _ = self.load(d)
            dh, dw = d_image.shape[1:]
            d_masks = (np.stack([self.coco.annToMask(a) for a in d_anns]) if d_anns
                       else np.zeros((0, dh, dw), np.uint8))
            d_image, d_masks = self._augment(d_image, _with_valid(d_masks, d_valid), rng)
            out = copy_paste(image, masks, valid, size, d_image, d_masks[:-1], d_masks[-1].astype(bool), rng)
            if out[2]:
                return out
        return image, masks, 0

    # -- geometry ---------------------------------------------------------------------------------
    def _fit(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator | None
             ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Crop (random when augmenting, else top-left) or zero-pad to the square tile."""
        t = self.tile
        c, h, w = image.shape
        r0 = int(rng.integers(0, h - t + 1)) if (rng is not None and h > t) else 0
        c0 = int(rng.integers(0, w - t + 1)) if (rng is not None and w > t) else 0
        image = image[:, r0:r0 + t, c0:c0 + t]
        masks = masks[:, r0:r0 + t, c0:c0 + t]
        hh, ww = image.shape[1:]
        if (hh, ww) != (t, t):
            pad = np.zeros((c, t, t), np.float32)
            pad[:, :hh, :ww] = image
            mpad = np.zeros((len(masks), t, t), np.uint8)
            mpad[:, :hh, :ww] = masks
            image, masks = pad, mpad
        return image, masks, (hh, ww)

    def _augment(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Flips, a 90-degree rotation (square chips), scale jitter and optical brightness/contrast, drawn by
        ``rng``; ``image`` (C, H, W) and ``masks`` (N, H, W) move together."""
        import cv2

        if rng.random() < 0.5:
            image, masks = image[:, :, ::-1], masks[:, :, ::-1]
        if rng.random() < 0.5:
            image, masks = image[:, ::-1, :], masks[:, ::-1, :]
        k = int(rng.integers(0, 4))
        if k and image.shape[1] == image.shape[2]:
            image, masks = np.rot90(image, k, axes=(1, 2)), np.rot90(masks, k, axes=(1, 2))
        s = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        if abs(s - 1) > 0.02:
            h, w = image.shape[1:]
            nh, nw = max(8, int(round(h * s))), max(8, int(round(w * s)))
            image = np.stack([cv2.resize(np.ascontiguousarray(ch), (nw, nh), interpolation=cv2.INTER_LINEAR)
                              for ch in image])
            masks = np.stack([cv2.resize(np.ascontiguousarray(m), (nw, nh), interpolation=cv2.INTER_NEAREST)
                              for m in masks]) if len(masks) else np.zeros((0, nh, nw), np.uint8)
        # brightness/contrast on optical channels only (values are normalized: ~N(0, 1))
        gain = float(rng.uniform(0.85, 1.15))
        bias = float(rng.uniform(-0.15, 0.15))
        image = np.array(image, dtype=np.float32, copy=True)
        image[self.optical] = image[self.optical] * gain + bias
        return image, np.ascontiguousarray(masks)


def _with_valid(masks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Masks (N, H, W) with the valid mask (H, W) as one more last plane: (N + 1, H, W) uint8."""
    return np.concatenate([masks.astype(np.uint8, copy=False), valid[None].astype(np.uint8)])


def _target(masks: np.ndarray) -> dict[str, torch.Tensor]:
    keep = [i for i in range(len(masks)) if masks[i].any()]
    masks = masks[keep] if keep else np.zeros((0,) + masks.shape[1:], np.uint8)
    boxes = []
    for m in masks:
        rows = np.flatnonzero(m.any(1))
        cols = np.flatnonzero(m.any(0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(masks), dtype=torch.int64),
        "masks": torch.from_numpy(np.ascontiguousarray(masks)),
    }


def collate(batch: list) -> tuple[torch.Tensor, list[dict], list[dict[str, Any]]]:
    images, targets, metas = zip(*batch, strict=True)
    return torch.stack(images), list(targets), list(metas)

