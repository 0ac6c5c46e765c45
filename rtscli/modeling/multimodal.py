"""Multimodal detectors: one backbone (+FPN) per modality, fused into one FPN dict.

The detector itself does not change: :class:`FusedBackbone` takes the stacked input channels of all
modalities (as :class:`~rtscli.data.dataset.ChipDataset` stacks them, in the bundle's modality
order), splits them, runs each modality's backbone and fuses the FPN dicts with
:class:`~rtscli.modeling.fusion.Fusion`. ``channel-stack`` (data-level fusion) needs no such module:
it is a plain detector whose one backbone reads all stacked channels.

Frozen backbones (the paper's phase 2) stay in eval mode whatever ``train()`` is called with, have
``requires_grad=False`` (so the optimizer never sees them) and run under ``torch.no_grad()``: their
activations are not kept for backward, which is where the memory saving of Table 2 comes from.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rtscli.errors import RtsError
from rtscli.modeling.backbone import build_backbone
from rtscli.modeling.config import ModelConfig
from rtscli.modeling.fusion import Fusion, is_feature_level

if TYPE_CHECKING:
    from rtscli.modeling.detector import Detector


class FusedBackbone(nn.Module):
    def __init__(self, backbones: dict[str, nn.Module], channels: dict[str, int], fusion: Fusion, *,
                 frozen: bool) -> None:
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        self.channels = [int(channels[m]) for m in backbones]
        self.fusion = fusion
        self.frozen = frozen
        if frozen:
            for p in self.backbones.parameters():
                p.requires_grad_(False)
            self.backbones.eval()

    def train(self, mode: bool = True) -> "FusedBackbone":
        super().train(mode)
        if self.frozen:
            self.backbones.eval()
        return self

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        if x.shape[1] != sum(self.channels):
            raise RtsError(f"the fused model expects {sum(self.channels)} input channels "
                           f"({', '.join(f'{m} {c}' for m, c in zip(self.backbones, self.channels, strict=True))}), "
                           f"got {x.shape[1]}", fix="compose the modalities in the bundle's order")
        parts = torch.split(x, self.channels, dim=1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = {m: bb(p) for (m, bb), p in zip(self.backbones.items(), parts, strict=True)}
        return self.fusion(feats)


def fusion_spec(strategy: str, modalities: list[str], channels: list[int], *, primary: str = "rgb",
                heads: int = 8, window: int = 8, frozen: bool = False) -> dict[str, Any]:
    """The ``fusion`` section of a bundle's config.yaml."""
    return {"strategy": strategy, "modalities": list(modalities), "channels": [int(c) for c in channels],
            "primary": primary, "heads": int(heads), "window": int(window), "frozen": bool(frozen)}


def fusion_heads(dim: int, want: int = 8) -> int:
    """The largest head count <= ``want`` that divides ``dim`` (nano's FPN has 64 channels)."""
    return max(h for h in range(1, want + 1) if dim % h == 0)


def build_model(cfg: ModelConfig, fusion: dict[str, Any] | None) -> Detector:
    """The detector a bundle describes: unimodal, channel-stack, or feature-level fusion."""
    from rtscli.modeling.detector import Detector

    if not fusion or not is_feature_level(fusion["strategy"]):
        return Detector(cfg=cfg)
    backbones: dict[str, nn.Module] = {}
    channels: dict[str, int] = {}
    for name, c in zip(fusion["modalities"], fusion["channels"], strict=True):
        bcfg = copy.deepcopy(cfg.backbone)
        bcfg.in_channels = int(c)
        backbones[name] = build_backbone(cfg=bcfg, fpn=cfg.fpn, tile_size=cfg.tile_size)
        channels[name] = int(c)
    fuse = Fusion(strategy=fusion["strategy"], modalities=list(fusion["modalities"]),
                  primary=fusion.get("primary", "rgb"), dim=cfg.fpn.out_channels,
                  heads=int(fusion.get("heads", 8)), window=int(fusion.get("window", 8)))
    backbone = FusedBackbone(backbones, channels, fuse, frozen=bool(fusion.get("frozen", False)))
    return Detector(cfg=cfg, backbone=backbone)
