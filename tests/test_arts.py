"""ARTS: export of slump maps and rts track changes with every field and the ARTS UID; ARTS negatives in prepare."""

from __future__ import annotations

import json
import uuid

import geopandas as gpd
import pytest
import yaml
from shapely.geometry import Polygon, box

from test_prepare import _px, _scene
from test_track import D1, D2, MAPS, three_dates

ARGS = ["--region", "Peel Plateau, NWT, Canada", "--creator", "AB, Some University", "--basemap-source",
        "PlanetScope", "--basemap-resolution", "3", "--contribution-date", "2026-11-30"]
FIELDS = ["CentroidLat", "CentroidLon", "RegionName", "CreatorLab", "BaseMapDate", "BaseMapSource",
          "BaseMapResolution", "TrainClass", "LabelType", "MergedRTS", "SplitRTS", "NewRTS", "StabilizedRTS",
          "UnknownRelationship", "ContributionDate", "UID", "BaseMapID", "Area", "Notes"]


def test_export_of_a_known_polygon(rts, tmp_path):
    # a slump near Tuktoyaktuk drawn in lon/lat; its centroid is computed here as ARTS does (in EPSG:4326)
    poly = Polygon([(-133.0300, 69.4500), (-133.0250, 69.4502), (-133.0240, 69.4530), (-133.0295, 69.4528)])
    src = tmp_path / "slumps_2021-08-03.geojson"
    gpd.GeoDataFrame({"score": [0.9]}, geometry=[poly], crs="EPSG:4326").to_file(src)
    out = tmp_path / "arts.geojson"
    r = rts("export", src, "-o", out, "--schema", "arts", *ARGS, "--notes", "headwall to the north", "--min-score", 0.5)
    assert r.code == 0, r.err
    doc = json.loads(out.read_text())
    assert "3413" in doc["crs"]["properties"]["name"] and doc["name"] == "arts"
    (f,) = doc["features"]
    p = f["properties"]
    assert list(p) == FIELDS and f["geometry"]["type"] == "MultiPolygon"
    lat, lon = round(poly.centroid.y, 5), round(poly.centroid.x, 5)
    assert abs(p["CentroidLat"] - lat) < 1e-6 and abs(p["CentroidLon"] - lon) < 1e-6
    assert abs(p["CentroidLat"] - poly.centroid.y) <= 5e-6  # ARTS rounds to 5 places
    assert (p["RegionName"], p["CreatorLab"], p["BaseMapDate"], p["BaseMapSource"], p["BaseMapResolution"],
            p["TrainClass"], p["LabelType"], p["ContributionDate"], p["Notes"]) == (
        "Peel Plateau, NWT, Canada", "AB, Some University", "2021-08-03", "PlanetScope", 3, "Positive", "Polygon",
        "2026-11-30", "model prediction (rts predict), score 0.900 (kept at --min-score 0.5), model not recorded; "
                      "headwall to the north")
    assert all(p[k] is None for k in ("MergedRTS", "SplitRTS", "NewRTS", "StabilizedRTS", "UnknownRelationship"))
    # the UID: uuid5 (DNS namespace) of the required fields as text, the resolution without ".0"
    seed = f"{lat}{lon}Peel Plateau, NWT, CanadaAB, Some University2021-08-03PlanetScope3PositivePolygon"
    assert p["UID"] == str(uuid.uuid5(uuid.NAMESPACE_DNS, seed))
    true_area = gpd.GeoSeries([poly], crs="EPSG:4326").to_crs("+proj=laea +lat_0=69.45 +lon_0=-133 +datum=WGS84")
    assert p["Area"] == pytest.approx(true_area.area[0], rel=1e-3)
    back = gpd.read_file(out)
    assert back.crs.to_epsg() == 3413 and back.to_crs(4326).geometry[0].symmetric_difference(poly).area < 1e-12
    # deterministic: the same input gives the same UID; a Shapefile gets ARTS's short names
    out2 = tmp_path / "arts.shp"
    assert rts("export", src, "-o", out2, *ARGS, "--notes", "headwall to the north", "--all").code == 0
    shp = gpd.read_file(out2)
    assert shp["UID"][0] == p["UID"] and {"CntrdLt", "BasMpDt", "TrnClss", "MrgdRTS", "StblRTS"} <= set(shp.columns)


