"""Pictures for review: the quicklook of `rts predict` (--truth, ids, scale bar, coordinates) and curves.png.

What can be checked without looking at pixels is checked on the matplotlib Figures the writers draw: where
the outlines lie in pixel space (north-up and 20-degree rotated grids), that the reference file was
reprojected, one id per polygon, the scale bar's length against the true ground size of a pixel, the corner
coordinates, and on the curves the joined validation line and the bundle's mark.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import Point, Polygon, box

from conftest import write_tif
from rtscli.errors import RtsError

NORTH_UP = Affine(10.0, 0.0, 470000.0, 0.0, -10.0, 7550000.0)
_C, _S = 10 * math.cos(math.radians(20)), 10 * math.sin(math.radians(20))
ROTATED = Affine(_C, _S, 470000.0, _S, -_C, 7550000.0)  # 10 m pixels, the grid turned by 20 degrees
GRIDS = pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated-20"])

#: (row0, row1, col0, col1) of the test slumps, end-exclusive, in a 200 x 300 scene
RECTS = [(50, 80, 100, 140), (10, 30, 40, 75), (150, 190, 250, 290)]


def pixel_box(r0, r1, c0, c1):
    return box(c0, r0, c1, r1)


def make_scene(tmp_path: Path, transform, crs="EPSG:32608", shape=(200, 300)):
    """A 3-band scene with bright rectangles at RECTS, opened as `rts predict` opens it."""
    from rtscli.data.scenes import Source, open_scene

    img = np.full((3,) + shape, 0.2, np.float32)
    for r0, r1, c0, c1 in RECTS:
        img[:, r0:r1, c0:c1] = 0.8
    path = write_tif(tmp_path / "scene.tif", img, crs=crs, transform=transform)
    return open_scene([Source(path, {"red": 1, "green": 2, "blue": 3})])


def predictions(scene, rects=RECTS):
    """Predicted polygons (map coordinates, the scene's CRS) over the given pixel rectangles, ids 1..N."""
    from rtscli.geometry.footprint import to_map

    geoms = [to_map(pixel_box(*r), scene.transform) for r in rects]
    return gpd.GeoDataFrame({"id": list(range(1, len(geoms) + 1))}, geometry=geoms, crs=scene.crs)


def texts(fig, gid: str) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == gid)
            if hasattr(t, "get_text")]


def by_gid(fig, gid: str) -> list:
    return fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == gid)


def true_pixel_m(lon_lat_crs_point, crs_code: int) -> float:
    """The true ground length (m) of 10 map metres of a UTM grid there (UTM is conformal: one scale)."""
    from pyproj import Proj, Transformer

    lon, lat = Transformer.from_crs(crs_code, 4326, always_xy=True).transform(*lon_lat_crs_point)
    return 10.0 / math.sqrt(Proj(f"EPSG:{crs_code}").get_factors(lon, lat).areal_scale)


# --- scale bar and pixel size -------------------------------------------------------------------------------


@pytest.mark.parametrize("width_px, pixel_m, length_m, label", [
    (300, 10.0, 500.0, "500 m"),       # a quarter of 3 km is 750 m: 500 m
    (10000, 10.0, 20000.0, "20 km"),   # a quarter of 100 km: 20 km
    (2048, 0.5, 200.0, "200 m"),       # 256 m: 200 m
    (400, 3.0, 200.0, "200 m"),        # 300 m: 200 m
    (800, 10.0, 2000.0, "2 km"),       # exactly 2 km fits
    (64, 0.01, 0.1, "0.1 m"),          # 16 cm: 10 cm
])
def test_scale_bar_is_a_round_true_length(width_px, pixel_m, length_m, label):
    from rtscli.render.furniture import scale_bar

    got_m, got_px, got_label = scale_bar(width_px, pixel_m)
    assert got_m == pytest.approx(length_m) and got_label == label
    assert got_px * pixel_m == pytest.approx(got_m)  # drawn pixels x true pixel size = the label's metres
    limit = width_px * pixel_m / 4
    mantissa = got_m / 10 ** math.floor(math.log10(got_m))
    assert got_m <= limit * (1 + 1e-9) and got_m > limit / 2.5 and round(mantissa, 9) in (1, 2, 5)
    with pytest.raises(ValueError):
        scale_bar(0, 10.0)


