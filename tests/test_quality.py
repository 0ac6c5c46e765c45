"""Quality masks (``--quality``): clouds, shadow, haze and snow are nodata for ``rts predict``, ``rts prepare`` and
``rts track``.

The masks are written here as their providers write them (PlanetScope UDM2: 8 bands uint8, Sentinel-2 L2A SCL:
uint8 classes at 20 m, nodata 0, Landsat Collection 2 QA_PIXEL: uint16 bit flags, fill 1) under the providers' file
names; ``rts predict`` runs with the stand-in detector of ``test_predict.py`` (its ``bundles`` and ``blob``
fixtures), which finds every distinct positive value of a scene as one slump.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from shapely.geometry import box

import test_predict
from conftest import write_tif
from rtscli.geometry.affine import apply
from rtscli.data.quality import QualityRequest, find_mask, open_mask, parse_classes, product_by_name
from test_predict import T, pixels

bundles = test_predict.bundles
blob = test_predict.blob

CRS = rasterio.crs.CRS.from_epsg(32608)
#: UDM2 codes used below: 0 clear, 1 snow, 2 shadow, 3 light haze, 4 heavy haze, 5 cloud, 6 blackfill
CLEAR, SNOW, SHADOW, LIGHT_HAZE, HEAVY_HAZE, CLOUD, BLACKFILL = range(7)


def udm2(codes: np.ndarray) -> np.ndarray:
    """The 8 UDM2 bands (uint8) of an (H, W) array of the codes above, as Planet writes them: one class band set per
    imaged pixel, confidence 0-100, and the legacy UDM (band 8: bit 0 blackfill, bit 1 cloud)."""
    out = np.zeros((8,) + codes.shape, np.uint8)
    imaged = codes != BLACKFILL
    for band, code in ((1, CLEAR), (2, SNOW), (3, SHADOW), (4, LIGHT_HAZE), (5, HEAVY_HAZE), (6, CLOUD)):
        out[band - 1] = codes == code
    out[6] = np.where(imaged, 87, 0)
    out[7] = np.where(imaged, 0, 1) | np.where(codes == CLOUD, 2, 0)
    return out


def write_udm2(path: Path, codes: np.ndarray, transform: Affine = T) -> Path:
    return write_tif(path, udm2(codes), transform=transform)  # no nodata value: UDM2 has none


def invalid(mask, transform=T, shape=None) -> np.ndarray:
    """The mask's invalid pixels on a grid (by default its own)."""
    h, w = shape or (mask.height, mask.width)
    with mask.open() as src:
        return mask.read_invalid(src, transform, CRS, h, w)


# ---------------------------------------------------------------------------------------------
# each encoding, decoded as its specification says
# ---------------------------------------------------------------------------------------------
def test_udm2_clear_band_classes_and_blackfill(tmp_path):
    codes = np.array([[CLEAR, SNOW, SHADOW, LIGHT_HAZE], [HEAVY_HAZE, CLOUD, BLACKFILL, CLEAR]])
    path = write_udm2(tmp_path / "20230715_183012_12_2456_3B_udm2.tif", codes)
    m = open_mask(path, crs=CRS, transform=T, width=4, height=2)
    assert m.product == "udm2" and m.title == "PlanetScope UDM2"
    assert invalid(m).tolist() == [[False, True, True, True], [True, True, True, False]]
    # keep haze (light and heavy): only cloud, shadow, snow and blackfill are invalid
    keep_haze = open_mask(path, crs=CRS, transform=T, width=4, height=2,
                          invalid=parse_classes("cloud,shadow,snow"))
    assert invalid(keep_haze).tolist() == [[False, True, True, False], [False, True, True, False]]
    # suspect data in a band (UDM1 bit 3: green) is no data whatever the classes
    bands = udm2(np.zeros((1, 2), int))
    bands[7, 0, 1] = 0b1000
    m = open_mask(write_tif(tmp_path / "b_udm2.tif", bands, transform=T), crs=CRS, transform=T, width=2, height=1)
    assert invalid(m).tolist() == [[False, True]]


