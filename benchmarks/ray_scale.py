"""`rts predict` of many scenes on Ray: engine overhead, scaling with workers, dynamic vs fixed shares, memory.

    python benchmarks/ray_scale.py [--model BUNDLE] [--small 200] [--small-size 512] [--large 10]
                                   [--large-size 4096] [--out bench_out/ray_scale]

BUNDLE: a bundle that reads 4-band PlanetScope-like scenes (default: a nano bundle trained here for one step on
`rts synth` chips: its weights do not matter for speed). One `rts synth` scene of each size is made and copied
(`--small` copies of the small one; the mixed set adds `--large` copies of the large one), then each run is a fresh
`rts predict FOLDER -o OUT` process with one CPU thread per worker (`--threads 1`, `--workers 0`):

* overhead: the small set, local engine vs `--engine ray --ray-workers 1` (goal: Ray within 10 % of local), and
  their outputs compared polygon by polygon;
* scaling: `--engine ray --ray-workers 2` vs 1 (goal >= 1.7x on 2 cores), and the fixed-share way
  (`torchrun --nproc-per-node 2`: scene i to rank i mod 2) on the same set;
* mixed sizes: the large scenes among the small ones, Ray's largest-first hand-out vs torchrun's fixed shares;
* memory: the peak RSS of each Ray worker (VmHWM of the `ray::SceneMapper` processes, sampled) vs a local
  one-scene run.

Prints one JSON document (also written to OUT/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import meta, run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RTS_PROGRESS_SECONDS": "3600"}


def _workers_peak(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Sample VmHWM (kB) of every ray::SceneMapper process until ``stop``."""
    while not stop.is_set():
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if not (d / "cmdline").read_bytes().startswith(b"ray::SceneMapper"):
                    continue
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[int(d.name)] = max(peaks.get(int(d.name), 0), int(line.split()[1]))
            except OSError:
                continue
        time.sleep(0.2)


