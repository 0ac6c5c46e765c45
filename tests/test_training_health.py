"""Whether training is learning: anchor coverage at the start, the detector's side statistics, the collapse
warning and the AP50-0 message (nano preset, tiny chips, CPU)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
import yaml

from conftest import apart, paper_sample, prepared_samples, write_tif
from rtscli.engine.training_health import TRY, CollapseWatch, coverage_warning, report_coverage
from rtscli.modeling.anchors import anchor_coverage, best_anchor_iou, tile_anchors
from rtscli.modeling.config import load_preset

RUN = ["--preset", "nano", "--workers", "0", "--batch-size", "2", "--lr", "0.004", "--warmup-steps", "2"]
HEALTH = {"rpn_pos_per_img", "rpn_top_fg", "roi_pos_per_img_s0", "roi_pos_per_img_s1", "roi_pos_per_img_s2",
          "roi_pos_fg"}


# -- the collapse warning ---------------------------------------------------------------------------------------
def test_collapse_watch_warns_once_after_the_warmup_and_patience_bad_steps():
    bad = {"images_with_gt": 2, "rpn_pos_per_img": 0.0, "rpn_top_fg": 0.3}
    good = {"images_with_gt": 2, "rpn_pos_per_img": 4.5, "rpn_top_fg": 0.4}
    w = CollapseWatch(warmup=10, total_steps=200)
    assert w.patience == 20 and CollapseWatch(warmup=10, total_steps=2000).patience == 100  # max(20, 5%)
    assert all(w.update(s, **bad) is None for s in range(1, 11))  # the warmup does not count
    assert all(w.update(s, **bad) is None for s in range(11, 30))  # 19 bad steps in a row
    assert w.update(30, **good) is None and w.streak == 0  # a healthy step ends the streak
    steps = list(range(31, 60))
    said = []
    for s in steps:
        if s == 40:  # a step without any slump neither counts nor breaks the streak
            assert w.update(s, images_with_gt=0, rpn_pos_per_img=0.0, rpn_top_fg=0.0) is None
            continue
        said.append((s, w.update(s, **bad)))
    warnings = [(s, m) for s, m in said if m]
    assert [s for s, _ in warnings] == [51]  # the 20th bad step after 30 (40 had no slump), once
    msg = warnings[0][1]
    assert "collapsed" in msg and "at step 51" in msg and "steps 31-51" in msg and "no RPN proposal" in msg, msg
    assert TRY in msg and "--lr" in msg and "rts ssl" in msg and "--anchors auto" in msg
    assert w.fired == {"step": 51, "reason": w.fired["reason"]} and "20 steps in a row" in w.fired["reason"]

    # RPN positives but background-only scores count too; healthy stats never warn
    low = CollapseWatch(warmup=2, total_steps=100)
    msgs = [low.update(s, images_with_gt=1, rpn_pos_per_img=3.0, rpn_top_fg=0.01) for s in range(1, 40)]
    assert sum(m is not None for m in msgs) == 1 and "mean slump probability was 0.010" in next(m for m in msgs if m)
    healthy = CollapseWatch(warmup=2, total_steps=100)
    assert all(healthy.update(s, **good) is None for s in range(1, 500)) and healthy.fired is None


# -- anchor coverage --------------------------------------------------------------------------------------------
def _xywh(side: float, n: int, tile: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, tile - side, (n, 2))
    return np.hstack([xy, np.full((n, 2), side)])


def test_best_anchor_iou_is_the_best_over_all_the_tiles_anchors():
    """The 3 x 3 cells compared per level give the same best IoU as every anchor of the tile (also at 288 px,
    where torchvision's P6 stride is 288 // 5 = 57, not 64)."""
    from torchvision.ops import box_iou

    rpn = load_preset("nano").rpn
    rng = np.random.default_rng(1)
    for tile in (256, 288):
        xywh = np.hstack([rng.uniform(0, tile - 10, (300, 2)), rng.uniform(3, 200, (300, 2))])
        boxes = torch.from_numpy(np.hstack([xywh[:, :2], (xywh[:, :2] + xywh[:, 2:]).clip(0, tile)])).float()
        levels = tile_anchors(rpn, tile)
        every = torch.cat([lv.reshape(-1, 4) for lv in levels])
        assert torch.allclose(best_anchor_iou(boxes, levels), box_iou(boxes, every).max(1).values, atol=1e-5)


def test_anchor_coverage_of_boxes_too_small_and_boxes_that_fit(caplog):
    cfg = load_preset("nano")  # anchors 16..256 px, tile 256
    tiny = anchor_coverage(_xywh(4, 500, 256), cfg.rpn, 256)
    assert tiny is not None and tiny.iou05 < 0.05 and tiny.by_size["small"]["boxes"] == 500
    warning = coverage_warning(tiny.as_dict())
    assert warning is not None and "no anchor at IoU >= 0.5" in warning and "--anchors" in warning, warning
    assert "--anchors 8,16,32,64,128" in warning
    # boxes of the anchors' own sizes, centred on anchor cells: every one has an anchor at IoU >= 0.7
    fit = np.array([[c - s / 2, c - s / 2, s, s] for s in (16, 32, 64) for c in range(32, 224, 16)], float)
    cov = anchor_coverage(fit, cfg.rpn, 256)
    assert cov is not None and cov.iou07 == pytest.approx(1.0) and cov.iou05 == pytest.approx(1.0)
    assert coverage_warning(cov.as_dict()) is None and cov.side_median == 32.0 and cov.tile == 256
    # anywhere in the tile, boxes the anchors fit are nearly all covered at IoU >= 0.5
    assert anchor_coverage(_xywh(40, 500, 256), cfg.rpn, 256).iou05 > 0.95
    # at most max_boxes are measured; the log says what was measured
    big = _xywh(4, 5000, 256)
    assert anchor_coverage(big, cfg.rpn, 256, max_boxes=1000).boxes == 1000
    with caplog.at_level(logging.INFO, logger="rtscli"):
        rec = report_coverage({"annotations": [{"bbox": list(b), "iscrowd": 0} for b in big]}, cfg)
    assert rec is not None and rec["total"] == 5000 and rec["boxes"] == 4000 and rec["warning"]
    text = caplog.text
    assert "anchor coverage of the training slumps (4000 of 5000 boxes" in text and "by size" in text
    assert any(r.levelno == logging.WARNING and "no anchor at IoU >= 0.5" in r.getMessage() for r in caplog.records)


# -- the detector's side statistics -----------------------------------------------------------------------------
def test_detector_side_statistics_leave_the_losses_alone_and_skip_the_appended_truth():
    from rtscli.modeling.detector import Detector

    torch.manual_seed(0)
    model = Detector(cfg=load_preset("nano")).train()
    x = torch.randn(2, 3, 256, 256) * 0.1
    # image 0: one slump of 6 x 6 px, far smaller than any anchor (16 px): no proposal reaches IoU 0.5 with it,
    # but the box heads add it to the proposals (IoU 1), so stage 0 has positives; image 1: no slump
    masks = torch.zeros(1, 256, 256, dtype=torch.uint8)
    masks[0, 100:106, 100:106] = 1
    targets = [{"boxes": torch.tensor([[100.0, 100.0, 106.0, 106.0]]), "labels": torch.ones(1, dtype=torch.int64),
                "masks": masks},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, 256, 256), dtype=torch.uint8)}]
    torch.manual_seed(1)
    plain = model.losses(x, targets)
    torch.manual_seed(1)
    stats: dict[str, torch.Tensor] = {}
    with_stats = model.losses(x, targets, stats=stats)
    assert set(with_stats) == set(plain) and all(torch.equal(plain[k], with_stats[k]) for k in plain)
    assert set(stats) == HEALTH | {"images_with_gt", "roi_pos_last"}
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    assert stats["images_with_gt"] == 1 and stats["rpn_pos_per_img"] == 0
    assert stats["roi_pos_per_img_s0"] >= 1  # the appended ground-truth box
    assert 0.3 < float(stats["rpn_top_fg"]) < 0.7  # an untrained classifier: about 1/2 for every box
    assert stats["roi_pos_last"] >= 1 and 0.0 < float(stats["roi_pos_fg"]) < 1.0

    # slumps where the RPN proposes boxes: its positives are the proposals at IoU >= 0.5 with them, counted here
    # alike (the proposals do not depend on the targets)
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    with torch.no_grad():
        proposals = model.rpn(ImageList(x[:1], [(256, 256)]), model.features(x[:1]), targets[:1])[0][0]
    gt = (proposals[[3, 7, 40]] + 1.0).clamp(0, 255).round()
    masks = torch.zeros(3, 256, 256, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(gt.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    stats = {}
    model.losses(x[:1], [{"boxes": gt, "labels": torch.ones(3, dtype=torch.int64), "masks": masks}], stats=stats)
    expected = int((box_iou(gt, proposals).max(0).values >= 0.5).sum())
    assert expected >= 3 and float(stats["rpn_pos_per_img"]) == expected and stats["images_with_gt"] == 1


# -- end to end -------------------------------------------------------------------------------------------------
def _header(path) -> list[str]:
    with path.open() as fh:
        return next(csv.reader(fh))


def test_pretrain_logs_coverage_and_health_columns_that_rts_info_shows(tmp_path, rts, monkeypatch):
    data = prepared_samples(tmp_path, 8)
    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")
    run = tmp_path / "rgb"
    r = rts("pretrain", "--modality", "rgb", "--data", data, "-o", run, "--max-steps", 2, *RUN)
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "anchor coverage of the training slumps" in err and "at IoU >= 0.7" in err and "box side" in err, err
    assert "RPN pos/img" in err and "top fg" in err, err  # the epoch's progress line
    assert HEALTH <= set(_header(run / "metrics.csv"))
    with (run / "metrics.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert float(row["rpn_top_fg"]) > 0 and float(row["roi_pos_per_img_s0"]) >= 1  # every training chip has slumps
    cov = yaml.safe_load((run / "config.yaml").read_text())["anchor_coverage"]
    assert cov["tile"] == 256 and cov["total"] > 0 and 0 <= cov["iou05"] <= 1
    r = rts("info", run)
    assert r.code == 0 and "anchor coverage of the training slumps" in " ".join(r.out.split()), r.out


def test_slumps_too_small_for_the_anchors_warn_collapse_and_end_with_ap50_zero(tmp_path, rts, monkeypatch):
    """Slumps of 5 x 5 px: the anchors cannot cover them (warned before training), no RPN proposal ever lies on
    one (the collapse warning, once the warmup and 20 steps have passed), validation finds none (AP50 0, said at
    the end); the bundle records all three and rts info shows them."""
    for k in range(8):
        write_tif(tmp_path / "in" / "site" / f"x{k}.tif",
                  paper_sample(shape=(96, 96), rects=[(10 + 4 * k, 15 + 4 * k, 20, 25), (60, 65, 70, 75)], seed=k),
                  transform=apart(k))
    assert rts("prepare", tmp_path / "in", "-o", tmp_path / "ds", "--bands", "paper", "--split",
               "0.5,0.25,0.25").code == 0
    run = tmp_path / "tiny"
    # 4 training chips, one per step: the 6th epoch (the one validation) ends at step 24; the warmup is 2 steps
    r = rts("pretrain", "--modality", "rgb", "--data", tmp_path / "ds", "-o", run, "--max-steps", 24, "--val-every", 6,
            "--anchors", "preset", "--preset", "nano", "--workers", 0, "--batch-size", 1, "--lr", 0.004,
            "--warmup-steps", 2)
    assert r.code == 0, r.err
    err, out = " ".join(r.err.split()), " ".join(r.out.split())
    assert "have no anchor at IoU >= 0.5" in err and "--anchors 8,16,32,64,128" in err, err
    assert err.count("training looks collapsed") == 1 and "at step 22" in err, err  # steps 3-22 after the warmup
    assert "no RPN proposal lay on a slump" in err
    assert "validation mask AP50 was 0.000 at every validation" in out and "what to try" in out, out
    m = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
    assert m["val_mask_ap50_best"] == 0 and m["collapse_step"] == 22 and "no RPN proposal" in m["collapse_warning"]
    assert "ap50_note" in m
    info = " ".join(rts("info", run).out.split())
    assert "validation mask AP50 was 0.000" in info and "training looked collapsed at step 22" in info, info
    assert "have no anchor at IoU >= 0.5" in info and "what to try" in info