def test_scl_classes(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)  # every SCL class once
    path = write_tif(tmp_path / "T08WNB_20230715T203031_SCL_20m.tif", values, nodata=0)
    m = open_mask(path, crs=CRS, transform=T, width=4, height=3)
    assert m.product == "scl"
    bad = invalid(m).ravel().tolist()
    # invalid: 0 no data, 1 saturated, 3 shadow, 8-9 cloud, 10 cirrus, 11 snow; valid: 2 dark, 4-7 land and water
    assert [v for v in range(12) if bad[v]] == [0, 1, 3, 8, 9, 10, 11]
    dark_too = open_mask(path, crs=CRS, transform=T, width=4, height=3,
                         invalid=parse_classes("cloud,shadow,cirrus,snow,dark"))
    assert [v for v, b in enumerate(invalid(dark_too).ravel()) if b] == [0, 1, 2, 3, 8, 9, 10, 11]


def test_landsat_qa_pixel_bits(tmp_path):
    # values of Landsat 8 Collection 2 QA_PIXEL (USGS LSDS-1619): fill, clear land, clear water, high-confidence
    # cloud, cloud shadow, snow, high-confidence cirrus, dilated cloud
    fill, land, water, cloud, shadow, snow, cirrus, dilated = 1, 21824, 21952, 22280, 23888, 30048, 54596, 21762
    qa = np.array([[fill, land, water, cloud], [shadow, snow, cirrus, dilated]], np.uint16)
    path = write_tif(tmp_path / "LC08_L2SP_034033_20230715_20230721_02_T1_QA_PIXEL.TIF", qa, nodata=1)
    m = open_mask(path, crs=CRS, transform=T, width=4, height=2)
    assert m.product == "qa_pixel"
    assert invalid(m).tolist() == [[True, False, False, True], [True, True, True, True]]
    no_snow = open_mask(path, crs=CRS, transform=T, width=4, height=2,
                        invalid=parse_classes("cloud,shadow,cirrus"))
    assert invalid(no_snow).tolist() == [[True, False, False, True], [True, False, True, True]]


def test_plain_binary_mask_one_is_usable(tmp_path):
    path = write_tif(tmp_path / "usable.tif", np.array([[1, 0], [0, 1]], np.uint8))
    m = open_mask(path, crs=CRS, transform=T, width=2, height=2)
    assert m.product == "binary"
    assert invalid(m).tolist() == [[False, True], [True, False]]


def test_content_alone_tells_the_product_apart(tmp_path):
    """Masks renamed by a user are still read right: by band count, data type and values."""
    cases = {
        "udm2": udm2(np.array([[CLEAR, CLOUD]])),
        "scl": np.array([[4, 9]], np.uint8),
        "qa_pixel": np.array([[21824, 22280]], np.uint16),
        "binary": np.array([[1, 0]], np.uint8),
    }
    for product, data in cases.items():
        path = write_tif(tmp_path / f"renamed_{product[0]}.tif", data, transform=T)
        assert product_by_name(path) is None
        m = open_mask(path, crs=CRS, transform=T, width=2, height=1)
        assert m.product == product
        assert invalid(m).tolist() == [[False, True]], product


# ---------------------------------------------------------------------------------------------
# another grid: 20 m SCL on a 10 m scene, read by window
# ---------------------------------------------------------------------------------------------
class _Reads:
    """A dataset that records the windows read from it."""

    def __init__(self, src):
        self.src, self.windows = src, []

    def __getattr__(self, name):
        return getattr(self.src, name)

    def read(self, *args, **kw):
        self.windows.append(kw.get("window"))
        return self.src.read(*args, **kw)


