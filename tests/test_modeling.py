"""The detector: presets and parameter counts, backbone shapes, losses, cascade logic, weights."""

from __future__ import annotations

import math

import pytest
import torch

from rtscli.errors import RtsError
from rtscli.modeling.backbone import adapt_stem_weight, build_backbone, load_backbone_weights
from rtscli.modeling.config import ModelConfig, list_presets, load_preset
from rtscli.modeling.detector import Detector, count_parameters

PAPER_PARAMS = {"cascade-mvitv2-t": 76e6, "cascade-mvitv2-s": 87e6, "cascade-mvitv2-b": 103e6}


@pytest.mark.parametrize("name,expected", sorted(PAPER_PARAMS.items()))
def test_parameter_counts_match_the_paper_and_detectron2(name, expected):
    with torch.device("meta"):
        model = Detector(cfg=load_preset(name))
    total, _ = count_parameters(model)
    assert abs(total - expected) / expected < 0.10, total


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_gives_p2_to_p6_at_its_tile_size(name):
    cfg = load_preset(name)
    with torch.device("meta"):
        bb = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
        out = bb(torch.empty(1, cfg.backbone.in_channels, cfg.tile_size, cfg.tile_size))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for level, stride in zip(out, (4, 8, 16, 32, 64), strict=True):
        assert tuple(out[level].shape) == (1, cfg.fpn.out_channels, cfg.tile_size // stride, cfg.tile_size // stride)


def test_preset_round_trips_through_dict_and_rejects_unknown_keys():
    cfg = load_preset("nano")
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    bad = cfg.to_dict()
    bad["backbone"]["depth"] = 3
    with pytest.raises(RtsError, match="unknown key"):
        ModelConfig.from_dict(bad)
    with pytest.raises(RtsError, match="unknown model preset"):
        load_preset("cascade-mvitv2-xxl")


def _targets(n_img=2, size=256):
    out = []
    for i in range(n_img):
        boxes = torch.tensor([[40.0 + 10 * i, 50.0, 120.0, 150.0], [150.0, 20.0, 200.0, 90.0]])
        masks = torch.zeros((2, size, size), dtype=torch.uint8)
        for k, b in enumerate(boxes.int().tolist()):
            masks[k, b[1]:b[3], b[0]:b[2]] = 1
        out.append({"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64), "masks": masks})
    return out


def _images(targets, channels=3, size=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(targets), channels, size, size, generator=g) * 0.1
    for i, t in enumerate(targets):
        x[i, :, t["masks"].any(0).bool()] += 1.0  # the objects are visible
    return x


def test_losses_have_stable_names_and_are_finite():
    torch.manual_seed(0)
    model = Detector(cfg=load_preset("nano"))
    t = _targets()
    losses = model.losses(_images(t), t)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls_s0", "loss_box_s0", "loss_cls_s1",
                           "loss_box_s1", "loss_cls_s2", "loss_box_s2", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # an image without any slump is a valid training sample
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros((0, 256, 256), dtype=torch.uint8)}]
    losses = model.losses(torch.randn(1, 3, 256, 256), empty)
    assert all(torch.isfinite(v) for v in losses.values())


def test_few_steps_on_one_chip_reduce_the_loss():
    torch.manual_seed(0)
    model = Detector(cfg=load_preset("nano"))
    t = _targets(1)
    x = _images(t)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        loss = sum(model.losses(x, t).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert min(history[-3:]) < 0.5 * history[0]


def test_predict_returns_boxes_scores_and_roi_masks_and_checks_tile_size():
    model = Detector(cfg=load_preset("nano")).eval()
    out = model.predict(torch.randn(2, 3, 256, 256))
    assert len(out) == 2
    for r in out:
        assert set(r) == {"boxes", "scores", "labels", "mask_probs"}
        assert r["mask_probs"].shape[1:] == (1, 28, 28) and len(r["mask_probs"]) == len(r["boxes"])
        if len(r["boxes"]):
            assert r["boxes"].min() >= 0 and r["boxes"].max() <= 256
    with pytest.raises(RtsError, match="256 x 256 tiles"):
        model.predict(torch.randn(1, 3, 224, 224))


def test_detection_only_variant_and_more_input_channels():
    cfg = load_preset("nano")
    cfg.roi_heads.mask = False
    cfg.backbone.in_channels = 5  # e.g. channel-stacked RGB + NDVI + NIR
    model = Detector(cfg=cfg)
    t = _targets(1)
    losses = model.losses(_images(t, channels=5), t)
    assert "loss_mask" not in losses
    r = model.eval().predict(torch.randn(1, 5, 256, 256))[0]
    assert "mask_probs" not in r


def test_cascade_stages_relabel_at_their_own_iou():
    model = Detector(cfg=load_preset("nano"))
    heads = model.roi_heads
    gt = [{"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([1])}]
    # IoU with the gt: 1.0, 0.64 (80x80 inside), 0.55, 0.3
    props = [torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 80.0, 80.0], [0.0, 0.0, 100.0, 55.0],
                           [0.0, 0.0, 30.0, 100.0]])]
    labels = [heads.match(k, props, gt)[1][0].tolist() for k in range(3)]
    assert labels == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]


