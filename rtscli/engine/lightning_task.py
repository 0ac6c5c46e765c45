"""The Lightning side of training: the LightningModules and callbacks that :func:`rtscli.engine.train.fit` runs.

This module imports lightning at its top, so it is itself imported late, inside the functions that train
(as torchgeo's ``trainers``): ``rts --help`` and the engine's other modules never load lightning.

* :class:`DetectionModule`: a detector's training step, validation AP50 and best weights (``rts pretrain``,
  ``rts finetune``, ``rts ablate``; with an empty validation split, AP50 on the training chips, labelled so);
  :class:`SslModule`: masked image modelling (``rts ssl``). Both optimize with :func:`optimizer_and_schedule`.
* :class:`RunCheckpoints` and :class:`StopOnSigterm` (checkpoints, SIGTERM): :mod:`rtscli.engine.run_callbacks`.
* :class:`LogProgress`: progress as log lines when stderr is not a terminal.

Epochs are numbered from 0 everywhere (checkpoints, ``metrics.csv``, the bundle's metrics, Lightning's
progress bar and :class:`LogProgress`): ``epoch 6/6`` is the last of 7.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from rtscli.engine.train_settings import NonFiniteLoss, TrainSettings
from rtscli.engine.training_health import CollapseWatch, EpochStats, step_metrics, warmup_length
from rtscli.progress import interval, pace

if TYPE_CHECKING:
    from rtscli.modeling.detector import Detector
    from rtscli.modeling.mim import MaskedImageModel

log = logging.getLogger("rtscli")


def optimizer_and_schedule(module: L.LightningModule, settings: TrainSettings,
                           total_steps: int) -> OptimizerLRSchedulerConfig:
    """The optimizer and learning-rate schedule of a run (Lightning's ``configure_optimizers`` return value).

    AdamW over the module's trainable parameters at ``settings.lr(world size)`` (a backbone body's at lower rates
    with ``settings.layer_decay`` < 1: :func:`rtscli.modeling.backbone.layer_scales`), with linear warmup
    (``warmup_steps``, at most a fifth of the run) then cosine or step decay, per optimizer step.

    Args:
        module: the module being trained; its trainer, when attached, gives the world size and the steps.
        settings: the run's settings (learning rate, weight decay, warmup, schedule).
        total_steps: the steps of the run, used when no trainer is attached.

    Returns:
        ``{"optimizer": AdamW, "lr_scheduler": {"scheduler": LambdaLR, "interval": "step"}}``.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    trainer = module._trainer
    world = trainer.world_size if trainer else 1
    lr = settings.lr(world)
    if settings.layer_decay < 1.0:  # a pretrained backbone: its lower blocks move least (BEiT, MAE, SimMIM)
        from rtscli.modeling.backbone import layer_scales

        scales = layer_scales(module, settings.layer_decay)
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for p in params:
            groups.setdefault(scales.get(id(p), 1.0), []).append(p)
        opt = torch.optim.AdamW([{"params": ps, "lr": lr * f} for f, ps in sorted(groups.items())], lr=lr,
                                weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    steps = total_steps  # no trainer attached (unit use)
    if trainer is not None:
        try:  # the steps each process really runs (DDP splits the data), or --max-steps
            steps = int(trainer.estimated_stepping_batches)
        except Exception:  # nothing to estimate from (unit use)
            steps = total_steps
    warm = warmup_length(settings.warmup_steps, steps)
    total = max(steps, warm + 1)

    def factor(step: int) -> float:
        if step < warm:
            return 0.001 + (1 - 0.001) * step / warm
        t = (step - warm) / max(1, total - warm)
        if settings.schedule == "step":
            return 0.1 ** sum(t >= b for b in (0.75, 0.92))
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


#: what a :class:`DetectionModule` scores its AP50 on, as the prefix of its logged metrics (``val_ap50``,
#: ``train_chips_ap50``) and in words
SCORED_ON = {"val": "validation", "train_chips": "training-chip"}


class DetectionModule(L.LightningModule):
    """A detector's training: its losses per step, mask (or box) AP50 on the validation split, best weights.

    ``model`` is a :class:`rtscli.modeling.detector.Detector` or a fused one (``losses``, ``predict``, ``cfg``);
    ``val_gt`` the validation split's COCO ground truth (None: AP50 counts as 0); ``tile`` the tile size in
    pixels; ``total_steps`` the run's steps (for the schedule when no trainer is attached). The best
    validated epoch's weights stay in memory (``best_state``) for the bundle; the checkpoint carries the
    torch RNG and the best AP50 and epoch, as tensors and numbers only (loadable with ``weights_only=True``).

    ``scored_on``: "val" (the validation split) or "train_chips" (the dataset has no validation split and the
    training chips are scored instead). Training-chip scores measure fit, not generalization: they are logged as
    ``train_chips_ap50`` and ``train_chips_box_ap50`` (not ``val_*``), shown as "training-chip AP50", and pick no
    best epoch (``best_epoch`` stays -1: the bundle keeps the last epoch's weights).

    Each step also logs the detector's side statistics as epoch means (``rpn_pos_per_img``, ``rpn_top_fg``,
    ``roi_pos_per_img_s{k}``, ``roi_pos_fg``: :mod:`rtscli.engine.training_health`), keeps them for the epoch's
    progress line (``epoch_stats``) and feeds ``collapse``, which warns once when training has collapsed.
    """

    def __init__(self, model: Detector, *, settings: TrainSettings, val_gt: dict | None, tile: int,
                 total_steps: int, scored_on: str = "val") -> None:
        super().__init__()
        if scored_on not in SCORED_ON:
            raise ValueError(f"scored_on must be one of {', '.join(SCORED_ON)}, not {scored_on!r}")
        self.model: Detector = model
        self.settings = settings
        self.val_gt = val_gt
        self.tile = tile
        self.scored_on = scored_on
        self._val_results: list[dict] = []
        self.best_ap50 = -1.0  # the best validation AP50 so far (-1: no validation yet)
        self.best_state: dict[str, torch.Tensor] | None = None  # its weights, when validated in this process
        self.best_epoch = -1  # its epoch (0-based); the latest one on ties
        self.last_val_ap50: float | None = None  # the latest validation, for LogProgress
        self.last_val_epoch = -1
        self.total_steps = total_steps
        self.epoch_stats = EpochStats()  # this epoch's side statistics, for LogProgress
        self.collapse: CollapseWatch | None = None  # set when training starts

    def on_train_start(self) -> None:
        steps = self.trainer.estimated_stepping_batches  # the steps of the run, as the schedule counts them
        steps = int(steps) if math.isfinite(steps) else self.total_steps
        self.collapse = CollapseWatch(warmup=warmup_length(self.settings.warmup_steps, steps), total_steps=steps)
        self._started = time.monotonic()

    def on_train_epoch_end(self) -> None:
        # learning curves (benchmarks/learning_curve.py): the steps done and the time since training started (this
        # process; validations so far included) at each epoch's end, in metrics.csv
        self.log("steps", float(self.global_step), on_step=False, on_epoch=True, sync_dist=False)
        self.log("wall_s", time.monotonic() - getattr(self, "_started", time.monotonic()), on_step=False,
                 on_epoch=True, sync_dist=False)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        stats: dict[str, torch.Tensor] = {}  # whether it learns (training_health): no effect on the losses
        losses = self.model.losses(images, targets, stats=stats)
        loss = cast(torch.Tensor, sum(losses.values()))
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss became {loss.item()} at step {self.global_step} "
                f"({', '.join(k for k, v in losses.items() if not torch.isfinite(v))})",
                fix="start again with a lower --lr (and --overwrite): --resume would continue with the "
                    "checkpoint's own learning rate (the last good epoch is in checkpoints/last.ckpt)")
        bs = len(images)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        for k, v in losses.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        values, weights = step_metrics(stats)
        for k, w in weights.items():  # epoch means over the images (or RoIs) each counts: metrics.csv
            self.log(k, values[k], on_step=False, on_epoch=True, batch_size=int(w), sync_dist=True)
        self.epoch_stats.add(values, weights)
        warning = self.collapse.update(self.global_step + 1, images_with_gt=values["images_with_gt"],
                                       rpn_pos_per_img=values["rpn_pos_per_img"],
                                       rpn_top_fg=values["rpn_top_fg"]) if self.collapse else None
        if warning and self.trainer.is_global_zero:
            log.warning("%s", warning)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # tensors and numbers only: the checkpoint stays loadable with weights_only=True
        checkpoint["rts"] = {"torch_rng": torch.get_rng_state(), "best_ap50": float(self.best_ap50),
                             "best_epoch": int(self.best_epoch)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rts") or {}
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.best_ap50 = float(state.get("best_ap50", -1.0))
        self.best_epoch = int(state.get("best_epoch", -1))

    def on_train_epoch_start(self) -> None:
        self.epoch_stats = EpochStats()
        ds = getattr(self.trainer.train_dataloader, "dataset", None)
        if ds is not None and hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        from rtscli.engine.evaluate import detections_to_coco

        images, _, metas = batch
        preds = self.model.predict(images)
        for p, m in zip(preds, metas, strict=True):
            self._val_results += detections_to_coco(p, m["image_id"], m["size"], self.tile)

    def on_validation_epoch_end(self) -> None:
        from rtscli.engine.evaluate import coco_metrics

        results = self._val_results
        self._val_results = []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, results)
            # the distributed sampler pads the split so ranks divide it evenly: an image seen by
            # two ranks must count once, or its detections would count twice
            owner: dict[int, int] = {}
            for rank, part in enumerate(gathered):
                for r in part:
                    owner.setdefault(r["image_id"], rank)
            results = [r for rank, part in enumerate(gathered) for r in part if owner[r["image_id"]] == rank]
        m = coco_metrics(self.val_gt, results) if self.val_gt else {"segm": {"AP50": 0.0}, "bbox": {"AP50": 0.0}}
        ap50 = m["segm"]["AP50"] if self.model.cfg.roi_heads.mask else m["bbox"]["AP50"]
        self.log(f"{self.scored_on}_ap50", ap50, prog_bar=True, sync_dist=False)
        self.log(f"{self.scored_on}_box_ap50", m["bbox"]["AP50"], sync_dist=False)
        if self.trainer.sanity_checking:
            return
        self.last_val_ap50, self.last_val_epoch = ap50, self.current_epoch
        if self.scored_on != "val":  # the training chips' fit cannot choose an epoch: the bundle keeps the last
            return
        if ap50 >= self.best_ap50:  # ties go to the latest epoch (it has trained longest)
            self.best_ap50, self.best_epoch = ap50, self.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return optimizer_and_schedule(self, self.settings, self.total_steps)