def test_a_20m_scl_is_read_onto_the_10m_grid_by_window(tmp_path):
    rng = np.random.default_rng(0)
    scl = rng.integers(0, 12, (40, 50)).astype(np.uint8)  # 20 m
    t20 = Affine(20.0, 0.0, T.c, 0.0, -20.0, T.f)
    path = write_tif(tmp_path / "T08WNB_20230715T203031_SCL_20m.tif", scl, transform=t20, nodata=0)
    # the scene: 10 m, cropped 3 columns and 5 rows in (an odd offset), 70 x 90 pixels
    scene_t = Affine(10.0, 0.0, T.c + 30, 0.0, -10.0, T.f - 50)
    m = open_mask(path, crs=CRS, transform=scene_t, width=90, height=70)
    assert not m.same_grid
    # the reference: the whole SCL decoded, each 20 m pixel repeated 2 x 2, cut to the scene
    bad20 = np.isin(scl, [0, 1, 3, 8, 9, 10, 11])
    beyond = np.ones((120, 140), bool)  # past the mask's edge: not covered, so invalid
    beyond[:80, :100] = np.repeat(np.repeat(bad20, 2, axis=0), 2, axis=1)
    ref = beyond[5:75, 3:93]
    with m.open() as src:
        reads = _Reads(src)
        whole = m.read_invalid(reads, scene_t, CRS, 70, 90)
        assert np.array_equal(whole, ref)
        for col, row, w, h in [(0, 0, 16, 16), (17, 9, 31, 20), (64, 48, 26, 22), (1, 1, 1, 1)]:
            reads.windows.clear()
            got = m.read_invalid(reads, scene_t @ Affine.translation(col, row), CRS, h, w)
            assert np.array_equal(got, ref[row:row + h, col:col + w]), (col, row)
            (win,) = reads.windows  # one read, of the window under the tile only
            assert win.width <= w // 2 + 2 and win.height <= h // 2 + 2
    # reaching past the mask's edge (scene rows 75-, columns 97-): not covered, so invalid
    with m.open() as src:
        past = m.read_invalid(src, scene_t @ Affine.translation(80, 60), CRS, 20, 20)
    assert np.array_equal(past, beyond[65:85, 83:103]) and past[15:].all() and not past[:15, :17].all()


# ---------------------------------------------------------------------------------------------
# found beside the scene by the providers' naming
# ---------------------------------------------------------------------------------------------
def test_masks_are_found_by_the_providers_names(tmp_path):
    one = np.zeros((2, 2), np.uint8)
    # PlanetScope: <id>_3B_AnalyticMS_SR_clip.tif beside <id>_3B_udm2_clip.tif
    ps = tmp_path / "ps"
    scene = write_tif(ps / "20230715_183012_12_2456_3B_AnalyticMS_SR_clip.tif", np.zeros((4, 2, 2), np.uint16))
    write_udm2(ps / "20230715_183012_12_2456_3B_udm2.tif", one)  # the unclipped one is not this scene's
    clip = write_udm2(ps / "20230715_183012_12_2456_3B_udm2_clip.tif", one)
    assert find_mask(scene) == clip
    # Sentinel-2 SAFE: a stack in IMG_DATA/R10m, the SCL as JPEG 2000 in IMG_DATA/R20m
    img = tmp_path / "S2A_MSIL2A_20230715T203031_N0509_R142_T08WNB_20230716T001105.SAFE" / "GRANULE" / \
        "L2A_T08WNB_A042000_20230715T203029" / "IMG_DATA"
    scene = write_tif(img / "R10m" / "T08WNB_20230715T203031_stack_10m.tif", np.zeros((4, 2, 2), np.uint16))
    scl = img / "R20m" / "T08WNB_20230715T203031_SCL_20m.jp2"
    scl.parent.mkdir(parents=True)
    with rasterio.open(scl, "w", driver="JP2OpenJPEG", width=1, height=1, count=1, dtype="uint8", crs=CRS,
                       transform=Affine(20.0, 0, T.c, 0, -20.0, T.f), nodata=0, QUALITY=100, REVERSIBLE="YES") as d:
        d.write(np.full((1, 1, 1), 4, np.uint8))
    assert find_mask(scene) == scl
    m = QualityRequest().open_for(scene, CRS, T, 2, 2)
    assert (m.product, m.how) == ("scl", "found by name") and not invalid(m, shape=(2, 2)).any()
    # Sentinel-2 COGs (Element84, Microsoft): SCL.tif in the item's folder
    e84 = tmp_path / "S2B_08WNB_20230715_0_L2A"
    scene = write_tif(e84 / "stack.tif", np.zeros((4, 2, 2), np.uint16))
    e84_scl = write_tif(e84 / "SCL.tif", one, nodata=0)
    assert find_mask(scene) == e84_scl
    # Landsat Collection 2: <product id>_QA_PIXEL.TIF beside the bands
    ls = tmp_path / "ls"
    scene = write_tif(ls / "LC08_L2SP_034033_20230715_20230721_02_T1_SR_stack.tif", np.zeros((4, 2, 2), np.uint16))
    qa = write_tif(ls / "LC08_L2SP_034033_20230715_20230721_02_T1_QA_PIXEL.TIF", one.astype(np.uint16), nodata=1)
    assert find_mask(scene) == qa
    # none: one line that says where it looked and what to do
    lone = write_tif(tmp_path / "lone" / "scene.tif", np.zeros((3, 2, 2), np.float32))
    with pytest.raises(Exception) as err:
        find_mask(lone)
    text = str(err.value)
    assert "no quality mask found" in text and "scene_udm2.tif" in text and "--quality PATH" in text
    # a folder of scenes: the masks are not scenes
    from rtscli.data.scenes import scene_paths

    assert [p.name for p in scene_paths([ps])] == ["20230715_183012_12_2456_3B_AnalyticMS_SR_clip.tif"]
    assert [p.name for p in scene_paths([ls])] == ["LC08_L2SP_034033_20230715_20230721_02_T1_SR_stack.tif"]


