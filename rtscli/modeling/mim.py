"""Masked image modelling of one modality's backbone (``rts ssl``): SimMIM.

SimMIM (Xie et al., "SimMIM: a Simple Framework for Masked Image Modeling", CVPR 2022): a share of
square blocks of the input (60% of 32 x 32 blocks, the paper's setting) is hidden by replacing their
embeddings with a learned mask token right after the patch embedding (MViTv2) or the stem convolution
(ResNet50); the backbone encodes the whole tile, and a one-layer decoder (a 1 x 1 convolution and a
pixel shuffle of the backbone's stride-32 features) predicts the tile's normalized values. The loss is
the L1 error on the hidden (and valid) pixels only.

The mask block (32 px) is the backbone's total stride: every stride-32 feature the decoder reads lies
wholly under one hidden or one visible block, and the patch embedding (4 px for MViTv2) hides whole
patches. With ``norm_target`` the target of each block is standardized over its valid pixels and
channels first (MAE's per-patch normalized target: He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, :func:`block_normalized`): the block's mean and contrast are no longer predicted,
only its texture. On `rts synth` scenes (nano, 200 steps) its loss fell as much as SimMIM's (46% vs 50%)
and the two losses are not comparable, so SimMIM's values stay the default.

Why SimMIM and not MaskFeat (Wei et al., CVPR 2022, whose HOG targets the MViTv2 authors designed for
this backbone): HOG describes the gradients of a grey-level natural image; our modalities are NDVI,
near infrared, elevation or any band a user names, normalized per channel, where a histogram of
oriented gradients has no settled meaning and would need per-modality choices (cells, bins, which
channel). Regressing the normalized values works the same for every channel, needs no target
engineering, and is what SimMIM showed works as well for hierarchical backbones (Swin) and for plain
convolutional ones, so the ResNet50 baseline is pretrained the same way.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from rtscli.data.windows import MASK_BLOCK


class MaskedImageModel(nn.Module):
    """A backbone (:func:`rtscli.modeling.backbone.build_backbone`: MViTv2 or ResNet50; its FPN is not used)
    trained by SimMIM. ``forward(x, valid, mask)`` -> ``(loss, reconstruction)``.

    ``x``: (B, C, T, T) normalized input; ``valid``: (B, T, T) bool, pixels that hold data (nodata and
    padding are never reconstructed); ``mask``: (B, T/32, T/32) bool, the hidden blocks. ``target``
    (optional, default ``x``) is what is reconstructed: only its hidden, valid pixels enter the loss.
    ``norm_target``: reconstruct each block of the target standardized (:func:`block_normalized`, MAE's
    target) instead of its values (SimMIM's). The loss is a 0-dim tensor, the mean absolute error per
    hidden valid pixel and channel, in standard deviations of the normalized channels.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, *, block: int = MASK_BLOCK,
                 norm_target: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.block = block
        self.norm_target = norm_target
        # timm's MultiScaleVit or torchvision's ResNet, told apart by their attributes: nn.Module's __getattr__
        # types every submodule as Tensor | Module
        body: Any = backbone.body
        if hasattr(body, "patch_embed"):  # MViTv2 (timm)
            self.kind = "mvitv2"
            width = body.patch_embed.proj.out_channels
            out_dim = body.stages[-1].blocks[-1].dim_out if hasattr(body.stages[-1].blocks[-1], "dim_out") else None
            out_dim = out_dim or cast(Any, backbone.fpn).inner_blocks[-1][0].in_channels  # torchvision's FPN
        else:  # a ResNet (torchvision: 18, 34 or 50)
            self.kind = "resnet"
            width = body.conv1.out_channels
            out_dim = cast(Any, backbone).channels[-1]  # ResNet-18/34: 512, ResNet50: 2048
        self.mask_token = nn.Parameter(torch.zeros(1, width, 1, 1))
        nn.init.normal_(self.mask_token, std=0.02)
        self.norm = nn.LayerNorm(out_dim)
        self.decoder = nn.Sequential(nn.Conv2d(out_dim, block * block * in_channels, kernel_size=1),
                                     nn.PixelShuffle(block))
        self.in_channels = in_channels

    def _hide(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings (B, D, h, w) under hidden blocks with the mask token."""
        m = nn.functional.interpolate(mask[:, None].float(), size=feat.shape[-2:], mode="nearest")
        return feat * (1 - m) + self.mask_token.to(feat.dtype) * m

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone's stride-32 features (B, D, T/32, T/32) of ``x`` with the hidden blocks masked."""
        body: Any = self.backbone.body  # as in __init__: MultiScaleVit or ResNet
        if self.kind == "mvitv2":
            tokens, size = body.patch_embed(x)  # (B, N, D), (h, w) at stride 4
            b, _, d = tokens.shape
            grid = tokens.transpose(1, 2).reshape(b, d, *size)
            tokens = self._hide(grid, mask).flatten(2).transpose(1, 2)
            if body.cls_token is not None:
                tokens = torch.cat((body.cls_token.expand(b, -1, -1), tokens), dim=1)
            if body.pos_embed is not None:
                tokens = tokens + body.pos_embed
            for stage in body.stages:
                tokens, size = stage(tokens, size)
            if body.cls_token is not None:
                tokens = tokens[:, 1:]
            tokens = self.norm(tokens)
            return tokens.transpose(1, 2).reshape(b, -1, *size)
        y = self._hide(body.conv1(x), mask)
        y = body.maxpool(body.relu(body.bn1(y)))
        y = body.layer4(body.layer3(body.layer2(body.layer1(y))))
        return self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor,
                target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.decoder(self.encode(x, mask))
        target = x if target is None else target
        hidden = mask.repeat_interleave(self.block, 1).repeat_interleave(self.block, 2) & valid  # (B, T, T)
        if self.norm_target:
            target = block_normalized(target, valid, self.block)
        w = hidden[:, None].to(recon.dtype)
        n = w.sum() * recon.shape[1]
        loss = ((recon - target).abs() * w).sum() / n.clamp(min=1.0)
        return loss, recon


def block_normalized(x: torch.Tensor, valid: torch.Tensor, block: int, eps: float = 1e-6) -> torch.Tensor:
    """Each ``block`` x ``block`` block of ``x`` standardized over its valid pixels and all its channels: MAE's
    per-patch normalized target (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022; ``eps``
    is MAE's 1e-6, added to the variance).

    Args:
        x: (B, C, T, T) values; T a multiple of ``block``.
        valid: (B, T, T) bool, the pixels that count (statistics and output).
        block: the block side, pixels.
        eps: added to each block's variance.

    Returns:
        (B, C, T, T): ``(x - block mean) / sqrt(block variance + eps)`` at valid pixels, 0 at the others.
    """
    b, c, t, _ = x.shape
    n = t // block
    xb = x.reshape(b, c, n, block, n, block)
    w = valid.reshape(b, 1, n, block, n, block).to(x.dtype)
    cnt = (w.sum(dim=(1, 3, 5), keepdim=True) * c).clamp(min=1.0)
    mean = (xb * w).sum(dim=(1, 3, 5), keepdim=True) / cnt
    var = (((xb - mean) ** 2) * w).sum(dim=(1, 3, 5), keepdim=True) / cnt
    return (((xb - mean) / (var + eps).sqrt()) * w).reshape(b, c, t, t)