@GRIDS
def test_pixel_size_is_the_true_ground_distance(transform):
    from rtscli.render.furniture import pixel_size_m

    along_row, along_col = pixel_size_m(transform, "EPSG:32608", 300, 200)
    centre = (transform.a * 150 + transform.b * 100 + transform.c, transform.d * 150 + transform.e * 100 + transform.f)
    expected = true_pixel_m(centre, 32608)  # pyproj's projection factors: an independent source
    assert along_row == pytest.approx(expected, rel=2e-5) and along_col == pytest.approx(expected, rel=2e-5)
    assert abs(expected - 10.0) > 1e-3  # the UTM plane is not the ground: the test tells them apart


def test_pixel_size_on_a_geographic_grid_is_not_square():
    from rtscli.render.furniture import pixel_size_m, scale_bar

    d = 1e-4  # degrees
    t = Affine(d, 0, -135.7, 0, -d, 68.1)
    along_row, along_col = pixel_size_m(t, "EPSG:4326", 300, 200)
    lat = math.radians(68.1 - 100 * d)
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    n = a / math.sqrt(1 - e2 * math.sin(lat) ** 2)  # radius of the parallel's curvature
    m = a * (1 - e2) / (1 - e2 * math.sin(lat) ** 2) ** 1.5  # meridional radius
    assert along_row == pytest.approx(n * math.cos(lat) * math.radians(d), rel=1e-4)
    assert along_col == pytest.approx(m * math.radians(d), rel=1e-4)
    length_m, length_px, _ = scale_bar(300, along_row)
    assert length_px * along_row == pytest.approx(length_m)


def test_pixel_size_needs_a_crs():
    from rtscli.render.furniture import pixel_size_m

    with pytest.raises(RtsError, match="no CRS"):
        pixel_size_m(NORTH_UP, None, 10, 10)


# --- reference outlines (--truth) ----------------------------------------------------------------------------


@GRIDS
@pytest.mark.parametrize("crs, name", [(4326, "truth.gpkg"), (3413, "truth.geojson")])
def test_truth_in_another_crs_lands_at_its_place_in_pixel_space(tmp_path, caplog, transform, crs, name):
    from rtscli.render.quicklook import truth_outlines
    from rtscli.geometry.footprint import to_map

    scene = make_scene(tmp_path, transform)
    want = [pixel_box(48, 84, 98, 138), Polygon([(200, 100), (230, 100), (215, 130)])]
    truth = gpd.GeoDataFrame({"name": ["a", "b"]}, geometry=[to_map(g, transform) for g in want], crs=32608)
    truth.to_crs(crs).to_file(tmp_path / name)
    with caplog.at_level(logging.INFO, logger="rtscli"):
        got = truth_outlines(tmp_path / name, scene)
    assert "reprojecting labels" in caplog.text and f"EPSG:{crs}" in caplog.text
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        assert g.hausdorff_distance(w) < 1e-3  # pixels: the same place, whatever the grid's rotation


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_truth_errors_are_one_line_naming_the_file_and_the_fix(tmp_path):
    from rtscli.render.quicklook import truth_outlines

    scene = make_scene(tmp_path, NORTH_UP)
    g = gpd.GeoDataFrame({"k": [1]}, geometry=[box(470100, 7549000, 470300, 7549200)], crs=32608)
    missing = tmp_path / "nope.gpkg"
    with pytest.raises(RtsError) as err:
        truth_outlines(missing, scene)
    assert str(missing) in str(err.value) and "--truth" in str(err.value) and "\n" not in str(err.value)
    two = tmp_path / "two.gpkg"
    g.to_file(two, layer="a")
    g.to_file(two, layer="b")
    with pytest.raises(RtsError, match=r"2 layers \(a, b\).* -- pass --truth-layer NAME"):
        truth_outlines(two, scene)
    with pytest.raises(RtsError, match=r"no layer 'c' .*\(it has a, b\) -- pass --truth-layer with one of them"):
        truth_outlines(two, scene, layer="c")
    bare = tmp_path / "bare.shp"
    g.set_crs(None, allow_override=True).to_file(bare)
    with pytest.raises(RtsError, match="no CRS.* -- save it with its CRS in Python: python -c") as err:
        truth_outlines(bare, scene)
    assert "ogr2ogr" not in str(err.value)
    empty = tmp_path / "empty.gpkg"
    g.iloc[:0].to_file(empty)
    assert truth_outlines(empty, scene) == []  # a scene without slumps: nothing to draw, no error


