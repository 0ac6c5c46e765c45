"""Will one training step fit? The policy that refuses, before it starts, a run whose step would not fit in memory.

``rts pretrain`` with the paper's preset on a 24 GB CPU machine used to be killed by the kernel after a
minute, with nothing printed. :func:`check_fits` stops such a run before it starts, with one line that
gives the figures and the fix. It compares an estimate of :mod:`rtscli.modeling.memory` with
:func:`rtscli.machine.available_bytes`: of a detector's training step (``rts pretrain``, ``rts finetune``,
``rts ablate``), of a SimMIM step (``rts ssl``) or of a forward pass without gradients (``rts evaluate``,
``rts predict``). Set ``RTS_SKIP_MEMORY_CHECK=1`` to skip the check (for people who know better, e.g. with
swap, or a machine whose free memory will grow before the step runs).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from rtscli.errors import RtsError
from rtscli.machine import available_bytes, device_type
from rtscli.modeling.memory import GIB, StepMemory, estimate_step_memory, resolve_precision
from rtscli.modeling.memory_passes import estimate_inference_memory, estimate_ssl_memory

if TYPE_CHECKING:
    import torch

    from rtscli.modeling.bundle import Bundle
    from rtscli.modeling.config import ModelConfig

log = logging.getLogger("rtscli")

#: set to 1 (or true/yes) to skip :func:`check_fits`
SKIP_ENV = "RTS_SKIP_MEMORY_CHECK"
#: check_fits refuses when estimate x MARGIN[device] exceeds what is available. CPU: 10% over the calibrated
#: estimate (the kernel kills an out-of-memory process without a word). CUDA: the GPU figures are not measured, so
#: only what is clearly too large is refused; a near miss ends in CUDA's own out-of-memory error, which says so.
MARGIN = {"cpu": 1.1, "cuda": 0.85}
#: what each kind of check estimates, as the refusal names it
TASKS = {"train": "one training step", "ssl": "one SimMIM training step", "inference": "inference"}


def _gib(n: float) -> str:
    """``n`` bytes as GiB for a message: one decimal below 100 GiB, none above."""
    return f"{n / GIB:.1f}" if n < 100 * GIB else f"{n / GIB:.0f}"


def check_fits(cfg: ModelConfig, *, batch_size: int, device: str | torch.device, precision: str = "32-true",
               trainable_params: int | None = None, total_params: int | None = None, fusion: dict | None = None,
               resident_bytes: int = 0, processes: int = 1, what: str = "rts pretrain", task: str = "train",
               gpu: str | None = None) -> None:
    """Stop, with one line, a run whose step would not fit in memory; return quietly otherwise.

    Compares the estimate of ``task`` (x ``processes``) times :data:`MARGIN` with
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
        task: what runs: "train" (a detector's training step:
            :func:`rtscli.modeling.memory.estimate_step_memory`), "ssl" (a SimMIM step of ``rts ssl``:
            :func:`rtscli.modeling.memory_passes.estimate_ssl_memory`) or "inference" (a forward pass over a batch of
            tiles under ``torch.inference_mode``, ``rts evaluate`` and ``rts predict``:
            :func:`rtscli.modeling.memory_passes.estimate_inference_memory`; ``precision`` and the parameter counts are
            not used).
        gpu: how the refusal names the fix "a GPU" (default: "a GPU (--accelerator gpu)").

    Returns:
        None, when the step fits, the check is skipped or the available memory is unknown.

    Raises:
        RtsError: when the step does not fit: it names the configuration, the figures (GiB) and the fixes: a
            smaller ``--batch-size`` when one fits, ``--preset nano`` on a CPU when it fits (training), a GPU
            (``gpu``), or a preset with a smaller tile. Also for a batch size below 1.
    """
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        log.debug("memory check skipped (%s=1)", SKIP_ENV)
        return
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")

    def estimate(model: ModelConfig, batch: int, **kw: int | None) -> StepMemory:
        if task == "inference":
            return estimate_inference_memory(model, batch_size=batch, device=device, fusion=fusion)
        if task == "ssl":
            return estimate_ssl_memory(model, batch_size=batch, device=device, precision=precision)
        return estimate_step_memory(model, batch_size=batch, device=device, precision=precision, fusion=fusion, **kw)

    est = estimate(cfg, batch_size, trainable_params=trainable_params, total_params=total_params)
    procs = max(1, int(processes))
    held = max(0, int(resident_bytes))
    need = est.total * procs - held
    avail = available_bytes(device)
    dev = device_type(device)
    log.debug("%s: %s of %s at %d px, batch %d on %s (%s): estimated %s; available %s", what, TASKS[task],
              cfg.name, cfg.tile_size, batch_size, dev, resolve_precision(precision, device), est.describe(),
              "unknown" if avail is None else f"{avail / GIB:.1f} GiB")
    margin = MARGIN.get(dev, MARGIN["cpu"])
    if avail is None or need * margin <= avail:
        return

    def fits(model: ModelConfig, batch: int, **kw: int | None) -> bool:
        return (estimate(model, batch, **kw).total * procs - held) * margin <= avail

    fixes = []
    smaller = next((b for b in range(batch_size - 1, 0, -1)
                    if fits(cfg, b, trainable_params=trainable_params, total_params=total_params)), None)
    if smaller:
        fixes.append(f"--batch-size {smaller}")
    if dev == "cpu":
        if cfg.name != "nano" and task != "inference":
            from rtscli.modeling.config import load_preset

            nano = load_preset("nano")
            nano.backbone.in_channels = cfg.backbone.in_channels
            if fits(nano, min(batch_size, nano.training.batch_size if nano.training else batch_size)):
                fixes.append("bundles pretrained with --preset nano" if fusion and fusion.get("sources")
                             else "--preset nano (made for CPUs)")
        fixes.append(gpu or "a GPU (--accelerator gpu)")
    else:
        fixes.append("a GPU with more memory")
    if task == "train" and fusion and not fusion.get("frozen") and fusion.get("strategy") != "channel-stack":
        fixes.append("frozen backbones (--from the `rts pretrain` bundles)")
    fixes.append({"train": "a preset with a smaller tile", "ssl": "a smaller --tile-size",
                  "inference": "a model of a smaller preset or tile (e.g. trained with --preset nano)"}[task])
    where = "on the CPU" if dev == "cpu" else f"on the GPU ({str(device)})"
    batch = f"batch {batch_size}" + (f" x {procs} processes" if procs > 1 else "")
    short = "" if need > avail else f", too little for the estimate's {round(100 * (margin - 1))}% margin"
    raise RtsError(f"{cfg.name} at {cfg.tile_size} px, {batch} needs about {_gib(need)} GiB for {TASKS[task]} "
                   f"{where}; {_gib(avail)} GiB are available{short}",
                   fix=f"use {', or '.join(fixes)} ({SKIP_ENV}=1 skips this check)")


def check_inference_fits(bundle: Bundle, *, batch_size: int, device: str, what: str, gpu: str) -> None:
    """Refuse, before the model is loaded, running ``bundle`` on batches of ``batch_size`` tiles on ``device`` when
    that cannot fit in memory (:func:`check_fits` with ``task="inference"``: the weights and the largest working set
    of a forward pass under ``torch.inference_mode``, :func:`rtscli.modeling.memory_passes.estimate_inference_memory`).

    Under torchrun on the CPU, the first process of the machine checks for all of them (``LOCAL_WORLD_SIZE``); on
    GPUs each process checks its own.

    Args:
        bundle: the model bundle, read (:func:`rtscli.modeling.bundle.read_bundle`).
        batch_size: tiles per forward pass (``--batch-size``).
        device: the torch device the model will run on ("cpu", "cuda:0", "mps").
        what: the command, for the debug log ("rts predict").
        gpu: how the refusal names the fix "a GPU" (e.g. "a GPU (--device cuda)").

    Raises:
        RtsError: one line with the figures and the fixes, when it does not fit.
    """
    cpu = device_type(device) == "cpu"
    if cpu and int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if cpu else 1
    check_fits(bundle.model_config, batch_size=batch_size, device=device, fusion=bundle.fusion, processes=processes,
               what=what, task="inference", gpu=gpu)
