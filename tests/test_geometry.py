"""Geometry that real grids and real CRSs need: rotated and sheared grids, true areas on the ellipsoid."""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pycocotools.coco import COCO
from rasterio.features import rasterize
from rasterio.transform import Affine
from shapely.geometry import Point

from conftest import write_tif
from rtscli.geometry.footprint import to_map
from rtscli.geometry.affine import apply


def _rotated(deg: float, res: float = 3.0, x0: float = 500000.0, y0: float = 7600000.0) -> Affine:
    """A ``res`` m grid rotated by ``deg`` degrees (a north-up grid turned about its origin)."""
    return Affine.translation(x0, y0) @ Affine.rotation(deg) @ Affine.scale(res, -res)


SHEARED = Affine(3.0, 0.9, 500000.0, 0.6, -3.0, 7600000.0)  # columns and rows not at right angles


def _labels_on(transform, centres_px, radius_px=(28, 40, 22, 34)):
    """Label polygons drawn in map space around pixel positions of a grid (not axis-aligned in any sense)."""
    return [to_map(Point(c, r).buffer(rad, 16), transform).simplify(0.01) for (c, r), rad in
            zip(centres_px, radius_px, strict=True)]


@pytest.mark.parametrize("transform", [_rotated(20.0), SHEARED], ids=["rotated-20deg", "sheared"])
def test_labels_on_rotated_and_sheared_grids_become_their_own_pixels(tmp_path, rts, transform):
    rng = np.random.default_rng(0)
    scene = write_tif(tmp_path / "rotated.tif", rng.integers(500, 3000, (4, 384, 384)).astype(np.uint16),
                      crs="EPSG:32608", transform=transform, nodata=0)
    # four slumps; three of them cross chip borders (chips at 0 and 128 px, 256 px wide)
    labels = _labels_on(transform, [(60, 70), (190, 120), (300, 300), (120, 330)])
    gpd.GeoDataFrame({"name": list("abcd")}, geometry=labels, crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--split", "1,0,0", "--min-pixels", 1)
    assert r.code == 0, r.err
    coco = COCO(str(ds / "train.json"))
    checked = 0
    for im in coco.dataset["images"]:
        t = Affine(*im["transform"])
        with rasterio.open(ds / im["file_name"]) as chip:
            assert chip.transform.almost_equals(t) and chip.transform.almost_equals(
                transform @ Affine.translation(*im["window"][:2]))
        anns = {a["source_id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))}
        for k, poly in enumerate(labels):
            truth = rasterize([(poly, 1)], out_shape=(im["height"], im["width"]), transform=t).astype(bool)
            if not truth.any():
                assert k not in anns
                continue
            assert k in anns, f"label {k} lost in chip {im['window']}"
            got = coco.annToMask(anns[k]).astype(bool)
            iou = (got & truth).sum() / (got | truth).sum()
            assert iou >= 0.99, (k, im["window"], iou)
            checked += 1
    assert checked >= 7  # every label, several of them in more than one chip


@pytest.mark.parametrize("transform", [_rotated(20.0), SHEARED], ids=["rotated-20deg", "sheared"])
def test_error_layers_on_rotated_and_sheared_grids_burn_back_onto_the_slumps(tmp_path, rts, transform):
    from rtscli.engine.evaluate import error_layers

    rng = np.random.default_rng(1)
    scene = write_tif(tmp_path / "s.tif", rng.integers(500, 3000, (4, 256, 256)).astype(np.uint16),
                      crs="EPSG:32608", transform=transform, nodata=0)
    labels = _labels_on(transform, [(60, 70), (180, 150)], radius_px=(30, 40))
    gpd.GeoDataFrame(geometry=labels, crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    assert rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
               "--split", "1,0,0").code == 0
    gt = json.loads((ds / "train.json").read_text())
    coco = COCO(str(ds / "train.json"))
    # the ground truth as detections: every one a true positive; no detections: every slump missed
    results = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "bbox": a["bbox"],
                "segmentation": coco.annToRLE(a)} for a in gt["annotations"]]
    for name, layers in (("true_positives", error_layers(gt, results)), ("missed", error_layers(gt, []))):
        layer = layers[name]
        assert len(layer) == len(gt["annotations"]) == 2
        im = gt["images"][0]
        t = Affine(*im["transform"])
        for geom, gt_id in zip(layer.geometry, layer.gt_id, strict=True):
            burned = rasterize([(geom, 1)], out_shape=(im["height"], im["width"]), transform=t).astype(bool)
            truth = coco.annToMask(coco.loadAnns([int(gt_id)])[0]).astype(bool)
            assert (burned & truth).sum() / (burned | truth).sum() >= 0.99
        # and it lies where the label is on the map
        for geom in layer.geometry:
            best = max(geom.intersection(lab).area / geom.union(lab).area for lab in labels)
            assert best > 0.9


def test_a_raster_footprint_is_its_four_corners_on_a_rotated_grid(tmp_path):
    from rtscli.io.raster import inspect

    t = _rotated(20.0)
    path = write_tif(tmp_path / "r.tif", np.ones((1, 100, 200), np.uint8), crs="EPSG:32608", transform=t)
    info = inspect(path)
    corners = [apply(t, c, r) for c, r in ((0, 0), (200, 0), (200, 100), (0, 100))]
    assert info.footprint.equals_exact(info.footprint.__class__(corners), 1e-6)
    xs, ys = zip(*corners, strict=True)
    assert info.bounds == pytest.approx((min(xs), min(ys), max(xs), max(ys)))
    assert info.footprint.area == pytest.approx(200 * 100 * 9.0)


# ---------------------------------------------------------------------------------------------- true areas
def _square_km(lat: float, lon: float, crs: str):
    """A square of 1 km2 on the ground at (lat, lon) (drawn in a local equal-area projection, 1 m steps), in ``crs``."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import box

    laea = f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m"
    t = Transformer.from_crs(laea, crs, always_xy=True)
    return shapely.transform(shapely.segmentize(box(-500, -500, 500, 500), 1.0),
                             lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


@pytest.mark.parametrize("lat", [60.0, 73.0, 80.0])
def test_a_square_kilometre_is_one_in_every_crs(lat):
    from rtscli.geometry.measure import geodesic_area_perimeter

    lon = -133.0  # in UTM zone 8 (EPSG:32608): the Peel Plateau and the Mackenzie delta
    for crs in ("EPSG:3413", "EPSG:32608", "EPSG:4326", "EPSG:3413+5773", "EPSG:3857"):
        area, perim = geodesic_area_perimeter([_square_km(lat, lon, crs)], crs)
        assert area[0] == pytest.approx(1e6, rel=1e-3), (lat, crs)
        assert perim[0] == pytest.approx(4000.0, rel=1e-3), (lat, crs)
    # the projected plane is not the ground: EPSG:3413 is 8% too large at 60 N and 4.5% too small at 80 N
    plane = _square_km(lat, lon, "EPSG:3413").area / 1e6
    assert plane == pytest.approx({60.0: 1.0804, 73.0: 0.9831, 80.0: 0.9551}[lat], abs=2e-3)


def test_holes_count_and_empty_geometries_are_zero():
    from shapely.geometry import Polygon

    from rtscli.geometry.measure import geodesic_area_perimeter

    outer = _square_km(70.0, -133.0, "EPSG:32608")
    c = outer.centroid
    hole = Point(c.x, c.y).buffer(200.0, 64)
    ring = Polygon(outer.exterior.coords, [hole.exterior.coords])
    area, perim = geodesic_area_perimeter([ring, None, Polygon()], "EPSG:32608")
    assert area[0] == pytest.approx(1e6 - math.pi * 200**2, rel=2e-3)
    assert perim[0] == pytest.approx(4000.0 + 2 * math.pi * 200, rel=2e-3)
    assert area[1] == area[2] == 0.0 and perim[1] == perim[2] == 0.0


def test_synth_truth_areas_are_true_areas(tmp_path, rts):
    """A synthetic scene in EPSG:3413 near 69 N: its truth areas are ground areas, not the plane's."""
    from rtscli.geometry.measure import geodesic_area_perimeter

    out = tmp_path / "syn"
    assert rts("synth", out, "--chips", 0, "--scenes", 1, "--scene-size", 1024, "--site", "herschel").code == 0
    truth = gpd.read_file(next(p for p in (out / "scenes").glob("*.gpkg") if "distractors" not in p.name))
    assert len(truth)
    ground = geodesic_area_perimeter(truth.geometry.values, truth.crs)[0]
    assert truth["area_m2"].to_numpy() == pytest.approx(ground, rel=1e-6)
    assert not np.allclose(truth["area_m2"], truth.geometry.area, rtol=1e-3)  # the plane's area is not it
