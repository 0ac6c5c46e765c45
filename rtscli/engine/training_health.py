"""Whether a detector's training is learning, told to the person who runs it (``rts pretrain``, ``rts finetune``).

A model can collapse to "everything is background": the losses fall, nothing warns, and validation AP50 stays at
0. This module says so at three moments, in plain words with what to try (:data:`TRY`):

* before training: how well the anchors cover the training boxes (:func:`report_coverage`, from
  :func:`rtscli.modeling.anchors.anchor_coverage`), with a warning when many boxes have no anchor to learn from;
* during training: the detector's side statistics (``Detector.losses(..., stats=...)``) as epoch means in
  ``metrics.csv`` (:data:`COLUMNS`) and on the epoch's progress line (:class:`EpochStats`), and one warning
  when the run has collapsed for many steps after its warmup (:class:`CollapseWatch`);
* at the end: a run whose validation AP50 stayed at 0 says so (:func:`run_warnings`, also in ``rts info``).

Nothing here imports lightning; torch only inside the functions that need it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from rtscli.modeling.anchors import AnchorCoverage
    from rtscli.modeling.config import ModelConfig

log = logging.getLogger("rtscli")

#: what to try when training does not learn (the collapse warning, a run whose AP50 stayed at 0, rts info)
TRY = ("check that the labels lie on the imagery (each outline on its slump in the chips); train longer (more --epochs "
       "or --max-steps, a longer --warmup-steps); a lower --lr; anchors from the data (--anchors auto); a smaller "
       "--tile-size for small slumps; or start the backbone from `rts ssl` (--backbone-weights)")

#: the columns of metrics.csv the side statistics give (epoch means; ``roi_pos_per_img_s{k}`` for each box stage)
COLUMNS = ("rpn_pos_per_img", "rpn_top_fg", "roi_pos_per_img_s{k}", "roi_pos_fg")

#: a share of boxes without an anchor at IoU >= 0.5 above which the start of training warns
UNCOVERED_WARN = 0.2

#: the mean slump probability of the best proposals under which a step counts as collapsed
MIN_TOP_FG = 0.05


def warmup_length(warmup_steps: int, steps: int) -> int:
    """The warmup of a run, in optimizer steps: ``warmup_steps`` (``--warmup-steps``), at most a fifth of the run's
    ``steps``, at least 1 (:func:`rtscli.engine.lightning_task.optimizer_and_schedule`)."""
    return max(1, min(warmup_steps, steps // 5))


# -- before training: anchor coverage ---------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def coverage_lines(cov: dict[str, Any]) -> list[str]:
    """The anchor coverage (:meth:`rtscli.modeling.anchors.AnchorCoverage.as_dict`, as a bundle records it) in three
    lines for people."""
    names = {"small": "small (< 32 px)", "medium": "medium (32-96 px)", "large": "large (> 96 px)"}
    sampled = f"{cov['boxes']} of {cov['total']} boxes" if cov["boxes"] < cov["total"] else f"{cov['total']} boxes"
    sizes = ", ".join(f"{names.get(k, k)} {v['boxes']}: {_pct(v['iou07'])} / {_pct(v['iou05'])}"
                      for k, v in cov.get("by_size", {}).items())
    return [
        f"anchor coverage of the training slumps ({sampled}; anchors {','.join(map(str, cov['anchor_sizes']))} px, "
        f"aspect ratios {','.join(f'{r:g}' for r in cov['aspect_ratios'])}): {_pct(cov['iou07'])} have an anchor "
        f"at IoU >= 0.7, {_pct(cov['iou05'])} at IoU >= 0.5",
        f"  by size (IoU >= 0.7 / >= 0.5): {sizes}",
        f"  box side sqrt(w x h): median {cov['side_median']:g} px, 5%-95% {cov['side_p5']:g}-{cov['side_p95']:g} "
        f"px, in a {cov['tile']} px tile",
    ]


def coverage_warning(cov: dict[str, Any]) -> str | None:
    """One line when more than :data:`UNCOVERED_WARN` of the boxes have no anchor at IoU >= 0.5, with what to do
    for the boxes that miss most (small ones: smaller anchors; large ones: a larger tile); None otherwise."""
    from rtscli.modeling.anchors import anchors_from_sides

    missed = 1.0 - cov["iou05"]
    if missed <= UNCOVERED_WARN:
        return None
    by = cov.get("by_size", {})
    worst = max(by, key=lambda k: by[k]["boxes"] * (1.0 - by[k]["iou05"])) if by else "small"
    head = (f"{_pct(missed)} of the training slumps have no anchor at IoU >= 0.5 (most of them {worst} ones), so the "
            "RPN has little to learn them from: ")
    current = tuple(cov["anchor_sizes"])
    if worst == "large":
        return head + (f"use a larger --tile-size than {cov['tile']} px with chips that hold whole slumps "
                       "(rts prepare --chip-size), and --anchors auto")
    suggest = anchors_from_sides(cov["side_p5"], cov["tile"])
    if suggest != current:
        return head + (f"use --anchors auto (sizes from the training boxes) or explicit --anchors "
                       f"{','.join(map(str, suggest))}; slumps only a few pixels across also need finer imagery")
    return head + ("the anchors already start at the smallest size (8 px); slumps this small need finer imagery "
                   "(more pixels per slump), or chips at a finer resolution")


def report_coverage(coco: dict, cfg: ModelConfig) -> dict[str, Any] | None:
    """Log how well the model's anchors cover the training boxes (INFO lines, a WARNING when many are uncovered).

    Args:
        coco: the training split's COCO dataset (its non-crowd ``annotations``' ``bbox``, pixels of the chips).
        cfg: the model's config (RPN anchors, tile size).

    Returns:
        The coverage as the bundle records it (:meth:`AnchorCoverage.as_dict`, plus ``warning`` when one was
        given), or None when the split has no box.
    """
    import numpy as np

    from rtscli.modeling.anchors import anchor_coverage

    boxes = np.array([a["bbox"] for a in coco.get("annotations") or [] if not a.get("iscrowd") and a.get("bbox")],
                     dtype=np.float64).reshape(-1, 4)
    cov: AnchorCoverage | None = anchor_coverage(boxes, cfg.rpn, cfg.tile_size)
    if cov is None:
        return None
    out = cov.as_dict()
    for line in coverage_lines(out):
        log.info("%s", line)
    warning = coverage_warning(out)
    if warning:
        log.warning("%s", warning)
        out["warning"] = warning
    return out


# -- during training: side statistics and the collapse warning ----------------------------------------------------
def step_metrics(stats: dict[str, Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """One training step's side statistics (``Detector.losses(..., stats=...)``) as numbers, with their weights.

    Args:
        stats: the side statistics, 0-d tensors (one copy from the device for all of them).

    Returns:
        ``(values, weights)``: the metrics of :data:`COLUMNS` and what each is a mean over in this step (images
        with ground truth; the last stage's positive RoIs for ``roi_pos_fg``), for epoch means weighted by them.
        ``values`` also holds ``images_with_gt``.
    """
    import torch

    keys = list(stats)
    numbers = dict(zip(keys, torch.stack([stats[k].detach().float() for k in keys]).tolist(), strict=True))
    images = numbers["images_with_gt"]
    values = {k: v for k, v in numbers.items() if k not in ("images_with_gt", "roi_pos_last")}
    weights = {k: (numbers.get("roi_pos_last", 0.0) if k == "roi_pos_fg" else images) for k in values}
    values["images_with_gt"] = images
    return values, weights


class EpochStats:
    """Weighted means of the side statistics over an epoch's steps, for the epoch's progress line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: dict[str, float], weights: dict[str, float]) -> None:
        for k, w in weights.items():
            self.sums[k] = self.sums.get(k, 0.0) + values[k] * w
            self.weights[k] = self.weights.get(k, 0.0) + w

    def mean(self, key: str) -> float | None:
        w = self.weights.get(key, 0.0)
        return self.sums[key] / w if w > 0 else None

    def summary(self) -> str | None:
        """``RPN pos/img 3.2, top fg 0.41``: the epoch's RPN positives per image with slumps and the mean slump
        probability of the best proposals; None before any step with slumps."""
        pos, fg = self.mean("rpn_pos_per_img"), self.mean("rpn_top_fg")
        if pos is None or fg is None:
            return None
        return f"RPN pos/img {pos:.1f}, top fg {fg:.2f}"


