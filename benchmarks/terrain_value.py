"""Does terrain help? RGB alone vs terrain alone vs RGB+terrain vs RGB+NDVI+terrain on synthetic scenes with a DEM.

    python benchmarks/terrain_value.py [--out bench_out/terrain] [--seeds 0,1] [--steps 300] [--scenes 4]
                                       [--scene-size 1024] [--jobs 2]

``rts synth --dem`` writes scenes with many weak-RGB slumps (``--weak-fraction``, ``--weak-contrast``: scars whose RGB
is close to the tundra) and a DEM beside each, in which every slump is a bowl with a steep headwall and the
look-alikes are flat. The last scene is held out. Steps (each skipped when its output exists):

1. ``rts prepare`` the other scenes with their truth and ``--dem`` (modalities rgb, ndvi, terrain; train/val), and the
   held-out scene alone as a test dataset;
2. per seed: ``rts pretrain`` nano models of rgb, ndvi and terrain, then ``rts finetune --fusion residual-cross``
   (the paper's, RGB primary) of rgb+terrain and rgb+ndvi+terrain from them, every run the same ``--steps``;
3. per model: ``rts evaluate`` (test mask AP50 on the held-out scene's chips), and ``rts predict --min-score`` (0.3)
   of the held-out scene matched to its truth (IoU >= 0.5): recall of all slumps and of the weak-RGB ones, and
   precision.

Seeds run side by side (``--jobs``, one CPU thread each). Prints a Markdown table (means and spreads over the seeds)
and writes results.json. Expected (issue 26): terrain helps most on weak-RGB slumps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from common import meta as run_meta
from common import run as rts

MODELS = {"rgb": None, "terrain": None, "ndvi": None,
          "rgb+terrain": ("rgb", "terrain"), "rgb+ndvi+terrain": ("rgb", "ndvi", "terrain")}


def quiet(*args: object) -> None:
    """``rts ARGS`` with one torch thread (two seeds share two cores)."""
    rts(*args, env={**os.environ, "OMP_NUM_THREADS": "1"})


def match(pred_path: Path, truth_path: Path, iou: float = 0.5) -> dict:
    """Recall of all and of weak-RGB truth slumps, and precision, at IoU >= ``iou`` (one prediction per slump)."""
    import geopandas as gpd

    pred = gpd.read_file(pred_path, layer="rts")
    truth = gpd.read_file(truth_path, layer="rts").to_crs(pred.crs) if len(pred) else gpd.read_file(truth_path,
                                                                                                     layer="rts")
    used: set[int] = set()
    found = []
    for g in truth.geometry:
        best, k = 0.0, -1
        for j in pred.sindex.query(g, predicate="intersects") if len(pred) else []:
            if j in used:
                continue
            p = pred.geometry.iloc[j]
            v = g.intersection(p).area / g.union(p).area
            if v > best:
                best, k = v, j
        ok = best >= iou
        if ok:
            used.add(k)
        found.append(ok)
    weak = truth["weak_rgb"].astype(bool).tolist()
    n_weak = sum(weak)
    return {"slumps": len(truth), "weak": n_weak, "predicted": len(pred),
            "recall": sum(found) / max(1, len(truth)),
            "recall_weak": sum(f for f, w in zip(found, weak, strict=True) if w) / max(1, n_weak),
            "recall_strong": sum(f for f, w in zip(found, weak, strict=True) if not w) / max(1, len(truth) - n_weak),
            "precision": len(used) / max(1, len(pred))}


def chain(seed: int, a: argparse.Namespace, ds: Path, test: Path, scene: Path, dem: Path) -> dict:
    """Every model of one seed, trained, evaluated and matched."""
    out = Path(a.out) / f"seed{seed}"
    common = ["--data", ds, "--preset", "nano", "--batch-size", a.batch_size, "--max-steps", a.steps, "--workers", 0,
              "--seed", seed, "--warmup-steps", 50, "--tile-size", a.tile]
    res = {}
    for name, parts in MODELS.items():
        run = out / name
        if not (run / "config.yaml").exists():
            if parts is None:
                quiet("pretrain", "--modality", name, *common, "-o", run, "--overwrite")
            else:
                quiet("finetune", "--fusion", "residual-cross", "--modalities", ",".join(parts), "--from",
                      ",".join(str(out / p) for p in parts), "--init-heads-from", out / "rgb", *common, "-o", run,
                      "--overwrite")
        ev = out / f"{name}.eval.json"
        if not ev.exists():
            quiet("evaluate", run, "--data", test, "--split", "test", "-o", ev)
        pred = out / f"{name}.p{str(a.min_score).replace('.', '')}.gpkg"  # 0.3 -> .p03.gpkg
        if not pred.exists():
            extra = ["--dem", dem] if "terrain" in name else []
            quiet("predict", scene, "--model", run, "-o", pred, "--workers", 0, "--min-score", a.min_score, *extra)
        m = json.loads(ev.read_text())
        res[name] = {"mask_ap50": m["metrics"]["segm"]["AP50"], **match(pred, scene.with_suffix(".gpkg"))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/terrain")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--scene-size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--weak-fraction", type=float, default=0.6)
    ap.add_argument("--weak-contrast", type=float, default=0.2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--min-score", type=float, default=0.3, help="rts predict's, for the recall on the held-out scene")
    a = ap.parse_args()
    out = Path(a.out)
    syn = out / "syn"
    if not (syn / "synth.yaml").exists():
        rts("synth", syn, "--chips", 0, "--scenes", a.scenes, "--scene-size", a.scene_size, "--dem", "--seed", 5,
            "--weak-fraction", a.weak_fraction, "--weak-contrast", a.weak_contrast, "--overwrite")
    scenes = sorted((syn / "scenes").glob("scene_*.tif"))
    scenes = [s for s in scenes if not s.stem.endswith("_distractors")]
    train, held = scenes[:-1], scenes[-1]
    ds, test = out / "ds", out / "test"
    if not (ds / "manifest.yaml").exists():
        labels = [x for s in train for x in ("--labels", s.with_suffix(".gpkg"))]
        rts("prepare", *train, *labels, "--labels-layer", "rts",
            "--dem", syn / "dem", "--modalities", "rgb,ndvi,terrain", "--split", "0.85,0.15,0", "-o", ds,
            "--chip-size", a.tile, "--overwrite")
    dem = syn / "dem" / f"{held.stem}_dem.tif"
    if not (test / "manifest.yaml").exists():
        rts("prepare", held, "--labels", held.with_suffix(".gpkg"), "--labels-layer", "rts", "--dem", dem,
            "--modalities", "rgb,ndvi,terrain", "--split", "0,0,1", "-o", test, "--chip-size", a.tile,
            "--overwrite")
    seeds = [int(s) for s in a.seeds.split(",")]
    with ThreadPoolExecutor(a.jobs) as pool:
        per_seed = dict(zip(seeds, pool.map(lambda s: chain(s, a, ds, test, held, dem), seeds), strict=True))
    table: dict = {}
    for name in MODELS:
        row = {}
        for k in ("mask_ap50", "recall", "recall_weak", "recall_strong", "precision"):
            vals = [per_seed[s][name][k] for s in seeds if per_seed[s][name][k] is not None]
            row[k] = {"mean": statistics.mean(vals) if vals else None,
                      "spread": (max(vals) - min(vals)) if len(vals) > 1 else 0.0, "values": vals}
        table[name] = row
    first = per_seed[seeds[0]]["rgb"]
    meta = run_meta(steps=a.steps, seeds=seeds, min_score=a.min_score, scenes=a.scenes, scene_size=a.scene_size,
                    tile=a.tile,
                    weak_fraction=a.weak_fraction, weak_contrast=a.weak_contrast, held_out=held.name,
                    held_out_slumps=first["slumps"], held_out_weak=first["weak"],
                    dataset=yaml.safe_load((ds / "manifest.yaml").read_text()).get("counts"))
    result = {"meta": meta, "per_seed": per_seed, "table": table}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nterrain on `rts synth --dem` (nano, {a.steps} steps each, seeds {a.seeds}; held-out scene "
          f"{held.name}: {first['slumps']} slumps, {first['weak']} weak-RGB), {meta['date']}\n")
    print("| model | test mask AP50 | recall | recall weak-RGB | recall other | precision |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['spread'] / 2:.3f}" if row[k]["mean"] is not None else "n/a"
                 for k in ("mask_ap50", "recall", "recall_weak", "recall_strong", "precision")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
