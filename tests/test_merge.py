"""rts merge: per-scene maps of one period, written by hand with known answers, merged into one regional map."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

UTM = "EPSG:32608"  # WGS 84 / UTM 8N, the site near 68 N, 135 W
X0, Y0 = 470_000.0, 7_550_000.0


def b(x0, y0, x1, y1):
    """A box in metres from the site's corner (UTM 8N)."""
    return box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)


# three scenes of July 2021, each 3 x 3 km, overlapping: all three see x 2000..3000
FOOTPRINTS = {"PS_20210705_s1": b(0, 0, 3000, 3000),
              "PS_20210712_s2": b(1000, 0, 4000, 3000).difference(b(1400, 400, 1700, 700)),  # a cloud over D
              "PS_20210720_s3": b(2000, 0, 5000, 3000)}
S1, S2, S3 = FOOTPRINTS
A = (2200, 1000, 2400, 1150)  # in all three, seen by all three
B = (2600, 2000, 2750, 2100)  # in all three, seen by two
C = (300, 300, 450, 400)  # only in scene 1
D = (1500, 500, 1600, 600)  # in scene 1, and under scene 2's cloud
E = (2900, 1500, 3100, 1600)  # across scene 1's east edge: seen cut there, whole in 2 and 3
F = (3500, 500, 3600, 600)  # next to clouds in both scenes that see it
G = (1200, 2500, 1300, 2600)  # a false positive of scene 2 where scene 1 also looked
H = (4002, 2400, 4110, 2500)  # seen whole by scene 3, and as a sliver cut by scene 2's edge, 2 m off (misregistered)

#: per scene: (box, score, touches_edge, touches_nodata)
DETECTIONS = {
    S1: [(A, 0.90, False, False), (B, 0.85, False, False), (C, 0.80, False, False), (D, 0.75, False, False),
         ((2900, 1500, 3000, 1600), 0.95, True, False)],
    S2: [((2202, 1000, 2402, 1150), 0.70, False, False), ((2900, 1500, 3100, 1600), 0.70, False, False),
         ((3500, 500, 3590, 600), 0.90, False, True), (G, 0.60, False, False), ((3990, 2400, 4000, 2500), 0.8, True,
                                                                                  False)],
    S3: [((2198, 1002, 2398, 1152), 0.80, False, False), ((2600, 2000, 2750, 2100), 0.75, False, False),
         ((2901, 1500, 3100, 1601), 0.80, False, False), ((3505, 500, 3600, 600), 0.55, False, True),
         (H, 0.70, False, False)],
}


def write_scene(folder: Path, scene: str, *, crs: str = UTM, footprint: bool = True, shift=(0.0, 0.0),
                grow: float = 0.0) -> Path:
    """One rts predict output: layer rts (score, scene, model, flags) and, unless told, layer rts_footprint."""
    from shapely.affinity import translate

    rows = DETECTIONS[scene]
    geoms = [translate(b(x0, y0, x1 + (grow if abs(x0 - A[0]) < 10 else 0), y1), *shift)
             for (x0, y0, x1, y1), *_ in rows]
    g = gpd.GeoDataFrame({"id": range(1, len(rows) + 1), "score": [r[1] for r in rows], "scene": scene,
                          "model": "nano@12345678", "touches_edge": [r[2] for r in rows],
                          "touches_nodata": [r[3] for r in rows]}, geometry=geoms, crs=UTM).to_crs(crs)
    path = folder / f"{scene}.gpkg"
    folder.mkdir(parents=True, exist_ok=True)
    g.to_file(path, layer="rts", driver="GPKG")
    if footprint:
        fp = gpd.GeoDataFrame({"scene": [scene]}, geometry=[translate(FOOTPRINTS[scene], *shift)], crs=UTM)
        fp.to_crs(crs).to_file(path, layer="rts_footprint", driver="GPKG")
    return path


def scenes(folder: Path, **kw) -> Path:
    for s in FOOTPRINTS:
        write_scene(folder, s, **kw)
    return folder


def at(merged, xy_box):
    """The merged slump over the centre of ``xy_box`` (site metres)."""
    from shapely.geometry import Point

    x0, y0, x1, y1 = xy_box
    p = Point(X0 + (x0 + x1) / 2, Y0 + (y0 + y1) / 2)
    m = merged.to_crs(UTM)
    hit = m[m.geometry.contains(p)]
    assert len(hit) == 1, f"{len(hit)} slumps over {xy_box}"
    return hit.iloc[0]


def read_parquet(path: Path):
    return gpd.read_parquet(path)


@pytest.fixture
def three(tmp_path):
    return scenes(tmp_path / "maps")


