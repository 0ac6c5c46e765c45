"""Where a raster window lies on the map, for any affine grid (north-up, rotated, sheared, south-up).

A window's footprint is the quadrilateral of its four corners mapped through the grid's affine
transform (pixel edges: corner (col, row) -> ``transform * (col, row)``, no half-pixel shift). The
axis-aligned box of two opposite corners is that footprint only on a north-up grid; on a rotated
grid it cuts off two corners and adds two triangles outside, so nothing here uses it.
"""

from __future__ import annotations

from typing import Any

from rtscli.io.raster import apply


def window_footprint(transform, col_off: float, row_off: float, width: float, height: float):
    """The map-space polygon (shapely) of the window ``(col_off, row_off, width, height)`` (pixels)."""
    from shapely.geometry import Polygon

    corners = [(col_off, row_off), (col_off + width, row_off), (col_off + width, row_off + height),
               (col_off, row_off + height)]
    return Polygon([apply(transform, c, r) for c, r in corners])


def to_pixels(geom: Any, transform) -> Any:
    """A map-space geometry in the pixel coordinates (col, row) of the grid ``transform``."""
    from shapely.affinity import affine_transform

    inv = ~transform
    return affine_transform(geom, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])


def to_map(geom: Any, transform) -> Any:
    """A pixel-space geometry (col, row) in map coordinates through ``transform``."""
    from shapely.affinity import affine_transform

    t = transform
    return affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def reproject(geoms: Any, transformer, max_segment: float) -> Any:
    """Geometries (one, or a numpy array of them) through a pyproj ``Transformer`` (``always_xy``), their edges
    first cut to at most ``max_segment`` (source units) so that they follow the target's curves."""
    import numpy as np
    import shapely

    def move(xy):
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(shapely.segmentize(geoms, max_segment), move)


def to_crs(geoms, src, dst) -> list:
    """Geometries from ``src`` to ``dst``, their edges first cut to 1 km (0.01 degree) so that they follow the
    target's curves (:func:`reproject`). ``src``, ``dst``: anything pyproj reads. Returns a list of shapely
    geometries."""
    import numpy as np
    from pyproj import CRS, Transformer

    from rtscli.geometry.measure import MAX_EDGE_DEG, MAX_EDGE_M

    geoms = np.asarray(list(geoms), dtype=object)
    if not len(geoms):
        return []
    src = CRS.from_user_input(src)
    t = Transformer.from_crs(src, CRS.from_user_input(dst), always_xy=True)
    return list(reproject(geoms, t, MAX_EDGE_DEG if src.is_geographic else MAX_EDGE_M))


def lonlat_centroids(geoms, crs=None, *, to_lonlat=None):
    """``(lon, lat)`` arrays (degrees, EPSG:4326) of each polygon's centroid as the ARTS data set takes it
    (``gdf.to_crs(4326).centroid``): the polygon's own vertices taken to longitude/latitude, no densifying,
    then its planar centroid in degrees. So the same vertices in any CRS give the same centroid. ``to_lonlat``:
    a prebuilt pyproj ``Transformer`` (``always_xy``) to EPSG:4326, instead of ``crs``."""
    import numpy as np
    import shapely
    from pyproj import CRS, Transformer

    geoms = np.asarray(list(geoms), dtype=object)
    if to_lonlat is None:
        to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)

    def move(xy):
        return np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1]))

    c = shapely.centroid(shapely.transform(geoms, move)) if len(geoms) else geoms
    return shapely.get_x(c), shapely.get_y(c)
