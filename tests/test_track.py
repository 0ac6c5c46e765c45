"""rts track: hand-made slump maps over three dates with known answers (relations, areas, rates, boundary change)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

#: an equal-area CRS centred at the test site (70 N, 130 W): planar areas and distances there are true
SITE = "+proj=laea +lat_0=70 +lon_0=-130 +datum=WGS84 +units=m +no_defs"
D1, D2, D3 = date(2019, 7, 15), date(2020, 7, 15), date(2021, 7, 15)

# slumps as boxes (x0, y0, x1, y1) in metres around the site
A1, A2, A3 = (0, 0, 100, 60), (0, 0, 100, 80), (0, 0, 100, 90)  # grows 20 m, then 10 m northwards
B1, B2, B12 = (300, 0, 350, 50), (360, 0, 410, 50), (300, 0, 410, 55)  # two that merge
C, C1, C2 = (600, 0, 700, 50), (600, 0, 645, 50), (655, 0, 700, 50)  # one that splits
D = (900, 0, 950, 50)  # one that is gone at the second date
E = (1200, 0, 1250, 40)  # one that appears at the second date
T1, T2 = (0, 200, 50, 250), (50, 200, 100, 250)  # two that touch and never merge
F = (905, 5, 940, 45)  # one that forms on D's scar at the third date

MAPS = {D1: [A1, B1, B2, C, D, T1, T2], D2: [A2, B12, C1, C2, E, T1, T2], D3: [A3, B12, C1, C2, E, T1, T2, F]}


def write_map(path: Path, boxes, crs=SITE, **columns) -> Path:
    g = gpd.GeoDataFrame(columns, geometry=[box(*b) for b in boxes], crs=SITE)
    if crs != SITE:
        g = g.to_crs(crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    g.to_file(path, driver="GPKG", layer="rts")
    return path


def three_dates(folder: Path, crss=(SITE, SITE, SITE)) -> list[Path]:
    return [write_map(folder / f"slumps_{d.isoformat()}.gpkg", MAPS[d], crs) for d, crs in zip(MAPS, crss, strict=True)]


def two_dates_in_a_field(path: Path, field: str, first: str, second: str) -> Path:
    """One file holding the maps of D1 and D2, each feature's date in ``field`` (written ``first``/``second``)."""
    gpd.GeoDataFrame({field: [first] * len(MAPS[D1]) + [second] * len(MAPS[D2])},
                     geometry=[box(*x) for x in MAPS[D1] + MAPS[D2]], crs=SITE).to_file(path, driver="GPKG")
    return path


def read(out: Path):
    obs = gpd.read_file(out, layer="observations")
    tracks = gpd.read_file(out, layer="tracks")
    return obs, tracks


