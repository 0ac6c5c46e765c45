"""`rts predict`: tiling, polygons in map coordinates, seam merging, outputs (CPU, offline).

Geometry tests inject a fake model into the real tiler: it "detects" every object painted into
the scene (pixels of one value = one object) in each tile it is shown, as Mask R-CNN would, with
a box and a 28 x 28 RoI mask. Everything after the model (pasting, polygons, transforms, seam
merging, attributes, writing) is the real code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from shapely.geometry import box
import yaml
from affine import Affine

from conftest import apart, paper_sample, write_tif
from rtscli.data.modalities import BandStats, Modality
from rtscli.geometry.affine import apply

T = Affine(10.0, 0.0, 470000.0, 0.0, -10.0, 7550000.0)
IDENTITY = BandStats(0.0, 1.0, -1e9, 1e9)


def _true_pixel_area() -> float:
    """The true area (m2) of one 10 m pixel of T's UTM grid where the test scenes lie (pyproj's projection
    factors: the UTM plane's area over its areal scale), so that areas can be counted in pixels."""
    from pyproj import Proj, Transformer

    lon, lat = Transformer.from_crs(32608, 4326, always_xy=True).transform(471500.0, 7549000.0)
    return 100.0 / Proj("EPSG:32608").get_factors(lon, lat).areal_scale


PX_M2 = _true_pixel_area()


def pixels(areas_m2) -> list[int]:
    """Areas in m2 as whole pixels of the test grid."""
    return [round(a / PX_M2) for a in areas_m2]


