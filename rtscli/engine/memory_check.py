"""Will one training step fit? The policy that refuses, before it starts, a run whose step would not fit in memory.

``rts pretrain`` with the paper's preset on a 24 GB CPU machine used to be killed by the kernel after a
minute, with nothing printed. :func:`check_fits` stops such a run before it starts, with one line that
gives the figures and the fix. It compares :func:`rtscli.modeling.memory.estimate_step_memory` with
:func:`rtscli.machine.available_bytes`. Set ``RTS_SKIP_MEMORY_CHECK=1`` to skip the check (for people who
know better, e.g. with swap, or a machine whose free memory will grow before the step runs).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from rtscli.errors import RtsError
from rtscli.machine import available_bytes, device_type
from rtscli.modeling.memory import GIB, estimate_step_bytes, estimate_step_memory, resolve_precision

if TYPE_CHECKING:
    import torch

    from rtscli.modeling.config import ModelConfig

log = logging.getLogger("rtscli")

#: set to 1 (or true/yes) to skip :func:`check_fits`
SKIP_ENV = "RTS_SKIP_MEMORY_CHECK"
#: check_fits refuses when estimate x MARGIN[device] exceeds what is available. CPU: 10% over the calibrated
#: estimate (the kernel kills an out-of-memory process without a word). CUDA: the GPU figures are not measured, so
#: only what is clearly too large is refused; a near miss ends in CUDA's own out-of-memory error, which says so.
MARGIN = {"cpu": 1.1, "cuda": 0.85}


def _gib(n: float) -> str:
    """``n`` bytes as GiB for a message: one decimal below 100 GiB, none above."""
    return f"{n / GIB:.1f}" if n < 100 * GIB else f"{n / GIB:.0f}"


def check_fits(cfg: ModelConfig, *, batch_size: int, device: str | torch.device, precision: str = "32-true",
               trainable_params: int | None = None, total_params: int | None = None, fusion: dict | None = None,
               resident_bytes: int = 0, processes: int = 1, what: str = "rts pretrain") -> None:
    """Stop, with one line, a training run whose step would not fit in memory; return quietly otherwise.

    Compares :func:`rtscli.modeling.memory.estimate_step_bytes` (x ``processes``) times :data:`MARGIN` with
    :func:`rtscli.machine.available_bytes`. Logs the estimate at debug level. Returns without checking when
    the environment variable ``RTS_SKIP_MEMORY_CHECK`` is 1 (or true/yes), or when the available memory cannot
    be known (other operating systems, mps).

    Args:
        cfg: the model's configuration (preset), at its tile size.
        batch_size: tiles per step on this device.
        device: "cpu" or "cuda" ("cuda:N", "gpu" alike), as :func:`rtscli.engine.devices.training_device` names it.
        precision: a Lightning precision ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "auto").
        trainable_params: the model's trainable parameters when it exists (None: counted on the meta device).
        total_params: the model's parameters when it exists (None: counted on the meta device).
        fusion: the spec of :func:`rtscli.modeling.multimodal.fusion_spec` for ``rts finetune`` models (None:
            unimodal).
        resident_bytes: bytes of the estimate this process already holds (the model's weights, when it was
            built on the CPU before the check), which ``available_bytes`` no longer counts as free.
        processes: DDP processes sharing this memory, i.e. ``--devices`` on a CPU.
        what: the command named in the debug log ("rts pretrain", "rts finetune").

    Returns:
        None, when the step fits, the check is skipped or the available memory is unknown.

    Raises:
        RtsError: when the step does not fit: it names the configuration, the figures (GiB) and the fixes: a
            smaller ``--batch-size`` when one fits, ``--preset nano`` on a CPU when it fits, a GPU
            (``--accelerator gpu``), or a preset with a smaller tile. Also for a batch size below 1.
    """
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        log.debug("memory check skipped (%s=1)", SKIP_ENV)
        return
    est = estimate_step_memory(cfg, batch_size=batch_size, device=device, precision=precision,
                               trainable_params=trainable_params, total_params=total_params, fusion=fusion)
    procs = max(1, int(processes))
    held = max(0, int(resident_bytes))
    need = est.total * procs - held
    avail = available_bytes(device)
    dev = device_type(device)
    log.debug("%s: one training step of %s at %d px, batch %d on %s (%s): estimated %s; available %s", what,
              cfg.name, cfg.tile_size, batch_size, dev, resolve_precision(precision, device), est.describe(),
              "unknown" if avail is None else f"{avail / GIB:.1f} GiB")
    margin = MARGIN.get(dev, MARGIN["cpu"])
    if avail is None or need * margin <= avail:
        return

    def fits(model: ModelConfig, batch: int, **kw: int | None) -> bool:
        args: dict[str, Any] = dict(device=device, precision=precision, fusion=fusion) | kw
        return (estimate_step_bytes(model, batch_size=batch, **args) * procs - held) * margin <= avail

    fixes = []
    smaller = next((b for b in range(batch_size - 1, 0, -1)
                    if fits(cfg, b, trainable_params=trainable_params, total_params=total_params)), None)
    if smaller:
        fixes.append(f"--batch-size {smaller}")
    if dev == "cpu":
        if cfg.name != "nano":
            from rtscli.modeling.config import load_preset

            nano = load_preset("nano")
            nano.backbone.in_channels = cfg.backbone.in_channels
            if fits(nano, min(batch_size, nano.training.batch_size if nano.training else batch_size)):
                fixes.append("bundles pretrained with --preset nano" if fusion and fusion.get("sources")
                             else "--preset nano (made for CPUs)")
        fixes.append("a GPU (--accelerator gpu)")
    else:
        fixes.append("a GPU with more memory")
    if fusion and not fusion.get("frozen") and fusion.get("strategy") != "channel-stack":
        fixes.append("frozen backbones (--from the `rts pretrain` bundles)")
    fixes.append("a preset with a smaller tile")
    where = "on the CPU" if dev == "cpu" else f"on the GPU ({str(device)})"
    batch = f"batch {batch_size}" + (f" x {procs} processes" if procs > 1 else "")
    short = "" if need > avail else f", too little for the estimate's {round(100 * (margin - 1))}% margin"
    raise RtsError(f"{cfg.name} at {cfg.tile_size} px, {batch} needs about {_gib(need)} GiB for one training step "
                   f"{where}; {_gib(avail)} GiB are available{short}",
                   fix=f"use {', or '.join(fixes)} ({SKIP_ENV}=1 skips this check)")
