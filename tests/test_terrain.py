"""Terrain from a DEM (``--dem``): slope, relief and hillshade against surfaces whose values are known, read by window
in any CRS without seams, voids and feet, the refusals, and the path from ``rts synth --dem`` through ``rts prepare``,
``rts pretrain``, ``rts predict`` and ``rts ssl``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

import test_predict
from conftest import write_tif
from rtscli.data.terrain import Dem, TerrainSettings, derivatives
from rtscli.errors import RtsError

bundles = test_predict.bundles

UTM = CRS.from_epsg(32608)
POLAR = CRS.from_epsg(3413)  # ArcticDEM's
LON, LAT = -133.0, 69.4  # near Tuktoyaktuk


def _surface(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elevations (m) of a place, as a function of map coordinates in EPSG:3413: a tilted plane with hills and a
    bowl 6 m deep (a slump's scar) with a steep rim."""
    x0, y0 = Transformer.from_crs(4326, 3413, always_xy=True).transform(LON, LAT)
    r = np.hypot(x - x0, y - y0)
    bowl = 6.0 * np.clip((60.0 - r) / 8.0, 0, 1)
    return (100 + 0.02 * (x - x0) + 8 * np.sin((x - x0) / 300.0) * np.cos((y - y0) / 250.0) - bowl).astype(np.float32)


def _polar_dem(path: Path, res: float = 10.0, n: int = 160, units: str | None = None, factor: float = 1.0) -> Path:
    x0, y0 = Transformer.from_crs(4326, 3413, always_xy=True).transform(LON, LAT)
    t = Affine(res, 0, x0 - n * res / 2, 0, -res, y0 + n * res / 2)
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    x, y = t.c + cols * res, t.f - rows * res
    z = _surface(x, y) / factor
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs=POLAR,
                       transform=t, nodata=-9999.0) as dst:
        dst.write(z, 1)
        if units:
            dst.units = (units,)
    return path


def _utm_grid(res: float = 3.0, n: int = 200) -> tuple[Affine, int]:
    x0, y0 = Transformer.from_crs(4326, 32608, always_xy=True).transform(LON, LAT)
    return Affine(res, 0, round(x0) - n * res / 2, 0, -res, round(y0) + n * res / 2), n


def test_slope_relief_and_hillshade_of_known_surfaces():
    s = TerrainSettings(radius_m=30.0)
    m = s.margin(3.0)
    yy, xx = np.mgrid[0:20 + 2 * m, 0:20 + 2 * m].astype(np.float32)
    plane = (0.1 * xx * 3.0).astype(np.float32)  # rises 0.1 m per m eastward: 5.71°, faces west
    d = derivatives(plane, (3.0, 3.0), s, m)
    assert d["slope"].shape == (20, 20)
    assert np.allclose(d["slope"], math.degrees(math.atan(0.1)), atol=1e-4)
    assert np.allclose(d["relief"], 0.0, atol=1e-3)  # a plane is its own mean
    zen, az, sl = math.radians(45), math.radians(135), math.atan(0.1)
    want = math.cos(zen) * math.cos(sl) + math.sin(zen) * math.sin(sl) * math.cos(az - math.pi)
    assert np.allclose(d["hillshade"], want, atol=1e-5) and want > math.cos(zen)  # lit from the north-west
    pit = plane.copy()
    pit[m + 10, m + 10] -= 5.0  # a pit 5 m deep: the relief there is about -5 m
    assert d["relief"][10, 10] == pytest.approx(0, abs=1e-3)
    assert derivatives(pit, (3.0, 3.0), s, m)["relief"][10, 10] == pytest.approx(-5.0, abs=0.1)
    void = plane.copy()
    void[m + 5, m + 5] = np.nan  # no value is made up from a void: its own pixel, its 3x3, its relief disc
    v = derivatives(void, (3.0, 3.0), s, m)
    assert np.isnan(v["slope"][5, 5]) and np.isnan(v["slope"][4:7, 4:7]).all() and np.isfinite(v["slope"][10, 10])
    assert np.isnan(v["relief"][5, 15]) and np.isnan(v["hillshade"][5, 5])


