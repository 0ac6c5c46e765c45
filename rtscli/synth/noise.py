"""Coherent value noise that any window of a scene can evaluate on its own.

Lattice values come from a counter-based hash of (integer x, integer y, key), so the noise at a
pixel depends only on its scene coordinates: windows rendered separately join without seams, and a
20k x 20k scene never needs a scene-sized array.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PX = np.uint64(0x9E3779B97F4A7C15)
_PY = np.uint64(0xC2B2AE3D27D4EB4F)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def key_of(*parts: object) -> int:
    """A stable 64-bit key from any parts (seed, field name, ...)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _u64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64).view(np.uint64)


def hash01(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform [0, 1) float32 for integer coordinates (broadcasting)."""
    with np.errstate(over="ignore"):
        hx = _mix(_u64(ix) * _PX ^ np.uint64(key))
        h = _mix(hx ^ (_u64(iy) * _PY))
    return ((h >> _S11).astype(np.float64) * (1.0 / (1 << 53))).astype(np.float32)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def value_noise(row0: int, col0: int, h: int, w: int, cell: float, key: int) -> np.ndarray:
    """Smoothly interpolated lattice noise in [0, 1], float32 (rows x cols)."""
    gx = (col0 + np.arange(w, dtype=np.float64)) / cell
    gy = (row0 + np.arange(h, dtype=np.float64)) / cell
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    tx = _smooth(gx - ix).astype(np.float32)
    ty = _smooth(gy - iy).astype(np.float32)
    x0, y0 = ix.min(), iy.min()
    lx = np.arange(x0, ix.max() + 2, dtype=np.int64)
    ly = np.arange(y0, iy.max() + 2, dtype=np.int64)
    lat = hash01(lx[None, :], ly[:, None], key)  # (ny, nx), small
    jx = ix - x0
    along_x = lat[:, jx] * (1.0 - tx) + lat[:, jx + 1] * tx  # (ny, w)
    jy = iy - y0
    return along_x[jy] * (1.0 - ty)[:, None] + along_x[jy + 1] * ty[:, None]


def fbm(
    row0: int, col0: int, h: int, w: int, cell: float, octaves: int, key: int, gain: float = 0.5
) -> np.ndarray:
    """Fractal sum of value noise, roughly in [-1, 1], float32."""
    out = np.zeros((h, w), dtype=np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(cell / (2**o), 1.0)
        out += np.float32(amp) * (value_noise(row0, col0, h, w, c, key + 7919 * o) * 2.0 - 1.0)
        total += amp
        amp *= gain
    return out / np.float32(total)


def white(row0: int, col0: int, h: int, w: int, key: int) -> np.ndarray:
    """Per-pixel uniform noise in [0, 1) (sensor noise), float32."""
    cols = col0 + np.arange(w, dtype=np.int64)
    rows = row0 + np.arange(h, dtype=np.int64)
    return hash01(cols[None, :], rows[:, None], key)