def timed(cmd: list[str], label: str) -> dict:
    """Run ``cmd``; wall seconds, the driver's peak RSS and the Ray workers' peak RSS (MB)."""
    print(f"+ [{label}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_workers_peak, args=(stop, peaks), daemon=True)
    sampler.start()
    probe = ("import resource, subprocess, sys, time, json; t=time.perf_counter();"
             "r=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
             "print(json.dumps({'wall': time.perf_counter()-t, 'code': r.returncode, 'err': r.stderr[-2000:],"
             " 'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=ENV, check=True)
    stop.set()
    sampler.join()
    res = json.loads(out.stdout)
    if res["code"] not in (0,):
        raise SystemExit(f"[{label}] failed ({res['code']}):\n{res['err']}")
    res.pop("err")
    res["worker_rss_mb"] = sorted(round(v / 1024, 1) for v in peaks.values())
    print(f"  {label}: {res['wall']:.1f} s", file=sys.stderr, flush=True)
    return res


def predict(folder: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rtscli", "predict", str(folder), "-o", str(out), "--model", str(model),
            "--workers", "0", "--threads", "1", "--overwrite", *extra]


def torchrun(folder: Path, out: Path, model: Path, n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "-m", "rtscli", "predict",
            str(folder), "-o", str(out), "--model", str(model), "--workers", "0", "--threads", "1", "--device", "cpu",
            "--overwrite"]


def same_outputs(a: Path, b: Path) -> dict:
    import geopandas as gpd

    files = sorted(p.name for p in a.glob("*.gpkg"))
    if files != sorted(p.name for p in b.glob("*.gpkg")):
        return {"same_files": False}
    differ = 0
    polygons = 0
    for f in files:
        x, y = gpd.read_file(a / f, layer="rts"), gpd.read_file(b / f, layer="rts")
        polygons += len(x)
        if len(x) != len(y) or not all(g.equals(h) for g, h in zip(x.geometry, y.geometry, strict=True)):
            differ += 1
    return {"same_files": True, "files": len(files), "polygons": polygons, "files_that_differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--small-size", type=int, default=512)
    ap.add_argument("--large", type=int, default=10)
    ap.add_argument("--large-size", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=Path("bench_out/ray_scale"))
    ap.add_argument("--only", choices=["all", "uniform", "mixed"], default="all",
                    help="run only the uniform passes (overhead, scaling, memory) or only the mixed-size ones")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    model = a.model
    if model is None:  # a nano bundle for 4-band scenes, trained for one step: speed does not depend on its weights
        model = a.out / "nano"
        if not (model / "config.yaml").exists():
            run("synth", a.out / "syn", "--chips", 8, "--scenes", 0, "--chip-size", 128, "--overwrite")
            run("prepare", a.out / "syn" / "chips", "-o", a.out / "ds", "--bands", "paper", "--overwrite")
            run("pretrain", "--modality", "rgb", "--data", a.out / "ds", "-o", model, "--preset", "nano",
                "--max-steps", 1, "--workers", 0, "--overwrite")
    scenes = {}
    for name, size in (("small", a.small_size), ("large", a.large_size)):
        src = a.out / f"scene_{size}"
        if not list(src.glob("scenes/*.tif")):
            run("synth", src, "--chips", 0, "--scenes", 1, "--scene-size", size, "--overwrite")
        scenes[name] = next(src.glob("scenes/*.tif"))
    uniform, mixed = a.out / "uniform", a.out / "mixed"
    for folder, parts in ((uniform, [("small", a.small)]), (mixed, [("small", a.small - a.large), ("large", a.large)])):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        k = 0
        for name, count in parts:
            for _ in range(count):
                shutil.copy(scenes[name], folder / f"s{k:05d}.tif")
                k += 1
    bands = ["--bands", "planetscope4"]
    r: dict = {"meta": meta(small=a.small, small_size=a.small_size, large=a.large, large_size=a.large_size,
                            model=str(model))}
    if a.only in ("all", "uniform"):
        r["local_1"] = timed(predict(uniform, a.out / "o_local", model, *bands), "local, 1 thread")
        r["ray_1"] = timed(predict(uniform, a.out / "o_ray1", model, *bands, "--engine", "ray", "--ray-workers", "1"),
                           "ray, 1 worker")
        r["ray_2"] = timed(predict(uniform, a.out / "o_ray2", model, *bands, "--engine", "ray", "--ray-workers",
                                   "2"), "ray, 2 workers")
        r["torchrun_2"] = timed(torchrun(uniform, a.out / "o_tr2", model, 2) + bands, "torchrun, 2 fixed shares")
        r["same_outputs_local_vs_ray"] = same_outputs(a.out / "o_local", a.out / "o_ray2")
        print(f"  same outputs, local vs ray: {r['same_outputs_local_vs_ray']}", file=sys.stderr, flush=True)
        r["one_scene_local"] = timed(predict(scenes["large"], a.out / "one.gpkg", model, *bands), "one large scene")
    if a.large and a.only in ("all", "mixed"):
        r["mixed_ray_2"] = timed(predict(mixed, a.out / "m_ray2", model, *bands, "--engine", "ray",
                                         "--ray-workers", "2"), "mixed sizes, ray 2 workers")
        r["mixed_torchrun_2"] = timed(torchrun(mixed, a.out / "m_tr2", model, 2) + bands,
                                      "mixed sizes, torchrun 2 fixed shares")
    r["ratios"] = {
        "ray_1_over_local": r["ray_1"]["wall"] / r["local_1"]["wall"],
        "speedup_ray_2_over_ray_1": r["ray_1"]["wall"] / r["ray_2"]["wall"],
        "speedup_torchrun_2_over_local": r["local_1"]["wall"] / r["torchrun_2"]["wall"],
    } if a.only in ("all", "uniform") else {}
    if a.large and a.only in ("all", "mixed"):
        r["ratios"]["mixed_torchrun_over_ray"] = r["mixed_torchrun_2"]["wall"] / r["mixed_ray_2"]["wall"]
    text = json.dumps(r, indent=2)
    (a.out / "results.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
