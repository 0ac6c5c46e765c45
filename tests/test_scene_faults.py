"""Faults of one scene or one output: a bad scene among many is recorded and skipped (the others are mapped, the
run exits 1 with a summary, a re-run retries only it), and writers of one GeoPackage take turns (no layer lost).

The scenes and the stand-in detector are those of ``test_predict.py`` (its ``bundles`` and ``blob`` fixtures).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

import test_predict
from conftest import write_tif
from test_predict import OBJECTS, scene_with

# test_predict's fixtures, used here by name: a nano bundle, and the stand-in detector loaded in its place
bundles = test_predict.bundles
blob = test_predict.blob


def _cut(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes, as an interrupted download or copy leaves it."""
    with open(path, "r+b") as fh:
        fh.truncate(int(os.path.getsize(path) * keep))
    return path


def _scenes(tmp_path: Path) -> Path:
    """s0 and s2 good; s1 cut in half (it opens, its lower half cannot be read); s3 with two bands (the model
    reads three)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copy(scene_with(tmp_path, OBJECTS), folder / "s0.tif")
    _cut(Path(shutil.copy(scene_with(tmp_path, OBJECTS[:1]), folder / "s1.tif")))
    shutil.copy(scene_with(tmp_path, OBJECTS[:1]), folder / "s2.tif")
    write_tif(folder / "s3.tif", np.zeros((2, 80, 80), np.float32))
    return folder


def _records(out: Path) -> dict[str, dict]:
    return {Path(r["scene"]).name: r for r in json.loads((out / "manifest.json").read_text())["scenes"]}


def _summary(err: str) -> list[str]:
    """The summary's lines: its head, then one line per failed scene."""
    lines = err.splitlines()
    heads = [i for i, line in enumerate(lines) if "scene(s) failed and were skipped:" in line]
    assert len(heads) == 1, err  # one summary
    names = []
    for line in lines[heads[0] + 1:]:
        if not line.startswith("  "):
            break
        names.append(line)
    return [lines[heads[0]]] + names


def test_a_bad_scene_is_recorded_the_others_are_mapped_and_a_rerun_retries_only_it(tmp_path, rts, blob):
    scenes = _scenes(tmp_path)
    out = tmp_path / "out"
    args = ["predict", scenes, "-o", out, "--model", blob.path, "--workers", 0]
    r = rts(*args)
    assert r.code == 1, r.err
    # the good scenes are mapped, the bad ones have no output
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["s0.gpkg", "s2.gpkg"]
    assert [len(gpd.read_file(out / f"s{k}.gpkg", layer="rts")) for k in (0, 2)] == [2, 1]
    # the manifest records every scene; a failed one with its one-line reason and where it failed
    rec = _records(out)
    assert {k: v["status"] for k, v in rec.items()} == {"s0.tif": "mapped", "s1.tif": "failed", "s2.tif": "mapped",
                                                        "s3.tif": "failed"}
    assert rec["s1.tif"]["stage"] == "run" and "corrupt or truncated" in rec["s1.tif"]["reason"]
    assert rec["s3.tif"]["stage"] == "checks" and "band 3" in rec["s3.tif"]["reason"]
    assert all("\n" not in v["reason"] for v in rec.values() if v["status"] == "failed")
    # one summary naming each failed scene and its reason, then one error line; no library internals
    head, *names = _summary(r.err)
    assert "2 of 4 scene(s) failed" in head
    assert [n.split(":")[0].strip() for n in names] == ["s1.tif", "s3.tif"]
    assert "corrupt or truncated" in names[0] and "band 3" in names[1]
    errors = [line for line in r.err.splitlines() if line.startswith("rts: error:")]
    assert len(errors) == 1 and "2 scene(s) failed" in errors[0] and "run the same command again" in errors[0]
    for junk in ("Traceback", "4294967295", "See previous", "site-packages"):
        assert junk not in r.err + r.out
    assert "2 scenes mapped, 2 failed, 0 skipped (done before)" in r.out
    # nothing hidden is left: the ranks' parts are merged into the manifest, the locks are released
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "s0.gpkg", "s2.gpkg"]

    # a re-run maps nothing new for the good scenes and retries the failed ones (still bad: exit 1 again)
    made = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")}
    r = rts(*args)
    assert r.code == 1, r.err
    assert "0 scenes mapped, 2 failed, 2 skipped (done before)" in r.out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")} == made
    assert [n.split(":")[0].strip() for n in _summary(r.err)[1:]] == ["s1.tif", "s3.tif"]

    # repaired: only they are mapped, and the run succeeds
    shutil.copy(scene_with(tmp_path, OBJECTS[:1]), scenes / "s1.tif")
    shutil.copy(scene_with(tmp_path, OBJECTS[:1]), scenes / "s3.tif")
    r = rts(*args)
    assert r.code == 0, r.err
    assert "2 scenes mapped, 2 skipped (done before)" in r.out and "failed" not in r.out + r.err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg") if p.name in made} == made
    assert {k: v["status"] for k, v in _records(out).items()} == dict.fromkeys(
        ["s0.tif", "s1.tif", "s2.tif", "s3.tif"], "mapped")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_fault_of_every_scene_stops_the_run_before_it_starts(tmp_path, rts, blob):
    folder = tmp_path / "scenes"
    for k in range(2):  # no scene has the three bands the model reads
        write_tif(folder / f"s{k}.tif", np.zeros((2, 80, 80), np.float32))
    out = tmp_path / "out"
    r = rts("predict", folder, "-o", out, "--model", blob.path, "--workers", 0)
    assert r.code == 2 and not out.exists(), r.err
    assert "none of the 2 scenes passes the checks" in r.err and "band 3" in r.err and "--bands" in r.err
    # one scene in the folder, unreadable from its header on: its own error, exit 2, nothing written
    one = tmp_path / "one"
    one.mkdir()
    _cut(Path(shutil.copy(scene_with(tmp_path, OBJECTS), one / "cut.tif")), keep=0.001)
    r = rts("predict", one, "-o", out, "--model", blob.path, "--workers", 0)
    assert r.code == 2 and not out.exists() and "cut.tif" in r.err and "truncated" in r.err, r.err
    # options that no scene can run with stop it too (the tile is 64 px)
    shutil.copy(scene_with(tmp_path, OBJECTS), folder / "s0.tif")
    r = rts("predict", folder, "-o", out, "--model", blob.path, "--workers", 0, "--overlap", 64)
    assert r.code == 2 and "--overlap" in r.err and not out.exists(), r.err