# ---------------------------------------------------------------------------------------------
# rts predict: no detection under clouds, the footprint leaves them out, rts track follows the slump
# ---------------------------------------------------------------------------------------------
#: a bright object under a cloud (value 5), a slump half under another cloud (1), a clear slump (2)
CLOUDS = [(110, 170, 190, 280), (40, 90, 120, 150)]  # rows, cols (end-exclusive) of the clouds of the UDM2


def _clouded_scene(folder: Path, under_cloud: float = 5.0) -> Path:
    """A PlanetScope-named 3-band scene with its UDM2: two slumps, one half under a cloud, and a bright object under
    another cloud (``under_cloud``: its value; 0 makes the cloud a hole the detector finds nothing in)."""
    img = np.zeros((3, 200, 300), np.float32)
    img[:, 50:80, 100:140] = 1
    img[:, 10:30, 40:75] = 2
    img[:, 120:160, 200:260] = under_cloud
    scene = write_tif(folder / "20190715_183012_12_2456_3B_AnalyticMS_SR.tif", img)
    codes = np.zeros((200, 300), int)
    for r0, r1, c0, c1 in CLOUDS:
        codes[r0:r1, c0:c1] = CLOUD
    write_udm2(folder / "20190715_183012_12_2456_3B_udm2.tif", codes)
    return scene


def test_no_detection_under_clouds_and_the_footprint_leaves_them_out(tmp_path, rts, blob):
    scene = _clouded_scene(tmp_path / "s")
    r = rts("predict", scene, "-o", tmp_path / "plain.gpkg", "--model", blob.path, "--workers", 0)
    assert r.code == 0, r.err
    plain = gpd.read_file(tmp_path / "plain.gpkg", layer="rts")
    cloud_a = box(*apply(T, 190, 170), *apply(T, 280, 110))
    assert len(plain) == 3 and plain.intersects(cloud_a).sum() == 1  # the bright object under the cloud
    r = rts("predict", scene, "-o", tmp_path / "q.gpkg", "--model", blob.path, "--workers", 0, "--quality", "auto")
    assert r.code == 0, r.err
    said = " ".join(r.err.split())  # the log says which mask it used
    assert "quality mask 20190715_183012_12_2456_3B_udm2.tif (PlanetScope UDM2, found by name" in said
    got = gpd.read_file(tmp_path / "q.gpkg", layer="rts").sort_values("area_m2")
    clouds = [box(*apply(T, c0, r1), *apply(T, c1, r0)) for r0, r1, c0, c1 in CLOUDS]
    assert len(got) == 2 and not any(got.intersection(c).area.sum() > 0 for c in clouds)
    # the slump half under a cloud: its clear part (30 x 20 px), flagged as touching nodata; the clear one is not
    assert pixels(got.area_m2) == [30 * 20, 20 * 35] and got.touches_nodata.tolist() == [True, False]
    fp = gpd.read_file(tmp_path / "q.gpkg", layer="rts_footprint").geometry[0]
    cloud_px = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in CLOUDS)
    assert fp.area == pytest.approx((200 * 300 - cloud_px) * 100) and not any(fp.intersection(c).area for c in clouds)