def at(obs, d: date, b):
    """The observation at date ``d`` whose polygon is the box ``b`` (found by its centre)."""
    from shapely.geometry import Point

    o = obs.to_crs(SITE)
    c = Point((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    rows = o[(o["date"] == d.isoformat()) & o.geometry.contains(c)]
    assert len(rows) == 1, (d, b, len(rows))
    return rows.iloc[0]


def test_relations_areas_rates_and_advance(rts, tmp_path):
    maps = three_dates(tmp_path)
    out = tmp_path / "changes.gpkg"
    r = rts("track", *maps, "-o", out)
    assert r.code == 0, r.err
    obs, tracks = read(out)
    y12 = (D2 - D1).days / 365.25
    y23 = (D3 - D2).days / 365.25

    # the growing slump: one track, areas true to 0.1 %, change, rate, headwall advance and centroid shift exact
    a1, a2, a3 = at(obs, D1, A1), at(obs, D2, A2), at(obs, D3, A3)
    assert a1.track_id == a2.track_id == a3.track_id
    assert (a1.relation, a2.relation, a3.relation) == ("first", "continued", "continued")
    assert a1.area_m2 == pytest.approx(6000, rel=1e-3) and a3.area_m2 == pytest.approx(9000, rel=1e-3)
    assert a2.area_change_m2 == pytest.approx(2000, rel=1e-3)
    assert a2.area_rate_m2_yr == pytest.approx(2000 / y12, rel=1e-3)
    assert a2.boundary_change_m == pytest.approx(20, abs=1e-3) and a3.boundary_change_m == pytest.approx(10, abs=1e-3)
    assert a2.boundary_rate_m_yr == pytest.approx(20 / y12, rel=1e-4)
    assert a3.boundary_rate_m_yr == pytest.approx(10 / y23, rel=1e-4)
    assert a2.centroid_shift_m == pytest.approx(10, abs=1e-2)
    ta = tracks.set_index("track_id").loc[a1.track_id]
    assert ta.growth_m2 == pytest.approx(3000, rel=1e-3) and ta.max_advance_m == pytest.approx(20, abs=1e-3)
    assert ta.growth_rate_m2_yr == pytest.approx(3000 / (y12 + y23), rel=1e-3)
    assert (ta.first_date, ta.last_date, ta.end) == (D1.isoformat(), D3.isoformat(), "open")

    # two merge: a new track listing both parents; its change is against their union
    b1, b2, b12 = at(obs, D1, B1), at(obs, D1, B2), at(obs, D2, B12)
    assert b12.relation == "merged" and set(b12.related.split(",")) == {b1.track_id, b2.track_id}
    assert b12.area_change_m2 == pytest.approx(110 * 55 - 2 * 2500, rel=1e-3)
    assert at(obs, D3, B12).relation == "continued" and at(obs, D3, B12).track_id == b12.track_id
    ends = tracks.set_index("track_id")["end"]
    assert ends[b1.track_id] == ends[b2.track_id] == "merged"

    # one splits: two new tracks, each naming the parent
    c, c1, c2 = at(obs, D1, C), at(obs, D2, C1), at(obs, D2, C2)
    assert c1.relation == c2.relation == "split" and c1.related == c2.related == c.track_id
    assert c1.track_id != c2.track_id and ends[c.track_id] == "split"
    assert sorted(tracks.set_index("track_id").loc[c.track_id, "children"].split(",")) == sorted(
        [c1.track_id, c2.track_id])

    # one is gone at the second date: a row that is not present, holding its last polygon
    d = obs[(obs["track_id"] == at(obs, D1, D).track_id) & (obs["date"] == D2.isoformat())].iloc[0]
    assert d.relation == "disappeared" and not d.present and np.isnan(d.area_m2)
    assert ends[d.track_id] == "disappeared"

    # one appears (the second date's map covered its place at the first date: new, not first)
    assert at(obs, D2, E).relation == "new" and at(obs, D3, E).relation == "continued"
    assert at(obs, D3, F).relation == "new" and at(obs, D3, F).formed_on in ("", None)

    # two touch and stay two
    for b in (T1, T2):
        assert [at(obs, d_, b).relation for d_ in (D1, D2, D3)] == ["first", "continued", "continued"]
    assert at(obs, D1, T1).track_id != at(obs, D1, T2).track_id
    assert len(tracks) == 7 + 4 + 1  # 7 first, merged, 2 split, E, F
    assert obs["uncertain"].sum() == 0


def test_same_maps_in_other_crs_give_the_same_result(rts, tmp_path):
    ref = tmp_path / "ref.gpkg"
    assert rts("track", *three_dates(tmp_path / "a"), "-o", ref).code == 0
    mixed = three_dates(tmp_path / "b", crss=(SITE, "EPSG:3413", "EPSG:32609"))
    out = tmp_path / "mixed.gpkg"
    r = rts("track", *mixed, "-o", out, "--to-crs", "EPSG:3413")
    assert r.code == 0, r.err
    (o1, t1), (o2, t2) = read(ref), read(out)
    cols = ["track_id", "date", "present", "relation", "related", "formed_on"]
    key = ["date", "track_id"]
    a, b = o1.sort_values(key).reset_index(drop=True), o2.sort_values(key).reset_index(drop=True)
    assert a[cols].fillna("").equals(b[cols].fillna(""))
    for c in ("area_m2", "area_change_m2", "boundary_change_m", "centroid_shift_m"):
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-4, atol=1e-3)
    assert o2.crs.to_epsg() == 3413 and o1.crs.equals(gpd.GeoSeries([], crs=SITE).crs)
    assert sorted(t1["track_id"]) == sorted(t2["track_id"])


def test_stabilized_by_rule_or_layer_and_new_on_its_scar(rts, tmp_path):
    maps = three_dates(tmp_path)
    out = tmp_path / "rule.gpkg"
    assert rts("track", *maps, "-o", out, "--gone", "stabilized").code == 0
    obs, tracks = read(out)
    gone = at(obs, D1, D).track_id
    assert tracks.set_index("track_id").loc[gone, "end"] == "stabilized"
    assert at(obs, D3, F).formed_on == gone  # formed on the stabilized scar (ARTS: StabilizedRTS / NewRTS)
    # a layer of known scars decides it where the rule is 'disappeared'
    scars = write_map(tmp_path / "scars.gpkg", [(890, -10, 960, 60)])
    out2 = tmp_path / "layer.gpkg"
    assert rts("track", *maps, "-o", out2, "--stabilized", scars).code == 0
    t2 = read(out2)[1].set_index("track_id")
    assert t2.loc[gone, "end"] == "stabilized" and (t2["end"] == "disappeared").sum() == 0


def test_coverage_dates_per_area_edges_slivers_and_empty_maps(rts, tmp_path):
    # the second map looked only at x < 800 (its footprint layer): D is not gone there, and is seen again later
    maps = three_dates(tmp_path)
    fp = gpd.GeoDataFrame({"scene": ["s2"]}, geometry=[box(-100, -100, 800, 400)], crs=SITE)
    fp.to_file(maps[1], driver="GPKG", layer="rts_footprint")
    boxes = [b for b in MAPS[D3] if b != F] + [D]  # D seen again at the third date
    write_map(maps[2], boxes, touches_edge=[b == A3 for b in boxes])  # A3 cut by the scene edge
    sliver = write_map(tmp_path / "extra_2021-07-15.gpkg", [(2000, 0, 2003, 3)])
    out = tmp_path / "cov.gpkg"
    r = rts("track", *maps, sliver, "-o", out, "--min-area", "20")
    assert r.code == 0, r.err
    obs, tracks = read(out)
    d_track = at(obs, D1, D).track_id
    rows = obs[obs["track_id"] == d_track]
    assert list(rows["date"]) == [D1.isoformat(), D3.isoformat()]  # not observed at D2: no row, no end
    assert rows.iloc[1].relation == "continued" and rows.iloc[1].years == pytest.approx((D3 - D1).days / 365.25,
                                                                                         abs=1e-4)
    assert at(obs, D3, A3).uncertain and not at(obs, D2, A2).uncertain  # cut by the scene edge
    assert not (obs.to_crs(SITE).geometry.bounds["minx"] >= 1999).any()  # the sliver is left out
    # an empty map at a fourth date: every slump it covers is gone
    empty = tmp_path / "slumps_2022-07-15.gpkg"
    gpd.GeoDataFrame({"score": []}, geometry=[], crs=SITE).to_file(empty, driver="GPKG", layer="rts")
    out2 = tmp_path / "empty.gpkg"
    assert rts("track", *maps, empty, "-o", out2).code == 0
    t = read(out2)[1]
    assert set(t.loc[t["last_date"] == D3.isoformat(), "end"]) == {"disappeared"}


def test_dates_from_options_fields_and_predict_scene_names(rts, tmp_path):
    a = write_map(tmp_path / "a.gpkg", MAPS[D1], scene=["S2B_MSIL2A_20190715T203029_N0212_R114_T08WNB"] * 7)
    b = write_map(tmp_path / "b.gpkg", MAPS[D2], scene=["S2A_MSIL2A_20200715T203031_N0214_R114_T08WNB"] * 7)
    out = tmp_path / "c.gpkg"
    assert rts("track", a, b, "-o", out).code == 0
    assert sorted(set(read(out)[0]["date"])) == [D1.isoformat(), D2.isoformat()]
    # one file holding both dates in a field
    one = two_dates_in_a_field(tmp_path / "labels.gpkg", "year_seen", "2019-07-15", "2020-07-15")
    out2 = tmp_path / "d.gpkg"
    assert rts("track", one, "-o", out2, "--date-field", "year_seen").code == 0
    o2 = read(out2)[0]
    assert (o2["relation"] == "merged").sum() == 1 and (o2["relation"] == "split").sum() == 2
    # --dates overrides names (another year only with --force-dates, and a warning with both dates); the growth
    # plot and quicklook are written
    out3 = tmp_path / "e.gpkg"
    r = rts("track", a, b, "-o", out3, "--dates", "2019-07-15,2021-07-15", "--plot", tmp_path / "g.png",
            "--quicklook", tmp_path / "q.png", "--force-dates")
    assert r.code == 0, r.err
    assert "2021-07-15" in r.err and "2020-07-15" in r.err and "scene name" in r.err
    assert (tmp_path / "g.png").stat().st_size > 10_000 and (tmp_path / "q.png").stat().st_size > 10_000
    rate = at(read(out3)[0], date(2021, 7, 15), A2).area_rate_m2_yr
    assert rate == pytest.approx(2000 / ((date(2021, 7, 15) - D1).days / 365.25), rel=1e-3)


def test_bad_inputs_exit_2_without_output(rts, tmp_path):
    a = write_map(tmp_path / "one.gpkg", MAPS[D1])
    b = write_map(tmp_path / "two.gpkg", MAPS[D2])
    out = tmp_path / "x.gpkg"
    r = rts("track", a, b, "-o", out)
    assert r.code == 2 and "one.gpkg" in r.err and "--dates" in r.err and not out.exists()
    r = rts("track", a, b, "-o", out, "--dates", "2019-07-15")
    assert r.code == 2 and "one date per map" in r.err and not out.exists()
    r = rts("track", a, b, "-o", out, "--dates", "2019-07-15,2019-07-15")
    assert r.code == 2 and "at least two" in r.err and not out.exists()
    r = rts("track", a, tmp_path / "missing.gpkg", "-o", out)
    assert r.code == 2 and "missing.gpkg" in r.err
    assert rts("track", a, b, "-o", out, "--dates", "2019-07-15,2020-07-15").code == 0
    r = rts("track", a, b, "-o", out, "--dates", "2019-07-15,2020-07-15")
    assert r.code == 2 and "--overwrite" in r.err


def test_track_ids_are_stable_uuid5_of_the_first_date_and_centroid():
    import random
    import uuid

    from rtscli.track.change import TRACK_NAMESPACE, TrackOptions, Tracker
    from rtscli.track.maps import SlumpMap, load_maps

    def maps(order):
        out = []
        for d in (D1, D2):
            boxes = [MAPS[d][i] for i in order[: len(MAPS[d])]]
            out.append(SlumpMap(Path(f"{d}.gpkg"), None, gpd.GeoDataFrame(
                {"date": [d] * len(boxes), "date_given": d.isoformat(), "touches_edge": False,
                 "touches_nodata": False, "source": "x"}, geometry=[box(*b) for b in boxes], crs=SITE), None,
                "--dates", 0, d))
        return out[::-1] if order[0] % 2 else out

    ids = []
    for seed in range(3):  # the maps and their polygons in other orders
        order = list(range(7))
        random.Random(seed).shuffle(order)
        frames, crs, _ = load_maps(maps(order))
        t = Tracker(crs, TrackOptions())
        t.run(frames)
        ids.append(sorted(t.tracks))
    assert ids[0] == ids[1] == ids[2]
    lonlat = gpd.GeoSeries([box(*A1)], crs=SITE).to_crs(4326).geometry[0].centroid  # in degrees, as ARTS does
    expected = uuid.uuid5(TRACK_NAMESPACE, f"{D1.isoformat()} {lonlat.y:.6f} {lonlat.x:.6f}")
    assert str(expected) in ids[0] and all(uuid.UUID(i).version == 5 for i in ids[0])


def test_advance_where_a_hole_closes_and_far_from_the_centre(rts, tmp_path):
    from shapely.geometry import Polygon

    from rtscli.track.change import directed_advance

    ring = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(30, 30), (70, 30), (70, 70), (30, 70)]])
    assert directed_advance(box(0, 0, 100, 100), ring) == pytest.approx(20, abs=0.1)  # the hole's centre
    assert directed_advance(box(0, 0, 100, 120), box(0, 0, 100, 100)) == pytest.approx(20)
    # two areas 1,100 km apart in one run: advances stay true metres (local equidistant CRS), areas too
    far = "+proj=laea +lat_0=70 +lon_0=-100 +datum=WGS84 +units=m +no_defs"
    maps = []
    for d, b in ((D1, A1), (D2, A2)):
        g = gpd.GeoDataFrame(geometry=[box(*b)], crs=SITE)
        h = gpd.GeoDataFrame(geometry=[box(*b)], crs=far).to_crs(SITE)
        p = tmp_path / f"m_{d.isoformat()}.gpkg"
        gpd.GeoDataFrame(geometry=list(g.geometry) + list(h.geometry), crs=SITE).to_file(p)
        maps.append(p)
    out = tmp_path / "c.gpkg"
    assert rts("track", *maps, "-o", out).code == 0
    later = read(out)[0].query("date == @D2.isoformat()")
    assert later["boundary_change_m"].tolist() == pytest.approx([20, 20], abs=2e-3)
    assert later["area_change_m2"].tolist() == pytest.approx([2000, 2000], rel=1e-3)