def test_each_slump_once_with_its_counts(rts, three, tmp_path):
    out = tmp_path / "region_2021.parquet"
    r = rts("merge", three, "-o", out)
    assert r.code == 0, r.err
    m = read_parquet(out)
    assert len(m) == 8  # A..H, each once
    assert m.crs.to_epsg() == 32608
    a = at(m, A)
    assert (a.n_observed, a.n_covered, a.detection_rate) == (3, 3, 1.0)
    assert a.first_date == "2021-07-05" and a.last_date == "2021-07-20"
    assert a.scenes == f"{S1},{S2},{S3}"
    assert a.score == pytest.approx(0.9) and a.best_scene == S1 and a.date == "2021-07-05"
    assert a.area_m2 == pytest.approx(200 * 150 / 0.9996 ** 2, rel=2e-3)  # true area: UTM shrinks 0.9996 near its CM
    bb = at(m, B)  # seen by scenes 1 and 3, scene 2 looked there too
    assert (bb.n_observed, bb.n_covered) == (2, 3) and bb.detection_rate == pytest.approx(2 / 3, abs=1e-4)
    c = at(m, C)
    assert (c.n_observed, c.n_covered, c.detection_rate) == (1, 1, 1.0)
    g = at(m, G)  # the false positive: one of the two scenes that looked saw it
    assert (g.n_observed, g.n_covered, g.detection_rate) == (1, 2, 0.5)
    h = at(m, H)  # the sliver of scene 2 shares no area with scene 3's view, yet it is the same slump
    assert (h.n_observed, h.best_scene, h.partial_only) == (2, S3, False)
    assert h.geometry.equals(b(*H))
    assert "8 slumps from 15 polygons of 3 maps" in " ".join(r.out.split())


def test_a_footprint_that_does_not_cover_the_slump_does_not_count(rts, three, tmp_path):
    out = tmp_path / "region.parquet"
    assert rts("merge", three, "-o", out).code == 0
    d = at(read_parquet(out), D)  # scene 2's file reaches D, but its valid footprint (cloud) does not
    assert (d.n_observed, d.n_covered, d.detection_rate) == (1, 1, 1.0)


def test_partial_views_flagged_and_the_best_viewed_outline_kept(rts, three, tmp_path):
    out = tmp_path / "region.parquet"
    assert rts("merge", three, "-o", out).code == 0
    m = read_parquet(out)
    e = at(m, E)  # cut at scene 1's edge (score 0.95), whole in scenes 2 (0.70) and 3 (0.80)
    assert e.n_observed == 3 and not e.partial_only
    assert e.best_scene == S3 and not e.touches_edge and e.outline_score == pytest.approx(0.8)
    assert e.score == pytest.approx(0.95)  # the best score of any view
    assert e.geometry.equals(b(2901, 1500, 3100, 1601))  # scene 3's own outline, untouched
    f = at(m, F)  # next to clouds in both scenes that saw it
    assert f.partial_only and f.touches_nodata and f.n_observed == 2
    assert f.outline_score == pytest.approx(0.9)
    assert int(m.partial_only.sum()) == 1
    assert "1 seen only at a scene edge or next to nodata" in " ".join(rts("merge", three, "-o", out,
                                                                            "--overwrite").out.split())


def test_maps_in_two_crss_are_reprojected(rts, tmp_path):
    folder = tmp_path / "maps"
    write_scene(folder, S1)
    write_scene(folder, S2)
    write_scene(folder, S3, crs="EPSG:32607")  # the neighbouring UTM zone
    out = tmp_path / "region.gpkg"
    r = rts("merge", folder, "-o", out)
    assert r.code == 0, r.err
    assert "2 CRSs" in r.err and "EPSG:32607" in " ".join(r.err.split())  # logged, with the CRS chosen
    m = gpd.read_file(out, layer="rts")
    assert m.crs.to_epsg() == 32608 and len(m) == 8
    a = at(m, A)
    assert (a.n_observed, a.n_covered) == (3, 3)
    e = at(m, E)  # scene 3's outline, taken from UTM 7N to 8N: the same place to the millimetre
    assert e.best_scene == S3
    assert e.geometry.symmetric_difference(b(2901, 1500, 3100, 1601)).area < 0.01


def test_maps_without_footprint_merge_with_unknown_coverage(rts, tmp_path):
    folder = scenes(tmp_path / "maps", footprint=False)
    out = tmp_path / "region.parquet"
    r = rts("merge", folder, "-o", out)
    assert r.code == 0, r.err
    assert "3 of 3 map(s) have no footprint layer" in " ".join(r.err.split())
    assert "n_covered and detection_rate unknown" in r.out
    m = read_parquet(out)
    assert len(m) == 8 and m.n_covered.isna().all() and m.detection_rate.isna().all()
    assert at(m, A).n_observed == 3
    cover = out.with_name("region_footprint.parquet")
    assert cover.exists() and len(read_parquet(cover)) == 0  # unknown coverage: an empty layer, not a guess