def test_quality_folder_gives_the_masks_of_many_scenes_kept_apart_from_them(tmp_path, rts, blob):
    # masks in their own folder (as a download tool puts them), found there by the providers' names for each scene
    scenes = tmp_path / "scenes"
    _clouded_scene(tmp_path / "a")
    scenes.mkdir()
    shutil.move(tmp_path / "a" / "20190715_183012_12_2456_3B_AnalyticMS_SR.tif", scenes)
    clear = np.zeros((3, 200, 300), np.float32)
    clear[:, 50:80, 100:140] = 1
    write_tif(scenes / "20190716_183012_12_2456_3B_AnalyticMS_SR.tif", clear)
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.move(tmp_path / "a" / "20190715_183012_12_2456_3B_udm2.tif", masks)
    write_udm2(masks / "20190716_183012_12_2456_3B_udm2.tif", np.zeros((200, 300), int))
    out = tmp_path / "maps"
    r = rts("predict", scenes, "-o", out, "--model", blob.path, "--workers", 0, "--quality", masks)
    assert r.code == 0, r.err
    said = " ".join(r.err.split())
    assert f"found in {masks}" in said
    clouded = gpd.read_file(out / "20190715_183012_12_2456_3B_AnalyticMS_SR.gpkg", layer="rts")
    clouds = [box(*apply(T, c0, r1), *apply(T, c1, r0)) for r0, r1, c0, c1 in CLOUDS]
    assert len(clouded) == 2 and not any(clouded.intersection(c).area.sum() > 0 for c in clouds)
    assert len(gpd.read_file(out / "20190716_183012_12_2456_3B_AnalyticMS_SR.gpkg", layer="rts")) == 1
    # one mask file for many scenes cannot be right: refused before anything runs
    r = rts("predict", scenes, "-o", tmp_path / "m2", "--model", blob.path, "--workers", 0, "--quality",
            masks / "20190716_183012_12_2456_3B_udm2.tif")
    assert r.code == 2 and "names one mask file, and several scenes are given" in r.err


def test_track_does_not_call_a_slump_under_a_cloud_gone(tmp_path, rts, blob):
    clear = tmp_path / "d1"
    img = np.zeros((3, 200, 300), np.float32)
    img[:, 50:80, 100:140], img[:, 10:30, 40:75], img[:, 120:160, 200:260] = 1, 2, 3
    write_tif(clear / "20190715_183012_12_2456_3B_AnalyticMS_SR.tif", img)
    write_udm2(clear / "20190715_183012_12_2456_3B_udm2.tif", np.zeros((200, 300), int))  # all clear
    _clouded_scene(tmp_path / "d2", under_cloud=0.0)  # the slump under the cloud cannot be seen
    shutil.move(tmp_path / "d2" / "20190715_183012_12_2456_3B_AnalyticMS_SR.tif",
                tmp_path / "d2" / "20200715_183012_12_2456_3B_AnalyticMS_SR.tif")
    shutil.move(tmp_path / "d2" / "20190715_183012_12_2456_3B_udm2.tif",
                tmp_path / "d2" / "20200715_183012_12_2456_3B_udm2.tif")
    for quality in ([], ["--quality", "auto"]):
        maps = tmp_path / f"maps{len(quality)}"
        for d in ("d1", "d2"):
            r = rts("predict", tmp_path / d, "-o", maps, "--model", blob.path, "--workers", 0, *quality)
            assert r.code == 0, r.err
        r = rts("track", maps, "-o", maps / "changes.gpkg")
        assert r.code == 0, r.err
        obs = gpd.read_file(maps / "changes.gpkg", layer="observations")
        gone = obs[(obs["date"] == "2020-07-15") & ~obs["present"].astype(bool)]
        if quality:  # not looked at: still followed, never "disappeared"
            assert len(gone) == 0
            tracks = gpd.read_file(maps / "changes.gpkg", layer="tracks")
            assert "disappeared" not in set(tracks["end"])
        else:  # mapped as if clear: the cloud is a hole, and the slump under it "disappeared"
            assert gone["relation"].tolist() == ["disappeared"]