def test_cascade_inference_averages_stage_scores_and_keeps_last_stage_boxes(monkeypatch):
    model = Detector(cfg=load_preset("nano")).eval()
    heads = model.roi_heads
    props = [torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 100.0, 180.0, 150.0]])]
    stage_logits = [torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]]),
                    torch.tensor([[0.0, 0.0], [0.0, 1.0]])]
    shift = [torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])]

    def fake_stage(k, features, boxes, image_sizes):
        return stage_logits[k], shift[k]

    monkeypatch.setattr(heads, "_stage", fake_stage)
    heads.cfg.score_thresh = 0.0
    heads.mask_head = None  # boxes and scores only
    out = heads.predict({}, props, [(256, 256)])[0]
    expected = torch.stack([torch.softmax(s, -1)[:, 1] for s in stage_logits]).mean(0)
    got = {tuple(b.round().tolist()): s.item() for b, s in zip(out["boxes"], out["scores"], strict=True)}
    # box 2 moved by the last stage's deltas only: dx = 0.1 * width / 30 (weights 30,30,15,15)
    dx = 0.1 * 80 / 30
    assert got[(10.0, 10.0, 60.0, 60.0)] == pytest.approx(expected[0].item(), abs=1e-6)
    assert got[tuple(float(round(v)) for v in (100 + dx, 100, 180 + dx, 150))] == pytest.approx(expected[1].item())
    assert not math.isclose(expected[1].item(), torch.softmax(stage_logits[2], -1)[1, 1].item())


def test_stem_adaptation_repeats_and_rescales():
    w = torch.randn(8, 3, 7, 7)
    w5 = adapt_stem_weight(w, 5)
    assert w5.shape == (8, 5, 7, 7)
    assert torch.allclose(w5[:, :3], w * 3 / 5) and torch.allclose(w5[:, 3:], w[:, :2] * 3 / 5)
    # with a multiple of 3 channels a flat input gives exactly the pretrained response
    w6 = adapt_stem_weight(w, 6)
    assert torch.allclose(w.sum(dim=1), w6.sum(dim=1), atol=1e-6)


