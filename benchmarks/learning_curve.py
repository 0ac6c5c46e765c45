"""Learning curves: validation mask AP50 against steps and wall time, per preset and initialisation, on any dataset.

    python benchmarks/learning_curve.py --data DS [--test DS2] [--presets nano,cpu-r18] [--inits random,ssl]
                                        [--fractions 1] [--seeds 0,1,2] (--minutes 30 | --steps 600) [--jobs 2]
    python benchmarks/learning_curve.py --hard-synth [--chips 400] ...      # `rts synth --realism hard` chips
    python benchmarks/learning_curve.py --real ../shared/data/rts-digitization ...   # leave one site out

Each run is the command a user would type: ``rts pretrain --modality rgb --data DS --preset P`` (``--backbone-weights``
an ``rts ssl`` backbone made on the dataset's own training chips for ``ssl``; a copy of DS whose train split keeps a
share of its chips for ``--fractions``), validating a few times along the way (``--points``), then ``rts evaluate``
of the bundle on the test split (``--test``'s, else DS's test split, else its validation split). ``metrics.csv``
gives the curve (``steps``, ``wall_s``, ``val_ap50`` per validated epoch).

``--minutes M`` gives every run the same wall-clock budget: a 12-step probe per preset measures its step time on
this machine and data, and each run gets the steps that fit in M minutes (validation included, roughly). Runs of
one seed each go side by side with ``--jobs`` (one CPU thread each); time figures are then per thread.

``--real PATH`` builds two datasets from the expert-labelled Sentinel-2 scenes (Nitze et al. 2024,
``../shared/data/rts-digitization``): the consensus label of each site (pixels drawn by at least half of its
experts) on its scene, and trains on one site and tests on the other, both ways (leave one site out).

Prints a Markdown table (means and half-spreads over the seeds) and writes ``results.json`` under ``--out``.
Goals (issue 23): the CPU preset reaches mask AP50 >= 0.4 on hard synthetic data within 30 minutes on 2 cores;
SSL initialisation >= random at 10 %, 25 % and 100 % of the labels.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import meta as run_meta
from common import run as rts
from common import subset


def quiet(*args: object) -> float:
    """``rts ARGS`` with one torch thread (runs share the cores); its wall time, seconds."""
    return rts(*args, env={**os.environ, "OMP_NUM_THREADS": "1"})


def train_chips(ds: Path) -> int:
    return len(json.loads((ds / "train.json").read_text())["images"])


def curve(run_dir: Path) -> list[dict[str, float]]:
    """The validated epochs of a run: ``steps``, ``wall_s``, ``val_ap50`` (from its ``metrics.csv``)."""
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    key = "val_ap50" if any(r.get("val_ap50") for r in rows) else "train_chips_ap50"
    return [{"steps": float(r["steps"]), "wall_s": float(r["wall_s"]), "ap50": float(r[key])}
            for r in rows if r.get(key) and r.get("steps")]


def probe_step_s(ds: Path, preset: str, out: Path, batch: int, tile: int) -> float:
    """Seconds per training step of ``preset`` on ``ds`` at one thread: 12 steps, the last 8 timed from metrics."""
    run = out / f"probe_{preset}"
    if not (run / "metrics.csv").exists():
        quiet("pretrain", "--modality", "rgb", "--data", ds, "--preset", preset, "--max-steps", 12, "--epochs", 1000,
              "--batch-size", batch, "--workers", 0, "--tile-size", tile, "--val-every", 1000, "-o", run,
              "--overwrite")
    with (run / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("steps")]
    last = rows[-1]
    return float(last["wall_s"]) / max(1.0, float(last["steps"]))


def one_run(a: argparse.Namespace, name: str, ds: Path, test: Path, split: str, preset: str, init: str,
            fraction: float, seed: int, steps: int, ssl: Path | None, out: Path, copy_paste: float | None) -> dict:
    """Train one model and evaluate it on the test split; its row."""
    data = ds
    if fraction < 1:  # the same share of chips for every seed and preset
        data = out / "subsets" / f"{name.replace(':', '_')}_{int(fraction * 100)}"  # one share for every run
        subset(ds, data, fraction)
    chips = train_chips(data)
    per_epoch = max(1, math.ceil(chips / a.batch_size))
    val_every = max(1, round(steps / a.points / per_epoch))
    safe = name.replace(":", "_")
    cp = "" if copy_paste is None else f"_cp{int(copy_paste * 100)}"
    run = out / "runs" / f"{safe}_{preset}_{init}_{int(fraction * 100)}{cp}_s{seed}"
    if not (run / "config.yaml").exists():
        extra = ["--backbone-weights", ssl] if init == "ssl" and ssl is not None else []
        if copy_paste is not None:
            extra += ["--copy-paste", copy_paste]
        quiet("pretrain", "--modality", "rgb", "--data", data, "--preset", preset, "--max-steps", steps,
              "--epochs", 100000, "--batch-size", a.batch_size, "--workers", 0, "--seed", seed, "--tile-size",
              a.tile, "--val-every", val_every, "-o", run, "--overwrite", *extra)
    report = run / f"eval_{safe}_{split}.json"
    if not report.exists():
        quiet("evaluate", run, "--data", test, "--split", split, "-o", report)
    m = json.loads(report.read_text())["metrics"]
    points = curve(run)
    return {"dataset": name, "preset": preset, "init": init, "fraction": fraction, "seed": seed, "steps": steps,
            "copy_paste": copy_paste,
            "train_chips": chips, "test_mask_ap50": m["segm"]["AP50"], "test_box_ap50": m["bbox"]["AP50"],
            "wall_s": points[-1]["wall_s"] if points else None, "curve": points}


def hard_synth(out: Path, chips: int) -> tuple[Path, Path, str]:
    """``rts synth --realism hard`` chips prepared with the paper's bands (train/val/test 70/15/15)."""
    syn, ds = out / "hard_syn", out / "hard_ds"
    if not (syn / "synth.yaml").exists():
        rts("synth", syn, "--chips", chips, "--scenes", 0, "--realism", "hard", "--seed", 23, "--overwrite")
    if not (ds / "manifest.yaml").exists():
        rts("prepare", syn / "chips", "--bands", "paper", "--modalities", "rgb", "--split", "0.7,0.15,0.15", "-o", ds,
            "--overwrite")
    return ds, ds, "test"


