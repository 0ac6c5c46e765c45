"""Backbones with FPN: MViTv2 (timm) and ResNet50 (torchvision). Each returns P2..P6.

Contract: ``forward(x) -> OrderedDict[str, Tensor]`` with keys ``p2 .. p6`` (strides 4..64), each
with ``out_channels`` channels. The detector does not know which backbone, or how many
modalities, produced them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from rtscli.errors import RtsError
from rtscli.modeling.config import BackboneConfig, FPNConfig

log = logging.getLogger("rtscli")

LEVELS = ("p2", "p3", "p4", "p5", "p6")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels at every position of an NCHW map (detectron2's "LN" for convs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _fpn(in_channels: list[int], cfg: FPNConfig) -> nn.Module:
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    norm = LayerNorm2d if cfg.norm == "ln" else None
    return FeaturePyramidNetwork(in_channels, cfg.out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm)


class MViTv2FPN(nn.Module):
    """MViTv2 from timm (four stages, strides 4/8/16/32) + a per-stage LayerNorm + FPN -> P2..P6.

    timm builds MViTv2's relative-position tables for one input size, so the tile size is fixed
    per model (``tile_size``); inputs are square tiles of that size.
    """

    def __init__(self, *, cfg: BackboneConfig, fpn: FPNConfig, tile_size: int) -> None:
        super().__init__()
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

        vit_cfg = MultiScaleVitCfg(depths=tuple(cfg.depths), embed_dim=cfg.embed_dim, num_heads=cfg.num_heads)
        self.body = MultiScaleVit(vit_cfg, img_size=(tile_size, tile_size), in_chans=cfg.in_channels,
                                  num_classes=0, drop_path_rate=cfg.drop_path_rate)
        # the classifier's final norm and head are unused by a detector (DDP rejects unused weights)
        self.body.head = nn.Identity()  # type: ignore[assignment]  # timm types it nn.Sequential; any module works
        self.body.norm = nn.Identity()
        dims = [cfg.embed_dim * 2**i for i in range(4)]
        self.norms = nn.ModuleList(LayerNorm2d(d) for d in dims)
        self.fpn = _fpn(dims, fpn)
        self.out_channels = fpn.out_channels
        self.tile_size = tile_size

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.shape[-2:] != (self.tile_size, self.tile_size):
            raise RtsError(f"this model takes {self.tile_size} x {self.tile_size} tiles, got "
                           f"{tuple(x.shape[-2:])}", fix="pad or cut the input to the model's tile size")
        stages = self.body.forward_intermediates(x, indices=4, intermediates_only=True)
        feats = OrderedDict((str(i), n(f)) for i, (n, f) in enumerate(zip(self.norms, stages, strict=True)))
        out = self.fpn(feats)
        return OrderedDict(zip(LEVELS, out.values(), strict=True))

    def stem(self) -> nn.Conv2d:
        return self.body.patch_embed.proj


class ResNet50FPN(nn.Module):
    """torchvision ResNet50 + FPN -> P2..P6 (the paper's Table 1 baseline)."""

    def __init__(self, *, cfg: BackboneConfig, fpn: FPNConfig, tile_size: int) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.ops import misc

        body = resnet50(weights=None, norm_layer=misc.FrozenBatchNorm2d)
        if cfg.in_channels != 3:
            body.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        body.fc = nn.Identity()  # the ImageNet classifier is not part of a detector
        self.body = body
        self.fpn = _fpn([256, 512, 1024, 2048], fpn)
        self.out_channels = fpn.out_channels
        self.tile_size = tile_size

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        out = self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4), ("3", c5)]))
        return OrderedDict(zip(LEVELS, out.values(), strict=True))

    def stem(self) -> nn.Conv2d:
        return self.body.conv1


