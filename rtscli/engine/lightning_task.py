"""The Lightning side of training: the LightningModules and callbacks that :func:`rtscli.engine.train.fit` runs.

This module imports lightning at its top, so it is itself imported late, inside the functions that train
(as torchgeo's ``trainers``): ``rts --help`` and the engine's other modules never load lightning.

* :class:`DetectionModule`: a detector's training step, validation AP50 and best weights (``rts pretrain``,
  ``rts finetune``, ``rts ablate``; with an empty validation split, AP50 on the training chips, labelled so);
  :class:`SslModule`: masked image modelling (``rts ssl``). Both optimize with :func:`optimizer_and_schedule`.
* :class:`RunCheckpoints`: ``checkpoints/last.ckpt`` after every epoch, ``best.ckpt`` after each best one.
* :class:`StopOnSigterm`: SIGTERM stops a run after its step, with ``last.ckpt`` at that step inside an epoch;
  a resume from there continues exactly.
* :class:`LogProgress`: progress as log lines when stderr is not a terminal.

Epochs are numbered from 0 everywhere (checkpoints, ``metrics.csv``, the bundle's metrics, Lightning's
progress bar and :class:`LogProgress`): ``epoch 6/6`` is the last of 7.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from rtscli.engine.train_settings import NonFiniteLoss, TrainSettings
from rtscli.errors import user_error
from rtscli.progress import interval, pace

if TYPE_CHECKING:
    from rtscli.modeling.detector import Detector
    from rtscli.modeling.mim import MaskedImageModel

log = logging.getLogger("rtscli")


def optimizer_and_schedule(module: L.LightningModule, settings: TrainSettings,
                           total_steps: int) -> OptimizerLRSchedulerConfig:
    """The optimizer and learning-rate schedule of a run (Lightning's ``configure_optimizers`` return value).

    AdamW over the module's trainable parameters at ``settings.lr(world size)``, with linear warmup
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
    opt = torch.optim.AdamW(params, lr=settings.lr(world), weight_decay=settings.weight_decay)
    steps = total_steps  # no trainer attached (unit use)
    if trainer is not None:
        try:  # the steps each process really runs (DDP splits the data), or --max-steps
            steps = int(trainer.estimated_stepping_batches)
        except Exception:  # nothing to estimate from (unit use)
            steps = total_steps
    warm = max(1, min(settings.warmup_steps, steps // 5))
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

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        losses = self.model.losses(images, targets)
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


class RunCheckpoints(Checkpoint):
    """``dirpath/last.ckpt`` at the end of every training epoch; ``dirpath/best.ckpt`` after each epoch that set
    the best validation AP50 (``>=``: ties go to the latest epoch, as the bundle's weights do).

    Lightning's ModelCheckpoint(every_n_epochs=N) writes ``last`` only on validation epochs, so a resume
    could lose up to N - 1 epochs. ``on_train_epoch_end`` comes after the epoch's validation (Lightning
    runs it inside the training epoch), so a validation epoch's checkpoint carries its validation state
    (best AP50 and epoch), and before the next epoch draws anything from the RNG, which the module stores.
    Being a ``Checkpoint``, it runs after the other callbacks and Lightning adds no ModelCheckpoint of its own.
    """

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        # written through .partial files and renamed, best before last: a job killed at any moment leaves a
        # last.ckpt whose best epoch is the one best.ckpt holds. Every process calls save_checkpoint (DDP);
        # the first one writes.
        part = self.dirpath / "last.ckpt.partial"
        try:
            trainer.save_checkpoint(part, weights_only=False)  # the whole training state: resume needs it
        except Exception as exc:  # disk full, no permission: one line naming the checkpoint, no .partial left
            part.unlink(missing_ok=True)
            err = user_error(exc, path=self.dirpath / "last.ckpt")
            if err is not None:
                raise err from exc
            raise
        if not trainer.is_global_zero:
            return
        if module.best_epoch == trainer.current_epoch:
            # this epoch's validation set the best: best.ckpt is the same file (a hard link, or a copy where
            # the file system has none); last.ckpt becomes a new file next epoch
            best = self.dirpath / "best.ckpt.partial"
            best.unlink(missing_ok=True)
            try:
                os.link(part, best)
            except OSError:
                shutil.copyfile(part, best)
            os.replace(best, self.dirpath / "best.ckpt")
        os.replace(part, self.dirpath / "last.ckpt")


class StopOnSigterm(L.Callback):
    """What SIGTERM (SLURM's time limit, ``scancel``, ``kill``) does to a run: it stops after the running step and
    leaves a checkpoint to continue from.

    :func:`rtscli.engine.train.fit` installs :meth:`handle_signal` as the SIGTERM handler around Lightning's fit.
    Before Lightning's loop starts (the trainer's setup, a checkpoint being loaded, DDP starting) no step is under
    way and it stops the run at once. From the loop's start Lightning's own handler is in place (and calls this
    one too): the running step finishes, then Lightning raises its ``SIGTERMException``. When that step fell inside
    a training epoch of a one-process run, :meth:`on_exception` writes ``last.ckpt`` at that step; otherwise (in
    validation, at an epoch's end, under DDP) ``last.ckpt`` stays the latest completed epoch, which
    :class:`RunCheckpoints` wrote.

    A resume from inside an epoch continues exactly: the checkpoint records the batches of the epoch already
    trained and the torch RNG; the :class:`rtscli.engine.train.EpochSampler` then leaves those batches out and the
    RNG is set again just before the next step (starting the data loader draws from it). That epoch's mean training
    loss covers the steps after the resume. Every checkpoint records the epoch that comes next, and the sampler is
    given it before Lightning starts the data loader (whose worker processes draw the first indices at once).
    At each epoch's start the CSV log's rows are written out, so that a job killed outright (SIGKILL) keeps the
    history of its completed epochs.
    """

    def __init__(self, dirpath: Path, sampler: Any = None, batch_size: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.sampler = sampler  # the training EpochSampler (set_epoch, skip), or None
        self.batch_size = batch_size
        self.received = False  # a SIGTERM came
        self.in_loop = False  # Lightning's loop, and its SIGTERM handler, have started
        self.done = 0  # training batches completed in the current epoch
        self.saved_at: int | None = None  # the step of the checkpoint written on SIGTERM
        self.checkpoint_step: int | None = None  # the step last.ckpt holds, when known
        self._trainer: L.Trainer | None = None
        self._mid: dict[str, Any] | None = None  # the state of a checkpoint being written inside an epoch
        self._rng: torch.Tensor | None = None  # the RNG of the checkpoint resumed from inside an epoch

    def handle_signal(self, signum: int, frame: Any) -> None:
        self.received = True
        if not self.in_loop:
            raise SIGTERMException()  # no step under way: stop now

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # called while a checkpoint is written: inside an epoch by on_exception, else at an epoch's end
        trainer = self._trainer
        state = self._mid or {"next_epoch": trainer.current_epoch + 1 if trainer else 0, "batches_done": 0}
        if trainer is not None:
            state = {**state, "step": trainer.global_step}
            self.checkpoint_step = trainer.global_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before it builds the training data loader's iterator
        epoch, batches = int(state_dict.get("next_epoch", 0)), int(state_dict.get("batches_done", 0))
        self.checkpoint_step = int(state_dict.get("step", 0))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if batches and self._trainer is not None and self._trainer.world_size == 1:
            if self.sampler is not None:
                self.sampler.skip = batches * self.batch_size
            self.done = batches
            self._rng = state_dict.get("torch_rng")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.in_loop = True
        if self.received:
            raise SIGTERMException()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.done = 0
        for logger in trainer.loggers:
            logger.save()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rng is not None:
            torch.set_rng_state(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.done += 1

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.world_size != 1 or trainer.validating:
            return
        if not 0 < self.done < trainer.num_training_batches:
            return  # at an epoch's end last.ckpt is that epoch already
        self._mid = {"next_epoch": trainer.current_epoch, "batches_done": self.done,
                     "torch_rng": torch.get_rng_state()}
        part = self.dirpath / "last.ckpt.partial"
        try:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(part, weights_only=False)
            os.replace(part, self.dirpath / "last.ckpt")
            self.saved_at = trainer.global_step
        except Exception as exc:  # disk full, no permission: the latest completed epoch's checkpoint stays
            part.unlink(missing_ok=True)
            log.warning("could not write a checkpoint at step %d on SIGTERM: %s", trainer.global_step, exc)
        finally:
            self._mid = None


class LogProgress(L.Callback):
    """Progress as log lines, for when stderr is not a terminal (SLURM, nohup, a pipe) and no bar is drawn.

    One line at most every ``every`` seconds (default :func:`rtscli.progress.interval`: ``RTS_PROGRESS_SECONDS``,
    30; 0 logs every step) and one at the end of every epoch, with the validation AP50 when it validated::

        training: epoch 2/6, step 27/70 (39%), loss 1.234, 2.1 steps/s, ETA 20 s
        training: epoch 2/6 done, step 30/70 (43%), mean loss 1.18, val mask AP50 0.412 (best 0.412 at epoch 2),
        2.1 steps/s, ETA 19 s

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