class SslModule(L.LightningModule):
    """Masked image modelling of one backbone (``rts ssl``): ``model`` is a
    :class:`rtscli.modeling.mim.MaskedImageModel`, trained on its reconstruction loss; no validation.

    It carries the validation attributes :class:`RunCheckpoints` and :class:`LogProgress` read (never set).
    The checkpoint carries the torch RNG, so a resumed run draws the same masks.
    """

    def __init__(self, model: MaskedImageModel, *, settings: TrainSettings, total_steps: int) -> None:
        super().__init__()
        self.model: MaskedImageModel = model
        self.settings = settings
        self.total_steps = total_steps
        # what the checkpoint and progress callbacks of rts pretrain look at: no validation here
        self.best_epoch, self.best_ap50, self.last_val_epoch, self.last_val_ap50 = -1, -1.0, -1, None

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, valid, mask = batch
        loss, _ = self.model(images, valid, mask)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the reconstruction loss became {loss.item()} at step {self.global_step}",
                                fix="start again with a lower --lr (and --overwrite)")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images),
                 sync_dist=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rts"] = {"torch_rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rts") or {}
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return optimizer_and_schedule(self, self.settings, self.total_steps)


class LogProgress(L.Callback):
    """Progress as log lines, for when stderr is not a terminal (SLURM, nohup, a pipe) and no bar is drawn.

    One line at most every ``every`` seconds (default :func:`rtscli.progress.interval`: ``RTS_PROGRESS_SECONDS``,
    30; 0 logs every step) and one at the end of every epoch, with the validation AP50 when it validated::

        training: epoch 2/6, step 27/70 (39%), loss 1.234, 2.1 steps/s, ETA 20 s
        training: epoch 2/6 done, step 30/70 (43%), mean loss 1.18, RPN pos/img 3.2, top fg 0.41,
        val mask AP50 0.412 (best 0.412 at epoch 2), 2.1 steps/s, ETA 19 s

    (``training-chip mask AP50 0.412`` instead, without a best, when the validation split is empty.)

    Epochs count from 0 as in Lightning's bar and metrics.csv (``6/6`` is the last of 7; a one-epoch run says
    ``epoch 0 (the only epoch)``, not ``0/0``). Steps are optimizer
    steps (the global step; each DDP process runs all of them on its share of the data). The rate is over the
    steps this process ran since it started (a resumed run counts from the resume) and includes validation
    time, so the ETA does too (:func:`rtscli.progress.pace`). The loss is the first process's own (not averaged
    over processes). Only the first process logs.
    """

    def __init__(self, every: float | None = None) -> None:
        self.every = interval() if every is None else every  # seconds
        self.started = self.last_line = 0.0  # time.monotonic() seconds
        self.first_step = 0
        self.total: int | None = None  # steps of the whole run, when known
        self.last_epoch: int | None = None
        self.loss_sum: torch.Tensor | float = 0.0  # this epoch's step losses (a device tensor: no sync per step)
        self.loss_steps = 0
        self.loss: torch.Tensor | None = None  # the latest step's loss

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = self.last_line = time.monotonic()
        self.first_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        self.total = int(total) if math.isfinite(total) and total > 0 else None
        per_epoch = trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)
        if self.total and math.isfinite(per_epoch) and per_epoch > 0:
            self.last_epoch = math.ceil(self.total / math.ceil(per_epoch)) - 1

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.loss_sum, self.loss_steps, self.loss = 0.0, 0, None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self.loss = loss.detach().float()
            self.loss_sum = self.loss_sum + self.loss
            self.loss_steps += 1
        if time.monotonic() - self.last_line >= self.every:
            self._line(trainer, module, epoch_end=False)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._line(trainer, module, epoch_end=True)

    def _line(self, trainer: L.Trainer, module: L.LightningModule, *, epoch_end: bool) -> None:
        now = time.monotonic()
        self.last_line = now
        step, total = trainer.global_step, self.total
        epoch = f"epoch {trainer.current_epoch}"
        if self.last_epoch:  # the last epoch's number (0-based): "epoch 2/6"
            epoch += f"/{self.last_epoch}"
        epoch += " done" if epoch_end else ""
        if self.last_epoch == 0:  # not "epoch 0/0"
            epoch += " (the only epoch)"
        parts = [epoch]
        parts.append(f"step {step}/{total} ({min(step / total, 1.0):.0%})" if total else f"step {step}")
        if epoch_end and self.loss_steps:
            parts.append(f"mean loss {float(self.loss_sum) / self.loss_steps:.4g}")
        elif not epoch_end and self.loss is not None:
            parts.append(f"loss {self.loss.item():.4g}")
        health = module.epoch_stats.summary() if epoch_end and isinstance(module, DetectionModule) else None
        if health:  # RPN positives per image, the best proposals' slump probability
            parts.append(health)
        # only a DetectionModule validates (an SslModule's last_val_epoch stays -1)
        if epoch_end and isinstance(module, DetectionModule) and module.last_val_epoch == trainer.current_epoch:
            what = "mask" if module.model.cfg.roi_heads.mask else "box"
            if module.scored_on == "val":
                parts.append(f"val {what} AP50 {module.last_val_ap50:.3f} "
                             f"(best {max(module.best_ap50, 0.0):.3f} at epoch {module.best_epoch})")
            else:
                parts.append(f"training-chip {what} AP50 {module.last_val_ap50:.3f}")
        elapsed = now - self.started
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        parts += pace(step, total, elapsed, rate=rate, unit="steps")
        log.info("training: %s", ", ".join(parts))
