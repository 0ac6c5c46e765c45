"""STAC items as scenes (``rts predict item.json``, catalogs, item collections, ``rts ssl``): bands by common name,
assets at two resolutions read together by window, raster:bands scale/offset, the SCL mask asset, the item's id and
date in the outputs, and the refusals.

The items are written by ``rts synth --stac`` as Earth Search writes Sentinel-2 L2A items (one file per band, uint16
stored as reflectance x 10000 + 1000 with raster:bands scale 0.0001 and offset -0.1, SCL at 20 m), with nir at twice
the pixel size of the other bands; the model is the nano bundle of ``test_predict.py`` trained for one step (its
detections are many and arbitrary at ``--min-score 0.01``: any difference in the pixels it sees shows in them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

import test_predict
from rtscli.data.stac import asset_bands, choose_bands, gdal_path, mask_asset
from rtscli.errors import RtsError

bundles = test_predict.bundles


@pytest.fixture(scope="module")
def synth_stac(tmp_path_factory):
    """Two dates of one 256 px synthetic scene with clouds, as scenes and as STAC items (catalog.json)."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("stac") / "syn"
    assert main(["synth", str(root), "--chips", "0", "--scenes", "1", "--scene-size", "256", "--years", "2",
                 "--clouds", "0.25", "--stac", "--seed", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def ndvi_model(bundles):
    """A nano NDVI bundle trained for one step: it reads red (10 m in the items) and nir (20 m)."""
    from rtscli.cli import main

    out = bundles["nano"].parent / "ndvi"
    assert main(["pretrain", "--modality", "ndvi", "--data", str(bundles["nano"].parent / "ds"), "-o", str(out),
                 "--preset", "nano", "--max-steps", "1", "--workers", "0", "--batch-size", "2"]) == 0
    return out


def _items(root: Path) -> list[Path]:
    return sorted((root / "stac").glob("*/*.json"))


def _hand_stack(item: Path, out: Path, resampling: Resampling = Resampling.bilinear) -> Path:
    """The item's bands stacked into one GeoTIFF by hand: blue, green, red at their grid, nir (at twice the pixel
    size) resampled onto it (bilinear, as ``gdalwarp -r bilinear``); the item's raster:bands scale/offset as the
    file's GDAL scale/offset."""
    folder = item.parent
    with rasterio.open(folder / "B02.tif") as ref:
        profile = ref.profile | {"count": 4, "tiled": False}
        grid = (ref.height, ref.width)
        transform, crs = ref.transform, ref.crs
    stack = np.zeros((4, *grid), np.uint16)
    for i, name in enumerate(("B02", "B03", "B04")):
        with rasterio.open(folder / f"{name}.tif") as src:
            stack[i] = src.read(1)
    with rasterio.open(folder / "B08.tif") as src:
        reproject(src.read(1), stack[3], src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=crs, resampling=resampling, src_nodata=0, dst_nodata=0)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(stack)
        dst.scales = (1e-4,) * 4
        dst.offsets = (-0.1,) * 4
        for i, d in enumerate(("blue", "green", "red", "nir"), start=1):
            dst.set_band_description(i, d)
    return out


def test_an_item_with_10_and_20_m_assets_maps_as_its_bands_stacked_by_hand(synth_stac, ndvi_model, rts, tmp_path):
    item = _items(synth_stac)[0]
    with rasterio.open(item.parent / "B04.tif") as a, rasterio.open(item.parent / "B08.tif") as b:
        assert b.res == (2 * a.res[0], 2 * a.res[1])  # two resolutions, as Sentinel-2's 10 m and 20 m
    model = str(ndvi_model)  # NDVI: red at 10 m, nir at 20 m

    def polygons(scene: Path, name: str, *extra: str) -> gpd.GeoDataFrame:
        r = rts("predict", str(scene), "-o", str(tmp_path / name), "--model", model, "--min-score", "0.01", *extra)
        assert r.code == 0, r.err
        return gpd.read_file(tmp_path / name, layer="rts")

    a = polygons(item, "item.gpkg")
    b = polygons(_hand_stack(item, tmp_path / "stacked.tif"), "hand.gpkg", "--bands", "planetscope4")
    assert len(a) > 5 and len(a) == len(b)
    assert all(g.equals(h) for g, h in zip(a.geometry, b.geometry, strict=True))
    assert np.allclose(a["score"], b["score"])
    # the comparison sees the 20 m band: nir taken nearest instead of bilinear changes the map
    c = polygons(_hand_stack(item, tmp_path / "nearest.tif", Resampling.nearest), "nearest.gpkg", "--bands",
                 "planetscope4")
    assert len(c) != len(a) or not all(g.equals(h) for g, h in zip(a.geometry, c.geometry, strict=True))
    # the item names the map and dates it; the hand-made stack knows no date
    assert set(a["scene"]) == {item.stem} and set(a["acquired"]) == {"2019-07-15T12:00:00+00:00"}
    assert "acquired" not in b.columns


def test_a_catalog_maps_each_item_once_with_its_mask_and_date_and_track_takes_the_dates(synth_stac, bundles, rts,
                                                                                      tmp_path):
    out = tmp_path / "maps"
    args = ["predict", str(synth_stac / "stac" / "catalog.json"), "-o", str(out), "--model", str(bundles["nano"]),
            "--min-score", "0.01", "--quality", "auto"]
    r = rts(*args)
    assert r.code == 0, r.err
    names = sorted(p.stem for p in out.glob("*.gpkg"))
    assert names == [p.stem for p in _items(synth_stac)]
    records = json.loads((out / "manifest.json").read_text())["scenes"]
    assert sorted(r["stac_item"] for r in records) == names
    assert sorted(r["acquired"][:10] for r in records) == ["2019-07-15", "2020-07-15"]
    # the SCL asset is the quality mask: the clouded share is not in the footprint, and no slump lies under clouds
    with rasterio.open(_items(synth_stac)[0].parent / "B02.tif") as src:
        whole = src.width * src.height * abs(src.res[0] * src.res[1])
    fp = gpd.read_file(out / f"{names[0]}.gpkg", layer="rts_footprint")
    assert fp.geometry.area.sum() < 0.9 * whole
    # a re-run skips every item (the manifest keys them by their item, not by an asset)
    r = rts(*args)
    assert r.code == 0 and "0 scenes mapped, 2 skipped" in r.out
    # rts track dates each map by its item's datetime (the ``acquired`` field), not by its file name
    renamed = tmp_path / "undated"
    renamed.mkdir()
    for k, n in enumerate(names):
        shutil.copy(out / f"{n}.gpkg", renamed / f"map_{k}.gpkg")
    r = rts("track", str(renamed / "map_0.gpkg"), str(renamed / "map_1.gpkg"), "-o", str(tmp_path / "t.gpkg"))
    assert r.code == 0, r.err
    t = gpd.read_file(tmp_path / "t.gpkg", layer="observations")
    assert sorted(set(t["date"].astype(str).str[:10])) == ["2019-07-15", "2020-07-15"]


def test_an_item_collection_and_a_list_of_items_are_read_as_the_catalog(synth_stac, tmp_path):
    import pystac

    from rtscli.data.scenes import open_item, scene_paths

    items = _items(synth_stac)
    coll = pystac.ItemCollection([pystac.Item.from_file(str(p)) for p in items])
    (synth_stac / "stac" / "items.json").write_text(json.dumps(coll.to_dict()))  # hrefs absolute: inside the folder
    try:
        refs = scene_paths([str(synth_stac / "stac" / "items.json")])
        assert [r.stem for r in refs] == [p.stem for p in items]
        scene, missing, _ = open_item(refs[1], ["blue", "green", "red", "nir"])
        assert scene.item == items[1].stem and scene.date.startswith("2020-07-15") and not missing
        assert scene.resample and len(scene.sources) == 4 and scene.sources[0].path.name != "B08.tif"
    finally:
        (synth_stac / "stac" / "items.json").unlink()
    lst = tmp_path / "items.txt"
    lst.write_text("\n".join(str(p) for p in items) + "\n")
    assert scene_paths([str(lst)]) == items
    assert scene_paths([str(synth_stac / "stac")]) == items  # a folder of items: items, not their band files


def test_an_item_without_the_bands_the_model_needs_names_them_and_its_assets(synth_stac, bundles, rts, tmp_path):
    item = _items(synth_stac)[0]
    data = json.loads(item.read_text())
    for key in ("red", "nir"):
        data["assets"].pop(key)
    bad = item.parent / "no_red.json"
    bad.write_text(json.dumps(data))
    try:
        r = rts("predict", str(bad), "-o", str(tmp_path / "x.gpkg"), "--model", str(bundles["nano"]))
    finally:
        bad.unlink()
    assert r.code == 2 and "Traceback" not in r.err
    assert "red" in r.err and "blue (blue)" in r.err and "scl" in r.err
    assert not (tmp_path / "x.gpkg").exists()


def test_asset_hrefs_outside_the_folder_named_are_refused_and_urls_go_through_gdal(synth_stac, rts, bundles,
                                                                                  tmp_path):
    item = _items(synth_stac)[0]
    data = json.loads(item.read_text())
    data["assets"]["red"]["href"] = "../../../../../../etc/passwd.tif"
    bad = item.parent / "escape.json"
    bad.write_text(json.dumps(data))
    try:
        r = rts("predict", str(bad), "-o", str(tmp_path / "x.gpkg"), "--model", str(bundles["nano"]))
    finally:
        bad.unlink()
    assert r.code == 2 and "leads outside" in r.err and not (tmp_path / "x.gpkg").exists()
    url = gdal_path("https://example.com/a/b/B04.tif", tmp_path, "x", item)
    assert str(url) == "/vsicurl?url=https%3A%2F%2Fexample.com%2Fa%2Fb%2FB04.tif"
    assert str(gdal_path("s3://bucket/key/B04.tif", tmp_path, "x", item)) == "/vsis3/bucket/key/B04.tif"
    with pytest.raises(RtsError, match="scheme"):
        gdal_path("ftp://host/B04.tif", tmp_path, "x", item)


def _item(assets: dict) -> object:
    import datetime

    import pystac

    it = pystac.Item("x", None, None, datetime.datetime(2021, 7, 1), {})
    for k, a in assets.items():
        it.add_asset(k, pystac.Asset.from_dict(a))
    return it


def test_bands_are_chosen_by_common_name_from_the_data_not_the_rendering():
    # PlanetScope: a 4-band analytic asset (blue, green, red, nir) beside an 8-bit visual rendering and the UDM2
    common = [{"name": f"b{i}", "common_name": c} for i, c in enumerate(("blue", "green", "red", "nir"), 1)]
    planet = _item({
        "ortho_visual": {"href": "v.tif", "type": "image/tiff; application=geotiff", "roles": ["visual"],
                         "eo:bands": common[2::-1]},
        "ortho_analytic_4b_sr": {"href": "a.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                                 "eo:bands": common},
        "ortho_udm2": {"href": "u.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}})
    found, missing = choose_bands(planet, ["red", "green", "blue", "nir"])
    assert not missing and {b.asset for b in found} == {"ortho_analytic_4b_sr"}
    assert {b.channel: b.index for b in found} == {"red": 3, "green": 2, "blue": 1, "nir": 4}
    assert mask_asset(planet) == ("ortho_udm2", "udm2")
    # Landsat Collection 2 (STAC 1.1 bands): nir08 stands for nir; scale/offset from raster:scale/raster:offset
    landsat = _item({
        "red": {"href": "LC09_SR_B4.TIF", "type": "image/tiff", "roles": ["data"],
                "bands": [{"name": "SR_B4", "eo:common_name": "red", "raster:scale": 2.75e-05,
                           "raster:offset": -0.2, "nodata": 0}]},
        "nir08": {"href": "LC09_SR_B5.TIF", "type": "image/tiff", "roles": ["data"],
                  "bands": [{"name": "SR_B5", "eo:common_name": "nir08", "raster:scale": 2.75e-05,
                             "raster:offset": -0.2}]},
        "qa_pixel": {"href": "LC09_QA_PIXEL.TIF", "type": "image/tiff", "roles": ["cloud"]}})
    found, missing = choose_bands(landsat, ["red", "nir", "blue"])
    assert missing == ["blue"]
    by = {b.channel: b for b in found}
    assert by["nir"].asset == "nir08" and by["red"].scale == 2.75e-05 and by["red"].offset == -0.2
    assert by["red"].nodata == 0
    assert mask_asset(landsat) == ("qa_pixel", "qa_pixel")
    # Earth Search gives each band as a COG and a JPEG 2000: the GeoTIFF is taken
    s2 = _item({"red-jp2": {"href": "B04.jp2", "type": "image/jp2", "roles": ["data"],
                            "eo:bands": [{"name": "B04", "common_name": "red"}]},
                "red": {"href": "B04.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data"], "eo:bands": [{"name": "B04", "common_name": "red"}]}})
    assert choose_bands(s2, ["red"])[0][0].asset == "red"
    assert asset_bands({"eo:bands": [{"common_name": "red"}], "raster:bands": [{"scale": 0.0001}]})[0]["scale"] == 1e-4


def test_a_json_that_is_not_stac_is_refused_in_one_line(rts, bundles, tmp_path):
    f = tmp_path / "coco.json"
    f.write_text(json.dumps({"images": [], "annotations": []}))
    r = rts("predict", str(f), "-o", str(tmp_path / "x.gpkg"), "--model", str(bundles["nano"]))
    assert r.code == 2 and "not a STAC item" in r.err and "Traceback" not in r.err


def test_ssl_reads_a_catalog(synth_stac, rts, tmp_path):
    r = rts("ssl", str(synth_stac / "stac" / "catalog.json"), "--modality", "rgb", "-o", str(tmp_path / "b"),
            "--preset", "nano", "--max-steps", "1", "--windows", "4", "--batch-size", "2", "--workers", "0",
            "--tile-size", "128", "--stats-windows", "4")
    assert r.code == 0, r.err
    assert (tmp_path / "b" / "config.yaml").exists()


def test_prepare_cuts_chips_from_items_with_their_masks_and_records_the_items(synth_stac, rts, tmp_path):
    import yaml

    items = _items(synth_stac)
    truth = synth_stac / "scenes" / f"{items[0].stem}.gpkg"
    out = tmp_path / "ds"
    r = rts("prepare", str(items[0]), "--labels", str(truth), "--labels-layer", "rts", "-o", str(out),
            "--chip-size", "128", "--quality", "auto")
    assert r.code == 0, r.err
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    src = m["sources"][0]
    assert src["stac_item"] == items[0].stem and src["path"] == str(items[0])
    assert sorted(Path(a).name for a in src["assets"]) == ["B02.tif", "B03.tif", "B04.tif", "B08.tif"]
    assert m["values"]["offset"]["red"] == -0.1 and m["values"]["scale"]["nir"] == 0.0001
    chips = sorted(out.rglob("chips/**/*.tif"))
    assert chips
    with rasterio.open(chips[0]) as c:
        assert c.count >= 4 and c.res == (3.0, 3.0)  # on the 10 m-like grid of blue, green, red: nir resampled