def test_bad_masks_are_refused_in_one_line(tmp_path, rts, blob):
    scene = _clouded_scene(tmp_path / "s")
    out = tmp_path / "x.gpkg"

    def refused(*args) -> str:
        r = rts("predict", scene, "-o", out, "--model", blob.path, "--workers", 0, *args)
        assert r.code == 2 and "Traceback" not in r.err and not out.exists(), r.err
        errors = [line for line in r.err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("rts: error: "), r.err  # one line
        return errors[0]

    odd = write_tif(tmp_path / "odd.tif", np.full((3, 200, 300), 0.5, np.float32))
    assert "is not one of the known encodings (3 bands of float32" in refused("--quality", odd)
    far = write_udm2(tmp_path / "far_udm2.tif", np.zeros((200, 300), int), transform=T @ Affine.translation(1e5, 0))
    assert "does not overlap the scene" in refused("--quality", far)
    wrong = write_tif(tmp_path / "wrong_udm2.tif", np.ones((1, 200, 300), np.uint8))
    assert "its name says PlanetScope UDM2, but it does not hold that encoding (1 band of uint8" in \
        refused("--quality", wrong)
    assert "did you mean 'haze'" in refused("--quality", "auto", "--quality-invalid", "cloud,hase")
    assert "no --quality was given" in refused("--quality-invalid", "cloud")
    (tmp_path / "s" / "20190715_183012_12_2456_3B_udm2.tif").unlink()
    assert "no quality mask found for this scene" in refused("--quality", "auto")


def test_ssl_windows_leave_clouds_out(tmp_path):
    """rts ssl --quality: the random windows' cloud pixels are invalid (never in the loss nor the statistics)."""
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import Modality
    from rtscli.data.windows import RandomWindows
    from rtscli.engine.ssl_inputs import open_scenes

    scene = _clouded_scene(tmp_path / "s")
    (sc,) = open_scenes([str(scene)], BandMap.parse("red=1,green=2,blue=3"), aux=[], scale=None, offset=None,
                        nodata=None, quality=QualityRequest())
    cloudy = np.zeros((200, 300), bool)
    for r0, r1, c0, c1 in CLOUDS:
        cloudy[r0:r1, c0:c1] = True
    ds = RandomWindows([sc], tile=64, modality=Modality("rgb", ("red", "green", "blue")), stats=None,
                       repeat_to=None, n=8, min_valid=0.0)
    seen = 0
    for i in range(8):
        _, col, row = ds.origin(i, 0, 0)
        _, valid, _ = ds.raw(i, 0)
        assert np.array_equal(valid, ~cloudy[row:row + 64, col:col + 64])
        seen += int(cloudy[row:row + 64, col:col + 64].any())
    assert seen  # some windows reach a cloud


# ---------------------------------------------------------------------------------------------
# rts prepare: chips mostly under clouds are left out and counted
# ---------------------------------------------------------------------------------------------
def test_prepare_leaves_out_clouded_chips_and_counts_them(tmp_path, rts):
    data = np.full((4, 128, 256), 800, np.uint16)
    scene = write_tif(tmp_path / "in" / "scene.tif", data, transform=T, nodata=0)
    codes = np.zeros((128, 256), int)
    codes[:, 128:] = CLOUD  # the right half: four chips of 64 px under cloud
    codes[:40, 40:64] = SHADOW  # a quarter of the first chip (rows 0-63, cols 0-63) under shadow
    write_udm2(tmp_path / "in" / "scene_udm2.tif", codes)
    px = lambda c0, r0, c1, r1: box(*apply(T, c0, r1), *apply(T, c1, r0))  # noqa: E731
    labels = gpd.GeoDataFrame(geometry=[px(30, 10, 60, 30), px(150, 10, 170, 30)], crs=CRS)
    labels.to_file(tmp_path / "l.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene.parent, "--labels", tmp_path / "l.gpkg", "-o", ds, "--bands", "planetscope4",
            "--chip-size", 64, "--overlap", 0, "--split", "1,0,0", "--quality", "auto")
    assert r.code == 0, r.err
    assert "4 chips more than half under cloud, shadow, haze or snow (quality mask) left out" in " ".join(r.out.split())
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["dropped"]["quality_chips_dropped"] == 4 and m["quality"]["chips_dropped"] == 4
    coco = json.loads((ds / "train.json").read_text())
    assert len(coco["images"]) == 4 and all(im["window"][0] < 128 for im in coco["images"])
    # the label under the cloud is gone with its chip; the other lost its pixels under the shadow (cols 40-59)
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [30.0, 10.0, 10.0, 20.0] and ann["area"] == 200.0
    first = next(im for im in coco["images"] if im["window"][:2] == [0, 0])
    with rasterio.open(ds / first["file_name"]) as src:
        chip = src.read(1)
        assert (chip[:40, 40:64] == src.nodata).all() and (chip[40:, :] != src.nodata).all()
    # without --quality every chip is kept
    r = rts("prepare", scene.parent, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds2", "--bands",
            "planetscope4", "--chip-size", 64, "--overlap", 0, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert len(json.loads((tmp_path / "ds2" / "train.json").read_text())["images"]) == 8


# ---------------------------------------------------------------------------------------------
# rts synth: clouds and snow with their masks, under the providers' names and encodings
# ---------------------------------------------------------------------------------------------
def test_synth_clouds_and_snow_with_udm2_and_scl(tmp_path, rts):
    out = tmp_path / "syn"
    r = rts("synth", out, "--chips", 0, "--scenes", 1, "--scene-size", 256, "--site", "herschel", "--seed", 2,
            "--resolution", 10, "--clouds", 0.2, "--snow", 0.05)
    assert r.code == 0, r.err
    scenes = out / "scenes"
    scene = scenes / "scene_00_herschel.tif"
    with rasterio.open(scenes / "scene_00_herschel_udm2.tif") as u:
        assert (u.count, u.dtypes[0], u.nodata, u.res) == (8, "uint8", None, (10.0, 10.0))
        bands = u.read()
    imaged = bands[7] & 1 == 0  # band 8 bit 0: blackfill (a nodata swath edge)
    assert (bands[:6].sum(axis=0) == imaged).all()  # one class per imaged pixel
    assert 0.15 <= bands[5].mean() <= 0.35 and bands[1].mean() > 0.01 and bands[2].any() and bands[3].any()
    with rasterio.open(scenes / "scene_00_herschel_SCL_20m.tif") as s:
        assert (s.count, s.dtypes[0], s.nodata, s.res, s.shape) == (1, "uint8", 0.0, (20.0, 20.0), (128, 128))
        scl = s.read(1)
    assert set(np.unique(scl)) <= set(range(12)) and {9, 11, 3} <= set(np.unique(scl).tolist())
    truth = gpd.read_file(scenes / "scene_00_herschel.gpkg", layer="quality")
    slumps = gpd.read_file(scenes / "scene_00_herschel.gpkg", layer="rts")
    assert {"cloud", "haze", "shadow", "snow"} <= set(truth["kind"])
    assert slumps.intersects(truth[truth["kind"] == "cloud"].union_all()).any()  # some slumps under a cloud
    with rasterio.open(scene) as src:
        q = QualityRequest().open_for(scene, src.crs, src.transform, src.width, src.height)
    assert q.product == "udm2" and q.share == pytest.approx(1 - bands[0].mean(), abs=0.02)
    # a folder of scenes: the masks are not scenes; without --clouds nothing of it is written
    from rtscli.data.scenes import scene_paths

    assert [p.name for p in scene_paths([scenes])] == ["scene_00_herschel.tif"]
    r = rts("synth", tmp_path / "clear", "--chips", 0, "--scenes", 1, "--scene-size", 64, "--seed", 2)
    assert r.code == 0 and sorted(p.name for p in (tmp_path / "clear" / "scenes").iterdir()) == [
        "scene_00_yamal_gydan.gpkg", "scene_00_yamal_gydan.tif", "scene_00_yamal_gydan_distractors.gpkg"]
