"""rts in QGIS: the Processing provider (``qgis_plugin/rts_qgis``), its zip, and the styles rts stores in GeoPackages.

The first tests need no QGIS: the plugin's parameters are the command line's own (defaults, help, choices), the
plugin finds rts and reads its progress and errors, a cancelled run stops rts and its workers and leaves nothing,
``rts qgis-plugin`` writes an installable zip, and ``rts predict`` stores its QGIS style. The others run the
provider in a real QGIS (QGIS's own Python, ``/usr/bin/python3`` on Debian; ``make qgis-deps`` installs it), headless:
``tests/qgis/run_provider.py`` runs predict (loaded and styled), a failure, a cancel, Processing's batch dialog on
two scenes, a Graphical Modeler model and track; ``qgis_process`` runs predict with the plugin enabled headless.
Without QGIS they are skipped, with the reason.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from conftest import apart, paper_sample, write_tif

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "qgis_plugin" / "rts_qgis"
RTS = Path(sys.executable).with_name("rts")
#: QGIS's Python (Debian: the system one); RTS_QGIS_PYTHON names another
QGIS_PYTHON = os.environ.get("RTS_QGIS_PYTHON", "/usr/bin/python3")
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"  # Processing, on Debian


def _plugin_module(name: str):
    """A module of the plugin that does not import QGIS (spec, runner), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"rts_qgis_{name}", PLUGIN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


spec = _plugin_module("spec")
runner = _plugin_module("runner")


# ---------------------------------------------------------------- without QGIS


def _cli_params(command: tuple[str, ...]) -> dict[str, object]:
    from rtscli.cli import _command

    return {opt: p for p in _command().commands[command[0]].params for opt in p.opts}


def test_every_parameter_is_the_command_lines_own():
    """Each dialog shows the help text and the default of ``rts COMMAND --help``; enums offer only values rts
    takes; the band presets are rts's, in its order."""
    from rtscli.data.bands import PRESETS
    from rtscli.data.options import MODES

    valid = {"--bands": set(PRESETS), "--device": {"cpu", "cuda", "mps"}, "--match": {"ios", "iou"},
             "--gone": {"disappeared", "stabilized"}, "--mode": set(MODES)}
    assert spec.BAND_PRESETS == tuple(PRESETS)
    checked = 0
    for command in spec.COMMANDS:
        cli = _cli_params(command.cli)
        for p in command.params:
            assert p.kind in spec.KINDS, (command.id, p.name)
            if not p.flag:
                continue
            assert p.flag in cli, f"{command.id}: rts {command.cli[0]} has no {p.flag}"
            option = cli[p.flag]
            assert p.help == option.help, f"{command.id} {p.name}: help differs from rts's"
            if p.kind == "enum":
                values = [v for _, v in p.choices]
                assert values[p.default] == option.default, (command.id, p.name)
                assert {v for v in values if v is not None} <= valid[p.flag], (command.id, p.name)
            elif p.kind == "bool":
                assert p.default == option.default and option.is_flag, (command.id, p.name)
            else:
                assert p.default == option.default, f"{command.id} {p.name}: default {p.default} != {option.default}"
            checked += 1
    assert checked >= 40
    assert [c.id for c in spec.COMMANDS] == ["predict", "merge", "track", "exportarts", "prepare"]


def test_progress_lines_and_errors_are_read_as_rts_writes_them():
    from rtscli.progress import describe

    line = "rts: " + describe("predict scene_00", 1200, 8100, 110, unit="tiles", area_km2=3000)
    assert runner.progress_of(line) == pytest.approx(100 * 1200 / 8100)
    assert runner.progress_of("rts: [2/5] scene_01: 30/30 tiles (100%), 3 tiles/s, done in 10 s") == 100
    assert runner.progress_of("rts: training: epoch 0 (the only epoch), step 1/4 (25%), loss 1.7") == 25
    assert runner.progress_of("9 slumps -> out.gpkg (6.8 s, 9 tiles, 0 all-nodata tiles skipped)") is None
    lines = ["rts: predict x: 4/9 tiles (44%)", "rts: error: a.tif: not found -- check the path", "bye"]
    assert runner.error_of(lines) == "rts: error: a.tif: not found -- check the path"
    assert runner.error_of(["Usage: rts predict [OPTIONS]", "", "Error: No such option: --nope"]) == \
        "Error: No such option: --nope"
    assert runner.error_of(["Killed", ""]) == "Killed"


