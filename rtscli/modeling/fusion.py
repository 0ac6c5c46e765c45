"""Feature-level fusion of modalities: one FPN dict per modality in, one FPN dict out.

Every strategy of the paper, selectable by name (``STRATEGIES``). With ``P`` the primary modality
(RGB by default) and ``A_i`` the auxiliary ones, on every FPN level separately:

``conv``              F = Conv1x1(concat(P, A_1, ...))
``stacked-attn``      F = mean over modalities of SelfAttn(stacked tokens of all modalities)
``cross-attn``        F = Conv(sum_i CrossAttn_i(P, A_i))             queries P, keys/values A_i
``residual-conv``     F = Conv(P + sum_i A_i + Conv1x1(concat(P, A_1, ...)))
``residual-stacked``  F = Conv(P + sum_i A_i + mean SelfAttn(stacked tokens))
``residual-cross``    F = Conv(P + sum_i A_i + sum_i CrossAttn_i(P, A_i))   the paper's eqs. (1)-(3)

(``channel-stack``, the data-level fusion, is not a module: it stacks all channels into one
backbone input; see :func:`is_feature_level`.) Any number of auxiliary modalities works, one
attention layer each; dimensions never change, so the detector is the same for any modality set.

Attention cost. P2 of a 1024 px tile has 256 x 256 = 65,536 tokens; dense global attention
would need a 65,536^2 matrix per head (16 GiB in fp32). Attention here is computed in
non-overlapping local windows of ``window`` x ``window`` tokens (default 8: 64 tokens), with a
learned relative-position bias per window offset (as Swin), through
``torch.nn.functional.scaled_dot_product_attention`` so GPUs use fused kernels. Memory is
linear in the number of tokens: per head, N / w^2 windows x (w^2)^2 scores = N x w^2 values
(65,536 x 64 x 4 bytes = 16 MiB per head at P2 for cross-attention; stacked attention over M
modalities attends over M x w^2 tokens per window, M^2 times that). Modalities are co-registered,
so the local window is where the matching content is; coarser levels (P5, P6) cover a wider area
per window.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtscli.errors import RtsError, unknown_choice

STRATEGIES = ("channel-stack", "conv", "stacked-attn", "cross-attn", "residual-conv", "residual-stacked",
              "residual-cross")


def is_feature_level(strategy: str) -> bool:
    return strategy != "channel-stack"


def _windows(x: Tensor, w: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """(B, C, H, W) -> (B * nWin, w*w, C), zero-padded to multiples of ``w``."""
    b, c, h, wd = x.shape
    ph, pw = (-h) % w, (-wd) % w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hh, ww = x.shape[-2:]
    x = x.view(b, c, hh // w, w, ww // w, w).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * (hh // w) * (ww // w), w * w, c), (b, h, wd, hh)


def _unwindows(t: Tensor, meta: tuple[int, int, int, int], w: int) -> Tensor:
    b, h, wd, hh = meta
    ww = wd + (-wd) % w
    c = t.shape[-1]
    x = t.view(b, hh // w, ww // w, w, w, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)
    return x[:, :, :h, :wd]


class WindowAttention(nn.Module):
    """Multi-head attention inside local windows, queries from ``x``, keys/values from ``ctx``.

    ``ctx`` holds one or more maps (stacked along the token axis inside each window); a learned
    relative-position bias gives every query-key pair its spatial offset.
    """

    def __init__(self, dim: int, heads: int = 8, window: int = 8, contexts: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise RtsError(f"fusion: {dim} channels cannot be split into {heads} heads", fix="use heads dividing C")
        self.dim, self.heads, self.window, self.contexts = dim, heads, window, contexts
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        n = 2 * window - 1
        self.rel_bias = nn.Parameter(torch.zeros(heads, n * n))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)

    def bias(self, w: int) -> Tensor:
        """(heads, w*w, contexts*w*w) relative-position bias for a window of side ``w`` <= window."""
        n, off = 2 * self.window - 1, self.window - 1
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + off
        idx = (rel[0] * n + rel[1]).to(self.rel_bias.device)
        return self.rel_bias[:, idx].repeat(1, 1, self.contexts)  # same offsets for every stacked map

    def forward(self, x: Tensor, ctx: list[Tensor]) -> Tensor:
        h, wd = x.shape[-2:]
        w = min(self.window, h, wd)  # coarse levels (e.g. P6 4 x 4) use one smaller window
        qt, meta = _windows(x, w)
        kt = torch.cat([_windows(c, w)[0] for c in ctx], dim=1)
        nw, lq, c = qt.shape
        hd = c // self.heads
        q = self.q(self.norm_q(qt)).view(nw, lq, self.heads, hd).transpose(1, 2)
        kv = self.kv(self.norm_kv(kt)).view(nw, kt.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        mask = self.bias(w).to(q.dtype)
        if h % w or wd % w:  # padded tokens at the map's edge are never attended to
            valid = _windows(torch.ones_like(x[:, :1]), w)[0][..., 0] > 0  # (nw, w*w)
            pad = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
            mask = mask[None] + pad.repeat(1, self.contexts)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(nw, lq, c))
        return _unwindows(out, meta, w)


class LevelFusion(nn.Module):
    """The fusion of one FPN level for one strategy (see the module docstring)."""

    def __init__(self, strategy: str, dim: int, n_aux: int, *, heads: int = 8, window: int = 8) -> None:
        super().__init__()
        self.strategy = strategy
        m = n_aux + 1
        self.cross = nn.ModuleList()
        self.stacked: WindowAttention | None = None
        self.cat: nn.Conv2d | None = None
        if strategy in ("cross-attn", "residual-cross"):
            self.cross = nn.ModuleList(WindowAttention(dim, heads, window) for _ in range(n_aux))
        elif strategy in ("stacked-attn", "residual-stacked"):
            self.stacked = WindowAttention(dim, heads, window, contexts=m)
        elif strategy in ("conv", "residual-conv"):
            self.cat = nn.Conv2d(m * dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 3, padding=1) if strategy != "conv" else nn.Identity()

    def forward(self, primary: Tensor, aux: list[Tensor]) -> Tensor:
        s = self.strategy
        if s == "conv":
            assert self.cat is not None  # built for "conv"
            return self.cat(torch.cat([primary, *aux], dim=1))
        parts: list[Tensor] = []
        if s.startswith("residual"):
            parts += [primary, *aux]
        if self.cross:
            parts += [att(primary, [a]) for att, a in zip(self.cross, aux, strict=True)]
        elif self.stacked is not None:
            maps = [primary, *aux]
            parts.append(torch.stack([self.stacked(x, maps) for x in maps]).mean(0))
        elif self.cat is not None:
            parts.append(self.cat(torch.cat([primary, *aux], dim=1)))
        return self.out(torch.stack(parts).sum(0))


class Fusion(nn.Module):
    """Fuse ``{modality: FPN dict}`` into one FPN dict with the same keys and shapes."""

    def __init__(self, *, strategy: str, modalities: list[str], primary: str = "rgb", dim: int = 256,
                 levels: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6"), heads: int = 8, window: int = 8) -> None:
        super().__init__()
        if strategy not in STRATEGIES or not is_feature_level(strategy):
            raise unknown_choice("feature-level fusion strategy", strategy,
                                 [s for s in STRATEGIES if is_feature_level(s)])
        if primary not in modalities:
            raise RtsError(f"the primary modality {primary!r} is not among {', '.join(modalities)}",
                           fix="include it, or choose another primary modality")
        if len(modalities) < 2:
            raise RtsError("fusion needs at least two modalities", fix="e.g. --modalities rgb,ndvi")
        self.strategy, self.primary = strategy, primary
        self.aux = [m for m in modalities if m != primary]
        self.levels = levels
        self.fuse = nn.ModuleDict({lv: LevelFusion(strategy, dim, len(self.aux), heads=heads, window=window)
                                   for lv in levels})

    def forward(self, feats: dict[str, "OrderedDict[str, Tensor]"]) -> "OrderedDict[str, Tensor]":
        missing = [m for m in [self.primary, *self.aux] if m not in feats]
        if missing:
            raise RtsError(f"fusion: no features for modality {', '.join(missing)}", fix="pass every modality")
        p = feats[self.primary]
        return OrderedDict((lv, self.fuse[lv](p[lv], [feats[a][lv] for a in self.aux])) for lv in self.levels)