def test_export_needs_what_cannot_be_derived(rts, tmp_path):
    src = tmp_path / "slumps.gpkg"
    gpd.GeoDataFrame(geometry=[box(0, 0, 50, 50)], crs="EPSG:32608").to_file(src, layer="rts")
    out = tmp_path / "a.geojson"
    r = rts("export", src, "-o", out, "--region", "R")
    assert r.code == 2 and "CreatorLab" in r.err and "--creator" in r.err and "BaseMapResolution" in r.err
    assert "Traceback" not in r.err and not out.exists()
    r = rts("export", src, "-o", out, *ARGS)  # no date anywhere
    assert r.code == 2 and "BaseMapDate" in r.err and "--basemap-date" in r.err and not out.exists()
    r = rts("export", src, "-o", out, *ARGS, "--basemap-date", "2020-07-05,2020-08-20")
    assert r.code == 0, r.err
    assert gpd.read_file(out)["BaseMapDate"][0] == "2020-07-05,2020-08-20"
    r = rts("export", src, "-o", tmp_path / "b.geojson", *ARGS, "--basemap-date", "July 2020")
    assert r.code == 2 and "YYYY-MM-DD" in r.err
    r = rts("export", src, "-o", tmp_path / "b.geojson", *ARGS, "--basemap-date", "2020-07-05", "--schema", "x")
    assert r.code == 2 and "--schema arts" in r.err


def test_export_of_tracked_changes_gives_the_relations(rts, tmp_path):
    maps = three_dates(tmp_path)
    changes = tmp_path / "changes.gpkg"
    assert rts("track", *maps, "-o", changes, "--gone", "stabilized").code == 0
    out = tmp_path / "arts.geojson"
    r = rts("export", changes, "-o", out, *ARGS)
    assert r.code == 0, r.err
    arts = gpd.read_file(out, datetime_as_string=True)  # GDAL would read the ARTS date text as dates
    obs = gpd.read_file(changes, layer="observations")
    obs = obs[obs["present"]].reset_index(drop=True)
    assert len(arts) == len(obs) == 7 + 7 + 8
    uid_of_track = {}
    for (_, o), (_, a) in zip(obs.iterrows(), arts.iterrows(), strict=True):
        assert a["BaseMapDate"] == o["date"]
        uid_of_track.setdefault(o["track_id"], a["UID"])
        assert a["UID"] == uid_of_track[o["track_id"]]  # a slump seen again keeps its first UID (RepeatRTS)
    assert arts["UID"].nunique() == obs["track_id"].nunique() == 12

    def row(d, b):
        from test_track import SITE

        c = gpd.GeoSeries([box(*b).centroid], crs=SITE).to_crs(3413)[0]
        hit = arts[(arts["BaseMapDate"] == d.isoformat()) & arts.geometry.contains(c)]
        assert len(hit) == 1
        return hit.iloc[0]

    merged = row(D2, MAPS[D2][1])
    assert set(merged["MergedRTS"].split(",")) == {row(D1, MAPS[D1][1])["UID"], row(D1, MAPS[D1][2])["UID"]}
    for child in (MAPS[D2][2], MAPS[D2][3]):
        assert row(D2, child)["SplitRTS"] == row(D1, MAPS[D1][3])["UID"]
    scar = row(D1, MAPS[D1][4])["UID"]  # stabilized at D2; a new slump forms on its scar at D3
    newer = arts[arts["StabilizedRTS"] == scar]
    assert len(newer) == 1 and row(D1, MAPS[D1][4])["NewRTS"] == newer.iloc[0]["UID"]
    assert arts["UnknownRelationship"].isna().all()


def test_arts_negatives_prepare_negative_chips_never_slumps(rts, tmp_path):
    scene = _scene(tmp_path)  # 300 x 200 px of 3 m (EPSG:32608)
    feats = gpd.GeoDataFrame(
        {"TrainClass": ["Positive", "Negative"], "BaseMapDate": ["2021-08-03"] * 2, "UID": ["a", "b"]},
        geometry=[_px(10, 10, 30, 25), _px(140, 100, 250, 190)], crs="EPSG:32608").to_crs(3413)
    labels = tmp_path / "arts.geojson"
    feats.to_file(labels)
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", labels, "-o", ds, "--bands", "planetscope4", "--chip-size", 64,
            "--overlap", 0, "--min-pixels", 1, "--split", "1,0,0", "--drop-empty")
    assert r.code == 0, r.err
    assert "background area" in " ".join(r.err.split())
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert m["labels"]["negative_areas"] == 1
    doc = json.loads((ds / "train.json").read_text())
    assert len(doc["annotations"]) == 1 and doc["annotations"][0]["bbox"] == [10.0, 10.0, 20.0, 15.0]
    windows = {tuple(im["window"][:2]) for im in doc["images"]}
    # the slump's chip, and every chip that reaches the negative area (cols 128..256, rows 64..192), kept as
    # negatives although --drop-empty drops the other empty chips
    reach = {(c, r_) for c in (128, 192, 236) for r_ in (64, 128, 136)}
    assert windows == {(0, 0)} | reach
    assert m["counts"]["total"]["train"]["negatives"] == len(reach)
    bad = tmp_path / "bad.geojson"
    feats.assign(TrainClass=["Positive", "Maybe"]).to_file(bad)
    r = rts("prepare", scene, "--labels", bad, "-o", tmp_path / "ds2", "--bands", "planetscope4")
    assert r.code == 2 and "'maybe'" in r.err and "TrainClass" in r.err and not (tmp_path / "ds2").exists()