def test_backbone_weights_from_file_and_offline_imagenet(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    cfg = load_preset("nano")
    a = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    save_file({k: v.contiguous() for k, v in a.body.state_dict().items()}, str(tmp_path / "w.safetensors"))
    cfg.backbone.in_channels = 4
    b = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    note = load_backbone_weights(b, str(tmp_path / "w.safetensors"), timm_name=None)
    assert "w.safetensors" in note
    stem_a, stem_b = a.body.patch_embed.proj.weight, b.body.patch_embed.proj.weight
    assert torch.allclose(stem_b, adapt_stem_weight(stem_a, 4))  # 4-band input keeps the pretrained stem
    with pytest.raises(RtsError, match="safetensors"):
        (tmp_path / "w.pth").write_bytes(b"x")
        load_backbone_weights(b, str(tmp_path / "w.pth"), timm_name=None)

    import timm

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(RtsError, match=r"could not be downloaded \(OSError: no network\) -- .*rts weights fetch"):
        load_backbone_weights(b, "imagenet", timm_name="mvitv2_base")  # never random weights instead


def test_crowded_chip_trains():
    """More slumps than sampled positives: the mask loss must index per-image ground truth."""
    torch.manual_seed(0)
    model = Detector(cfg=load_preset("nano"))
    boxes, masks = [], torch.zeros((40, 256, 256), dtype=torch.uint8)
    for k in range(40):
        r, c = divmod(k, 8)
        b = [c * 32 + 2, r * 50 + 2, c * 32 + 28, r * 50 + 40]
        boxes.append(b)
        masks[k, b[1]:b[3], b[0]:b[2]] = 1
    t = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(40, dtype=torch.int64),
          "masks": masks}]
    losses = model.losses(_images(t), t)
    assert torch.isfinite(losses["loss_mask"])


def test_the_cpu_preset_has_groupnorm_everywhere_and_learns_a_chip_from_random_weights():
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    model = Detector(cfg=load_preset("cpu-r18"))
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and FrozenBatchNorm2d not in kinds and nn.BatchNorm2d not in kinds
    gn = [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)]
    assert any(n.startswith("backbone.body.") for n in gn) and any(n.startswith("backbone.fpn.") for n in gn)
    assert any(".box_heads." in n for n in gn) and any(".mask_head." in n for n in gn)
    body = model.backbone.body
    assert float(body.layer1[0].bn2.weight.abs().sum()) == 0.0  # residual branches start as identity
    t = _targets(1)
    x = _images(t)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        loss = sum(model.losses(x, t).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert min(history[-3:]) < 0.5 * history[0]
    # its GroupNorm ResNet has no ImageNet weights: asking for them is refused in one line
    from rtscli.modeling.backbone import imagenet_weights

    with pytest.raises(RtsError, match="has no ImageNet weights"):
        imagenet_weights("resnet18", None, preset="cpu-r18", norm="gn")
    bad = load_preset("cpu-r18").to_dict()
    bad["fpn"]["norm"] = "bn"
    with pytest.raises(RtsError, match="unknown model cpu-r18: fpn norm"):
        ModelConfig.from_dict(bad)


@pytest.mark.parametrize("name", ["nano", "cpu-r18"])
def test_layer_decay_gives_the_stem_the_lowest_rate_and_leaves_fpn_and_heads_alone(name):
    from rtscli.engine.lightning_task import optimizer_and_schedule
    from rtscli.engine.train_settings import TrainSettings
    from rtscli.modeling.backbone import layer_scales

    model = Detector(cfg=load_preset(name))
    scales = layer_scales(model, 0.5)
    named = dict(model.named_parameters())
    stem = model.backbone.stem().weight
    assert scales[id(stem)] == min(scales.values())
    assert max(scales.values()) == 0.5  # the top block
    assert not any(id(p) in scales for n, p in named.items() if not n.startswith("backbone.body."))

    class Holder(torch.nn.Module):  # what the Lightning module looks like to the optimizer
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._trainer = None

    holder = Holder()
    opt = optimizer_and_schedule(holder, TrainSettings(base_lr=1.6e-3, batch_size=16, layer_decay=0.5),  # type: ignore[arg-type]
                                 total_steps=100)["optimizer"]
    by_param = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the warmup
    assert by_param[id(stem)] == pytest.approx(1.6e-3 * scales[id(stem)])
    head = next(p for n, p in named.items() if ".box_predictors." in n)
    assert by_param[id(head)] == pytest.approx(1.6e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)
    flat = optimizer_and_schedule(holder, TrainSettings(base_lr=1.6e-3, batch_size=16), 100)["optimizer"]  # type: ignore[arg-type]
    assert len(flat.param_groups) == 1