@pytest.mark.parametrize("name", ["region.parquet", "region.gpkg"])
def test_existing_output_needs_overwrite(rts, three, tmp_path, name):
    out = tmp_path / name
    assert rts("merge", three, "-o", out).code == 0
    before = (out.read_bytes(), os.stat(out).st_mtime_ns)
    r = rts("merge", three, "-o", out)
    assert r.code == 2 and "--overwrite" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert (out.read_bytes(), os.stat(out).st_mtime_ns) == before
    assert rts("merge", three, "-o", out, "--overwrite").code == 0


def test_other_output_formats_refused(rts, three, tmp_path):
    r = rts("merge", three, "-o", tmp_path / "region.shp")
    assert r.code == 2 and ".parquet" in r.err
    assert not (tmp_path / "region.shp").exists()


def test_the_coverage_layer(rts, three, tmp_path):
    out = tmp_path / "region.gpkg"
    assert rts("merge", three, "-o", out).code == 0
    cover = gpd.read_file(out, layer="rts_footprint")
    union = cover.to_crs(UTM).union_all()
    # scene 2's cloud lies inside scene 1: the three scenes together looked at all of 5 x 3 km
    assert union.symmetric_difference(b(0, 0, 5000, 3000)).area < 15e6 * 1e-6  # through the working CRS and back
    assert cover.area_km2.sum() == pytest.approx(15 / 0.9996 ** 2, rel=2e-3)  # true km2
    assert cover.first_date.min() == "2021-07-05" and cover.last_date.max() == "2021-07-20"
    assert cover.n_scenes.max() == 3


def test_blocks_merge_a_slump_across_their_border_once(rts, three, tmp_path):
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    assert rts("merge", three, "-o", big).code == 0
    assert rts("merge", three, "-o", small, "--block-km", 0.25).code == 0  # 250 m blocks
    a, s = read_parquet(big), read_parquet(small)
    assert len(s) == len(a) == 8
    from rtscli.track.merge import grid_origin
    from rtscli.track.merge_inputs import describe, to_working, working_crs

    maps = [describe(p, i, None) for i, p in enumerate(sorted(three.glob("*.gpkg")))]
    crs = working_crs(maps)
    to_working(maps, crs)
    ox, oy = grid_origin(maps)
    e = a.to_crs(crs).bounds  # in block sides: slumps whose outline lies across a block border
    e = e.assign(minx=(e.minx - ox) / 250, maxx=(e.maxx - ox) / 250, miny=(e.miny - oy) / 250, maxy=(e.maxy - oy) / 250)
    across = (np.floor(e.minx) != np.floor(e.maxx)) | (np.floor(e.miny) != np.floor(e.maxy))
    assert across.sum() >= 2
    cols = ["n_observed", "n_covered", "detection_rate", "best_scene", "scenes", "partial_only", "area_m2"]
    key = lambda df: df.assign(wkb=df.geometry.to_wkb()).sort_values("wkb")[cols + ["wkb"]].reset_index(drop=True)  # noqa: E731
    assert key(a).equals(key(s))


def test_a_folder_glob_or_files(rts, three, tmp_path):
    files = sorted(three.glob("*.gpkg"))
    out1, out2 = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert rts("merge", str(three / "*.gpkg"), "-o", out1).code == 0
    assert rts("merge", *files, "-o", out2).code == 0
    assert len(read_parquet(out1)) == len(read_parquet(out2)) == 8
    r = rts("merge", str(three / "*.tif"), "-o", out1, "--overwrite")
    assert r.code == 2 and "matches no file" in r.err
    r = rts("merge", three, out1, "-o", tmp_path / "c.parquet")  # a merged map among the inputs
    assert r.code == 2 and "rts merge output" in r.err
    r = rts("merge", three, "-o", three / "PS_20210705_s1.gpkg", "--overwrite")  # the output among the inputs
    assert r.code == 2 and "one of the maps" in r.err


