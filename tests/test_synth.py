"""`rts synth`: deterministic, georeferenced, seamless, with truth that matches the pixels."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from rtscli.data.modalities import ndvi
from rtscli.synth import write_scene
from rtscli.synth.plan import make_plan
from rtscli.synth.render import render
from rtscli.synth.sites import SITES


def test_same_seed_same_data_and_other_seed_differs(tmp_path, rts):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = rts("synth", tmp_path / name, "--chips", 4, "--chip-size", 64, "--scenes", 0, "--seed", seed)
        assert r.code == 0, r.err
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "chips").rglob("*.tif"))
    assert len(files) == 4
    for f in files:
        with rasterio.open(tmp_path / "a" / f) as a, rasterio.open(tmp_path / "b" / f) as b:
            assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
    with rasterio.open(tmp_path / "a" / files[0]) as a, rasterio.open(tmp_path / "c" / files[0]) as c:
        assert not np.array_equal(a.read(), c.read())


def test_chips_in_paper_layout(tmp_path, rts):
    r = rts("synth", tmp_path / "s", "--chips", 8, "--chip-size", 96, "--scenes", 0, "--negatives", 0,
            "--crs", "EPSG:32608")
    assert r.code == 0, r.err
    chips = sorted((tmp_path / "s" / "chips").rglob("*.tif"))
    assert len(chips) == 8 and len({c.parent.name for c in chips}) == 7  # spread over the sites
    for c in chips:
        with rasterio.open(c) as src:
            assert src.count == 6 and src.descriptions == ("red", "green", "blue", "ndvi", "nir", "mask")
            assert src.crs.to_epsg() == 32608 and src.res == (3.0, 3.0)
            data = src.read()
        valid = data[0] != src.nodata
        mask = data[5]
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0  # every positive chip has a slump
        assert np.allclose(data[3][valid], ndvi(data[4], data[0])[valid], atol=1e-5)
        soil = valid & (mask == 1)
        land = valid & (mask == 0) & (data[4] > 0.05)  # not water (NIR ~0.01)
        assert data[3][soil].mean() < data[3][land].mean() - 0.1  # slumps are low in NDVI
    labels = gpd.read_file(tmp_path / "s" / "chips" / "labels.gpkg")
    assert len(labels) >= 8 and labels.crs.to_epsg() == 32608


def test_scene_windows_are_seamless():
    plan = make_plan(300, 260, SITES["herschel"], seed=5)
    whole, v, m = render(plan, 0, 0, 260, 300)
    parts = [render(plan, r, c, 130, 150) for r in (0, 130) for c in (0, 150)]
    top = np.concatenate([parts[0][0], parts[1][0]], axis=2)
    bottom = np.concatenate([parts[2][0], parts[3][0]], axis=2)
    # equal up to float32 rounding (a seam would differ by percents, not 1e-4)
    assert np.allclose(np.concatenate([top, bottom], axis=1), whole, rtol=1e-4, atol=0.1)


def test_scene_truth_matches_pixels_and_has_features(tmp_path):
    tif, gpkg = write_scene(tmp_path / "scene.tif", 768, 1024, seed=2, site_name="tuktoyaktuk", block=300)
    truth = gpd.read_file(gpkg)
    with rasterio.open(tif) as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (1024, 768, 4, "uint16")
        assert src.crs.to_epsg() == 3413 and src.nodata == 0
        img = src.read().astype(np.float32)
        burned = rasterize([(g, 1) for g in truth.geometry], out_shape=(768, 1024), transform=src.transform)
    assert truth.crs.to_epsg() == 3413 and len(truth) >= 3
    assert truth.geometry.is_valid.all()
    assert (truth.area_m2 >= 2000).all() and truth.area_m2.max() < 60e4  # ~0.2 ha (clipped) to tens of ha
    # pairwise: touching allowed, overlapping never
    g = truth.geometry.values
    for i in range(len(g)):
        for j in range(i + 1, len(g)):
            assert g[i].intersection(g[j]).area < 1e-6
    blue, green, red, nir = img
    inside = burned == 1
    ring = (rasterize([(gg.buffer(30).difference(gg.buffer(6)), 1) for gg in truth.geometry],
                      out_shape=(768, 1024), transform=src.transform) == 1) & ~inside
    nd = ndvi(nir, red)
    assert nd[inside].mean() < nd[ring].mean() - 0.15  # slumps stand out in NDVI
    strong = truth[~truth.weak_rgb]
    if len(strong):
        s_in = rasterize([(gg, 1) for gg in strong.geometry], out_shape=(768, 1024), transform=src.transform) == 1
        assert red[s_in].mean() > 1.3 * red[ring].mean()  # and bare soil is bright in RGB
    dist = gpd.read_file(tmp_path / "scene_distractors.gpkg")
    assert set(dist["kind"]) & {"dry_patch", "river_bar", "road", "burnt_patch"}


def test_weak_slumps_show_in_ndvi_more_than_in_rgb():
    plan = make_plan(2048, 2048, SITES["banks"], seed=11, slump_density=6)
    weak = [s for s in plan.slumps if s.weak]
    assert weak
    s = max(weak, key=lambda s: s.geometry.area)
    x0, y0, x1, y1 = (int(v) for v in s.geometry.bounds)
    img, _, mask = render(plan, y0 - 20, x0 - 20, y1 - y0 + 40, x1 - x0 + 40)
    inside = mask == 1
    from rasterio.transform import Affine
    own = rasterize([(s.geometry, 1)], out_shape=mask.shape, transform=Affine(1, 0, x0 - 20, 0, 1, y0 - 20)) == 1
    out = ~inside
    blue, green, red, nir = img
    rgb = (red + green + blue) / 3
    rgb_contrast = abs(rgb[own].mean() - rgb[out].mean()) / rgb[out].mean()
    nd = ndvi(nir, red)
    assert rgb_contrast < 0.25
    assert nd[out].mean() - nd[own].mean() > 0.15


def test_nodata_margin_and_bad_options(tmp_path, rts):
    plan = make_plan(400, 400, SITES["lena"], seed=1, nodata_margin=True)
    img, valid, mask = render(plan, 0, 0, 400, 400)
    assert 0.05 < 1 - valid.mean() < 0.5 and (img[:, ~valid] == 0).all() and not mask[~valid].any()
    assert (img[:, valid] > 0).all()
    r = rts("synth", tmp_path / "x", "--site", "atlantis")
    assert r.code == 2 and "atlantis" in r.err and not (tmp_path / "x").exists()
    r = rts("synth", tmp_path / "y", "--crs", "EPSG:4326", "--chips", 1, "--scenes", 0)
    assert r.code == 2 and "projected CRS" in r.err and not (tmp_path / "y").exists()


def test_slumps_cross_tile_borders_touch_and_span_sizes():
    """Inference tiles will be cut on a grid: the synthetic truth must exercise its borders."""
    plan = make_plan(4096, 4096, SITES["tuktoyaktuk"], seed=3)
    areas_ha = np.array([s.geometry.area * 9 / 1e4 for s in plan.slumps])
    assert len(plan.slumps) > 50
    assert areas_ha.min() < 1.0 and areas_ha.max() > 10.0  # ~0.5 ha to tens of ha
    for tile in (256, 512, 1024):
        crossing = 0
        for s in plan.slumps:
            x0, y0, x1, y1 = s.geometry.bounds
            if int(x0 // tile) != int(x1 // tile) or int(y0 // tile) != int(y1 // tile):
                crossing += 1
        assert crossing >= 5, tile
    touching = [s for s in plan.slumps if s.touching]
    assert len(touching) >= 2
    settings = {s.setting for s in plan.slumps}
    assert {"lake", "river"} <= settings or {"lake", "slope"} <= settings


def test_negative_chips_have_no_slump_and_positive_ones_do(tmp_path):
    from rtscli.synth import write_chips

    paths = write_chips(tmp_path / "chips", 24, size=64, seed=5, negatives=0.5)
    empty = 0
    for p in paths:
        with rasterio.open(p) as src:
            empty += int(src.read(6).max() == 0)
    assert 6 <= empty <= 18  # about half, and every chip was placed (no give-up)


def _inside_and_areas(folder):
    """Every truth polygon of every ``rts synth`` scene (each date, layers ``rts`` and ``gone``, the look-alikes)
    against its scene's footprint: returns rows of (file, layer, share inside, area_m2, true area of the part
    inside, m2)."""
    from shapely.geometry import box

    from rtscli.geometry.measure import geodesic_area_perimeter

    rows = []
    for tif in sorted((folder / "scenes").glob("*.tif")):
        with rasterio.open(tif) as src:
            footprint, crs = box(*src.bounds), src.crs
        for gpkg in (tif.with_suffix(".gpkg"), tif.with_name(tif.stem + "_distractors.gpkg")):
            for layer in gpd.list_layers(gpkg)["name"]:
                t = gpd.read_file(gpkg, layer=layer)
                assert t.crs == crs
                seen = [g.intersection(footprint) for g in t.geometry]
                ground = geodesic_area_perimeter(seen, crs)[0]
                for k, (g, s) in enumerate(zip(t.geometry, seen, strict=True)):
                    area = float(t["area_m2"].iloc[k]) if "area_m2" in t else float("nan")
                    rows.append((gpkg.name, layer, s.area / g.area, area, float(ground[k])))
    return rows


@pytest.mark.parametrize("size", [768, 1024])
@pytest.mark.parametrize("seed", [0, 1])
def test_truth_of_every_date_lies_inside_its_scene(tmp_path, rts, size, seed):
    """Issue 21.2: `rts synth --years 3` put slumps (and the merge) off the image and counted unseen parts in
    area_m2. Every truth polygon of every date (active slumps, stabilized ones, look-alikes) lies in the scene it
    describes, and its area_m2 is the true area of what the scene shows."""
    out = tmp_path / "syn"
    r = rts("synth", out, "--years", 3, "--chips", 2, "--chip-size", 64, "--scenes", 1, "--scene-size", size,
            "--seed", seed)
    assert r.code == 0, r.err
    rows = _inside_and_areas(out)
    slumps = [row for row in rows if row[1] in ("rts", "gone")]
    assert sum(row[1] == "rts" for row in slumps) >= 3 * 2  # every date has slumps
    for name, layer, share, _, _ in rows:
        assert share >= 0.999, (name, layer, share)
    for name, layer, _, area, ground in slumps:
        assert area == pytest.approx(ground, rel=1e-6), (name, layer)
    t2 = gpd.read_file(next((out / "scenes").glob("*_2020-07-15.gpkg")), layer="rts")
    assert "merged" in set(t2["relation"])  # the merge happens on the image
    assert not t2["clipped"].any()  # placed whole inside, not cut by the scene edge


def test_every_site_places_series_slumps_inside_the_scene_with_room_to_grow():
    """Placement, not only clipping: at every site, the slumps of each date of a series (grown, merged, new,
    stabilized) lie whole inside the scene, a margin away from its edge, and still grow along their headwalls."""
    from shapely.geometry import box

    from rtscli.synth import scene_plan
    from rtscli.synth.plan import edge_margin_px
    from rtscli.synth.series import evolve, series_margin_px

    grew = kept = 0
    for name in SITES:
        for seed, size in ((0, 768), (1, 1024)):
            plan = scene_plan(size, size, seed=seed, site_name=name, nodata_margin=False,
                              edge_margin=series_margin_px(size, size, 3, 3.0))
            m = edge_margin_px(size, size)
            inner = box(m, m, size - m, size - m).buffer(1e-6)
            years = evolve(plan, 3, seed)
            assert years[0].active and "merged" in {a.relation for a in years[1].active}, name
            for k, y in enumerate(years):
                for a in y.active + y.gone:
                    assert inner.contains(a.slump.geometry), (name, seed, k, a.track)
                before = {a.track: a.slump.geometry.area for a in years[k - 1].active} if k else {}
                for a in y.active:
                    if a.relation == "continued":
                        kept += 1
                        grew += a.slump.geometry.area > before[a.track] + 1
    assert grew >= 0.97 * kept  # water may stop a few; the scene's edge does not


def test_single_scenes_and_chips_describe_what_they_show(tmp_path, rts):
    """A single-date scene, a scene with a nodata swath edge and the chips' labels: truth only where the pixels
    are, flagged ``clipped`` where the edge of the image (or nodata) cut a slump, with the area of the part shown."""
    from shapely.geometry import box

    from rtscli.geometry.measure import geodesic_area_perimeter

    out = tmp_path / "syn"
    r = rts("synth", out, "--chips", 6, "--chip-size", 64, "--scenes", 1, "--scene-size", 768, "--seed", 0,
            "--site", "tuktoyaktuk", "--negatives", 0, "--nodata-fraction", 0.5)
    assert r.code == 0, r.err
    rows = _inside_and_areas(out)
    assert sum(row[1] == "rts" for row in rows) >= 2
    for name, layer, share, area, ground in rows:
        assert share >= 0.999, (name, layer, share)
        if layer == "rts":
            assert area == pytest.approx(ground, rel=1e-6)
    labels = gpd.read_file(out / "chips" / "labels.gpkg")
    assert labels["clipped"].dtype == bool
    for chip, g, clipped in zip(labels["chip"], labels.geometry, labels["clipped"], strict=True):
        tif = next((out / "chips").rglob(chip))
        with rasterio.open(tif) as src:
            valid = src.read(1) != src.nodata
            shown = box(*src.bounds)
            drawn = rasterize([(g, 1)], out_shape=valid.shape, transform=src.transform).astype(bool)
        assert g.intersection(shown).area / g.area >= 0.999
        assert not (drawn & ~valid).sum() > 0.02 * drawn.sum()  # not over nodata (up to the rasterized edge)
        assert isinstance(clipped, (bool, np.bool_))
    assert labels["area_m2"].to_numpy() == pytest.approx(geodesic_area_perimeter(labels.geometry, labels.crs)[0],
                                                          rel=1e-6)
    # a scene with a nodata swath edge: its truth stops at the edge of the valid pixels, and says so
    tif, gpkg = write_scene(tmp_path / "edge.tif", 768, 768, seed=6, site_name="lena", nodata_margin=True)
    truth = gpd.read_file(gpkg)
    with rasterio.open(tif) as src:
        valid = src.read(1) != 0
        drawn = rasterize([(g, 1) for g in truth.geometry], out_shape=valid.shape, transform=src.transform) == 1
    assert len(truth) and (drawn & ~valid).sum() <= 0.02 * drawn.sum()
    assert truth["clipped"].any() and not truth["clipped"].all()


# ---------------------------------------------------------------------------------------------
# rts synth --realism hard (issue 23, part 2): data as hard as the real data
# ---------------------------------------------------------------------------------------------
def test_realism_hard_chips_are_as_small_faint_elongated_and_few_as_real_slumps(tmp_path, rts):
    """Real 3 m chips: median box side ~37 px (5 % under 11 px), ~2.4 slumps per chip, slumps 0-15 % brighter than
    the tundra in RGB or 10-20 % darker (rtscli.synth.realism), elongated, JPEG-compressed."""
    import yaml

    from rtscli.synth.realism import chip_stats

    out = tmp_path / "hard"
    r = rts("synth", out, "--chips", 24, "--scenes", 0, "--realism", "hard", "--seed", 1, "--dem")
    assert r.code == 0, r.err
    assert yaml.safe_load((out / "synth.yaml").read_text())["realism"] == "hard"
    s = chip_stats(out)
    assert s["positive"] >= 18 and 1.5 <= s["slumps_per_positive_chip"] < 3.5, s  # demo: ~5
    p5, _, median, _, _ = s["box_side_px"]
    assert 28 <= median <= 46 and p5 < 15, s  # pixels at 3 m
    assert s["aspect_p50"] >= 2.0, s  # elongated (demo's horseshoes: ~1.3)
    lo, _, mid, _, hi = s["contrast"]  # mean RGB inside / ring around, percentiles 5-95
    assert 0.95 <= mid <= 1.12 and lo >= 0.7 and hi <= 1.35, s  # demo: median ~1.6
    assert 0.1 <= s["darker"] <= 0.7, s  # some darker (wet)
    assert s["weak_departure"] < s["departure"], s  # weak-RGB slumps fainter still
    labels = gpd.read_file(out / "chips" / "labels.gpkg")
    drops = []
    for tif in sorted((out / "chips").rglob("*.tif")):
        with rasterio.open(tif) as src:
            data, nodata = src.read(), src.nodata
            truth = labels[labels["chip"] == tif.name]
            inside = rasterize([(g, 1) for g in truth.geometry], out_shape=data.shape[1:], transform=src.transform,
                               dtype="uint8") == 1 if len(truth) else np.zeros(data.shape[1:], bool)
        valid = data[0] != nodata
        for b in range(5):  # 8-bit JPEG: at most 256 levels per band (NDVI: from the decoded red and NIR)
            assert len(np.unique(data[b][valid])) <= (256 if b != 3 else valid.sum())
        assert np.allclose(data[3][valid], ndvi(data[4], data[0])[valid], atol=1e-5)
        dem_ok = data[6] != nodata
        if (inside & dem_ok).sum() > 50:  # --dem: each slump a bowl below the tundra, as under demo
            drops.append(np.median(data[6][~inside & dem_ok]) - np.median(data[6][inside & dem_ok]))
    assert len(drops) >= 10 and np.median(drops) > 1.0


def test_realism_hard_is_deterministic_differs_from_demo_and_refuses_unknown_levels(tmp_path, rts):
    for name, level in (("a", "hard"), ("b", "hard"), ("c", "demo")):
        r = rts("synth", tmp_path / name, "--chips", 3, "--chip-size", 64, "--scenes", 0, "--seed", 7,
                "--realism", level)
        assert r.code == 0, r.err
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "chips").rglob("*.tif"))
    assert len(files) == 3
    for f in files:
        with rasterio.open(tmp_path / "a" / f) as a, rasterio.open(tmp_path / "b" / f) as b, \
                rasterio.open(tmp_path / "c" / f) as c:
            assert np.array_equal(a.read(), b.read())
            assert not np.array_equal(a.read(), c.read())
    r = rts("synth", tmp_path / "x", "--realism", "hrad", "--chips", 1, "--scenes", 0)
    assert r.code == 2 and "--realism" in r.err and "'hard'" in r.err and not (tmp_path / "x").exists()


def test_realism_hard_scene_series_truth_and_faint_slumps(tmp_path, rts):
    """Scenes and series under --realism hard: the truth is what the image shows, slumps are faint in RGB but low
    in NDVI, weak-RGB slumps fainter still; the level does not leak into the next run."""
    from shapely.geometry import box

    out = tmp_path / "syn"
    r = rts("synth", out, "--chips", 0, "--scenes", 1, "--scene-size", 768, "--years", 2, "--seed", 3,
            "--site", "herschel", "--realism", "hard")
    assert r.code == 0, r.err
    tifs = sorted((out / "scenes").glob("*.tif"))
    assert len(tifs) == 2
    t2 = gpd.read_file(tifs[1].with_suffix(".gpkg"), layer="rts")
    assert "merged" in set(t2["relation"])
    for tif in tifs:
        truth = gpd.read_file(tif.with_suffix(".gpkg"), layer="rts")
        with rasterio.open(tif) as src:
            blue, green, red, nir = src.read().astype(np.float32)
            shown = box(*src.bounds)
            objects = rasterize([(g, k + 1) for k, g in enumerate(truth.geometry)], out_shape=red.shape,
                                transform=src.transform, dtype="int32")
        assert len(truth) >= 5 and all(g.intersection(shown).area / g.area >= 0.999 for g in truth.geometry)
        nd = ndvi(nir, red)
        inside = objects > 0
        ring = (rasterize([(g.buffer(60).difference(g.buffer(20)), 1) for g in truth.geometry], out_shape=red.shape,
                          transform=src.transform) == 1) & ~inside & (nd > 0.1)
        assert nd[inside].mean() < nd[ring].mean() - 0.1  # NDVI still shows them
        assert red[inside].mean() < 1.3 * red[ring].mean()  # but RGB hardly (demo: > 1.3)
    # the next run without --realism is the demo again (in-process runs share the site overrides)
    r = rts("synth", tmp_path / "demo", "--chips", 2, "--chip-size", 64, "--scenes", 0, "--seed", 3)
    assert r.code == 0, r.err
    from rtscli.synth.sites import site

    assert site("herschel").realism.name == "demo"


def test_real_slump_contrast_lies_in_the_range_hard_draws(data_dir):
    """The tuning of --realism hard against real slumps: the consensus outlines of the test data (one expert per
    site here) against a ring of tundra around them, as rtscli.synth.realism measured on all the experts."""
    from rtscli.synth.realism import HARD, real_contrast

    found = real_contrast(data_dir / "rts-digitization")
    assert set(found) == {"Bykovsky", "Peel"} and sum(len(v) for v in found.values()) >= 10
    ratios = np.concatenate([found["Bykovsky"], found["Peel"]])
    assert HARD.dark[0] - 0.05 <= ratios.min() and ratios.max() <= HARD.bright[1] + 0.05
    assert np.median(found["Bykovsky"]) < 1.0 < np.median(found["Peel"])  # wet and darker; drier and brighter
