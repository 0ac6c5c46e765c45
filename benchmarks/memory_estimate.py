"""Measure the peak memory of training steps on the CPU and compare it with ``rtscli.modeling.memory``'s estimate.

    python benchmarks/memory_estimate.py measure [--configs NAME,...] [--out bench_out/memory.json]
    python benchmarks/memory_estimate.py table [bench_out/memory.json] [--fit]   # measured vs estimated

Each configuration (preset, tile px, batch, optional fusion) runs in a fresh Python process. The process builds
the model (random weights, fp32) and puts it in the state of a run in progress: AdamW's moments exist and the
last step's gradients are still allocated, as they are during the forward under Lightning's automatic
optimization. It then runs one training step (forward, zero_grad, backward, AdamW step) on random tiles with
four square objects each. ``step_mb`` is the peak RSS over that step (VmHWM, reset through /proc/self/clear_refs)
minus the RSS before the model was built. That is weights + gradients + AdamW moments + activations: what
``estimate_step_bytes`` estimates, less the engine's copy of the best weights, which this script does not make.

``table`` adds figures measured before (``KNOWN``, from benchmarks/RESULTS.md, forward + backward only: gradients
+ activations) and prints measured vs estimated; ``--fit`` prints the least-squares values of
``CPU_ACTIVATION_FACTOR`` and ``CPU_RESERVE`` (relative error), which ``rtscli/modeling/memory.py`` holds. MB are
MiB (2**20 bytes). Linux only (VmHWM). Run one measurement at a time: the largest (cascade-mvitv2-b at 768 px)
needs about 9.5 GiB and a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

MIB = 2**20

# name: (preset, tile px, batch, fusion or None); fusion = (strategy, modalities, frozen)
CONFIGS = {
    "nano-128": ("nano", 128, 1, None),
    "nano-256": ("nano", 256, 1, None),
    "nano-256-b4": ("nano", 256, 4, None),
    "nano-512": ("nano", 512, 1, None),
    "nano-resnet-256": ("nano-resnet", 256, 1, None),
    "nano-resnet-256-b4": ("nano-resnet", 256, 4, None),
    "nano-resnet-512": ("nano-resnet", 512, 1, None),
    "t-256": ("cascade-mvitv2-t", 256, 1, None),
    "t-512": ("cascade-mvitv2-t", 512, 1, None),
    "s-384": ("cascade-mvitv2-s", 384, 1, None),
    "b-128": ("cascade-mvitv2-b", 128, 1, None),
    "b-192": ("cascade-mvitv2-b", 192, 1, None),
    "b-256": ("cascade-mvitv2-b", 256, 1, None),
    "b-256-b2": ("cascade-mvitv2-b", 256, 2, None),
    "b-384": ("cascade-mvitv2-b", 384, 1, None),
    "b-512": ("cascade-mvitv2-b", 512, 1, None),
    "b-640": ("cascade-mvitv2-b", 640, 1, None),
    "b-768": ("cascade-mvitv2-b", 768, 1, None),
    "mrcnn-b-384": ("maskrcnn-mvitv2-b", 384, 1, None),
    "r50-512": ("maskrcnn-resnet50-fpn", 512, 1, None),
    "r50-1024": ("maskrcnn-resnet50-fpn", 1024, 1, None),
    "r50-1024-b2": ("maskrcnn-resnet50-fpn", 1024, 2, None),
    "nano-256-fused3": ("nano", 256, 4, ("residual-cross", 3, False)),
    "nano-256-fused3-frozen": ("nano", 256, 4, ("residual-cross", 3, True)),
    "b-384-fused3": ("cascade-mvitv2-b", 384, 1, ("residual-cross", 3, False)),
    "b-384-fused3-frozen": ("cascade-mvitv2-b", 384, 1, ("residual-cross", 3, True)),
}
DEFAULT = ("nano-128,nano-256,nano-256-b4,nano-512,nano-resnet-256,nano-resnet-256-b4,nano-resnet-512,t-256,t-512,"
           "s-384,b-128,b-192,b-256,b-256-b2,b-384,b-512,b-640,mrcnn-b-384,r50-512,r50-1024,r50-1024-b2,"
           "nano-256-fused3,nano-256-fused3-frozen,b-384-fused3,b-384-fused3-frozen")
#: measured elsewhere (the method of rtscli.modeling.cost: fb_mb only); benchmarks/RESULTS.md, 2026-11-24
KNOWN = [
    {"name": "b-1024 (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 1024, "batch": 1, "fusion": None,
     "fb_mb": 17.8 * 1024, "source": "benchmarks/RESULTS.md: 'At 1024 px one RGB sample alone took 17.8 GB'"},
    {"name": "b-512 (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 512, "batch": 1, "fusion": None,
     "fb_mb": 3750.0, "source": "benchmarks/RESULTS.md, fusion cost, 1 modality"},
    {"name": "b-512-fused2 (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 512, "batch": 1,
     "fusion": ["residual-cross", 2, False], "fb_mb": 6254.0, "source": "benchmarks/RESULTS.md, fusion cost"},
    {"name": "b-512-fused3 (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 512, "batch": 1,
     "fusion": ["residual-cross", 3, False], "fb_mb": 8633.0, "source": "benchmarks/RESULTS.md, fusion cost"},
    {"name": "b-512-fused2-frozen (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 512, "batch": 1,
     "fusion": ["residual-cross", 2, True], "fb_mb": 1801.0, "source": "benchmarks/RESULTS.md, fusion cost"},
    {"name": "b-512-fused3-frozen (RESULTS.md)", "preset": "cascade-mvitv2-b", "tile": 512, "batch": 1,
     "fusion": ["residual-cross", 3, True], "fb_mb": 2079.0, "source": "benchmarks/RESULTS.md, fusion cost"},
]
MODS = ["rgb", "ndvi", "nir"]


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _config(preset: str, tile: int, fusion):
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.multimodal import fusion_heads, fusion_spec

    cfg = load_preset(preset)
    cfg.tile_size = tile  # MViTv2's relative positions are built for one input size
    cfg.backbone.in_channels = 3
    spec = None
    if fusion:
        strategy, n, frozen = fusion
        spec = fusion_spec(strategy, MODS[:n], [3] * n, heads=fusion_heads(cfg.fpn.out_channels), frozen=frozen)
    return cfg, spec


def _batch(tile: int, batch: int, channels: int):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, tile, tile, generator=g)
    targets = []
    for i in range(batch):
        boxes, masks = [], torch.zeros(4, tile, tile, dtype=torch.uint8)
        for k, (f, s) in enumerate(((0.1, 0.3), (0.5, 0.2), (0.2, 0.12), (0.6, 0.35))):
            a, b = int(tile * (f + 0.02 * i)), max(8, int(tile * s))
            a = min(a, tile - b - 1)
            boxes.append([a, a, a + b, a + b])
            masks[k, a:a + b, a:a + b] = 1
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.ones(4, dtype=torch.int64), "masks": masks})
    return images, targets


def measure_here(job: dict) -> dict:
    import timm.models.mvitv2  # noqa: F401  (imported before the baseline: imports are not the step's memory)
    import torch
    import torchvision.models  # noqa: F401

    from rtscli.modeling.detector import count_parameters
    from rtscli.modeling.multimodal import build_model

    torch.manual_seed(0)
    cfg, spec = _config(job["preset"], job["tile"], job["fusion"])
    _trim()
    base = _status("VmRSS")
    model = build_model(cfg, spec)
    model.train()
    total, trainable = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    _trim()
    weights = _status("VmRSS") - base
    # the state of a run in progress: AdamW's moments exist and the last step's gradients are still allocated
    opt = torch.optim.AdamW(params, lr=1e-5)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    channels = 3 * (len(spec["modalities"]) if spec else 1)
    images, targets = _batch(job["tile"], job["batch"], channels)
    _trim()
    ready = _status("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    loss = sum(model.losses(images, targets).values())
    opt.zero_grad(set_to_none=True)  # where Lightning's automatic optimization does it: after the forward
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t
    peak = _status("VmHWM")
    return {"step_mb": round(peak - base, 1), "over_ready_mb": round(peak - ready, 1), "weights_mb": round(weights, 1),
            "seconds": round(seconds, 2), "params_total": total, "params_trainable": trainable}


def estimate(row: dict) -> dict:
    """The estimate for a measured row: ``est_mb`` comparable with its measurement, and the fit's inputs."""
    from rtscli.modeling import memory

    cfg, spec = _config(row["preset"], row["tile"], row["fusion"])
    e = memory.estimate_step_memory(cfg, batch_size=row["batch"], device="cpu", precision="32-true", fusion=spec)
    if "step_mb" in row:  # a whole step above the RSS before the model: everything but the best-weights copy
        fixed = (e.weights + e.gradients + e.optimizer) / MIB
        measured = row["step_mb"]
    else:  # the method of rtscli.modeling.cost: forward + backward above the built model
        fixed = e.gradients / MIB
        measured = row["fb_mb"]
    act = (e.activations + e.reserve) / MIB
    raw = e.activations / memory.CPU_ACTIVATION_FACTOR / MIB  # activations before calibration
    return {"est_mb": fixed + act, "measured_mb": measured, "fixed_mb": fixed, "raw_act_mb": raw}


