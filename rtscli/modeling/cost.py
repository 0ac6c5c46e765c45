"""The cost of a configuration (the paper's Table 2): parameters and peak training memory.

Peak memory is measured for one sample of the model's tile size, forward + backward, as the paper
does (data, model, activations and gradients; no optimizer state, no data-loading cache):

* on a GPU, ``torch.cuda.max_memory_allocated`` over the step (weights included: the model is on
  the device when the measurement starts);
* on the CPU, the increase of the resident memory (peak RSS) over the step, measured in a fresh
  Python process that builds the same model (``python -m rtscli.modeling.cost``), so that memory
  the allocator kept from earlier work cannot hide it; weights are resident before the step, so
  they are not included.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from rtscli.modeling.detector import Detector


def one_sample(tile: int, channels: int, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """A normalized random tile with one square object in it (a slump-sized box and its mask)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, channels, tile, tile, generator=g)
    a, b = tile // 4, tile // 2
    masks = torch.zeros(1, tile, tile, dtype=torch.uint8)
    masks[0, a:a + b, a:a + b] = 1
    target = {"boxes": torch.tensor([[a, a, a + b, a + b]], dtype=torch.float32),
              "labels": torch.ones(1, dtype=torch.int64), "masks": masks}
    return image.to(device), [{k: v.to(device) for k, v in target.items()}]


def _train_step(model: Detector, image: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> float:
    """One forward + backward pass (no optimizer step); returns its seconds."""
    t = time.perf_counter()
    cast(torch.Tensor, sum(model.losses(image, targets).values())).backward()  # sum's start 0: a Tensor
    return time.perf_counter() - t


def training_memory(model: Detector, *, tile: int, channels: int,
                    device: str | torch.device = "cuda") -> dict[str, Any]:
    """Peak GPU memory (MB) of one forward + backward pass on one sample; gradients are cleared after."""
    device = torch.device(device)
    model = model.to(device)
    was = model.training
    model.train()
    image, targets = one_sample(tile, channels, device)
    try:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds = _train_step(model, image, targets)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return {"peak_train_mb": round(peak / 2**20, 1), "device": str(device),
            "method": "torch.cuda.max_memory_allocated (weights included)", "tile": tile, "seconds": round(seconds, 2)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def cpu_training_memory(model_cfg: dict, fusion: dict | None, *, tile: int, channels: int) -> dict[str, Any]:
    """Peak RSS increase (MB) of one forward + backward pass, in a fresh process building the same model."""
    job = json.dumps({"model": model_cfg, "fusion": fusion, "tile": tile, "channels": channels})
    r = subprocess.run([sys.executable, "-m", "rtscli.modeling.cost"], input=job, capture_output=True, text=True)
    if r.returncode != 0:
        from rtscli.errors import RtsError

        raise RtsError(f"the memory measurement failed: {r.stderr.strip().splitlines()[-1:]}",
                       fix="pass --no-measure-memory to skip it")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _measure_here(job: dict) -> dict[str, Any]:
    from rtscli.modeling.config import ModelConfig
    from rtscli.modeling.multimodal import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(job["model"]), job["fusion"])
    model.train()
    image, targets = one_sample(job["tile"], job["channels"])
    base = _rss_mb()
    seconds = _train_step(model, image, targets)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"peak_train_mb": round(max(0.0, peak - base), 1), "device": "cpu",
            "method": "peak RSS increase over the step in a fresh process (weights excluded)",
            "tile": job["tile"], "seconds": round(seconds, 2)}


def cost_report(model: Detector, *, fusion: dict | None, tile: int, channels: int,
                device: str | torch.device = "cpu", memory: bool = True) -> dict[str, Any]:
    """Parameters and (``memory``) peak training memory of ``model`` (built by ``build_model(model.cfg, fusion)``)."""
    from rtscli.modeling.detector import count_parameters

    total, trainable = count_parameters(model)
    rep: dict[str, Any] = {"parameters_total": total, "parameters_trainable": trainable}
    if memory and torch.device(device).type == "cuda":
        rep.update(training_memory(model, tile=tile, channels=channels, device=device))
    elif memory:
        rep.update(cpu_training_memory(model.cfg.to_dict(), fusion, tile=tile, channels=channels))
    return rep


def format_cost(rep: dict[str, Any]) -> str:
    s = (f"parameters {rep['parameters_total'] / 1e6:.2f}M total, {rep['parameters_trainable'] / 1e6:.2f}M trainable")
    if "peak_train_mb" in rep:
        s += (f"; peak training memory for one {rep['tile']} px sample: {rep['peak_train_mb']:.0f} MB "
              f"({rep['device']}, {rep['method']})")
    return s


if __name__ == "__main__":  # python -m rtscli.modeling.cost < job.json (used by cpu_training_memory)
    print(json.dumps(_measure_here(json.loads(sys.stdin.read()))))
