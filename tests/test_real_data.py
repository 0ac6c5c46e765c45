"""`rts prepare` path (c) on a real Sentinel-2 scene with an expert's thaw-slump polygons.

Data: Nitze et al. (2024), see tests/data/rts-digitization/README.md (MIT licence).
"""

from __future__ import annotations

import json

import geopandas as gpd
import rasterio
import yaml
from shapely.geometry import box

PEEL = "rts-digitization/Peel"
SCENE = "S2_20210821T210019_20210821T210020_T08WMA.tif"
LABELS = "expert01_Peel_digitized.shp"


def test_real_scene_one_instance_per_intersecting_polygon(tmp_path, rts, data_dir):
    scene, labels = data_dir / PEEL / SCENE, data_dir / PEEL / LABELS
    with rasterio.open(scene) as src:
        footprint = box(*src.bounds)
        crs = src.crs
    gdf = gpd.read_file(labels)
    expected = int((gdf.is_valid & gdf.intersects(footprint)).sum())
    assert expected == 10

    out = tmp_path / "ds"
    # one 256 px chip covers the whole 251 x 251 scene (padded with nodata)
    r = rts("prepare", scene, "--labels", labels, "-o", out, "--bands", "sentinel2-7", "--chip-size", 256,
            "--min-pixels", 1, "--split", "1,0,0", "--site", "peel")
    assert r.code == 0, r.err
    doc = json.loads((out / "train.json").read_text())
    assert len(doc["images"]) == 1 and len(doc["annotations"]) == expected
    assert sorted(a["source_id"] for a in doc["annotations"]) == sorted(gdf.index[gdf.intersects(footprint)].tolist())
    # areas in pixels agree with the polygons' areas in m^2 (10 m pixels) within rasterization error
    for a in doc["annotations"]:
        poly = gdf.geometry[a["source_id"]].intersection(footprint)
        assert abs(a["area"] * 100 - poly.area) <= 0.25 * poly.area + 400
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["source_band_preset"] == "sentinel2-7" and m["modalities"] == {"rgb": ["red", "green", "blue"],
                                                                            "ndvi": ["ndvi"], "nir": ["nir"]}
    assert doc["images"][0]["crs"] == "EPSG:32608"
    with rasterio.open(out / doc["images"][0]["file_name"]) as chip:
        assert chip.crs == crs and chip.count == 7 and chip.width == 256


def test_real_scene_in_chips_with_overlap(tmp_path, rts, data_dir):
    out = tmp_path / "ds"
    r = rts("prepare", data_dir / PEEL / SCENE, "--labels", data_dir / PEEL / LABELS, "-o", out,
            "--bands", "sentinel2-7", "--chip-size", 128, "--overlap", 0.25, "--split-block", 128)
    assert r.code == 0, r.err
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    total = m["counts"]["total"]
    kept = sum(total[s]["images"] for s in total)
    assert kept + m["dropped"]["overlapping_other_split"] == 9  # 3 x 3 chips of 128, stride 96, over 251 px
    assert sum(total[s]["instances"] for s in total) >= 10  # slumps on chip borders appear in several chips
    assert m["instance_sizes"]["box_side_px_percentiles"]["p50"] > 5
    # no pixel is in two splits
    wins = [(s, im["window"]) for s in ("train", "val", "test")
            for im in json.loads((out / f"{s}.json").read_text())["images"]]
    for i, (sa, a) in enumerate(wins):
        for sb, b in wins[i + 1:]:
            if sa != sb:
                assert abs(a[0] - b[0]) >= 128 or abs(a[1] - b[1]) >= 128, (sa, a, sb, b)


# ---------------------------------------------------------------------------------------------
# both sites of the expert set (issue 21, points 9, 12, 13): Bykovsky (EPSG:32652) and Peel (EPSG:32608)
# ---------------------------------------------------------------------------------------------
BYKOVSKY = "rts-digitization/Bykovsky"
BYKOVSKY_LABELS = "expert01_Bykovsky_digitized.shp"
S2_BANDS = "blue=1,green=2,red=3,nir=7"  # Bykovsky has 10 bands, Peel 7: NIR (B8) is band 7 in both


def _two_sites(tmp_path, data_dir):
    """The two sites' scenes, one folder each (site = folder name), and their expert01 label files."""
    import shutil

    root = tmp_path / "scenes"
    for site, scene in (("Bykovsky", "S2_20210721T035541_20210721T035540_T52WEE.tif"), ("Peel", SCENE)):
        (root / site).mkdir(parents=True)
        shutil.copy(data_dir / "rts-digitization" / site / scene, root / site / scene)
    return root, [data_dir / BYKOVSKY / BYKOVSKY_LABELS, data_dir / PEEL / LABELS]


