"""Will a training run finish in a sensible time here? The policy that keeps a GPU-sized preset off a CPU unasked.

``rts ssl`` and ``rts pretrain`` default to the paper's ``cascade-mvitv2-b`` at 1024 px. On a CPU one of its
training steps takes minutes (136 s per SimMIM step measured on one core of the project's 2-core machine; 4.4 min
per step was reported for a whole ``rts ssl`` run there), so a run at the defaults takes weeks; such a run used to
start without a word. :func:`check_cpu_time` estimates, before anything is written, the time of one step and of
the whole run on this machine's CPU, logs it with how it was made, and refuses a step estimated above
:data:`CPU_STEP_LIMIT_S` seconds unless ``--accelerator cpu`` asks for the CPU explicitly.

How the estimate is made (:func:`estimate_cpu_step`): a roofline-style sum of two measured rates.

* The work of one training step is counted on ``torch.device("meta")`` (nothing is allocated; about a second,
  once per configuration): the FLOP of matrix products and convolutions
  (:class:`torch.utils.flop_counter.FlopCounterMode`; a multiply-add counts 2) and the bytes every other op reads
  and writes (elementwise ops, softmax, norms, pooling, copies: MViTv2's attention softmax over (T/4)^2 x (T/16)^2
  scores per head is most of it at 1024 px). Counted: the backbone + FPN, the RPN head, the box heads of every
  cascade stage over ``batch_size_per_image`` sampled RoIs and the mask head over ``positive_fraction`` of them
  (a detector); the backbone and SimMIM's decoder (``rts ssl``); the fusion module of ``rts finetune``, whose
  frozen backbones run forward only. What is trained counts 3 times its forward pass (forward + backward); all of
  it times the batch.
* This CPU's fp32 matrix-product rate and elementwise bandwidth are measured once per process, with the threads
  torch uses (:func:`cpu_rates`, about 0.4 s), so a slow or busy machine is seen as such.
* Seconds per step = FLOP / (rate x :data:`COMPUTE_SHARE`) + bytes / (bandwidth x :data:`MEMORY_SHARE`), the
  shares fitted to steps measured on the project's 2-core CPU with ``OMP_NUM_THREADS=1`` (forward, backward and
  AdamW; estimate / measured in brackets): nano 256 px batch 4, training 1.56 s (0.79) and SimMIM 0.55 s (1.24);
  nano 1024 px batch 1, training 29.6 s (1.01); cascade-mvitv2-b batch 1, training at 256 px 12.4 s (1.13) and
  512 px 20.2 s (1.06), SimMIM at 256 px 1.35 s (0.83), 512 px 8.15 s (1.02), 768 px 33.9 s (0.95) and 1024 px
  136 s (0.96).

It is an estimate: data loading, validation and checkpoints are not counted, and another CPU's steps may land
within about a factor of 2 of it. On a GPU nothing is estimated (no GPU step was measured) and nothing is refused.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtscli.errors import RtsError
from rtscli.modeling.memory import profile_key

if TYPE_CHECKING:
    from rtscli.engine.train_settings import TrainSettings
    from rtscli.modeling.config import ModelConfig

log = logging.getLogger("rtscli")

#: seconds per training step on the CPU above which a run is refused unless ``--accelerator cpu`` asks for the CPU.
#: Estimated on one core of the project's machine at each preset's batch: nano 1.3 s (SimMIM 0.7 s), nano-resnet 2 s,
#: maskrcnn-resnet50-fpn 29 s (15 s), cascade-mvitv2-t 69 s (53 s), cascade-mvitv2-b 111 s (96 s)
CPU_STEP_LIMIT_S = 10.0

#: the share of the measured matrix-product rate (:func:`cpu_rates`) that a step's matrix products and
#: convolutions reach on a CPU, fitted to measured steps (the module's docstring lists them)
COMPUTE_SHARE = 0.95
#: the share of the measured elementwise bandwidth that a step's other ops reach, fitted alike
MEMORY_SHARE = 0.4

#: the tasks :func:`estimate_cpu_step` counts: a detector's training step, or a SimMIM step of ``rts ssl``
TASKS = ("train", "ssl")


@dataclass(frozen=True)
class StepTime:
    """The estimated time of one training step on this CPU and what it is made of.

    ``flop``: floating-point operations of the step's matrix products and convolutions (the whole batch; a
    multiply-add counts 2); ``bytes``: what its other ops read and write; ``rate``: this CPU's measured fp32
    matrix-product rate (FLOP per second); ``bandwidth``: its measured rate of a large elementwise op (bytes per
    second); ``threads``: torch's threads when they were measured.
    """

    flop: float
    bytes: float
    rate: float
    bandwidth: float
    threads: int

    @property
    def seconds(self) -> float:
        """Seconds per step: ``flop / (rate x COMPUTE_SHARE) + bytes / (bandwidth x MEMORY_SHARE)``."""
        return self.flop / (self.rate * COMPUTE_SHARE) + self.bytes / (self.bandwidth * MEMORY_SHARE)

    def how(self) -> str:
        """How the figure was made, for a message."""
        return (f"estimate: {self.flop / 1e12:.3g} TFLOP and {self.bytes / 1e9:.3g} GB of tensor traffic per step, "
                f"counted for this model, at the {self.rate / 1e9:.0f} GFLOP/s and {self.bandwidth / 1e9:.0f} GB/s "
                f"measured on this CPU ({self.threads} thread{'s' if self.threads > 1 else ''}) x the shares that "
                f"measured steps reach; "
                f"expect within about 2x")


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``0.8 s``, ``4.4 min``, ``3.2 h``, ``30 days``."""
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.2g} h"
    return f"{seconds / 86400:.0f} days"


