"""RGB alone vs channel-stack vs residual-cross fusion on `rts synth` chips, nano presets, CPU.

    python benchmarks/fusion_synth.py [--out bench_out/fusion_synth] [--epochs 12] [--finetune-epochs 8]

The synthetic chips are made with many weak-RGB slumps (``--weak-fraction``, ``--weak-contrast``):
revegetating scars whose RGB is close to the tundra but whose NIR is low, so NDVI shows them.
Steps (each is skipped when its output exists, so an interrupted run resumes):

1. ``rts synth`` + ``rts prepare --bands paper`` (modalities rgb, ndvi, nir);
2. ``rts pretrain`` one nano model per modality (the paper's phase 1);
3. ``rts finetune --fusion channel-stack`` (one backbone on the 5 stacked channels, started from the
   RGB bundle, everything trained) and ``rts finetune --fusion residual-cross`` (the three frozen
   backbones + fusion + decoder; decoder started from the RGB bundle);
4. ``rts evaluate`` on the held-out test split: mask AP50 overall and on weak-RGB slumps.

Goal (issue 4): residual-cross >= RGB alone + 0.05 AP50, and > channel-stack.
Prints a Markdown table and writes results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from common import meta as run_meta
from common import run as rts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/fusion_synth")
    ap.add_argument("--chips", type=int, default=240)
    ap.add_argument("--weak-fraction", type=float, default=0.5)
    ap.add_argument("--weak-contrast", type=float, default=0.15)
    ap.add_argument("--epochs", type=int, default=12, help="pretraining epochs per modality")
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.008, help="at 16 tiles per step (scaled to the batch)")
    ap.add_argument("--until", choices=["data", "pretrain", "finetune", "all"], default="all")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = out / "dataset"
    walls: dict[str, float] = {}
    if not (ds / "manifest.yaml").exists():
        rts("synth", str(out / "synth"), "--chips", str(args.chips), "--scenes", "0", "--seed", "11",
            "--weak-fraction", str(args.weak_fraction), "--weak-contrast", str(args.weak_contrast), "--overwrite")
        rts("prepare", str(out / "synth" / "chips"), "-o", str(ds), "--bands", "paper", "--seed", "11",
            "--modalities", "rgb,ndvi,nir", "--overwrite")
    if args.until == "data":
        return
    common = ["--data", str(ds), "--preset", "nano", "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--workers", "1", "--seed", "0", "--val-every", "2", "--warmup-steps", "50"]
    for mod in ("rgb", "ndvi", "nir"):
        run = out / f"pretrain_{mod}"
        if not (run / "config.yaml").exists():
            walls[f"pretrain {mod}"] = rts("pretrain", "--modality", mod, *common, "-o", str(run),
                                           "--epochs", str(args.epochs), "--overwrite")
    if args.until == "pretrain":
        return
    ft = ["--data", str(ds), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--workers", "1",
          "--seed", "0", "--val-every", "2", "--warmup-steps", "20", "--epochs", str(args.finetune_epochs)]
    runs = {"rgb alone": out / "pretrain_rgb", "ndvi alone": out / "pretrain_ndvi", "nir alone": out / "pretrain_nir"}
    every = ",".join(str(out / f"pretrain_{m}") for m in ("rgb", "ndvi", "nir"))
    for fusion, extra in (("channel-stack", ["--from", str(out / "pretrain_rgb")]),
                          ("residual-cross", ["--from", every, "--init-heads-from", str(out / "pretrain_rgb")])):
        run = out / f"finetune_{fusion}"
        runs[f"{fusion} (rgb+ndvi+nir)"] = run
        if not (run / "config.yaml").exists():
            walls[f"finetune {fusion}"] = rts("finetune", "--fusion", fusion, "--modalities", "rgb,ndvi,nir", *ft,
                                              *extra, "-o", str(run), "--overwrite")
    if args.until == "finetune":
        return
    rows = []
    for name, run in runs.items():
        ev_path = run / "eval_test.json"
        if not ev_path.exists():
            rts("evaluate", str(run), "--data", str(ds), "--split", "test", "-o", str(ev_path))
        ev = json.loads(ev_path.read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cost = cfg.get("cost") or {}
        rows.append(dict(model=name, test_mask_ap50=round(ev["metrics"]["segm"]["AP50"], 4),
                         test_box_ap50=round(ev["metrics"]["bbox"]["AP50"], 4),
                         params_m=round(cfg["parameters"]["total"] / 1e6, 2),
                         trainable_m=round(cfg["parameters"]["trainable"] / 1e6, 2),
                         peak_train_mb=cost.get("peak_train_mb"), steps=cfg["metrics"]["steps_run"]))
    meta = run_meta(args=vars(args), walls_s={k: round(v) for k, v in walls.items()})
    manifest = yaml.safe_load((ds / "manifest.yaml").read_text())
    meta["counts"] = {s: manifest["counts"]["total"][s] for s in ("train", "val", "test")}
    (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\nfusion on `rts synth` chips (nano, CPU; weak-RGB slumps {args.weak_fraction:.0%} at "
          f"{args.weak_contrast:.2f} of their usual RGB contrast), {meta['date']}\n")
    print("| model | test mask AP50 | test box AP50 | params | trainable | steps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['test_mask_ap50']:.3f} | {r['test_box_ap50']:.3f} | {r['params_m']}M | "
              f"{r['trainable_m']}M | {r['steps']} |")
    ap50 = {r["model"].split(" ")[0]: r["test_mask_ap50"] for r in rows}
    gain = ap50["residual-cross"] - ap50["rgb"]
    print(f"\nresidual-cross - rgb alone = {gain:+.3f} AP50 (goal >= +0.05: {'met' if gain >= 0.05 else 'MISSED'}); "
          f"residual-cross - channel-stack = {ap50['residual-cross'] - ap50['channel-stack']:+.3f} "
          f"({'met' if ap50['residual-cross'] > ap50['channel-stack'] else 'MISSED'})")


if __name__ == "__main__":
    main()