class BlobModel:
    """A stand-in detector: each distinct positive value in channel 0 is one object."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen, self.fail_after = 0, fail_after

    def to(self, device):
        return self

    def eval(self):
        return self

    def predict(self, images: torch.Tensor) -> list[dict]:
        out = []
        for img in images:
            self.seen += 1
            if self.fail_after is not None and self.seen > self.fail_after:
                raise KeyboardInterrupt
            x = img[0]
            boxes, masks = [], []
            for v in sorted(set(torch.unique(x).tolist()) - {0.0}):
                obj = x == v
                rows, cols = torch.nonzero(obj.any(1)).flatten(), torch.nonzero(obj.any(0)).flatten()
                r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                boxes.append([c0, r0, c1, r1])
                crop = obj[r0:r1, c0:c1].float()[None, None]
                masks.append(F.interpolate(crop, size=(28, 28), mode="bilinear", align_corners=False)[0])
            n = len(boxes)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((n,), 0.9), "labels": torch.ones(n, dtype=torch.int64),
                        "mask_probs": torch.stack(masks) if n else torch.zeros(0, 1, 28, 28)})
        return out


def fake_bundle(tile: int = 64) -> SimpleNamespace:
    return SimpleNamespace(tile_size=tile, modalities=[Modality("rgb", ("red", "green", "blue"))],
                           stats={c: IDENTITY for c in ("red", "green", "blue")},
                           config={"repeat_to": 3, "fusion": None}, repeat_to=3, fusion_strategy="none",
                           instance_sizes={}, path=Path("blob-model"))


def scene_with(tmp_path, objects, shape=(200, 300), crs="EPSG:32608", transform=T, nodata=None, fill=None):
    """A 3-band scene; ``objects`` are (value, row0, row1, col0, col1) rectangles (end-exclusive)."""
    img = np.zeros((3,) + shape, np.float32)
    if fill is not None:
        img[:] = fill
    for v, r0, r1, c0, c1 in objects:
        img[:, r0:r1, c0:c1] = v
    return write_tif(tmp_path / "scene.tif", img, crs=crs, transform=transform, nodata=nodata)


def run(path, tile=64, **kw):
    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.predict import PredictOptions, predict_scene

    scene = open_scene([Source(Path(path), {"red": 1, "green": 2, "blue": 3})])
    model = BlobModel()
    opts = PredictOptions(workers=0, batch_size=3, overlap=16, **kw)
    raw = []
    gdf, timing = predict_scene(model, fake_bundle(tile), scene, opts, on_tile=raw.extend)
    return gdf, timing, raw, model


def test_square_lands_at_its_map_coordinates(tmp_path):
    # rows 50-80, cols 100-140: cut by the tiles' borders (tile 64, overlap 16: starts 0, 48, 96, ...)
    gdf, _, raw, _ = run(scene_with(tmp_path, [(1, 50, 80, 100, 140)]))
    assert len(gdf) == 1 and len(raw) > 1  # several tiles saw it, one polygon came out
    x0, y0, x1, y1 = gdf.geometry[0].bounds
    assert (x0, y0, x1, y1) == pytest.approx((471000.0, 7549200.0, 471400.0, 7549500.0), abs=1e-6)
    # true area on the ellipsoid: the UTM plane's area divided by the projection's areal scale there (UTM is
    # conformal: lengths by its square root); pyproj's projection factors are an independent source
    from pyproj import Proj, Transformer

    lon, lat = Transformer.from_crs(32608, 4326, always_xy=True).transform(471200.0, 7549350.0)
    k2 = Proj("EPSG:32608").get_factors(lon, lat).areal_scale
    assert gdf.area_m2[0] == pytest.approx(30 * 40 * 100 / k2, rel=1e-6) and abs(k2 - 1) > 5e-4
    assert gdf.perimeter_m[0] == pytest.approx(2 * (300 + 400) / k2**0.5, rel=1e-6)
    assert gdf.crs.to_epsg() == 32608 and not gdf.touches_nodata[0] and not gdf.touches_edge[0]
    assert list(gdf.columns) == ["id", "score", "area_m2", "perimeter_m", "scene", "model", "modalities", "fusion",
                                 "tile_size", "touches_nodata", "touches_edge", "tiles", "created", "geometry"]


def test_area_in_a_geographic_crs_is_in_square_metres(tmp_path):
    from pyproj import Geod

    t = Affine(0.0005, 0.0, -133.0, 0.0, -0.0002, 69.5)  # ~19 m x 22 m pixels at 69.5 N
    gdf, _, _, _ = run(scene_with(tmp_path, [(1, 40, 90, 30, 70)], crs="EPSG:4326", transform=t))
    assert len(gdf) == 1
    geod_area, geod_perim = Geod(ellps="WGS84").geometry_area_perimeter(gdf.geometry[0])
    assert gdf.area_m2[0] == pytest.approx(abs(geod_area), rel=2e-3)
    assert gdf.perimeter_m[0] == pytest.approx(geod_perim, rel=2e-3)


def test_border_and_corner_slumps_come_out_whole_touching_ones_stay_apart(tmp_path):
    objects = [(1, 10, 30, 40, 75),     # across the vertical border between tiles 0 and 1 (cols 48-64)
               (2, 40, 70, 40, 70),     # across a tile corner (rows and cols 48-64)
               (3, 120, 150, 150, 180),  # touches the next one ...
               (4, 120, 150, 180, 210)]  # ... along col 180, across the tile border at 192
    gdf, _, raw, _ = run(scene_with(tmp_path, objects))
    assert len(gdf) == 4, gdf[["area_m2", "tiles"]]
    assert sorted(pixels(gdf.area_m2)) == sorted([20 * 35, 30 * 30, 30 * 30, 30 * 30])
    assert max(gdf.tiles) >= 4  # the corner slump was seen in four tiles
    # box-NMS merging (what SAHI-like tilers do) leaves pieces of the same slumps
    nms, _, _, _ = run(scene_with(tmp_path, objects), merge="nms", match_threshold=0.5)
    assert len(nms) > 4


def _piece(scene, origins, tile_index, r0, r1, c0, c1, tile=64):
    """What the real polygon code makes of a detection covering scene pixels [r0, r1) x [c0, c1) in one tile."""
    from rtscli.engine.predict import instances_from_tile

    col, row = origins[tile_index]
    pred = {"boxes": torch.tensor([[c0 - col, r0 - row, c1 - col, r1 - row]], dtype=torch.float32),
            "scores": torch.tensor([0.9]), "mask_probs": torch.ones(1, 1, 28, 28)}
    ones = np.ones((tile, tile), bool)
    (inst,) = instances_from_tile(pred, origin=(col, row), scene=scene, tile=tile, valid=ones, inside=ones,
                                  tile_index=tile_index, min_score=0.5)
    return inst


def _scene(width=300, height=200):
    from rtscli.data.scenes import Scene

    return Scene("s", [], width, height, T, "EPSG:32608")


def test_a_border_sliver_beside_the_whole_view_is_joined_or_dropped():
    from rtscli.data.tiling import tile_grid
    from rtscli.geometry.seams import SeamMerger, TileLayout

    sc = _scene()
    origins = tile_grid(sc.width, sc.height, 64, 16)  # cols 0 48 96 144 192 236, rows 0 48 96 136
    whole = _piece(sc, origins, 8, 64, 90, 100, 140)  # tile (96, 48) sees the slump whole but misses its top rows ...
    sliver = _piece(sc, origins, 2, 60, 64, 100, 140)  # ... which tile (96, 0) finds, cut by its bottom border
    stray = _piece(sc, origins, 3, 56, 64, 170, 180)  # cut too, in a place tile (144, 48) saw whole and found nothing
    big = _piece(sc, origins, 0, 30, 64, 20, 40)  # part of a slump taller than any tile's view: kept
    assert sliver.cut and stray.cut and big.cut and not whole.cut
    merger = SeamMerger(TileLayout.of(sc, 64, origins))
    merger.add([big, sliver, stray, whole])
    out = sorted(merger.finish(), key=lambda m: m.geometry.area)
    assert len(out) == 2 and merger.dropped == 1
    assert out[0].geometry.equals(big.geometry)
    joined = out[1].geometry
    assert joined.geom_type == "Polygon" and joined.area == 30 * 40 * 100 and out[1].tiles == 2
    assert joined.bounds == pytest.approx((471000.0, 7549100.0, 471400.0, 7549400.0), abs=1e-6)


def test_partial_views_are_told_from_whole_ones_on_a_rotated_grid():
    from rtscli.data.scenes import Scene
    from rtscli.data.tiling import tile_grid

    c, s = 10 * np.cos(np.radians(10)), 10 * np.sin(np.radians(10))  # 10 m pixels, grid rotated by 10 degrees
    sc = Scene("r", [], 300, 200, Affine(c, -s, 470000.0, -s, -c, 7550000.0), "EPSG:32608")
    origins = tile_grid(sc.width, sc.height, 64, 16)
    near = _piece(sc, origins, 0, 10, 40, 20, 62)  # 2 px short of the tile's right border: whole
    at = _piece(sc, origins, 0, 10, 40, 20, 64)  # up to the border: a partial view
    assert near.bbox == (20, 10, 62, 40) and not near.cut
    assert at.bbox == (20, 10, 64, 40) and at.cut


def test_seam_merging_streams_row_by_row_with_the_same_result():
    from rtscli.data.tiling import tile_grid
    from rtscli.geometry.seams import SeamMerger, TileLayout

    sc = _scene(width=64 + 48 * 4, height=64 + 48 * 61)  # 5 x 62 tiles, no shifted last row/column
    origins = tile_grid(sc.width, sc.height, 64, 16)
    per_row = len({c for c, _ in origins})
    items = []
    for i, (col, row) in enumerate(origins):  # one slump inside each tile, one across each horizontal seam
        items.append([_piece(sc, origins, i, row + 20, row + 30, col + 20, col + 30)])
        if row > 0:
            items[-1].append(_piece(sc, origins, i, row, row + 10, col + 40, col + 50))
            prev = origins.index((col, row - 48))
            items[prev].append(_piece(sc, origins, prev, row - 5, row + 10, col + 40, col + 50))
    merger, out, top, most = SeamMerger(TileLayout.of(sc, 64, origins)), [], 0, 0
    for (_, row), tile_items in zip(origins, items, strict=True):
        if row > top:
            out += merger.finished(row)
            top = row
        merger.add(tile_items)
        most = max(most, len(merger.pending))
    out += merger.finish()
    at_once = SeamMerger(TileLayout.of(sc, 64, origins))
    at_once.add([it for t in items for it in t])
    whole = at_once.finish()
    key = sorted((m.geometry.bounds, m.tiles) for m in whole)
    assert sorted((m.geometry.bounds, m.tiles) for m in out) == key
    assert len(out) == 2 * len(origins) - per_row and merger.dropped == 0
    assert most <= 3 * 2 * per_row  # about two rows of tiles pending, not the whole scene (62 rows)


def test_all_nodata_tiles_are_skipped_and_empty_scenes_give_an_empty_layer(tmp_path):
    from rtscli.io.vector import write_vector

    img = np.full((3, 200, 300), 0, np.float32)
    img[:, :, :150] = -9999  # the left half is nodata
    path = write_tif(tmp_path / "scene.tif", img, nodata=-9999)
    gdf, timing, _, model = run(path)
    assert timing.skipped > 0 and model.seen == timing.tiles - timing.skipped
    assert len(gdf) == 0
    out = write_vector(gdf, tmp_path / "empty.gpkg")
    back = gpd.read_file(out, layer="rts")
    assert len(back) == 0 and {"score", "area_m2", "touches_nodata"} <= set(back.columns)


def test_slump_at_nodata_and_scene_edge_is_flagged(tmp_path):
    img = np.zeros((3, 200, 300), np.float32)
    img[:, :, 200:] = -9999
    img[:, 20:40, 180:200] = 1  # ends at the nodata margin
    img[:, 150:200, 10:40] = 2  # ends at the scene's bottom edge
    gdf, _, _, _ = run(write_tif(tmp_path / "scene.tif", img, nodata=-9999))
    by_area = {a: (n, e) for a, n, e in zip(pixels(gdf.area_m2), gdf.touches_nodata, gdf.touches_edge, strict=True)}
    assert by_area == {20 * 20: (True, False), 50 * 30: (False, True)}


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A nano bundle trained for one step, and a copy that the blob model stands in for."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("predict")
    for k in range(4):
        write_tif(root / "in" / "site" / f"x{k}.tif", paper_sample(shape=(64, 64), rects=[(8, 30, 10, 40)], seed=k),
                  transform=apart(k))
    assert main(["prepare", str(root / "in"), "-o", str(root / "ds"), "--bands", "paper",
                 "--split", "0.5,0.25,0.25"]) == 0
    nano = root / "nano"
    assert main(["pretrain", "--modality", "rgb", "--data", str(root / "ds"), "-o", str(nano), "--preset", "nano",
                 "--max-steps", "1", "--workers", "0", "--batch-size", "2"]) == 0
    blob = root / "blob"
    shutil.copytree(nano, blob, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    cfg = yaml.safe_load((blob / "config.yaml").read_text())
    cfg["normalization"] = {c: IDENTITY.as_dict() for c in ("red", "green", "blue")}
    cfg["model"]["tile_size"] = cfg["tile_size"] = 64
    cfg["band_map"] = cfg["source_band_map"] = {"red": 1, "green": 2, "blue": 3}
    cfg["source_bands"] = None  # any 3-band (or larger) scene
    (blob / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return {"nano": nano, "blob": blob}


@pytest.fixture
def blob(bundles, monkeypatch):
    from rtscli.modeling import bundle as bmod

    model = BlobModel()

    def fake_load(path, device="cpu"):
        return model, bmod.read_bundle(path)

    monkeypatch.setattr(bmod, "load_model", fake_load)
    return SimpleNamespace(path=bundles["blob"], model=model)


OBJECTS = [(1, 50, 80, 100, 140), (2, 10, 30, 40, 75)]


def test_every_format_has_the_same_features(tmp_path, rts, blob):
    scene = scene_with(tmp_path, OBJECTS)
    areas = None
    for ext in (".gpkg", ".shp", ".geojson", ".parquet"):
        out = tmp_path / f"slumps{ext}"
        r = rts("predict", scene, "-o", out, "--model", blob.path, "--workers", 0, "--overlap", 16)
        assert r.code == 0, r.err
        if ext == ".parquet":
            gdf = gpd.read_parquet(out)
        else:
            gdf = gpd.read_file(out, layer="rts") if ext == ".gpkg" else gpd.read_file(out)
        if ext == ".geojson":  # the layer's name is the file's, never the temporary one it was written as
            assert json.loads(out.read_text())["name"] == "slumps"
        assert len(gdf) == 2 and gdf.crs.to_epsg() == 32608
        got = sorted(pixels(gdf["area_m2"]))
        assert areas is None or got == areas
        areas = got
    assert areas == [20 * 35, 30 * 40]
    # the style QGIS opens the layer with is stored beside it (QGIS's layer_styles table)
    assert gpd.list_layers(tmp_path / "slumps.gpkg")["name"].tolist() == ["rts", "rts_footprint", "layer_styles"]
    fp = gpd.read_file(tmp_path / "slumps.gpkg", layer="rts_footprint")  # where the map looked, for rts track
    with rasterio.open(scene) as src:
        assert fp.geometry[0].equals(box(*src.bounds)) and fp.crs == src.crs


def test_outputs_are_never_overwritten_by_accident_and_never_partial(tmp_path, rts, blob):
    scene = scene_with(tmp_path, OBJECTS)
    out = tmp_path / "slumps.gpkg"
    args = ["predict", scene, "-o", out, "--model", blob.path, "--workers", 0, "--quicklook", tmp_path / "q.png",
            "--raster", tmp_path / "ids.tif"]
    first = rts(*args)
    assert first.code == 0 and "colours --stretch " in first.out  # the stretch to draw other dates alike
    with rasterio.open(tmp_path / "ids.tif") as src:
        ids = src.read(1)
    assert ids[50:80, 100:140].min() > 0 and ids[0, 0] == 0 and len(np.unique(ids)) == 3
    assert (tmp_path / "q.png").stat().st_size > 1000
    before = out.stat().st_mtime_ns
    r = rts(*args)
    assert r.code == 2 and "--overwrite" in r.err and out.stat().st_mtime_ns == before
    assert rts(*args, "--overwrite").code == 0
    # interrupted half-way: nothing is left behind
    blob.model.fail_after = 2
    blob.model.seen = 0
    out2 = tmp_path / "other.gpkg"
    r = rts("predict", scene, "-o", out2, "--model", blob.path, "--workers", 0)
    assert r.code == 130
    assert not out2.exists() and not list(tmp_path.glob(".other*"))


def test_a_project_geopackage_keeps_its_other_layers(tmp_path, rts, blob):
    """Analysts keep QGIS projects in one GeoPackage: rts replaces its own layer, never the others."""
    import sqlite3

    from shapely.geometry import box

    scene = scene_with(tmp_path, OBJECTS)
    project = tmp_path / "project.gpkg"
    aoi = gpd.GeoDataFrame({"name": ["study area"]}, geometry=[box(470000, 7548000, 473000, 7550000)], crs=32608)
    aoi.to_file(project, layer="aoi")
    with sqlite3.connect(project) as db:  # a non-spatial table too, as QGIS keeps styles and projects
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('field season 2026')")
    args = ["predict", scene, "-o", project, "--model", blob.path, "--workers", 0]

    def kept() -> bool:
        with sqlite3.connect(project) as db:
            notes = db.execute("SELECT text FROM notes").fetchall()
        back = gpd.read_file(project, layer="aoi")
        return notes == [("field season 2026",)] and back.geometry[0].equals(aoi.geometry[0])

    r = rts(*args)  # a new layer: nothing is replaced, so no --overwrite is needed
    assert r.code == 0, r.err
    assert set(gpd.list_layers(project)["name"]) == {"aoi", "notes", "rts", "rts_footprint", "layer_styles"}
    assert kept()
    assert len(gpd.read_file(project, layer="rts")) == 2
    before = project.stat().st_mtime_ns
    r = rts(*args)  # the layer exists: one line naming it and the fix, the file untouched
    assert r.code == 2 and "layer 'rts'" in r.err and "--overwrite" in r.err and project.stat().st_mtime_ns == before
    r = rts(*args, "--overwrite", "--layer", "rts")
    assert r.code == 0, r.err
    r = rts(*args, "--layer", "slumps_2026")
    assert r.code == 0, r.err
    assert set(gpd.list_layers(project)["name"]) == {"aoi", "notes", "rts", "rts_footprint", "slumps_2026",
                                                       "slumps_2026_footprint", "layer_styles"} and kept()
    r = rts("predict", scene, "-o", tmp_path / "x.shp", "--model", blob.path, "--layer", "a")
    assert r.code == 2 and "--layer" in r.err
    # interrupted half-way: the project is as it was, and no temporary file is left
    blob.model.fail_after, blob.model.seen = 2, 0
    r = rts(*args, "--overwrite")
    assert r.code == 130 and kept() and len(gpd.read_file(project, layer="rts")) == 2
    assert not list(tmp_path.glob(".project*"))


def test_evaluate_error_layers_go_into_a_project_geopackage(tmp_path):
    from shapely.geometry import box

    from rtscli.engine.evaluate import write_error_layers
    from rtscli.errors import RtsError

    project = tmp_path / "project.gpkg"
    gpd.GeoDataFrame({"name": ["aoi"]}, geometry=[box(0, 0, 1, 1)], crs=32608).to_file(project, layer="aoi")
    empty = gpd.GeoDataFrame({"score": []}, geometry=[], crs=32608)
    layers = {"true_positives": empty, "false_positives": empty, "missed": empty}
    write_error_layers(layers, project)
    assert set(gpd.list_layers(project)["name"]) == {"aoi", "true_positives", "false_positives", "missed"}
    with pytest.raises(RtsError, match="already has a layer"):
        write_error_layers(layers, project)
    write_error_layers(layers, project, overwrite=True)
    assert len(gpd.read_file(project, layer="aoi")) == 1


def test_many_scenes_resume_and_a_missing_modality_is_named(tmp_path, rts, blob):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for k in range(3):
        shutil.copy(scene_with(tmp_path, OBJECTS[: k + 1] if k < 2 else []), scenes / f"s{k}.tif")
    out = tmp_path / "out"
    r = rts("predict", scenes, "-o", out, "--model", blob.path, "--workers", 0)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "s0.gpkg", "s1.gpkg", "s2.gpkg"]
    assert [len(gpd.read_file(out / f"s{k}.gpkg", layer="rts")) for k in range(3)] == [1, 2, 0]
    kept = (out / "s0.gpkg").stat().st_mtime_ns
    (out / "s1.gpkg").unlink()
    r = rts("predict", str(scenes / "*.tif"), "-o", out, "--model", blob.path, "--workers", 0)
    assert r.code == 0, r.err
    assert (out / "s1.gpkg").exists() and (out / "s0.gpkg").stat().st_mtime_ns == kept
    assert "1 scene mapped, 2 skipped (done before)" in r.out
    # many scenes need a folder, not a file name
    r = rts("predict", scenes, "-o", tmp_path / "all.gpkg", "--model", blob.path)
    assert r.code == 2 and "must be a folder" in r.err and not (tmp_path / "all.gpkg").exists()
    # a single-band scene cannot give the RGB modality: a clear error, nothing written
    one = write_tif(tmp_path / "one.tif", np.zeros((1, 50, 50), np.float32))
    r = rts("predict", one, "-o", tmp_path / "x.gpkg", "--model", blob.path, "--bands", "nir=1")
    assert r.code == 2 and "modality rgb" in r.err and not (tmp_path / "x.gpkg").exists()


def test_outputs_match_the_model_and_options_that_made_them(tmp_path, rts, blob):
    """A re-run into the same folder with another --min-score, or another model, does not keep the old maps."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for k in range(2):
        shutil.copy(scene_with(tmp_path, OBJECTS[: k + 1]), scenes / f"s{k}.tif")
    out = tmp_path / "out"
    args = ["predict", scenes, "-o", out, "--model", blob.path, "--workers", 0]
    assert rts(*args).code == 0
    gdf = gpd.read_file(out / "s0.gpkg", layer="rts")
    import hashlib

    digest = hashlib.sha256((blob.path / "model.safetensors").read_bytes()).hexdigest()
    assert gdf.model[0] == f"blob@{digest[:8]}"  # the bundle's name and the start of its weights' SHA-256
    made = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")}
    r = rts(*args, "--min-score", 0.3)
    assert r.code == 2 and "--min-score 0.5; now 0.3" in r.err and "--overwrite" in r.err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")} == made
    r = rts(*args)  # the same model and options: the maps are kept, nothing is redone
    assert r.code == 0 and "0 scenes mapped, 2 skipped (done before)" in r.out
    other = tmp_path / "other"
    shutil.copytree(blob.path, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")  # another model: the same architecture, other weights
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_file(weights, other / "model.safetensors")
    r = rts("predict", scenes, "-o", out, "--model", other, "--workers", 0)
    assert r.code == 2 and "another model" in r.err
    r = rts(*args, "--min-score", 0.3, "--overwrite")
    assert r.code == 0 and "2 scenes mapped" in r.out
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["provenance"]["min_score"] for s in manifest["scenes"]} == {0.3}
    # a moved bundle with the same weights, NaN nodata, a second layer in the same GeoPackages: no false refusal
    r = rts("predict", scenes, "-o", out, "--model", other, "--workers", 0, "--layer", "v2", "--nodata", "nan")
    assert r.code == 0 and "2 scenes mapped" in r.out, r.err
    r = rts("predict", scenes, "-o", out, "--model", other, "--workers", 0, "--layer", "v2", "--nodata", "nan")
    assert r.code == 0 and "0 scenes mapped, 2 skipped (done before)" in r.out, r.err
    moved = tmp_path / "moved"
    shutil.copytree(blob.path, moved)
    r = rts(*args, "--min-score", 0.3, "--model", moved)
    assert r.code == 2  # --model given twice (args already has one)
    r = rts("predict", scenes, "-o", out, "--model", moved, "--workers", 0, "--min-score", 0.3)
    assert r.code == 0 and "0 scenes mapped, 2 skipped (done before)" in r.out, r.err