@functools.lru_cache(maxsize=4)
def cpu_rates(threads: int) -> tuple[float, float]:
    """This CPU's fp32 matrix-product rate and elementwise bandwidth with ``threads`` torch threads, measured now.

    Products of 512 x 512 matrices (FLOP per second, a multiply-add counting 2) and the sum of two 64 MiB tensors
    (bytes read and written per second) are each timed in three rounds of about 0.05 s after a warm-up; the best
    round is kept, so a moment of contention does not halve them. Cached per process and thread count (about
    0.4 s, once).

    Args:
        threads: torch's intra-op threads (``torch.get_num_threads()``).

    Returns:
        ``(FLOP per second, bytes per second)``.
    """
    import torch

    def best(op: Any, work: float) -> float:
        op()  # warm-up: thread pool, kernels, first touch of the memory
        top = 0.0
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < 0.05:
                op()
                reps += 1
            top = max(top, work * reps / elapsed)
        return top

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        n = 512
        a, b = torch.randn(n, n), torch.randn(n, n)
        rate = best(lambda: torch.mm(a, b), 2.0 * n**3)
        m = 2**24  # 64 MiB of fp32: far beyond the caches
        x, y, z = torch.ones(m), torch.ones(m), torch.empty(m)
        bandwidth = best(lambda: torch.add(x, y, out=z), 3.0 * 4 * m)
        return rate, bandwidth
    finally:
        torch.set_num_threads(before)