def test_a_polar_10m_dem_read_onto_a_utm_3m_scene_by_window_equals_it_reprojected_first_without_seams(tmp_path):
    dem = Dem(_polar_dem(tmp_path / "arcticdem_10m.tif"), TerrainSettings(radius_m=30.0))
    t, n = _utm_grid()
    # gdalwarp -r bilinear beforehand: the DEM on the scene's grid (with the margin), then the derivatives
    m = dem.settings.margin(3.0)
    big = np.full((n + 2 * m, n + 2 * m), np.nan, np.float32)
    with rasterio.open(dem.path) as src:
        reproject(rasterio.band(src, 1), big, dst_transform=t @ Affine.translation(-m, -m), dst_crs=UTM,
                  resampling=Resampling.bilinear, dst_nodata=np.nan)
    whole = derivatives(big, (3.0, 3.0), dem.settings, m)
    # by window, as rts predict reads tiles: 4 x 4 tiles of 50 px
    tiles = {k: np.full((n, n), np.nan, np.float32) for k in whole}
    for r in range(0, n, 50):
        for c in range(0, n, 50):
            for k, v in dem.read(UTM, t, c, r, 50, 50).items():
                tiles[k][r:r + 50, c:c + 50] = v
    assert np.isfinite(tiles["slope"]).all()
    assert np.nanmax(np.abs(tiles["slope"] - whole["slope"])) < 0.05  # degrees
    assert np.nanmax(np.abs(tiles["relief"] - whole["relief"])) < 0.02  # metres
    assert np.nanmax(np.abs(tiles["hillshade"] - whole["hillshade"])) < 0.002
    # the bowl's rim is steep and its floor lies below its surroundings
    assert tiles["slope"].max() > 25 and tiles["relief"].min() < -1.5


def test_feet_voids_and_what_a_dem_cannot_give(tmp_path):
    t, n = _utm_grid()
    metres = Dem(_polar_dem(tmp_path / "m.tif"), TerrainSettings(radius_m=30.0)).read(UTM, t, 0, 0, n, n)
    feet = Dem(_polar_dem(tmp_path / "ft.tif", units="ft", factor=0.3048), TerrainSettings(radius_m=30.0))
    assert feet.factor == 0.3048
    assert np.allclose(feet.read(UTM, t, 0, 0, n, n)["slope"], metres["slope"], atol=0.01)
    nocrs = write_tif(tmp_path / "nocrs.tif", np.ones((1, 10, 10), np.float32), crs=None)
    with pytest.raises(RtsError, match="has no CRS"):
        Dem(nocrs)
    void = write_tif(tmp_path / "void.tif", np.full((1, 10, 10), -9999, np.float32), nodata=-9999)
    with pytest.raises(RtsError, match="void everywhere"):
        Dem(void)
    odd = _polar_dem(tmp_path / "odd.tif", units="furlong")
    with pytest.raises(RtsError, match="furlong"):
        Dem(odd)
    far = Dem(_polar_dem(tmp_path / "far.tif", n=20))  # 200 m of DEM under a 600 m scene
    with pytest.raises(RtsError, match=r"covers \d+% of scene"):
        far.check_covers(UTM, t, n, n, "x")


