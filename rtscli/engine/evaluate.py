"""COCO evaluation with pycocotools (the evaluator detectron2 calls): mask and box AP, AP50, AP75.

The paper's metric is mask AP at IoU 0.5 (AP50). Predictions are turned into COCO results
(RLE masks pasted from RoI resolution into their tile, cropped to the chip), scored against the
split's COCO file, overall and per site.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

if TYPE_CHECKING:
    from rtscli.data.dataset import ChipDataset
    from rtscli.modeling.detector import Detector


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


def _quiet() -> contextlib.redirect_stdout[io.StringIO]:
    return contextlib.redirect_stdout(io.StringIO())


def coco_metrics(gt_json: str | Path | dict, results: list[dict], *, iou_types: Iterable[str] = ("segm", "bbox"),
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
def predict_split(model: Detector, dataset: ChipDataset, *, batch_size: int = 4, device: str = "cpu",
                  progress: Callable[[int], object] | None = None) -> list[dict]:
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


ERROR_LAYERS = ("true_positives", "false_positives", "missed")


def error_layers(gt: dict, results: list[dict], *, iou_thresh: float = 0.5, min_score: float = 0.5) -> dict:
    """Match predictions to ground truth per chip (greedy by score, mask IoU >= ``iou_thresh``).

    Returns ``{layer: GeoDataFrame}`` for true positives, false positives and missed slumps, as
    polygons in map coordinates (each chip's full affine transform, so rotated and sheared grids
    are right; features of chips in other CRSs are reprojected to the first chip's CRS), with the
    true area ``area_m2`` on the ellipsoid. Predictions below ``min_score`` are ignored.
    """
    import geopandas as gpd
    from pycocotools import mask as mask_utils
    from rasterio.transform import Affine
    from shapely.geometry import MultiPolygon

    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.geometry.polygons import mask_to_polygon

    images = {im["id"]: im for im in gt["images"]}
    gts: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd"):  # crowd regions are neither found nor missed (pycocotools ignores them too)
            gts.setdefault(a["image_id"], []).append(a)
    dts: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= min_score and "segmentation" in r:
            dts.setdefault(r["image_id"], []).append(r)

    def rle_of(seg: Any, h: int, w: int) -> Any:
        if isinstance(seg, list):
            return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, h, w)
        counts = seg["counts"]
        return {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}

    def polygon(rle: Any, transform: Affine) -> MultiPolygon:
        # every part of the mask, through the chip's full affine transform (rotated grids too)
        u = mask_to_polygon(mask_utils.decode(rle).astype(bool), transform)
        if u is None:
            return MultiPolygon()
        return u if isinstance(u, MultiPolygon) else MultiPolygon([u])

    rows: dict[str, list[dict]] = {k: [] for k in ERROR_LAYERS}
    for img_id, im in images.items():
        h, w = im["height"], im["width"]
        t = Affine(*im["transform"])
        g_rles = [rle_of(a["segmentation"], h, w) for a in gts.get(img_id, [])]
        d_list = sorted(dts.get(img_id, []), key=lambda r: -r["score"])
        d_rles = [rle_of(r["segmentation"], h, w) for r in d_list]
        ious = mask_utils.iou(d_rles, g_rles, [0] * len(g_rles)) if d_rles and g_rles else None
        used: set[int] = set()
        base = {"file": im["file_name"], "site": im.get("site"), "crs": im["crs"]}
        for i, r in enumerate(d_list):
            best, best_iou = -1, iou_thresh
            if ious is not None:
                for j in range(len(g_rles)):
                    if j not in used and ious[i][j] >= best_iou:
                        best, best_iou = j, float(ious[i][j])
            if best >= 0:
                used.add(best)
                rows["true_positives"].append({**base, "score": r["score"], "iou": round(best_iou, 4),
                                               "gt_id": gts[img_id][best]["id"], "geometry": polygon(d_rles[i], t)})
            else:
                rows["false_positives"].append({**base, "score": r["score"], "iou": None, "gt_id": None,
                                                "geometry": polygon(d_rles[i], t)})
        for j, a in enumerate(gts.get(img_id, [])):
            if j not in used:
                rows["missed"].append({**base, "score": None, "iou": None, "gt_id": a["id"],
                                       "geometry": polygon(g_rles[j], t)})
    target = images[min(images)]["crs"] if images else "EPSG:4326"
    out = {}
    for layer, recs in rows.items():
        parts = []
        for crs in sorted({r["crs"] for r in recs}):
            sub = gpd.GeoDataFrame([r for r in recs if r["crs"] == crs], geometry="geometry", crs=crs)
            sub["area_m2"] = np.round(geodesic_area_perimeter(sub.geometry.values, crs)[0], 3)  # true area
            parts.append(sub.to_crs(target) if crs != target else sub)
        cols = ["file", "site", "score", "iou", "gt_id", "area_m2", "geometry"]
        if parts:
            import pandas as pd

            gdf = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True)[cols], geometry="geometry", crs=target)
        else:
            gdf = gpd.GeoDataFrame({c: [] for c in cols[:-1]}, geometry=[], crs=target)
        out[layer] = gdf
    return out


def write_error_layers(layers: dict, path: Path, *, overwrite: bool = False) -> Path:
    """The error layers in one GeoPackage (one layer per kind of outcome), written atomically. An existing
    GeoPackage keeps its other layers; replacing layers of these names needs ``overwrite``."""
    from rtscli.errors import RtsError
    from rtscli.io.vector import write_layers

    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise RtsError("the error layers are written as a GeoPackage", path=path, fix="use a .gpkg file name")
    return write_layers(layers, path, overwrite=overwrite, geometry_type="MultiPolygon")


def evaluate_bundle(bundle: Path, data: Path, split: str, *, batch_size: int = 4,
                    progress: Callable[[int, int], object] | None = None) -> tuple[dict, dict, list[dict]]:
    """Score a bundle (unimodal or fused) on a dataset split. Returns (report, ground truth, detections).

    ``progress(k, total)`` is called as chips are done.
    """
    import json


    from rtscli.data.dataset import ChipDataset, DatasetInfo
    from rtscli.errors import RtsError
    from rtscli.modeling.bundle import load_model, read_bundle

    from rtscli.engine.devices import default_device
    from rtscli.engine.memory_check import check_inference_fits

    device = default_device()
    # before the model is loaded: a forward pass too large for this machine is refused in one line with the fix
    check_inference_fits(read_bundle(bundle), batch_size=batch_size, device=device, what="rts evaluate",
                         gpu="a machine with a CUDA GPU (rts evaluate uses one when there is one)")
    model, b = load_model(bundle, device=device)
    info = DatasetInfo.open(data)
    from rtscli.data.modalities import missing_channel

    for mod in b.modalities:
        ch = missing_channel(mod, info.band_map.names)
        if ch is not None:
            raise RtsError(f"the model needs channel {ch!r} (modality {mod.name}), which the dataset lacks",
                               path=data, fix="evaluate on a dataset prepared with the same bands")
    # the model's own normalization statistics, not the dataset's
    info.stats = b.stats | {k: v for k, v in info.stats.items() if k not in b.stats}
    ds = ChipDataset(info, split, b.modalities, b.tile_size, repeat_to=b.repeat_to)
    results = predict_split(model, ds, batch_size=batch_size, device=device,
                            progress=(lambda k: progress(k, len(ds))) if progress else None)
    gt = json.loads((info.root / f"{split}.json").read_text())
    out = {"bundle": str(bundle), "dataset": str(data), "split": split, "images": len(ds),
           "instances": sum(not a.get("iscrowd") for a in gt["annotations"]),  # crowd regions are not slumps
           "detections": len(results), "metrics": coco_metrics(gt, results),
           "per_site_mask_ap50": per_site_ap50(gt, results)}
    return out, gt, results
