"""The peak memory of the passes that are not a supervised training step: a forward pass without gradients
(``rts evaluate``, ``rts predict``) and a SimMIM step (``rts ssl``), counted like :mod:`rtscli.modeling.memory`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rtscli.machine import device_type
from rtscli.modeling.config import ModelConfig
from rtscli.modeling.memory import (
    CPU_ACTIVATION_FACTOR, CPU_RESERVE, CUDA_RESERVE, MIXED_ATTENTION_FACTOR, MIXED_OTHER_FACTOR, StepMemory,
    _attention_bytes, _meta_parts, _param_keys, _parse_key, _SavedCounter, _storage_key, check_batch_size,
    profile_key, resolve_precision,
)

_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------------------
# a SimMIM step (rts ssl) and a forward pass without gradients (rts evaluate, rts predict)
# ---------------------------------------------------------------------------------------------------
# Calibration of a forward pass (Detector.predict under torch.inference_mode, random weights, fp32, 2-core CPU,
# torch 2.14.1; peak RSS (VmHWM) over the RSS with the model built and the tiles made, each in a fresh process)
# against the counted peak working set (_forward_profile): measured / counted MiB
#   nano 256 px batch 1: 130 / 45, batch 2: 236 / 90, batch 4: 469 / 181, batch 8: 694 / 361;
#   nano-resnet 256 px batch 1: 97 / 45, batch 4: 236 / 181; cascade-mvitv2-t 512 px: 512 / 451;
#   cascade-mvitv2-b 384 px: 436 / 186, 512 px: 555 / 451, 768 px: 2206 / 2099;
#   maskrcnn-resnet50-fpn 1024 px: 603 / 426.
# On real tensors the count matches the live tensors (nano 256 px batch 4: 178 MiB counted by _PeakCounter on the CPU).
# Large working sets (attention matrices above glibc's 32 MB mmap threshold) cost 1.05-1.25 x the count; small
# ones up to ~300 MiB more, blocks the C allocator keeps in its heap. Estimate: INFERENCE_FACTOR x count + the count
# up to INFERENCE_HEAP + CPU_RESERVE: at most 3% below every measurement above, and a few hundred MiB above.
#: measured CPU peak / counted peak working set of a forward pass without gradients (large working sets)
INFERENCE_FACTOR = 1.1


#: freed blocks the C allocator keeps in its heap during a forward pass: as much as the working set, up to this
INFERENCE_HEAP = 256 * 2**20


class _PeakCounter(TorchDispatchMode):
    """The most bytes of tensors alive at once while code runs under it: every tensor an operator returns is
    followed (each storage once) until it is freed; ``exclude`` (weights) and tensors made before are not counted.
    On the meta device nothing is allocated, but tensors live and die as they would on a real one."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.exclude = exclude
        self.live: dict[int, tuple[object, int]] = {}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Callable[..., _T], types: object, args: tuple = (),
                           kwargs: dict | None = None) -> _T:
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:  # type: ignore[attr-defined]
            self.now -= self.live.pop(key)[1]
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = _storage_key(t)
                if key not in self.exclude and key not in self.live:
                    self.live[key] = (self._ref(storage), storage.nbytes())
                    self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        return out


@dataclass(frozen=True)
class _Forward:
    """What a forward pass without gradients costs for a configuration: parameters and bytes per tile (fp32)."""

    total_params: int
    peak: int  # the largest working set of one tile (backbones, fusion, heads; counted), the input tile included


