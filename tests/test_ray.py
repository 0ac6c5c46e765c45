"""Many scenes on Ray (``rts predict ... --engine ray``): the outputs of a local run, no scene lost when a worker
dies or a scene is corrupt, a resumable run, and clear refusals (no Ray, a cluster out of reach, another run).

Each run is a subprocess of the ``rts`` command with a Ray instance of its own (2 CPUs, tiny scenes, the nano
bundle of ``test_predict.py`` trained for one step: its polygons are deterministic, which is all that is compared).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

import test_predict
from conftest import apart, paper_sample, write_tif

pytest.importorskip("ray")

bundles = test_predict.bundles
RTS = str(Path(sys.executable).parent / "rts")


def _scenes(root: Path, n: int, *, corrupt: tuple[int, ...] = ()) -> Path:
    """``n`` small 3-band scenes of several sizes (s<k>.tif); the ones in ``corrupt`` cut to half their bytes."""
    folder = root / "scenes"
    for k in range(n):
        path = write_tif(folder / f"s{k}.tif", paper_sample(shape=(96 + 32 * (k % 3), 128),
                                                            rects=[(8, 30, 10, 40), (50, 80, 60, 100)], seed=k),
                         transform=apart(k))
        if k in corrupt:
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)
    return folder


def _rts(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "RTS_PROGRESS_SECONDS": "0", **(env or {})}
    return subprocess.run([RTS, "--debug", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environ)


def _records(out: Path) -> dict[str, dict]:
    scenes = json.loads((out / "manifest.json").read_text())["scenes"]
    names = [Path(r["scene"]).name for r in scenes]
    assert len(names) == len(set(names)), names  # one record per scene: none mapped twice
    return {Path(r["scene"]).name: r for r in scenes}


def _same_maps(a: Path, b: Path) -> None:
    for f in sorted(a.glob("*.gpkg")):
        x, y = gpd.read_file(f, layer="rts"), gpd.read_file(b / f.name, layer="rts")
        assert len(x) == len(y) and all(g.equals(h) for g, h in zip(x.geometry, y.geometry, strict=True)), f.name
        cols = [c for c in x.columns if c not in ("geometry", "created")]
        assert x[cols].equals(y[cols]), f.name
    assert sorted(p.name for p in a.glob("*.gpkg")) == sorted(p.name for p in b.glob("*.gpkg"))


def test_ray_maps_what_a_local_run_maps_and_a_rerun_skips_it(tmp_path, bundles):
    scenes = _scenes(tmp_path, 5)
    common = ["--model", bundles["nano"], "--workers", 0]
    local = _rts("predict", scenes, "-o", tmp_path / "local", *common)
    assert local.returncode == 0, local.stderr
    r = _rts("predict", scenes, "-o", tmp_path / "ray", *common, "--engine", "ray", "--ray-workers", 2,
             "--threads", 1)
    assert r.returncode == 0, r.stderr
    _same_maps(tmp_path / "local", tmp_path / "ray")  # the same files, the same polygons and fields
    rec = _records(tmp_path / "ray")
    assert {k: v["status"] for k, v in rec.items()} == {f"s{k}.tif": "mapped" for k in range(5)}
    assert rec.keys() == _records(tmp_path / "local").keys()
    assert "5/5 scenes" in r.stdout and "km²/h" in r.stdout  # one view of the whole run's progress
    assert not list((tmp_path / "ray").glob(".*"))  # no lock or temporary file left
    again = _rts("predict", scenes, "-o", tmp_path / "ray", *common, "--engine", "ray")
    assert again.returncode == 0 and "0 scenes mapped, 5 skipped" in again.stdout, again.stdout + again.stderr


def _ray_workers() -> list[int]:
    """PIDs of this machine's SceneMapper actors (Ray names their processes ``ray::SceneMapper...``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::SceneMapper"):
                pids.append(int(d.name))
    return pids


