"""rts track and its ARTS export as a newcomer found them on a second day (issue 21, points 4, 11, 18, 19):
--dates that contradict the maps, predictions exported to ARTS as curated slumps, growth and map pictures that
mislead, and an advance that a shrinking slump also had."""

from __future__ import annotations

import json
from datetime import date

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from test_track import D1, D2, D3, MAPS, SITE, at, read, three_dates, write_map

ARTS_ARGS = ["--region", "Peel Plateau", "--creator", "AB, Some University", "--basemap-source", "PlanetScope",
             "--basemap-resolution", "3", "--contribution-date", "2026-11-30"]


# --- point 4: --dates against the dates the maps carry ------------------------------------------------------------


def test_dates_out_of_order_or_against_the_maps_own_dates_are_refused_with_both_values(rts, tmp_path):
    maps = three_dates(tmp_path / "m")  # slumps_2019-07-15.gpkg, slumps_2020-07-15.gpkg, slumps_2021-07-15.gpkg
    out = tmp_path / "c.gpkg"
    # the newcomer's mistake: the 2020 and 2021 dates swapped
    r = rts("track", *maps, "-o", out, "--dates", "2019-07-15,2021-07-15,2020-07-15")
    assert r.code == 2 and not out.exists()
    err = " ".join(r.err.split())
    assert "not in time order" in err and "slumps_2020-07-15.gpkg gets 2021-07-15" in err and "--force-dates" in err
    # in time order, but a year off what a map's name says: refused, naming the map and both dates
    r = rts("track", *maps, "-o", out, "--dates", "2019-07-15,2020-07-15,2022-07-15")
    err = " ".join(r.err.split())
    assert r.code == 2 and not out.exists()
    assert "slumps_2021-07-15.gpkg: --dates gives 2022-07-15, its file name says 2021-07-15" in err
    # another day of the same year: used, with a warning that gives both dates
    r = rts("track", *maps, "-o", out, "--dates", "2019-08-01,2020-07-15,2021-07-15")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "slumps_2019-07-15.gpkg: --dates gives 2019-08-01, its file name says 2019-07-15" in err
    assert "--dates gives 2020" not in err and "--dates gives 2021" not in err  # agreeing dates: not a word
    assert sorted(set(read(out)[0]["date"])) == ["2019-08-01", D2.isoformat(), D3.isoformat()]
    # the order is the point: --force-dates takes --dates as given, and still says where they differ
    out2 = tmp_path / "forced.gpkg"
    r = rts("track", *maps, "-o", out2, "--dates", "2019-07-15,2021-07-15,2020-07-15", "--force-dates")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "--dates gives 2021-07-15, its file name says 2020-07-15" in err
    assert "--dates gives 2020-07-15, its file name says 2021-07-15" in err
    obs = read(out2)[0]
    assert at(obs, date(2021, 7, 15), MAPS[D2][0]).area_m2 == pytest.approx(8000, rel=1e-3)  # as --dates said


def test_dates_against_scene_names_arts_ranges_and_names_of_several_dates(rts, tmp_path):
    a = write_map(tmp_path / "a.gpkg", MAPS[D1], scene=["S2B_MSIL2A_20190715T203029_N0212_R114_T08WNB"] * 7)
    b = write_map(tmp_path / "b.gpkg", MAPS[D2], scene=["S2A_MSIL2A_20200715T203031_N0214_R114_T08WNB"] * 7)
    r = rts("track", a, b, "-o", tmp_path / "c.gpkg", "--dates", "2019-07-15,2021-07-15")
    assert r.code == 2 and "b.gpkg: --dates gives 2021-07-15, its scene name says 2020-07-15" in " ".join(r.err.split())
    # an ARTS BaseMapDate range holds the date given: no word
    arts = tmp_path / "arts.geojson"
    gpd.GeoDataFrame({"BaseMapDate": ["2020-07-01,2020-07-29"] * 7, "TrainClass": ["Positive"] * 7},
                     geometry=[box(*x) for x in MAPS[D2]], crs=SITE).to_crs(3413).to_file(arts)
    r = rts("track", a, arts, "-o", tmp_path / "d.gpkg", "--dates", "2019-07-15,2020-07-20")
    assert r.code == 0, r.err
    assert "--dates gives" not in r.err
    # a name holding two dates (the imagery's year and an editing date): --dates may pick either
    edited = write_map(tmp_path / "peel_2020_edited_2024-03-05.gpkg", MAPS[D2])
    r = rts("track", a, edited, "-o", tmp_path / "e.gpkg", "--dates", "2019-07-15,2020-07-15")
    assert r.code == 0, r.err
    assert "--dates gives" not in r.err