def cmd_measure(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {r["name"] for r in data["rows"]}
    for name in args.configs.split(","):
        if name in done and not args.again:
            continue
        preset, tile, batch, fusion = CONFIGS[name]
        job = {"preset": preset, "tile": tile, "batch": batch, "fusion": fusion}
        t = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, __file__, "one", json.dumps(job)], capture_output=True, text=True,
                               timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{name}: over {args.timeout} s, skipped", file=sys.stderr, flush=True)
            continue
        if r.returncode != 0:
            print(f"{name}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr, flush=True)
            continue
        row = {"name": name, **job, **json.loads(r.stdout.strip().splitlines()[-1]),
               "wall_s": round(time.perf_counter() - t, 1)}
        data["rows"] = [x for x in data["rows"] if x["name"] != name] + [row]
        data["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
                        "python": platform.python_version(), "torch": __import__("torch").__version__}
        out.write_text(json.dumps(data, indent=1))
        print(json.dumps(row), flush=True)


def _fit(rows: list[dict]) -> tuple[float, float]:
    """CPU_ACTIVATION_FACTOR k and CPU_RESERVE c (MiB) minimizing sum(((fixed + k act + c) - m) / m)^2."""
    xs = [(e["raw_act_mb"], e["fixed_mb"], e["measured_mb"]) for e in map(estimate, rows)]
    s_aa = sum((a / m) ** 2 for a, f, m in xs)
    s_a1 = sum(a / m ** 2 for a, f, m in xs)
    s_11 = sum(1 / m ** 2 for a, f, m in xs)
    s_ay = sum(a * (m - f) / m ** 2 for a, f, m in xs)
    s_1y = sum((m - f) / m ** 2 for a, f, m in xs)
    det = s_aa * s_11 - s_a1 ** 2
    return (s_ay * s_11 - s_a1 * s_1y) / det, (s_aa * s_1y - s_a1 * s_ay) / det


def cmd_table(args) -> None:
    data = json.loads(Path(args.json).read_text())
    rows = data["rows"] + (KNOWN if args.known else [])
    if args.fit:
        k, c = _fit(rows)
        print(f"fit: CPU_ACTIVATION_FACTOR = {k:.3f}, CPU_RESERVE = {c:.0f} MiB (set them, then run table again)\n")
    print(f"{data.get('meta')}\n")
    print("| configuration | tile px | batch | what is measured | measured MiB | estimated MiB | error | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    errors = []
    for r in rows:
        e = estimate(r)
        err = e["est_mb"] / e["measured_mb"] - 1
        errors.append(err)
        fu = r["fusion"]
        name = r["preset"] + (f" + {fu[0]} x{fu[1]} {'frozen' if fu[2] else 'trained'}" if fu else "")
        what = "whole step" if "step_mb" in r else "fwd+bwd (" + r.get("source", "").split(",")[0] + ")"
        print(f"| {name} | {r['tile']} | {r['batch']} | {what} | {e['measured_mb']:.0f} | {e['est_mb']:.0f} | "
              f"{err:+.0%} | {r.get('seconds', '-')} |")
    print(f"\nerror: from {min(errors):+.0%} to {max(errors):+.0%}; mean absolute "
          f"{sum(map(abs, errors)) / len(errors):.0%}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "one":
        print(json.dumps(measure_here(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--configs", default=DEFAULT, help=f"comma list of: {', '.join(CONFIGS)}")
    m.add_argument("--out", default="bench_out/memory.json")
    m.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    m.add_argument("--again", action="store_true", help="re-measure configurations already in --out")
    t = sub.add_parser("table")
    t.add_argument("json", nargs="?", default="bench_out/memory.json")
    t.add_argument("--fit", action="store_true", help="also print the least-squares calibration constants")
    t.add_argument("--no-known", dest="known", action="store_false",
                   help="leave out the figures measured before (benchmarks/RESULTS.md)")
    args = ap.parse_args()
    {"measure": cmd_measure, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
