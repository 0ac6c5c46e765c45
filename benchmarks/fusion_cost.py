"""The paper's Table 2 for our models: parameters and peak training memory per modality count.

    python benchmarks/fusion_cost.py [--preset cascade-mvitv2-b] [--fusion residual-cross] [--tile N] [--no-memory]

For 1 modality (RGB), 2 (RGB+NDVI) and 3 (RGB+NDVI+NIR): total and trainable parameters with frozen
backbones and with ``--no-freeze``, and the peak memory of one forward + backward pass on one
sample of the preset's tile size (GPU: ``torch.cuda.max_memory_allocated``, weights included; CPU:
peak RSS increase in a fresh process, weights excluded). The same code as the report that
``rts finetune`` prints. Prints a Markdown table; the paper's figures are beside ours.
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import datetime, timezone

import torch

from rtscli.modeling.config import load_preset
from rtscli.modeling.cost import cost_report
from rtscli.modeling.multimodal import build_model, fusion_heads, fusion_spec

PAPER = {1: ("103M", "103M", "1649 MB", "-"), 2: ("170M", "69M", "2527 MB", "1454 MB"),
         3: ("230M", "78M", "3361 MB", "1754 MB")}
SETS = {1: ["rgb"], 2: ["rgb", "ndvi"], 3: ["rgb", "ndvi", "nir"]}


def _mem(r: dict | None) -> str:
    return f"{r['peak_train_mb']:.0f} MB" if r and "peak_train_mb" in r else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cascade-mvitv2-b")
    ap.add_argument("--fusion", default="residual-cross")
    ap.add_argument("--tile", type=int, default=0, help="sample side (default: the preset's tile size)")
    ap.add_argument("--no-memory", action="store_true", help="parameters only")
    ap.add_argument("--counts", default="1,2,3")
    args = ap.parse_args()
    cfg = load_preset(args.preset)
    tile = args.tile or cfg.tile_size
    cfg.tile_size = tile  # MViTv2's relative positions are built for one input size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for n in (int(v) for v in args.counts.split(",")):
        mods = SETS[n]
        for frozen in ([False] if n == 1 else [False, True]):
            if n == 1:
                spec = None
                cfg.backbone.in_channels = 3
            else:
                spec = fusion_spec(args.fusion, mods, [3] * n, heads=fusion_heads(cfg.fpn.out_channels), frozen=frozen)
            model = build_model(cfg, spec)
            rep = cost_report(model, fusion=spec, tile=tile, channels=3 * n, device=device, memory=not args.no_memory)
            rows.append((n, frozen, rep))
            mem = f"{rep['peak_train_mb']:.0f} MB" if "peak_train_mb" in rep else "-"
            print(f"{'+'.join(mods)} {'frozen' if frozen else 'trained'}: {rep['parameters_total'] / 1e6:.1f}M total, "
                  f"{rep['parameters_trainable'] / 1e6:.1f}M trainable, {mem}", flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{args.preset}, {args.fusion}, one {tile} px sample, forward + backward, {dev}, {platform.node()}, "
          f"{datetime.now(timezone.utc).date()}\n")
    print("| modalities | total params | trainable (frozen) | memory, trained backbones | memory, frozen | "
          "paper: total / trainable / memory no-pretrain / frozen |")
    print("|---|---|---|---|---|---|")
    by = {(n, f): r for n, f, r in rows}
    for n in sorted({n for n, _, _ in rows}):
        t, f = by[(n, False)], by.get((n, True))
        print(f"| {n} ({'+'.join(SETS[n])}) | {t['parameters_total'] / 1e6:.1f}M | "
              f"{(f or t)['parameters_trainable'] / 1e6:.1f}M | {_mem(t)} | {_mem(f)} | {' / '.join(PAPER[n])} |")
    if rows and "method" in rows[0][2]:
        print(f"\nmemory: {rows[0][2]['method']}")


if __name__ == "__main__":
    main()