# --- point 11: ARTS export of model predictions --------------------------------------------------------------------


def _predictions(path, boxes, scores):
    return write_map(path, boxes, score=scores, model=["nano_rgb.rts"] * len(boxes))


def test_arts_export_of_predictions_needs_a_threshold_and_records_score_and_model(rts, tmp_path):
    src = _predictions(tmp_path / "pred_2020-07-15.gpkg", MAPS[D1][:3], [0.1, 0.6, 0.95])
    out = tmp_path / "arts.geojson"
    r = rts("export", src, "-o", out, *ARTS_ARGS)
    err = " ".join(r.err.split())
    assert r.code == 2 and not out.exists()
    assert "3 model prediction(s)" in err and "curated" in err and "--min-score" in err and "--all" in err
    r = rts("export", src, "-o", out, *ARTS_ARGS, "--min-score", 0.5, "--notes", "checked by AB")
    assert r.code == 0, r.err
    feats = json.loads(out.read_text())["features"]
    notes = sorted(f["properties"]["Notes"] for f in feats)
    assert len(feats) == 2 and "below --min-score 0.5 left out" in " ".join(r.out.split())
    assert notes == ["model prediction (rts predict), score 0.600 (kept at --min-score 0.5), model nano_rgb.rts; "
                     "checked by AB",
                     "model prediction (rts predict), score 0.950 (kept at --min-score 0.5), model nano_rgb.rts; "
                     "checked by AB"]
    out2 = tmp_path / "all.geojson"
    assert rts("export", src, "-o", out2, *ARTS_ARGS, "--all").code == 0
    feats = json.loads(out2.read_text())["features"]
    assert len(feats) == 3 and all("score" in f["properties"]["Notes"] and "--all" in f["properties"]["Notes"]
                                   for f in feats)
    r = rts("export", src, "-o", tmp_path / "x.geojson", *ARTS_ARGS, "--all", "--min-score", 0.5)
    assert r.code == 2 and "drop one" in r.err
    # hand labels (no score) are exported as they are; a threshold on them is refused, not silently ignored
    labels = write_map(tmp_path / "labels_2020-07-15.gpkg", MAPS[D1][:3])
    out3 = tmp_path / "labels.geojson"
    assert rts("export", labels, "-o", out3, *ARTS_ARGS).code == 0
    assert [f["properties"]["Notes"] for f in json.loads(out3.read_text())["features"]] == [None] * 3
    r = rts("export", labels, "-o", tmp_path / "y.geojson", *ARTS_ARGS, "--min-score", 0.5)
    assert r.code == 2 and "no score" in r.err


