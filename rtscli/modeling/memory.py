"""The peak memory of one training step (weights, gradients, AdamW, activations), estimated without a model.

Activations are counted on the meta device and scaled by factors fitted to CPU measurements: the calibration
table is in ``benchmarks/RESULTS.md`` ("Memory estimator calibration"), the method in :func:`estimate_step_memory`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import nn

from rtscli.errors import RtsError
from rtscli.machine import device_type
from rtscli.modeling.config import ModelConfig

if TYPE_CHECKING:
    from rtscli.modeling.backbone import MViTv2FPN, ResNetFPN
    from rtscli.modeling.detector import Detector
    from rtscli.modeling.fusion import Fusion

GIB = 2**30

_T = TypeVar("_T")

# -- calibration (benchmarks/RESULTS.md, "Memory estimator calibration"; benchmarks/memory_estimate.py) --------
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

    def run(self, fn: Callable[..., _T], *args: object) -> _T:
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
            def pre(_m: nn.Module, _a: tuple, name: str = name) -> None:
                counter.block = name

            def post(_m: nn.Module, _a: tuple, _o: object) -> None:
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
    # per-stage tuples once MultiScaleVitCfg.__post_init__ has run (timm types them int | tuple, or Optional)
    num_heads = cast("tuple[int, ...]", vc.num_heads)
    stride_q = cast("tuple[tuple[int, int], ...]", vc.stride_q)
    stride_kv = cast("tuple[tuple[int, int], ...]", vc.stride_kv)
    for depth, heads, sq, skv in zip(vc.depths, num_heads, stride_q, stride_kv, strict=True):
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


def profile_key(cfg: ModelConfig, fusion: dict | None) -> str:
    """The model and fusion settings that decide a step's cost, as a hashable JSON key (names and training
    settings left out), for the cached profiles of memory and time estimates."""
    d = cfg.to_dict()
    for k in ("name", "description", "training"):
        d.pop(k, None)
    f = None
    if fusion:
        f = {k: fusion.get(k) for k in ("strategy", "modalities", "channels", "primary", "heads", "window", "frozen")}
    return json.dumps({"model": d, "fusion": f}, sort_keys=True)


def _parse_key(key: str) -> tuple[ModelConfig, Any, bool, list[int]]:
    """``(config, fusion spec, feature-level fusion?, input channels per backbone)`` of a :func:`profile_key`."""
    from rtscli.modeling.fusion import is_feature_level

    job = json.loads(key)
    cfg = ModelConfig.from_dict(job["model"])
    fusion = job["fusion"]
    feature = bool(fusion) and is_feature_level(fusion["strategy"])
    chans = [int(c) for c in fusion["channels"]] if feature else [cfg.backbone.in_channels]
    return cfg, fusion, feature, chans


def _meta_parts(cfg: ModelConfig, fusion: Any, feature: bool,
                chans: list[int]) -> tuple[MViTv2FPN | ResNetFPN, Detector, Fusion | None]:
    """``(backbone + FPN, decoder, fusion module or None)`` of a configuration, built on the meta device (no
    memory): what every profile counts."""
    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.detector import Detector
    from rtscli.modeling.fusion import Fusion

    with torch.device("meta"):
        bcfg = type(cfg.backbone)(**{**cfg.backbone.__dict__, "in_channels": max(chans)})
        bb = build_backbone(cfg=bcfg, fpn=cfg.fpn, tile_size=cfg.tile_size)
        decoder = Detector(cfg=cfg, backbone=nn.Identity())
        fuse = None
        if feature:
            fuse = Fusion(strategy=fusion["strategy"], modalities=list(fusion["modalities"]),
                          primary=fusion.get("primary", "rgb"), dim=cfg.fpn.out_channels,
                          heads=int(fusion.get("heads", 8)), window=int(fusion.get("window", 8)))
    return bb, decoder, fuse


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch below 1 (every estimate's first check)."""
    if batch_size < 1:
        raise RtsError(f"batch size {batch_size} is below 1", fix="use --batch-size 1 or more")