def test_a_killed_worker_and_a_corrupt_scene_lose_no_other_scene_and_the_run_resumes(tmp_path, bundles):
    """SIGKILL one worker mid-run and give one corrupt scene: every good scene is mapped exactly once (Ray restarts
    the worker and retries its scene), the corrupt one is named, the run exits 1, and a re-run retries only it."""
    scenes = _scenes(tmp_path, 8, corrupt=(3,))
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if len(list(out.glob("s*.gpkg"))) >= 2:  # mid-run: some scenes done, others to do
                for pid in _ray_workers()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one, daemon=True)
    watcher.start()
    r = _rts("predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0, "--engine", "ray",
             "--ray-workers", 1, "--threads", 1)
    watcher.join(timeout=5)
    assert killed, "no worker was killed: the run ended before two scenes were done"
    assert r.returncode == 1, r.stderr
    rec = _records(out)
    good = {f"s{k}.tif" for k in range(8)} - {"s3.tif"}
    assert {k for k, v in rec.items() if v["status"] == "mapped"} == good
    assert rec["s3.tif"]["status"] == "failed" and "s3.tif" in r.stderr.split("failed and were skipped:")[1]
    for k in sorted(good):
        assert len(gpd.read_file(out / k.replace(".tif", ".gpkg"), layer="rts")) >= 0  # each output whole
    assert not list(out.glob(".*"))  # no half-written output, lock or part left
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")}
    again = _rts("predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0, "--engine", "ray")
    assert again.returncode == 1 and "0 scenes mapped, 1 failed, 7 skipped" in again.stdout, again.stdout + again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")} == before  # nothing mapped twice


def test_engine_refusals_are_one_line_and_write_nothing(tmp_path, bundles, rts):
    scenes = _scenes(tmp_path, 2)
    out = tmp_path / "out"
    base = ["predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0]
    t = time.monotonic()
    r = rts(*base, "--engine", "ray", "--address", "127.0.0.1:9")  # nothing listens on the discard port
    assert r.code == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in r.err and time.monotonic() - t < 30
    assert not out.exists()
    for args, words in [(["--address", "auto"], "--address is for --engine ray"),
                        (["--engine", "spark"], "unknown --engine 'spark'"),
                        (["--engine", "ray", "--ray-workers", 0], "--ray-workers 0 must be 1 or more"),
                        (["--threads", 0], "--threads 0 must be 1 or more")]:
        r = rts(*base, *args)
        assert r.code == 2 and words in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not out.exists()
    one = rts("predict", scenes / "s0.tif", "-o", tmp_path / "one.gpkg", "--model", bundles["nano"], "--engine", "ray")
    assert one.code == 2 and "--engine ray maps many scenes" in one.err


def test_without_ray_installed_the_fix_is_named(tmp_path, bundles, rts, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where the extra is not installed
    r = rts("predict", _scenes(tmp_path, 2), "-o", tmp_path / "out", "--model", bundles["nano"], "--engine", "ray")
    assert r.code == 2 and "pip install 'rts[ray]'" in r.err and not (tmp_path / "out").exists()


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, bundles, rts):
    from rtscli.io.atomic import run_lock

    scenes = _scenes(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    with run_lock(out, "rts"):  # another run is writing layer rts into it
        r = rts("predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0)
        assert r.code == 2 and "another rts run is writing layer 'rts' into this folder" in r.err
        assert not list(out.glob("*.gpkg"))
        other = rts("predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0, "--layer", "v2")
        assert other.code == 0, other.err  # another layer into the same folder: its own run
    assert rts("predict", scenes, "-o", out, "--model", bundles["nano"], "--workers", 0).code == 0


def test_largest_scenes_go_first(tmp_path, bundles, monkeypatch):
    """The order scenes are mapped in (local and Ray alike): largest first, so that no large scene is left to the
    end while other workers idle."""
    from rtscli.engine import batch

    scenes = _scenes(tmp_path, 6)
    order: list[str] = []
    real = batch._mapped

    def spy(runnable, *a, **kw):
        order.extend(s.name for s in runnable)
        yield from real(runnable, *a, **kw)

    monkeypatch.setattr(batch, "_mapped", spy)
    from rtscli.cli import main

    assert main(["predict", str(scenes), "-o", str(tmp_path / "out"), "--model", str(bundles["nano"]),
                 "--workers", "0"]) == 0
    heights = {f"s{k}.tif": 96 + 32 * (k % 3) for k in range(6)}
    assert [heights[n] for n in order] == sorted(heights.values(), reverse=True)


def test_cpu_budget_follows_slurm_cgroups_omp_and_threads(tmp_path):
    from rtscli.machine import cgroup_cpus, cpu_budget, cpu_cores

    cores = len(os.sched_getaffinity(0))
    assert cpu_budget(environ={}, proc=tmp_path, root=tmp_path) == (cores, "CPU affinity")
    assert cpu_budget(environ={"SLURM_CPUS_PER_TASK": "1"}, proc=tmp_path, root=tmp_path) == (1, "SLURM_CPUS_PER_TASK")
    assert cpu_budget(environ={"OMP_NUM_THREADS": "1"}, proc=tmp_path, root=tmp_path)[0] == 1
    assert cpu_budget(1, environ={"OMP_NUM_THREADS": "64"}, proc=tmp_path, root=tmp_path) == (1, "--threads")
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    (cg / "cpu.max").write_text("50000 100000\n")  # half a core: a container's quota
    assert cgroup_cpus(cg) == 0.5
    assert cpu_budget(environ={}, proc=tmp_path, root=tmp_path) == (1, "cgroup CPU quota")
    assert cpu_cores(environ={"OMP_NUM_THREADS": "1"}, proc=tmp_path, root=tmp_path) == (1, "cgroup CPU quota")
    (cg / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(cg) is None


def test_a_local_run_uses_the_threads_it_is_given(tmp_path, bundles, rts):
    import torch

    before = torch.get_num_threads()
    try:
        r = rts("predict", _scenes(tmp_path, 1) / "s0.tif", "-o", tmp_path / "m.gpkg", "--model", bundles["nano"],
                "--workers", 0, "--threads", 1)
        assert r.code == 0, r.err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_worker_plan():
    from rtscli.engine.ray_engine import worker_plan

    assert worker_plan(None, None, gpus=0, cpus=16) == (16, 1)  # one single-threaded worker per CPU
    assert worker_plan(None, None, gpus=4, cpus=16) == (4, 4)  # one per GPU, the CPUs shared
    assert worker_plan(2, None, gpus=0, cpus=2) == (2, 1)
    assert worker_plan(None, 2, gpus=0, cpus=2) == (1, 2)
    assert worker_plan(4, None, gpus=0, cpus=2) == (2, 1)  # no more than Ray can place (it would wait for ever)
    assert worker_plan(None, 8, gpus=0, cpus=2) == (1, 2)
    assert worker_plan(None, None, gpus=2, cpus=1) == (1, 1)
    assert np.all(np.array(worker_plan(None, None, gpus=0, cpus=1)) >= 1)


def test_joining_a_running_cluster_as_the_slurm_recipe_does(tmp_path, bundles):
    """`ray start --head` (as the README's sbatch script runs on the first node), then `rts predict --engine ray
    --address HOST:PORT`: the run joins that cluster, maps every scene and leaves the cluster running."""
    import socket

    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # token authentication on, as the README's recipe sets it for every node and for rts (Ray >= 2.52)
    # (the token in the environment: nothing is written to the home folder)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **token}
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                   check=True, capture_output=True, timeout=120, env=env)
    try:
        scenes = _scenes(tmp_path, 3)
        r = _rts("predict", scenes, "-o", tmp_path / "out", "--model", bundles["nano"], "--workers", 0,
                 "--engine", "ray", "--address", f"127.0.0.1:{port}", "--threads", 1, env=token)
        assert r.returncode == 0, r.stderr
        assert {k: v["status"] for k, v in _records(tmp_path / "out").items()} == {f"s{k}.tif": "mapped"
                                                                                   for k in range(3)}
        status = subprocess.run([ray_cli, "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=60, env=env)
        assert status.returncode == 0  # the cluster rts joined is still there for the next run
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)


@pytest.mark.parametrize("command", ["pretrain", "finetune", "ssl", "ablate", "evaluate"])
def test_every_torch_command_takes_threads(rts, command, tmp_path):
    """--threads is on every command that runs torch, checked before any work."""
    r = rts(command, "--help")
    assert r.code == 0 and "--threads" in r.out
    args = {"pretrain": ["--modality", "rgb", "--data", tmp_path, "-o", tmp_path / "o"],
            "finetune": ["--modalities", "rgb,ndvi", "--from", "a,b", "--data", tmp_path, "-o", tmp_path / "o"],
            "ssl": [tmp_path, "--modality", "rgb", "-o", tmp_path / "o"],
            "ablate": ["--data", tmp_path, "-o", tmp_path / "o"],
            "evaluate": [tmp_path, "--data", tmp_path]}[command]
    r = rts(command, *args, "--threads", 0)
    assert r.code == 2 and "--threads 0 must be 1 or more" in r.err, r.err
