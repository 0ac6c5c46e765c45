"""Areas before and after rts measured them on the ellipsoid: the plane of the CRS vs the true area.

    python benchmarks/true_areas.py

For a slump-sized polygon (a 300 m x 200 m ellipse, about 4.7 ha, drawn on the ground) at 60, 73
and 80 N, in EPSG:3413 (polar stereographic, the CRS of ARTS), in the UTM zone of its longitude and
in EPSG:3857, it prints the area the old code reported (the CRS's own plane; for EPSG:3857 a local
equal-area projection) and the true area that ``rtscli.geometry.measure`` reports now, and their
ratio. The "true" reference is the polygon's area in a Lambert azimuthal equal-area projection
centred on it, where it was drawn.
"""

from __future__ import annotations

import numpy as np


def main() -> None:
    import shapely
    from pyproj import Transformer
    from shapely.geometry import Point

    from rtscli.geometry.measure import geodesic_area_perimeter

    lon = -133.0  # UTM zone 8
    print(f"{'lat':>4} {'CRS':>10} {'drawn m2':>12} {'old (plane) m2':>15} {'new (ellipsoid) m2':>19} "
          f"{'old/new':>8} {'new/drawn':>10}")
    for lat in (60.0, 73.0, 80.0):
        laea = f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m"
        shape = shapely.affinity.scale(Point(0, 0).buffer(1.0, 256), 150.0, 100.0)
        drawn = shape.area
        for crs in ("EPSG:3413", "EPSG:32608", "EPSG:3857"):
            t = Transformer.from_crs(laea, crs, always_xy=True)
            g = shapely.transform(shape, lambda xy, t=t: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
            new = float(geodesic_area_perimeter([g], crs)[0][0])
            old = g.area if crs != "EPSG:3857" else drawn  # the old code used a local LAEA for Web Mercator
            print(f"{lat:4.0f} {crs:>10} {drawn:12.1f} {old:15.1f} {new:19.1f} {old / new:8.4f} {new / drawn:10.6f}")


if __name__ == "__main__":
    main()