def test_truth_layer_reads_one_layer_of_an_rts_synth_truth_file(tmp_path, rts):
    """rts synth's truth of a series has two layers (rts: the slumps, gone: the ones gone); --truth-layer picks one,
    from the Python API and from the command line."""
    from rtscli.render.quicklook import truth_outlines

    scene = make_scene(tmp_path, NORTH_UP)
    both = tmp_path / "truth.gpkg"
    slumps = gpd.GeoDataFrame({"id": [1, 2]}, geometry=[box(470100, 7549000, 470300, 7549200),
                                                      box(470400, 7549300, 470500, 7549400)], crs=32608)
    slumps.to_file(both, layer="rts")
    slumps.iloc[:1].to_file(both, layer="gone")
    assert len(truth_outlines(both, scene, layer="rts")) == 2
    assert len(truth_outlines(both, scene, layer="gone")) == 1
    res = rts("predict", tmp_path / "scene.tif", "-o", tmp_path / "p.gpkg", "--truth-layer", "rts")
    assert res.code == 2 and "no --truth was given" in res.err


# --- the quicklook -------------------------------------------------------------------------------------------


@GRIDS
def test_quicklook_with_truth_is_written_and_readable(tmp_path, transform):
    from PIL import Image

    from rtscli.render.quicklook import write_quicklook

    scene = make_scene(tmp_path, transform)
    truth = tmp_path / "labels.gpkg"
    predictions(scene, RECTS[:2]).to_crs(4326).to_file(truth)
    out = tmp_path / "q" / "quicklook.png"
    write_quicklook(predictions(scene), scene, out, overwrite=False, truth=truth)
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 400
    before = out.stat().st_mtime_ns
    with pytest.raises(RtsError, match="--overwrite"):  # never replaced by accident
        write_quicklook(predictions(scene), scene, out, overwrite=False, truth=truth)
    assert out.stat().st_mtime_ns == before and sorted(p.name for p in out.parent.iterdir()) == ["quicklook.png"]


@GRIDS
def test_quicklook_draws_outlines_ids_scale_bar_and_corners_where_they_belong(tmp_path, transform):
    from rtscli.render.furniture import label_anchor, pixel_size_m, scale_bar
    from rtscli.render.quicklook import MAX_ID_LABELS, quicklook_figure, truth_outlines

    scene = make_scene(tmp_path, transform)
    truth = tmp_path / "labels.geojson"
    predictions(scene, RECTS[:2]).to_crs(3413).to_file(truth)
    gdf = predictions(scene).to_crs(4326)  # the polygons' own CRS does not matter either
    fig = quicklook_figure(np.zeros((20, 30, 3)), gdf, scene, truth=truth_outlines(truth, scene),
                           truth_name=truth.name, decimation=10)

    # outlines in the scene's pixel space (through the inverse transform): the rectangles, on either grid
    (pred,) = by_gid(fig, "predictions")
    (ref,) = by_gid(fig, "truth")
    for coll, rects in ((pred, RECTS), (ref, RECTS[:2])):
        rings = [Polygon(p.vertices) for p in coll.get_paths()]
        assert len(rings) == len(rects)
        for ring, r in zip(rings, rects, strict=True):
            assert ring.hausdorff_distance(pixel_box(*r)) < 1e-3
    assert pred.get_edgecolor()[0].tolist() != ref.get_edgecolor()[0].tolist()

    # one id per polygon, beside its outline
    ids = by_gid(fig, "id")
    assert sorted(t.get_text() for t in ids) == ["1", "2", "3"]
    for t, r in zip(sorted(ids, key=lambda t: t.get_text()), RECTS, strict=True):
        assert pixel_box(*r).exterior.distance(Point(t.xy)) < 1e-9
    assert 3 <= MAX_ID_LABELS

    # the scale bar: drawn pixels x true pixel size = the metres it says
    px_row, _ = pixel_size_m(scene.transform, scene.crs, scene.width, scene.height)
    length_m, length_px, label = scale_bar(scene.width, px_row)
    (bar,) = by_gid(fig, "scale-bar")
    (rect,) = [a for a in bar.size_bar.get_children() if hasattr(a, "get_width")]
    assert rect.get_width() == pytest.approx(length_px)
    assert rect.get_width() * px_row == pytest.approx(length_m) and label == "500 m"
    assert label in [t.get_text() for t in bar.txt_label.get_children()]

    # corner coordinates in the scene's CRS, the CRS in the caption, the truth in the legend and title
    corners = texts(fig, "corner")
    assert len(corners) == 4 and any(c.startswith("x 470,000  y 7,550,000\n") for c in corners)
    if transform == ROTATED:  # the bottom right corner of the rotated grid: transform * (300, 200)
        x, y = transform.a * 300 + transform.b * 200 + transform.c, transform.d * 300 + transform.e * 200 + transform.f
        assert any(c.startswith(f"x {x:,.0f}  y {y:,.0f}") for c in corners)
    all_text = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "EPSG:32608" in all_text and "UTM zone 8N" in all_text and "1/10" in all_text
    assert "labels.geojson" in fig.axes[0].get_title() and "3 slumps predicted" in fig.axes[0].get_title()
    assert by_gid(fig, "north")
    # the id sits on its polygon's outline, also for a concave slump whose box corner lies far off it
    hook = Polygon([(0, 0), (100, 0), (100, 10), (10, 10), (10, 100), (0, 100)])
    x, y, right, up = label_anchor(Polygon([(c + 50, r + 50) for c, r in hook.exterior.coords]), 300, 200)
    assert (x, y, right, up) == (150.0, 50.0, True, True)
    assert label_anchor(box(280, 2, 299, 20), 300, 200)[2:] == (False, False)  # at the top right edge: inwards


