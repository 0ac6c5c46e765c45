"""Backbones with FPN: MViTv2 (timm) and ResNet50 (torchvision). Each returns P2..P6.

Contract: ``forward(x) -> OrderedDict[str, Tensor]`` with keys ``p2 .. p6`` (strides 4..64), each
with ``out_channels`` channels. The detector does not know which backbone, or how many
modalities, produced them.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

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


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (32, as He et al. 2019), fewer when ``channels`` does not divide by them.

    Source: Wu & He, "Group Normalization" (ECCV 2018); He et al., "Rethinking ImageNet Pre-training" (ICCV 2019):
    GN in the backbone, FPN and heads lets detectors train from random weights with small batches.
    """
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def norm2d(kind: str, channels: int) -> nn.Module | None:
    """The normalisation layer of a conv with ``channels`` outputs: ``ln`` (:class:`LayerNorm2d`), ``gn``
    (:func:`group_norm`) or ``none`` (None)."""
    if kind == "ln":
        return LayerNorm2d(channels)
    if kind == "gn":
        return group_norm(channels)
    return None


def _fpn(in_channels: list[int], cfg: FPNConfig) -> nn.Module:
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    norm = {"ln": LayerNorm2d, "gn": group_norm}.get(cfg.norm)
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

    def depth_of(self, name: str) -> tuple[int, int]:
        """``(layer, layers)`` of the body's parameter ``name`` (a key of ``body.named_parameters()``) for
        layer-wise learning-rate decay: 0 for the patch embedding (and tokens), 1..N for the transformer blocks in
        order; ``layers`` = N + 1 is the FPN's and the heads' (they are not decayed)."""
        blocks = [len(cast(Any, st).blocks) for st in cast(Any, self.body).stages]
        if name.startswith("stages."):
            parts = name.split(".")
            stage, block = int(parts[1]), int(parts[3]) if parts[2] == "blocks" else 0
            return sum(blocks[:stage]) + block + 1, sum(blocks) + 1
        return 0, sum(blocks) + 1


class ResNetFPN(nn.Module):
    """torchvision ResNet-18, -34 or -50 + FPN -> P2..P6 (ResNet50-FPN: the paper's Table 1 baseline).

    ``cfg.norm``: ``frozen_bn`` keeps batch statistics fixed (torchvision's detection default, for ImageNet
    weights); ``gn`` puts GroupNorm in every block, which trains from random weights with batches of a few tiles
    (He et al., "Rethinking ImageNet Pre-training", 2019).
    """

    def __init__(self, *, cfg: BackboneConfig, fpn: FPNConfig, tile_size: int) -> None:
        super().__init__()
        from torchvision.models import resnet18, resnet34, resnet50
        from torchvision.ops import misc

        build = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}[cfg.kind]
        norm = group_norm if cfg.norm == "gn" else misc.FrozenBatchNorm2d
        body = build(weights=None, norm_layer=norm)
        if cfg.in_channels != 3:
            body.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        body.fc = nn.Identity()  # the ImageNet classifier is not part of a detector
        if cfg.norm == "gn":  # each residual branch starts as identity (Goyal et al. 2017; He et al. 2019)
            from torchvision.models.resnet import BasicBlock, Bottleneck

            for m in body.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
        self.body = body
        self.kind, self.norm = cfg.kind, cfg.norm
        wide = 4 if cfg.kind == "resnet50" else 1  # bottleneck blocks widen their output 4x
        self.channels = [64 * wide, 128 * wide, 256 * wide, 512 * wide]
        self.fpn = _fpn(self.channels, fpn)
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

    def depth_of(self, name: str) -> tuple[int, int]:
        """``(layer, layers)`` of the body's parameter ``name`` for layer-wise learning-rate decay: 0 for the stem
        (``conv1``, ``bn1``), 1-4 for ``layer1``-``layer4``; ``layers`` = 5 is the FPN's and the heads'."""
        if name.startswith("layer"):
            return int(name[5]), 5
        return 0, 5


def layer_scales(model: nn.Module, decay: float) -> dict[int, float]:
    """Learning-rate factors of layer-wise decay for every backbone body in ``model`` (a detector, a fused one).

    Every parameter of a backbone's body (:class:`MViTv2FPN`, :class:`ResNetFPN`) gets ``decay ** (layers -
    layer)`` (:meth:`MViTv2FPN.depth_of`): its last block ``decay``, its stem the lowest; the FPN, the RPN and the
    heads, which a pretrained backbone does not bring, are not in the result (factor 1).

    Args:
        model: the module whose parameters are optimized.
        decay: the factor per layer, in (0, 1] (1: every factor 1).

    Returns:
        ``{id(parameter): factor}`` for the parameters of the bodies.

    Source: Bao et al., "BEiT" (2022), section 3.3; He et al., "Masked Autoencoders" (2022), A.1; Xie et al.,
    "SimMIM" (2022): fine-tuning a masked-image-modelling backbone with layer-wise decay.
    """
    out: dict[int, float] = {}
    for m in model.modules():
        if isinstance(m, (MViTv2FPN, ResNetFPN)):
            for name, p in cast(nn.Module, m.body).named_parameters():
                layer, layers = m.depth_of(name)
                out[id(p)] = decay ** (layers - layer)
    return out