def test_zero_slumps_say_why(tmp_path, rts, blob):
    scene = scene_with(tmp_path, OBJECTS)
    r = rts("predict", scene, "-o", tmp_path / "a.gpkg", "--model", blob.path, "--workers", 0, "--min-score", 0.95)
    assert r.code == 0, r.err
    out = " ".join(r.out.split())
    assert "0 slumps" in out
    assert "scored below --min-score 0.95 and were dropped (the best of them scored 0.9000)" in out
    assert "lower --min-score" in out
    r = rts("predict", scene, "-o", tmp_path / "b.gpkg", "--model", blob.path, "--workers", 0, "--min-area", 1e6)
    out = " ".join(r.out.split())
    assert r.code == 0 and "0 slumps" in out and "2 slump(s) smaller than --min-area 1e+06 m2" in out


def test_default_model_from_settings_and_environment(tmp_path, rts, blob, monkeypatch):
    monkeypatch.setenv("RTS_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("RTS_MODEL", raising=False)
    scene = scene_with(tmp_path, OBJECTS)
    r = rts("predict", scene, "-o", tmp_path / "a.gpkg")
    assert r.code == 2 and "rts models use" in r.err and "rts demo" in r.err
    assert rts("models", "use", blob.path).code == 0
    r = rts("models", "list")
    assert r.code == 0 and str(blob.path.resolve()) in r.out and "nano" in r.out
    r = rts("predict", scene, "-o", tmp_path / "a.gpkg", "--workers", 0)
    assert r.code == 0, r.err
    monkeypatch.setenv("RTS_MODEL", str(tmp_path / "nowhere"))
    r = rts("predict", scene, "-o", tmp_path / "b.gpkg")
    assert r.code == 2 and "nowhere" in r.err


def test_real_sentinel2_scene_with_a_nano_bundle(tmp_path, rts, bundles, data_dir):
    scene = data_dir / "rts-digitization/Peel/S2_20210821T210019_20210821T210020_T08WMA.tif"
    out = tmp_path / "peel.gpkg"
    r = rts("predict", scene, "-o", out, "--model", bundles["nano"], "--bands", "sentinel2-7", "--min-score", 0.0,
            "--workers", 1)
    assert r.code == 0, r.err
    gdf = gpd.read_file(out, layer="rts")
    from shapely.geometry import box

    with rasterio.open(scene) as src:
        footprint = box(*src.bounds)
    assert gdf.crs.to_epsg() == 32608 and len(gdf) > 0
    assert gdf.geometry.is_valid.all() and gdf.geometry.within(footprint.buffer(1e-6)).all()


def test_many_scenes_shared_out_by_rank_under_torchrun(tmp_path, bundles):
    import subprocess
    import sys

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for k in range(3):
        img = paper_sample(shape=(80, 90), rects=[(10, 30, 10, 40)], seed=k)[:5]
        write_tif(scenes / f"s{k}.tif", img)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "rtscli", "predict", str(scenes), "-o", str(out), "--model", str(bundles["nano"]), "--workers", "0",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["s0.gpkg", "s1.gpkg", "s2.gpkg"]
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(s["scene"]).name for s in manifest["scenes"]) == ["s0.tif", "s1.tif", "s2.tif"]


