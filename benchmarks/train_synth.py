"""Train the nano models from scratch on `rts synth` chips (RGB) on the CPU, then evaluate.

    python benchmarks/train_synth.py [--minutes 30] [--models nano,nano-resnet] [--out bench_out/train_synth]

For each model: a short calibration measures seconds per iteration; the number of epochs is then
chosen so that training fits in ``--minutes`` (the cosine schedule runs to its end); the best
checkpoint by validation mask AP50 is evaluated on the held-out test split with `rts evaluate`.
Goal (issue 3): nano Cascade mask AP50 >= 0.60 within 30 minutes on a 2-core CPU.
Prints a Markdown table and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml


def rts(*args: str, quiet: bool = True) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rtscli", *args], check=True,
                   stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/train_synth")
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per model")
    ap.add_argument("--models", default="nano,nano-resnet")
    ap.add_argument("--minutes-per-model", default="", help="e.g. 30,15 to give models different budgets")
    ap.add_argument("--chips", type=int, default=420)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.008, help="at 16 tiles per step (scaled to the batch)")
    ap.add_argument("--val-every", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = out / "dataset"
    if not ds.exists():
        took = rts("synth", str(out / "synth"), "--chips", str(args.chips), "--scenes", "0", "--seed", "7",
                   "--overwrite")
        print(f"synth {args.chips} chips: {took:.0f} s", file=sys.stderr)
        rts("prepare", str(out / "synth" / "chips"), "-o", str(ds), "--bands", "paper", "--seed", "7", "--overwrite")
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    tot = m["counts"]["total"]
    n_train = tot["train"]["images"]
    budgets = [float(v) for v in args.minutes_per_model.split(",")] if args.minutes_per_model else []
    rows = []
    common = ["--modality", "rgb", "--data", str(ds), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--workers", "1", "--seed", "0", "--overwrite"]
    for i, model in enumerate(args.models.split(",")):
        minutes = budgets[i] if i < len(budgets) else args.minutes
        # calibration: two short runs; the difference is the cost of the extra steps
        t5 = rts("pretrain", *common, "--preset", model, "-o", str(out / f"cal_{model}"), "--max-steps", "5")
        t25 = rts("pretrain", *common, "--preset", model, "-o", str(out / f"cal_{model}"), "--max-steps", "25")
        sec_it = (t25 - t5) / 20
        steps_per_epoch = max(1, n_train // args.batch_size)
        val_s = 0.15 * (tot["val"]["images"]) / args.val_every  # rough cost of validation per epoch
        epochs = max(1, math.floor(minutes * 60 / (sec_it * steps_per_epoch + val_s)))
        print(f"{model}: {sec_it:.2f} s/iteration, {steps_per_epoch} steps/epoch -> {epochs} epochs for "
              f"{minutes:.0f} min", file=sys.stderr)
        run = out / f"run_{model}"
        wall = rts("pretrain", *common, "--preset", model, "-o", str(run), "--epochs", str(epochs),
                   "--val-every", str(args.val_every), "--warmup-steps", "100")
        rts("evaluate", str(run), "--data", str(ds), "--split", "test", "-o", str(run / "eval_test.json"))
        ev = json.loads((run / "eval_test.json").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        rows.append(dict(model=model, params_m=round(cfg["parameters"]["total"] / 1e6, 2), budget_min=minutes,
                         sec_per_iter=round(sec_it, 3), batch=args.batch_size, epochs=epochs,
                         steps=cfg["metrics"]["steps_run"], train_wall_min=round(wall / 60, 1),
                         val_ap50_best=cfg["metrics"]["val_mask_ap50_best"],
                         test_mask_ap50=round(ev["metrics"]["segm"]["AP50"], 4),
                         test_mask_ap=round(ev["metrics"]["segm"]["AP"], 4),
                         test_box_ap50=round(ev["metrics"]["bbox"]["AP50"], 4),
                         per_site=ev["per_site_mask_ap50"]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=platform.node(),
                cpus=os.cpu_count(), torch_threads=__import__("torch").get_num_threads(),
                chips=args.chips, train=n_train, val=tot["val"]["images"], test=tot["test"]["images"],
                test_instances=tot["test"]["instances"])
    (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\nnano models from scratch on `rts synth` chips (RGB, 256 px, {n_train} train / {meta['val']} val / "
          f"{meta['test']} test chips, {meta['test_instances']} test slumps), {meta['cpus']} CPUs, {meta['date']}\n")
    print(f"| model | params | budget | s/iter (batch {args.batch_size}) | epochs | steps | test mask AP50 "
          "| test mask AP | test box AP50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']}M | {r['budget_min']:.0f} min ({r['train_wall_min']} min wall) | "
              f"{r['sec_per_iter']} | {r['epochs']} | {r['steps']} | {r['test_mask_ap50']:.3f} | "
              f"{r['test_mask_ap']:.3f} | {r['test_box_ap50']:.3f} |")
    best = next((r for r in rows if r["model"] == "nano"), None)
    if best:
        print(f"\ngoal (nano cascade mask AP50 >= 0.60 in <= 30 min): "
              f"{'met' if best['test_mask_ap50'] >= 0.6 and best['budget_min'] <= 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
