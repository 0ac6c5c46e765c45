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