def build_backbone(*, cfg: BackboneConfig, fpn: FPNConfig, tile_size: int) -> MViTv2FPN | ResNet50FPN:
    if cfg.kind == "mvitv2":
        return MViTv2FPN(cfg=cfg, fpn=fpn, tile_size=tile_size)
    if cfg.kind == "resnet50":
        return ResNet50FPN(cfg=cfg, fpn=fpn, tile_size=tile_size)
    raise RtsError(f"unknown backbone kind {cfg.kind!r}", fix="use mvitv2 or resnet50")


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit pretrained 3-channel stem weights to ``in_channels`` (repeat, then rescale).

    Extra bands never silently drop the pretrained stem: the RGB filters are tiled over the new
    channels and scaled by 3 / in_channels so that activations keep their magnitude.
    """
    out_c, c, kh, kw = weight.shape
    if c == in_channels:
        return weight
    reps = -(-in_channels // c)
    w = weight.repeat(1, reps, 1, 1)[:, :in_channels]
    return w * (c / in_channels)


def is_rel_pos(key: str) -> bool:
    """Whether a state-dict key is one of MViTv2's relative-position tables (sized by the input tile)."""
    return key.endswith(("rel_pos_h", "rel_pos_w"))


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (L, C) relative-position table linearly interpolated to (length, C): MViTv2 weights learned at one tile
    size used at another (as detectron2's MViTv2 ``get_rel_pos`` interpolates; Li et al. 2022)."""
    if table.shape[0] == length:
        return table
    t = nn.functional.interpolate(table.float().T[None], size=length, mode="linear", align_corners=False)
    return t[0].T.to(table.dtype).contiguous()


def fit_rel_pos(key: str, tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``tensor`` for a place of ``shape``: a relative-position table (``key``) whose length alone differs is
    interpolated to it (:func:`resize_rel_pos`); anything else is returned as it is."""
    if is_rel_pos(key) and tuple(tensor.shape) != tuple(shape) and tuple(tensor.shape[1:]) == tuple(shape[1:]):
        return resize_rel_pos(tensor, shape[0])
    return tensor


#: prefixes that training frameworks put before a backbone's own tensor names
PREFIXES = ("module.", "model.", "encoder.", "backbone.body.", "backbone.", "body.")


def strip_prefix(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with a framework prefix removed (``module.``, ``backbone.`` ...) when that makes more of its keys
    match ``own``, the backbone's own names (DDP, MMPretrain and Lightning checkpoints add them)."""
    best, hits = state, sum(k in own for k in state)
    for _ in range(3):  # prefixes can stack: module.backbone.
        for p in PREFIXES:
            cand = {k[len(p):] if k.startswith(p) else k: v for k, v in best.items()}
            n = sum(k in own for k in cand)
            if n > hits:
                best, hits = cand, n
    return best


def load_backbone_weights(backbone: nn.Module, spec: str | None, *, timm_name: str | None) -> str:
    """Load ImageNet or file weights into a backbone body. Returns what happened, for the record.

    ``spec``: None (random init), ``"imagenet"`` (timm/torchvision weights, when this machine can
    download them), a path to a ``.safetensors`` file (a state dict of the body: timm's MViTv2 or
    torchvision's ResNet50 key names; a ``module.``, ``model.``, ``encoder.`` or ``backbone.`` prefix is
    removed), or a backbone bundle of ``rts ssl`` (a folder; check it with
    :func:`rtscli.modeling.backbone_bundle.check_fits` first). Raises :class:`RtsError` when the file is missing,
    not safetensors, or none of its tensors fits the backbone.
    """
    if not spec:
        return "random"
    body = cast(nn.Module, backbone.body)  # nn.Module's __getattr__ types a submodule as Tensor | Module
    stem_key = "patch_embed.proj.weight" if hasattr(body, "patch_embed") else "conv1.weight"
    if spec == "imagenet":
        try:
            if isinstance(backbone, MViTv2FPN):
                import timm

                ref = timm.create_model(timm_name or "mvitv2_base", pretrained=True, num_classes=0)
                state = ref.state_dict()
            else:
                from torchvision.models import ResNet50_Weights, resnet50

                state = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2).state_dict()
        except Exception as exc:  # no network, no cache: say so and go on with random weights
            log.warning("ImageNet weights for the backbone could not be loaded (%s); starting from random "
                        "weights. Pass --backbone-weights PATH.safetensors to use a local copy.",
                        str(exc).splitlines()[0][:120])
            return "random (imagenet unavailable)"
        source = "imagenet"
    else:
        from pathlib import Path

        from rtscli.modeling.backbone_bundle import is_backbone_bundle

        path = Path(spec)
        if is_backbone_bundle(path):
            path = path / "model.safetensors"
        if not path.exists():
            raise RtsError("backbone weights file not found", path=path, fix="check --backbone-weights")
        if path.suffix != ".safetensors":
            raise RtsError("backbone weights must be a .safetensors file (nothing is unpickled)", path=path,
                           fix="convert it with safetensors.torch.save_file(state_dict, 'x.safetensors')")
        from safetensors.torch import load_file

        state = strip_prefix(load_file(str(path)), set(body.state_dict()))
        source = str(Path(spec))
    if stem_key in state:
        want = body.state_dict()[stem_key].shape[1]
        state[stem_key] = adapt_stem_weight(state[stem_key], want)
    own = body.state_dict()
    # learned at another input size (ImageNet's 224 px, another tile): relative-position tables interpolated
    state = {k: fit_rel_pos(k, v, own[k].shape) if k in own else v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if not usable:
        raise RtsError(f"none of the {len(state)} tensors of the weights fits the {type(backbone).__name__} backbone "
                       f"(e.g. {next(iter(state), 'none')}; it needs e.g. {next(iter(own))})", path=spec,
                       fix="pass a state dict of the same architecture (timm MViTv2 / torchvision ResNet50 names)")
    body.load_state_dict(usable, strict=False)
    missing = sorted(set(own) - set(usable))
    log.info("backbone weights from %s: %d tensors loaded, %d missing, %d with other shapes", source,
             len(usable), len(missing), len(skipped))
    return f"{source} ({len(usable)}/{len(own)} tensors)"