def build_backbone(*, cfg: BackboneConfig, fpn: FPNConfig, tile_size: int) -> MViTv2FPN | ResNetFPN:
    """The backbone + FPN of ``cfg.kind``: :class:`MViTv2FPN` or :class:`ResNetFPN` (resnet18, resnet34, resnet50).

    Raises:
        RtsError: an unknown kind.
    """
    if cfg.kind == "mvitv2":
        return MViTv2FPN(cfg=cfg, fpn=fpn, tile_size=tile_size)
    if cfg.kind in ("resnet18", "resnet34", "resnet50"):
        return ResNetFPN(cfg=cfg, fpn=fpn, tile_size=tile_size)
    raise RtsError(f"unknown backbone kind {cfg.kind!r}", fix="use mvitv2, resnet18, resnet34 or resnet50")


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


#: huggingface_hub's switch for machines without internet: set (1, true, yes, on), nothing is downloaded
OFFLINE_ENV = "HF_HUB_OFFLINE"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (read now: huggingface_hub reads it once, at its import)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def imagenet_source(kind: str, timm_name: str | None, norm: str = "frozen_bn") -> str | None:
    """Where ImageNet weights for a backbone come from: ``"timm:<name>"`` (MViTv2 of timm's shape ``name``),
    ``"torchvision:resnet50"`` (with frozen batch norm, as the weights were trained), or None (an MViTv2 of no
    ImageNet-trained shape, e.g. the ``nano`` preset's; a ResNet-18/34 or one with GroupNorm)."""
    if kind == "resnet50" and norm == "frozen_bn":
        return "torchvision:resnet50"
    if kind == "mvitv2" and timm_name:
        return f"timm:{timm_name}"
    return None


def imagenet_presets() -> list[str]:
    """The presets whose backbone has ImageNet weights (``--backbone-weights imagenet``, ``rts weights fetch``)."""
    from rtscli.modeling.config import list_presets, load_preset

    out = []
    for name in list_presets():
        b = load_preset(name).backbone
        if imagenet_source(b.kind, b.timm_name, b.norm):
            out.append(name)
    return out