def test_quicklook_skips_ids_when_there_are_too_many_and_says_so(tmp_path):
    from rtscli.render.quicklook import MAX_ID_LABELS, quicklook_figure

    scene = make_scene(tmp_path, NORTH_UP)
    n = MAX_ID_LABELS + 1
    rects = [(r, r + 2, c, c + 2) for r in range(0, 200, 10) for c in range(0, 300, 10)][:n]
    fig = quicklook_figure(np.zeros((20, 30, 3)), predictions(scene, rects), scene)
    assert not by_gid(fig, "id") and not by_gid(fig, "truth")
    assert f"ids not written: {n} polygons" in fig.axes[0].get_title()
    fig = quicklook_figure(np.zeros((20, 30, 3)), predictions(scene, rects[:MAX_ID_LABELS]), scene)
    assert len(by_gid(fig, "id")) == MAX_ID_LABELS and "ids not written" not in fig.axes[0].get_title()


# --- curves.png ----------------------------------------------------------------------------------------------


def rows_validated_every(k: int, epochs: int = 10) -> list[dict[str, float]]:
    """Rows as epoch_metrics gives them: validation (as Lightning runs it) after epochs k-1, 2k-1, ..."""
    return [{"epoch": e, "train_loss": 2.0 / (e + 1)} | ({"val_ap50": 0.1 * e} if (e + 1) % k == 0 else {})
            for e in range(epochs)]


def test_curves_join_the_validations_and_mark_the_bundle_epoch(tmp_path):
    from rtscli.engine.curves import curves_figure, plot_curves

    rows = rows_validated_every(3)
    fig = curves_figure(rows, title="rgb (nano)", bundle_epoch=5)
    (val,) = by_gid(fig, "val_ap50")
    assert list(val.get_xdata()) == [2, 5, 8] and list(val.get_ydata()) == pytest.approx([0.2, 0.5, 0.8])
    assert val.get_linestyle() == "-"  # joined, although the epochs between have no validation
    (loss,) = by_gid(fig, "train_loss")
    assert list(loss.get_xdata()) == list(range(10))
    (mark,) = by_gid(fig, "bundle")
    assert list(mark.get_xdata()) == [5, 5]
    assert texts(fig, "bundle-label") == [" bundle: epoch 5, AP50 0.500 "]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["training loss", "validation AP50 (every 3 epochs)", "epoch the bundle holds"]
    assert fig.axes[0].get_title() == "rgb (nano)"

    # written as a PNG, titled from the run folder and its preset by default
    run = tmp_path / "runs" / "rgb"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: nano\n")
    path = plot_curves(run, rows, bundle_epoch=8)
    from PIL import Image

    with Image.open(path) as im:
        assert path == run / "curves.png" and im.format == "PNG"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "curves.png"]  # no temporary file left
    from rtscli.engine.curves import run_title

    assert run_title(run) == "rgb (nano)" and run_title(tmp_path) == tmp_path.name
    assert plot_curves(run, []) is None


