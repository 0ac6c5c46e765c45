"""Random windows of unlabeled scenes for self-supervised pretraining (``rts ssl``).

Scenes of any size (GeoTIFF, VRT mosaics ...) are read by window with rasterio, never whole: each
window is drawn from (seed, epoch, index) alone, so a resumed run and every data-loading worker see
the same windows. A window that is mostly nodata is redrawn (and counted). Channels are built as
``rts prepare`` builds them (band map, NDVI, ``--aux`` rasters, scale/offset: the predict path's
:class:`rtscli.data.tiles.TileDataset`), normalized with statistics sampled from the scenes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from rtscli.data.modalities import BandStats, Modality, channel, compose
from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: a window with less than this share of valid pixels is redrawn
MIN_VALID = 0.5
#: redraws before a mostly-nodata window is used anyway (its nodata pixels never enter the loss)
TRIES = 20


class RandomWindows(torch.utils.data.Dataset):
    """``n`` random ``tile`` x ``tile`` windows per epoch over ``scenes`` (:class:`rtscli.data.scenes.Scene`).

    Items are ``(index, epoch)`` pairs (from :class:`rtscli.engine.train.EpochSampler`) or plain indices
    (epoch from :meth:`set_epoch`); each gives ``(image (C, T, T) float32 normalized, valid (T, T) bool,
    mask (T/32, T/32) bool)``. Scenes are drawn in proportion to their area; ``mask`` comes from
    :func:`block_mask` with the same seed.
    """

    def __init__(self, scenes: list, *, tile: int, modality: Modality, stats: dict[str, BandStats] | None,
                 repeat_to: int | None, n: int, seed: int = 0, mask_ratio: float = 0.6, min_valid: float = MIN_VALID,
                 ) -> None:
        from rtscli.data.tiles import TileDataset

        if not scenes:
            raise RtsError("no scene to read windows from", fix="pass scene files, folders or globs")
        self.readers = [TileDataset(s, [], tile=tile, modalities=[modality], stats=stats or {}, repeat_to=repeat_to)
                        for s in scenes]
        self.scenes, self.tile, self.modality, self.stats = scenes, tile, modality, stats
        self.repeat_to, self.n, self.seed, self.epoch = repeat_to, n, seed, 0
        self.mask_ratio, self.min_valid = mask_ratio, min_valid
        area = np.array([s.width * s.height for s in scenes], np.float64)
        self.weights = area / area.sum()
        self.redrawn = 0  # windows redrawn for nodata (this process)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def origin(self, idx: int, epoch: int, attempt: int, stream: int = 0) -> tuple[int, int, int]:
        """(scene index, col, row) of a window; deterministic in (seed, stream, epoch, idx, attempt). Streams:
        0 training, 1 statistics, 2 pictures, so that each uses windows of its own."""
        rng = np.random.default_rng([self.seed, stream, epoch, idx, attempt])
        k = int(rng.choice(len(self.scenes), p=self.weights))
        s = self.scenes[k]
        col = int(rng.integers(0, max(1, s.width - self.tile + 1)))
        row = int(rng.integers(0, max(1, s.height - self.tile + 1)))
        return k, col, row

    def raw(self, idx: int, epoch: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray, Any]:
        """The first window of (idx, epoch) with enough valid pixels (or the last try): ``(raw, valid, reader)``."""
        for attempt in range(TRIES):
            k, col, row = self.origin(idx, epoch, attempt, stream)
            raw, valid, _ = self.readers[k].read_raw(col, row)
            if valid.mean() >= self.min_valid:
                break
            self.redrawn += 1
        return raw, valid, self.readers[k]

    def __getitem__(self, index: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One window: ``(image (C, T, T) float32 normalized, valid (T, T) bool, mask (T/32, T/32) bool)``.

        Args:
            index: an int, ``(index, epoch)``, or ``(index, epoch, stream)`` (stream 0: training windows,
                1: statistics, 2: pictures); a plain int uses :meth:`set_epoch`'s epoch and stream 0.

        Returns:
            The image (nodata pixels 0), its valid pixels and the SimMIM block mask (:func:`block_mask`).
        """

        idx, epoch, stream = (tuple(index) + (0,))[:3] if isinstance(index, tuple) else (index, self.epoch, 0)
        raw, valid, reader = self.raw(idx, epoch, stream)
        arrays, _ = compose(raw, reader.band_map, [self.modality], self.stats, nodata=None, repeat_to=self.repeat_to)
        image = arrays[self.modality.name]
        image[:, ~valid] = 0.0
        mask = block_mask(self.tile, np.random.default_rng([self.seed, stream, epoch, idx, TRIES]),
                          ratio=self.mask_ratio)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(valid), torch.from_numpy(mask)


def sample_stats(windows: RandomWindows, count: int, seed: int) -> tuple[dict[str, BandStats], int]:
    """Normalization statistics of the modality's channels from ``count`` windows (those ``rts prepare``
    computes from training chips: :class:`rtscli.data.stats.StatsSampler`). Returns ``(stats, valid pixels
    sampled)``. Raises :class:`RtsError` when the windows hold no valid pixel."""
    from rtscli.data.stats import StatsSampler

    names = list(dict.fromkeys(windows.modality.channels))
    sampler = StatsSampler(names, seed=seed)
    for i in range(count):
        raw, valid, reader = windows.raw(i, 0, stream=1)  # windows of their own, not the training ones
        if valid.any():
            sampler.add({n: channel(n, raw, reader.band_map, valid) for n in names}, valid)
    if sampler.count == 0:
        raise RtsError(f"the {count} windows sampled for statistics hold no valid pixel",
                       path=windows.scenes[0].sources[0].path,
                       fix="check the scenes' nodata value (--nodata) and the band map")
    return sampler.result(), sampler.count


#: SimMIM's defaults: 32 px mask blocks (the backbone's total stride), 60% of them hidden
MASK_BLOCK = 32


MASK_RATIO = 0.6


def block_mask(tile: int, rng: np.random.Generator, *, block: int = MASK_BLOCK,
               ratio: float = MASK_RATIO) -> np.ndarray:
    """A (tile/block, tile/block) bool mask with round(ratio x blocks) blocks set, drawn by ``rng`` (SimMIM's
    MaskGenerator). Raises ValueError when ``tile`` is not a multiple of ``block`` or ``ratio`` not in (0, 1)."""
    if tile % block:
        raise ValueError(f"tile {tile} is not a multiple of the mask block {block}")
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio {ratio} must be in (0, 1)")
    n = (tile // block) ** 2
    flat = np.zeros(n, bool)
    flat[rng.permutation(n)[: max(1, int(round(ratio * n)))]] = True
    return flat.reshape(tile // block, tile // block)
