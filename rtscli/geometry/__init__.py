"""Polygon work shared by ``rts prepare``, ``rts evaluate`` and ``rts predict``.

* :mod:`~rtscli.geometry.footprint`: the true footprint of a raster window (all four corners, so
  rotated and sheared grids are right) and geometries between pixel and map coordinates;
* :mod:`~rtscli.geometry.measure`: true areas and lengths on the ellipsoid (pyproj ``Geod``);
* :mod:`~rtscli.geometry.polygons`: masks to polygons in map coordinates, the overlap of two polygons (IoS, IoU) and
  union-find, shared by seam merging, dataset splits and tracking;
* :mod:`~rtscli.geometry.seams`: joining the per-tile instances of a scene into one polygon per slump.
"""
