"""Fusion modules: shapes for any modality set, equation (3) by hand, linear attention memory."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from rtscli.errors import RtsError
from rtscli.modeling.fusion import STRATEGIES, Fusion, is_feature_level

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


def test_attention_memory_is_linear_in_tokens():
    """Doubling the side of P2 (4x the tokens) must cost about 4x, not 16x, in peak memory.

    Each size runs in a fresh process; the figure is the peak-RSS increase over a warmed-up state.
    """
    import subprocess
    import sys

    code = (
        "import resource, sys, torch\n"
        "from rtscli.modeling.fusion import WindowAttention\n"
        "torch.set_num_threads(1)\n"
        "att = WindowAttention(64, heads=4, window=8)\n"
        "with torch.no_grad():\n"
        "    att(torch.randn(1, 64, 16, 16), [torch.randn(1, 64, 16, 16)])\n"
        "    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    s = int(sys.argv[1]); x = torch.randn(1, 64, s, s)\n"
        "    att(x, [x])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )

    def peak(side: int) -> int:
        r = subprocess.run([sys.executable, "-c", code, str(side)], capture_output=True, text=True, check=True)
        return int(r.stdout.strip())

    a, b = peak(192), peak(384)
    assert a > 0 and 2.5 < b / a < 6, (a, b)  # dense attention would be ~16x (and 20 GiB at 384)


def test_fusion_errors():
    with pytest.raises(RtsError, match="primary"):
        Fusion(strategy="residual-cross", modalities=["ndvi", "nir"], dim=32)
    with pytest.raises(RtsError, match="unknown feature-level fusion"):
        Fusion(strategy="channel-stack", modalities=["rgb", "nir"], dim=32)
    fusion = Fusion(strategy="conv", modalities=["rgb", "nir"], dim=32, heads=4)
    with pytest.raises(RtsError, match="nir"):
        fusion({"rgb": _fpn(0)})