@functools.lru_cache(maxsize=64)
def _profile(key: str) -> _Profile:
    cfg, fusion, feature, chans = _parse_key(key)
    tile = cfg.tile_size
    frozen = feature and bool(fusion.get("frozen"))
    bb, decoder, fuse = _meta_parts(cfg, fusion, feature, chans)
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
        assert decoder.roi_heads.mask_head is not None  # built when cfg.roi_heads.mask
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
def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Lightning's precision name for ``precision``, as the engine picks it.

    Args:
        precision: a Lightning precision ("32-true", "bf16-mixed", ...) or "auto".
        device: "cpu", "cuda" ("cuda:N", "gpu" alike), "mps", or a ``torch.device``.

    Returns:
        ``precision`` itself; for "auto" (or empty): "bf16-mixed" on CUDA, else "32-true".
    """
    if precision and precision != "auto":
        return str(precision)
    return "bf16-mixed" if device_type(device) == "cuda" else "32-true"


@dataclass(frozen=True)
class StepMemory:
    """The estimated peak memory of one training step, in bytes, by part (and the parameter counts behind it)."""

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
        """The estimated peak, in bytes: the sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.best_copy + self.activations + self.reserve

    def describe(self) -> str:
        """One line for a log: the total and every part in GiB, and the parameter counts."""
        g = GIB
        return (f"{self.total / g:.1f} GiB: weights {self.weights / g:.2f}, gradients {self.gradients / g:.2f}, "
                f"AdamW {self.optimizer / g:.2f}, best-weights copy {self.best_copy / g:.2f}, activations "
                f"{self.activations / g:.2f}, reserve {self.reserve / g:.2f} "
                f"({self.total_params / 1e6:.1f}M parameters, {self.trainable_params / 1e6:.1f}M trained)")


def estimate_step_memory(cfg: ModelConfig, *, batch_size: int, device: str | torch.device,
                         precision: str = "32-true", trainable_params: int | None = None,
                         total_params: int | None = None, fusion: dict | None = None) -> StepMemory:
    """The peak memory of one training step (forward + backward + AdamW) of ``cfg`` at its tile size, by part.

    Takes well under a second: the count on the meta device is cached per configuration. The calibration of
    the factors below is in ``benchmarks/RESULTS.md`` ("Memory estimator calibration").

    Args:
        cfg: the model's configuration (preset), at its tile size.
        batch_size: tiles per step on this device.
        device: "cpu" or "cuda" ("cuda:N", "gpu" alike), as :func:`rtscli.engine.devices.training_device`
            names it.
        precision: a Lightning precision ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "auto").
        trainable_params: the model's trainable parameters when it exists (None: counted on the meta device,
            every parameter trained, or the backbones frozen when ``fusion["frozen"]``).
        total_params: the model's parameters when it exists (None: counted on the meta device).
        fusion: the spec of :func:`rtscli.modeling.multimodal.fusion_spec` for ``rts finetune`` models (None:
            unimodal).

    Returns:
        The estimate, in bytes by part (:class:`StepMemory`; ``.total`` is the peak).

    Raises:
        RtsError: for a batch size below 1.

    Method (all figures in bytes):

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
      sum, per tile, times the batch, is scaled by a constant factor fitted to measurements
      (:data:`CPU_ACTIVATION_FACTOR`), which covers what the count cannot see: gradients of activations
      alive during backward, temporaries, and the allocator.
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
    """
    check_batch_size(batch_size)
    prof = _profile(profile_key(cfg, fusion))
    total = prof.total_params if total_params is None else int(total_params)
    trainable = prof.trainable_params if trainable_params is None else int(trainable_params)
    dev = device_type(device)
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
    """The estimated peak memory of one training step, in bytes; see :func:`estimate_step_memory`.

    Args:
        cfg, batch_size, device, precision, trainable_params, total_params, fusion: as for
            :func:`estimate_step_memory`.

    Returns:
        :attr:`StepMemory.total` of that estimate, in bytes.

    Raises:
        RtsError: for a batch size below 1.
    """
    return estimate_step_memory(cfg, batch_size=batch_size, device=device, precision=precision,
                                trainable_params=trainable_params, total_params=total_params, fusion=fusion).total