@dataclass
class CollapseWatch:
    """Warns once per run when training has collapsed to "everything is background".

    A step counts as collapsed when, over its images that have ground truth, no RPN proposal lies at IoU >= 0.5
    on a ground-truth box (``rpn_pos_per_img`` 0), or the best proposals' mean slump probability (``rpn_top_fg``)
    is under ``min_fg``. Steps without any image with ground truth change nothing; steps of the warmup (the
    learning rate still rising) do not count. ``patience`` collapsed steps in a row (default max(20, 5% of the
    run's steps)) give the warning, once.

    Args:
        warmup: the run's warmup steps (:func:`warmup_length`).
        total_steps: the run's steps.
        patience: collapsed steps in a row that warn (None: max(20, 5% of ``total_steps``)).
        min_fg: the slump probability under which the best proposals count as background.
    """

    warmup: int
    total_steps: int
    patience: int | None = None
    min_fg: float = MIN_TOP_FG
    streak: int = 0  # collapsed steps in a row so far
    first: int = 0  # the streak's first step
    no_pos: int = 0  # its steps without any RPN positive
    fg_sum: float = 0.0  # the sum of its steps' rpn_top_fg
    fired: dict[str, Any] | None = field(default=None)  # {"step", "reason"} once it warned

    def __post_init__(self) -> None:
        if self.patience is None:
            self.patience = max(20, math.ceil(0.05 * self.total_steps))

    def update(self, step: int, *, images_with_gt: float, rpn_pos_per_img: float, rpn_top_fg: float) -> str | None:
        """Count one training step.

        Args:
            step: the optimizer steps done with this one (1-based, as the progress lines count them).
            images_with_gt: the step's images with ground truth.
            rpn_pos_per_img: its RPN positives per such image.
            rpn_top_fg: the mean slump probability of their best proposals.

        Returns:
            The warning (one line, with what to try) at the step that completes the collapsed streak; None at
            every other step and after it warned.
        """
        if self.fired is not None or step <= self.warmup or images_with_gt <= 0:
            return None
        if rpn_pos_per_img > 0 and rpn_top_fg >= self.min_fg:
            self.streak, self.no_pos, self.fg_sum = 0, 0, 0.0
            return None
        if self.streak == 0:
            self.first = step
        self.streak += 1
        self.no_pos += rpn_pos_per_img <= 0
        self.fg_sum += rpn_top_fg
        assert self.patience is not None  # set by __post_init__
        if self.streak < self.patience:
            return None
        fg = self.fg_sum / self.streak
        if self.no_pos == self.streak:
            seen = "no RPN proposal lay on a slump (IoU >= 0.5) in any chip with slumps"
        elif self.no_pos == 0:
            seen = f"the best proposals' mean slump probability was {fg:.3f} (under {self.min_fg:g})"
        else:
            seen = (f"no RPN proposal lay on a slump at {self.no_pos} of them, and the best proposals' mean slump "
                    f"probability was {fg:.3f}")
        reason = f"for {self.streak} steps in a row (steps {self.first}-{step}, after the warmup) {seen}"
        self.fired = {"step": step, "reason": reason}
        return (f"training looks collapsed (everything is background) at step {step}: {reason}; the model will "
                f"likely find no slumps. Try: {TRY}")


