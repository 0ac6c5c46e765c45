"""Training on Lightning: AdamW, warmup then cosine (or step) decay, LR scaled with batch size.

The loop Lightning runs gives DDP (``--devices``, ``--num-nodes``, torchrun/SLURM), mixed precision
on GPU, gradient clipping and exact resume. :func:`make_checkpoints` keeps ``checkpoints/last.ckpt``
(the latest completed epoch, whatever ``--val-every`` says) and ``best.ckpt`` (the best validation
AP50; ties go to the latest epoch). Resume loads them with ``weights_only=True`` (no unpickling).
The best weights are also kept in memory; :func:`bundle_weights` picks what the bundle holds.
When stderr is not a terminal, :func:`make_progress` logs progress lines instead of a bar.

Epochs are numbered from 0 everywhere (checkpoints, ``metrics.csv``, the bundle's metrics, Lightning's
progress bar and :class:`LogProgress`): ``epoch 6/6`` is the last of 7.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rtscli.errors import RtsError
from rtscli.progress import duration, interval, is_terminal

log = logging.getLogger("rtscli")

#: learning rates are given for this total batch size and scaled linearly (Goyal et al.; the paper)
REFERENCE_BATCH = 16


@dataclass
class TrainSettings:
    epochs: int = 36
    max_steps: int = -1
    batch_size: int = 2
    base_lr: float = 1e-4  # at REFERENCE_BATCH images per step
    weight_decay: float = 0.05
    warmup_steps: int = 250
    schedule: str = "cosine"  # cosine | step
    grad_clip: float = 1.0
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "auto"
    workers: int = 2
    seed: int = 0
    val_every: int = 1
    keep_checkpoints: bool = False  # keep checkpoints/ in the run directory once the bundle is written
    backbone_weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lr(self, world_size: int) -> float:
        return self.base_lr * self.batch_size * world_size / REFERENCE_BATCH


class NonFiniteLoss(RtsError):
    pass


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls ``set_epoch`` on samplers that have it (and wraps this one for DDP). It yields
    ``(index, epoch)`` pairs: data-loading workers keep their own copy of the dataset, so the epoch
    (which seeds the augmentation) must travel with the index.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((i, self.epoch) for i in torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _lightning():
    import lightning as L

    return L


def make_module(model, *, settings: TrainSettings, val_gt: dict | None, tile: int, total_steps: int):
    L = _lightning()

    class DetectionModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.val_gt = val_gt
            self.tile = tile
            self._val_results: list[dict] = []
            self.best_ap50 = -1.0  # the best validation AP50 so far (-1: no validation yet)
            self.best_state: dict[str, torch.Tensor] | None = None  # its weights, when validated in this process
            self.best_epoch = -1  # its epoch (0-based); the latest one on ties
            self.last_val_ap50: float | None = None  # the latest validation, for LogProgress
            self.last_val_epoch = -1
            self.total_steps = total_steps

        def training_step(self, batch, batch_idx):
            images, targets, _ = batch
            losses = self.model.losses(images, targets)
            loss = sum(losses.values())
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
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(self.current_epoch)

        def validation_step(self, batch, batch_idx):
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
            self.log("val_ap50", ap50, prog_bar=True, sync_dist=False)
            self.log("val_box_ap50", m["bbox"]["AP50"], sync_dist=False)
            if self.trainer.sanity_checking:
                return
            self.last_val_ap50, self.last_val_epoch = ap50, self.current_epoch
            if ap50 >= self.best_ap50:  # ties go to the latest epoch (it has trained longest)
                self.best_ap50, self.best_epoch = ap50, self.current_epoch
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

        def configure_optimizers(self):
            return optimizer_and_schedule(self, settings, self.total_steps)

    return DetectionModule()


def optimizer_and_schedule(module, settings: TrainSettings, total_steps: int) -> dict:
    """AdamW over the module's trainable parameters at ``settings.lr(world size)``, with linear warmup
    (``warmup_steps``, at most a fifth of the run) then cosine or step decay, per optimizer step (Lightning's
    ``configure_optimizers`` return value). ``total_steps`` is used when no trainer is attached."""
    params = [p for p in module.parameters() if p.requires_grad]
    trainer = module._trainer
    world = trainer.world_size if trainer else 1
    opt = torch.optim.AdamW(params, lr=settings.lr(world), weight_decay=settings.weight_decay)
    try:  # the steps each process really runs (DDP splits the data), or --max-steps
        steps = int(trainer.estimated_stepping_batches)
    except Exception:  # no trainer attached (unit use)
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


def make_checkpoints(dirpath: Path):
    """The callback that keeps ``dirpath/last.ckpt`` and ``dirpath/best.ckpt`` (see :func:`fit`)."""
    from lightning.pytorch.callbacks import Checkpoint

    class RunCheckpoints(Checkpoint):
        """``last.ckpt`` at the end of every training epoch; ``best.ckpt`` after each epoch that set the best
        validation AP50 (``>=``: ties go to the latest epoch, as the bundle's weights do).

        Lightning's ModelCheckpoint(every_n_epochs=N) writes ``last`` only on validation epochs, so a resume
        could lose up to N - 1 epochs. ``on_train_epoch_end`` comes after the epoch's validation (Lightning
        runs it inside the training epoch), so a validation epoch's checkpoint carries its validation state
        (best AP50 and epoch), and before the next epoch draws anything from the RNG, which the module stores.
        Being a ``Checkpoint``, it runs after the other callbacks and Lightning adds no ModelCheckpoint of its own.
        """

        def __init__(self) -> None:
            self.dirpath = Path(dirpath)

        def on_train_epoch_end(self, trainer, module) -> None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            # written through .partial files and renamed, best before last: a job killed at any moment leaves a
            # last.ckpt whose best epoch is the one best.ckpt holds. Every process calls save_checkpoint (DDP);
            # the first one writes.
            part = self.dirpath / "last.ckpt.partial"
            trainer.save_checkpoint(part, weights_only=False)  # the whole training state: resume needs it
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

    return RunCheckpoints()


def make_progress(every: float | None = None):
    """The callback that logs training progress as lines (see :class:`LogProgress` inside)."""
    L = _lightning()

    class LogProgress(L.Callback):
        """Progress as log lines, for when stderr is not a terminal (SLURM, nohup, a pipe) and no bar is drawn.

        One line at most every ``every`` seconds (default :func:`rtscli.progress.interval`: ``RTS_PROGRESS_SECONDS``,
        30; 0 logs every step) and one at the end of every epoch, with the validation AP50 when it validated::

            training: epoch 2/6, step 27/70 (39%), loss 1.234, 2.1 steps/s, ETA 20 s
            training: epoch 2/6 done, step 30/70 (43%), mean loss 1.18, val mask AP50 0.412 (best 0.412 at epoch 2),
            2.1 steps/s, ETA 19 s

        Epochs count from 0 as in Lightning's bar and metrics.csv (``6/6`` is the last of 7). Steps are optimizer
        steps (the global step; each DDP process runs all of them on its share of the data). The rate is over the
        steps this process ran since it started (a resumed run counts from the resume) and includes validation
        time, so the ETA does too. The loss is the first process's own (not averaged over processes). Only the
        first process logs.
        """

        def __init__(self) -> None:
            self.every = interval() if every is None else every  # seconds
            self.started = self.last_line = 0.0  # time.monotonic() seconds
            self.first_step = 0
            self.total: int | None = None  # steps of the whole run, when known
            self.last_epoch: int | None = None
            self.loss_sum: torch.Tensor | float = 0.0  # this epoch's step losses (a device tensor: no sync per step)
            self.loss_steps = 0
            self.loss: torch.Tensor | None = None  # the latest step's loss

        def on_train_start(self, trainer, module) -> None:
            self.started = self.last_line = time.monotonic()
            self.first_step = trainer.global_step
            total = trainer.estimated_stepping_batches
            self.total = int(total) if math.isfinite(total) and total > 0 else None
            per_epoch = trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)
            if self.total and math.isfinite(per_epoch) and per_epoch > 0:
                self.last_epoch = math.ceil(self.total / math.ceil(per_epoch)) - 1

        def on_train_epoch_start(self, trainer, module) -> None:
            self.loss_sum, self.loss_steps, self.loss = 0.0, 0, None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if not trainer.is_global_zero:
                return
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, torch.Tensor):
                self.loss = loss.detach().float()
                self.loss_sum = self.loss_sum + self.loss
                self.loss_steps += 1
            if time.monotonic() - self.last_line >= self.every:
                self._line(trainer, module, epoch_end=False)

        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.is_global_zero:
                self._line(trainer, module, epoch_end=True)

        def _line(self, trainer, module, *, epoch_end: bool) -> None:
            now = time.monotonic()
            self.last_line = now
            step, total = trainer.global_step, self.total
            epoch = f"epoch {trainer.current_epoch}" + (f"/{self.last_epoch}" if self.last_epoch is not None else "")
            parts = [epoch + (" done" if epoch_end else "")]
            parts.append(f"step {step}/{total} ({min(step / total, 1.0):.0%})" if total else f"step {step}")
            if epoch_end and self.loss_steps:
                parts.append(f"mean loss {float(self.loss_sum) / self.loss_steps:.4g}")
            elif not epoch_end and self.loss is not None:
                parts.append(f"loss {self.loss.item():.4g}")
            if epoch_end and module.last_val_epoch == trainer.current_epoch:
                what = "mask" if module.model.cfg.roi_heads.mask else "box"
                parts.append(f"val {what} AP50 {module.last_val_ap50:.3f} "
                             f"(best {max(module.best_ap50, 0.0):.3f} at epoch {module.best_epoch})")
            elapsed = now - self.started
            rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
            if rate > 0:
                parts.append(f"{rate:.3g} steps/s")
            if total and step >= total:
                parts.append(f"done in {duration(elapsed)}")
            elif total and rate > 0:
                parts.append(f"ETA {duration((total - step) / rate)}")
            log.info("training: %s", ", ".join(parts))

    return LogProgress()


def choose_precision(settings: TrainSettings) -> str:
    if settings.precision != "auto":
        return settings.precision
    if torch.cuda.is_available() and settings.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fit(module, train_loader, val_loader, *, settings: TrainSettings, run_dir: Path, resume: bool,
        steps_per_epoch: int) -> Any:
    """Run Lightning's fit loop into ``run_dir``. Returns the trainer.

    ``run_dir/checkpoints/last.ckpt`` is the latest completed epoch and ``best.ckpt`` the best validated one
    (:func:`make_checkpoints`). Progress shows as a Rich bar on a terminal, else as log lines (:func:`make_progress`).
    """
    L = _lightning()
    from lightning.pytorch.loggers import CSVLogger

    from rtscli.engine.devices import training_device
    from rtscli.logs import adopt_lightning

    adopt_lightning()  # Lightning's "GPU available" lines and tips: through rts's log (warnings only), not raw

    ckpt_dir = run_dir / "checkpoints"
    callbacks = [make_checkpoints(ckpt_dir)]
    show = is_terminal()
    if show:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    else:
        callbacks.append(make_progress())
    strategy = "auto"
    devices = settings.devices
    if (isinstance(devices, int) and devices > 1) or settings.num_nodes > 1:
        strategy = "ddp"
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=settings.epochs if settings.max_steps < 0 else -1,
        max_steps=settings.max_steps,
        accelerator=settings.accelerator,
        devices=devices,
        num_nodes=settings.num_nodes,
        strategy=strategy,
        precision=choose_precision(settings),
        gradient_clip_val=settings.grad_clip,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="", version="logs"),
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        check_val_every_n_epoch=settings.val_every,
        num_sanity_val_steps=0,
        enable_progress_bar=show,
        enable_model_summary=False,
        deterministic=training_device(settings.accelerator) == "cpu",  # CUDA/MPS kernels are not all deterministic
        benchmark=False,
    )
    import warnings

    # frozen backbones are in eval mode on purpose (rts finetune); Lightning would warn about them
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # runs checkpointed before rts kept its own last/best files name Lightning's ModelCheckpoint: not needed to resume
    warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
    ckpt = ckpt_dir / "last.ckpt" if resume else None
    if resume and not ckpt.exists():
        raise RtsError("nothing to resume: no checkpoints/last.ckpt", path=run_dir, fix="start without --resume")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    return trainer


def bundle_weights(module, trainer, run_dir: Path,
                   val_slumps: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights a bundle keeps after :func:`fit`, and which epoch they are and why.

    Returns ``(state_dict, {"bundle_epoch": epoch, "bundle_weights": reason})`` with a 0-based epoch. The best
    validated epoch when some validation AP50 was above 0 (ties go to the latest epoch; a resumed run reads it
    from ``checkpoints/best.ckpt`` with ``weights_only=True``). Otherwise the last epoch: when every validation
    measured 0 (or none ran) the scores cannot rank epochs, and the weights that trained longest are the bet.
    ``val_slumps``: the slumps in the validation split; with none, nothing can be measured, whatever the scores.
    """
    what = "mask" if module.model.cfg.roi_heads.mask else "box"
    last = max(trainer.current_epoch - 1, 0)  # current_epoch counts the completed epochs once fit returns
    final = {k: v.detach().to("cpu", copy=True) for k, v in module.model.state_dict().items()}
    if val_slumps == 0:
        return final, {"bundle_epoch": last, "bundle_weights": f"last epoch {last}: the validation split has no "
                       "slump, so it cannot measure anything to pick a best epoch"}
    if module.best_epoch < 0:
        every = trainer.check_val_every_n_epoch
        return final, {"bundle_epoch": last, "bundle_weights": f"last epoch {last}: no validation ran (it runs at "
                       f"the end of every {every} epoch(s), --val-every {every}, and the run stopped before one, "
                       "e.g. at --max-steps), so there was no best epoch to pick"}
    if module.best_ap50 <= 0:
        return final, {"bundle_epoch": last, "bundle_weights": f"last epoch {last}: validation {what} AP50 was "
                       "0.000 at every validation, so it could not pick a best epoch"}
    state, epoch = module.best_state, module.best_epoch
    if state is None:  # resumed after the best epoch: its weights are in best.ckpt
        path = run_dir / "checkpoints" / "best.ckpt"
        if not path.exists():
            return final, {"bundle_epoch": last, "bundle_weights": f"last epoch {last}: the best epoch's "
                           f"weights (epoch {epoch}) were not kept, {path} is missing"}
        best = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
        epoch = int(best.get("epoch", epoch))
    return state, {"bundle_epoch": epoch, "bundle_weights": f"best validation {what} AP50 {module.best_ap50:.3f} "
                   f"at epoch {epoch} (ties go to the latest epoch)"}


def epoch_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch rows (epoch, train_loss, val_ap50, ...) from Lightning's CSV log."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if not r.get("epoch"):
                continue
            e = int(float(r["epoch"]))
            d = rows.setdefault(e, {"epoch": e})
            for k, v in r.items():
                if v not in ("", None) and k not in ("epoch", "step") and (k.endswith("_epoch") or k.startswith("val")):
                    d[k.replace("_epoch", "")] = float(v)
    return [rows[e] for e in sorted(rows)]


def write_epoch_csv(run_dir: Path, rows: list[dict[str, float]]) -> Path:
    keys = sorted({k for r in rows for k in r} - {"epoch"})
    path = run_dir / "metrics.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch"] + keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    return {k: v for k, v in asdict(s).items() if k != "extra"} | dict(s.extra)