def _count(fn: Any, *args: Any) -> tuple[int, int]:
    """``(FLOP, bytes of tensor traffic)`` of ``fn(*args)`` on meta tensors (forward only): the FLOP of matrix
    products and convolutions (:class:`torch.utils.flop_counter.FlopCounterMode`), and the bytes every other op
    reads and writes (elementwise ops, softmax, norms, pooling, copies; views move nothing)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    class Traffic(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket not in flop_registry and not func.is_view:
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                self.bytes += sum(min(t.numel() * t.element_size(), t.untyped_storage().nbytes()) for t in tensors)
            return out

    with FlopCounterMode(display=False) as counter, Traffic() as traffic, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops()), int(traffic.bytes)


@functools.lru_cache(maxsize=32)
def _tile_work(key: str, task: str) -> tuple[float, float]:
    """``(FLOP, bytes)`` of one tile's training step: what is trained counts 3 times its forward pass (forward +
    backward), frozen backbones once."""
    import torch
    from torch import nn

    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.config import ModelConfig
    from rtscli.modeling.fusion import Fusion, is_feature_level

    job = json.loads(key)
    cfg = ModelConfig.from_dict(job["model"])
    fusion = job["fusion"]
    tile = cfg.tile_size
    feature = bool(fusion) and is_feature_level(fusion["strategy"])
    chans = [int(c) for c in fusion["channels"]] if feature else [cfg.backbone.in_channels]
    if fusion and not feature:  # channel-stack: one backbone over every stacked channel
        chans = [sum(int(c) for c in fusion["channels"])]
    with torch.device("meta"):
        bcfg = type(cfg.backbone)(**{**cfg.backbone.__dict__, "in_channels": max(chans)})
        bb = build_backbone(cfg=bcfg, fpn=cfg.fpn, tile_size=tile)
    bb.train()
    x = torch.empty(1, max(chans), tile, tile, device="meta")
    if task == "ssl":
        from rtscli.modeling.mim import MaskedImageModel

        with torch.device("meta"):
            mim = MaskedImageModel(bb, max(chans))
        side = tile // mim.block
        valid = torch.ones(1, tile, tile, dtype=torch.bool, device="meta")
        mask = torch.ones(1, side, side, dtype=torch.bool, device="meta")
        flop, nbytes = _count(mim, x, valid, mask)
        return 3.0 * flop, 3.0 * nbytes
    from rtscli.modeling.detector import Detector

    with torch.no_grad():
        maps = {k: torch.empty(v.shape, device="meta") for k, v in bb(x).items()}
    frozen = feature and bool(fusion.get("frozen"))
    passes = len(chans) * (1.0 if frozen else 3.0)
    flop, nbytes = _count(bb, x)
    work = [passes * flop, passes * nbytes]

    def add(fn: Any, *args: Any) -> None:
        f, b = _count(fn, *args)
        work[0] += 3.0 * f
        work[1] += 3.0 * b

    with torch.device("meta"):
        decoder = Detector(cfg=cfg, backbone=nn.Identity())
        fuse = (Fusion(strategy=fusion["strategy"], modalities=list(fusion["modalities"]),
                       primary=fusion.get("primary", "rgb"), dim=cfg.fpn.out_channels,
                       heads=int(fusion.get("heads", 8)), window=int(fusion.get("window", 8))) if feature else None)
    decoder.train()
    if fuse is not None:
        add(fuse, {m: maps for m in fusion["modalities"]})
    add(decoder.rpn.head, list(maps.values()))
    r, c = cfg.roi_heads, cfg.fpn.out_channels
    rois = r.batch_size_per_image
    heads = decoder.roi_heads
    for k in range(r.num_stages):  # every stage sees the sampled RoIs, freshly pooled
        add(lambda t, k=k: heads.box_predictors[k](heads.box_heads[k](t)), torch.empty(rois, c, 7, 7, device="meta"))
    if r.mask and heads.mask_head is not None:
        add(heads.mask_head, torch.empty(max(1, int(rois * r.positive_fraction)), c, 14, 14, device="meta"))
    return work[0], work[1]


def step_work(cfg: ModelConfig, *, batch_size: int, task: str = "train",
              fusion: dict | None = None) -> tuple[float, float]:
    """The work of one training step of ``cfg`` at its tile size (see the module's docstring for what is counted).

    Args:
        cfg: the model's configuration (preset), at its tile size and input channels.
        batch_size: tiles per step.
        task: "train" (a detector: ``rts pretrain``, ``finetune``, ``ablate``) or "ssl" (a SimMIM step).
        fusion: the spec of :func:`rtscli.modeling.multimodal.fusion_spec` of a ``rts finetune`` model (None:
            unimodal); frozen backbones count their forward pass only.

    Returns:
        ``(FLOP, bytes)``: the floating-point operations of matrix products and convolutions (a multiply-add
        counts 2) and the bytes the other ops read and write, for the whole batch.

    Raises:
        ValueError: an unknown ``task``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    flop, nbytes = _tile_work(profile_key(cfg, fusion), task)
    n = max(1, batch_size)
    return flop * n, nbytes * n


def estimate_cpu_step(cfg: ModelConfig, *, batch_size: int, task: str = "train", fusion: dict | None = None,
                      threads: int | None = None) -> StepTime:
    """The estimated time of one training step on this machine's CPU (:class:`StepTime`; ``.seconds``).

    Args:
        cfg, batch_size, task, fusion: as for :func:`step_work`.
        threads: torch's threads for the run (default ``torch.get_num_threads()``).

    Returns:
        The estimate: the work of the step and this CPU's measured rates.
    """
    import torch

    n = threads or torch.get_num_threads()
    flop, nbytes = step_work(cfg, batch_size=batch_size, task=task, fusion=fusion)
    rate, bandwidth = cpu_rates(n)
    return StepTime(flop=flop, bytes=nbytes, rate=rate, bandwidth=bandwidth, threads=n)


def run_steps(items: int, settings: TrainSettings) -> int:
    """The optimizer steps of one run over ``items`` training items (chips, windows) per epoch: ``--max-steps`` when
    given, else the epochs times the batches of an epoch (the last, partial batch dropped when there is more than
    one batch, as the training loader does).

    Args:
        items: training items per epoch.
        settings: the run's settings (``max_steps``, ``epochs``, ``batch_size``).

    Returns:
        Steps of one process (at least 1).
    """
    if settings.max_steps > 0:
        return settings.max_steps
    batch = max(1, settings.batch_size)
    per_epoch = items // batch if items > batch else 1
    return max(1, settings.epochs * max(1, per_epoch))


def check_cpu_time(cfg: ModelConfig, settings: TrainSettings, *, steps: int, what: str, task: str = "train",
                   fusion: dict | None = None, run: str = "run") -> StepTime | None:
    """On a CPU: log the estimated time of one step and of the run, and refuse a GPU-sized run nobody asked for.

    Nothing happens on a GPU (``--accelerator auto`` with a CUDA or MPS GPU, ``gpu``, ``mps``), or in a process
    other than the first of its machine (DDP). On the CPU the estimate (:func:`estimate_cpu_step`) is logged with
    how it was made (a warning when a step takes over :data:`CPU_STEP_LIMIT_S` seconds or the run over a day). A
    step estimated above :data:`CPU_STEP_LIMIT_S` seconds is refused unless the CPU was asked for: ``--accelerator
    auto`` (the default) on a machine without a GPU is refused, ``--accelerator cpu`` runs.

    Args:
        cfg: the model's configuration, at its tile size and input channels.
        settings: the run's settings (``accelerator``, ``batch_size``).
        steps: optimizer steps of the command (:func:`run_steps`; ``rts ablate``: of all its runs).
        what: the command, for the log line ("rts pretrain").
        task: "train" or "ssl" (:func:`step_work`).
        fusion: the fusion spec of a ``rts finetune`` model (None: unimodal).
        run: what the steps are of, for the messages ("run"; "ablation (2 pretrainings, 7 cells)").

    Returns:
        The estimate, or None where nothing was estimated (a GPU, a later DDP process).

    Raises:
        RtsError: a step estimated above :data:`CPU_STEP_LIMIT_S` seconds on a CPU that ``--accelerator cpu`` did not
            ask for: one line with the estimate, how it was made, and the fixes (``--preset nano`` or a smaller
            ``--tile-size``, a GPU, ``--accelerator cpu``).
    """
    from rtscli.engine.devices import training_device

    if int(os.environ.get("LOCAL_RANK", 0)) != 0 or training_device(settings.accelerator) != "cpu":
        return None
    est = estimate_cpu_step(cfg, batch_size=settings.batch_size, task=task, fusion=fusion)
    total = est.seconds * max(1, steps)
    figures = (f"{cfg.name} at {cfg.tile_size} px, batch {settings.batch_size}: about {duration(est.seconds)} per "
               f"step on this CPU, {duration(total)} for the {run}'s {steps:,} step{'s' if steps != 1 else ''}")
    if est.seconds > CPU_STEP_LIMIT_S and settings.accelerator != "cpu":
        smaller = ("a smaller --tile-size (nano's and cpu-r18's is 256)" if cfg.name in ("nano", "cpu-r18") else
                   "--preset cpu-r18 or --preset nano (made for CPUs; from random weights cpu-r18 learns what nano "
                   "does not: models/README.md)")
        raise RtsError(f"{figures}: this is sized for a GPU and this machine has none ({est.how()})",
                       fix=f"use {smaller}, or a machine with a GPU; --accelerator cpu runs it on this CPU anyway")
    slow = est.seconds > CPU_STEP_LIMIT_S or total > 86400
    (log.warning if slow else log.info)("estimated time of %s: %s (%s)", what, figures, est.how())
    return est


#: inputs that fill less than this share of the tile's area are warned about (:func:`check_fill`)
MIN_FILL = 0.25


def check_fill(side: tuple[int, int], tile: int, *, what: str) -> float:
    """Warn when the largest input (a scene of ``rts ssl``, a training chip) fills little of the model's tile.

    A tile larger than the data is padding the model still computes on (and ``rts ssl`` redraws windows less
    than half valid): a 251 px scene fills 6% of a 1024 px tile. The warning names the ``--tile-size`` that
    holds the input (the smallest multiple of the backbone's stride of 32 px).

    Args:
        side: ``(width, height)`` of the largest input, in pixels.
        tile: the model's tile side, in pixels.
        what: what the inputs are, for the message ("the scenes", "the training chips").

    Returns:
        The share of the tile's area the largest input fills (0-1).
    """
    from rtscli.data.tiling import MIN_TILE, TOTAL_STRIDE

    w, h = side
    fill = min(w, tile) * min(h, tile) / float(tile * tile)
    if fill < MIN_FILL:
        fit = max(MIN_TILE, -(-max(w, h) // TOTAL_STRIDE) * TOTAL_STRIDE)
        log.warning("%s (the largest %d x %d px) fill %.0f%% of the %d px tile: most of each step is padding; "
                    "--tile-size %d holds them", what, w, h, 100 * fill, tile, fit)
    return fill
