"""COCO evaluation with pycocotools (the evaluator detectron2 calls): mask and box AP, AP50, AP75.

The paper's metric is mask AP at IoU 0.5 (AP50). Predictions are turned into COCO results
(RLE masks pasted from RoI resolution into their tile, cropped to the chip), scored against the
split's COCO file, overall and per site.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterable

import numpy as np
import torch


def detections_to_coco(pred: dict[str, torch.Tensor], image_id: int, size: tuple[int, int],
                       tile: int, mask_threshold: float = 0.5) -> list[dict]:
    """COCO results for one image from a :meth:`Detector.predict` output (boxes in tile pixels)."""
    from pycocotools import mask as mask_utils
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    h, w = size
    boxes = pred["boxes"].detach().cpu()
    scores = pred["scores"].detach().cpu()
    out = []
    masks = None
    if "mask_probs" in pred and len(boxes):
        masks = paste_masks_in_image(pred["mask_probs"].detach().cpu(), boxes, (tile, tile))[:, 0, :h, :w]
        masks = (masks >= mask_threshold).numpy().astype(np.uint8)
    for i in range(len(boxes)):
        x0, y0, x1, y1 = boxes[i].tolist()
        x0, y0, x1, y1 = min(x0, w), min(y0, h), min(x1, w), min(y1, h)
        r = {"image_id": int(image_id), "category_id": 1, "score": float(scores[i]),
             "bbox": [x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)]}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i]))
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
        out.append(r)
    return out


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_metrics(gt_json: str | Path | dict, results: list[dict], *, iou_types=("segm", "bbox"),
                 image_ids: Iterable[int] | None = None) -> dict[str, dict[str, float]]:
    """AP, AP50, AP75 per IoU type. No predictions at all gives 0.0 (pycocotools cannot load [])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        gt = COCO()
        gt.dataset = gt_json if isinstance(gt_json, dict) else __import__("json").loads(Path(gt_json).read_text())
        gt.createIndex()
    ids = sorted(image_ids) if image_ids is not None else sorted(gt.getImgIds())
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        res = [r for r in results if r["image_id"] in set(ids)]
        if iou_type == "segm":
            res = [r for r in res if "segmentation" in r]
        if not res or not ids or not gt.getAnnIds(imgIds=ids):
            out[iou_type] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
            continue
        with _quiet():
            dt = gt.loadRes(res)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [max(float(v), 0.0) for v in ev.stats[:3]]  # -1 means "no gt": report 0
        out[iou_type] = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}
    return out


@torch.no_grad()
def predict_split(model, dataset, *, batch_size: int = 4, device: str = "cpu", progress=None) -> list[dict]:
    """Run ``model`` over a :class:`ChipDataset` (no augmentation) and return COCO results."""
    from rtscli.data.dataset import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    model.eval()
    results: list[dict] = []
    for images, _, metas in loader:
        preds = model.predict(images.to(device))
        for p, m in zip(preds, metas, strict=True):
            results += detections_to_coco(p, m["image_id"], m["size"], dataset.tile)
        if progress:
            progress(len(metas))
    return results


def per_site_ap50(gt: dict, results: list[dict]) -> dict[str, float]:
    sites: dict[str, list[int]] = {}
    for im in gt["images"]:
        sites.setdefault(im.get("site", "default"), []).append(im["id"])
    return {s: coco_metrics(gt, results, iou_types=("segm",), image_ids=ids)["segm"]["AP50"]
            for s, ids in sorted(sites.items())}