def test_the_manifest_is_written_as_scenes_finish_and_kept_when_a_run_is_interrupted(tmp_path, rts, blob,
                                                                                      monkeypatch):
    from rtscli.engine import batch

    folder = tmp_path / "scenes"
    folder.mkdir()
    for k in range(3):
        shutil.copy(scene_with(tmp_path, OBJECTS), folder / f"s{k}.tif")
    out = tmp_path / "out"
    seen: list[dict[str, str]] = []  # the manifest as each scene starts
    run_scene = batch.run_scene

    def watched(*args, **kw):
        seen.append({k: v["status"] for k, v in _records(out).items()})
        return run_scene(*args, **kw)

    monkeypatch.setattr(batch, "run_scene", watched)
    blob.model.fail_after, blob.model.seen = 30, 0  # 24 tiles a scene: Ctrl-C in the second scene
    r = rts("predict", folder, "-o", out, "--model", blob.path, "--workers", 0, "--overlap", 16)
    assert r.code == 130
    assert seen == [{}, {"s0.tif": "mapped"}]  # s0's record was in the manifest before s1 began
    assert {k: v["status"] for k, v in _records(out).items()} == {"s0.tif": "mapped"}
    blob.model.fail_after = None
    r = rts("predict", folder, "-o", out, "--model", blob.path, "--workers", 0, "--overlap", 16)
    assert r.code == 0 and "2 scenes mapped, 1 skipped (done before)" in r.out, r.err
    assert len(_records(out)) == 3 and not list(out.glob(".manifest-rank*"))


def test_libtiffs_unset_row_and_column_never_reach_the_user(tmp_path):
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from rtscli.errors import RtsError
    from rtscli.io.raster import gdal_detail, read_window

    # what libtiff says about a tile of an uncompressed tiled GeoTIFF cut short
    exc = RasterioIOError("Read failed. See previous exception for details.")
    exc.__cause__ = Exception("TIFFReadEncodedTile:Read error at row 4294967295, col 4294967295; got 0 bytes, "
                              "expected 49152")
    assert gdal_detail(exc) == "libtiff could read only 0 of the 49152 bytes of a block of its data"
    path = tmp_path / "tiled.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="float32", tiled=True,
                       blockxsize=64, blockysize=64, crs="EPSG:32608",
                       transform=rasterio.transform.Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.ones((3, 256, 256), np.float32))
    _cut(path)
    with rasterio.open(path) as src, pytest.raises(RtsError) as info:
        read_window(src, Window(0, 192, 64, 64))
    text = str(info.value)
    assert "4294967295" not in text and "corrupt or truncated" in text and str(path.resolve()) in text