def test_unknown_relations_empty_maps_and_slivers_only(rts, tmp_path):
    # two slumps whose outlines, a year on, cross: several and several
    a = write_map(tmp_path / "x_2019-07-15.gpkg", [(0, 0, 100, 50), (0, 50, 100, 100)])
    b = write_map(tmp_path / "x_2020-07-15.gpkg", [(0, 0, 50, 100), (50, 0, 100, 100)])
    out = tmp_path / "u.gpkg"
    assert rts("track", a, b, "-o", out).code == 0
    obs, tracks = read(out)
    later = obs[obs["date"] == D2.isoformat()]
    assert set(later["relation"]) == {"unknown"} and later["related"].str.count(",").tolist() == [1, 1]
    assert set(tracks.loc[tracks["first_date"] == D1.isoformat(), "end"]) == {"unknown"}
    # every polygon a sliver, or every map empty: empty layers, no error
    out2 = tmp_path / "s.gpkg"
    r = rts("track", a, b, "-o", out2, "--min-area", 1e6)
    assert r.code == 0, r.err
    assert len(read(out2)[1]) == 0
    e1, e2 = tmp_path / "e_2019-07-15.gpkg", tmp_path / "e_2020-07-15.gpkg"
    for e in (e1, e2):
        gpd.GeoDataFrame({"score": []}, geometry=[], crs=SITE).to_file(e, driver="GPKG", layer="rts")
    r = rts("track", e1, e2, "-o", tmp_path / "e.gpkg")
    assert r.code == 0, r.err
    obs, tracks = read(tmp_path / "e.gpkg")
    assert len(obs) == len(tracks) == 0 and tracks["growth_m2"].dtype.kind == "f"


