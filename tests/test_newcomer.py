"""Issue 21, "A newcomer's second day": each kind of mistake a newcomer met, fixed and tested as a kind.

1. a band preset made for another sensor is refused by every command that applies a band map (prepare, ssl,
   predict), naming the preset that fits (the real Sentinel-2 scene of tests/data/rts-digitization);
5. the units advice of ``rts predict`` comes from the actual conversions, and following it silences it;
7. ``rts ssl`` and ``rts predict`` find the rasters of a folder with site subfolders, as ``rts prepare`` does;
17. the messages say what they mean (the best dropped score below the threshold; scenes mapped and skipped);
20. help fits 80 columns, usage lines name arguments without braces, and a mistyped choice gets
    "did you mean ...".

The stand-in detector and its bundle are those of ``test_predict.py`` (its ``bundles`` and ``blob`` fixtures).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import test_predict
from conftest import DATA, write_tif
from test_predict import OBJECTS, BlobModel, fake_bundle, scene_with

# test_predict's fixtures, used here by name: a nano bundle, and the stand-in detector loaded in its place
bundles = test_predict.bundles
blob = test_predict.blob

PEEL = DATA / "rts-digitization" / "Peel"
SCENE = PEEL / "S2_20210821T210019_20210821T210020_T08WMA.tif"  # Sentinel-2 B2..B8, 7 bands, no descriptions
LABELS = PEEL / "expert01_Peel_digitized.shp"
S2_10 = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def ten_band(tmp_path: Path, descriptions: list[str] | None = None) -> Path:
    """The Peel scene as a 10-band Sentinel-2 stack (B2..B8 as they are; B8A, B11, B12 stand-ins)."""
    with rasterio.open(SCENE) as src:
        data, profile = src.read(), src.profile
    stack = np.concatenate([data, data[[6, 5, 4]]])
    name = "s2_10_named.tif" if descriptions else "s2_10.tif"
    return write_tif(tmp_path / name, stack, crs=profile["crs"], transform=profile["transform"],
                     nodata=profile["nodata"], descriptions=descriptions)


# ---------------------------------------------------------------- 1. a band preset that does not fit the raster


@pytest.mark.parametrize("count", [7, 10])
def test_prepare_refuses_a_preset_made_for_another_sensor_and_names_the_one_that_fits(tmp_path, rts, count):
    scene = SCENE if count == 7 else ten_band(tmp_path)
    out = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", LABELS, "-o", out, "--bands", "planetscope4", "--split", "1,0,0")
    assert r.code == 2 and not out.exists(), r.out + r.err
    err = " ".join(r.err.split())
    assert "planetscope4 is made for 4-band rasters" in err and f"this raster has {count} bands" in err
    assert "band 4 would be read as nir" in err
    assert f"--bands sentinel2-{count}" in err  # the preset that fits
    # following the advice works, and NDVI is NDVI again (B8 / B4, not red edge B5 / B4)
    r = rts("prepare", scene, "--labels", LABELS, "-o", out, "--bands", f"sentinel2-{count}", "--split", "1,0,0")
    assert r.code == 0, r.err
    import yaml

    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["normalization"]["ndvi"]["mean"] > 0.4


def test_band_descriptions_that_contradict_the_band_map_are_refused(tmp_path, rts):
    """A 10-band stack whose descriptions say B2..B12: a 4-band preset, or a map reading B5 as nir, is refused
    with the preset that fits and the map the descriptions give."""
    scene = ten_band(tmp_path, S2_10)
    for bands in ("planetscope4", "blue=1,green=2,red=3,nir=4"):
        r = rts("prepare", scene, "--labels", LABELS, "-o", tmp_path / "ds", "--bands", bands)
        err = " ".join(r.err.split())
        assert r.code == 2 and "describes band 4 as 'B5', Sentinel-2's rededge1" in err, err
        assert "--bands sentinel2-10" in err and "blue=1,green=2,red=3,nir=7" in err
    # the preset of the same sensor with fewer bands reads B2..B8 right: no refusal
    r = rts("prepare", scene, "--labels", LABELS, "-o", tmp_path / "ok", "--bands", "sentinel2-7", "--split", "1,0,0")
    assert r.code == 0, r.err


def test_the_one_band_check_knows_names_codes_and_sensors():
    from rtscli.data.bands import BandMap, check_fits, fitting_presets
    from rtscli.errors import RtsError

    ps4 = BandMap.parse("planetscope4")
    check_fits(ps4, 4, ["Blue", "Green", "Red", "NIR"])  # PlanetScope's own names
    check_fits(ps4, 4, ["B02", "B03", "B04", "B08"])  # a 10 m Sentinel-2 stack: B8 is NIR there, fine
    with pytest.raises(RtsError, match="describes band 1 as 'Red'.*red=1,green=2,blue=3,nir=4"):
        check_fits(ps4, 4, ["Red", "Green", "Blue", "NIR"])
    with pytest.raises(RtsError, match="'SR_B5', Landsat-8/9's nir.*--bands landsat8-7"):
        check_fits(BandMap.parse("sentinel2-7"), 7, [f"SR_B{i}" for i in range(2, 9)])
    with pytest.raises(RtsError, match="bands 8 \\(nir08\\), 9 \\(swir1\\), 10 \\(swir2\\).*--bands sentinel2-7"):
        check_fits(BandMap.parse("sentinel2-10"), 7)
    check_fits(BandMap.parse("sentinel2-7"), 10)  # the first 7 bands of a 10-band stack: the same bands
    check_fits(BandMap.parse("paper").without(["mask"]), 5)  # a scene to map in the paper's layout
    check_fits(ps4, 5)  # no preset is made for 5 bands (e.g. BGRN + a DEM): the band numbers decide
    assert fitting_presets(7) == ["sentinel2-7", "landsat8-7"] and fitting_presets(10, S2_10) == ["sentinel2-10"]


def test_ssl_and_predict_refuse_a_preset_made_for_another_sensor(tmp_path, rts, blob):
    run = tmp_path / "ssl"
    r = rts("ssl", SCENE, "--modality", "nir", "--bands", "planetscope4", "-o", run, "--max-steps", 1, "--workers", 0)
    err = " ".join(r.err.split())
    assert r.code == 2 and "planetscope4 is made for 4-band rasters" in err and "--bands sentinel2-7" in err, err
    assert not run.exists()
    from rtscli.data.bands import BandMap
    from rtscli.engine.ssl_inputs import open_scenes

    assert len(open_scenes([str(SCENE)], BandMap.parse("sentinel2-7"), aux=[], scale=None, offset=None,
                           nodata=None)) == 1
    for scene, count in ((SCENE, 7), (ten_band(tmp_path), 10)):
        out = tmp_path / f"p{count}.gpkg"
        r = rts("predict", scene, "-o", out, "--model", blob.path, "--bands", "planetscope4", "--workers", 0)
        err = " ".join(r.err.split())
        assert r.code == 2 and f"--bands sentinel2-{count}" in err and not out.exists(), err
        folder = tmp_path / f"many{count}"  # many scenes: each is checked before the first runs
        folder.mkdir()
        shutil.copy(scene, folder / "a.tif")
        r = rts("predict", folder, "-o", tmp_path / f"o{count}", "--model", blob.path, "--bands", "planetscope4",
                "--workers", 0)
        assert r.code == 2 and f"--bands sentinel2-{count}" in " ".join(r.err.split())
    r = rts("predict", SCENE, "-o", tmp_path / "ok.gpkg", "--model", blob.path, "--bands", "sentinel2-7",
            "--workers", 0)
    assert r.code == 0, r.err


# ---------------------------------------------------------------- 5. the units advice, from the conversions


def _warnings_of(fn) -> list[str]:
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("rtscli")
    logger.addHandler(handler)
    try:
        fn()
    finally:
        logger.removeHandler(handler)
    return [m for m in seen if "value range the model was trained on" in m]


def _advised(warning: str) -> dict[str, float]:
    m = re.search(r"pass --scale (\S+)(?: --offset (\S+))?", warning)
    assert m, warning
    return {"scale": float(m.group(1))} | ({"offset": float(m.group(2))} if m.group(2) else {})


@pytest.mark.parametrize("case", ["model as stored, scene tagged x 0.0001", "model 0-1, scene x 10000 + 1000"])
def test_following_the_units_advice_silences_it(tmp_path, case):
    from rtscli.data.modalities import BandStats
    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.predict import PredictOptions, predict_scene

    bands = {"red": 1, "green": 2, "blue": 3}
    bundle = fake_bundle()
    img = np.full((3, 96, 128), 500, np.uint16)
    img[:, 20:40, 30:60] = 800
    if case.startswith("model as stored"):  # trained on uint16 reflectance x 10000, read as stored
        bundle.stats = {c: BandStats(500.0, 200.0, 100.0, 3000.0) for c in bands}
        bundle.values = {"scale": {}, "offset": {}, "source": "none", "stored_dtype": "uint16"}
        path = write_tif(tmp_path / "tagged.tif", img)
        with rasterio.open(path, "r+") as dst:  # the file says x 0.0001: read as 0.05, far below the model's
            dst.scales = (1e-4,) * 3
        expected = {"scale": 1.0}  # as stored, as the training data were (never --scale 10000)
    else:  # trained on L2A x 10000 + 1000 read through its metadata; the scene in float32 without metadata
        bundle.stats = {c: BandStats(0.05, 0.03, 0.0, 0.5) for c in bands}
        bundle.values = {"scale": {c: 1e-4 for c in bands}, "offset": {c: -0.1 for c in bands},
                         "source": "gdal-metadata", "stored_dtype": "uint16"}
        path = write_tif(tmp_path / "l2a.tif", (img.astype(np.float32) + 1000))
        expected = {"scale": 1e-4, "offset": -0.1}

    def predict(**flags):
        scene = open_scene([Source(path, dict(bands))], training=bundle.values, **flags)
        predict_scene(BlobModel(), bundle, scene, PredictOptions(workers=0, overlap=16))

    warned = _warnings_of(predict)
    assert len(warned) == 1 and "other units" in warned[0]
    flags = _advised(warned[0])
    assert flags == pytest.approx(expected)
    assert _warnings_of(lambda: predict(**flags)) == []  # following the advice silences it


# ---------------------------------------------------------------- 7. site subfolders, for ssl and predict too


def test_ssl_and_predict_find_the_rasters_of_site_subfolders(tmp_path, rts, blob):
    from rtscli.data.bands import BandMap
    from rtscli.engine.ssl_inputs import open_scenes

    scenes = tmp_path / "scenes"
    for site, k in (("siteA", 1), ("siteB", 2)):
        (scenes / site).mkdir(parents=True)
        shutil.copy(scene_with(tmp_path, OBJECTS[:k]), scenes / site / f"{site}_2021.tif")
    opened = open_scenes([str(scenes)], BandMap.parse("red=1,green=2,blue=3"), aux=[], scale=None, offset=None,
                         nodata=None)
    assert sorted(s.name for s in opened) == ["siteA_2021", "siteB_2021"]
    out = tmp_path / "out"
    r = rts("predict", scenes, "-o", out, "--model", blob.path, "--workers", 0)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["siteA_2021.gpkg", "siteB_2021.gpkg"]


# ---------------------------------------------------------------- 17. messages that say what they mean


class LowScores(BlobModel):
    """The stand-in detector, every detection scored just under 0.15."""

    def predict(self, images: torch.Tensor) -> list[dict]:
        out = super().predict(images)
        for p in out:
            p["scores"] = torch.full_like(p["scores"], 0.14996)
        return out


def test_the_best_dropped_score_is_said_below_the_threshold(tmp_path):
    from rtscli.data.scenes import Source, open_scene
    from rtscli.engine.predict import PredictOptions, dropped_note, predict_scene

    scene = open_scene([Source(scene_with(tmp_path, OBJECTS), {"red": 1, "green": 2, "blue": 3})])
    opts = PredictOptions(workers=0, overlap=16, min_score=0.15)
    gdf, timing = predict_scene(LowScores(), fake_bundle(), scene, opts)
    note = dropped_note(timing, opts)
    assert len(gdf) == 0 and note is not None
    assert "scored below --min-score 0.15 and were dropped (the best of them scored 0.1499)" in note, note
    assert "0.1500" not in note


def test_a_folder_run_says_scenes_mapped_and_skipped(tmp_path, rts, blob):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for k in range(3):
        shutil.copy(scene_with(tmp_path, OBJECTS[:1]), scenes / f"s{k}.tif")
    args = ("predict", scenes, "-o", tmp_path / "out", "--model", blob.path, "--workers", 0)
    r = rts(*args)
    out = " ".join(r.out.split())
    assert r.code == 0 and "3 scenes mapped, 0 skipped (done before)" in out, r.out + r.err
    assert "run here" not in out and "to do" not in out
    (tmp_path / "out" / "s1.gpkg").unlink()
    r = rts(*args)
    assert r.code == 0 and "1 scene mapped, 2 skipped (done before)" in " ".join(r.out.split())


# ---------------------------------------------------------------- 20. help at 80 columns; "did you mean"


def _all_commands() -> list[list[str]]:
    from rtscli.cli import _command

    out: list[list[str]] = [[]]

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            out.append(path + [name])
            walk(sub, path + [name])

    walk(_command(), [])
    return out


def test_help_fits_80_columns_and_usage_lines_have_no_braces(rts, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for command in _all_commands():
        r = rts(*command, "--help")
        assert r.code == 0, (command, r.err)
        lines = r.out.splitlines()
        assert max(len(line) for line in lines) <= 80, command
        usage = next(line for line in lines if line.startswith("Usage:"))
        assert "{" not in usage and "}" not in usage and not re.search(r"\[[a-z]", usage), (command, usage)
    usage = {" ".join(c): next(line for line in rts(*c, "--help").out.splitlines() if line.startswith("Usage:"))
             for c in (["ssl"], ["synth"], ["prepare"])}
    assert usage["ssl"].endswith("SCENES...") and usage["synth"].endswith("OUT")
    assert usage["prepare"].endswith("[INPUTS]...")
    text = rts("prepare", "--help").out
    # a docstring paragraph is rewrapped as one paragraph (no line ends where the source line ended) ...
    assert "images plus mask images" in text
    # ... and an option's help gets a wide column, not a 20-character one
    assert re.search(r"--bands TEXT +Band map or preset: planetscope4,", text)
    from rtscli.cli import _command

    root = " ".join(rts("--help").out.split())
    for name, cmd in _command().commands.items():  # each command's first paragraph whole, never cut with "..."
        assert " ".join(cmd.help.split("\n\n")[0].split()) in root, name


def test_a_mistyped_choice_gets_did_you_mean(tmp_path, rts):
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import resolve
    from rtscli.engine.ablate import parse_fusions
    from rtscli.errors import RtsError
    from rtscli.modeling.config import load_preset

    r = rts("bands", "planetscpe4")
    assert r.code == 2 and "did you mean 'planetscope4'" in r.err, r.err
    r = rts("prepare", SCENE, "--labels", LABELS, "-o", tmp_path / "ds", "--bands", "sentinel2_7")
    assert r.code == 2 and "did you mean 'sentinel2-7'" in r.err, r.err
    r = rts("prepare", SCENE, "--labels", LABELS, "-o", tmp_path / "ds", "--bands", "sentinel2-7", "--mode", "vector")
    assert r.code == 2 and "did you mean 'vectors'" in r.err, r.err
    with pytest.raises(RtsError, match="unknown model preset 'cascade-mvitv2-bb'; did you mean 'cascade-mvitv2-b'"):
        load_preset("cascade-mvitv2-bb")
    with pytest.raises(RtsError, match="unknown modality 'rbg'; did you mean 'rgb'"):
        resolve("rbg", BandMap.parse("planetscope4"))
    with pytest.raises(RtsError, match="unknown fusion strategy 'residual-cros'; did you mean 'residual-cross'"):
        parse_fusions("residual-cros")
    with pytest.raises(RtsError, match="unknown band preset 'xyz' -- use one of planetscope4"):
        BandMap.parse("xyz")  # nothing close: the choices only
