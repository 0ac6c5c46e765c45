"""Tile sizes and the sliding-window grid of a scene (pure arithmetic, no pixels read).

A model tile's side is a multiple of the backbones' total stride (32 px: MViTv2 and ResNet50 stage 4,
the FPN's P5). The grid follows torchgeo's ``GridGeoSampler``: tiles of a fixed size at a fixed stride,
the last row and column moved back to end at the scene's edge, so every pixel is seen and no tile is padded
beyond what the scene lacks.
"""

from __future__ import annotations

from rtscli.errors import RtsError


#: the backbones' total stride (MViTv2 and ResNet50 stage 4, P5): a tile side must be a multiple of it
TOTAL_STRIDE = 32


MIN_TILE = 64


def check_tile_size(tile: int, what: str = "--tile-size") -> int:
    """``tile`` if it is a valid model tile side (pixels): a multiple of :data:`TOTAL_STRIDE`, at least
    :data:`MIN_TILE`. Raises :class:`RtsError` naming the nearest valid sizes otherwise."""
    if not isinstance(tile, int) or tile < MIN_TILE or tile % TOTAL_STRIDE:
        lo = max(MIN_TILE, (int(tile) // TOTAL_STRIDE) * TOTAL_STRIDE) if isinstance(tile, int) else MIN_TILE
        raise RtsError(f"{what} {tile} is not a multiple of the backbone's total stride ({TOTAL_STRIDE} px) of at "
                       f"least {MIN_TILE}", fix=f"use e.g. {lo} or {lo + TOTAL_STRIDE}")
    return tile


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left (col, row) of every tile; the last row/column of tiles ends at the scene's edge."""
    if overlap < 0 or overlap >= tile:
        raise RtsError(f"overlap {overlap} px must be in [0, tile size {tile})", fix="use e.g. --overlap 0.25")
    step = tile - overlap

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        return s + [n - tile]

    return [(c, r) for r in starts(height) for c in starts(width)]