def test_track_of_two_merged_maps(rts, tmp_path):
    y1 = scenes(tmp_path / "maps2019")
    for p in y1.glob("*.gpkg"):  # the same scenes two years earlier
        p.rename(p.with_name(p.name.replace("2021", "2019")))
    for p in y1.glob("*.gpkg"):
        g = gpd.read_file(p, layer="rts")
        g["scene"] = g["scene"].str.replace("2021", "2019")
        g.to_file(p, layer="rts", driver="GPKG")
    y2 = tmp_path / "maps2021"
    for s in FOOTPRINTS:
        write_scene(y2, s, grow=40.0)  # slump A grew 40 m eastwards
    m1, m2 = tmp_path / "region_2019.parquet", tmp_path / "region_2021.gpkg"
    assert rts("merge", y1, "-o", m1).code == 0
    assert rts("merge", y2, "-o", m2).code == 0
    out = tmp_path / "changes.gpkg"
    r = rts("track", m1, m2, "-o", out)
    assert r.code == 0, r.err
    obs = gpd.read_file(out, layer="observations")
    assert sorted(set(obs.date)) == ["2019-07-05", "2021-07-05"]  # each map's median outline date
    later = obs[obs.date == "2021-07-05"]
    assert set(later.relation) == {"continued"} and len(later) == 8
    a = later.loc[later.to_crs(UTM).geometry.contains(b(2300, 1050, 2301, 1051)).to_numpy()].iloc[0]
    assert a.area_change_m2 == pytest.approx(40 * 150, rel=0.01)
    assert a.date_given == "2021-07-05"  # the date of the image its outline came from


def test_export_arts_of_a_merged_map(rts, three, tmp_path):
    out = tmp_path / "region_2021.parquet"
    assert rts("merge", three, "-o", out).code == 0
    arts = tmp_path / "arts.geojson"
    r = rts("export", out, "-o", arts, "--schema", "arts", "--region", "Peel", "--creator", "AB, Uni",
            "--basemap-source", "PlanetScope", "--basemap-resolution", 3, "--min-score", 0.7)
    assert r.code == 0, r.err
    f = gpd.read_file(arts)
    assert len(f) == 7  # G (0.60) is below --min-score
    row = f.loc[f.to_crs(UTM).geometry.contains(b(2300, 1050, 2301, 1051)).to_numpy()].iloc[0]
    assert str(row.BaseMapDate)[:10] == "2021-07-05" and row.BaseMapID == S1
    assert np.isclose(row.Area, 200 * 150 / 0.9996 ** 2, rtol=2e-3)


def test_into_an_existing_geopackage_its_other_layers_are_kept(rts, three, tmp_path):
    import pyogrio

    out = tmp_path / "project.gpkg"
    gpd.GeoDataFrame({"name": ["aoi"]}, geometry=[b(0, 0, 5000, 3000)], crs=UTM).to_file(out, layer="aoi")
    r = rts("merge", three, "-o", out, "--to-crs", "EPSG:3413")
    assert r.code == 0, r.err
    assert {"aoi", "rts", "rts_footprint"} <= {str(n) for n in pyogrio.list_layers(out)[:, 0]}
    m = gpd.read_file(out, layer="rts")
    assert m.crs.to_epsg() == 3413 and len(m) == 8
    assert at(m, A).area_m2 == pytest.approx(200 * 150 / 0.9996 ** 2, rel=2e-3)  # true area, whatever the CRS


def _grouped(boxes, units, scores, partial=None):
    """rts merge's grouping of one connected part of boxes (site metres) by scene ``units``."""
    import shapely

    from rtscli.track.merge import group, links

    geoms = np.asarray([b(*x) for x in boxes], dtype=object)
    units, area = np.asarray(units), shapely.area(geoms)
    partial = np.zeros(len(geoms), bool) if partial is None else np.asarray(partial)
    left, right, ov = links(geoms, area, units, "ios", 0.3)
    overlap = {(int(i), int(j)): float(o) for i, j, o in zip(left, right, ov, strict=True)}
    rank = np.argsort(np.argsort(-np.asarray(scores)))

    def nested(i, seed):
        return geoms[i].intersection(geoms[seed]).area / geoms[i].area >= 0.5

    return [s.members for s in group(list(range(len(geoms))), rank, units, partial, overlap, set(), nested)]


def test_one_scene_never_counts_twice_and_keeps_touching_slumps_apart():
    # a slump that scene 1 mapped in two pieces: one slump, the pieces' scene counted once
    assert _grouped([(0, 0, 100, 100), (0, 0, 60, 100), (60, 0, 100, 100)], [0, 1, 1], [0.9, 0.8, 0.7]) == [[0, 1, 2]]
    # two touching slumps that scene 0 mapped apart (better scores) and scene 1 as one: they stay two
    assert _grouped([(0, 0, 50, 100), (50, 0, 100, 100), (0, 0, 100, 100)], [0, 0, 1], [0.9, 0.85, 0.5]) == \
        [[0, 2], [1]]
