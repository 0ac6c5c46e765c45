"""Will one training step fit? Its estimated peak memory, the memory this process can have, and the check.

``rts pretrain`` with the paper's preset on a 24 GB CPU machine used to be killed by the kernel after a
minute, with nothing printed. :func:`check_fits` stops such a run before it starts, with one line that
gives the figures and the fix. Set ``RTS_SKIP_MEMORY_CHECK=1`` to skip the check (for people who know
better, e.g. with swap, or a machine whose free memory will grow before the step runs).

How the estimate is made (:func:`estimate_step_memory`; all figures in bytes):

* **weights** 4 bytes per parameter (fp32 master weights, also under mixed precision), **gradients** 4
  and **AdamW's two moments** 8 per *trainable* parameter. Parameters are counted on
  ``torch.device("meta")`` (no memory is allocated), as ``rts info --preset`` does.
* On the CPU, the engine also keeps a copy of the best validated weights (4 bytes per parameter).
* **Activations**: the tensors autograd keeps for backward, counted exactly for the architecture by
  running the backbone + FPN, the RPN head and the box/mask heads forward on the meta device with a
  ``saved_tensors_hooks`` that records every saved tensor's storage once (weights excluded). For
  MViTv2 that is, per block, the token maps (tokens x channels: LayerNorm in/out, the q/k/v maps
  before and after pooling, the 4x MLP) and the pooled attention matrix (heads x query tokens x
  key tokens, (T/4)^2 x (T/16)^2 at stage 1: quadratic in the tile's area), which dominates at
  1024 px; for ResNet50-FPN the feature maps of every bottleneck. The box heads see the sampled RoIs
  (``batch_size_per_image`` per image, once per cascade stage) and the mask head at most
  ``positive_fraction`` of them. The input tile, its instance masks (assumed
  :data:`ASSUMED_INSTANCES` per tile) and the RPN's per-anchor tensors are added analytically. The
  sum, per tile, times the batch, is scaled by a constant factor fitted to measurements (below), which
  covers what the count cannot see: gradients of activations alive during backward, temporaries,
  and the allocator.
* Fused models (a ``fusion`` spec of :func:`rtscli.modeling.multimodal.fusion_spec`): trained
  backbones keep their activations each; frozen ones run under ``no_grad`` and keep nothing, but
  their FPN maps and the working set of their largest block are alive while they run (counted as
  :data:`FROZEN_BLOCK_FACTOR` x the largest block's saved tensors); the fusion module's saved
  tensors are counted on the meta device like the rest.
* Mixed precision (``16-mixed``/``bf16-mixed``, GPU default): the attention matrices x
  :data:`MIXED_ATTENTION_FACTOR` (autocast keeps softmax's output in fp32 and a 16-bit copy for
  the next matmul), the other activations x :data:`MIXED_OTHER_FACTOR`, plus autocast's 16-bit
  copies of the weights (2 bytes per parameter). ``*-true`` 16-bit precision: 2 bytes for
  everything. These factors follow CUDA autocast's op lists; they are not measured (no GPU was
  available), and on the CPU, whose autocast lists differ, they are rougher still.
* CUDA: :data:`CUDA_RESERVE` bytes are added for cuBLAS/cuDNN workspaces and the caching
  allocator's rounding (not measured).

Calibration (CPU, fp32, torch 2.14.1, 2 cores, 2026-11-30; ``python benchmarks/memory_estimate.py measure`` then
``table --fit``). Each configuration ran in a fresh process, from the state of a run in progress (AdamW's
moments allocated, the last gradients still alive, as Lightning's automatic optimization has them during the
forward): the peak RSS (VmHWM) over one step (forward, zero_grad, backward, AdamW) minus the RSS before the model
was built. This is the estimate less the best-weights copy. Tiles are random, with 4 square objects each. The
rows marked (R) come from ``benchmarks/RESULTS.md`` (``rtscli.modeling.cost``: forward + backward only, i.e.
gradients + activations, MB as MiB). :data:`CPU_ACTIVATION_FACTOR` and :data:`CPU_RESERVE` are the least-squares
fit of the relative error over all rows (MiB):

| configuration | px | batch | measured | estimated | error |
|---|---|---|---|---|---|
| nano | 128 | 1 | 179 | 194 | +8% |
| nano (its preset) | 256 | 1 | 247 | 251 | +1% |
| nano (its preset, its default batch) | 256 | 4 | 588 | 591 | 0% |
| nano | 512 | 1 | 864 | 693 | -20% |
| nano-resnet (its preset) | 256 | 1 | 574 | 533 | -7% |
| nano-resnet (its preset, its default batch) | 256 | 4 | 802 | 773 | -4% |
| nano-resnet | 512 | 1 | 870 | 731 | -16% |
| nano + residual-cross x3, trained backbones | 256 | 4 | 1454 | 1340 | -8% |
| nano + residual-cross x3, frozen backbones | 256 | 4 | 639 | 640 | 0% |
| cascade-mvitv2-t | 256 | 1 | 2520 | 2500 | -1% |
| cascade-mvitv2-t | 512 | 1 | 3619 | 3478 | -4% |
| cascade-mvitv2-s | 384 | 1 | 3322 | 3186 | -4% |
| cascade-mvitv2-b | 128 | 1 | 2718 | 2783 | +2% |
| cascade-mvitv2-b | 192 | 1 | 2923 | 2910 | 0% |
| cascade-mvitv2-b | 256 | 1 | 3177 | 3101 | -2% |
| cascade-mvitv2-b | 256 | 2 | 4289 | 4567 | +6% |
| cascade-mvitv2-b | 384 | 1 | 3870 | 3740 | -3% |
| cascade-mvitv2-b | 512 | 1 | 4900 | 4861 | -1% |
| cascade-mvitv2-b | 640 | 1 | 6715 | 6694 | 0% |
| cascade-mvitv2-b | 768 | 1 | 9435 | 9532 | +1% |
| cascade-mvitv2-b, forward + backward (R: "17.8 GB", taken as 17.8 x 1024 MiB) | 1024 | 1 | 18227 | 18544 | +2% |
| cascade-mvitv2-b, forward + backward (R) | 512 | 1 | 3750 | 3688 | -2% |
| cascade-mvitv2-b + residual-cross x3, trained | 384 | 1 | 7858 | 7763 | -1% |
| cascade-mvitv2-b + residual-cross x3, frozen | 384 | 1 | 3072 | 3054 | -1% |
| cascade-mvitv2-b + residual-cross x2, trained, forward + backward (R) | 512 | 1 | 6254 | 6270 | 0% |
| cascade-mvitv2-b + residual-cross x3, trained, forward + backward (R) | 512 | 1 | 8633 | 8818 | +2% |
| cascade-mvitv2-b + residual-cross x2, frozen, forward + backward (R) | 512 | 1 | 1801 | 1984 | +10% |
| cascade-mvitv2-b + residual-cross x3, frozen, forward + backward (R) | 512 | 1 | 2079 | 2249 | +8% |
| maskrcnn-mvitv2-b | 384 | 1 | 2704 | 2733 | +1% |
| maskrcnn-resnet50-fpn | 512 | 1 | 1340 | 1334 | 0% |
| maskrcnn-resnet50-fpn | 1024 | 1 | 2277 | 2285 | 0% |
| maskrcnn-resnet50-fpn | 1024 | 2 | 3588 | 3825 | +7% |

Error: -20% to +10%, mean absolute 4%; every shipped preset at its own tile size within -7% to +7%. The
largest misses are off-preset tile sizes of the small models (nano, nano-resnet at 512 px), where a
fixed share of the allocator's and oneDNN's working memory is larger than the factor covers. :func:`check_fits`
adds :data:`MARGIN`. On the GPU the same activation count is used with the precision factors above: expect it
to be less exact there (no GPU was available to measure it).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtscli.errors import RtsError
from rtscli.modeling.config import ModelConfig

log = logging.getLogger("rtscli")

GIB = 2**30
#: set to 1 to skip :func:`check_fits`
SKIP_ENV = "RTS_SKIP_MEMORY_CHECK"

# -- calibration (see the module docstring and benchmarks/memory_estimate.py) ---------------------------
#: measured CPU peak / counted saved activations (fp32)
CPU_ACTIVATION_FACTOR = 1.094
#: bytes a CPU step needs beyond the counted tensors (oneDNN scratch, thread pools, allocator)
CPU_RESERVE = 74 * 2**20
#: CUDA workspaces and allocator rounding (an assumption, not measured)
CUDA_RESERVE = GIB // 2
#: a frozen backbone's working set while it runs, as a multiple of its largest block's saved tensors
FROZEN_BLOCK_FACTOR = 1.0
#: mixed precision: attention matrices (fp32 softmax output + 16-bit copy) and everything else
MIXED_ATTENTION_FACTOR = 1.5
MIXED_OTHER_FACTOR = 0.75
#: instance masks per tile assumed for the masks' memory (T x T uint8 each, and a float copy in the mask loss)
ASSUMED_INSTANCES = 8
#: check_fits refuses when estimate x MARGIN[device] exceeds what is available. CPU: 10% over the calibrated
#: estimate (the kernel kills an out-of-memory process without a word). CUDA: the GPU figures are not measured, so
#: only what is clearly too large is refused; a near miss ends in CUDA's own out-of-memory error, which says so.
MARGIN = {"cpu": 1.1, "cuda": 0.85}


# ---------------------------------------------------------------------------------------------------
# what one image costs: counted on the meta device
# ---------------------------------------------------------------------------------------------------
def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage()._cdata
    except (AttributeError, RuntimeError):  # a tensor subclass without a storage: count it by itself
        return id(t)


class _SavedCounter:
    """Counts the bytes of the tensors autograd saves for backward, each storage once, weights excluded.

    ``block`` names the current block (set by forward hooks) so that the largest block's share is known.
    """

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: dict[int, tuple[int, torch.Tensor]] = {}
        self.by_block: dict[str, int] = {}
        self.block = ""

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.exclude and key not in self.seen:
            nbytes = t.untyped_storage().nbytes() if t.device.type == "meta" else t.numel() * t.element_size()
            self.seen[key] = (nbytes, t)  # the reference keeps the key from being reused
            if self.block:
                self.by_block[self.block] = self.by_block.get(self.block, 0) + nbytes
        return t

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.seen.values())

    def run(self, fn, *args):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            return fn(*args)


def _param_keys(*modules: nn.Module) -> set[int]:
    return {_storage_key(p) for m in modules for p in m.parameters()}


def _is_block(m: nn.Module) -> bool:
    return type(m).__name__ in ("MultiScaleBlock", "Bottleneck", "BasicBlock")


def _count_backbone(bb: nn.Module, tile: int, channels: int) -> tuple[int, int, dict[str, tuple[int, ...]]]:
    """(saved bytes, largest block's saved bytes, FPN output shapes) for one tile through backbone + FPN."""
    counter = _SavedCounter(_param_keys(bb))
    hooks = []
    for name, m in bb.named_modules():
        if _is_block(m):
            def pre(_m, _a, name=name):
                counter.block = name

            def post(_m, _a, _o):
                counter.block = ""
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        out = counter.run(bb, torch.empty(1, channels, tile, tile, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return counter.total, max(counter.by_block.values(), default=0), {k: tuple(v.shape) for k, v in out.items()}


def _attention_bytes(cfg: ModelConfig, tile: int) -> int:
    """fp32 bytes of MViTv2's pooled attention matrices for one tile (heads x query x key tokens per block).

    From timm's own stage layout (``MultiScaleVitCfg``: q stride 2 at each stage's first block, adaptive
    kv stride 4 -> 2 -> 1 -> 1, heads doubling per stage); 0 for other backbones.
    """
    if cfg.backbone.kind != "mvitv2":
        return 0
    from timm.models.mvitv2 import MultiScaleVitCfg

    vc = MultiScaleVitCfg(depths=tuple(cfg.backbone.depths), embed_dim=cfg.backbone.embed_dim,
                          num_heads=cfg.backbone.num_heads)
    side = tile // 4  # patch embedding: stride 4
    total = 0
    for depth, heads, sq, skv in zip(vc.depths, vc.num_heads, vc.stride_q, vc.stride_kv, strict=True):
        for i in range(depth):
            q = math.ceil(side / sq[0]) if i == 0 else side
            kv = math.ceil(side / skv[0])
            total += heads * q * q * kv * kv
            side = q
    return 4 * total


@dataclass(frozen=True)
class _Profile:
    """What one image costs for a configuration (fp32 bytes) and its parameter counts."""

    total_params: int
    trainable_params: int
    backbone_saved: int  # one trained backbone + FPN
    backbone_block: int  # its largest block's saved tensors
    backbones: int  # backbone + FPN copies run per step (modalities of a feature-level fusion)
    frozen: bool
    fpn_out: int  # one backbone's FPN outputs
    fusion_saved: int
    rpn_saved: int
    roi_saved: int
    attention: int  # the part of backbone_saved that is attention matrices (mixed-precision factor)
    analytic: int  # input tile, instance masks, RPN per-anchor tensors

    def activations(self) -> int:
        """fp32 bytes of the tensors alive at the peak for one image (before calibration)."""
        if self.frozen:
            bb = self.backbones * self.fpn_out + int(FROZEN_BLOCK_FACTOR * self.backbone_block)
        else:
            bb = self.backbones * self.backbone_saved
        return bb + self.fusion_saved + self.rpn_saved + self.roi_saved + self.analytic

    def attention_share(self) -> int:
        return 0 if self.frozen else self.backbones * self.attention


def _key(cfg: ModelConfig, fusion: dict | None) -> str:
    d = cfg.to_dict()
    for k in ("name", "description", "training"):
        d.pop(k, None)
    f = None
    if fusion:
        f = {k: fusion.get(k) for k in ("strategy", "modalities", "channels", "primary", "heads", "window", "frozen")}
    return json.dumps({"model": d, "fusion": f}, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _profile(key: str) -> _Profile:
    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.detector import Detector
    from rtscli.modeling.fusion import Fusion, is_feature_level

    job = json.loads(key)
    cfg = ModelConfig.from_dict(job["model"])
    fusion = job["fusion"]
    tile = cfg.tile_size
    feature = bool(fusion) and is_feature_level(fusion["strategy"])
    chans = [int(c) for c in fusion["channels"]] if feature else [cfg.backbone.in_channels]
    frozen = feature and bool(fusion.get("frozen"))
    with torch.device("meta"):
        bcfg = type(cfg.backbone)(**{**cfg.backbone.__dict__, "in_channels": max(chans)})
        bb = build_backbone(cfg=bcfg, fpn=cfg.fpn, tile_size=tile)
        decoder = Detector(cfg=cfg, backbone=nn.Identity())
        fuse = None
        if feature:
            fuse = Fusion(strategy=fusion["strategy"], modalities=list(fusion["modalities"]),
                          primary=fusion.get("primary", "rgb"), dim=cfg.fpn.out_channels,
                          heads=int(fusion.get("heads", 8)), window=int(fusion.get("window", 8)))
    bb.train()
    decoder.train()
    saved, block, shapes = _count_backbone(bb, tile, max(chans))

    # parameters: one backbone per modality (stems differ by their input channels), fusion, decoder
    p_bb = sum(p.numel() for p in bb.parameters())
    stem = bb.stem().weight
    per_channel = stem.shape[0] * stem.shape[2] * stem.shape[3]
    p_bbs = sum(p_bb - (max(chans) - c) * per_channel for c in chans)
    p_fuse = sum(p.numel() for p in fuse.parameters()) if fuse is not None else 0
    p_dec = sum(p.numel() for p in decoder.parameters())
    total = p_bbs + p_fuse + p_dec
    trainable = total - (p_bbs if frozen else 0)

    maps = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    fpn_out = sum(4 * math.prod(s) for s in shapes.values())
    fusion_saved = 0
    if fuse is not None:
        fuse.train()
        counter = _SavedCounter(_param_keys(fuse))
        feats = {m: {k: torch.empty(s, device="meta", requires_grad=not frozen) for k, s in shapes.items()}
                 for m in fusion["modalities"]}
        counter.run(fuse, feats)
        fusion_saved = counter.total

    counter = _SavedCounter(_param_keys(decoder))
    counter.run(decoder.rpn.head, list(maps.values()))
    rpn_saved = counter.total

    r = cfg.roi_heads
    c = cfg.fpn.out_channels
    counter = _SavedCounter(_param_keys(decoder))
    rois = r.batch_size_per_image
    for k in range(r.num_stages):  # every stage sees the sampled RoIs, freshly pooled
        x = torch.empty(rois, c, 7, 7, device="meta")
        counter.run(lambda x, k=k: decoder.roi_heads.box_predictors[k](decoder.roi_heads.box_heads[k](x)), x)
    if r.mask:
        pos = max(1, int(rois * r.positive_fraction))
        counter.run(decoder.roi_heads.mask_head, torch.empty(pos, c, 14, 14, device="meta"))
    roi_saved = counter.total

    anchors = sum(s[-1] * s[-2] for s in shapes.values()) * len(cfg.rpn.aspect_ratios)
    analytic = (4 * sum(chans) * tile * tile  # the normalized input tile
                + 5 * ASSUMED_INSTANCES * tile * tile  # uint8 masks and the mask loss's float copy
                + 4 * 24 * anchors)  # objectness, deltas, anchors, decoded boxes, matching (per anchor)
    return _Profile(total_params=total, trainable_params=trainable, backbone_saved=saved, backbone_block=block,
                    backbones=len(chans), frozen=frozen, fpn_out=fpn_out, fusion_saved=fusion_saved,
                    rpn_saved=rpn_saved, roi_saved=roi_saved, attention=_attention_bytes(cfg, tile),
                    analytic=analytic)


# ---------------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------------
def _device_type(device: str | torch.device) -> str:
    d = str(device).split(":")[0].lower()
    return "cuda" if d in ("cuda", "gpu") else d


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Lightning's precision name for ``precision`` ("auto": bf16-mixed on CUDA, as the engine picks, else 32-true)."""
    if precision and precision != "auto":
        return str(precision)
    return "bf16-mixed" if _device_type(device) == "cuda" else "32-true"


@dataclass(frozen=True)
class StepMemory:
    """The estimated peak memory of one training step, in bytes, by part."""

    weights: int
    gradients: int
    optimizer: int
    best_copy: int  # the engine's copy of the best validated weights (host memory: counted on the CPU)
    activations: int
    reserve: int
    total_params: int
    trainable_params: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.best_copy + self.activations + self.reserve

    def describe(self) -> str:
        g = GIB
        return (f"{self.total / g:.1f} GiB: weights {self.weights / g:.2f}, gradients {self.gradients / g:.2f}, "
                f"AdamW {self.optimizer / g:.2f}, best-weights copy {self.best_copy / g:.2f}, activations "
                f"{self.activations / g:.2f}, reserve {self.reserve / g:.2f} "
                f"({self.total_params / 1e6:.1f}M parameters, {self.trainable_params / 1e6:.1f}M trained)")


def estimate_step_memory(cfg: ModelConfig, *, batch_size: int, device: str | torch.device,
                         precision: str = "32-true", trainable_params: int | None = None,
                         total_params: int | None = None, fusion: dict | None = None) -> StepMemory:
    """The peak memory of one training step (forward + backward + AdamW) of ``cfg`` at its tile size, by part.

    ``batch_size``: tiles per step on this device. ``device``: "cpu" or "cuda" ("cuda:N", "gpu" alike), as
    :func:`rtscli.engine.devices.training_device` names it.
    ``precision``: a Lightning precision ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "auto").
    ``trainable_params`` / ``total_params``: the model's own counts when it exists (otherwise counted on the
    meta device: every parameter trained, or the backbones frozen when ``fusion["frozen"]``). ``fusion``: the
    spec of :func:`rtscli.modeling.multimodal.fusion_spec` for ``rts finetune`` models (None: unimodal).
    See the module docstring for the method and its calibration. Takes well under a second (the meta count
    is cached per configuration). Raises :class:`RtsError` for a batch size below 1.
    """
    if batch_size < 1:
        raise RtsError(f"batch size {batch_size} is below 1", fix="use --batch-size 1 or more")
    prof = _profile(_key(cfg, fusion))
    total = prof.total_params if total_params is None else int(total_params)
    trainable = prof.trainable_params if trainable_params is None else int(trainable_params)
    dev = _device_type(device)
    prec = resolve_precision(precision, device)
    pbytes = 2 if prec in ("bf16-true", "16-true", "bf16", "16", "half") else 4
    att = prof.attention_share()
    other = prof.activations() - att
    casts = 0
    if prec.endswith("-mixed"):
        act = MIXED_ATTENTION_FACTOR * att + MIXED_OTHER_FACTOR * other
        casts = 2 * total  # autocast's 16-bit copies of the weights, kept for the step
    else:
        act = (att + other) * pbytes / 4
    act_bytes = int(CPU_ACTIVATION_FACTOR * act * batch_size) + casts
    cuda = dev == "cuda"  # the best-weights copy lives in host memory, not on the GPU
    return StepMemory(weights=pbytes * total, gradients=pbytes * trainable, optimizer=2 * pbytes * trainable,
                      best_copy=0 if cuda else 4 * total, activations=act_bytes,
                      reserve=CUDA_RESERVE if cuda else CPU_RESERVE, total_params=total, trainable_params=trainable)


def estimate_step_bytes(cfg: ModelConfig, *, batch_size: int, device: str | torch.device,
                        precision: str = "32-true", trainable_params: int | None = None,
                        total_params: int | None = None, fusion: dict | None = None) -> int:
    """The estimated peak memory (bytes) of one training step; see :func:`estimate_step_memory`."""
    return estimate_step_memory(cfg, batch_size=batch_size, device=device, precision=precision,
                                trainable_params=trainable_params, total_params=total_params, fusion=fusion).total


# ---------------------------------------------------------------------------------------------------
# what is available
# ---------------------------------------------------------------------------------------------------
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_headroom(directory: Path) -> int | None:
    """Bytes the cgroup at ``directory`` still allows: its limit minus its working set; None without a limit.

    cgroup v2: ``memory.max`` - (``memory.current`` - ``inactive_file`` of ``memory.stat``); cgroup v1:
    ``memory.limit_in_bytes`` - (``memory.usage_in_bytes`` - ``total_inactive_file``). Inactive page cache
    is reclaimed before the kernel kills anything, so it does not count as used (as the kubelet does).
    """
    d = Path(directory)
    if (d / "memory.max").exists():
        limit, usage, stat, inactive = d / "memory.max", d / "memory.current", d / "memory.stat", "inactive_file"
    elif (d / "memory.limit_in_bytes").exists():
        limit, usage = d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"
        stat, inactive = d / "memory.stat", "total_inactive_file"
    else:
        return None
    lim = _read_int(limit)
    if lim is None:
        return None
    used = (_read_int(usage) or 0) - _stat(stat, inactive)
    return max(0, lim - max(0, used))


def _cgroup_dirs(proc: Path, root: Path) -> list[Path]:
    """The memory cgroup directories of this process and of its ancestors (whose limits apply too).

    From ``proc``/self/cgroup (v2 "0::/path", v1 "N:...memory...:/path") and ``proc``/self/mountinfo (where
    the hierarchy is mounted; ``root`` prefixes mount points, for tests). Falls back to the usual places
    (``/sys/fs/cgroup`` and ``/sys/fs/cgroup/memory``) when these files cannot be read.
    """
    try:
        groups = (proc / "self" / "cgroup").read_text().splitlines()
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        groups, mounts = [], []
    out: list[Path] = []
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        for m in mounts:
            fields = m.split()
            if " - " not in m or len(fields) < 5:
                continue
            fstype = m.split(" - ", 1)[1].split()
            kind = fstype[0] if fstype else ""
            opts = fstype[2] if len(fstype) > 2 else ""
            if (v2 and kind != "cgroup2") or (not v2 and (kind != "cgroup" or "memory" not in opts.split(","))):
                continue
            mroot, mpoint = fields[3], fields[4]
            rel = path
            if mroot != "/" and (path == mroot or path.startswith(mroot.rstrip("/") + "/")):
                rel = path[len(mroot.rstrip("/")):]
            base = root / mpoint.lstrip("/")
            d = base / rel.strip("/") if rel.strip("/") else base
            chain = [d]
            while d != base and base in d.parents:
                d = d.parent
                chain.append(d)
            out += chain
            break
    if not out:
        out = [root / "sys/fs/cgroup", root / "sys/fs/cgroup/memory"]
    return out


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device: str | torch.device, *, proc: Path = Path("/proc"), root: Path = Path("/")) -> int | None:
    """Memory (bytes) this process can still have on ``device``; None where it cannot be known.

    CPU: the smaller of MemAvailable (``/proc/meminfo``) and the headroom of every memory cgroup this
    process is in (a SLURM job's, a container's: limit minus working set, cgroup v1 or v2; see
    :func:`cgroup_headroom`); None on systems without ``/proc`` (macOS, Windows). CUDA: the free memory
    of the device (``torch.cuda.mem_get_info``; "cuda:N" picks the device); None without CUDA. Other
    devices (mps): None. Memory this process already holds is not available: it is in use.
    """
    dev = torch.device("cuda" if _device_type(device) == "cuda" else str(device))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(dev.index if dev.index is not None else torch.cuda.current_device())
        return int(free)
    if dev.type != "cpu":
        return None
    found = [v for v in [_meminfo_available(proc)] + [cgroup_headroom(d) for d in _cgroup_dirs(proc, root)]
             if v is not None]
    return min(found) if found else None


# ---------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / GIB:.1f}" if n < 100 * GIB else f"{n / GIB:.0f}"


def check_fits(cfg: ModelConfig, *, batch_size: int, device: str | torch.device, precision: str = "32-true",
               trainable_params: int | None = None, total_params: int | None = None, fusion: dict | None = None,
               resident_bytes: int = 0, processes: int = 1, what: str = "rts pretrain") -> None:
    """Stop, with one line, a training run whose step would not fit in memory; return quietly otherwise.

    Compares :func:`estimate_step_bytes` (x ``processes``: DDP processes sharing this memory, i.e. ``--devices``
    on a CPU) times :data:`MARGIN` with :func:`available_bytes`. ``resident_bytes``: what this process already
    holds of the estimate (the model's weights, when it was built on the CPU before the check), which
    ``available_bytes`` no longer counts as free. Logs the estimate at debug level. Returns without checking when
    the environment variable ``RTS_SKIP_MEMORY_CHECK`` is 1 (or true/yes), or when the available memory cannot be
    known (other operating systems, mps).

    Raises :class:`RtsError` naming the configuration, the figures (GiB) and the fixes: a smaller
    ``--batch-size`` when one fits, ``--preset nano`` on a CPU when it fits, a GPU (``--accelerator gpu``), or a
    preset with a smaller tile.
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
    dev = _device_type(device)
    log.debug("%s: one training step of %s at %d px, batch %d on %s (%s): estimated %s; available %s", what,
              cfg.name, cfg.tile_size, batch_size, dev, resolve_precision(precision, device), est.describe(),
              "unknown" if avail is None else f"{avail / GIB:.1f} GiB")
    margin = MARGIN.get(dev, MARGIN["cpu"])
    if avail is None or need * margin <= avail:
        return

    def fits(model: ModelConfig, batch: int, **kw) -> bool:
        args = dict(device=device, precision=precision, fusion=fusion) | kw
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