def test_arts_export_of_tracked_predictions_keeps_score_and_model_per_observation(rts, tmp_path):
    a = _predictions(tmp_path / "p_2019-07-15.gpkg", MAPS[D1], [0.9, 0.2, 0.8, 0.7, 0.6, 0.9, 0.9])
    b = _predictions(tmp_path / "p_2020-07-15.gpkg", MAPS[D2], [0.95, 0.9, 0.3, 0.8, 0.7, 0.9, 0.9])
    changes = tmp_path / "changes.gpkg"
    assert rts("track", a, b, "-o", changes).code == 0
    obs = read(changes)[0]
    assert at(obs, D2, MAPS[D2][0]).score == pytest.approx(0.95) and at(obs, D1, MAPS[D1][1]).model == "nano_rgb.rts"
    out = tmp_path / "arts.geojson"
    r = rts("export", changes, "-o", out, *ARTS_ARGS)
    assert r.code == 2 and "--min-score" in r.err
    assert rts("export", changes, "-o", out, *ARTS_ARGS, "--min-score", 0.5).code == 0
    feats = json.loads(out.read_text())["features"]
    assert len(feats) == 14 - 2  # the two below 0.5 left out
    scores = [float(f["properties"]["Notes"].split("score ")[1].split(" ")[0]) for f in feats]
    assert min(scores) >= 0.5 and all("model nano_rgb.rts" in f["properties"]["Notes"] for f in feats)


# --- point 18: the growth plot and the map of the tracks -----------------------------------------------------------

L = [(2000, 0, 3000, 1000), (2000, 0, 3000, 1100), (2000, 0, 3000, 1200)]  # 100 ha, growing 10 ha a year
A = [MAPS[D1][0], MAPS[D2][0], (0, 0, 100, 90)]  # 0.6 ha, growing
S = [(600, 0, 700, 100), (600, 0, 700, 80), (600, 0, 700, 60)]  # shrinking
G = [(900, 0, 950, 50), (900, 0, 950, 70)]  # grows, then is gone at the third date
N = (1200, 0, 1250, 40)  # unchanged


def _series(folder, large=True):
    boxes = {D1: [A[0], S[0], G[0], N], D2: [A[1], S[1], G[1], N], D3: [A[2], S[2], N]}
    if large:
        for d, b in zip((D1, D2, D3), L, strict=True):
            boxes[d] = boxes[d] + [b]
    return [write_map(folder / f"s_{d.isoformat()}.gpkg", b) for d, b in boxes.items()]


def _tracked(rts, tmp_path, monkeypatch, name, large=True):
    """rts track of the series with --plot and --quicklook; returns the figures as written, and the layers."""
    import rtscli.track.figures as figures

    drawn = {}
    write = figures.write_png

    def keep(fig, path, *, overwrite):
        drawn[path.name] = fig
        write(fig, path, overwrite=overwrite)

    monkeypatch.setattr(figures, "write_png", keep)
    out = tmp_path / f"{name}.gpkg"
    r = rts("track", *_series(tmp_path / name, large), "-o", out, "--to-crs", "EPSG:3413",
            "--plot", tmp_path / f"{name}_growth.png", "--quicklook", tmp_path / f"{name}_tracks.png")
    assert r.code == 0, r.err
    return drawn[f"{name}_growth.png"], drawn[f"{name}_tracks.png"], read(out)


def _track_of(obs, b, d=D1):
    return at(obs.to_crs(SITE), d, b).track_id


def test_growth_plot_shows_only_growing_slumps_in_m2_on_a_log_axis(rts, tmp_path, monkeypatch):
    fig, _, (obs, tracks) = _tracked(rts, tmp_path, monkeypatch, "big")
    ax = fig.axes[0]
    shown = {line.get_gid()[6:] for line in ax.get_lines() if (line.get_gid() or "").startswith("track:")}
    assert shown == {_track_of(obs, L[0]), _track_of(obs, A[0])}  # not the shrinking, gone or unchanged ones
    title = ax.get_title()
    assert title.endswith(": all 2 growing slumps") and "fastest-growing" not in title
    assert "not shown: slumps that shrank, did not change or are gone" in " ".join(t.get_text() for t in fig.texts)
    assert ax.get_yscale() == "log" and "m²" in ax.get_ylabel() and "ha" not in ax.get_ylabel().split()
    # the small slump's growth is visible beside the 100 ha one: its line rises by a share of the axis height
    to_axes = ax.transData + ax.transAxes.inverted()
    (_, y0), (_, y1) = to_axes.transform([(0, 6000), (0, 9000)])
    assert y1 - y0 > 0.05
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert any("," in t for t in labels) and not any("10^" in t or "$" in t for t in labels)  # plain numbers
    # the same unit with small slumps only
    fig2, _, _ = _tracked(rts, tmp_path, monkeypatch, "small", large=False)
    assert fig2.axes[0].get_ylabel() == ax.get_ylabel()
    assert fig2.axes[0].get_yscale() == "log"