def test_one_raster_per_modality_and_grids_that_differ(tmp_path, rts, blob):
    rgb = np.zeros((3, 120, 150), np.float32)
    rgb[:, 20:50, 30:70] = 1
    write_tif(tmp_path / "rgb.tif", rgb)
    write_tif(tmp_path / "nir.tif", np.ones((1, 120, 150), np.float32))
    r = rts("predict", "--rgb", tmp_path / "rgb.tif", "--nir", tmp_path / "nir.tif", "-o", tmp_path / "a.gpkg",
            "--model", blob.path, "--workers", 0)
    assert r.code == 0, r.err
    gdf = gpd.read_file(tmp_path / "a.gpkg", layer="rts")
    assert len(gdf) == 1 and pixels(gdf.area_m2) == [30 * 40]
    # a NIR raster on another grid (shifted by 5 pixels) is refused, or resampled on request
    shifted = Affine(10.0, 0.0, 470050.0, 0.0, -10.0, 7550000.0)
    write_tif(tmp_path / "nir2.tif", np.ones((1, 120, 150), np.float32), transform=shifted)
    args = ["predict", "--rgb", tmp_path / "rgb.tif", "--nir", tmp_path / "nir2.tif", "--model", blob.path,
            "--workers", 0, "-o"]
    r = rts(*args, tmp_path / "b.gpkg")
    assert r.code == 2 and "another grid" in r.err and "--resample" in r.err and not (tmp_path / "b.gpkg").exists()
    r = rts(*args, tmp_path / "b.gpkg", "--resample")
    assert r.code == 0, r.err
    assert len(gpd.read_file(tmp_path / "b.gpkg", layer="rts")) == 1