# -- at the end ---------------------------------------------------------------------------------------------------
def zero_ap_note(*, scored_on: str, what: str, ap50: float | None, val_slumps: int | None) -> str | None:
    """The note of a run whose every validation scored AP50 0 (None otherwise, or when no validation ran, or the
    validation split has no slump: then nothing could be measured).

    Args:
        scored_on: "val", or "train_chips" when the training chips stood in for a missing validation split.
        what: "mask" or "box".
        ap50: the best AP50 of the run's validations (None: none ran).
        val_slumps: the slumps of the validation split (None: not counted).
    """
    if ap50 is None or ap50 > 0 or val_slumps == 0:
        return None
    found = "masks" if what == "mask" else "boxes"
    if scored_on == "val":
        return (f"validation {what} AP50 was 0.000 at every validation: none of the model's {found} matched a "
                "validation slump (IoU >= 0.5)")
    return (f"{what} AP50 on the training chips was 0.000: none of the model's {found} matched even the slumps it "
            "trained on (IoU >= 0.5)")


def run_warnings(metrics: dict[str, Any]) -> list[str]:
    """The end-of-run lines of a bundle's metrics (``rts pretrain`` / ``rts finetune`` and ``rts info``): its AP50 0
    note and its collapse warning, each with what to try; none for a run that learned."""
    lines = []
    if metrics.get("ap50_note"):
        lines.append(f"warning: {metrics['ap50_note']}")
    if metrics.get("collapse_warning"):
        lines.append(f"warning: training looked collapsed {metrics['collapse_warning']}")
    if lines:
        lines.append(f"  what to try: {TRY}")
    return lines