def test_arts_files_through_track_and_back_keep_their_date_ranges(rts, tmp_path):
    ranges = {D1: "2019-07-05,2019-08-20", D2: "2020-07-01,2020-07-29"}
    feats = []
    for d, text in ranges.items():
        for b in MAPS[d]:
            feats.append({"BaseMapDate": text, "TrainClass": "Positive", "geometry": box(*b)})
    feats.append({"BaseMapDate": ranges[D1], "TrainClass": "Negative", "geometry": box(3000, 0, 3500, 500)})
    from test_track import SITE

    src = tmp_path / "arts_in.geojson"
    gpd.GeoDataFrame(feats, geometry="geometry", crs=SITE).to_crs(3413).to_file(src)
    changes = tmp_path / "c.gpkg"
    r = rts("track", src, "-o", changes)
    assert r.code == 0, r.err
    obs = gpd.read_file(changes, layer="observations")
    assert sorted(set(obs["date"])) == ["2019-07-28", "2020-07-15"]  # the middle of each range
    assert len(gpd.read_file(changes, layer="tracks")) == 11  # the negative area is not a slump
    out = tmp_path / "arts.geojson"
    assert rts("export", changes, "-o", out, *ARGS).code == 0
    dates = {f["properties"]["BaseMapDate"] for f in json.loads(out.read_text())["features"]}
    assert dates == set(ranges.values())  # the ranges as ARTS wrote them
    r = rts("export", changes, "-o", tmp_path / "x.geojson", *ARGS[:-2], "--contribution-date", "15.07.2026")
    assert r.code == 2 and "--contribution-date" in r.err
    r = rts("export", changes, "-o", tmp_path / "x.geojson", *ARGS, "--basemap-date", "2019-08-20,2019-07-05")
    assert r.code == 2 and "ends before it starts" in r.err


def test_export_dates_formats_and_bad_values(rts, tmp_path):
    src = tmp_path / "slumps_2019.parquet"  # GeoParquet (read through pyarrow), a year alone in its name
    gpd.GeoDataFrame({"scene": ["a"]}, geometry=[box(0, 0, 50, 50)], crs="EPSG:32608").to_parquet(src)
    out = tmp_path / "a.geojson"
    r = rts("export", src, "-o", out, *ARGS)
    assert r.code == 0, r.err
    p = json.loads(out.read_text())["features"][0]["properties"]
    assert p["BaseMapDate"] == "2019-01-01,2019-12-31" and p["BaseMapID"] == "a"  # no invented day
    src2 = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"seen": ["15.07.2019"]}, geometry=[box(0, 0, 50, 50)], crs="EPSG:32608").to_file(src2)
    assert rts("export", src2, "-o", tmp_path / "b.geojson", *ARGS, "--date-field", "seen").code == 0
    assert json.loads((tmp_path / "b.geojson").read_text())["features"][0]["properties"]["BaseMapDate"] == \
        "2019-07-15"
    r = rts("export", src, "-o", tmp_path / "c.geojson", *ARGS[:-4], "--basemap-resolution", "inf",
            "--contribution-date", "2026-11-30")
    assert r.code == 2 and "--basemap-resolution" in r.err and not (tmp_path / "c.geojson").exists()
    changes = tmp_path / "t.gpkg"
    assert rts("track", *three_dates(tmp_path / "m"), "-o", changes).code == 0
    r = rts("export", changes, "-o", tmp_path / "d.geojson", *ARGS, "--basemap-date", "2020-07-01")
    assert r.code == 2 and "drop --basemap-date" in r.err
