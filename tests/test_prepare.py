"""`rts prepare`: the three input paths, splits, statistics, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from pycocotools.coco import COCO
from rasterio.transform import Affine
from shapely.geometry import Polygon, box

from conftest import apart, paper_sample, write_tif
from rtscli.geometry.affine import apply

T0 = Affine(3.0, 0.0, 100000.0, 0.0, -3.0, 500000.0)


def _coco_all(ds: Path) -> dict:
    docs = {s: json.loads((ds / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    return docs


def _anns_by_file(ds: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in _coco_all(ds).values():
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        for im in doc["images"]:
            out.setdefault(im["file_name"], [])
        for a in doc["annotations"]:
            out[files[a["image_id"]]].append(a)
    return out


def _no_leftovers(parent: Path) -> bool:
    return not any(".tmp-" in p.name for p in parent.iterdir())


# ---------------------------------------------------------------------------------------------
# (a) the paper's layout
# ---------------------------------------------------------------------------------------------
def test_paper_layout_exact_instances_and_georeference(tmp_path, rts):
    src = tmp_path / "samples"
    rects = {
        "siteA/a1.tif": [(5, 15, 5, 25), (30, 40, 30, 36)],
        "siteA/a2.tif": [(0, 8, 56, 64)],  # touches the chip corner
        "siteA/a3.tif": [],  # a negative
        "siteB/b1.tif": [(10, 30, 10, 30)],
        "siteB/b2.tif": [(1, 3, 1, 3), (20, 50, 20, 22)],  # a 4-pixel speck and a thin slump
    }
    for i, (name, rs) in enumerate(rects.items()):
        write_tif(src / name, paper_sample(rects=rs, seed=i), crs="EPSG:3413",
                  transform=Affine(3.0, 0, 1000.0 * i, 0, -3.0, 5000.0), nodata=-9999.0)
    ds = tmp_path / "ds"
    r = rts("prepare", src, "-o", ds, "--bands", "paper", "--min-pixels", 5, "--split", "0.34,0.33,0.33")
    assert r.code == 0, r.err
    assert "siteA" in r.out and "siteB" in r.out and "1 mask specks" in r.out

    by_file = _anns_by_file(ds)
    assert len(by_file) == 5
    got = {Path(f).name: sorted((a["bbox"], a["area"]) for a in anns) for f, anns in by_file.items()}
    assert got["a1.tif"] == [([5.0, 5.0, 20.0, 10.0], 200.0), ([30.0, 30.0, 6.0, 10.0], 60.0)]
    assert got["a2.tif"] == [([56.0, 0.0, 8.0, 8.0], 64.0)]
    assert got["a3.tif"] == []
    assert got["b1.tif"] == [([10.0, 10.0, 20.0, 20.0], 400.0)]
    assert got["b2.tif"] == [([20.0, 20.0, 2.0, 30.0], 60.0)]  # speck dropped

    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["mode"] == "paper" and m["band_map"] == {"red": 1, "green": 2, "blue": 3, "ndvi": 4, "nir": 5}
    assert m["modalities"] == {"rgb": ["red", "green", "blue"], "ndvi": ["ndvi"], "nir": ["nir"]}
    assert m["dropped"]["specks_below_min_area"] == 1
    assert set(m["counts"]["per_site"]) == {"siteA", "siteB"}
    assert sum(m["counts"]["total"][s]["images"] for s in ("train", "val", "test")) == 5
    assert len(m["sources"]) == 5 and all(len(s["sha256"]) == 64 for s in m["sources"])

    for split in ("train", "val", "test"):
        coco = COCO(str(ds / f"{split}.json"))  # loads in pycocotools
        for img in coco.dataset["images"]:
            # the georeference round-trips: chip == source transform and CRS
            with rasterio.open(ds / img["file_name"]) as chip, rasterio.open(img["source"]) as source:
                assert chip.transform == source.transform == Affine(*img["transform"])
                assert chip.crs == source.crs and img["crs"] == "EPSG:3413"
                assert chip.count == 5 and chip.descriptions == ("red", "green", "blue", "ndvi", "nir")
                assert np.array_equal(chip.read(), source.read([1, 2, 3, 4, 5]))
                truth = source.read(6) > 0
            masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))]
            union = np.any(masks, axis=0) if masks else np.zeros_like(truth)
            if Path(img["file_name"]).name == "b2.tif":
                truth[1:3, 1:3] = False  # the speck
            assert np.array_equal(union, truth)


def test_band_map_read_from_band_descriptions(tmp_path, rts):
    write_tif(tmp_path / "in" / "x.tif", paper_sample(rects=[(5, 20, 5, 20)]),
              descriptions=["red", "green", "blue", "ndvi", "nir", "mask"])
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "ds")
    assert r.code == 0, r.err
    assert yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())["mode"] == "paper"


# ---------------------------------------------------------------------------------------------
# (b) images + masks matched by name
# ---------------------------------------------------------------------------------------------
def test_images_and_masks_by_name(tmp_path, rts):
    img = np.full((4, 48, 48), 500, np.uint16)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:30] = 255
    write_tif(tmp_path / "img" / "s1.tif", img)
    write_tif(tmp_path / "msk" / "s1_mask.tif", mask)
    write_tif(tmp_path / "img" / "s2.tif", img)
    write_tif(tmp_path / "msk" / "s2.tif", np.zeros((48, 48), np.uint8))
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", tmp_path / "ds", "--bands", "planetscope4")
    assert r.code == 0, r.err
    got = {Path(f).name: [(a["bbox"], a["area"]) for a in anns] for f, anns in _anns_by_file(tmp_path / "ds").items()}
    assert got == {"s1.tif": [([10.0, 10.0, 20.0, 10.0], 200.0)], "s2.tif": []}


# ---------------------------------------------------------------------------------------------
# (c) scenes + vector labels
# ---------------------------------------------------------------------------------------------
def _scene(tmp_path, size=(200, 300), nodata_cols=0):
    h, w = size
    data = np.full((4, h, w), 800, np.uint16)
    if nodata_cols:
        data[:, :, :nodata_cols] = 0
    return write_tif(tmp_path / "scene.tif", data, crs="EPSG:32608", transform=T0, nodata=0)


def _px(c0, r0, c1, r1):
    """A box given in scene pixel edges -> map coordinates under T0."""
    (x0, y0), (x1, y1) = apply(T0, c0, r0), apply(T0, c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_scene_with_vector_labels_in_another_crs(tmp_path, rts):
    scene = _scene(tmp_path)
    polys = [
        _px(10, 10, 30, 25),  # inside chip (0, 0)
        _px(60, 100, 80, 120),  # crosses the chip border at col 64 (chip size 64, no overlap)
        _px(150, 150, 160, 160), _px(160, 150, 170, 160),  # two slumps that touch: stay two
    ]
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # invalid: self-intersecting
    from shapely.affinity import affine_transform
    bow = affine_transform(bowtie, [3, 0, 0, -3, T0.c + 200 * 3, T0.f - 20 * 3])
    gdf = gpd.GeoDataFrame({"name": ["a", "b", "c", "d", "bow"]}, geometry=polys + [bow], crs="EPSG:32608")
    labels = tmp_path / "labels.gpkg"
    gdf.to_crs("EPSG:4326").to_file(labels)  # analysts' labels often come in lon/lat
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", labels, "-o", ds, "--bands", "planetscope4",
            "--chip-size", 64, "--overlap", 0, "--min-pixels", 1, "--split", "1,0,0")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "reprojecting labels" in err and "EPSG:4326" in err  # the explicit log line
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["labels"]["repaired_invalid"] == 1 and m["labels"]["reprojected_from"] == "EPSG:4326"
    # 300 x 200 with 64 px chips: cols 0,64,128,192,236; rows 0,64,128,136
    assert m["counts"]["total"]["train"]["images"] == 5 * 4
    doc = json.loads((ds / "train.json").read_text())
    images = {im["id"]: im for im in doc["images"]}
    found = {}
    for a in doc["annotations"]:
        im = images[a["image_id"]]
        found.setdefault(tuple(im["window"][:2]), []).append((a["bbox"], a["area"], a["source_id"]))
    assert found[(0, 0)] == [([10.0, 10.0, 20.0, 15.0], 300.0, 0)]
    # the border-crossing slump appears in both chips, clipped at the border
    assert ([60.0, 36.0, 4.0, 20.0], 80.0, 1) in found[(0, 64)]
    assert ([0.0, 36.0, 16.0, 20.0], 320.0, 1) in found[(64, 64)]
    touching = sorted(v for v in found[(128, 136)] if v[2] in (2, 3))
    assert touching == [([22.0, 14.0, 10.0, 10.0], 100.0, 2), ([32.0, 14.0, 10.0, 10.0], 100.0, 3)]
    # each chip keeps its georeference: the window transform of the scene
    for im in doc["images"]:
        c, r0 = im["window"][:2]
        with rasterio.open(ds / im["file_name"]) as chip:
            x, y = apply(T0, c, r0)  # the map position of the window's top-left corner
            assert chip.transform == Affine(T0.a, T0.b, x, T0.d, T0.e, y)
            assert chip.crs.to_epsg() == 32608


def test_scene_chips_edge_cover_remainder_and_skip_nodata(tmp_path, rts):
    scene = _scene(tmp_path, size=(100, 150), nodata_cols=70)
    gpd.GeoDataFrame(geometry=[_px(100, 10, 120, 30)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--chip-size", 64, "--overlap", 0.5)
    assert r.code == 0, r.err
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    windows = [tuple(im["window"][:2]) for d in _coco_all(ds).values() for im in d["images"]]
    # cols 0,32,64,86 (the last one shifted back to cover the remainder), rows 0,32,36; the chips
    # at col 0 lie entirely in nodata (cols < 70) and are skipped
    assert sorted({c for c, _ in windows}) == [32, 64, 86]
    assert sorted({r for _, r in windows}) == [0, 32, 36]
    assert m["dropped"]["nodata_chips_skipped"] == 3


def test_scene_splits_share_no_pixels(tmp_path, rts):
    scene = write_tif(tmp_path / "scene.tif", np.full((4, 1024, 1024), 900, np.uint16), crs="EPSG:32608",
                      transform=T0, nodata=0)
    gpd.GeoDataFrame(geometry=[_px(100 * i + 5, 100 * i + 5, 100 * i + 40, 100 * i + 30) for i in range(10)],
                     crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--chip-size", 128, "--overlap", 0.25, "--split-block", 256)
    assert r.code == 0, r.err
    wins = [(s, im["window"]) for s, d in _coco_all(ds).items() for im in d["images"]]
    assert {s for s, _ in wins} == {"train", "val", "test"}
    for i, (sa, a) in enumerate(wins):
        for sb, b in wins[i + 1:]:
            if sa != sb:
                assert abs(a[0] - b[0]) >= 128 or abs(a[1] - b[1]) >= 128
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["dropped"]["overlapping_other_split"] > 0
    assert len(wins) + m["dropped"]["overlapping_other_split"] == 11 * 11


def test_labels_touching_nodata_lose_those_pixels(tmp_path, rts):
    scene = _scene(tmp_path, size=(64, 64), nodata_cols=20)
    gpd.GeoDataFrame(geometry=[_px(10, 10, 30, 20)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 64, "--split", "1,0,0")
    assert r.code == 0, r.err
    (ann,) = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert ann["bbox"] == [20.0, 10.0, 10.0, 10.0] and ann["area"] == 100.0


# ---------------------------------------------------------------------------------------------
# splits and statistics
# ---------------------------------------------------------------------------------------------
def _many_samples(root: Path, n_per_site=10, sites=("s1", "s2")):
    for s in sites:
        for k in range(n_per_site):
            write_tif(root / s / f"{s}_{k:02d}.tif", paper_sample(rects=[(5, 15, 5, 15)], seed=k),
                      transform=apart(k + 100 * sites.index(s)))


def test_split_is_within_site_and_deterministic(tmp_path, rts):
    _many_samples(tmp_path / "in")
    for name in ("a", "b"):
        r = rts("prepare", tmp_path / "in", "-o", tmp_path / name, "--bands", "paper", "--seed", 7)
        assert r.code == 0, r.err
    ma = yaml.safe_load((tmp_path / "a" / "manifest.yaml").read_text())
    for site in ("s1", "s2"):
        c = ma["counts"]["per_site"][site]
        assert (c["train"]["images"], c["val"]["images"], c["test"]["images"]) == (7, 2, 1) or \
            sum(c[s]["images"] for s in ("train", "val", "test")) == 10 and min(c[s]["images"] for s in c) >= 1
    for split in ("train", "val", "test"):
        a = json.loads((tmp_path / "a" / f"{split}.json").read_text())
        b = json.loads((tmp_path / "b" / f"{split}.json").read_text())
        assert [i["file_name"] for i in a["images"]] == [i["file_name"] for i in b["images"]]
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "c", "--bands", "paper", "--seed", 8)
    c = json.loads((tmp_path / "c" / "test.json").read_text())
    a = json.loads((tmp_path / "a" / "test.json").read_text())
    assert [i["file_name"] for i in a["images"]] != [i["file_name"] for i in c["images"]]


def test_split_file_and_stats_from_train_only(tmp_path, rts):
    root = tmp_path / "in"
    for k in range(4):
        value = 100.0 if k < 2 else 5000.0  # train images are dark, test images bright
        write_tif(root / f"x{k}.tif", paper_sample(rects=[(5, 15, 5, 15)], value=value, seed=k), transform=apart(k))
    (tmp_path / "split.csv").write_text("name,split\nx0,train\nx1,train\nx2.tif,test\nx3,val\n")
    ds = tmp_path / "ds"
    r = rts("prepare", root, "-o", ds, "--bands", "paper", "--split-file", tmp_path / "split.csv")
    assert r.code == 0, r.err
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["split"]["method"] == "file"
    assert [m["counts"]["total"][s]["images"] for s in ("train", "val", "test")] == [2, 1, 1]
    assert m["normalization"]["red"]["mean"] < 300  # bright val/test images did not leak in
    assert m["normalization"]["red"]["high"] < 300
    (tmp_path / "bad.csv").write_text("x0,train\n")
    r = rts("prepare", root, "-o", tmp_path / "ds2", "--bands", "paper", "--split-file", tmp_path / "bad.csv")
    assert r.code == 2 and "does not list 3" in r.err and not (tmp_path / "ds2").exists()


def test_aux_raster_adds_a_modality(tmp_path, rts):
    img = np.full((4, 64, 64), 700, np.uint16)
    scene = write_tif(tmp_path / "scene.tif", img, transform=T0, nodata=0)
    dem = write_tif(tmp_path / "dem.tif", np.linspace(0, 50, 64 * 64, dtype=np.float32).reshape(64, 64), transform=T0)
    gpd.GeoDataFrame(geometry=[_px(5, 5, 20, 20)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--aux", f"dem={dem}", "--modalities", "rgb,ndvi,dem", "--chip-size", 64)
    assert r.code == 0, r.err
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["band_map"]["dem"] == 5 and m["modalities"]["dem"] == ["dem"] and m["dtype"] == "float32"
    assert 20 < m["normalization"]["dem"]["mean"] < 30
    bad = write_tif(tmp_path / "dem_bad.tif", np.zeros((32, 32), np.float32), transform=T0)
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds2", "--bands", "planetscope4",
            "--aux", f"dem={bad}")
    assert r.code == 2 and "not on the grid" in r.err and "dem_bad.tif" in r.err


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, the file named, nothing written
# ---------------------------------------------------------------------------------------------
def _assert_clean_failure(r, tmp_path, out, *needles):
    assert r.code == 2, (r.out, r.err)
    msg = r.err.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "Traceback" not in msg
    for n in needles:
        assert n in msg, msg
    assert not out.exists()
    assert _no_leftovers(out.parent)


def test_bad_missing_file(tmp_path, rts):
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "nope.tif", "-o", out, "--bands", "paper")
    _assert_clean_failure(r, tmp_path, out, "nope.tif", "not found")
    r = rts("prepare", tmp_path / "nope.tif", "-o", tmp_path / "new" / "deeper" / "ds", "--bands", "paper")
    assert r.code == 2 and not (tmp_path / "new").exists()  # no stray parent folders either


def test_bad_not_a_raster(tmp_path, rts):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.tif").write_text("this is not a GeoTIFF")
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper")
    _assert_clean_failure(r, tmp_path, out, "notes.tif", "GeoTIFF")


def test_bad_raster_without_crs_unless_assumed(tmp_path, rts):
    write_tif(tmp_path / "in" / "x.tif", paper_sample(rects=[(1, 9, 1, 9)]), crs=None)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper")
    _assert_clean_failure(r, tmp_path, out, "x.tif", "no CRS", "--assume-crs")
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper", "--assume-crs", "EPSG:3413")
    assert r.code == 0, r.err
    assert json.loads((out / "train.json").read_text())["images"][0]["crs"] == "EPSG:3413"


def test_mask_without_georeference_takes_the_image_grid(tmp_path, rts):
    import warnings

    write_tif(tmp_path / "img" / "s.tif", np.ones((4, 32, 32), np.uint16))
    m = np.zeros((32, 32), np.uint8)
    m[4:8, 4:12] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio warns about the missing geotransform
        write_tif(tmp_path / "msk" / "s_mask.tif", m, crs=None, transform=Affine.identity())
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", tmp_path / "ds", "--bands", "planetscope4")
    assert r.code == 0, r.err
    ((ann,),) = [a for a in _anns_by_file(tmp_path / "ds").values()]
    assert ann["bbox"] == [4.0, 4.0, 8.0, 4.0]


def test_bad_mask_grid(tmp_path, rts):
    write_tif(tmp_path / "img" / "s.tif", np.ones((4, 32, 32), np.uint16))
    write_tif(tmp_path / "msk" / "s.tif", np.zeros((30, 32), np.uint8))
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out, "--bands", "planetscope4")
    _assert_clean_failure(r, tmp_path, out, "s.tif", "not on the grid")


def test_bad_band_index(tmp_path, rts):
    write_tif(tmp_path / "in" / "x.tif", np.ones((4, 16, 16), np.uint16))
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "sentinel2-7", "--masks", tmp_path / "in")
    _assert_clean_failure(r, tmp_path, out, "x.tif", "band", "has 4 bands", "--bands")


def test_bad_mask_neither_binary_nor_ids(tmp_path, rts):
    """Fractions (a probability map) are neither a binary mask nor instance ids: refused, naming the fix."""
    write_tif(tmp_path / "img" / "s.tif", np.ones((4, 32, 32), np.uint16))
    write_tif(tmp_path / "msk" / "s.tif", (np.arange(32 * 32).reshape(32, 32) % 4 / 4).astype(np.float32))
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out, "--bands", "planetscope4")
    _assert_clean_failure(r, tmp_path, out, "s.tif", "neither 0/1", "1..N")


def test_bad_labels_do_not_overlap(tmp_path, rts):
    scene = _scene(tmp_path)
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32608").to_file(tmp_path / "far.gpkg")
    out = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "far.gpkg", "-o", out, "--bands", "planetscope4")
    _assert_clean_failure(r, tmp_path, out, "far.gpkg", "overlaps")


def test_bad_empty_directory(tmp_path, rts):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "empty", "-o", out, "--bands", "paper")
    _assert_clean_failure(r, tmp_path, out, "empty", "no images (*.tif")


def test_bad_labels_file_unreadable(tmp_path, rts):
    scene = _scene(tmp_path)
    (tmp_path / "l.gpkg").write_text("garbage")
    out = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", out, "--bands", "planetscope4")
    _assert_clean_failure(r, tmp_path, out, "l.gpkg", "cannot read vector labels")


def test_existing_output_needs_overwrite(tmp_path, rts):
    write_tif(tmp_path / "in" / "x.tif", paper_sample(rects=[(1, 9, 1, 9)]))
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper")
    assert r.code == 2 and "--overwrite" in r.err and (out / "keep.txt").read_text() == "precious"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper", "--overwrite")
    assert r.code == 0 and (out / "manifest.yaml").exists() and not (out / "keep.txt").exists()
    assert _no_leftovers(tmp_path)


def test_interrupted_run_leaves_nothing(tmp_path, rts, monkeypatch):
    _many_samples(tmp_path / "in", n_per_site=4, sites=("s",))
    import rtscli.data.prepare as prep

    calls = {"n": 0}
    real = prep.write_chip

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prep, "write_chip", flaky)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper")
    assert r.code == 130 and "no partial output" in r.err
    assert not out.exists() and _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# regressions from review
# ---------------------------------------------------------------------------------------------
def test_labels_with_z_values_are_read_as_2d(tmp_path, rts):
    import shapely

    scene = _scene(tmp_path, size=(64, 64))
    g = gpd.GeoDataFrame(geometry=shapely.force_3d([_px(10, 10, 30, 20)], 5.0), crs="EPSG:32608")
    g.to_file(tmp_path / "z.gpkg")  # PolygonZ, as QGIS often digitizes
    r = rts("prepare", scene, "--labels", tmp_path / "z.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 64, "--split", "1,0,0")
    assert r.code == 0, r.err
    (ann,) = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert ann["bbox"] == [10.0, 10.0, 20.0, 10.0] and ann["area"] == 200.0
    (ring,) = ann["segmentation"]  # x, y pairs (not x, y, z triples)
    assert len(ring) == 8 and set(ring[0::2]) == {10.0, 30.0} and set(ring[1::2]) == {10.0, 20.0}


def test_output_inside_the_input_folder_is_not_read_back(tmp_path, rts):
    _many_samples(tmp_path / "in", n_per_site=3, sites=("s",))
    for extra in ([], ["--overwrite"]):
        r = rts("prepare", tmp_path / "in", "-o", tmp_path / "in" / "ds", "--bands", "paper", *extra)
        assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "in" / "ds" / "manifest.yaml").read_text())
    assert sum(m["counts"]["total"][s]["images"] for s in ("train", "val", "test")) == 3
    assert set(m["counts"]["per_site"]) == {"s"}


def test_large_image_with_mask_is_cut_into_chips(tmp_path, rts):
    img = np.full((4, 300, 300), 500, np.uint16)
    mask = np.zeros((300, 300), np.uint8)
    mask[10:40, 10:60] = 1
    mask[200:260, 150:180] = 1
    write_tif(tmp_path / "img" / "big.tif", img)
    write_tif(tmp_path / "msk" / "big.tif", mask)
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 128, "--overlap", 0, "--split", "1,0,0")
    assert r.code == 0, r.err
    docs = _coco_all(tmp_path / "ds")
    wins = sorted(tuple(im["window"][:2]) for im in docs["train"]["images"])
    assert wins == [(c, r_) for c in (0, 128, 172) for r_ in (0, 128, 172)]
    assert all(im["width"] == 128 for im in docs["train"]["images"])
    # whole image without --chip-size
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", tmp_path / "ds2", "--bands", "planetscope4")
    assert r.code == 0 and len(_coco_all(tmp_path / "ds2")["train"]["images"]) + \
        len(_coco_all(tmp_path / "ds2")["test"]["images"]) + len(_coco_all(tmp_path / "ds2")["val"]["images"]) == 1


def test_paper_mask_band_with_nodata_value(tmp_path, rts):
    img = paper_sample(rects=[(5, 15, 5, 15)])
    img[:, :, :8] = -9999.0  # nodata margin, the mask band included
    write_tif(tmp_path / "in" / "x.tif", img, nodata=-9999.0)
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "ds", "--bands", "paper", "--split", "1,0,0")
    assert r.code == 0, r.err
    (ann,) = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert ann["bbox"] == [8.0, 5.0, 7.0, 10.0]


def test_padding_is_never_data_even_without_nodata(tmp_path, rts):
    scene = write_tif(tmp_path / "s.tif", np.full((4, 50, 50), 500, np.uint16), transform=T0, nodata=None)
    gpd.GeoDataFrame(geometry=[_px(5, 5, 45, 60)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 64, "--split", "1,0,0")
    assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["normalization"]["red"]["low"] == 500.0  # the zero padding did not enter the statistics
    (ann,) = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert ann["bbox"] == [5.0, 5.0, 40.0, 45.0]  # the label is cut at the raster's edge, not the chip's


def test_bad_mixed_nodata_empty_labels_and_crashes(tmp_path, rts):
    write_tif(tmp_path / "in" / "a.tif", paper_sample(rects=[(1, 9, 1, 9)]), nodata=None)
    write_tif(tmp_path / "in" / "b.tif", paper_sample(rects=[(1, 9, 1, 9)]), nodata=-9999.0)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "in", "-o", out, "--bands", "paper")
    _assert_clean_failure(r, tmp_path, out, "different nodata", "a.tif", "b.tif", "rio edit-info --nodata")
    scene = _scene(tmp_path)
    gpd.GeoDataFrame(geometry=[], crs="EPSG:32608").to_file(tmp_path / "empty.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "empty.gpkg", "-o", out, "--bands", "planetscope4")
    _assert_clean_failure(r, tmp_path, out, "empty.gpkg", "no features")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.tif").write_text("not a raster")
    r = rts("prepare", tmp_path / "bad", "-o", out)
    _assert_clean_failure(r, tmp_path, out, "a.tif", "GeoTIFF")
    r = rts("synth", tmp_path / "sy", "--scene-size", 0)
    _assert_clean_failure(r, tmp_path, tmp_path / "sy", "too small")
    r = rts("synth", tmp_path / "sy", "--crs", "foo")
    _assert_clean_failure(r, tmp_path, tmp_path / "sy", "foo")


# ---------------------------------------------------------------------------------------------
# no place in two splits, whatever file it comes from
# ---------------------------------------------------------------------------------------------
def _footprints(ds: Path) -> list[tuple[str, str, Polygon]]:
    """(split, source file, map footprint) of every chip of a dataset."""
    out = []
    for split, doc in _coco_all(ds).items():
        for im in doc["images"]:
            t = Affine(*im["transform"])
            corners = [apply(t, c, r) for c, r in ((0, 0), (im["width"], 0), (im["width"], im["height"]),
                                                  (0, im["height"]))]
            with rasterio.open(ds / im["file_name"]) as chip:  # the part that holds data
                valid = chip.read_masks(1).any()
            if valid:
                out.append((split, im["source"], Polygon(corners)))
    return out


def _assert_no_shared_place(ds: Path) -> None:
    fps = _footprints(ds)
    for i, (sa, _, a) in enumerate(fps):
        for sb, _, b in fps[i + 1:]:
            if sa != sb:
                assert a.intersection(b).area < 1.0, (sa, sb)


def test_copies_of_one_chip_from_different_files_share_a_split(tmp_path, rts):
    """Three files holding one place (copies, or dates) land in one split; the README's promise holds."""
    chips = tmp_path / "chips"
    data = np.full((4, 128, 128), 900, np.uint16)
    for k in range(3):  # one place, three files
        write_tif(chips / f"copy{k}.tif", data, crs="EPSG:32608", transform=apart(0, 3.0), nodata=0)
    for k in range(1, 7):  # six other places
        write_tif(chips / f"other{k}.tif", data, crs="EPSG:32608", transform=apart(k, 3.0), nodata=0)
    slumps = [box(*apply(apart(k, 3.0), 30, 90), *apply(apart(k, 3.0), 70, 40)) for k in range(7)]
    gpd.GeoDataFrame(geometry=slumps, crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    for seed in range(4):  # whatever the draw
        ds = tmp_path / f"ds{seed}"
        r = rts("prepare", chips, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
                "--chip-size", 128, "--seed", seed)
        assert r.code == 0, r.err
        splits = {Path(src).name: s for s, src, _ in _footprints(ds)}
        assert len(splits) == 9 and len({splits[f"copy{k}.tif"] for k in range(3)}) == 1
        assert len(set(splits.values())) == 3
        m = yaml.safe_load((ds / "manifest.yaml").read_text())
        assert m["split"]["overlapping_pairs_across_files"] == 3 and m["dropped"]["overlapping_other_split"] == 0
        _assert_no_shared_place(ds)


def test_two_overlapping_scenes_share_no_place_between_splits(tmp_path, rts):
    """Two acquisitions of one place, overlapping by 69%, on different grids: no pixel of one place in two splits."""
    scenes = tmp_path / "scenes"
    data = np.full((4, 512, 512), 900, np.uint16)
    write_tif(scenes / "2019.tif", data, crs="EPSG:32608", transform=T0, nodata=0)
    # 2021: shifted by 160 px (31%) and 1.5 px, as two real acquisitions would be
    write_tif(scenes / "2021.tif", data, crs="EPSG:32608",
              transform=Affine(3.0, 0.0, T0.c + 3.0 * 160.5, 0.0, -3.0, T0.f - 3.0 * 1.5), nodata=0)
    gpd.GeoDataFrame(geometry=[_px(40 * i + 5, 45 * i + 5, 40 * i + 30, 45 * i + 25) for i in range(11)],
                     crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scenes, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--chip-size", 128, "--split-block", 256)
    assert r.code == 0, r.err
    fps = _footprints(ds)
    assert {s for s, _, _ in fps} == {"train", "val", "test"}
    assert {Path(src).name for _, src, _ in fps} == {"2019.tif", "2021.tif"}
    _assert_no_shared_place(ds)
    # the same two scenes, each on its own, would share no pixel with the other's other splits either
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["dropped"]["overlapping_other_split"] > 0


def test_overlapping_paper_samples_and_a_split_file_that_puts_one_place_in_two_splits(tmp_path, rts):
    root = tmp_path / "in"
    for k in range(6):
        write_tif(root / f"x{k}.tif", paper_sample(rects=[(5, 15, 5, 15)], seed=k), transform=apart(k // 2 * 2))
    ds = tmp_path / "ds"  # x0 = x1, x2 = x3, x4 = x5 on the map
    r = rts("prepare", root, "-o", ds, "--bands", "paper")
    assert r.code == 0, r.err
    splits = {Path(src).name: s for s, src, _ in _footprints(ds)}
    assert splits["x0.tif"] == splits["x1.tif"] and splits["x2.tif"] == splits["x3.tif"]
    assert splits["x4.tif"] == splits["x5.tif"] and len(set(splits.values())) == 3
    assert yaml.safe_load((ds / "manifest.yaml").read_text())["split"]["images_joined_across_files"] == 3
    # a split file cannot put one place in two splits: the less strict copy is left out, with a warning
    (tmp_path / "split.csv").write_text("x0,train\nx1,test\nx2,train\nx3,train\nx4,val\nx5,val\n")
    r = rts("prepare", root, "-o", tmp_path / "ds2", "--bands", "paper", "--split-file", tmp_path / "split.csv")
    assert r.code == 0, r.err
    assert "overlap" in r.err and "two splits" in r.err
    m = yaml.safe_load((tmp_path / "ds2" / "manifest.yaml").read_text())
    assert m["dropped"]["overlapping_other_split"] == 1 and m["split"]["left_out_overlapping_other_file"] == 1
    _assert_no_shared_place(tmp_path / "ds2")


def test_duplicate_labels_are_counted_and_one_is_kept(tmp_path, rts):
    scene = _scene(tmp_path, size=(128, 128))
    a = _px(10, 10, 40, 40)
    near = _px(10, 11, 40, 41)  # the same slump drawn again, a pixel lower (IoU 0.94)
    other_date = _px(60, 60, 90, 90)
    grown = _px(60, 60, 90, 105)  # the same slump at a later date (IoU 0.67): reported, kept
    gpd.GeoDataFrame({"n": [1, 2, 3, 4, 5]}, geometry=[a, a, near, other_date, grown],
                     crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    args = ["prepare", scene, "--labels", tmp_path / "l.gpkg", "--bands", "planetscope4", "--chip-size", 128,
            "--split", "1,0,0"]
    r = rts(*args, "-o", tmp_path / "ds")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "2 label polygon(s) repeat an earlier one" in err and "first of each was kept" in err
    assert "1 pair(s) of label polygons overlap" in err
    anns = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert sorted(a["source_id"] for a in anns) == [0, 3, 4]
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["labels"]["duplicates"] == 2 and m["labels"]["duplicates_dropped"] == 2
    r = rts(*args, "-o", tmp_path / "all", "--keep-duplicate-labels")
    assert r.code == 0, r.err
    assert len(json.loads((tmp_path / "all" / "train.json").read_text())["annotations"]) == 5


def test_the_same_scene_in_three_value_conventions_gives_the_same_dataset(tmp_path, rts):
    """Reflectance, x 10000 and x 10000 + 1000 (Sentinel-2 L2A since 2022) with the right flags, or GDAL's band
    scale/offset: the same chips, statistics and instances; NDVI from physical values."""
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.4, (4, 96, 128)).astype(np.float32)
    refl[3] += 0.3  # NIR (band 4 of planetscope4) brighter than red: vegetation
    nodata = np.zeros((96, 128), bool)
    nodata[:, 110:] = True
    gpd.GeoDataFrame(geometry=[_px(10, 10, 40, 30), _px(90, 50, 120, 80)], crs="EPSG:32608").to_file(
        tmp_path / "l.gpkg")
    stored = refl.copy()
    stored[:, nodata] = -9999.0
    variants = {"refl": (stored, -9999.0, [])}
    for name, add, extra in (("x10000", 0, ["--scale", 1e-4]), ("l2a", 1000, ["--scale", 1e-4, "--offset", -0.1]),
                             ("tagged", 1000, [])):
        x = (np.rint(refl * 10000) + add).astype(np.uint16)
        x[:, nodata] = 0
        variants[name] = (x, 0, extra)
    docs, chips, stats = {}, {}, {}
    for name, (data, nd, extra) in variants.items():
        path = write_tif(tmp_path / name / "scene.tif", data, crs="EPSG:32608", transform=T0, nodata=nd)
        if name == "tagged":
            with rasterio.open(path, "r+") as dst:
                dst.scales, dst.offsets = (1e-4,) * 4, (-0.1,) * 4
        ds = tmp_path / f"ds_{name}"
        r = rts("prepare", path, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
                "--chip-size", 64, "--split", "1,0,0", *extra)
        assert r.code == 0, r.err
        m = yaml.safe_load((ds / "manifest.yaml").read_text())
        stats[name] = m["normalization"]
        doc = json.loads((ds / "train.json").read_text())
        docs[name] = sorted((tuple(im["window"]), a["bbox"], a["area"]) for im in doc["images"]
                            for a in doc["annotations"] if a["image_id"] == im["id"])
        with rasterio.open(ds / doc["images"][-1]["file_name"]) as chip:
            chips[name] = np.where(chip.read_masks(1) > 0, chip.read(), np.nan)
        if name != "refl":
            assert m["values"]["source"] == ("gdal-metadata" if name == "tagged" else "options")
            assert m["values"]["scale"]["red"] == pytest.approx(1e-4) and m["values"]["stored_dtype"] == "uint16"
            assert m["nodata"] == -9999.0  # stored 0 is nodata; physical 0 could be a value
    for name in variants:
        assert docs[name] == docs["refl"], name
        np.testing.assert_allclose(chips[name], chips["refl"], atol=6e-5, err_msg=name)  # x 10000 rounding
        for band, st in stats["refl"].items():
            assert stats[name][band]["mean"] == pytest.approx(st["mean"], abs=1e-4), (name, band)
    assert "ndvi" in stats["l2a"]  # compared above: NDVI of physical values, not of x 10000 + 1000


def test_label_files_of_two_sites_in_two_utm_zones(tmp_path, rts):
    """One label file per site, each in its own UTM zone: all are read, each reprojected (and logged)."""
    from pyproj import Transformer

    scenes = tmp_path / "scenes"
    t7 = Affine(10.0, 0.0, 440000.0, 0.0, -10.0, 7600000.0)  # zone 7N (EPSG:32607), near 141 W
    t8 = Affine(10.0, 0.0, 560000.0, 0.0, -10.0, 7560000.0)  # zone 8N (EPSG:32608), near 132 W
    for name, crs, t in (("site7", "EPSG:32607", t7), ("site8", "EPSG:32608", t8)):
        write_tif(scenes / name / f"{name}.tif", np.full((4, 128, 128), 900, np.uint16), crs=crs, transform=t,
                  nodata=0)
    # the labels of each site come in the other's zone (as a GIS project might hold them)
    lab7 = box(*apply(t7, 20, 50), *apply(t7, 50, 20))
    lab8 = box(*apply(t8, 60, 90), *apply(t8, 100, 60))
    to8 = Transformer.from_crs(32607, 32608, always_xy=True)
    import shapely

    gpd.GeoDataFrame(geometry=[shapely.transform(shapely.segmentize(lab7, 10), lambda xy: np.column_stack(
        to8.transform(xy[:, 0], xy[:, 1])))], crs=32608).to_file(tmp_path / "a.gpkg")
    to7 = Transformer.from_crs(32608, 32607, always_xy=True)
    gpd.GeoDataFrame(geometry=[shapely.transform(shapely.segmentize(lab8, 10), lambda xy: np.column_stack(
        to7.transform(xy[:, 0], xy[:, 1])))], crs=32607).to_file(tmp_path / "b.gpkg")
    r = rts("prepare", scenes, "--labels", tmp_path / "a.gpkg", "--labels", tmp_path / "b.gpkg", "-o",
            tmp_path / "ds", "--bands", "planetscope4", "--chip-size", 128, "--split", "1,0,0")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "reprojecting labels a.gpkg from EPSG:32608 to the raster CRS EPSG:32607" in err
    assert "reprojecting labels b.gpkg from EPSG:32607 to the raster CRS EPSG:32608" in err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["labels"]["files"] == [str(tmp_path / "a.gpkg"), str(tmp_path / "b.gpkg")]
    assert m["labels"]["features_per_file"] == {str(tmp_path / "a.gpkg"): 1, str(tmp_path / "b.gpkg"): 1}
    assert sorted(a["source_id"] for a in json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]) \
        == ["a.gpkg#0", "b.gpkg#0"]
    anns = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    assert sorted(a["area"] for a in anns) == [900.0, 1200.0]  # 30 x 30 px and 40 x 30 px, both found


def test_splits_that_cannot_measure_anything_are_reported(tmp_path, rts):
    # one small scene: one chip of 256 px -> the warning names --chip-size
    write_tif(tmp_path / "one" / "s.tif", np.full((4, 200, 200), 900, np.uint16), crs="EPSG:32608", transform=T0,
              nodata=0)
    gpd.GeoDataFrame(geometry=[_px(10, 10, 40, 40)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    r = rts("prepare", tmp_path / "one", "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds1", "--bands",
            "planetscope4")
    err = " ".join(r.err.split())
    assert r.code == 0 and "gives a single 256 px chip" in err and "--chip-size (e.g. 64)" in err
    # a val split with chips but no slump: said, with what it means for rts pretrain
    root = tmp_path / "in"
    for k in range(6):
        write_tif(root / f"x{k}.tif", paper_sample(rects=[(5, 15, 5, 15)] if k < 4 else [], seed=k),
                  transform=apart(k))
    (tmp_path / "split.csv").write_text("x0,train\nx1,train\nx2,train\nx3,test\nx4,val\nx5,val\n")
    r = rts("prepare", root, "-o", tmp_path / "ds2", "--bands", "paper", "--split-file", tmp_path / "split.csv")
    err = " ".join(r.err.split())
    assert r.code == 0 and "the val split has 2 chip(s) and no slump" in err and "keeps the last weights" in err
    assert "the test split has 1 chip(s) and only 1 slump(s)" in err


def test_an_evaluation_only_dataset(tmp_path, rts):
    """--split 0,0,1: a site kept for testing only; its statistics come from all its chips."""
    _many_samples(tmp_path / "in", n_per_site=3, sites=("other",))
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "ds", "--bands", "paper", "--split", "0,0,1")
    assert r.code == 0, r.err
    assert "empty" not in r.err and "evaluation-only" in r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["counts"]["total"]["test"]["images"] == 3 and m["counts"]["total"]["train"]["images"] == 0
    assert m["normalization"]["red"]["mean"] > 0


def test_source_ids_are_the_rows_of_the_label_file(tmp_path, rts):
    """An annotation's source_id leads back to its feature in the label file, even after features were dropped."""
    from shapely.geometry import Point

    scene = _scene(tmp_path, size=(128, 128))
    feats = [Point(*apply(T0, 5, 5)), Polygon(), _px(10, 10, 40, 40), _px(60, 60, 90, 90)]  # rows 0 and 1 dropped
    gpd.GeoDataFrame({"name": ["point", "empty", "a", "b"]}, geometry=feats, crs="EPSG:32608").to_file(
        tmp_path / "l.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 128, "--split", "1,0,0")
    assert r.code == 0, r.err
    anns = json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]
    back = gpd.read_file(tmp_path / "l.gpkg")
    assert {a["source_id"]: back.name[a["source_id"]] for a in anns} == {2: "a", 3: "b"}


def test_small_whole_labels_and_pieces_cut_at_chip_edges_are_counted_apart(tmp_path, rts):
    """A 6 px slump lying whole in a chip is dropped as a label smaller than --min-pixels; a slump cut by a chip edge
    leaves a 3 px piece in one chip, dropped as a piece cut at a chip edge; a label that only touches a chip's edge
    leaves nothing there to drop (issue 21, point 13)."""
    scene = _scene(tmp_path)
    polys = [_px(10, 10, 13, 12),  # 3 x 2 px, whole inside chip (0, 0)
             _px(61, 30, 84, 34),  # 4 px high, 3 px left of the chip edge at col 64 (12 px), 20 px right of it
             _px(100, 128, 110, 138)]  # starts on the edge at row 128: touches chips of rows 64..128 along a line
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 64, "--overlap", 0, "--split", "1,0,0")
    assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["dropped"]["labels_below_min_pixels"] == 1
    assert m["dropped"]["labels_clipped_below_min_area"] == 1
    out = " ".join(r.out.split())
    assert "1 label(s) smaller than --min-pixels 16 px dropped" in out, out
    assert "1 label piece(s) cut by chip edges and smaller than --min-pixels 16 px dropped" in out, out


def test_mixed_sensors_are_named_in_the_nodata_error(tmp_path, rts):
    """Landsat 15 m float32 (nodata -inf) beside Sentinel-2 10 m uint16 (nodata 0), across two site folders: the
    error names the folder that holds them all and each file, says the cause (different sensors: data types and
    resolutions differ) and the fix with what rts installs (issue 21, point 14)."""
    root = tmp_path / "in"
    write_tif(root / "A" / "s2_a.tif", np.full((4, 32, 32), 900, np.uint16), nodata=0)
    write_tif(root / "B" / "l8_b.tif", np.full((4, 32, 32), 0.1, np.float32), nodata=float("-inf"),
              transform=Affine(15.0, 0.0, 470000.0, 0.0, -15.0, 7550000.0))
    write_tif(root / "B" / "s2_b.tif", np.full((4, 32, 32), 900, np.uint16), nodata=0)
    out = tmp_path / "ds"
    gpd.GeoDataFrame(geometry=[_px(1, 1, 9, 9)], crs="EPSG:32608").to_file(tmp_path / "l.gpkg")
    r = rts("prepare", root, "-o", out, "--bands", "planetscope4", "--labels", tmp_path / "l.gpkg")
    _assert_clean_failure(r, tmp_path, out, f"{root}:", "different nodata values", "B/l8_b.tif", "A/s2_a.tif",
                          "B/s2_b.tif", "float32", "uint16", "15 m", "10 m", "different sensors",
                          "rio edit-info --nodata VALUE")
    assert "gdal_edit" not in r.err
