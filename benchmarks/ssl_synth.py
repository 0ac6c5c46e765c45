"""Does self-supervised pretraining (`rts ssl`) let nano models learn from fewer labels? (CPU, synthetic data)

1. An unlabeled pool: `rts synth` scenes of their own seed (their truth files are never read).
2. A labelled set: other `rts synth` scenes, `rts prepare` with their labels; training subsets keep 10%, 25% and
   100% of the training chips (same val and test splits, same normalization).
3. `rts ssl` of the nano backbone on the pool, per modality (wall time per 1,000 windows).
4. Supervised `rts pretrain` on each subset from random initialisation and from the SSL backbone, the same number
   of steps, no validation (the last weights); `rts evaluate` on the full test split: mask AP50.

    python benchmarks/ssl_synth.py [--modalities rgb,nir] [--steps 150] [--ssl-windows 1000] [--ssl-epochs 2]

Goals (issue 13): SSL at 10% beats random at 10% by >= 0.10 AP50; SSL at 25% matches or beats random at 100%.
Prints a Markdown table and writes ``results.json`` beside the runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from common import meta as run_meta
from common import run, subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/ssl_synth")
    ap.add_argument("--modalities", default="rgb,nir")
    ap.add_argument("--fractions", default="0.1,0.25,1.0")
    ap.add_argument("--steps", type=int, default=150, help="supervised steps of every run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ssl-windows", type=int, default=1000, help="SSL windows per epoch")
    ap.add_argument("--ssl-epochs", type=int, default=2)
    ap.add_argument("--ssl-batch-size", type=int, default=8)
    ap.add_argument("--scene-size", type=int, default=1536)
    ap.add_argument("--scenes", type=int, default=2, help="labelled scenes (and as many unlabeled ones)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mods = args.modalities.split(",")
    fractions = [float(f) for f in args.fractions.split(",")]

    pool, lab, ds = out / "pool", out / "labelled", out / "ds"
    if not pool.exists():
        run("synth", pool, "--chips", 0, "--scenes", args.scenes, "--scene-size", args.scene_size, "--seed", 101)
    if not lab.exists():
        run("synth", lab, "--chips", 0, "--scenes", args.scenes, "--scene-size", args.scene_size, "--seed", 7)
    if not ds.exists():
        scenes = sorted((lab / "scenes").glob("*.tif"))
        labels = [a for s in scenes for a in ("--labels", s.with_suffix(".gpkg"))]
        run("prepare", *scenes, *labels, "--bands", "planetscope4", "--chip-size", 256, "-o", ds)
    sizes = {f: subset(ds, out / f"ds_{int(f * 100)}", f) for f in fractions}

    rows, ssl_rows = [], []
    pool_scenes = sorted((pool / "scenes").glob("*.tif"))
    for m in mods:
        bundle = out / f"ssl_{m}"
        if not (bundle / "model.safetensors").exists():
            secs = run("ssl", *pool_scenes, "--modality", m, "--bands", "planetscope4", "--preset", "nano",
                       "--windows", args.ssl_windows, "--epochs", args.ssl_epochs, "--batch-size",
                       args.ssl_batch_size, "--workers", 2, "-o", bundle, "--overwrite")
            import yaml

            cfg = yaml.safe_load((bundle / "config.yaml").read_text())
            seen = cfg["metrics"]["windows_seen"]
            ssl_rows.append({"modality": m, "windows": seen, "wall_s": round(secs, 1),
                             "s_per_1000_windows": round(1000 * secs / seen, 1),
                             "loss_first": cfg["metrics"]["loss_first"], "loss_last": cfg["metrics"]["loss_last"]})
            print(f"ssl {m}: {seen} windows in {secs:.0f} s", flush=True)
        for f in fractions:
            for init in ("random", "ssl"):
                name = f"{m}_{int(f * 100)}_{init}"
                run_dir = out / "runs" / name
                extra = ["--backbone-weights", bundle] if init == "ssl" else []
                secs = run("pretrain", "--modality", m, "--data", out / f"ds_{int(f * 100)}", "--preset", "nano",
                           "--max-steps", args.steps, "--batch-size", args.batch_size, "--val-every", 100000,
                           "--workers", 2, "-o", run_dir, "--overwrite", *extra)
                report = run_dir / "eval_test_full.json"
                run("evaluate", run_dir, "--data", ds, "--split", "test", "--report", report)
                r = json.loads(report.read_text())
                rows.append({"modality": m, "labels": f, "train_chips": sizes[f], "init": init,
                             "mask_ap50": round(r["metrics"]["segm"]["AP50"], 3),
                             "box_ap50": round(r["metrics"]["bbox"]["AP50"], 3), "train_s": round(secs)})
                print(rows[-1], flush=True)
    meta = run_meta(args=vars(args))
    (out / "results.json").write_text(json.dumps({"meta": meta, "ssl": ssl_rows, "rows": rows}, indent=2))
    print(f"\nrts ssl then rts pretrain, nano, CPU ({meta['date']}, {meta['cpus']} CPUs), {args.steps} supervised "
          f"steps at batch {args.batch_size}\n")
    print("| modality | labels | train chips | random init mask AP50 | SSL init mask AP50 | SSL - random |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in mods:
        for f in fractions:
            a = next(r for r in rows if r["modality"] == m and r["labels"] == f and r["init"] == "random")
            b = next(r for r in rows if r["modality"] == m and r["labels"] == f and r["init"] == "ssl")
            print(f"| {m} | {f:.0%} | {a['train_chips']} | {a['mask_ap50']:.3f} | {b['mask_ap50']:.3f} | "
                  f"{b['mask_ap50'] - a['mask_ap50']:+.3f} |")
    if ssl_rows:
        print("\n| SSL modality | windows | wall (s) | s per 1,000 windows | loss first -> last epoch |")
        print("|---|---:|---:|---:|---|")
        for r in ssl_rows:
            print(f"| {r['modality']} | {r['windows']} | {r['wall_s']} | {r['s_per_1000_windows']} | "
                  f"{r['loss_first']} -> {r['loss_last']} |")


if __name__ == "__main__":
    main()
