"""True areas and lengths on the ellipsoid, whatever the CRS the polygons are drawn in.

A projected CRS's own plane is not true to area: EPSG:3413 (polar stereographic, true scale at
70 N; the CRS of ARTS) gives 0.98 of the true area at 73 N, 1.08 at 60 N and 0.96 at 80 N, and
UTM up to 0.9992 near its central meridian and more off it. Every area (m2) and length (m) rts
reports or filters on comes from here: each polygon is densified in its own CRS (so that its edges
follow the projection), taken to the longitude/latitude of the CRS's own datum, and measured on
that ellipsoid with pyproj's ``Geod`` (``polygon_area_perimeter`` per ring, as ``geometry_area_perimeter``
does; C. F. F. Karney, "Algorithms for geodesics", J. Geodesy 87, 2013). Holes are subtracted from the
area and, as in shapely's and QGIS's perimeter, their rings are added to the perimeter.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from affine import Affine

from rtscli.geometry.footprint import MAX_EDGE_DEG, MAX_EDGE_M, CRSLike, reproject, window_footprint

if TYPE_CHECKING:
    import pyproj


@functools.lru_cache(maxsize=32)
def _tools(wkt: str) -> tuple[pyproj.Transformer, pyproj.Geod, float]:
    """``(to_lonlat, geod, max_edge)`` for the CRS of ``wkt``: a transformer to its datum's longitude/latitude,
    the datum's ellipsoid and the longest edge kept when densifying (the CRS's units)."""
    from pyproj import CRS, Transformer

    crs = CRS.from_wkt(wkt)
    horizontal = crs.sub_crs_list[0] if crs.is_compound else crs
    geodetic = horizontal.geodetic_crs
    geod = geodetic.get_geod() if geodetic is not None else None  # None: no ellipsoid, so no datum either
    if geodetic is None or geod is None:
        from rtscli.errors import RtsError

        raise RtsError(f"the CRS {horizontal.name} has no datum, so true areas cannot be computed",
                       fix="assign a CRS with a datum (e.g. EPSG:3413 or a UTM zone)")
    to_lonlat = Transformer.from_crs(horizontal, geodetic, always_xy=True)
    if horizontal.is_geographic:
        max_edge = MAX_EDGE_DEG
    else:
        unit = horizontal.axis_info[0].unit_conversion_factor if horizontal.axis_info else 1.0
        max_edge = MAX_EDGE_M / (unit or 1.0)
    return to_lonlat, geod, max_edge


def _wkt(crs: CRSLike | None) -> str:
    from pyproj import CRS

    if crs is None:
        from rtscli.errors import RtsError

        raise RtsError("the geometries have no CRS, so true areas cannot be computed",
                       fix="give the input its CRS (a raster: rio edit-info --crs EPSG:XXXX FILE; a vector file: "
                           "GeoDataFrame.set_crs in Python)")
    return CRS.from_user_input(crs).to_wkt()


def geodesic_area_perimeter(geoms: Iterable[Any], crs: CRSLike | None) -> tuple[np.ndarray, np.ndarray]:
    """True area (m2) and perimeter (m) of each (multi)polygon, measured on the CRS's ellipsoid.

    ``geoms``: shapely Polygons / MultiPolygons (or None / empty: 0) in ``crs`` (anything pyproj
    reads: a rasterio or pyproj CRS, ``"EPSG:3413"``, WKT; projected, geographic or compound).
    Returns two float64 arrays of the length of ``geoms``; holes are subtracted from the area and
    their rings added to the perimeter. Raises :class:`RtsError` when the CRS is missing or has no
    datum. Source: pyproj ``Geod.polygon_area_perimeter`` per ring (Karney 2013).
    """

    geoms = list(geoms)
    area = np.zeros(len(geoms))
    perim = np.zeros(len(geoms))
    if not geoms:
        return area, perim
    to_lonlat, geod, max_edge = _tools(_wkt(crs))
    arr = np.array(geoms, dtype=object)
    present = np.array([g is not None and not g.is_empty for g in geoms], dtype=bool)
    if not present.any():
        return area, perim
    lonlat_geoms = reproject(arr[present], to_lonlat, max_edge)

    def ring(coords: Any) -> tuple[float, float]:
        xy = np.asarray(coords)
        a, p = geod.polygon_area_perimeter(xy[:, 0], xy[:, 1])
        return abs(a), p  # the sign only tells the ring's orientation

    out_a, out_p = [], []
    for g in lonlat_geoms:
        parts = g.geoms if g.geom_type in ("MultiPolygon", "GeometryCollection") else [g]
        a = p = 0.0
        for part in parts:
            if part.geom_type != "Polygon" or part.is_empty:
                continue
            ea, ep = ring(part.exterior.coords)
            a, p = a + ea, p + ep
            for hole in part.interiors:  # a hole takes area away and adds its ring to the perimeter
                ha, hp = ring(hole.coords)
                a, p = a - ha, p + hp
        out_a.append(a)
        out_p.append(p)
    area[present] = out_a
    perim[present] = out_p
    return area, perim


def geodesic_area(geom: Any, crs: CRSLike | None) -> float:
    """True area (m2) of one polygon in ``crs``; see :func:`geodesic_area_perimeter`."""
    return float(geodesic_area_perimeter([geom], crs)[0][0])


def pixel_area_m2(transform: Affine, width: int, height: int, crs: CRSLike | None) -> float:
    """The mean true area (m2) of one pixel of a ``width`` x ``height`` window with ``transform``.

    Args:
        transform: the window's affine transform (pixel (col, row) -> map).
        width: the window's width, pixels.
        height: the window's height, pixels.
        crs: the CRS of the map coordinates.

    Returns:
        The window's true area divided by its pixel count, m2.

    Raises:
        RtsError: the CRS is missing or has no datum.
    """

    return geodesic_area(window_footprint(transform, 0, 0, width, height), crs) / max(1, width * height)


def centred_equal_area_crs(lonlat: np.ndarray) -> Any:
    """A Lambert azimuthal equal-area CRS centred on points: true areas and overlaps across the antimeridian and near
    the pole, for maps of any CRSs compared in one (``rts track``, ``rts merge``).

    Args:
        lonlat: (N, 2) longitudes and latitudes in degrees (WGS84); N may be 0.

    Returns:
        A pyproj ``CRS``: centred on the mean direction of the points (the mean of their unit vectors), or on the
        North Pole without points.
    """
    from pyproj import CRS

    ll = np.radians(np.asarray(lonlat, dtype=float).reshape(-1, 2))
    if not len(ll):
        return CRS.from_proj4("+proj=laea +lat_0=90 +lon_0=0 +datum=WGS84 +units=m +no_defs")
    v = np.column_stack([np.cos(ll[:, 1]) * np.cos(ll[:, 0]), np.cos(ll[:, 1]) * np.sin(ll[:, 0]), np.sin(ll[:, 1])])
    cx, cy, cz = v.mean(axis=0)  # the mean direction: right across the antimeridian and near the pole
    lat0 = float(np.degrees(np.arctan2(cz, np.hypot(cx, cy))))
    lon0 = float(np.degrees(np.arctan2(cy, cx)))
    return CRS.from_proj4(f"+proj=laea +lat_0={lat0:.4f} +lon_0={lon0:.4f} +x_0=0 +y_0=0 +datum=WGS84 +units=m "
                          "+no_defs")