def test_web_mercator_areas_are_true_areas():
    from pyproj import Geod
    from shapely.geometry import box

    from rtscli.geometry.measure import geodesic_area_perimeter

    g = gpd.GeoDataFrame(geometry=[box(-14_800_000, 11_000_000, -14_797_000, 11_003_000)], crs=3857)  # ~70 N
    area, perim = geodesic_area_perimeter(g.geometry, g.crs)
    dense = g.geometry.segmentize(10.0).to_crs(4326).geometry[0]
    true_area, true_perim = Geod(ellps="WGS84").geometry_area_perimeter(dense)
    assert area[0] == pytest.approx(abs(true_area), rel=1e-6) and area[0] < 0.2 * g.area[0]
    assert perim[0] == pytest.approx(true_perim, rel=1e-6)


def test_a_scene_in_other_units_than_the_training_data_is_warned_about(tmp_path):
    import logging

    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.predict import PredictOptions, predict_scene

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())

    bundle = fake_bundle()
    bundle.stats = {c: BandStats(0.05, 0.02, 0.02, 0.11) for c in ("red", "green", "blue")}  # reflectance 0-1
    scene = open_scene([Source(scene_with(tmp_path, [], fill=500.0), {"red": 1, "green": 2, "blue": 3})])  # x 10000
    logger = logging.getLogger("rtscli")
    logger.addHandler(handler)
    try:
        predict_scene(BlobModel(), bundle, scene, PredictOptions(workers=0, overlap=16))
    finally:
        logger.removeHandler(handler)
    assert any("other units" in m for m in seen)


