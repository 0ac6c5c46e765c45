"""Pixel <-> map through a grid's affine transform (pixel edges, no half-pixel shift).

``transform @ (col, row)`` is the map position of the top-left corner of pixel (col, row); a window's
transform is the grid's transform moved to the window's top-left pixel (rasterio's ``window_transform``).
"""

from __future__ import annotations

from affine import Affine


def apply(t: Affine, x: float, y: float) -> tuple[float, float]:
    """Pixel (col, row) ``(x, y)`` -> map (x, y) through ``t``: ``t @ (x, y)``, no half-pixel shift.

    Args:
        t: the grid's affine transform (map units per pixel).
        x: column, pixels (fractional allowed; 0 is the grid's left edge).
        y: row, pixels.

    Returns:
        The map position (x, y), map units.
    """
    mx, my = t @ (x, y)
    return float(mx), float(my)


def window_transform(t: Affine, col_off: float, row_off: float) -> Affine:
    """The transform of a window whose top-left pixel is (col_off, row_off) (pixels) of a grid with ``t``.

    Args:
        t: the grid's affine transform.
        col_off: the window's first column, pixels.
        row_off: the window's first row, pixels.

    Returns:
        The window's affine transform (same pixel size and orientation, origin moved; map units).
    """
    x, y = apply(t, col_off, row_off)
    return Affine(t.a, t.b, x, t.d, t.e, y)
