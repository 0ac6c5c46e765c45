"""The measurements of benchmarks/gpu_check.py that run inside one Python process each (never in gpu_check's own).

    python benchmarks/gpu_measure.py train JOB.json       # step time and peak memory; the paper's Table 2
    python benchmarks/gpu_measure.py bundles JOB.json     # the bundles `rts predict` is timed with, and their speed
    python benchmarks/gpu_measure.py learn JOB.json       # rts ssl + rts pretrain for a wall-clock budget, evaluated
    torchrun --nproc-per-node 1 benchmarks/gpu_measure.py ddp-probe REPORT.json -- pretrain ...   # which backend

Each job is a JSON file written by gpu_check.py; each result is appended as one JSON line to ``job["rows"]`` as
soon as it is known, so a child stopped at its time budget still leaves what it measured. A child imports torch
and initialises CUDA itself: a CUDA fault or an out-of-memory state dies with it, not with gpu_check.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIB = 2**20
#: the paper's Table 2, MB for one sample (detectron2): (modalities, frozen) -> peak training memory
PAPER_MB = {(1, False): 1649, (2, False): 2527, (3, False): 3361, (2, True): 1454, (3, True): 1754}
MODALITIES = ["rgb", "ndvi", "nir"]


def emit(path: str | Path, row: dict[str, Any]) -> None:
    """Append one result as a JSON line (flushed at once: the parent may stop this process any time)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def rts_main(args: list[str]) -> int:
    """``rts ARGS`` in this process (the imports and CUDA are set up once for many commands)."""
    from rtscli.cli import main

    print("+ rts " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    return main([str(a) for a in args])


@contextlib.contextmanager
def lightning_limits(max_seconds: float | None = None, step_times: list[float] | None = None) -> Iterator[None]:
    """Every Lightning Trainer made inside stops after ``max_seconds`` of fitting (Lightning's own ``max_time``: the
    running step ends, the run finishes normally and rts writes its bundle) and records the time of each training
    step's end in ``step_times``. rts has no wall-clock option; a benchmark with a time budget needs one."""
    import lightning as L

    class StepClock(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            if step_times is not None:
                step_times.append(time.perf_counter())

    original = L.Trainer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if max_seconds:
            kwargs["max_time"] = {"seconds": float(max_seconds)}
        if step_times is not None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepClock()]
        original(self, *args, **kwargs)

    L.Trainer.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        L.Trainer.__init__ = original  # type: ignore[method-assign]


def seconds_per_step(times: list[float], skip: int = 2) -> float | None:
    """The median time between training steps' ends, leaving out the first ``skip`` (start-up, kernel choices)."""
    gaps = sorted(b - a for a, b in zip(times[skip:-1], times[skip + 1:], strict=True))
    return gaps[len(gaps) // 2] if gaps else None


# ---------------------------------------------------------------- training steps and memory


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def build(preset: str, tile: int, n: int, frozen: bool, device: str) -> Any:
    """The detector for ``n`` modalities (1: plain RGB; 2-3: residual-cross fusion) on ``device``, random weights,
    built there when it can be (initialising 100M+ parameters on the CPU takes seconds)."""
    import torch

    from rtscli.modeling.config import load_preset
    from rtscli.modeling.multimodal import build_model, fusion_heads, fusion_spec

    cfg = load_preset(preset)
    cfg.tile_size = tile  # MViTv2's relative positions are built for one input size
    cfg.backbone.in_channels = 3
    spec = None if n == 1 else fusion_spec("residual-cross", MODALITIES[:n], [3] * n,
                                           heads=fusion_heads(cfg.fpn.out_channels), frozen=frozen)
    torch.manual_seed(0)
    try:
        with torch.device(device):
            model = build_model(cfg, spec)
    except Exception:  # a part that cannot be built on the device: the CPU, then moved
        model = build_model(cfg, spec)
    return model.to(device)


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_steps(model: Any, *, tile: int, batch: int, channels: int, precision: str, steps: int,
                device: str, warmup: bool = True) -> dict[str, Any]:
    """Warm-up step, then ``steps`` timed AdamW steps (forward, backward, update) on a fixed random batch with four
    objects per tile, in fp32 or under bf16 autocast (what Lightning's ``bf16-mixed`` does). Peak memory is
    ``torch.cuda.max_memory_allocated`` over the timed steps: weights, gradients, AdamW moments, activations."""
    import torch
    from memory_estimate import _batch  # benchmarks/ is this script's folder: on its import path

    images, targets = _batch(tile, batch, channels)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7)  # tiny: the weights stay as they were for the next measurement
    dtype = torch.bfloat16 if precision == "bf16" else None
    kind = "cuda" if device.startswith("cuda") else "cpu"
    model.train()
    losses: dict[str, Any] = {}

    def step() -> None:
        nonlocal losses
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=dtype is not None):
            losses = model.losses(images, targets)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()

    try:
        if warmup:
            step()
        _sync(device)
        if kind == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t)
        out: dict[str, Any] = {"step_s": round(sorted(times)[len(times) // 2], 4),
                               "tiles_per_s": round(batch / sorted(times)[len(times) // 2], 2),
                               "finite": all(bool(torch.isfinite(v).all()) for v in losses.values()),
                               "loss": round(float(sum(v.detach().float() for v in losses.values())), 4)}
        if kind == "cuda":
            out["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
            out["reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / MIB, 1)
        else:
            out["peak_mb"] = "skipped: no CUDA (CPU memory is not comparable)"
        return out
    finally:
        opt.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        opt.state.clear()  # AdamW's moments: freed before the next measurement
        losses = {}
        _free(device)


def fwd_bwd_memory(model: Any, *, tile: int, channels: int, precision: str, device: str) -> dict[str, Any]:
    """The paper's Table 2 measure: one sample, forward + backward, no optimizer state
    (:func:`rtscli.modeling.cost.training_memory`), in fp32 or under bf16 autocast."""
    import torch

    from rtscli.modeling.cost import training_memory

    if not device.startswith("cuda"):
        return {"peak_mb": "skipped: no CUDA (the paper's figures are GPU memory)"}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        r = training_memory(model, tile=tile, channels=channels, device=device)
    _free(device)
    return {"peak_mb": r["peak_train_mb"], "seconds": r["seconds"]}


def guarded(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn``'s result, or ``{"error": ...}`` (``"oom": True`` for out of memory), the device's memory freed."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # one configuration failing must not stop the others
        device = kwargs.get("device", "cpu")
        _free(device)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                "oom": is_oom(exc)}


def cmd_train(job: dict[str, Any]) -> None:
    """Pass 1, every model: batch 1 and batch 2 steps in fp32 and bf16 and Table 2's one-sample memory. Pass 2, the
    models of the step table: the largest batch that fits, found from the batch 1 -> 2 growth and tried downwards."""
    import torch

    device, preset, tile = job["device"], job["preset"], int(job["tile"])
    deadline = time.monotonic() + float(job["budget_s"])
    steps, cap = int(job.get("steps", 3)), int(job.get("max_batch_cap", 64))
    models = [(1, False), (3, False), (3, True), (2, False), (2, True)]  # the step table's three first
    stepped = {(1, False), (3, False), (3, True)}
    growth: dict[tuple[int, bool, str], tuple[float, float]] = {}

    def left() -> float:
        return deadline - time.monotonic()

    for n, frozen in models:
        if left() < 5:
            emit(job["rows"], {"kind": "skipped", "modalities": n, "frozen": frozen, "reason": "time budget spent"})
            continue
        t = time.perf_counter()
        model = guarded(build, preset, tile, n, frozen, device=device)
        if isinstance(model, dict):
            emit(job["rows"], {"kind": "error", "modalities": n, "frozen": frozen, **model})
            continue
        built = round(time.perf_counter() - t, 1)
        for precision in job["precisions"]:
            base = {"preset": preset, "tile": tile, "modalities": n, "frozen": frozen, "precision": precision,
                    "build_s": built}
            mem = guarded(fwd_bwd_memory, model, tile=tile, channels=3 * n, precision=precision, device=device)
            emit(job["rows"], {"kind": "table2", **base, **mem, "paper_mb": PAPER_MB[(n, frozen)]})
            if (n, frozen) not in stepped:
                continue
            for batch in (1, 2) if device.startswith("cuda") else (1,):  # batch 2: the growth per tile
                if left() < 3:
                    break
                r = guarded(train_steps, model, tile=tile, batch=batch, channels=3 * n, precision=precision,
                            steps=steps, device=device, warmup=bool(job.get("warmup", True)))
                emit(job["rows"], {"kind": "step", **base, "batch": batch, "largest": False, **r})
                if isinstance(r.get("peak_mb"), float):
                    growth.setdefault((n, frozen, precision), (0.0, 0.0))
                    p1, p2 = growth[(n, frozen, precision)]
                    growth[(n, frozen, precision)] = (r["peak_mb"], p2) if batch == 1 else (p1, r["peak_mb"])
        del model
        _free(device)
    total = torch.cuda.get_device_properties(device).total_memory / MIB if device.startswith("cuda") else None
    for n, frozen in models:
        if (n, frozen) not in stepped:
            continue
        model = None
        for precision in job["precisions"]:
            p1, p2 = growth.get((n, frozen, precision), (0.0, 0.0))
            base = {"preset": preset, "tile": tile, "modalities": n, "frozen": frozen, "precision": precision}
            if total is None or not (p1 and p2):
                emit(job["rows"], {"kind": "largest", **base, "skipped": "no CUDA memory figures for batch 1 and 2"
                                   if total is None else "batch 1 or 2 was not measured"})
                continue
            per = max(p2 - p1, 1.0)
            guess = min(cap, int((0.92 * total - (p1 - per)) / per))
            tried: list[int] = []
            found: dict[str, Any] | None = None
            while guess > 2 and left() > 10:
                if model is None:
                    model = guarded(build, preset, tile, n, frozen, device=device)
                if isinstance(model, dict):  # it could not be built again
                    break
                tried.append(guess)
                r = guarded(train_steps, model, tile=tile, batch=guess, channels=3 * n, precision=precision,
                            steps=1, device=device)
                if "error" not in r:
                    found = {"batch": guess, **r}
                    break
                if not r.get("oom"):
                    found = {"batch": guess, **r}
                    break
                guess = min(guess - 1, int(guess * 0.85))
            if found is not None:
                emit(job["rows"], {"kind": "step", **base, "largest": True, "tried": tried, "mb_per_tile": round(per),
                                   "capped": found["batch"] == cap, **found})
            else:
                emit(job["rows"], {"kind": "largest", **base, "tried": tried, "mb_per_tile": round(per),
                                   "skipped": "time budget spent" if left() <= 10 else
                                   f"batch 2 is the largest found (growth {per:.0f} MB per tile)"})
        del model
        _free(device)


# ---------------------------------------------------------------- bundles for rts predict


def bundle_like(template: Path, out: Path, *, preset: str, tile: int | None = None, device: str = "cpu") -> Path:
    """A bundle of ``preset``'s architecture with random weights, everything else (modalities, band map,
    normalization, fusion) taken from the bundle ``template``: what `rts predict` needs to be timed with a model
    of that size without training it first."""
    import shutil

    import yaml

    from rtscli.modeling.bundle import read_bundle, save_bundle
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import count_parameters
    from rtscli.modeling.multimodal import build_model, fusion_heads

    src = read_bundle(template)
    cfg = load_preset(preset)
    cfg.tile_size = int(tile or cfg.tile_size)
    cfg.backbone.in_channels = src.model_config.backbone.in_channels
    config = yaml.safe_load((Path(template) / "config.yaml").read_text())
    fusion = dict(src.fusion) if src.fusion else None
    if fusion:
        fusion["heads"] = fusion_heads(cfg.fpn.out_channels)
    import torch

    try:  # initialised on the device when it can be: seconds for a 230M-parameter model on the CPU
        with torch.device(device):
            model = build_model(cfg, fusion)
    except Exception:
        model = build_model(cfg, fusion)
    total, trainable = count_parameters(model)
    config.update(model=cfg.to_dict(), tile_size=cfg.tile_size, fusion=fusion,
                  parameters={"total": total, "trainable": trainable},
                  metrics={"note": f"random weights: made by benchmarks/gpu_measure.py from {template} "
                                   "to time rts predict"})
    if out.exists():
        shutil.rmtree(out)
    save_bundle(out, model.state_dict(), config)
    return out


def model_speed(bundle: Path, *, batch: int, device: str, batches: int = 3) -> dict[str, Any]:
    """Tiles per second of the bundle's model alone (forward over random tiles, as `rts predict` runs it)."""
    import torch

    from rtscli.modeling.bundle import load_model

    model, b = load_model(bundle, device=device)
    model.eval()
    channels = sum(len(m.channels) if len(m.channels) > 1 else (b.repeat_to or 1) for m in b.modalities)
    x = torch.randn(batch, channels, b.tile_size, b.tile_size, device=device)
    with torch.inference_mode():
        model.predict(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(batches):
            model.predict(x)
        _sync(device)
    seconds = (time.perf_counter() - t) / batches
    del model, x
    _free(device)
    return {"model_tiles_per_s": round(batch / seconds, 2), "tile": b.tile_size, "channels": channels}


def cmd_bundles(job: dict[str, Any]) -> None:
    """The bundles of ``job["models"]`` (``nano``, ``rgb``, ``fused3``): nano is a 1-step `rts pretrain` (unless
    given), the preset's RGB and fused 3-modality models are made (:func:`bundle_like`) from it and from a fused nano
    bundle (`rts finetune`, 1 step). With ``calibrate``, each model's speed, from which gpu_check sizes the scene."""
    work, ds, models = Path(job["work"]), job["data"], job["models"]
    common = ["--data", ds, "--max-steps", 1, "--workers", 0, "--batch-size", 2, "--overwrite",
              *job.get("train_args", [])]
    preset, tile = job["preset"], job.get("tile")
    rows: dict[str, Path] = {}
    if "nano" in models or "rgb" in models:
        nano = Path(job.get("nano") or work / "nano")
        if not (nano / "model.safetensors").exists():
            if rts_main(["pretrain", "--modality", "rgb", "--preset", "nano", "-o", nano, *common]) != 0:
                raise SystemExit("rts pretrain (nano, 1 step) failed")
        if "nano" in models:
            rows["nano"] = nano
        if "rgb" in models:
            rows[f"{preset} rgb"] = bundle_like(nano, work / "preset_rgb", preset=preset, tile=tile,
                                                device=job["device"])
    if "fused3" in models:
        fused_nano = work / "fused_nano"
        if rts_main(["finetune", "--fusion", "residual-cross", "--modalities", "rgb,ndvi,nir", "--preset", "nano",
                     "--no-measure-memory", "-o", fused_nano, *common]) != 0:
            raise SystemExit("rts finetune (nano, residual-cross, 1 step) failed")
        rows[f"{preset} fused3"] = bundle_like(fused_nano, work / "preset_fused3", preset=preset, tile=tile,
                                               device=job["device"])
    for name, path in rows.items():
        row: dict[str, Any] = {"name": name, "bundle": str(path)}
        if job.get("calibrate"):
            row.update(guarded(model_speed, path, batch=int(job["batch"]), device=job["device"]))
        emit(job["rows"], row)


# ---------------------------------------------------------------- learning for a wall-clock budget


def _evaluate(run: Path, ds: str, split: str) -> dict[str, Any]:
    report = run / f"eval_{split}.json"
    if rts_main(["evaluate", run, "--data", ds, "--split", split, "-o", report]) != 0:
        return {f"{split}_error": "rts evaluate failed"}
    m = json.loads(report.read_text())["metrics"]
    return {f"{split}_mask_ap50": round(m["segm"]["AP50"], 4), f"{split}_box_ap50": round(m["bbox"]["AP50"], 4)}


def cmd_learn(job: dict[str, Any]) -> None:
    """Per preset: `rts ssl` of its RGB backbone on the dataset's chips for ``ssl_seconds``; the speed of a short
    supervised run; then `rts pretrain` from random weights and from the SSL backbone, each with ``--max-steps`` set
    to fit ``seconds`` (so its schedule ends) and stopped by the clock at ``seconds`` anyway; `rts evaluate` of
    each on the val and test splits."""
    import yaml

    work, ds = Path(job["work"]), job["data"]
    deadline = time.monotonic() + float(job["budget_s"])
    for spec in job["presets"]:
        preset, tile, batch = spec["preset"], int(spec["tile"]), int(spec["batch"])
        base = {"preset": preset, "tile": tile, "batch": batch}
        need = 20.0 if spec.get("max_steps") is not None else \
            2 * float(spec["seconds"]) + float(spec["ssl_seconds"]) + 20
        if deadline - time.monotonic() < need:
            emit(job["rows"], {**base, "init": "random", "skipped": "time budget spent"})
            emit(job["rows"], {**base, "init": "ssl", "skipped": "time budget spent"})
            continue
        args = ["--modality", "rgb", "--preset", preset, "--tile-size", tile, "--batch-size", batch,
                "--workers", job["workers"], "--overwrite", *job.get("train_args", [])]
        ssl_dir = work / f"ssl_{preset}"
        t = time.perf_counter()
        with lightning_limits(max_seconds=spec["ssl_seconds"]):
            code = rts_main(["ssl", job["chips"], "-o", ssl_dir, "--max-steps", spec["ssl_max_steps"],
                             "--windows", 1000, "--stats-windows", 16, *args])
        ssl_row: dict[str, Any] = {"wall_s": round(time.perf_counter() - t, 1), "exit_code": code}
        if code == 0:
            m = yaml.safe_load((ssl_dir / "config.yaml").read_text())["metrics"]
            ssl_row.update(steps=m["steps_run"], loss_first=m["loss_first"], loss_last=m["loss_last"])
        # the supervised step time, for --max-steps (the schedule then ends with the budget); none when given
        times: list[float] = []
        if spec.get("max_steps") is None:
            with lightning_limits(step_times=times):
                rts_main(["pretrain", "--data", ds, "-o", work / f"calibrate_{preset}",  # no validation: steps only
                          "--max-steps", spec["calibrate_steps"], "--val-every", 10_000, *args])
        sec = seconds_per_step(times) or float(spec["seconds"])
        steps = int(spec["max_steps"]) if spec.get("max_steps") is not None else \
            max(2, int(0.85 * float(spec["seconds"]) / sec))
        steps_per_epoch = max(1, math.ceil(int(job["train_chips"]) / batch))
        val_every = max(1, steps // steps_per_epoch // 4)  # about four validations in the run
        for init in ("random", "ssl"):
            run = work / f"learn_{preset}_{init}"
            row = {**base, "init": init, "budget_s": spec["seconds"], "max_steps": steps,
                   "calibrated_s_per_step": round(sec, 4), "val_every": val_every}
            if init == "ssl":
                row["ssl"] = ssl_row
                if code != 0:
                    emit(job["rows"], {**row, "skipped": "rts ssl failed"})
                    continue
            extra = ["--backbone-weights", ssl_dir] if init == "ssl" else []
            t = time.perf_counter()
            with lightning_limits(max_seconds=spec["seconds"]):
                rc = rts_main(["pretrain", "--data", ds, "-o", run, "--max-steps", steps, "--val-every", val_every,
                               *args, *extra])
            row["wall_s"] = round(time.perf_counter() - t, 1)
            if rc != 0:
                emit(job["rows"], {**row, "error": f"rts pretrain exited {rc}"})
                continue
            metrics = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
            row.update(steps=metrics["steps_run"], epochs=metrics.get("epochs_run"),
                       bundle_weights=metrics.get("bundle_weights"))
            row.update(_evaluate(run, ds, "val"))
            row.update(_evaluate(run, ds, "test"))
            emit(job["rows"], row)


# ---------------------------------------------------------------- DDP under torchrun


def cmd_ddp_probe(report: str, args: list[str]) -> int:
    """``rts ARGS`` in this (torchrun) process, recording how torch.distributed was set up."""
    import os

    import torch.distributed as dist

    seen: dict[str, Any] = {"init_process_group": False}
    original = dist.init_process_group

    def init(*a: Any, **kw: Any) -> Any:
        result = original(*a, **kw)
        seen.update(init_process_group=True, backend=str(dist.get_backend()), world_size=dist.get_world_size())
        return result

    dist.init_process_group = init  # type: ignore[assignment]  # Lightning looks it up when it sets up DDP
    t = time.perf_counter()
    code = rts_main(args)
    env = {k: os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "LOCAL_WORLD_SIZE")}
    Path(report).write_text(json.dumps({"exit_code": code, "wall_s": round(time.perf_counter() - t, 1), **seen,
                                        "env": env}))
    return code


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "ddp-probe":
        rest = sys.argv[3:]
        sys.exit(cmd_ddp_probe(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest))
    commands = {"train": cmd_train, "bundles": cmd_bundles, "learn": cmd_learn}
    if what not in commands or len(sys.argv) != 3:
        raise SystemExit(__doc__)
    commands[what](json.loads(Path(sys.argv[2]).read_text()))


if __name__ == "__main__":
    main()