def consensus(site: Path, out: Path) -> Path:
    """The consensus label of a site: the pixels that at least half of its experts drew, as polygons (GeoPackage)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize, shapes
    from shapely.geometry import shape

    scene = next(site.glob("S2_*.tif"))
    experts = sorted((site / "experts").glob("*.shp"))
    with rasterio.open(scene) as src:
        crs, transform, hw = src.crs, src.transform, (src.height, src.width)
    votes = np.zeros(hw, np.int32)
    for e in experts:
        g = gpd.read_file(e).to_crs(crs)
        g = g[g.geometry.notna() & ~g.geometry.is_empty]
        if len(g):
            votes += rasterize(g.geometry, out_shape=hw, transform=transform).astype(np.int32) > 0
    keep = (votes * 2 >= len(experts)).astype(np.uint8)
    polys = [shape(s) for s, v in shapes(keep, mask=keep > 0, transform=transform) if v]
    gpkg = out / f"{site.name}_consensus.gpkg"
    gpd.GeoDataFrame({"experts_min": [math.ceil(len(experts) / 2)] * len(polys)}, geometry=polys, crs=crs).to_file(
        gpkg, layer="rts")
    return gpkg


def real_sites(root: Path, out: Path) -> list[tuple[str, Path, Path, str]]:
    """Leave one site out: per site, a dataset of the other site (train/val) and one of this site (test)."""
    out.mkdir(parents=True, exist_ok=True)
    sites = sorted(p for p in root.iterdir() if (p / "experts").is_dir())
    made = {}
    for s in sites:
        ds = out / f"real_{s.name}"
        if not (ds / "manifest.yaml").exists():
            labels = consensus(s, out)
            scene = next(s.glob("S2_*.tif"))
            rts("prepare", scene, "--labels", labels, "--bands", "blue=1,green=2,red=3,nir=7", "--modalities", "rgb",
                "--chip-size", 64, "--split", "0.8,0.2,0", "-o", ds, "--overwrite")
            test = out / f"real_{s.name}_test"
            rts("prepare", scene, "--labels", labels, "--bands", "blue=1,green=2,red=3,nir=7", "--modalities", "rgb",
                "--chip-size", 64, "--split", "0,0,1", "-o", test, "--overwrite")
        made[s.name] = ds
    return [(f"real:{held.name}", made[other.name], out / f"real_{held.name}_test", "test")
            for held in sites for other in sites if other != held]


def ssl_backbone(a: argparse.Namespace, name: str, ds: Path, preset: str, out: Path) -> Path:
    """An ``rts ssl`` backbone of ``preset`` made on the dataset's own training chips."""
    bundle = out / "ssl" / f"{name.replace(':', '_')}_{preset}"
    if not (bundle / "model.safetensors").exists():
        quiet("ssl", ds, "--preset", preset, "--modality", "rgb", "--max-steps", a.ssl_steps, "--batch-size",
              a.batch_size, "--workers", 0, "--tile-size", a.tile, "-o", bundle, "--overwrite")
    return bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/learning_curve")
    ap.add_argument("--data", type=Path, help="a prepared dataset (rts prepare)")
    ap.add_argument("--test", type=Path, help="a prepared dataset to test on (its test split); default: --data's")
    ap.add_argument("--hard-synth", action="store_true", help="rts synth --realism hard chips")
    ap.add_argument("--chips", type=int, default=400, help="with --hard-synth: chips")
    ap.add_argument("--real", type=Path, help="the rts-digitization folder: leave one site out")
    ap.add_argument("--presets", default="nano,cpu-r18")
    ap.add_argument("--inits", default="random", help="random and/or ssl")
    ap.add_argument("--fractions", default="1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, help="wall-clock budget of every run (one thread)")
    ap.add_argument("--steps", type=int, default=300, help="steps of every run when no --minutes")
    ap.add_argument("--points", type=int, default=5, help="validations along each run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--ssl-steps", type=int, default=300)
    ap.add_argument("--copy-paste", help="rts pretrain --copy-paste values, e.g. 0,0.5 (default: the preset's)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sets: list[tuple[str, Path, Path, str]] = []
    if a.data:
        test = a.test or a.data
        split = "test" if a.test or train_chips_in(a.data, "test") else "val"
        sets.append((a.data.name, a.data, test, split))
    if a.hard_synth:
        sets.append(("hard-synth", *hard_synth(out, a.chips)))
    if a.real:
        sets += real_sites(a.real, out / "real")
    if not sets:
        raise SystemExit("give --data, --hard-synth or --real")
    presets = a.presets.split(",")
    inits = a.inits.split(",")
    fractions = [float(f) for f in a.fractions.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: list[dict] = []
    for name, ds, test, split in sets:
        steps = {p: a.steps for p in presets}
        if a.minutes:
            for p in presets:
                step_s = probe_step_s(ds, p, out / "probes" / name.replace(":", "_"), a.batch_size, a.tile)
                steps[p] = max(20, int(a.minutes * 60 * 0.85 / step_s))
                print(f"{name} {p}: {step_s:.2f} s/step at one thread -> {steps[p]} steps in {a.minutes:g} min",
                      flush=True)
        ssl = {p: ssl_backbone(a, name, ds, p, out) for p in presets} if "ssl" in inits else {}
        pastes = [float(v) for v in a.copy_paste.split(",")] if a.copy_paste else [None]
        jobs = [(a, name, ds, test, split, p, i, f, s, steps[p], ssl.get(p), out, c)
                for p in presets for i in inits for f in fractions for c in pastes for s in seeds]
        with ThreadPoolExecutor(a.jobs) as pool:
            rows += list(pool.map(lambda job: one_run(*job), jobs))
    meta = run_meta(args={k: str(v) for k, v in vars(a).items()})
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nlearning curves ({meta['date']}, {meta['cpus']} CPUs, one thread per run, {a.jobs} side by side)\n")
    print("| data | preset | init | labels | copy-paste | steps | seeds | test mask AP50 | AP50 along the run (val, "
          "mean) | minutes |")
    print("|---|---|---|---:|---|---:|---:|---|---|---:|")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["preset"], r["init"], r["fraction"], r["copy_paste"]), []).append(r)
    for (name, preset, init, frac, cpv), rs in groups.items():
        ap50 = [r["test_mask_ap50"] for r in rs]
        spread = (max(ap50) - min(ap50)) / 2 if len(ap50) > 1 else 0.0
        n = min(len(r["curve"]) for r in rs)
        along = " / ".join(f"{statistics.mean(r['curve'][k]['ap50'] for r in rs):.2f}"
                           f"@{int(rs[0]['curve'][k]['steps'])}" for k in range(n))
        minutes = statistics.mean(r["wall_s"] for r in rs if r["wall_s"]) / 60 if any(r["wall_s"] for r in rs) else 0
        print(f"| {name} | {preset} | {init} | {frac:.0%} | {'preset' if cpv is None else cpv} | {rs[0]['steps']} | "
              f"{len(rs)} | "
              f"{statistics.mean(ap50):.3f} ± {spread:.3f} | {along} | {minutes:.1f} |")


def train_chips_in(ds: Path, split: str) -> int:
    p = ds / f"{split}.json"
    return len(json.loads(p.read_text())["images"]) if p.exists() else 0


if __name__ == "__main__":
    main()
