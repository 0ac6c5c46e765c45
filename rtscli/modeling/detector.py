"""Cascade Mask R-CNN (and plain Mask R-CNN) on torchvision primitives.

The detector is four plain parts: input check (no hidden resize, no hidden ImageNet mean/std; inputs
arrive normalized with the dataset's statistics and padded to the tile size), backbone (+FPN),
RPN (torchvision), and ROI heads. It has two entry points with stable return types:
:meth:`Detector.losses` (a dict of named losses) and :meth:`Detector.predict` (one dict per image).

Cascade R-CNN (Cai & Vasconcelos), as detectron2 does it: a list of per-stage box heads, matchers
and box coders; stage k is trained on the boxes of stage k-1 (detached) relabelled at its own IoU
threshold (0.5/0.6/0.7) with its own box-coder weights; regression is class-agnostic; at inference
the class scores are averaged over the stages and the boxes come from the last stage. With one
stage (IoU 0.5) it is Mask R-CNN. One deliberate difference: each stage's losses are scaled by
1/num_stages (as our spec asks), where detectron2 keeps full losses and scales the gradient into
the shared RoI features instead; the backbone sees the same gradient, and under AdamW the heads'
updates are nearly the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from rtscli.modeling.anchors import anchor_generator
from rtscli.modeling.backbone import build_backbone, group_norm, norm2d
from rtscli.modeling.config import ModelConfig, ROIHeadsConfig

POOL_LEVELS = ["p2", "p3", "p4", "p5"]


class ConvFCHead(nn.Module):
    """Box head: convs (3x3, norm, ReLU) then fully connected layers (detectron2's 4conv1fc)."""

    def __init__(self, *, in_channels: int, pool: int, conv_dims: Sequence[int], fc_dims: Sequence[int],
                 norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for d in conv_dims:
            layers += [nn.Conv2d(c, d, 3, padding=1, bias=norm == "none")]
            layer = norm2d(norm, d)
            if layer is not None:
                layers.append(layer)
            layers.append(nn.ReLU(inplace=True))
            c = d
        self.convs = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        n = c * pool * pool
        for d in fc_dims:
            fcs += [nn.Linear(n, d), nn.ReLU(inplace=True)]
            n = d
        self.fcs = nn.Sequential(*fcs)
        self.out_dim = n

    def forward(self, x: Tensor) -> Tensor:
        return self.fcs(self.convs(x).flatten(1))


class BoxPredictor(nn.Module):
    """Class logits (num_classes + background) and class-agnostic box deltas."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Convs (3x3, ReLU; with ``norm`` ``gn`` each followed by GroupNorm, as He et al. 2019 train from scratch) on
    14x14 RoI features, a 2x deconv and a 1x1 predictor: 28x28 mask logits."""

    def __init__(self, *, in_channels: int, conv_dims: Sequence[int], num_classes: int, norm: str = "none") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for d in conv_dims:
            layers.append(nn.Conv2d(c, d, 3, padding=1))
            if norm == "gn":
                layers.append(group_norm(d))
            layers.append(nn.ReLU(inplace=True))
            c = d
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.predictor = nn.Conv2d(c, num_classes + 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # every conv here is built with a bias
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(F.relu(self.deconv(self.convs(x))))


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Cross-entropy over all sampled boxes; L1 on the positives' class-agnostic deltas.

    Both are normalized by the number of sampled boxes. L1 is detectron2's default for these heads
    (``SMOOTH_L1_BETA = 0``).
    """
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    loss_box = F.l1_loss(box_deltas[pos], target_deltas[pos], reduction="sum")
    return loss_cls, loss_box / max(labels.numel(), 1)


#: the best RPN proposals per image whose slump probability the training statistics follow (``rpn_top_fg``)
TOP_PROPOSALS = 10


@torch.no_grad()
def _stage_stats(k: int, logits: Tensor, labels: Tensor, with_gt: int, *, last: bool) -> dict[str, Tensor]:
    """Stage ``k``'s side statistics (:meth:`Detector.losses`): its positives (``labels`` > 0 of the sampled RoIs)
    per image with ground truth and, for the ``last`` stage, their mean slump probability and count."""
    pos = labels > 0
    count = pos.sum().float()
    out = {f"roi_pos_per_img_s{k}": count / max(with_gt, 1)}
    if last:
        fg = 1.0 - F.softmax(logits.detach().float()[pos], dim=-1)[:, 0]
        out["roi_pos_fg"] = fg.mean() if len(fg) else count * 0.0
        out["roi_pos_last"] = count
    return out


class CascadeROIHeads(nn.Module):
    def __init__(self, *, cfg: ROIHeadsConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.box_pool = MultiScaleRoIAlign(POOL_LEVELS, output_size=7, sampling_ratio=2)
        heads = [ConvFCHead(in_channels=in_channels, pool=7, conv_dims=cfg.conv_dims, fc_dims=cfg.fc_dims,
                            norm=cfg.norm) for _ in range(cfg.num_stages)]
        self.box_heads = nn.ModuleList(heads)
        self.box_predictors = nn.ModuleList(BoxPredictor(h.out_dim, num_classes) for h in heads)
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in cfg.iou_thresholds]
        self.coders = [det_utils.BoxCoder(tuple(w)) for w in cfg.bbox_reg_weights]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(cfg.batch_size_per_image, cfg.positive_fraction)
        self.mask_pool: MultiScaleRoIAlign | None
        self.mask_head: MaskHead | None
        if cfg.mask:
            self.mask_pool = MultiScaleRoIAlign(POOL_LEVELS, output_size=14, sampling_ratio=2)
            self.mask_head = MaskHead(in_channels=in_channels, conv_dims=cfg.mask_conv_dims, num_classes=num_classes,
                                      norm=cfg.norm)
        else:
            self.mask_pool = None
            self.mask_head = None

    # -- matching --------------------------------------------------------------------------------
    def match(self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
              ) -> tuple[list[Tensor], list[Tensor]]:
        """Label each proposal for ``stage``: (matched gt index, class label; 0 = background)."""
        idxs: list[Tensor] = []
        labels: list[Tensor] = []
        for props, t in zip(proposals, targets, strict=True):
            if t["boxes"].numel() == 0:
                idxs.append(torch.zeros(len(props), dtype=torch.int64, device=props.device))
                labels.append(torch.zeros(len(props), dtype=torch.int64, device=props.device))
                continue
            q = self.matchers[stage](box_ops.box_iou(t["boxes"], props))
            lab = t["labels"][q.clamp(min=0)].to(torch.int64)
            lab[q < 0] = 0
            idxs.append(q.clamp(min=0))
            labels.append(lab)
        return idxs, labels

    def _sample(self, proposals: list[Tensor], idxs: list[Tensor], labels: list[Tensor]
                ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        pos, neg = self.sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg, strict=True)]
        return ([pr[k] for pr, k in zip(proposals, keep, strict=True)],
                [i[k] for i, k in zip(idxs, keep, strict=True)],
                [lab[k] for lab, k in zip(labels, keep, strict=True)])

    def _stage(self, k: int, features: OrderedDict[str, Tensor], boxes: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        x = self.box_pool(features, boxes, image_sizes)
        return self.box_predictors[k](self.box_heads[k](x))

    # -- training ----------------------------------------------------------------------------------
    def losses(self, features: OrderedDict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
               targets: list[dict[str, Tensor]], stats: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The box (and mask) losses of every stage: ``loss_cls_s{k}``, ``loss_box_s{k}``, ``loss_mask``.

        ``stats``, when given, also receives (detached, 0-d tensors; see :meth:`Detector.losses`)
        ``roi_pos_per_img_s{k}``, ``roi_pos_fg`` and ``roi_pos_last``; the losses are the same either way.
        """
        n = self.cfg.num_stages
        with_gt = sum(t["boxes"].numel() > 0 for t in targets)
        # ground truth joins the proposals (so every gt box is seen), then stage 0 samples
        proposals = [torch.cat([p, t["boxes"]]) for p, t in zip(proposals, targets, strict=True)]
        idxs, labels = self.match(0, proposals, targets)
        proposals, idxs, labels = self._sample(proposals, idxs, labels)
        first = (proposals, idxs, labels)
        out: dict[str, Tensor] = {}
        boxes = proposals
        for k in range(n):
            if k > 0:
                idxs, labels = self.match(k, boxes, targets)
            logits, deltas = self._stage(k, features, boxes, image_sizes)
            matched = [t["boxes"][i] if t["boxes"].numel() else torch.zeros_like(b)
                       for t, i, b in zip(targets, idxs, boxes, strict=True)]
            target_deltas = self.coders[k].encode(matched, boxes)
            lc, lb = fast_rcnn_losses(logits, deltas, torch.cat(labels), torch.cat(target_deltas))
            out[f"loss_cls_s{k}"] = lc / n
            out[f"loss_box_s{k}"] = lb / n
            if stats is not None:
                stats.update(_stage_stats(k, logits, torch.cat(labels), with_gt, last=k == n - 1))
            if k < n - 1:  # the next stage trains on this stage's refined boxes, detached
                boxes = self._decode(k, deltas, boxes, image_sizes)
        if self.mask_head is not None:
            out["loss_mask"] = self._mask_loss(features, *first, image_sizes, targets)
        return out

    def _decode(self, k: int, deltas: Tensor, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
                ) -> list[Tensor]:
        counts = [len(b) for b in boxes]
        pred = self.coders[k].decode_single(deltas.detach(), torch.cat(boxes))
        out = []
        for b, size in zip(pred.split(counts), image_sizes, strict=True):
            out.append(box_ops.clip_boxes_to_image(b, size))
        return out

    def _mask_loss(self, features: OrderedDict[str, Tensor], proposals: list[Tensor], idxs: list[Tensor],
                   labels: list[Tensor], image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
                   ) -> Tensor:
        assert self.mask_head is not None and self.mask_pool is not None  # called only for models with masks
        pos = [torch.where(lab > 0)[0] for lab in labels]
        pos_props = [p[i] for p, i in zip(proposals, pos, strict=True)]
        if sum(len(p) for p in pos_props) == 0:
            # keep the graph connected so DDP sees a gradient for every parameter
            return cast(Tensor, sum(p.sum() for p in self.mask_head.parameters()) * 0.0)  # sum's start 0: a Tensor
        x = self.mask_head(self.mask_pool(features, pos_props, image_sizes))
        gt_masks = [t["masks"] for t in targets]
        # torchvision indexes the per-image ground-truth labels with the matched indices
        gt_labels = [t["labels"] for t in targets]
        matched = [m[i] for m, i in zip(idxs, pos, strict=True)]
        return maskrcnn_loss(x, pos_props, gt_masks, gt_labels, matched)

    # -- inference -----------------------------------------------------------------------------------
    def _cascade(self, features: OrderedDict[str, Tensor], proposals: list[Tensor],
                 image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], Tensor]:
        """Every stage on the previous stage's refined boxes: (the last stage's boxes per image, the class
        probabilities (N, num_classes + 1) of all boxes averaged over the stages)."""
        n = self.cfg.num_stages
        boxes = proposals
        scores_per_stage = []
        deltas: Tensor | None = None
        for k in range(n):
            if k > 0:
                assert deltas is not None  # set by stage k - 1
                boxes = self._decode(k - 1, deltas, boxes, image_sizes)
            logits, deltas = self._stage(k, features, boxes, image_sizes)
            scores_per_stage.append(F.softmax(logits, dim=-1))
        assert deltas is not None  # set by the last stage (a model has one or more)
        return self._decode(n - 1, deltas, boxes, image_sizes), torch.stack(scores_per_stage).mean(0)

    @torch.no_grad()
    def foreground(self, features: OrderedDict[str, Tensor], boxes: list[Tensor],
                   image_sizes: list[tuple[int, int]]) -> Tensor:
        """The slump (any foreground class) probability inference gives ``boxes`` (one (N_i, 4) tensor per image):
        (sum N_i,), 1 - the background probability averaged over the stages."""
        _, scores = self._cascade(features, boxes, image_sizes)
        return 1.0 - scores[:, 0].float()

    @torch.no_grad()
    def predict(self, features: OrderedDict[str, Tensor], proposals: list[Tensor],
                image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        final, scores = self._cascade(features, proposals, image_sizes)
        results = []
        counts = [len(b) for b in final]
        for b, s in zip(final, scores.split(counts), strict=True):
            results.append(self._postprocess(b, s))
        if self.mask_head is not None:
            assert self.mask_pool is not None  # built with the mask head
            det_boxes = [r["boxes"] for r in results]
            if sum(len(b) for b in det_boxes):
                logits = self.mask_head(self.mask_pool(features, det_boxes, image_sizes))
                probs = maskrcnn_inference(logits, [r["labels"] for r in results])
            else:
                probs = [torch.zeros((0, 1, 28, 28), device=scores.device) for _ in results]
            for r, p in zip(results, probs, strict=True):
                r["mask_probs"] = p  # (N, 1, 28, 28) at RoI resolution; paste with paste_masks
        return results

    def _postprocess(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        fg = scores[:, 1:]  # (N, num_classes)
        num = fg.shape[1]
        b = boxes[:, None, :].expand(-1, num, 4).reshape(-1, 4)
        s = fg.reshape(-1)
        lab = torch.arange(1, num + 1, device=boxes.device).repeat(len(boxes))
        keep = torch.where(s > c.score_thresh)[0]
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = box_ops.remove_small_boxes(b, 1e-2)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = box_ops.batched_nms(b, s, lab, c.nms_thresh)[: c.detections_per_image]
        return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


class Detector(nn.Module):
    """Backbone + FPN, RPN, cascade (or single-stage) box heads, optional mask head."""

    def __init__(self, *, cfg: ModelConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_backbone(
            cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
        r = cfg.rpn
        anchors = anchor_generator(r)
        head = RPNHead(cfg.fpn.out_channels, anchors.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(
            anchors, head, r.fg_iou, r.bg_iou, r.batch_size_per_image, r.positive_fraction,
            dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
            dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test), r.nms_thresh)
        self.roi_heads = CascadeROIHeads(cfg=cfg.roi_heads, in_channels=cfg.fpn.out_channels,
                                         num_classes=cfg.num_classes)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        return self.backbone(images)

    def _image_list(self, images: Tensor, image_sizes: list[tuple[int, int]] | None) -> ImageList:
        sizes: Sequence[tuple[int, ...]] = image_sizes or [tuple(images.shape[-2:])] * len(images)
        return ImageList(images, [tuple(int(v) for v in s) for s in sizes])

    def losses(self, images: Tensor, targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]] | None = None,
               features: "OrderedDict[str, Tensor] | None" = None, stats: dict[str, Tensor] | None = None
               ) -> dict[str, Tensor]:
        """Training losses: loss_rpn_cls, loss_rpn_box, loss_cls_s{k}, loss_box_s{k}, loss_mask.

        Args:
            images: (B, C, T, T) normalized tiles.
            targets: per image ``boxes`` (N, 4) in pixels, ``labels`` (N,), ``masks`` (N, T, T).
            image_sizes: the valid (height, width) of each image; default the whole tile.
            features: the backbone's levels, when already computed.
            stats: when given, filled (without gradients; the losses are the same either way) with 0-d tensors
                that tell whether training is learning, counted over the images that have ground truth:
                ``images_with_gt``; ``rpn_pos_per_img``, the RPN proposals (without the ground-truth boxes the
                box heads add to them) at IoU >= 0.5 with a ground-truth box, per image; ``rpn_top_fg``, the
                mean slump probability inference gives the :data:`TOP_PROPOSALS` best proposals of each image;
                ``roi_pos_per_img_s{k}``, the sampled RoIs labelled slump at stage k, per image;
                ``roi_pos_fg``, the last stage's mean slump probability (its softmax) over its positive RoIs,
                and ``roi_pos_last``, their count. Every mean is 0 where it has nothing to count.

        Returns:
            The named losses (scalars).
        """
        il = self._image_list(images, image_sizes)
        feats = features if features is not None else self.features(images)
        was = self.rpn.training
        self.rpn.train(True)
        proposals, rpn_losses = self.rpn(il, feats, targets)
        self.rpn.train(was)
        proposals = [p.detach() for p in proposals]
        out = {"loss_rpn_cls": rpn_losses["loss_objectness"], "loss_rpn_box": rpn_losses["loss_rpn_box_reg"]}
        if stats is not None:
            stats.update(self._proposal_stats(feats, proposals, il.image_sizes, targets))
        out.update(self.roi_heads.losses(feats, proposals, il.image_sizes, targets, stats=stats))
        return out

    @torch.no_grad()
    def _proposal_stats(self, feats: "OrderedDict[str, Tensor]", proposals: list[Tensor],
                        image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``images_with_gt``, ``rpn_pos_per_img`` and ``rpn_top_fg`` of :meth:`losses` (the proposals come
        sorted by objectness from torchvision's RPN)."""
        dev = feats[next(iter(feats))].device
        has = [t["boxes"].numel() > 0 for t in targets]
        n = sum(has)
        zero = torch.zeros((), device=dev)
        if n == 0:
            return {"images_with_gt": zero, "rpn_pos_per_img": zero, "rpn_top_fg": zero}
        pos = sum(((box_ops.box_iou(t["boxes"], p).amax(0) >= 0.5).sum() for p, t, h
                   in zip(proposals, targets, has, strict=True) if h), zero)
        top = [p[:TOP_PROPOSALS] if h else p[:0] for p, h in zip(proposals, has, strict=True)]
        fg = self.roi_heads.foreground(feats, top, image_sizes) if sum(len(b) for b in top) else zero[None]
        return {"images_with_gt": zero + n, "rpn_pos_per_img": pos.float() / n, "rpn_top_fg": fg.mean()}

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None,
                features: "OrderedDict[str, Tensor] | None" = None) -> list[dict[str, Tensor]]:
        """Detections per image: boxes (x0, y0, x1, y1 in pixels), scores, labels, mask_probs."""
        il = self._image_list(images, image_sizes)
        feats = features if features is not None else self.features(images)
        was = self.rpn.training
        self.rpn.train(False)
        proposals, _ = self.rpn(il, feats)
        self.rpn.train(was)
        return self.roi_heads.predict(feats, proposals, il.image_sizes)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