def test_attributes_describe_the_polygon_that_is_written(tmp_path):
    """A mask in two parts keeps its largest; the nodata flag and the box come from that part alone."""
    img = np.zeros((3, 200, 300), np.float32)
    img[:, :, 100:] = np.nan  # nodata (NaN in float32) from column 100: only the first tile has data
    img[:, 10:50, 20:70] = 1  # the slump: 40 x 50 px, 30 px from any nodata
    img[:, 10:22, 86:100] = 1  # a second part of the same detection, beside the nodata
    path = write_tif(tmp_path / "scene.tif", img, nodata=float("nan"))
    gdf, _, raw, _ = run(path, tile=128)
    assert len(raw) == 1 and len(gdf) == 1 and abs(pixels(gdf.area_m2)[0] - 40 * 50) <= 4  # RoI-mask corners
    assert gdf.geometry[0].geom_type == "Polygon" and not gdf.touches_nodata[0] and not gdf.touches_edge[0]
    x0, y0, x1, y1 = gdf.geometry[0].bounds  # the slump's, not reaching the second part at column 86
    assert (x0, y0, x1, y1) == pytest.approx((470200.0, 7549500.0, 470700.0, 7549900.0))
    assert raw[0].bbox == (20, 10, 70, 50)


class RoundingBlobModel(BlobModel):
    """The stand-in detector on values rounded to 1e-3: float32 rounding of a unit conversion is not an object."""

    def predict(self, images: torch.Tensor) -> list[dict]:
        return super().predict(torch.round(images * 1000) / 1000)


def _stored_three_ways(tmp_path):
    """One scene stored as reflectance (float32), as reflectance x 10000 and as x 10000 + 1000 (uint16)."""
    refl = np.full((3, 200, 300), 0.05, np.float32)
    refl[:, 50:80, 100:140] = 0.25
    refl[:, 10:30, 40:75] = 0.15
    nodata = np.zeros((200, 300), bool)
    nodata[:, 260:] = True  # stored 0 is nodata; the conversion comes after it is found
    refl[:, 120:150, 240:260] = 0.01  # a dark slump beside the nodata
    out = {}
    f = refl.copy()
    f[:, nodata] = -9999.0
    out["reflectance"] = write_tif(tmp_path / "refl.tif", f, nodata=-9999.0)
    x = np.rint(refl * 10000).astype(np.uint16)
    x[:, nodata] = 0
    out["x10000"] = write_tif(tmp_path / "x10000.tif", x, nodata=0)
    y = (np.rint(refl * 10000) + 1000).astype(np.uint16)
    y[:, nodata] = 0
    out["x10000+1000"] = write_tif(tmp_path / "l2a.tif", y, nodata=0)
    meta = write_tif(tmp_path / "l2a_meta.tif", y, nodata=0)
    with rasterio.open(meta, "r+") as dst:  # the same, with GDAL's band scale/offset as real products carry
        dst.scales, dst.offsets = (1e-4,) * 3, (-0.1,) * 3
    out["x10000+1000 tagged"] = meta
    return out


