"""Masked image modelling of one modality's backbone (``rts ssl``): SimMIM.

SimMIM (Xie et al., "SimMIM: a Simple Framework for Masked Image Modeling", CVPR 2022): a share of
square blocks of the input (60% of 32 x 32 blocks, the paper's setting) is hidden by replacing their
embeddings with a learned mask token right after the patch embedding (MViTv2) or the stem convolution
(ResNet50); the backbone encodes the whole tile, and a one-layer decoder (a 1 x 1 convolution and a
pixel shuffle of the backbone's stride-32 features) predicts the tile's normalized values. The loss is
the L1 error on the hidden (and valid) pixels only.

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
    """

    def __init__(self, backbone: nn.Module, in_channels: int, *, block: int = MASK_BLOCK) -> None:
        super().__init__()
        self.backbone = backbone
        self.block = block
        # timm's MultiScaleVit or torchvision's ResNet, told apart by their attributes: nn.Module's __getattr__
        # types every submodule as Tensor | Module
        body: Any = backbone.body
        if hasattr(body, "patch_embed"):  # MViTv2 (timm)
            self.kind = "mvitv2"
            width = body.patch_embed.proj.out_channels
            out_dim = body.stages[-1].blocks[-1].dim_out if hasattr(body.stages[-1].blocks[-1], "dim_out") else None
            out_dim = out_dim or cast(Any, backbone.fpn).inner_blocks[-1][0].in_channels  # torchvision's FPN
        else:  # ResNet50 (torchvision)
            self.kind = "resnet50"
            width = body.conv1.out_channels
            out_dim = 2048
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
        w = hidden[:, None].to(recon.dtype)
        n = w.sum() * recon.shape[1]
        loss = ((recon - target).abs() * w).sum() / n.clamp(min=1.0)
        return loss, recon
