"""Masks to polygons, in map (or pixel) coordinates, with holes kept.

Polygons follow pixel edges: a mask pixel (col, row) is the square between corners (col, row) and
(col + 1, row + 1) mapped through the affine ``transform`` (rasterio ``features.shapes``), so they
are exact on rotated and sheared grids too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine


def overlap(a: Any, b: Any, metric: str = "ios") -> float:
    """How much two polygons overlap: ``ios`` (intersection over the smaller area: robust to one growing) or
    ``iou`` (intersection over union); 0 when they only touch. Units cancel: any CRS, but the same for both.

    Args:
        a: a shapely (Multi)Polygon.
        b: another, in the same CRS.
        metric: ``ios`` or ``iou`` (anything but ``iou`` is ``ios``).

    Returns:
        The overlap, 0 to 1.
    """
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0
    if metric == "iou":
        return inter / max(a.area + b.area - inter, 1e-12)
    return inter / max(min(a.area, b.area), 1e-12)


def union_root(parent: list[int], i: int) -> int:
    """Union-find: the root of ``i`` (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def largest_part(binary: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """The largest connected part (by pixel count) of a (H, W) boolean mask, as a boolean mask.

    ``connectivity`` 4 or 8 (OpenCV ``connectedComponentsWithStats``). An empty mask gives an empty mask.
    """
    import cv2

    m = np.ascontiguousarray(binary, dtype=np.uint8)
    if not m.any():
        return m.astype(bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=connectivity)
    if n <= 2:  # background + one part
        return m.astype(bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def mask_to_polygon(binary: np.ndarray, transform: Affine, connectivity: int = 4) -> Any | None:
    """All parts of a (H, W) boolean mask as one shapely (Multi)Polygon through ``transform``
    (an ``affine.Affine``: pixel (col, row) -> map), holes kept; None when the mask is empty.

    Args:
        binary: the (H, W) mask (any dtype: nonzero is inside).
        transform: pixel (col, row) -> map (pixel edges, no half-pixel shift).
        connectivity: 4 or 8, how pixels join into parts (rasterio ``features.shapes``).

    Returns:
        A shapely Polygon or MultiPolygon in map units, or None.
    """
    from rasterio.features import shapes
    from shapely.geometry import shape
    from shapely.ops import unary_union

    m = np.ascontiguousarray(binary, dtype=np.uint8)
    if not m.any():
        return None
    parts = [shape(g) for g, v in shapes(m, mask=m.astype(bool), transform=transform, connectivity=connectivity)
             if v == 1]
    return parts[0] if len(parts) == 1 else unary_union(parts)
