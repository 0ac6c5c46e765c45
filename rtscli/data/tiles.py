"""Tiles of a scene read into model inputs: a dataset over the windows of the sliding-window grid.

The windows come from :func:`rtscli.data.tiling.tile_grid`. A :class:`TileDataset` reads each window with
rasterio (each DataLoader worker opens its own handles), converts stored values to the model's units and
builds the bundle's modalities; it is used by ``rts predict`` and ``rts ssl``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rtscli.data.scenes import Scene
from rtscli.errors import RtsError


@dataclass
class TileItem:
    """One tile as a :class:`TileDataset` gives it: model input, or why there is none.

    ``image`` is (C, T, T) float32, normalized, zero outside valid pixels; ``valid`` and ``inside`` are (T, T)
    bool (valid data; inside the scene). A tile with no valid pixel has ``empty`` set and no image; a tile that
    could not be read has ``error`` (one line) and ``user_error`` when the data, not rts, is at fault.
    """

    index: int
    image: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    inside: torch.Tensor | None = None
    #: share of valid pixels at or beyond the model's normalization range (the units check), and band medians
    clipped: float = 0.0
    medians: dict[str, float] = field(default_factory=dict)
    #: seconds spent reading and composing the tile (in the worker)
    seconds: float = 0.0
    error: str | None = None
    user_error: bool = False

    @property
    def empty(self) -> bool:
        """No valid pixel in the tile (it is skipped, never given to the model)."""
        return self.image is None and self.error is None


class TileDataset(torch.utils.data.Dataset):
    """Windows of a scene, composed into the bundle's modalities. Each worker opens its own handles.

    Args:
        scene: the scene (:func:`rtscli.data.scenes.open_scene`).
        origins: top-left (col, row) of each tile, pixels (:func:`rtscli.data.tiling.tile_grid`).
        tile: tile side, pixels.
        modalities: the modalities to build (:class:`rtscli.data.modalities.Modality`), in model order.
        stats: per-band normalization statistics (:class:`rtscli.data.modalities.BandStats`) by channel name.
        repeat_to: 1-channel modalities are repeated to this many channels (the paper's 3-channel stems).
    """

    def __init__(self, scene: Scene, origins: list[tuple[int, int]], *, tile: int, modalities: list[Any],
                 stats: dict[str, Any], repeat_to: int | None) -> None:
        self.scene, self.origins, self.tile = scene, origins, tile
        self.modalities, self.stats, self.repeat_to = modalities, stats, repeat_to
        self._handles: dict[int, list] = {}
        self._quality: dict[int, Any] = {}  # the quality mask's handle, per process
        names: dict[str, int] = {}
        for s in scene.sources:
            for n in s.bands:
                names.setdefault(n, len(names) + 1)
        if scene.dem is not None:  # the terrain channels follow the rasters' bands
            from rtscli.data.terrain import CHANNELS

            for n in CHANNELS:
                names.setdefault(n, len(names) + 1)
        from rtscli.data.bands import BandMap

        self.band_map = BandMap.from_mapping(names)

    def __len__(self) -> int:
        return len(self.origins)

    def _open(self) -> list:
        pid = os.getpid()
        if pid not in self._handles:
            import rasterio
            from rasterio.vrt import WarpedVRT

            handles = []
            for i, s in enumerate(self.scene.sources):
                src = rasterio.open(s.path)
                if i and self.scene.resample:
                    from rasterio.enums import Resampling

                    src = WarpedVRT(src, crs=self.scene.crs, transform=self.scene.transform,
                                    width=self.scene.width, height=self.scene.height, resampling=Resampling.bilinear,
                                    nodata=s.nodata)
                handles.append(src)
            self._handles = {pid: handles}
        return self._handles[pid]

    def _open_quality(self) -> Any:
        """The scene's quality mask, opened once per process (None without one)."""
        if self.scene.quality is None:
            return None
        pid = os.getpid()
        if pid not in self._quality:
            self._quality = {pid: self.scene.quality.open()}
        return self._quality[pid]

    def __getitem__(self, i: int) -> TileItem:
        try:
            return self._load(i)
        except RtsError as exc:  # the user's to fix (a damaged file): its message names the file and the fix
            return TileItem(i, error=str(exc), user_error=True)
        except Exception as exc:  # a bug, not the data: a worker's traceback would be one huge line
            return TileItem(i, error=f"cannot build tile {i} (at column {self.origins[i][0]}, row "
                                     f"{self.origins[i][1]}) of {self.scene.sources[0].path.resolve()}: "
                                     f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}")

    def read_raw(self, col: int, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tile whose top-left pixel is (col, row): ``(raw, valid, inside)``, with ``raw`` (bands, T, T) float32 in
        the model's units (stored values converted; band order of :attr:`band_map`), ``valid`` (T, T) bool
        (inside the scene, not nodata, finite, not invalid in the scene's quality mask: clouds, shadow,
        haze, snow; not void in its DEM when it has one) and ``inside`` (T, T) bool (inside the scene). Only
        the window is read (of the quality mask too, onto the scene's grid:
        :meth:`rtscli.data.quality.QualityMask.read_invalid`)."""
        from rasterio.windows import Window

        from rtscli.io.raster import read_window

        t, sc = self.tile, self.scene
        # the part of the tile inside the scene is read; the rest is padding (never valid)
        h, w = max(0, min(t, sc.height - row)), max(0, min(t, sc.width - col))
        raw = np.zeros((len(self.band_map.names), t, t), np.float32)
        inside = np.zeros((t, t), bool)
        inside[:h, :w] = True
        valid = inside.copy()
        k = 0
        for src, s in zip(self._open(), sc.sources, strict=True):
            data = read_window(src, Window(col, row, w, h), list(s.bands.values()), path=s.path)
            data = data.astype(np.float32, copy=False)
            n = data.shape[0]
            if s.nodata is not None and not np.isnan(s.nodata):  # nodata is a stored value: before conversion
                valid[:h, :w] &= ~(data == np.float32(s.nodata)).all(axis=0)
            valid[:h, :w] &= np.isfinite(data).all(axis=0)
            raw[k:k + n, :h, :w] = s.conversion.apply(data, list(s.bands))
            k += n
        if sc.dem is not None and h and w:  # slope, relief, hillshade; NaN where the DEM is void: nodata
            terrain = sc.dem.read(sc.crs, sc.transform, col, row, w, h)
            for name, plane in terrain.items():
                raw[self.band_map[name] - 1, :h, :w] = plane
                valid[:h, :w] &= np.isfinite(plane)
        q = self._open_quality()
        if q is not None and h and w:
            from rtscli.geometry.affine import window_transform

            assert sc.quality is not None  # a handle is opened only for a scene with a quality mask
            valid[:h, :w] &= ~sc.quality.read_invalid(q, window_transform(sc.transform, col, row), sc.crs, h, w)
        return raw, valid, inside

    def _load(self, i: int) -> TileItem:
        from rtscli.data.modalities import compose

        t0 = time.perf_counter()
        raw, valid, inside = self.read_raw(*self.origins[i])
        if not valid.any():
            return TileItem(i, seconds=time.perf_counter() - t0)
        # share of valid pixels clipped by the model's normalization range, and medians (units check)
        clipped, medians = 0.0, {}
        for name, st in self.stats.items():
            if name in self.band_map:
                x = raw[self.band_map[name] - 1][valid]
                clipped = max(clipped, float(np.mean((x <= st.low) | (x >= st.high))))
                medians[name] = float(np.median(x[::16])) if x.size else 0.0  # a hint only: 1 pixel in 16 is plenty
        arrays, _ = compose(raw, self.band_map, self.modalities, self.stats, nodata=None, repeat_to=self.repeat_to)
        image = np.concatenate([arrays[m.name] for m in self.modalities], axis=0)
        image[:, ~valid] = 0.0
        return TileItem(i, image=torch.from_numpy(np.ascontiguousarray(image)), valid=torch.from_numpy(valid),
                        inside=torch.from_numpy(inside), clipped=clipped, medians=medians,
                        seconds=time.perf_counter() - t0)


def collate_tiles(batch: list[TileItem]) -> list[TileItem]:
    """A DataLoader batch of tiles as the list it is (tiles may be empty or failed: no stacking here)."""
    return batch
