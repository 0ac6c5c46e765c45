"""The RPN's anchors over a tile, and how well they cover a set of ground-truth boxes.

The RPN learns a slump only through the anchors that overlap it: an anchor at IoU >= ``fg_iou`` (0.7) with a
box is a positive, and torchvision also keeps each box's best anchor (at IoU >= ``bg_iou``, 0.3) as one. Boxes
far smaller or larger than every anchor, or of another shape, give the RPN little or nothing to learn from.
:func:`anchor_generator` builds the anchors exactly as :class:`rtscli.modeling.detector.Detector` does;
:func:`best_anchor_iou` gives each box its best IoU with them over a tile; :func:`anchor_coverage` sums that up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import AnchorGenerator

from rtscli.modeling.config import RPNConfig

#: the strides (pixels) of the FPN levels P2..P6 the anchors sit on, one anchor size per level
FPN_STRIDES = (4, 8, 16, 32, 64)

#: box size classes by side sqrt(w x h) in pixels, as COCO's small / medium / large areas: (name, lo, hi)
SIZE_CLASSES = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))


def anchor_generator(rpn: RPNConfig) -> AnchorGenerator:
    """The RPN's anchor generator: one size per FPN level (``rpn.anchor_sizes``), every aspect ratio at each."""
    return AnchorGenerator(tuple((s,) for s in rpn.anchor_sizes), (tuple(rpn.aspect_ratios),) * len(rpn.anchor_sizes))