@functools.lru_cache(maxsize=32)
def _forward_profile(key: str) -> _Forward:
    cfg, fusion, feature, chans = _parse_key(key)
    tile = cfg.tile_size
    bb, decoder, fuse = _meta_parts(cfg, fusion, feature, chans)
    for m in (bb, decoder, fuse):
        if m is not None:
            m.eval()
    p_bb = sum(p.numel() for p in bb.parameters())
    stem = bb.stem().weight
    per_channel = stem.shape[0] * stem.shape[2] * stem.shape[3]
    total = (sum(p_bb - (max(chans) - c) * per_channel for c in chans)
             + (sum(p.numel() for p in fuse.parameters()) if fuse is not None else 0)
             + sum(p.numel() for p in decoder.parameters()))

    def peak(module: nn.Module, fn: Callable[[], object]) -> int:
        counter = _PeakCounter(_param_keys(module))
        with torch.inference_mode(), counter:
            fn()
        return counter.peak

    x = torch.empty(1, max(chans), tile, tile, device="meta")
    maps: dict[str, torch.Tensor] = {}

    def run_backbone() -> None:
        maps.update(bb(x))

    backbone = peak(bb, run_backbone)  # its FPN maps, alive at its end, included
    fpn_out = sum(4 * math.prod(v.shape) for v in maps.values())
    n = len(chans)
    work = (n - 1) * fpn_out + backbone  # the maps of the backbones run before stay alive while the last runs
    if fuse is not None:
        feats = {m: {k: torch.empty(v.shape, device="meta") for k, v in maps.items()} for m in fusion["modalities"]}
        work = max(work, n * fpn_out + peak(fuse, lambda: fuse(feats)))
    levels = list(maps.values())
    rpn = peak(decoder, lambda: decoder.rpn.head(levels))
    anchors = sum(s.shape[-1] * s.shape[-2] for s in levels) * len(cfg.rpn.aspect_ratios)
    rpn += 4 * 16 * anchors  # objectness, deltas, anchors, decoded boxes and their sorting, per anchor
    r = cfg.roi_heads
    c = cfg.fpn.out_channels
    proposals = cfg.rpn.post_nms_top_n_test
    roi = 0
    heads = decoder.roi_heads
    for k in range(r.num_stages):  # every stage sees every proposal, freshly pooled
        pooled = torch.empty(proposals, c, 7, 7, device="meta")

        def stage(k: int = k, p: torch.Tensor = pooled) -> object:
            return heads.box_predictors[k](heads.box_heads[k](p))

        roi = max(roi, 4 * pooled.numel() + peak(decoder, stage))
    if r.mask:
        assert decoder.roi_heads.mask_head is not None  # built when cfg.roi_heads.mask
        pooled = torch.empty(r.detections_per_image, c, 14, 14, device="meta")
        head = decoder.roi_heads.mask_head
        roi = max(roi, 4 * pooled.numel() + peak(decoder, lambda: head(pooled)))
    work = max(work, fpn_out + max(rpn, roi))
    return _Forward(total_params=total, peak=work + 4 * sum(chans) * tile * tile)


def estimate_inference_memory(cfg: ModelConfig, *, batch_size: int, device: str | torch.device,
                              fusion: dict | None = None) -> StepMemory:
    """The peak memory of running ``cfg`` (fp32) on a batch of ``batch_size`` tiles under ``torch.inference_mode``,
    as ``rts evaluate`` and ``rts predict`` do, by part (:class:`StepMemory`; no gradients, optimizer or copy).

    Method: the weights (4 bytes per parameter, counted on the meta device) and the largest working set of one
    tile times the batch. Without autograd nothing is kept for a backward pass: what counts is the most memory
    alive at one moment, which a dispatch mode (:class:`_PeakCounter`) follows on the meta device, tensor by
    tensor, while the backbone + FPN run (for MViTv2 at 1024 px: stage 1's attention matrices, while the
    softmax makes its output), while a fused model's fusion runs over every backbone's FPN maps, and while the
    RPN head and the box and mask heads run on the FPN maps (``post_nms_top_n_test`` proposals per tile, every
    cascade stage; ``detections_per_image`` masks). The per-anchor tensors of the RPN and the input tile are
    added analytically; the sum is scaled by :data:`INFERENCE_FACTOR`, and up to :data:`INFERENCE_HEAP` is added
    for the freed blocks the C allocator keeps (calibrated on the CPU: the table above :data:`INFERENCE_FACTOR`).
    Plus :data:`CPU_RESERVE` or :data:`CUDA_RESERVE`.

    Args:
        cfg: the model's configuration (a bundle's, or a preset), at its tile size.
        batch_size: tiles per forward pass (``--batch-size``).
        device: "cpu" or "cuda" ("cuda:N", "gpu" alike).
        fusion: a fused bundle's ``fusion`` spec (None: unimodal).

    Returns:
        The estimate, in bytes by part (``.total`` is the peak).

    Raises:
        RtsError: for a batch size below 1.
    """
    check_batch_size(batch_size)
    prof = _forward_profile(profile_key(cfg, fusion))
    cuda = device_type(device) == "cuda"
    work = prof.peak * batch_size
    return StepMemory(weights=4 * prof.total_params, gradients=0, optimizer=0, best_copy=0,
                      activations=int(INFERENCE_FACTOR * work) + min(work, INFERENCE_HEAP),
                      reserve=CUDA_RESERVE if cuda else CPU_RESERVE, total_params=prof.total_params,
                      trainable_params=0)


