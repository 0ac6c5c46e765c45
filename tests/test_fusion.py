"""Fusion modules: shapes for any modality set, equation (3) by hand, linear attention memory."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from rtscli.errors import RtsError
from rtscli.modeling.fusion import STRATEGIES, Fusion, WindowAttention, is_feature_level

LEVELS = ("p2", "p3", "p4", "p5", "p6")


def _fpn(seed: int, c: int = 32, side: int = 32) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((lv, torch.randn(2, c, side >> i, side >> i, generator=g)) for i, lv in enumerate(LEVELS))


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if is_feature_level(s)])
@pytest.mark.parametrize("mods", [["rgb", "ndvi"], ["rgb", "ndvi", "nir"], ["nir", "rgb", "dem", "ndvi"]])
def test_every_strategy_keeps_keys_and_shapes(strategy, mods):
    fusion = Fusion(strategy=strategy, modalities=mods, dim=32, heads=4, window=4)
    feats = {m: _fpn(i) for i, m in enumerate(mods)}
    out = fusion(feats)
    assert list(out) == list(LEVELS)
    for lv in LEVELS:
        assert out[lv].shape == feats["rgb"][lv].shape and torch.isfinite(out[lv]).all()
    out["p2"].sum().backward()  # trainable end to end


def test_residual_cross_is_equation_3():
    """F'' = Conv(F_rgb + sum_i F_i + sum_i CrossAttn_i(F_rgb, F_i)), with known attention weights."""
    torch.manual_seed(0)
    c, heads, w = 4, 1, 2
    fusion = Fusion(strategy="residual-cross", modalities=["rgb", "ndvi", "nir"], dim=c, heads=heads,
                    window=w, levels=("p2",))
    lvl = fusion.fuse["p2"]
    for att in lvl.cross:  # identity projections, no bias, no norm effects: attention is plain softmax(QK^T)V
        for lin in (att.q, att.proj):
            lin.weight.data = torch.eye(c)
            lin.bias.data.zero_()
        att.kv.weight.data = torch.cat([torch.eye(c), torch.eye(c)])
        att.kv.bias.data.zero_()
        att.rel_bias.data.zero_()
        att.norm_q = torch.nn.Identity()
        att.norm_kv = torch.nn.Identity()
    x = {m: OrderedDict(p2=torch.randn(1, c, 2, 2)) for m in ("rgb", "ndvi", "nir")}

    def cross(q, kv):  # one 2 x 2 window: 4 tokens
        qt = q.flatten(2)[0].T  # (4, c)
        kt = kv.flatten(2)[0].T
        a = torch.softmax(qt @ kt.T / c**0.5, dim=-1)
        return (a @ kt).T.reshape(1, c, 2, 2)

    rgb, ndvi, nir = x["rgb"]["p2"], x["ndvi"]["p2"], x["nir"]["p2"]
    inner = rgb + ndvi + nir + cross(rgb, ndvi) + cross(rgb, nir)
    expected = lvl.out(inner)
    got = fusion(x)["p2"]
    assert torch.allclose(got, expected, atol=1e-5)


def test_attention_memory_is_linear_in_tokens(monkeypatch):
    """Doubling the side of P2 (4x the tokens) must cost 4x, not 16x, in attention scores.

    The score matrices are what dense attention makes quadratic; their size is read off the
    tensors handed to scaled_dot_product_attention (deterministic, unlike RSS readings).
    """
    import torch.nn.functional as F

    import rtscli.modeling.fusion as fusion_mod

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])  # windows x heads x Lq x Lk
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(fusion_mod.F, "scaled_dot_product_attention", spy)
    att = WindowAttention(16, heads=2, window=8)
    scores = []
    for side in (64, 128, 256):
        seen.clear()
        with torch.no_grad():
            x = torch.randn(1, 16, side, side)
            assert att(x, [x]).shape == x.shape
        scores.append(seen[0])
    assert scores[1] == 4 * scores[0] and scores[2] == 4 * scores[1]
    assert scores[2] == 2 * 256 * 256 * 64  # heads x tokens x window tokens; dense would be 2 x 65536^2


def test_fusion_errors():
    with pytest.raises(RtsError, match="primary"):
        Fusion(strategy="residual-cross", modalities=["ndvi", "nir"], dim=32)
    with pytest.raises(RtsError, match="unknown feature-level fusion"):
        Fusion(strategy="channel-stack", modalities=["rgb", "nir"], dim=32)
    fusion = Fusion(strategy="conv", modalities=["rgb", "nir"], dim=32, heads=4)
    with pytest.raises(RtsError, match="nir"):
        fusion({"rgb": _fpn(0)})