@pytest.fixture(scope="module")
def synth_dem(tmp_path_factory):
    """A 256 px synthetic scene with its DEM, a dataset made with --dem and a nano terrain model (2 steps)."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("terrain")
    assert main(["synth", str(root / "syn"), "--chips", "0", "--scenes", "2", "--scene-size", "256", "--dem",
                 "--seed", "2"]) == 0
    scene = sorted((root / "syn" / "scenes").glob("scene_00_*.tif"))[0]
    assert main(["prepare", str(scene), "--labels", str(scene.with_suffix(".gpkg")), "--dem",
                 str(root / "syn" / "dem"), "-o", str(root / "ds"), "--chip-size", "128"]) == 0
    assert main(["pretrain", "--modality", "terrain", "--data", str(root / "ds"), "-o", str(root / "terrain"),
                 "--preset", "nano", "--max-steps", "2", "--workers", "0", "--batch-size", "2", "--tile-size",
                 "128"]) == 0
    return root, scene


def test_synth_dem_carves_slumps_and_keeps_look_alikes_flat(synth_dem):
    import geopandas as gpd
    from rasterio.features import rasterize

    root, scene = synth_dem
    dem = Dem(root / "syn" / "dem" / f"{scene.stem}_dem.tif")
    with rasterio.open(scene) as s:
        ch = dem.read(s.crs, s.transform, 0, 0, s.width, s.height)
        shape, t = (s.height, s.width), s.transform
    slumps = gpd.read_file(scene.with_suffix(".gpkg"), layer="rts")
    look = gpd.read_file(scene.with_name(f"{scene.stem}_distractors.gpkg"))
    inside = rasterize(slumps.geometry, out_shape=shape, transform=t) > 0
    assert np.nanpercentile(ch["slope"][inside], 90) > 3 * np.nanpercentile(ch["slope"][~inside], 90)
    assert np.nanmean(ch["relief"][inside]) < -0.5  # bowls lie below their surroundings
    if len(look):
        lk = (rasterize(look.geometry, out_shape=shape, transform=t) > 0) & ~inside
        if lk.any():
            assert np.nanpercentile(ch["slope"][lk], 90) < np.nanpercentile(ch["slope"][inside], 90) / 2
    with rasterio.open(root / "syn" / "dem" / "scene_01_lena_dem.tif") as d:  # every third scene has voids
        assert (d.read(1) == d.nodata).any()


def test_prepare_predict_and_ssl_with_a_dem(synth_dem, rts, tmp_path):
    root, scene = synth_dem
    m = yaml.safe_load((root / "ds" / "manifest.yaml").read_text())
    assert m["terrain"]["radius_m"] == 100.0 and m["terrain"]["units"]["slope"] == "degrees"
    assert m["modalities"]["terrain"] == ["slope", "relief", "hillshade"]
    cfg = yaml.safe_load((root / "terrain" / "config.yaml").read_text())
    assert cfg["terrain"]["channels"] == ["slope", "relief", "hillshade"]
    dem = root / "syn" / "dem" / f"{scene.stem}_dem.tif"
    out = tmp_path / "p.gpkg"
    r = rts("predict", str(scene), "--model", str(root / "terrain"), "--dem", str(dem), "-o", str(out),
            "--min-score", "0.01")
    assert r.code == 0, r.err
    # a terrain model without --dem, and --dem for a model without terrain: one line each, nothing written
    r = rts("predict", str(scene), "--model", str(root / "terrain"), "-o", str(tmp_path / "x.gpkg"))
    assert r.code == 2 and "no --dem was given" in r.err and not (tmp_path / "x.gpkg").exists()
    # a DEM that does not reach the scene: how much it covers, exit 2
    far = _polar_dem(tmp_path / "far.tif", n=20)
    r = rts("predict", str(scene), "--model", str(root / "terrain"), "--dem", str(far), "-o", str(tmp_path / "y.gpkg"))
    assert r.code == 2 and "covers 0% of scene" in r.err and not (tmp_path / "y.gpkg").exists()
    # rts ssl on a DEM alone
    r = rts("ssl", str(dem), "--modality", "terrain", "-o", str(tmp_path / "ssl"), "--preset", "nano", "--max-steps",
            "1", "--windows", "2", "--batch-size", "2", "--workers", "0", "--tile-size", "128", "--stats-windows", "2")
    assert r.code == 0, r.err
    assert yaml.safe_load((tmp_path / "ssl" / "config.yaml").read_text())["terrain"]["radius_m"] == 100.0


def test_a_dem_for_a_model_without_terrain_is_refused(bundles, rts, tmp_path):
    img = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    t, _ = _utm_grid()
    scene = write_tif(tmp_path / "s.tif", img, crs=UTM, transform=t)
    r = rts("predict", str(scene), "--model", str(bundles["nano"]), "--dem", str(_polar_dem(tmp_path / "d.tif")),
            "-o", str(tmp_path / "x.gpkg"))
    assert r.code == 2 and "trained without terrain" in r.err and not (tmp_path / "x.gpkg").exists()


def _chip_channels(ds: Path, names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``{chip file name: {channel: (H, W) float32, NaN where nodata}}`` of a prepared dataset."""
    bm = yaml.safe_load((ds / "manifest.yaml").read_text())["band_map"]
    out = {}
    for p in sorted((ds / "chips").rglob("*.tif")):
        with rasterio.open(p) as src:
            x = src.read().astype(np.float32)
            if src.nodata is not None:
                x[x == src.nodata] = np.nan
        out[p.name] = {n: x[bm[n] - 1] for n in names}
    return out


