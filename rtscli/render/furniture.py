"""Map furniture for pictures in a scene's pixel space: scale bar, north arrow, corner coordinates, outlines.

Everything works on any affine grid (rotated and sheared too) and in any projected or geographic CRS:
distances are true ground distances on the ellipsoid (pyproj ``Geod``), north is found by stepping
along the meridian.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from rtscli.errors import RtsError, set_raster_crs
from rtscli.geometry.footprint import CRSLike

if TYPE_CHECKING:
    import pyproj
    from matplotlib.collections import LineCollection
    from matplotlib.patheffects import AbstractPathEffect


#: outline colours, Okabe & Ito's colour-blind-safe palette: orange (predictions) and sky blue (reference)
PRED_COLOUR = "#E69F00"


TRUTH_COLOUR = "#56B4E9"


#: the scale bar is the longest 1, 2 or 5 x 10^k metres not over this fraction of the image's width
SCALE_BAR_FRACTION = 0.25


def scale_bar(width_px: float, pixel_m: float, *, fraction: float = SCALE_BAR_FRACTION) -> tuple[float, float, str]:
    """A round scale bar for an image ``width_px`` pixels wide whose pixels are ``pixel_m`` metres on the ground.

    Returns ``(length_m, length_px, label)``: the longest 1, 2 or 5 x 10^k metres that is at most ``fraction``
    of the image's ground width, its length in pixels (``length_m / pixel_m``), and a label in m or km
    (``"500 m"``, ``"2 km"``).

    Args:
        width_px: the image's width, pixels.
        pixel_m: the ground size of one pixel, metres.
        fraction: the longest bar, as a fraction of the image's ground width (0 to 1).

    Returns:
        ``(length_m, length_px, label)``.

    Raises:
        ValueError: a width or pixel size that is not positive and finite, or a fraction outside (0, 1].
    """
    if not (width_px > 0 and pixel_m > 0 and math.isfinite(width_px * pixel_m) and 0 < fraction <= 1):
        raise ValueError(f"scale_bar needs a positive width and pixel size, got {width_px} px of {pixel_m} m")
    target = width_px * pixel_m * fraction
    exp = math.floor(math.log10(target))
    length_m = max(k * 10.0**exp for k in (1, 2, 5, 10) if k * 10.0**exp <= target * (1 + 1e-9))
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    return length_m, length_m / pixel_m, label


def pixel_size_m(transform: Affine, crs: CRSLike | None, width: int, height: int) -> tuple[float, float]:
    """True ground size (m) of one pixel step along a row and along a column, on the CRS's ellipsoid.

    Each is the geodesic length (pyproj ``Geod.line_length``, densified to at most 512 segments) of the
    scene's centre row (column) divided by its pixels: right for projected, geographic, rotated and sheared
    grids (on a geographic grid the two differ: a pixel is not square on the ground). Raises
    :class:`RtsError` when the CRS is missing or has no datum.

    Args:
        transform: the scene's affine transform (pixel (col, row) -> map).
        crs: the scene's CRS.
        width: the scene's width, pixels.
        height: the scene's height, pixels.

    Returns:
        ``(along a row, along a column)``, metres per pixel.

    Raises:
        RtsError: the CRS is missing, unreadable or has no datum.
    """
    to_lonlat, geod, _, _ = geodetic(crs)

    def per_pixel(c0: float, r0: float, c1: float, r1: float, n: int) -> float:
        s = np.linspace(0.0, 1.0, max(1, min(512, n)) + 1)
        cols, rows = c0 + (c1 - c0) * s, r0 + (r1 - r0) * s
        x = transform.a * cols + transform.b * rows + transform.c
        y = transform.d * cols + transform.e * rows + transform.f
        lon, lat = to_lonlat.transform(x, y)
        return float(geod.line_length(lon, lat)) / max(n, 1)

    return (per_pixel(0, height / 2, width, height / 2, width), per_pixel(width / 2, 0, width / 2, height, height))


def corner_labels(transform: Affine, crs: CRSLike | None, width: int, height: int) -> dict[str, str]:
    """The map coordinates of the four image corners (pixel edges), as text, keyed ``top left`` ... ``bottom right``.

    Projected CRS: ``x 470,000  y 7,550,000`` (the CRS's unit) and, on a second line, latitude and longitude;
    geographic CRS: latitude and longitude (5 decimals); no CRS: pixel coordinates.

    Args:
        transform: the scene's affine transform (pixel (col, row) -> map).
        crs: the scene's CRS (None, or one without a datum: map x, y only).
        width: the scene's width, pixels.
        height: the scene's height, pixels.

    Returns:
        ``{corner: text}`` for ``top left``, ``top right``, ``bottom left`` and ``bottom right``.
    """
    from rtscli.geometry.affine import apply

    corners = {"top left": (0, 0), "top right": (width, 0), "bottom left": (0, height),
               "bottom right": (width, height)}
    to_lonlat: pyproj.Transformer | None
    horizontal: pyproj.CRS | None
    try:
        to_lonlat, _, horizontal, _ = geodetic(crs)
    except RtsError:
        to_lonlat = horizontal = None
    out: dict[str, str] = {}
    for name, (c, r) in corners.items():
        x, y = apply(transform, c, r)
        if to_lonlat is None or horizontal is None:  # both None together: no usable CRS
            out[name] = f"x {x:,.2f}  y {y:,.2f}"
            continue
        lon, lat = to_lonlat.transform(x, y)
        ll = f"{abs(lat):.5f}°{'N' if lat >= 0 else 'S'}  {abs(lon):.5f}°{'E' if lon >= 0 else 'W'}"
        out[name] = ll if horizontal.is_geographic else f"x {x:,.0f}  y {y:,.0f}\n{ll}"
    return out


def north_arrow(transform: Affine, crs: CRSLike | None, width: int, height: int) -> tuple[float, float] | None:
    """The direction of true north at the scene's centre, as a unit vector (right, up) on the picture.

    The picture shows pixel space (columns right, rows down), so north is up only on a north-up grid whose
    CRS has north up there (not on a rotated grid, nor far from the central meridian of a polar projection).
    ``None`` when the CRS is missing or has no datum.

    Args:
        transform: the scene's affine transform (pixel (col, row) -> map).
        crs: the scene's CRS.
        width: the scene's width, pixels.
        height: the scene's height, pixels.

    Returns:
        ``(right, up)``, a unit vector in picture space, or None.
    """
    from rtscli.geometry.affine import apply

    try:
        to_lonlat, _, _, from_lonlat = geodetic(crs)
    except RtsError:
        return None
    x, y = apply(transform, width / 2, height / 2)
    lon, lat = to_lonlat.transform(x, y)
    step = 1e-3 if lat < 89.99 else -1e-3  # a step north (south beside the pole: then the arrow is reversed)
    x2, y2 = from_lonlat.transform(lon, lat + step)
    inv = ~transform
    dc = (inv.a * x2 + inv.b * y2 + inv.c) - width / 2
    dr = (inv.d * x2 + inv.e * y2 + inv.f) - height / 2
    n = math.hypot(dc, dr)
    if not math.isfinite(n) or n == 0:
        return None
    sign = 1 if step > 0 else -1
    return sign * dc / n, -sign * dr / n


def label_anchor(geom: Any, width: float, height: float) -> tuple[float, float, bool, bool]:
    """Where a polygon's id goes: ``(col, row, right, up)``, a vertex of its outline (pixel space) and the side.

    The outermost vertex towards the top right (so the id sits beside the outline, not at a bounding-box
    corner that may lie far from a curved slump), or towards the left / bottom when that vertex is within
    4 % of the image's right / top edge (the id stays inside the picture).

    Args:
        geom: a shapely (Multi)Polygon in pixel space (col, row).
        width: the image's width, pixels.
        height: the image's height, pixels.

    Returns:
        ``(col, row, right, up)``: the anchor, pixels, and whether the id goes to its right and above it.
    """
    import shapely

    parts = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty]
    xy = np.asarray(max(parts, key=lambda p: p.area).exterior.coords)[:, :2] if parts else \
        np.asarray([geom.representative_point().coords[0]])

    def towards(right: bool, up: bool) -> np.ndarray:
        return xy[np.argmax((1 if right else -1) * xy[:, 0] + (-1 if up else 1) * xy[:, 1])]

    x, y = towards(True, True)
    right, up = bool(x < 0.96 * width), bool(y > 0.04 * height)
    if not (right and up):
        x, y = towards(right, up)
    return float(x), float(y), right, up


def outlines(geoms: list[Any], colour: str, width: float, effects: list[AbstractPathEffect], *, gid: str,
             zorder: int) -> LineCollection:
    """A LineCollection of every ring (outer and holes) of the (multi)polygons ``geoms`` (pixel space).

    Args:
        geoms: shapely (Multi)Polygons in pixel space (None and empty ones are skipped).
        colour: the line colour (matplotlib colour).
        width: the line width, points.
        effects: matplotlib path effects (:func:`halo`).
        gid: the collection's gid (found by it in tests and SVG).
        zorder: its drawing order.

    Returns:
        The LineCollection (not yet added to an axes).
    """
    import shapely
    from matplotlib.collections import LineCollection

    rings: list[np.ndarray] = []
    for g in geoms:
        if g is None or g.is_empty:
            continue
        for part in shapely.get_parts(g):
            if part.geom_type == "Polygon":
                rings += [np.asarray(r.coords)[:, :2] for r in shapely.get_rings(part)]
    return LineCollection(rings, colors=colour, linewidths=width, path_effects=effects, gid=gid, zorder=zorder)


def halo(width: float, colour: str = "black", alpha: float = 0.6) -> list[AbstractPathEffect]:
    """Path effects drawing a line or text over a wider halo, readable on bright and dark imagery alike.

    Args:
        width: the halo's line width, points.
        colour: the halo's colour.
        alpha: the halo's opacity, 0 to 1.

    Returns:
        The path effects (a stroke, then the line or text itself).
    """
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=width, foreground=colour, alpha=alpha), patheffects.Normal()]


def geodetic(crs: CRSLike | None) -> tuple[pyproj.Transformer, pyproj.Geod, pyproj.CRS, pyproj.Transformer]:
    """``(to_lonlat, geod, horizontal_crs, from_lonlat)`` for ``crs`` (its horizontal part when compound).

    Raises :class:`RtsError` when the CRS is missing, unreadable or has no datum.
    """
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    if crs is None:
        raise RtsError("the scene has no CRS", fix=set_raster_crs())
    try:
        c = CRS.from_user_input(crs)
        horizontal = c.sub_crs_list[0] if c.is_compound else c
        geodetic = horizontal.geodetic_crs
        geod = geodetic.get_geod() if geodetic is not None else None  # None: no ellipsoid, so no datum either
        if geodetic is None or geod is None:
            raise RtsError(f"the CRS {horizontal.name} has no datum", fix="assign a CRS with a datum")
        return (Transformer.from_crs(horizontal, geodetic, always_xy=True), geod, horizontal,
                Transformer.from_crs(geodetic, horizontal, always_xy=True))
    except (CRSError, ProjError) as exc:
        raise RtsError(f"the scene's CRS cannot be used ({' '.join(str(exc).split())[:80]})",
                       fix="assign an EPSG CRS") from None


def crs_long_name(crs: CRSLike | None) -> str | None:
    """The CRS's own name (``WGS 84 / UTM zone 8N``), or None."""
    try:
        from pyproj import CRS

        return CRS.from_user_input(crs).name if crs is not None else None
    except Exception:  # pyproj's CRSError: the short name in the caption is enough
        return None


def map_unit(crs: CRSLike | None) -> str | None:
    """The unit of the CRS's map x, y as a short word (``m``, ``degree``, ``US survey foot``), or None."""
    try:
        _, _, horizontal, _ = geodetic(crs)
    except RtsError:
        return None
    unit = horizontal.axis_info[0].unit_name if horizontal.axis_info else None
    return "m" if unit == "metre" else unit


def is_geographic(crs: CRSLike | None) -> bool:
    """Whether the CRS's map x, y are longitude and latitude."""
    try:
        return bool(geodetic(crs)[2].is_geographic)
    except RtsError:
        return False