# ---------------------------------------------------------------- writers of one GeoPackage take turns

def _write_layer_repeatedly(root: str, layer: str, n: int, barrier) -> None:
    """In a process of its own: write ``layer`` into root/p<i>.gpkg for i < n, starting each together with the
    other writer (``barrier``)."""
    from rtscli.io.vector import write_layers

    gdf = gpd.GeoDataFrame({"name": [layer]}, geometry=[box(0, 0, 1, 1)], crs=32608)
    for i in range(n):
        barrier.wait(timeout=120)
        write_layers({layer: gdf}, Path(root) / f"p{i}.gpkg")


def test_two_runs_adding_layers_to_one_geopackage_both_keep_theirs(tmp_path):
    n = 20
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_layer_repeatedly, args=(str(tmp_path), layer, n, barrier))
             for layer in ("y2019", "y2021")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0, 0]
    for i in range(n):  # a new GeoPackage each time: both start it, both layers end up in it
        assert set(gpd.list_layers(tmp_path / f"p{i}.gpkg")["name"]) == {"y2019", "y2021"}, i
    # no lock file (nor temporary) lingers beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"p{i}.gpkg" for i in range(n))


def test_the_lock_file_exists_only_while_a_writer_holds_it(tmp_path, monkeypatch):
    from rtscli.errors import RtsError
    from rtscli.io import atomic
    from rtscli.io.atomic import lock_path, output_lock
    from rtscli.io.vector import write_layers

    project = tmp_path / "project.gpkg"
    gdf = gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(0, 0, 1, 1)], crs=32608)
    with output_lock(project):
        assert lock_path(project).exists() and lock_path(project).name == ".project.gpkg.lock"
    assert not lock_path(project).exists()
    write_layers({"a": gdf}, project)
    with pytest.raises(AttributeError):  # a failure while it is held: released all the same
        write_layers({"b": object()}, project)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.gpkg"]
    # another process holds it: the writer waits, then says what to do
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import SoftFileLock; lock = SoftFileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(600)"), str(lock_path(project))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(atomic, "LOCK_WAIT_S", 1.0)
        with pytest.raises(RtsError, match="another process has been writing this file") as info:
            write_layers({"b": gdf}, project)
        assert str(lock_path(project)) in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    # its holder died (killed, out of memory): the lock is taken over at once, and the layer written
    assert lock_path(project).exists()
    write_layers({"b": gdf}, project)
    assert set(gpd.list_layers(project)["name"]) == {"a", "b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.gpkg"]


def test_under_torchrun_a_bad_scene_stops_no_rank_and_the_last_one_sums_up(tmp_path, bundles):
    """A rank that meets a bad scene goes on; no rank exits non-zero before the others are done (torchrun would
    stop them); the last rank to finish names the failed scene and exits 1."""
    from conftest import paper_sample

    scenes = tmp_path / "scenes"
    for k in range(4):
        write_tif(scenes / f"s{k}.tif", paper_sample(shape=(80, 90), rects=[(10, 30, 10, 40)], seed=k)[:5])
    _cut(scenes / "s0.tif")  # rank 0's first scene
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
           "-m", "rtscli", "predict", str(scenes), "-o", str(out), "--model", str(bundles["nano"]), "--workers", "0",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["s1.gpkg", "s2.gpkg", "s3.gpkg"], r.stderr[-2000:]
    rec = _records(out)
    assert {k: v["status"] for k, v in rec.items()} == {"s0.tif": "failed", "s1.tif": "mapped", "s2.tif": "mapped",
                                                        "s3.tif": "mapped"}
    head, *names = _summary(r.stderr)
    assert "1 of 4 scene(s) failed" in head and [n.split(":")[0].strip() for n in names] == ["s0.tif"]
    assert sum("rts: error: 1 scene(s) failed" in line for line in r.stderr.splitlines()) == 1
    assert not list(out.glob(".manifest-rank*")) and not list(out.glob(".*.lock"))