def tile_anchors(rpn: RPNConfig, tile: int) -> list[Tensor]:
    """The anchors of one ``tile`` x ``tile`` pixel tile, per FPN level.

    Args:
        rpn: the model's RPN config (anchor sizes, aspect ratios).
        tile: the tile side, pixels.

    Returns:
        One tensor (H, W, A, 4) per level P2..P6: the A anchors (x0, y0, x1, y1, pixels) centred on grid cell
        (row, column), as torchvision's generator lays them out for feature maps of ceil(tile / stride) cells.
    """
    gen = anchor_generator(rpn)
    cells = [-(-tile // s) for s in FPN_STRIDES[: len(rpn.anchor_sizes)]]
    image = ImageList(torch.zeros(1, 1, 1, 1).expand(1, 1, tile, tile), [(tile, tile)])
    feats = [torch.zeros(1, 1, 1, 1).expand(1, 1, c, c) for c in cells]
    flat = gen(image, feats)[0]
    a = len(rpn.aspect_ratios)
    return [part.reshape(c, c, a, 4) for part, c in zip(flat.split([c * c * a for c in cells]), cells, strict=True)]


def best_anchor_iou(boxes: Tensor, levels: list[Tensor]) -> Tensor:
    """Each box's best IoU with the anchors of a tile.

    For anchors of one shape, IoU with a box only falls as the anchor's centre moves away from the box's
    along either axis, so the best anchor of each level and aspect ratio is among the 3 x 3 grid cells around
    the box's centre: those are all that is compared (exact, and fast for 1024 px tiles).

    Args:
        boxes: (N, 4) boxes (x0, y0, x1, y1) in tile pixels.
        levels: the tile's anchors per level (:func:`tile_anchors`).

    Returns:
        (N,) the best IoU of each box, in [0, 1].
    """
    from torchvision.ops import boxes as box_ops

    if len(boxes) == 0:
        return torch.zeros(0)
    boxes = boxes.float()
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    step = torch.tensor([-1, 0, 1])
    best = torch.zeros(len(boxes))
    for anchors in levels:
        h, w, a, _ = anchors.shape
        # the grid's pitch from the anchors themselves (torchvision's stride is tile // cells)
        sx = float(anchors[0, 1, 0, 0] - anchors[0, 0, 0, 0]) if w > 1 else 1.0
        sy = float(anchors[1, 0, 0, 1] - anchors[0, 0, 0, 1]) if h > 1 else 1.0
        x0 = float((anchors[0, 0, 0, 0] + anchors[0, 0, 0, 2]) / 2)
        y0 = float((anchors[0, 0, 0, 1] + anchors[0, 0, 0, 3]) / 2)
        j = (((cx - x0) / sx).round().long()[:, None] + step).clamp(0, w - 1)  # (N, 3)
        i = (((cy - y0) / sy).round().long()[:, None] + step).clamp(0, h - 1)
        cand = anchors[i[:, :, None], j[:, None, :]].reshape(len(boxes), 9 * a, 4)  # (N, 9A, 4)
        lt = torch.maximum(cand[..., :2], boxes[:, None, :2])
        rb = torch.minimum(cand[..., 2:], boxes[:, None, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        union = box_ops.box_area(cand.reshape(-1, 4)).reshape(len(boxes), -1) + box_ops.box_area(boxes)[:, None]
        best = torch.maximum(best, (inter / (union - inter).clamp(min=1e-9)).max(1).values)
    return best


@dataclass
class AnchorCoverage:
    """How well a model's anchors cover the training boxes, over its tile.

    ``iou07`` / ``iou05``: the share of boxes whose best anchor has IoU >= 0.7 / >= 0.5; ``by_size``: the same
    per size class (:data:`SIZE_CLASSES`): ``{name: {"boxes": n, "iou07": share, "iou05": share}}``; the box
    sides sqrt(w x h) in pixels at the 5th, 50th and 95th percentiles; ``boxes``: the boxes measured (a random
    sample of at most ``max_boxes`` of :func:`anchor_coverage`), of ``total``.
    """

    tile: int
    anchor_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    boxes: int
    total: int
    iou07: float
    iou05: float
    side_p5: float
    side_median: float
    side_p95: float
    by_size: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """As a bundle records it (plain numbers and lists)."""
        return {"tile": self.tile, "anchor_sizes": list(self.anchor_sizes),
                "aspect_ratios": list(self.aspect_ratios), "boxes": self.boxes, "total": self.total,
                "iou07": self.iou07, "iou05": self.iou05, "side_p5": self.side_p5,
                "side_median": self.side_median, "side_p95": self.side_p95, "by_size": self.by_size}


def anchor_coverage(xywh: np.ndarray, rpn: RPNConfig, tile: int, *, max_boxes: int = 4000,
                    seed: int = 0) -> AnchorCoverage | None:
    """The anchor coverage of boxes given as COCO ``bbox`` values.

    Args:
        xywh: (N, 4) boxes (x, y, width, height) in pixels of chips placed at the tile's top-left corner (as
            :class:`rtscli.data.dataset.ChipDataset` pads them); clipped to the tile.
        rpn: the model's RPN config.
        tile: the model's tile side, pixels.
        max_boxes: measure at most this many boxes, drawn at random (with ``seed``) when there are more.
        seed: the draw's seed.

    Returns:
        The coverage, shares and sides rounded to 3 and 1 decimals; None when no box has an area in the tile.
    """
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    xyxy = np.stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]], 1).clip(0, tile)
    xyxy = xyxy[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]
    total = len(xyxy)
    if total == 0:
        return None
    if total > max_boxes:
        xyxy = xyxy[np.sort(np.random.default_rng(seed).choice(total, max_boxes, replace=False))]
    iou = best_anchor_iou(torch.from_numpy(xyxy), tile_anchors(rpn, tile)).numpy()
    side = np.sqrt((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]))
    by_size = {}
    for name, lo, hi in SIZE_CLASSES:
        sel = (side >= lo) & (side < hi)
        if sel.any():
            by_size[name] = {"boxes": int(sel.sum()), "iou07": round(float((iou[sel] >= 0.7).mean()), 3),
                             "iou05": round(float((iou[sel] >= 0.5).mean()), 3)}
    p5, p50, p95 = (round(float(v), 1) for v in np.percentile(side, [5, 50, 95]))
    return AnchorCoverage(tile=tile, anchor_sizes=tuple(rpn.anchor_sizes), aspect_ratios=tuple(rpn.aspect_ratios),
                          boxes=len(xyxy), total=total, iou07=round(float((iou >= 0.7).mean()), 3),
                          iou05=round(float((iou >= 0.5).mean()), 3), side_p5=p5, side_median=p50, side_p95=p95,
                          by_size=by_size)


def anchors_from_sides(p5_side: float, tile: int) -> tuple[int, ...]:
    """Anchor sizes for P2..P6 that span boxes whose smallest 5% have side ``p5_side`` (pixels) or more: powers of
    two doubling from level to level (FPN), the first at or below ``p5_side`` (at least 8 px), none above twice
    the ``tile``. ``--anchors auto`` (:func:`rtscli.engine.pretrain.auto_anchors`)."""
    lo = max(8.0, float(p5_side))
    first = 2 ** math.floor(math.log2(lo))
    return tuple(int(min(first * 2**k, 2 * tile)) for k in range(5))