def test_a_synthetic_series_and_its_truth_relations(rts, tmp_path):
    """rts synth --years: slumps that grow along their headwalls, merge, appear and stabilize; rts track on the
    truth maps recovers every relation, and the growth is along the headwall (areas grow every year)."""
    from rtscli.synth.series import relation_recovery

    syn = tmp_path / "syn"
    r = rts("synth", syn, "--chips", 0, "--scenes", 1, "--scene-size", 768, "--years", 3, "--site", "tuktoyaktuk",
            "--seed", 3)
    assert r.code == 0, r.err
    truth = sorted((syn / "scenes").glob("scene_00_tuktoyaktuk_20??-07-15.gpkg"))
    assert [p.stem[-10:] for p in truth] == ["2019-07-15", "2020-07-15", "2021-07-15"]
    assert len(list((syn / "scenes").glob("*.tif"))) == 3
    t2 = gpd.read_file(truth[1], layer="rts")
    assert {"continued", "merged", "new"} <= set(t2["relation"]) and len(gpd.read_file(truth[1], layer="gone")) == 1
    out = tmp_path / "changes.gpkg"
    r = rts("track", *truth, "-o", out, "--gone", "stabilized")
    assert r.code == 0, r.err
    obs = gpd.read_file(out, layer="observations")
    score = relation_recovery(truth[1:], obs)
    assert score["share"] == 1.0 and score["merged"] == [1, 1] and score["stabilized"] == [2, 2]
    cont = obs[obs["relation"] == "continued"]
    assert (cont["area_change_m2"] > 0).all() and (cont["boundary_change_m"] >= 5 - 1e-6).all()