@dataclass(frozen=True)
class _Simmim:
    """What one SimMIM window costs for a configuration (fp32 bytes) and its parameter counts."""

    total_params: int
    trainable_params: int  # the backbone's body and the SimMIM parts: the FPN and its norms get no gradient
    saved: int  # the tensors autograd keeps (counted), the input window, its validity and mask included
    attention: int


@functools.lru_cache(maxsize=32)
def _simmim_profile(key: str) -> _Simmim:
    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.mim import MaskedImageModel

    cfg = ModelConfig.from_dict(json.loads(key)["model"])
    tile, chans = cfg.tile_size, cfg.backbone.in_channels
    with torch.device("meta"):
        bb = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=tile)
        model = MaskedImageModel(bb, chans)
    model.train()
    total = sum(p.numel() for p in model.parameters())
    unused = sum(p.numel() for name, p in bb.named_parameters() if not name.startswith("body."))
    counter = _SavedCounter(_param_keys(model))
    x = torch.empty(1, chans, tile, tile, device="meta")
    valid = torch.empty(1, tile, tile, dtype=torch.bool, device="meta")
    mask = torch.empty(1, tile // model.block, tile // model.block, dtype=torch.bool, device="meta")
    counter.run(model, x, valid, mask)
    analytic = 4 * chans * tile * tile + 2 * tile * tile  # the window, its validity and the hidden pixels
    return _Simmim(total_params=total, trainable_params=total - unused, saved=counter.total + analytic,
                   attention=_attention_bytes(cfg, tile))


def estimate_ssl_memory(cfg: ModelConfig, *, batch_size: int, device: str | torch.device,
                        precision: str = "32-true") -> StepMemory:
    """The peak memory of one SimMIM training step of ``rts ssl`` (the backbone of ``cfg`` at its tile size and
    :class:`rtscli.modeling.mim.MaskedImageModel`'s decoder; forward + backward + AdamW), by part.

    As :func:`estimate_step_memory` for a detector: weights, gradients and AdamW's moments of the trained
    parameters (the backbone's body, the mask token, the norm and the decoder; the FPN, unused, gets none), the
    tensors autograd keeps counted on the meta device (the backbone's blocks as for a detector, the decoder's
    1 x 1 convolution and pixel shuffle at full resolution, the L1 loss's terms), the same calibration and
    mixed-precision factors, and no copy of best weights (``rts ssl`` validates nothing).

    Args:
        cfg: the preset at the run's tile size, with the modality's ``in_channels``.
        batch_size: windows per step on this device.
        device: "cpu" or "cuda" ("cuda:N", "gpu" alike).
        precision: a Lightning precision ("32-true", "bf16-mixed", ..., "auto").

    Returns:
        The estimate, in bytes by part (``.total`` is the peak).

    Raises:
        RtsError: for a batch size below 1.
    """
    check_batch_size(batch_size)
    prof = _simmim_profile(profile_key(cfg, None))
    prec = resolve_precision(precision, device)
    pbytes = 2 if prec in ("bf16-true", "16-true", "bf16", "16", "half") else 4
    att, other = prof.attention, prof.saved - prof.attention
    casts = 0
    if prec.endswith("-mixed"):
        act = MIXED_ATTENTION_FACTOR * att + MIXED_OTHER_FACTOR * other
        casts = 2 * prof.total_params
    else:
        act = (att + other) * pbytes / 4
    cuda = device_type(device) == "cuda"
    t = prof.trainable_params
    return StepMemory(weights=pbytes * prof.total_params, gradients=pbytes * t, optimizer=2 * pbytes * t,
                      best_copy=0, activations=int(CPU_ACTIVATION_FACTOR * act * batch_size) + casts,
                      reserve=CUDA_RESERVE if cuda else CPU_RESERVE, total_params=prof.total_params,
                      trainable_params=t)