def test_curves_without_validation_or_bundle_epoch():
    from rtscli.engine.curves import curves_figure

    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(4)]
    fig = curves_figure(rows, title="t")
    (val,) = by_gid(fig, "val_ap50")
    assert len(val.get_xdata()) == 0 and not by_gid(fig, "bundle")
    assert "validation AP50 (none ran)" in [t.get_text() for t in fig.legends[0].get_texts()]
    fig = curves_figure(rows_validated_every(1, 4), title="t", bundle_epoch=3)  # at the right end: label to its left
    assert texts(fig, "bundle-label") == ["bundle: epoch 3, AP50 0.300 "]


def test_quicklook_of_a_scene_without_slumps(tmp_path):
    from PIL import Image

    from rtscli.render.quicklook import write_quicklook

    scene = make_scene(tmp_path, ROTATED)
    empty = gpd.GeoDataFrame({"id": []}, geometry=[], crs=scene.crs)
    write_quicklook(empty, scene, tmp_path / "q.png", overwrite=False)
    with Image.open(tmp_path / "q.png") as im:
        assert im.format == "PNG"


# --- one stretch for the dates of a place (--stretch) ---------------------------------------------------------


def test_quicklooks_of_two_dates_drawn_with_one_stretch_can_be_compared_by_eye(tmp_path):
    """A brighter date looks brighter when both are drawn with the first one's stretch; with each scene's own 2-98 %
    they look the same (what misled the eye: tundra yellow one year, green the next)."""
    from rtscli.data.scenes import Source, open_scene
    from rtscli.render.quicklook import _read_rendering, parse_stretch, stretch_text, write_quicklook

    base = np.random.default_rng(0).uniform(200, 1200, (3, 100, 150)).astype(np.float32)
    scenes = []
    for k, gain in enumerate((1.0, 1.6)):  # the same place, a brighter second date
        path = write_tif(tmp_path / f"date{k}.tif", base * gain, transform=NORTH_UP)
        scenes.append(open_scene([Source(path, {"red": 1, "green": 2, "blue": 3})]))
    own = [_read_rendering(s, 512)[0] for s in scenes]
    assert np.allclose(own[0], own[1], atol=1e-3)  # per-scene stretches hide the change
    first = write_quicklook(predictions(scenes[0]), scenes[0], tmp_path / "q0.png", overwrite=False)
    assert len(first) == 3 and all(lo < hi for lo, hi in first)
    again = parse_stretch(stretch_text(first))  # the value printed is the value to pass
    assert np.allclose(again, first, rtol=1e-5)
    shared = [_read_rendering(s, 512, again)[0] for s in scenes]
    assert np.allclose(shared[0], own[0], atol=1e-3)  # the first date drawn as before
    assert shared[1].mean() > shared[0].mean() + 0.15  # and the brighter date is seen brighter
    assert write_quicklook(predictions(scenes[1]), scenes[1], tmp_path / "q1.png", overwrite=False,
                           stretch=again) == again


def test_stretch_values_are_checked(tmp_path, rts):
    from rtscli.render.quicklook import parse_stretch, stretch_text

    assert parse_stretch("120, 1650") == [(120.0, 1650.0)]
    assert stretch_text(parse_stretch("1,2,3,4,5,6")) == "1,2,3,4,5,6"
    assert stretch_text([(5.0, 9.0)] * 3) == "5,9"
    for bad in ("120", "a,b", "900,100", "1,2,3,4", "nan,3"):
        with pytest.raises(RtsError, match="--stretch"):
            parse_stretch(bad)
    scene = make_scene(tmp_path, NORTH_UP)
    res = rts("predict", tmp_path / "scene.tif", "-o", tmp_path / "p.gpkg", "--stretch", "1,2")
    assert res.code == 2 and "no --quicklook was given" in res.err and "\n" not in res.err.strip()
    assert scene.width == 300
