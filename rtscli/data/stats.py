"""Per-channel normalization statistics from a bounded random sample of valid pixels.

The sample is capped (``per_image`` pixels from each image, ``max_total`` in all, by reservoir
replacement), so statistics over thousands of chips need constant memory. The statistics are
robust: values are clipped to the [``p_low``, ``p_high``] percentiles before mean and std.
"""

from __future__ import annotations

import numpy as np

from rtscli.data.modalities import BandStats


class StatsSampler:
    def __init__(
        self,
        names: list[str],
        *,
        per_image: int = 4096,
        max_total: int = 1_000_000,
        p_low: float = 1.0,
        p_high: float = 99.0,
        seed: int = 0,
    ) -> None:
        self.names = list(names)
        self.per_image = per_image
        self.max_total = max_total
        self.p_low, self.p_high = p_low, p_high
        self.rng = np.random.default_rng(seed)
        self._buf = {n: np.empty(max_total, dtype=np.float32) for n in self.names}
        self._filled = 0
        self._seen = 0

    def add(self, channels: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Sample the same pixels from every channel of one image."""
        flat_valid = np.flatnonzero(valid.ravel())
        if flat_valid.size == 0:
            return
        k = min(self.per_image, flat_valid.size)
        pick = self.rng.choice(flat_valid, size=k, replace=False)
        values = {n: channels[n].ravel()[pick].astype(np.float32) for n in self.names}
        # Fill the buffer first, then reservoir replacement (vectorized).
        room = min(self.max_total - self._filled, k)
        if room > 0:
            for n in self.names:
                self._buf[n][self._filled : self._filled + room] = values[n][:room]
            self._filled += room
            self._seen += room
        rest = k - room
        if rest > 0:
            seen_idx = self._seen + np.arange(1, rest + 1)
            slots = np.floor(self.rng.random(rest) * seen_idx).astype(np.int64)
            keep = slots < self.max_total
            for n in self.names:
                self._buf[n][slots[keep]] = values[n][room:][keep]
            self._seen += rest

    @property
    def count(self) -> int:
        return self._filled

    def result(self) -> dict[str, BandStats]:
        out: dict[str, BandStats] = {}
        for n in self.names:
            x = self._buf[n][: self._filled].astype(np.float64)
            if x.size == 0:
                out[n] = BandStats(0.0, 1.0, 0.0, 0.0)
                continue
            lo, hi = np.percentile(x, [self.p_low, self.p_high])
            c = np.clip(x, lo, hi)
            std = float(c.std())
            out[n] = BandStats(float(c.mean()), std if std > 0 else 1.0, float(lo), float(hi))
        return out