def test_the_same_scene_in_three_value_conventions_gives_the_same_polygons(tmp_path):
    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.predict import PredictOptions, predict_scene

    bundle = fake_bundle()
    bundle.stats = {c: BandStats(0.05, 1.0, -1e9, 1e9) for c in ("red", "green", "blue")}
    stored = _stored_three_ways(tmp_path)
    flags = {"reflectance": {}, "x10000": {"scale": 1e-4}, "x10000+1000": {"scale": 1e-4, "offset": -0.1},
             "x10000+1000 tagged": {}}
    found = {}
    for name, path in stored.items():
        scene = open_scene([Source(path, {"red": 1, "green": 2, "blue": 3})], **flags[name])
        gdf, _ = predict_scene(RoundingBlobModel(), bundle, scene, PredictOptions(workers=0, overlap=16))
        found[name] = sorted((g.wkt, n) for g, n in zip(gdf.geometry, gdf.touches_nodata, strict=True))
    assert len(found["reflectance"]) == 3 and any(n for _, n in found["reflectance"])
    for name in stored:
        assert found[name] == found["reflectance"], name
    # no flags, no metadata: the conversion the model's training data went through, for a file stored like them
    training = {"scale": {c: 1e-4 for c in ("red", "green", "blue")}, "offset": {c: -0.1 for c in ("red", "green",
                                                                                                  "blue")},
                "stored_dtype": "uint16"}
    scene = open_scene([Source(stored["x10000+1000"], {"red": 1, "green": 2, "blue": 3})], training=training)
    gdf, _ = predict_scene(RoundingBlobModel(), bundle, scene, PredictOptions(workers=0, overlap=16))
    assert sorted((g.wkt, n) for g, n in zip(gdf.geometry, gdf.touches_nodata, strict=True)) == found["reflectance"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_scene_in_predict_names_the_file(tmp_path, rts, blob, workers):
    from test_messages import one_clean_error, truncated

    scene = truncated(tmp_path / "cut.tif", levels=2)  # two values: the stand-in detector stays fast
    r = rts("predict", scene, "-o", tmp_path / "out.gpkg", "--model", blob.path, "--bands", "red=1,green=2,blue=3",
            "--workers", workers)
    assert r.code == 2 and not (tmp_path / "out.gpkg").exists()
    one_clean_error(r.err, scene)


def test_a_truncated_chip_in_evaluate_names_the_chip(tmp_path, rts, bundles):
    import json

    from test_messages import one_clean_error

    ds = tmp_path / "ds"
    shutil.copytree(bundles["nano"].parent / "ds", ds)
    chip = ds / json.loads((ds / "test.json").read_text())["images"][0]["file_name"]
    chip.write_bytes(chip.read_bytes()[: chip.stat().st_size * 2 // 3])
    r = rts("evaluate", bundles["nano"], "--data", ds, "--split", "test")
    assert r.code == 2
    one_clean_error(r.err, chip)


def test_progress_lines_when_nobody_watches_a_terminal(tmp_path, rts, blob, monkeypatch):
    """Under SLURM, nohup or a pipe (stderr is not a terminal): progress comes as log lines."""
    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")
    r = rts("predict", scene_with(tmp_path, OBJECTS), "-o", tmp_path / "a.gpkg", "--model", blob.path,
            "--workers", 0, "--overlap", 16)
    assert r.code == 0, r.err
    lines = [line for line in r.err.splitlines() if "tiles" in line and "scene" in line]
    assert len(lines) >= 3, r.err  # one per batch, the last one says it is done
    assert "ETA" in lines[0] and "tiles/s" in lines[0] and "km²/h" in lines[0]
    assert "24/24 tiles (100%)" in lines[-1] and "done in" in lines[-1]


def test_the_bundle_keeps_the_band_layout_of_its_training_scene(tmp_path, rts):
    """Trained with nir=7 of a 7-band scene: the chips hold nir as band 4, but `rts predict` without --bands
    reads band 7 of the scene, as with --bands; a scene laid out otherwise is refused with the fix."""
    rng = np.random.default_rng(3)
    data = rng.integers(800, 1200, (7, 160, 160)).astype(np.uint16)
    data[3:6] = 5000  # red-edge bands: bright everywhere, so reading one as NIR changes everything
    for r0, c0 in ((20, 20), (90, 100)):
        data[:3, r0:r0 + 40, c0:c0 + 40] += 1500  # bright bare soil ...
        data[6, r0:r0 + 40, c0:c0 + 40] = 300  # ... dark in NIR
    names = ["B2", "B3", "B4", "B5", "B6", "B7", "B8"]
    scene = write_tif(tmp_path / "s2.tif", data, crs="EPSG:32608", transform=T, nodata=0, descriptions=names)
    from shapely.geometry import box

    labels = [box(*apply(T, c0, r0 + 40), *apply(T, c0 + 40, r0)) for r0, c0 in ((20, 20), (90, 100))]
    gpd.GeoDataFrame(geometry=labels, crs=32608).to_file(tmp_path / "l.gpkg")
    bands = "blue=1,green=2,red=3,nir=7"
    assert rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", bands,
               "--chip-size", 64, "--split", "1,0,0").code == 0
    run = tmp_path / "nir"
    r = rts("pretrain", "--modality", "nir", "--data", tmp_path / "ds", "-o", run, "--preset", "nano",
            "--max-steps", 2, "--workers", 0, "--batch-size", 2)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["band_map"]["nir"] == 4 and cfg["source_band_map"]["nir"] == 7
    found = {}
    for name, extra in (("default", []), ("bands", ["--bands", bands]), ("wrong", ["--bands", "blue=1,green=2,"
                                                                                  "red=3,nir=4"])):
        out = tmp_path / f"{name}.gpkg"
        r = rts("predict", scene, "-o", out, "--model", run, "--min-score", 0.0, "--workers", 0, *extra)
        assert r.code == 0, r.err
        gdf = gpd.read_file(out, layer="rts")
        found[name] = sorted((round(s, 4), g.wkt) for s, g in zip(gdf.score, gdf.geometry, strict=True))
    assert found["default"] and found["default"] == found["bands"]
    assert found["wrong"] != found["default"]  # reading a red-edge band as NIR is another input
    # a 4-band scene, or one whose band descriptions say otherwise: refused without --bands, with the fix
    four = write_tif(tmp_path / "ps.tif", data[[0, 1, 2, 6]], crs="EPSG:32608", transform=T, nodata=0)
    r = rts("predict", four, "-o", tmp_path / "x.gpkg", "--model", run)
    assert r.code == 2 and "7-band rasters" in r.err and "--bands" in r.err and not (tmp_path / "x.gpkg").exists()
    swapped = write_tif(tmp_path / "sw.tif", data, crs="EPSG:32608", transform=T, nodata=0,
                        descriptions=["B2", "B3", "B4", "B8", "B5", "B6", "B7"])
    r = rts("predict", swapped, "-o", tmp_path / "y.gpkg", "--model", run)
    assert r.code == 2 and "band 7" in r.err and "'b7'" in r.err and "'b8'" in r.err


def test_band_descriptions_named_differently_are_not_a_contradiction(tmp_path, rts, bundles):
    """B02 and B2 name one band: only bands of the training rasters found in another order are refused."""
    cfg_path = bundles["blob"] / "config.yaml"
    import yaml as _yaml

    run = tmp_path / "b"
    shutil.copytree(bundles["blob"], run)
    cfg = _yaml.safe_load(cfg_path.read_text())
    cfg["source_bands"] = {"count": 3, "descriptions": ["B4", "B3", "B2"], "dtype": "float32"}
    (run / "config.yaml").write_text(_yaml.safe_dump(cfg, sort_keys=False))
    from rtscli.engine.scene_checks import check_band_layout
    from rtscli.errors import RtsError
    from rtscli.modeling.bundle import read_bundle

    img = np.zeros((3, 20, 20), np.float32)
    bundle = read_bundle(run)
    check_band_layout(bundle, write_tif(tmp_path / "a.tif", img, descriptions=["B04", "B03", "B02"]))
    check_band_layout(bundle, write_tif(tmp_path / "c.tif", img, descriptions=["red", "green", "blue"]))  # warned
    with pytest.raises(RtsError, match="band 1 of this scene is described as 'b2'"):
        check_band_layout(bundle, write_tif(tmp_path / "d.tif", img, descriptions=["B2", "B3", "B4"]))


def test_the_area_rate_counts_the_scene_not_overlapping_tiles():
    """km²/h: the scene's area times the share of its tiles done per hour, whatever the tiles' overlap."""
    from rtscli.progress import describe

    line = describe("scene", 50, 100, 10.0, unit="tiles", area_km2=200.0)  # 5 tiles/s, a 200 km² scene in 20 s
    assert "5 tiles/s" in line and "36,000 km²/h" in line and "ETA 10 s" in line


def test_predicted_maps_of_two_dates_are_tracked(tmp_path, rts, blob):
    """rts predict's outputs carry what rts track needs: the date (scene name) and where the map looked."""
    first = scene_with(tmp_path, OBJECTS)
    grown = OBJECTS[:1] + [(2, 10, 30, 40, 85)]  # the second slump grew 10 px (100 m) eastwards
    shutil.move(first, tmp_path / "S2_20190715_T08.tif")
    shutil.move(scene_with(tmp_path, grown), tmp_path / "S2_20200715_T08.tif")
    maps = tmp_path / "maps"
    r = rts("predict", tmp_path / "S2_20190715_T08.tif", tmp_path / "S2_20200715_T08.tif", "-o", maps,
            "--model", blob.path, "--workers", 0, "--overlap", 16)
    assert r.code == 0, r.err
    out = tmp_path / "changes.gpkg"
    r = rts("track", maps, "-o", out)
    assert r.code == 0, r.err
    assert "dated by scene name" in " ".join(r.err.split()) and "taken to cover everything" not in r.err
    obs = gpd.read_file(out, layer="observations")
    later = obs[obs["date"] == "2020-07-15"].sort_values("area_change_m2")
    assert list(later["relation"]) == ["continued", "continued"]
    # 10 px x 20 rows of 100 m2 (the true area: UTM's plane is 0.08 % off here)
    assert later["area_change_m2"].tolist() == pytest.approx([0, 20 * 10 * 100], rel=1e-3, abs=1e-6)
    # true m: 100 / UTM's 0.9996
    assert later["boundary_change_m"].tolist() == pytest.approx([0, 100], rel=1e-3, abs=1e-6)


def test_the_footprint_layer_leaves_nodata_out(tmp_path):
    """Where a map looked is where its scene has data: a slump under a nodata wedge is not 'gone' for rts track."""
    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.mapping import footprint_frame

    img = np.full((3, 200, 300), 0.5, np.float32)
    img[:, :, :100] = -1  # the left third is nodata (cols 0-99: 1 km at 10 m)
    path = write_tif(tmp_path / "s.tif", img, crs="EPSG:32608", transform=T, nodata=-1)
    scene = open_scene([Source(path, {"red": 1, "green": 2, "blue": 3})])
    fp = footprint_frame(scene, scene.crs)
    x0, y0, x1, y1 = fp.geometry[0].bounds
    assert (x0 - T.c, x1 - T.c) == pytest.approx((1000, 3000)) and fp.geometry[0].area == pytest.approx(200 * 200 * 100)
    assert fp.crs == scene.crs and fp["scene"][0] == "s"
