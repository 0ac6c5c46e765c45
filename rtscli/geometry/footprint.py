"""Where a raster window lies on the map, for any affine grid (north-up, rotated, sheared, south-up).

A window's footprint is the quadrilateral of its four corners mapped through the grid's affine
transform (pixel edges: corner (col, row) -> ``transform @ (col, row)``, no half-pixel shift). The
axis-aligned box of two opposite corners is that footprint only on a north-up grid; on a rotated
grid it cuts off two corners and adds two triangles outside, so nothing here uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, TypeAlias

from affine import Affine

from rtscli.geometry.affine import apply

if TYPE_CHECKING:
    import numpy as np
    import pyproj
    import rasterio.crs

#: a CRS in any form pyproj's ``CRS.from_user_input`` reads: a pyproj or rasterio CRS (rasterio has no type
#: hints: mypy sees its CRS as ``Any``), ``"EPSG:3413"``, WKT or PROJ text, an EPSG code
CRSLike: TypeAlias = "pyproj.CRS | rasterio.crs.CRS | str | int"

#: the longest edge kept as it is before reprojecting or measuring: in metres for projected CRSs, degrees for
#: geographic ones (edges are cut to this length so that they follow the target's curves)
MAX_EDGE_M = 1000.0
MAX_EDGE_DEG = 0.01


def window_footprint(transform: Affine, col_off: float, row_off: float, width: float, height: float) -> Any:
    """The map-space polygon (shapely) of the window ``(col_off, row_off, width, height)`` (pixels).

    Args:
        transform: the grid's affine transform (pixel (col, row) -> map).
        col_off: the window's first column, pixels.
        row_off: the window's first row, pixels.
        width: the window's width, pixels.
        height: the window's height, pixels.

    Returns:
        The shapely Polygon of the window's four corners (pixel edges), map units.
    """
    from shapely.geometry import Polygon

    corners = [(col_off, row_off), (col_off + width, row_off), (col_off + width, row_off + height),
               (col_off, row_off + height)]
    return Polygon([apply(transform, c, r) for c, r in corners])


def to_pixels(geom: Any, transform: Affine) -> Any:
    """A map-space geometry in the pixel coordinates (col, row) of the grid ``transform``."""
    from shapely.affinity import affine_transform

    inv = ~transform
    return affine_transform(geom, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])


def to_map(geom: Any, transform: Affine) -> Any:
    """A pixel-space geometry (col, row) in map coordinates through ``transform``."""
    from shapely.affinity import affine_transform

    t = transform
    return affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def reproject(geoms: Any, transformer: pyproj.Transformer, max_segment: float) -> Any:
    """Geometries (one, or a numpy array of them) through a pyproj ``Transformer`` (``always_xy``), their edges
    first cut to at most ``max_segment`` (source units) so that they follow the target's curves.

    Args:
        geoms: one shapely geometry, or a numpy object array of them.
        transformer: a pyproj ``Transformer`` built with ``always_xy=True``.
        max_segment: the longest edge kept as it is, in the source CRS's units (map units or degrees).

    Returns:
        The geometry (or array of geometries) in the target CRS.
    """
    import numpy as np
    import shapely

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(shapely.segmentize(geoms, max_segment), move)


def to_crs(geoms: Iterable[Any], src: CRSLike, dst: CRSLike) -> list[Any]:
    """Geometries from ``src`` to ``dst``, their edges first cut to 1 km (0.01 degree) so that they follow the
    target's curves (:func:`reproject`). ``src``, ``dst``: anything pyproj reads. Returns a list of shapely
    geometries.

    Args:
        geoms: shapely geometries in ``src``.
        src: their CRS.
        dst: the CRS to take them to.

    Returns:
        A list of shapely geometries in ``dst`` (empty for no geometries).
    """
    import numpy as np
    from pyproj import CRS, Transformer

    arr = np.asarray(list(geoms), dtype=object)
    if not len(arr):
        return []
    source = CRS.from_user_input(src)
    t = Transformer.from_crs(source, CRS.from_user_input(dst), always_xy=True)
    return list(reproject(arr, t, MAX_EDGE_DEG if source.is_geographic else MAX_EDGE_M))


def lonlat_centroids(geoms: Iterable[Any], crs: CRSLike | None = None, *,
                     to_lonlat: pyproj.Transformer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(lon, lat)`` arrays (degrees, EPSG:4326) of each polygon's centroid as the ARTS data set takes it
    (``gdf.to_crs(4326).centroid``): the polygon's own vertices taken to longitude/latitude, no densifying,
    then its planar centroid in degrees. So the same vertices in any CRS give the same centroid. ``to_lonlat``:
    a prebuilt pyproj ``Transformer`` (``always_xy``) to EPSG:4326, instead of ``crs``.

    Args:
        geoms: shapely polygons in ``crs``.
        crs: their CRS (unused when ``to_lonlat`` is given).
        to_lonlat: a prebuilt transformer from their CRS to EPSG:4326.

    Returns:
        Two float arrays of the length of ``geoms``: longitudes and latitudes, degrees.
    """
    import numpy as np
    import shapely
    from pyproj import CRS, Transformer

    arr = np.asarray(list(geoms), dtype=object)
    ll = to_lonlat if to_lonlat is not None else \
        Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)

    def move(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(ll.transform(xy[:, 0], xy[:, 1]))

    c = shapely.centroid(shapely.transform(arr, move)) if len(arr) else arr
    return shapely.get_x(c), shapely.get_y(c)