def test_a_dem_band_gives_the_terrain_of_the_same_dem_given_with_dem_and_keeps_the_edges(synth_dem, rts, tmp_path):
    """An aligned ``--aux dem=`` raster gives, away from the scene's edge, exactly the terrain ``--dem`` gives (same
    margin, no seam between chips); near the edge it repeats the edge's heights instead of leaving nodata."""
    root, scene = synth_dem
    dem = root / "syn" / "dem" / f"{scene.stem}_dem.tif"
    r = rts("prepare", str(scene), "--labels", str(scene.with_suffix(".gpkg")), "--aux", f"dem={dem}", "-o",
            str(tmp_path / "ds"), "--chip-size", "128")
    assert r.code == 0, r.err
    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["terrain"]["band"] == "dem" and m["modalities"]["terrain"] == ["slope", "relief", "hillshade"]
    band = _chip_channels(tmp_path / "ds", ("slope", "relief", "hillshade"))
    given = _chip_channels(root / "ds", ("slope", "relief", "hillshade"))
    assert band.keys() == given.keys() and len(band) >= 4
    both = more = 0
    for name in band:
        for ch in ("slope", "relief", "hillshade"):
            a, b = band[name][ch], given[name][ch]
            ok = np.isfinite(b)
            both += int(ok.sum())
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-5, atol=1e-4)
            more += int((np.isfinite(a) & ~ok).sum())
    assert both > 10_000 and more > 10_000  # the edges: nodata from --dem (beyond the DEM), repeated from the band
    r = rts("prepare", str(scene), "--labels", str(scene.with_suffix(".gpkg")), "--aux", f"dem={dem}", "--dem",
            str(dem), "-o", str(tmp_path / "both"), "--chip-size", "128")
    assert r.code == 2 and "both give the heights" in r.err and not (tmp_path / "both").exists()


def test_synth_chips_with_dem_carry_heights_that_prepare_turns_into_terrain(rts, tmp_path):
    r = rts("synth", str(tmp_path / "syn"), "--chips", "6", "--scenes", "0", "--dem", "--seed", "4")
    assert r.code == 0, r.err
    chips = sorted((tmp_path / "syn" / "chips").rglob("*.tif"), key=lambda p: p.stem[-5:])
    with rasterio.open(chips[1]) as src:  # every third chip (1, 4, ...) has a void patch
        assert src.count == 7 and src.descriptions[6] == "dem"
        assert (src.read(7) == src.nodata).sum() >= (256 // 6) ** 2
    r = rts("prepare", str(tmp_path / "syn" / "chips"), "--bands", "paper-dem", "--split", "1,0,0", "-o",
            str(tmp_path / "ds"))
    assert r.code == 0, r.err
    ch = _chip_channels(tmp_path / "ds", ("slope", "relief", "hillshade"))
    assert all(np.isfinite(v["slope"]).mean() > 0.5 for v in ch.values())  # chip edges keep their terrain
    # the heights give slumps their headwall: steeper within the truth than outside it
    import geopandas as gpd
    from rasterio.features import rasterize

    truth = gpd.read_file(tmp_path / "syn" / "chips" / "labels.gpkg")
    steeper = 0
    for p in chips:
        inside_chip = truth[truth.chip == p.name]
        if not len(inside_chip):
            continue
        with rasterio.open(p) as src:
            inside = rasterize(inside_chip.geometry, out_shape=(src.height, src.width), transform=src.transform) > 0
        s = ch[p.name]["slope"]
        steeper += int(np.nanpercentile(s[inside], 90) > 2 * np.nanpercentile(s[~inside], 90))
    assert steeper >= 4