def test_tracks_map_has_a_true_north_arrow_a_background_and_readable_axes(rts, tmp_path, monkeypatch):
    from affine import Affine

    from rtscli.render.furniture import north_arrow

    _, fig, (_, tracks) = _tracked(rts, tmp_path, monkeypatch, "map")
    fig.canvas.draw()
    ax = fig.axes[0]
    arrows = [a for a in ax.texts if a.get_gid() == "north" and a.get_text() == ""]
    assert len(arrows) == 1 and any(t.get_text() == "N" and t.get_gid() == "north" for t in ax.texts)
    arrow = arrows[0]
    tip = np.asarray(arrow.xycoords.transform(arrow.xy))
    tail = np.asarray(arrow.anncoords.transform(arrow.xyann))
    dx, dy = (tip - tail) / np.hypot(*(tip - tail))
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # the view as a grid of 1 m pixels, rows down
    ux, uy = north_arrow(Affine(1, 0, x0, 0, -1, y1), tracks.crs, x1 - x0, y1 - y0)
    assert (dx, dy) == pytest.approx((ux, uy), abs=1e-3)
    assert dx > 0.9 and abs(dy) < 0.2  # EPSG:3413 at 130 W: true north points right on the map, not up
    assert ax.get_facecolor()[:3] != (1.0, 1.0, 1.0)
    assert any(c.get_gid() == "graticule" for c in ax.collections)
    assert "km" in ax.get_xlabel() and "km" in ax.get_ylabel()
    assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
    xt = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert xt and all("e" not in t for t in xt) and any("," in t for t in xt)  # -2,253.5 km, not -2.2535 1e6


# --- point 19: a shrinking slump never reads as advancing ------------------------------------------------------------


def test_boundary_change_is_signed_and_a_shrinking_slump_draws_back(rts, tmp_path):
    wobble = (595, 0, 705, 60)  # S shrinks to 110 x 60 m: 5 m wider on each side, 40 m shorter
    maps = [write_map(tmp_path / f"w_{d.isoformat()}.gpkg", b)
            for d, b in ((D1, [A[0], S[0]]), (D2, [A[1], wobble]))]
    out = tmp_path / "c.gpkg"
    assert rts("track", *maps, "-o", out).code == 0
    obs, tracks = read(out)
    assert "advance_m" not in obs.columns and "advance_rate_m_yr" not in obs.columns
    grew, shrank = at(obs, D2, A[1]), at(obs, D2, wobble)
    years = (D2 - D1).days / 365.25
    assert grew.boundary_change_m == pytest.approx(20, abs=1e-3)
    assert shrank.area_change_m2 < 0 and shrank.boundary_change_m == pytest.approx(-40, abs=1e-3)
    assert shrank.boundary_rate_m_yr == pytest.approx(-40 / years, rel=1e-4)
    t = tracks.set_index("track_id")
    assert t.loc[shrank.track_id, "max_advance_m"] == 0 and t.loc[shrank.track_id, "boundary_rate_m_yr"] < 0
    assert t.loc[grew.track_id, "max_advance_m"] == pytest.approx(20, abs=1e-3)
    # ARTS export of these changes still works (it carries no boundary figures)
    arts = tmp_path / "arts.geojson"
    assert rts("export", out, "-o", arts, *ARTS_ARGS).code == 0
    assert not any("advance" in k for k in json.loads(arts.read_text())["features"][0]["properties"])