# -- self-supervised pretraining (rts ssl): did the reconstruction loss fall? ------------------------------------
#: the share of a run's steps, at each end, whose mean losses :func:`loss_fall` compares
LOSS_ENDS = 0.1

#: the least relative fall of the loss, first tenth of the steps to last, under which a run warns. Healthy nano runs
#: on `rts synth` scenes fell 40-50% in 200 steps (rtscli.engine.ssl.SSL_LR); a randomly initialised backbone that
#: learns nothing stays within a few percent of where it started
MIN_LOSS_FALL = 0.1

#: the fewest steps whose loss :class:`LossFall` judges: below, the ends are a step or two of noisy losses (windows
#: differ) and a smoke run of a few steps is not warned about
LOSS_MIN_STEPS = 20

#: what to try when the reconstruction loss did not fall (rts ssl's warning, rts info)
SSL_TRY = ("more steps (--epochs, --windows or --max-steps), a higher --lr (a lower one if the loss jumps about), "
           "or more images (more scenes; --include-val with a prepared dataset)")


@dataclass(frozen=True)
class LossFall:
    """How much a run's loss fell: the means of its first and last ``compared`` steps (of ``steps``).

    ``min_fall`` is the relative fall (0-1) under which :attr:`warning` speaks (for runs of at least
    :data:`LOSS_MIN_STEPS` steps).
    """

    first: float
    last: float
    steps: int
    compared: int
    min_fall: float = MIN_LOSS_FALL
    what: str = "reconstruction loss"

    @property
    def fall(self) -> float:
        """The relative fall, ``1 - last / first`` (negative when the loss rose; 0 for a first mean <= 0)."""
        return 1.0 - self.last / self.first if self.first > 0 else 0.0

    @property
    def warning(self) -> str | None:
        """One line when the loss fell by less than ``min_fall`` over at least :data:`LOSS_MIN_STEPS` steps, with what
        to try (:data:`SSL_TRY`); else None."""
        if self.fall >= self.min_fall or self.steps < LOSS_MIN_STEPS:
            return None
        moved = f"fell by only {self.fall:.0%}" if self.fall >= 0 else f"rose by {-self.fall:.0%}"
        return (f"the {self.what} {moved} over the run ({self.first:.4g} -> {self.last:.4g}, the means of the first "
                f"and the last {self.compared} of its {self.steps} steps; less than {self.min_fall:.0%}): the "
                f"backbone has learned little. Try {SSL_TRY}")

    def record(self) -> dict[str, Any]:
        """The entries of a bundle's ``metrics``: ``loss_start``, ``loss_end``, ``loss_fall`` (rounded), the steps
        compared, and ``loss_warning`` when it warned."""
        out: dict[str, Any] = {"loss_start": round(self.first, 5), "loss_end": round(self.last, 5),
                               "loss_fall": round(self.fall, 4), "loss_steps_compared": self.compared}
        if self.warning:
            out["loss_warning"] = self.warning
        return out


def loss_fall(losses: list[float], *, ends: float = LOSS_ENDS, min_fall: float = MIN_LOSS_FALL,
              what: str = "reconstruction loss") -> LossFall | None:
    """Compare the mean loss of the first and the last ``ends`` of a run's steps (``rts ssl``'s check that its
    reconstruction loss fell; per-step losses are noisy, windows differ, so means of many steps are compared).

    Args:
        losses: the loss of every step, in order (non-finite ones are left out).
        ends: the share of the steps at each end (0-0.5); at least one step each, never overlapping.
        min_fall: the relative fall (0-1) under which the result warns.
        what: the loss's name in the warning.

    Returns:
        The :class:`LossFall` (its ``warning`` None when the loss fell enough, or the run is shorter than
        :data:`LOSS_MIN_STEPS`); None with fewer than 2 steps.
    """
    vals = [float(v) for v in losses if math.isfinite(v)]
    n = len(vals)
    if n < 2:
        return None
    k = min(max(1, round(ends * n)), n // 2)
    first, last = sum(vals[:k]) / k, sum(vals[-k:]) / k
    return LossFall(first=first, last=last, steps=n, compared=k, min_fall=min_fall, what=what)