def test_the_plugin_finds_rts_from_its_setting_the_environment_or_the_path(tmp_path):
    exe = tmp_path / "env" / "bin" / "rts"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\necho rts 0.0\n")
    exe.chmod(0o755)
    assert runner.find_rts(str(exe), {}) == str(exe)
    assert runner.find_rts(str(exe.parent), {}) == str(exe)  # the environment's bin folder will do
    assert runner.find_rts("", {"RTS_EXECUTABLE": str(exe)}) == str(exe)
    assert runner.find_rts(None, {"PATH": str(exe.parent)}) == str(exe)
    with pytest.raises(runner.RtsNotFound, match="Providers > rts"):
        runner.find_rts(None, {"PATH": str(tmp_path)})
    with pytest.raises(runner.RtsNotFound, match="setting names .*nowhere"):  # a wrong setting is not hidden by PATH
        runner.find_rts(str(tmp_path / "nowhere"), {"PATH": str(exe.parent)})
    env = runner.child_environment({"PYTHONHOME": "/qgis/python", "PROJ_LIB": "/qgis/proj", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and "PROJ_LIB" not in env and env["PATH"] == "/bin"
    assert env["RTS_PROGRESS_SECONDS"] == "1" and env["PYTHONUNBUFFERED"] == "1"


@pytest.fixture(scope="module")
def plugin_data(tmp_path_factory):
    """A nano bundle (one training step, 64 px tiles), two 128 px scenes of one place a year apart (paper band
    layout), and a 1024 px three-band scene for cancelling."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("qgis")
    for k in range(4):
        write_tif(root / "in" / "site" / f"x{k}.tif", paper_sample(shape=(64, 64), rects=[(8, 30, 10, 40)], seed=k),
                  transform=apart(k))
    assert main(["prepare", str(root / "in"), "-o", str(root / "ds"), "--bands", "paper", "--split",
                 "0.5,0.25,0.25"]) == 0
    assert main(["pretrain", "--modality", "rgb", "--data", str(root / "ds"), "-o", str(root / "nano"), "--preset",
                 "nano", "--max-steps", "1", "--workers", "0", "--batch-size", "2", "--tile-size", "64"]) == 0
    scenes = []
    for year, rects in ((2019, [(10, 40, 20, 60), (80, 110, 70, 100)]), (2020, [(10, 46, 20, 66), (80, 116, 70, 106)])):
        scenes.append(write_tif(root / "scenes" / f"site_{year}-07-15.tif",
                                paper_sample(shape=(128, 128), rects=rects, seed=year), transform=apart(0)))
    rng = np.random.default_rng(0)
    big = write_tif(root / "big.tif", (1000 + rng.normal(0, 10, (3, 1024, 1024))).astype(np.uint16),
                    transform=apart(0))
    return {"root": root, "bundle": root / "nano", "scenes": scenes, "big": big}


def test_a_cancelled_run_stops_rts_and_its_workers_and_leaves_nothing(plugin_data, tmp_path):
    """The plugin's Cancel: SIGINT to rts's process group, as Ctrl-C in a terminal; rts removes what it started."""
    argv = [str(RTS), "predict", str(plugin_data["big"]), "--model", str(plugin_data["bundle"]), "--bands",
            "red=1,green=2,blue=3", "--min-score", "0", "--workers", "2", "-o", str(tmp_path / "big.gpkg")]
    seen = []
    result = runner.run(argv, on_line=lambda line, pct: seen.append((line, pct)),
                        is_canceled=lambda: any(pct is not None for _, pct in seen),
                        env={**runner.child_environment(), "OMP_NUM_THREADS": "1"})
    assert result.canceled and result.code == 130, result.lines[-5:]
    assert "rts: interrupted; no partial output was kept" in result.lines
    assert not any("Traceback" in line for line in result.lines)
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)  # rts and its tile-reading workers are gone
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX's")
def test_no_process_that_rts_leaves_behind_outlives_the_run(tmp_path):
    """A process rts would leave running (holding its output open) is ended with the run, which then returns."""
    import time

    fake = tmp_path / "rts"
    fake.write_text("#!/bin/sh\nsleep 600 &\necho 'rts: done'\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    result = runner.run([str(fake)], on_line=lambda line, pct: None, is_canceled=lambda: False)
    assert result.code == 0 and result.lines == ["rts: done"] and not result.canceled
    assert time.monotonic() - t0 < 30
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)


def test_rts_qgis_plugin_writes_an_installable_zip(tmp_path, rts):
    from rtscli import __version__

    out = tmp_path / "rts_qgis.zip"
    r = rts("qgis-plugin", "-o", out)
    assert r.code == 0, r.err
    assert "Install from ZIP" in r.out and str(RTS.parent) in r.out.replace("\n", "")
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        meta = configparser.ConfigParser()
        meta.read_string(z.read("rts_qgis/metadata.txt").decode())
        icon = z.read("rts_qgis/icon.png")
    assert {"rts_qgis/__init__.py", "rts_qgis/metadata.txt", "rts_qgis/LICENSE", "rts_qgis/icon.png",
            "rts_qgis/icon.svg", "rts_qgis/provider.py", "rts_qgis/algorithms.py", "rts_qgis/runner.py",
            "rts_qgis/spec.py", "rts_qgis/styles/slumps.qml", "rts_qgis/styles/tracks.qml",
            "rts_qgis/styles/observations.qml"} <= names
    assert all(n.startswith("rts_qgis/") and "__pycache__" not in n and not n.endswith(".pyc") for n in names)
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "homepage", "icon", "license"):
        assert general.get(key, "").strip(), key
    assert general["version"] == __version__ and general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22" and f"rts_qgis/{general['icon']}" in names
    assert all(general[k].startswith("https://") for k in ("homepage", "repository", "tracker"))
    assert icon[:8] == b"\x89PNG\r\n\x1a\n"
    # the source folder says the same version; the same plugin makes the same zip, byte for byte
    source = configparser.ConfigParser()
    source.read(PLUGIN / "metadata.txt")
    assert source["general"]["version"] == __version__
    r = rts("qgis-plugin", "-o", out)
    assert r.code == 2 and "--overwrite" in r.err
    assert rts("qgis-plugin", "-o", tmp_path / "again.zip").code == 0
    assert (tmp_path / "again.zip").read_bytes() == out.read_bytes()


def test_an_installed_rts_ships_the_plugin(tmp_path):
    """A wheel carries the plugin as data (not as a module of rtscli), and its ``rts qgis-plugin`` zips it."""
    pytest.importorskip("setuptools")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rtscli-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("rtscli/qgis-plugin/")}
        z.extractall(tmp_path / "site")
    expected = {f"rtscli/qgis-plugin/rts_qgis/{p.relative_to(PLUGIN).as_posix()}" for p in PLUGIN.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert shipped == expected
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from rtscli.cli import main; "
            "import rtscli; assert rtscli.__file__.startswith(sys.argv[1]); "
            "sys.exit(main(['qgis-plugin', '-o', sys.argv[2]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site"), str(tmp_path / "p.zip")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        assert "rts_qgis/styles/slumps.qml" in z.namelist()


def _styles(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT f_table_name, f_geometry_column, styleName, useAsDefault, substr(styleQML, 1, 200) "
                          "FROM layer_styles ORDER BY id").fetchall()


def test_a_geopackage_keeps_rts_style_as_qgis_stores_styles(tmp_path, caplog):
    from rtscli.io.styles import style_qml, write_layer_style
    from rtscli.io.vector import write_layers

    gpkg = tmp_path / "slumps.gpkg"
    gdf = gpd.GeoDataFrame({"id": [1], "score": [0.9]}, geometry=[box(0, 0, 10, 10)], crs=32608)
    write_layers({"rts": gdf, "rts_footprint": gdf[["geometry"]]}, gpkg)
    with sqlite3.connect(gpkg) as db:  # an analyst's own table, not registered in gpkg_contents
        db.execute("CREATE TABLE notes (text TEXT)")
    assert write_layer_style(gpkg, "rts", "slumps")
    assert write_layer_style(gpkg, "rts", "slumps")  # a re-run replaces its own row
    (row,) = _styles(gpkg)
    assert row[:4] == ("rts", "geom", "rts", 1) and "<qgis" in row[4]
    # GDAL lists what it listed before, and the style table
    assert set(gpd.list_layers(gpkg)["name"]) == {"rts", "rts_footprint", "notes", "layer_styles"}
    with sqlite3.connect(gpkg) as db:
        # the user saves a default style of their own in QGIS: rts's row no longer takes the default from it
        db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                   "styleName, styleQML, styleSLD, useAsDefault) VALUES ('', '', 'rts', 'geom', 'mine', '<qgis/>', "
                   "'', 1)")
    assert write_layer_style(gpkg, "rts", "slumps")
    assert sorted((r[2], r[3]) for r in _styles(gpkg)) == [("mine", 1), ("rts", 0)]
    # a file with attributes tables (which hide unregistered ones from GDAL): the style table is registered, as
    # QGIS registers it, so that QGIS still finds it
    other = tmp_path / "other.gpkg"
    write_layers({"rts": gdf}, other)
    gpd.GeoDataFrame({"a": [1]}).to_file(other, layer="table")
    assert write_layer_style(other, "rts", "slumps")
    assert set(gpd.list_layers(other)["name"]) == {"rts", "table", "layer_styles"}
    other.unlink()
    assert len(gpd.read_file(gpkg, layer="rts")) == 1  # GDAL reads the layers as before
    assert "graduatedSymbol" in style_qml("slumps") and 'attr="score"' in style_qml("slumps")
    # a file that refuses the style: a warning, never a failure (the map is complete before it)
    assert not write_layer_style(gpkg, "nope", "slumps")
    (tmp_path / "plain.gpkg").write_text("not a geopackage")
    assert not write_layer_style(tmp_path / "plain.gpkg", "rts", "slumps")
    assert "not stored" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.gpkg", "slumps.gpkg"]  # no lock file left


def test_rts_predict_stores_its_style_and_track_still_finds_the_slumps(plugin_data, tmp_path, rts):
    out = tmp_path / "site_2019-07-15.gpkg"
    r = rts("predict", plugin_data["scenes"][0], "-o", out, "--model", plugin_data["bundle"], "--bands", "paper",
            "--min-score", 0, "--overlap", 0, "--workers", 0)
    assert r.code == 0, r.err
    (row,) = _styles(out)
    assert row[0] == "rts" and row[3] == 1
    shutil.copy(out, tmp_path / "site_2020-07-15.gpkg")
    r = rts("track", out, tmp_path / "site_2020-07-15.gpkg", "-o", tmp_path / "changes.gpkg", "--dates",
            "2019-07-15,2020-07-15", "--force-dates")  # the copy's scene name says 2019
    assert r.code == 0, r.err
    assert len(gpd.read_file(tmp_path / "changes.gpkg", layer="tracks")) > 0


# ---------------------------------------------------------------- in QGIS


def _qgis_missing() -> str | None:
    """Why QGIS cannot be tested here (None: it can)."""
    if not Path(QGIS_PYTHON).exists():
        return f"{QGIS_PYTHON} not found (QGIS's Python; `make qgis-deps` installs QGIS on Debian/Ubuntu)"
    r = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{QGIS_PYTHON} cannot import qgis.core (`make qgis-deps` installs python3-qgis): " \
               f"{r.stderr.strip().splitlines()[-1:]}"
    if not Path(QGIS_PLUGINS, "processing").is_dir():
        return f"QGIS's Processing plugin is not in {QGIS_PLUGINS}"
    return None


def _qgis_env(tmp: Path) -> dict[str, str]:
    runtime = tmp / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime),
            "QGIS_CUSTOM_CONFIG_PATH": str(tmp / "qgis_profile"), "OMP_NUM_THREADS": "1", "RTS_PROGRESS_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join([str(PLUGIN.parent), QGIS_PLUGINS]), "RTS_EXECUTABLE": str(RTS)}


@pytest.fixture(scope="module")
def qgis(plugin_data):
    """The report of ``tests/qgis/run_provider.py`` run once in QGIS's Python (every check)."""
    reason = _qgis_missing()
    if reason:
        pytest.skip(reason)
    root = plugin_data["root"]
    cfg = {"rts": str(RTS), "bundle": str(plugin_data["bundle"]), "scenes": [str(s) for s in plugin_data["scenes"]],
           "big": str(plugin_data["big"]), "work": str(root / "work"),
           "bands_index": 1 + spec.BAND_PRESETS.index("paper"),
           "checks": ["provider", "predict", "error", "cancel", "batch", "model", "track", "merge", "prepare"]}
    (root / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([QGIS_PYTHON, str(ROOT / "tests" / "qgis" / "run_provider.py"), str(root / "config.json"),
                        str(root / "report.json")], env=_qgis_env(root), capture_output=True, text=True, timeout=600)
    assert (root / "report.json").exists(), r.stderr[-3000:]
    report = json.loads((root / "report.json").read_text())
    report["stderr"] = r.stderr
    return report


def _check(report: dict, name: str) -> dict:
    assert name not in report["errors"], report["errors"].get(name)
    return report[name]


def test_the_provider_lists_the_rts_algorithms_with_rts_defaults(qgis):
    got = _check(qgis, "provider")
    assert got["algorithms"] == ["rts:exportarts", "rts:merge", "rts:predict", "rts:prepare", "rts:track"]
    predict = got["params"]["predict"]
    assert predict["INPUT"]["type"] == "raster" and predict["OUTPUT"]["type"] == "vectorDestination"
    assert predict["MIN_SCORE"] == {"type": "number", "default": 0.5, "optional": False}
    assert predict["MIN_AREA"]["default"] == 0.0 and predict["BANDS"]["type"] == "enum"
    assert predict["MODEL"] == {"type": "file", "default": None, "optional": True}
    assert got["params"]["track"]["MAPS"]["type"] == "multilayer"
    assert got["outputs"]["track"][-2:] == ["TRACKS", "OBSERVATIONS"]
    assert got["params"]["exportarts"]["REGION"]["optional"] is False
    assert "Keep detections scoring at least this." in got["help"] and got["icon"] and got["setting"]
    assert qgis["unloaded"]


def test_predict_in_qgis_loads_the_slumps_styled_with_rts_progress(qgis, plugin_data):
    got = _check(qgis, "predict")
    (layer,) = got["loaded"]
    assert layer["valid"] and layer["features"] > 0 and layer["crs"] == "EPSG:32608"  # the scene's CRS
    assert layer["renderer"] == "graduatedSymbol" and layer["attribute"] == "score"
    assert layer["labels"] and layer["label_field"] == "id"
    assert got["results"]["OUTPUT"].endswith("slumps.gpkg|layername=rts") and got["quicklook"]
    # the GeoPackage opens styled in QGIS without the plugin too (its layer_styles table)
    alone = got["file"]
    assert alone["features"] == layer["features"] and alone["renderer"] == "graduatedSymbol"
    assert alone["label_field"] == "id"
    # rts's progress lines moved the progress bar, and its lines reached the log
    assert got["progress"][-1] == 100 and any(0 < p < 100 for p in got["progress"])
    assert any("tiles (" in line for line in got["lines"]) and any("slumps ->" in line for line in got["lines"])
    (command,) = got["commands"]
    assert command.startswith(f"{RTS} predict {plugin_data['scenes'][0]}") and "--bands paper" in command
    assert not got["warnings"]


def test_a_failing_run_shows_rts_one_line_error(qgis):
    got = _check(qgis, "error")
    assert got["message"].startswith("rts: error: ") and got["missing"] in got["message"]
    assert "Traceback" not in got["message"] and "\n" not in got["message"] and not got["written"]


def test_cancel_in_qgis_stops_rts_and_leaves_no_file(qgis):
    got = _check(qgis, "cancel")
    seen = {k: v for k, v in got.items() if k != "lines"} | {"lines": got["lines"][-8:]}
    assert got["canceled"] and got["results"] == {}, seen
    assert got["processes"] and got["alive"] == [] and got["left"] == [], seen  # rts and its workers are gone
    assert got["files"] == [], seen  # no output, no temporary, no lock
    assert got["stop_seconds"] < 20 and "rts: interrupted; no partial output was kept" in got["lines"], seen


def test_a_batch_of_two_scenes_runs_in_processing_batch_dialog(qgis):
    got = _check(qgis, "batch")
    assert got["rows"] == 2 and all(o["features"] for o in got["outputs"])
    assert len(got["loaded"]) == 2 and {lyr["renderer"] for lyr in got["loaded"]} == {"graduatedSymbol"}


def test_a_graphical_modeler_model_chains_predict_and_export(qgis):
    got = _check(qgis, "model")
    assert got["saved"] and got["features"] > 0 and got["crs"] == "EPSG:3413"  # ARTS's CRS
    assert {"UID", "RegionName", "CreatorLab", "BaseMapDate"} <= set(got["fields"])
    assert [c.split()[1] for c in got["commands"]] == ["predict", "export"]


def test_track_in_qgis_loads_tracks_and_observations_styled_by_growth(qgis):
    got = _check(qgis, "track")
    layers = {lyr["name"]: lyr for lyr in got["loaded"]}
    assert set(layers) == {"rts tracks", "rts observations"}
    assert all(lyr["features"] > 0 and lyr["renderer"] == "RuleRenderer" for lyr in layers.values())
    assert '"growth_rate_m2_yr" < 0' in layers["rts tracks"]["rules"]
    assert any("area_rate_m2_yr" in rule for rule in layers["rts observations"]["rules"])
    # either layer of an rts track output exports its observations, with the change relations
    arts = got["arts"]
    assert arts["features"] > 0 and {"UID", "NewRTS", "MergedRTS"} <= set(arts["fields"])
    assert "--layer" not in got["commands"][-1]


def test_merge_and_prepare_run_in_qgis(qgis):
    merged = _check(qgis, "merge")
    (layer,) = merged["loaded"]
    assert layer["features"] > 0 and layer["renderer"] == "graduatedSymbol"
    assert {"n_observed", "detection_rate"} <= set(layer["fields"])
    prepared = _check(qgis, "prepare")
    assert "manifest.yaml" in prepared["files"] and "train.json" in prepared["files"]
    assert "--labels-layer rts" in prepared["commands"][0]


def test_qgis_process_runs_rts_predict_headless_with_the_plugin_enabled(plugin_data, tmp_path):
    """``qgis_process plugins enable rts_qgis`` (QGIS 3.22 and later), then ``qgis_process run rts:predict``."""
    reason = _qgis_missing()
    if reason:
        pytest.skip(reason)
    # Debian's /usr/bin/qgis_process wrapper passes --noversioncheck, which qgis_process 3.22 refuses: use the binary
    exe = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if exe is None:
        pytest.skip("qgis_process is not installed (Debian package qgis)")
    env = {**_qgis_env(tmp_path), "QGIS_PLUGINPATH": str(PLUGIN.parent)}
    env.pop("PYTHONPATH")  # qgis_process finds the plugin itself, as in a user's QGIS
    r = subprocess.run([exe, "plugins", "enable", "rts_qgis"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "slumps.gpkg"
    r = subprocess.run([exe, "--json", "run", "rts:predict", "--", f"INPUT={plugin_data['scenes'][1]}",
                        f"MODEL={plugin_data['bundle']}", "BAND_MAP=red=1,green=2,blue=3", "MIN_SCORE=0",
                        "OVERLAP=0", "WORKERS=1", f"OUTPUT={out}"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    done = json.loads(r.stdout)
    assert done["results"]["OUTPUT"] == f"{out}|layername=rts"
    assert any("tiles (100%)" in line for line in done["log"]["info"])
    assert len(gpd.read_file(out, layer="rts")) > 0



def test_rts_started_with_sigint_ignored_still_stops_on_sigint(tmp_path):
    # a shell without job control starts background programs with SIGINT ignored; the plugin cancels with SIGINT
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "syn"
    proc = subprocess.Popen([sys.executable, "-m", "rtscli", "synth", str(out), "--chips", "0", "--scenes", "4",
                             "--scene-size", "4096"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 130 and not out.exists()