def download_imagenet_state(source: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``source`` (:func:`imagenet_source`), from the library's cache or downloaded
    (timm: the Hugging Face hub; torchvision: download.pytorch.org). Raises whatever the library raises."""
    lib, name = source.split(":", 1)
    if lib == "timm":
        import timm

        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)


def cached_imagenet_state(source: str) -> dict[str, torch.Tensor] | None:
    """The ImageNet state dict of ``source`` from this machine's cache only (timm: the Hugging Face hub cache;
    torchvision: ``$TORCH_HOME/hub/checkpoints``); None when it is not there. Never touches the network."""
    lib, name = source.split(":", 1)
    if lib == "timm":
        import timm
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None)
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename) if hub_id else None
            if isinstance(found, str):
                model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": found})
                return model.state_dict()
        return None
    from pathlib import Path
    from urllib.parse import urlparse

    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights.IMAGENET1K_V2.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_weights(kind: str, timm_name: str | None, *, preset: str | None = None, fix: str | None = None,
                     what: str = "--backbone-weights imagenet", norm: str = "frozen_bn") -> dict[str, torch.Tensor]:
    """ImageNet weights for a backbone of ``kind`` (timm's ``timm_name`` shape), or a one-line refusal.

    Never falls back to random weights: a run that asked for ImageNet weights and cannot have them stops here,
    before anything is written. With ``HF_HUB_OFFLINE`` set nothing is downloaded: the weights come from the
    library's cache (:func:`cached_imagenet_state`) or not at all.

    Args:
        kind: the backbone kind (:data:`rtscli.modeling.config.BACKBONES`).
        timm_name: the timm model whose ImageNet weights match an MViTv2's shape (None: none does).
        preset: the preset's name, for the messages.
        fix: the fix when the weights cannot be had (default: fetch them elsewhere with ``rts weights fetch``
            and pass the file as ``--backbone-weights``).
        what: what asked for them, at the head of the messages.
        norm: a ResNet's normalisation (ImageNet weights fit ``frozen_bn`` only).

    Returns:
        The ImageNet state dict (timm or torchvision names, the classifier included).

    Raises:
        RtsError: no ImageNet weights exist for this backbone; ``HF_HUB_OFFLINE`` is set and they are not cached;
            the download failed (no network).
    """
    source = imagenet_source(kind, timm_name, norm)
    name = preset or kind
    if source is None:
        raise RtsError(f"{what}: preset {name} has no ImageNet weights (its {kind} backbone has no ImageNet-trained "
                       f"shape); presets with them: {', '.join(imagenet_presets())}",
                       fix="use one of those presets; or train with a .safetensors file or an `rts ssl` bundle as "
                           "--backbone-weights, or without --backbone-weights (random weights)")
    file = f"{name}_imagenet.safetensors"
    fix = fix or (f"on a machine with internet run `rts weights fetch --preset {name} -o {file}`, copy the file "
                  f"here and pass --backbone-weights {file}")
    if offline():
        state = cached_imagenet_state(source)
        if state is None:
            raise RtsError(f"{what}: {OFFLINE_ENV} is set, so the ImageNet weights of {name} "
                           f"({source}) are not downloaded, and this machine has no cached copy", fix=fix)
        log.info("ImageNet weights of %s from the local cache (%s is set)", source, OFFLINE_ENV)
        return state
    try:
        return download_imagenet_state(source)
    except Exception as exc:  # no network, a proxy, a full disk: say so, never train from random weights instead
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise RtsError(f"{what}: the ImageNet weights of {name} ({source}) could not be "
                       f"downloaded ({type(exc).__name__}: {why})", fix=fix) from None


def body_state(state: dict[str, torch.Tensor], *, cfg: BackboneConfig, fpn: FPNConfig,
               tile_size: int) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` (an ImageNet state dict) that a backbone body of ``cfg`` has, under the names
    :func:`load_backbone_weights` reads from a ``.safetensors`` file: the classifier and the final norm left out,
    every tensor contiguous, relative-position tables as learned (they are interpolated when loaded). What
    ``rts weights fetch`` writes.

    Raises:
        RtsError: when a tensor of the body is missing or has another shape (weights of another architecture).
    """
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        bb = build_backbone(cfg=replace(cfg, in_channels=3), fpn=fpn, tile_size=tile_size)
    own = cast(nn.Module, bb.body).state_dict()
    state = strip_prefix(state, set(own))
    kept = {k: v.detach().contiguous() for k, v in state.items() if k in own}
    lacking = [k for k in own if k not in kept]
    wrong = [k for k, v in kept.items() if tuple(v.shape) != tuple(own[k].shape)
             and not (is_rel_pos(k) and tuple(v.shape[1:]) == tuple(own[k].shape[1:]))]
    if lacking or wrong:
        bad = lacking[0] if lacking else f"{wrong[0]} {tuple(kept[wrong[0]].shape)}"
        raise RtsError(f"the downloaded weights do not fit the {cfg.kind} backbone: {len(lacking)} tensors missing, "
                       f"{len(wrong)} with another shape (e.g. {bad})",
                       fix="report it: the preset's timm_name names another architecture")
    return kept


def load_backbone_weights(backbone: nn.Module, spec: str | None, *, timm_name: str | None,
                          preset: str | None = None, imagenet: dict[str, torch.Tensor] | None = None) -> str:
    """Load ImageNet or file weights into a backbone body. Returns what happened, for the record.

    ``spec``: None (random init), ``"imagenet"`` (timm/torchvision weights: ``imagenet`` when they were fetched
    before, else :func:`imagenet_weights`, which refuses when they cannot be had), a path to a ``.safetensors``
    file (a state dict of the body: timm's MViTv2 or torchvision's ResNet50 key names, as ``rts weights fetch``
    writes them; a ``module.``, ``model.``, ``encoder.`` or ``backbone.`` prefix is removed), or a backbone bundle
    of ``rts ssl`` (a folder; check it with :func:`rtscli.modeling.backbone_bundle.check_fits` first). Raises
    :class:`RtsError` when ImageNet weights cannot be had, the file is missing, not safetensors, or none of its
    tensors fits the backbone. ``preset`` names the preset in messages.
    """
    if not spec:
        return "random"
    body = cast(nn.Module, backbone.body)  # nn.Module's __getattr__ types a submodule as Tensor | Module
    stem_key = "patch_embed.proj.weight" if hasattr(body, "patch_embed") else "conv1.weight"
    if spec == "imagenet":
        if imagenet is None:
            kind, norm = ("mvitv2", "frozen_bn") if isinstance(backbone, MViTv2FPN) else (backbone.kind, backbone.norm)
            imagenet = imagenet_weights(str(kind), timm_name, preset=preset, norm=str(norm))
        state = dict(imagenet)  # the caller's dict stays as it was (the stem is adapted below)
        source = "imagenet"
    else:
        from pathlib import Path

        from rtscli.modeling.backbone_bundle import is_backbone_bundle

        path = Path(spec)
        if is_backbone_bundle(path):
            path = path / "model.safetensors"
        if not path.exists():
            raise RtsError("backbone weights file not found", path=path, fix="check --backbone-weights")
        if path.is_dir():  # a folder, but no bundle of rts ssl (a bad config.yaml was refused just above)
            raise RtsError("a folder, but not a backbone bundle of `rts ssl` (it needs model.safetensors and a "
                           "config.yaml of kind rts-ssl-backbone)", path=path,
                           fix="pass a folder made by `rts ssl`, or a .safetensors state dict")
        if path.suffix != ".safetensors":
            raise RtsError("backbone weights must be a .safetensors file (nothing is unpickled)", path=path,
                           fix="convert it with safetensors.torch.save_file(state_dict, 'x.safetensors')")
        from rtscli.io.readers import load_safetensors

        state = strip_prefix(load_safetensors(path, what="backbone weights"), set(body.state_dict()))
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
