"""Band maps, presets, modalities, NDVI and normalization."""

from __future__ import annotations

import numpy as np
import pytest

from rtscli.data.bands import PRESETS, BandMap
from rtscli.data.modalities import BandStats, compose, ndvi, normalize, resolve, resolve_all, valid_mask
from rtscli.data.stats import StatsSampler
from rtscli.errors import RtsError


def test_presets_resolve_as_documented():
    assert BandMap.parse("planetscope4").as_dict() == {"blue": 1, "green": 2, "red": 3, "nir": 4}
    s2 = BandMap.parse("sentinel2-10")
    assert (s2["blue"], s2["green"], s2["red"], s2["nir"], s2["swir2"]) == (1, 2, 3, 7, 10)
    s7 = BandMap.parse("sentinel2-7")
    assert (s7["red"], s7["nir"], s7.max_index()) == (3, 7, 7)
    paper = BandMap.parse("paper")
    assert paper.names == ["red", "green", "blue", "ndvi", "nir", "mask"]
    assert BandMap.parse("PS4") == PRESETS["planetscope4"]


def test_custom_band_map_and_errors():
    bm = BandMap.parse("blue=1, green=2, red=3, nir=4, dem=5")
    assert bm["dem"] == 5 and str(bm) == "blue=1,green=2,red=3,nir=4,dem=5"
    with pytest.raises(RtsError, match="unknown band preset"):
        BandMap.parse("landsat9")
    with pytest.raises(RtsError, match="given twice"):
        BandMap.parse("red=1,red=2")
    with pytest.raises(RtsError, match="named both"):
        BandMap.parse("red=1,nir=1")
    with pytest.raises(RtsError, match="cannot read band entry"):
        BandMap.parse("red=one")
    with pytest.raises(RtsError, match="6 \\(rededge3\\), 7 \\(nir\\) but the raster has 4 bands"):
        BandMap.parse("sentinel2-7").check_against(4, "x.tif")


def test_modalities_from_band_map():
    bm = BandMap.parse("planetscope4")
    assert resolve("rgb", bm).channels == ("red", "green", "blue")
    assert resolve("nir", bm).channels == ("nir",)
    assert resolve("ndvi", bm).channels == ("ndvi",)  # derived from nir and red
    with pytest.raises(RtsError, match="dem"):
        resolve("dem", bm)
    assert resolve("dem", BandMap.parse("blue=1,green=2,red=3,nir=4,dem=5")).channels == ("dem",)
    with pytest.raises(RtsError, match="needs bands nir, red"):
        resolve("ndvi", BandMap.parse("blue=1,green=2"))
    with pytest.raises(RtsError, match="twice"):
        resolve_all(["rgb", "rgb"], bm)


def test_ndvi_is_finite_on_zeros_nodata_and_nan():
    nir = np.array([[0, 0, 3000, np.nan, -5]], np.float32)
    red = np.array([[0, 1e-9, 1000, 100, 5]], np.float32)
    out = ndvi(nir, red)
    assert np.isfinite(out).all()
    assert out[0, 0] == 0 and out[0, 3] == 0 and out[0, 4] == 0  # zero sum / nan / -5+5
    assert out[0, 2] == pytest.approx(0.5)
    valid = np.array([[True, True, False, True, True]])
    assert ndvi(nir, red, valid)[0, 2] == 0
    assert np.all(np.abs(ndvi(np.float32([[1e4]]), np.float32([[-2e4]]))) <= 1)


def test_valid_mask_uses_all_bands_equal_nodata():
    img = np.array([[[0, 0, 5]], [[0, 7, 5]]], np.uint16)  # (2 bands, 1 row, 3 cols)
    bm = BandMap.parse("red=1,nir=2")
    assert valid_mask(img, bm, 0).tolist() == [[False, True, True]]
    assert valid_mask(img, bm, None).tolist() == [[True, True, True]]


def test_compose_builds_modalities_and_repeats_one_channel():
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 3000, (4, 8, 8)).astype(np.float32)
    img[:, 0, 0] = 0  # nodata pixel
    bm = BandMap.parse("planetscope4")
    mods = resolve_all(["rgb", "ndvi", "nir"], bm)
    stats = {n: BandStats(1000.0, 500.0, 0.0, 5000.0) for n in ["red", "green", "blue", "nir"]}
    stats["ndvi"] = BandStats(0.0, 0.5, -1.0, 1.0)
    out, valid = compose(img, bm, mods, stats, nodata=0)
    assert out["rgb"].shape == (3, 8, 8) and out["ndvi"].shape == (3, 8, 8) and out["nir"].shape == (3, 8, 8)
    assert np.allclose(out["rgb"][0], np.where(valid, (img[2] - 1000) / 500, 0))
    assert (out["ndvi"][0] == out["ndvi"][2]).all()
    assert not valid[0, 0] and out["rgb"][:, 0, 0].tolist() == [0, 0, 0]
    out1, _ = compose(img, bm, mods, stats, nodata=0, repeat_to=None)
    assert out1["nir"].shape == (1, 8, 8)


def test_normalize_clips_then_standardizes():
    s = BandStats(mean=10.0, std=2.0, low=0.0, high=20.0)
    assert normalize(np.array([-100, 10, 14, 1000], np.float32), s).tolist() == [-5.0, 0.0, 2.0, 5.0]


def test_stats_sampler_is_robust_and_bounded():
    rng = np.random.default_rng(1)
    sampler = StatsSampler(["x"], per_image=500, max_total=2000, seed=0)
    for _ in range(20):
        x = rng.normal(100, 10, (50, 50)).astype(np.float32)
        x[0, :5] = 1e6  # outliers
        sampler.add({"x": x}, np.ones_like(x, bool))
    assert sampler.count == 2000
    st = sampler.result()["x"]
    assert abs(st.mean - 100) < 2 and 7 < st.std < 12 and st.high < 200
