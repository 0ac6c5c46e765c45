"""Instances from masks (findContours) and polygons, and their COCO encoding."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon, box

from rtscli.data.coco import instance_from_polygon, instances_from_mask


def _decode(seg, h, w):
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    rle = dict(seg)
    rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle).astype(bool)


def test_rectangles_give_exact_counts_boxes_areas():
    m = np.zeros((40, 50), np.uint8)
    m[2:12, 3:18] = 1  # 10 x 15
    m[20:35, 30:34] = 1  # 15 x 4
    m[38, 48] = 1  # a 1-pixel speck
    inst, dropped = instances_from_mask(m, min_area=5)
    assert dropped == 1
    got = sorted((i.bbox, i.area) for i in inst)
    assert got == [([3.0, 2.0, 15.0, 10.0], 150), ([30.0, 20.0, 4.0, 15.0], 60)]
    for i in inst:  # the COCO segmentation decodes to exactly the instance pixels
        assert isinstance(i.segmentation, list)
        assert (_decode(i.segmentation, 40, 50) == i.full_mask()).all()


def test_hole_is_kept_as_rle():
    m = np.zeros((30, 30), np.uint8)
    m[5:25, 5:25] = 1
    m[10:15, 10:15] = 0
    (inst,), _ = instances_from_mask(m)
    assert inst.has_holes and isinstance(inst.segmentation, dict)
    assert inst.area == 400 - 25
    assert (_decode(inst.segmentation, 30, 30) == m.astype(bool)).all()
    # an island inside the hole is its own instance
    m[12, 12] = 1
    inst2, _ = instances_from_mask(m)
    assert sorted(i.area for i in inst2) == [1, 375]


def test_diagonal_touch_is_one_contour_and_separate_blobs_two():
    m = np.zeros((10, 10), np.uint8)
    m[1:4, 1:4] = 1
    m[4:7, 4:7] = 1  # touches the first one at a corner: one 8-connected contour
    m[8:10, 0:2] = 1
    inst, _ = instances_from_mask(m)
    assert sorted(i.area for i in inst) == [4, 18]


def test_polygon_touching_the_chip_edge_from_outside():
    """Clipping gives Polygon + LineString (a GeometryCollection); the area part is the instance."""
    from shapely.ops import unary_union

    geom = unary_union([box(5, 5, 25, 10), box(20, 10, 40, 20)])  # outside part touches x = 20
    inst = instance_from_polygon(geom, (20, 20))
    assert inst.area == 75 and inst.bbox == [5.0, 5.0, 15.0, 5.0]
    assert instance_from_polygon(box(20, 0, 30, 20), (20, 20)) is None  # touches along a line only


def test_polygon_instance_is_exact_and_respects_nodata():
    sq = box(4, 6, 14, 11)  # pixel-edge coordinates: 10 wide, 5 high
    inst = instance_from_polygon(sq, (20, 20))
    assert inst.area == 50 and inst.bbox == [4.0, 6.0, 10.0, 5.0]
    assert (_decode(inst.segmentation, 20, 20) == inst.full_mask()).all()
    valid = np.ones((20, 20), bool)
    valid[:, 10:] = False
    inst = instance_from_polygon(sq, (20, 20), valid=valid)
    assert inst.area == 30 and inst.bbox == [4.0, 6.0, 6.0, 5.0]
    assert instance_from_polygon(box(0, 0, 1, 1), (20, 20), min_area=2) is None
    # a polygon with a hole comes out as RLE with the hole
    ring = Polygon(box(0, 0, 10, 10).exterior.coords, [box(3, 3, 6, 6).exterior.coords])
    inst = instance_from_polygon(ring, (12, 12))
    assert inst.has_holes and isinstance(inst.segmentation, dict) and inst.area == 91


def test_min_area_is_measured_on_the_pixels_the_written_segmentation_decodes_to():
    """rasterio and pycocotools draw a small polygon a pixel or two apart; --min-pixels is held on what is written
    (what rts prepare --coco and every COCO tool decode), so a label is never kept at 16 px and read back at 14."""
    from shapely.geometry import Point

    rng = np.random.default_rng(0)
    kept = dropped = 0
    for _ in range(200):
        g = Point(*rng.uniform(3, 29, 2)).buffer(rng.uniform(1.8, 2.8), quad_segs=4)
        inst = instance_from_polygon(g, (32, 32), min_area=16, fmt="polygon")
        every = instance_from_polygon(g, (32, 32), min_area=1, fmt="polygon")
        decoded = int(_decode(every.segmentation, 32, 32).sum())
        assert (inst is not None) == (decoded >= 16), decoded
        if inst is not None:
            kept += 1
            assert int(_decode(inst.segmentation, 32, 32).sum()) == inst.area == decoded
        else:
            dropped += 1
    assert kept > 20 and dropped > 20