def test_labels_reprojected_only_onto_the_rasters_they_overlap(tmp_path, rts, data_dir):
    """Each label file is reprojected once per CRS, and only onto the scenes it lies on (issue 21, point 12): the
    expert files of Bykovsky (UTM 52N) and Peel (UTM 8N) each lie on their own site's scene, in its CRS, so
    nothing needs reprojecting; a copy of the Peel labels in lon/lat is reprojected once, onto Peel's CRS."""
    root, (byk, peel) = _two_sites(tmp_path, data_dir)
    lonlat = tmp_path / "peel_lonlat.gpkg"
    gpd.read_file(peel).to_crs("EPSG:4326").to_file(lonlat)
    r = rts("prepare", root, "--labels", byk, "--labels", peel, "--labels", lonlat, "-o", tmp_path / "ds",
            "--bands", S2_BANDS, "--chip-size", 256, "--split", "1,0,0", "--keep-duplicate-labels")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert err.count("reprojecting labels") == 1, err  # 3 files x 2 CRSs read before: 4 reprojections logged
    assert "reprojecting labels peel_lonlat.gpkg from EPSG:4326 to the raster CRS EPSG:32608" in err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["labels"]["reprojected_from"] == "None, None, EPSG:4326"
    # every label still reaches its scene: 6 Bykovsky slumps, Peel's 10 twice (the lon/lat copy kept)
    assert m["labels"]["per_scene_intersecting"] == {"S2_20210721T035541_20210721T035540_T52WEE.tif": 6, SCENE: 20}
    assert m["labels"]["features_per_file"] == {str(byk): 6, str(peel): 10, str(lonlat): 10}
    assert m["counts"]["per_site"]["Peel"]["train"]["instances"] == 20


def test_small_scenes_that_lose_a_split_are_named_with_what_works(tmp_path, rts, data_dir):
    """`--chip-size 128 --split-block 128` on the two 251 px scenes: Bykovsky falls on 4 split blocks, gets no
    training chip and loses 7 of its 9 chips (issue 21, point 9). The warning names the site, what was lost and
    what works for small scenes; the options it suggests then give Bykovsky chips in every split."""
    import re

    root, labels = _two_sites(tmp_path, data_dir)
    args = ["--labels", labels[0], "--labels", labels[1], "--bands", S2_BANDS]
    r = rts("prepare", root, *args, "-o", tmp_path / "ds", "--chip-size", 128, "--split-block", 128)
    assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["counts"]["per_site"]["Bykovsky"]["train"]["images"] == 0  # the case of the issue
    (msg,) = [w for w in m["warnings"] if w.startswith("site Bykovsky")]
    assert "no chip in train" in msg and "7 of its 9 chips were left out" in msg, msg
    assert "251 x 251 px" in msg and "--split-block 128 was raised to 256" in msg, msg
    assert "--split-file" in msg and "S2_20210721T035541_20210721T035540_T52WEE.tif,train" in msg, msg
    (peel,) = [w for w in m["warnings"] if w.startswith("site Peel")]  # all 9 chips in train: none for val, test
    assert "no chip in val or test" in peel and "chips were left out" not in peel, peel
    assert msg in " ".join(r.err.split())  # logged too
    # the options the warning suggests work
    suggested = re.search(r"--chip-size (\d+) --split-block (\d+) --overlap 0", msg)
    assert suggested, msg
    r = rts("prepare", root, *args, "-o", tmp_path / "ds2", "--chip-size", suggested[1], "--split-block",
            suggested[2], "--overlap", 0)
    assert r.code == 0, r.err
    byk = yaml.safe_load((tmp_path / "ds2" / "manifest.yaml").read_text())["counts"]["per_site"]["Bykovsky"]
    assert all(byk[s]["images"] > 0 for s in ("train", "val", "test")), byk
    assert byk["train"]["images"] >= byk["val"]["images"] + byk["test"]["images"], byk


def test_whole_labels_below_min_pixels_are_told_apart_from_pieces_cut_at_chip_edges(tmp_path, rts, data_dir):
    """Peel's smallest slump (24 px of 10 m) lies whole in a chip: with --min-pixels 30 it is dropped as a whole
    label smaller than --min-pixels, not as a piece cut at a chip edge (issue 21, point 13)."""
    scene, labels = data_dir / PEEL / SCENE, data_dir / PEEL / LABELS
    areas_px = sorted(gpd.read_file(labels).area / 100)
    assert areas_px[0] < 30 < areas_px[1]  # one slump smaller than --min-pixels 30, the next one larger
    r = rts("prepare", scene, "--labels", labels, "-o", tmp_path / "ds", "--bands", "sentinel2-7", "--chip-size", 256,
            "--split", "1,0,0", "--min-pixels", 30)  # one chip holds the whole scene: nothing is cut by a chip edge
    assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["dropped"]["labels_below_min_pixels"] == 1
    assert m["dropped"]["labels_clipped_below_min_area"] == 0
    out = " ".join(r.out.split())
    assert "1 label(s) smaller than --min-pixels 30 px dropped" in out, out
    assert len(json.loads((tmp_path / "ds" / "train.json").read_text())["annotations"]) == 9
    assert "chip edges" not in out, out