def test_maps_in_every_vector_format(rts, tmp_path):
    """GeoPackage, Shapefile, GeoJSON and GeoParquet maps (GeoParquet through pyarrow: GDAL's own Parquet driver
    may lack its libraries) give the same tracks."""
    paths = []
    for d, ext in zip(MAPS, (".parquet", ".shp", ".geojson"), strict=True):
        g = gpd.GeoDataFrame(geometry=[box(*b) for b in MAPS[d]], crs=SITE).to_crs("EPSG:3413")
        p = tmp_path / f"m_{d.isoformat()}{ext}"
        g.to_parquet(p) if ext == ".parquet" else g.to_file(p)
        paths.append(p)
    out = tmp_path / "c.gpkg"
    r = rts("track", *paths, "-o", out)
    assert r.code == 0, r.err
    ref = tmp_path / "ref.gpkg"
    assert rts("track", *three_dates(tmp_path / "g"), "-o", ref).code == 0
    assert sorted(read(out)[1]["history"]) == sorted(read(ref)[1]["history"])


def test_what_real_maps_hold_dates_crs_folders_and_manifests(rts, tmp_path):
    """Found by a new user: date formats, a wrong CRS, folders of rts predict outputs and dated folders."""
    # dates written many ways in one field are read exactly; an ambiguous one is refused, never guessed
    one = two_dates_in_a_field(tmp_path / "labels.gpkg", "img_date", "2019/07/15", "15.07.2020")
    out = tmp_path / "a.gpkg"
    assert rts("track", one, "-o", out, "--date-field", "img_date").code == 0
    assert sorted(set(read(out)[0]["date"])) == [D1.isoformat(), D2.isoformat()]
    two_dates_in_a_field(one, "img_date", "07/15/2019", "2020-07-15")
    r = rts("track", one, "-o", tmp_path / "b.gpkg", "--date-field", "img_date")
    assert r.code == 2 and "07/15/2019" in r.err and "row 0" in r.err
    a, b = three_dates(tmp_path / "m")[:2]
    r = rts("track", a, b, "-o", tmp_path / "b.gpkg", "--dates", "2019-07-15,2021-13-45")
    assert r.code == 2 and "2021-13-45" in r.err and "calendar" in r.err
    # UTM metres labelled as longitude/latitude: one line naming the file, not a crash
    bad = tmp_path / "bad_2022-07-15.gpkg"
    gpd.GeoDataFrame(geometry=[box(470000, 7550000, 470100, 7550100)], crs="EPSG:4326").to_file(bad)
    r = rts("track", a, bad, "-o", tmp_path / "b.gpkg")
    assert r.code == 2 and "bad_2022-07-15.gpkg" in r.err and "CRS is probably wrong" in r.err
    assert not (tmp_path / "b.gpkg").exists()
    # a folder of rts predict outputs: the maps its manifest lists (other vector files there are not maps)
    folder = tmp_path / "pred"
    folder.mkdir()
    for d in (D1, D2):
        write_map(folder / f"s_{d.isoformat()}.gpkg", MAPS[d])
    write_map(folder / "s_2019-07-15_distractors.gpkg", [(5000, 0, 5100, 100)])
    (folder / "manifest.json").write_text('{"scenes": [{"scene": "/x/s_2019-07-15.tif", "output": "%s"}, '
                                          '{"scene": "/x/s_2020-07-15.tif", "output": "%s"}]}'
                                          % (folder / "s_2019-07-15.gpkg", folder / "s_2020-07-15.gpkg"))
    out = tmp_path / "c.gpkg"
    assert rts("track", folder, "-o", out).code == 0
    assert len(read(out)[1]) == 7 + 4  # no track from the look-alikes file
    # folders named by date, and --dates counted per input (a folder gets one date)
    for d in (D1, D2):
        write_map(tmp_path / "years" / str(d.year) / "slumps.gpkg", MAPS[d])
    out = tmp_path / "d.gpkg"
    assert rts("track", tmp_path / "years" / "2019", tmp_path / "years" / "2020", "-o", out).code == 0
    assert sorted(set(read(out)[0]["date"])) == ["2019-07-01", "2020-07-01"]
    r = rts("track", tmp_path / "years" / "2019", tmp_path / "years" / "2020", "-o", out, "--overwrite",
            "--dates", "2019-07-15,2020-07-15")
    assert r.code == 0, r.err
    assert sorted(set(read(out)[0]["date"])) == [D1.isoformat(), D2.isoformat()]
    r = rts("track", a, a, "-o", tmp_path / "e.gpkg")
    assert r.code == 2 and "given twice" in r.err
