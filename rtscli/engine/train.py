"""The training loop: Lightning's fit with rts's modules and callbacks, and what a run leaves behind.

:func:`fit` runs Lightning's loop, which gives DDP (``--devices``, ``--num-nodes``, torchrun/SLURM), mixed
precision on GPU, gradient clipping and exact resume, with the modules and callbacks of
:mod:`rtscli.engine.lightning_task` (imported late: it imports lightning): AdamW with warmup then cosine (or
step) decay, the learning rate scaled with the total batch (``TrainSettings.lr``). Checkpoints:
``checkpoints/last.ckpt`` (the latest completed epoch, whatever ``--val-every`` says) and ``best.ckpt`` (the
best validation AP50; ties go to the latest epoch); resume loads them with ``weights_only=True`` (no
unpickling). The best weights are also kept in memory; :func:`bundle_weights` picks what the bundle holds.
On a terminal progress is a Rich bar, otherwise log lines. Epochs are numbered from 0 everywhere.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rtscli.engine.train_settings import TrainSettings
from rtscli.errors import RtsError
from rtscli.progress import is_terminal

if TYPE_CHECKING:
    import lightning as L

    from rtscli.engine.lightning_task import DetectionModule

log = logging.getLogger("rtscli")


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((i, self.epoch) for i in torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def choose_precision(settings: TrainSettings) -> str:
    """The Lightning precision of a run.

    Args:
        settings: the run's settings (``precision``, ``accelerator``).

    Returns:
        ``settings.precision`` unless it is "auto": then bf16 mixed on a CUDA GPU that has bf16, fp16 mixed
        on other CUDA GPUs, 32-bit elsewhere.
    """
    if settings.precision != "auto":
        return settings.precision
    if torch.cuda.is_available() and settings.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fit(module: L.LightningModule, train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader | None, *, settings: TrainSettings, run_dir: Path, resume: bool,
        steps_per_epoch: int) -> L.Trainer:
    """Run Lightning's fit loop into ``run_dir``.

    ``run_dir/checkpoints/last.ckpt`` is the latest completed epoch and ``best.ckpt`` the best validated one
    (:class:`rtscli.engine.lightning_task.RunCheckpoints`). Progress shows as a Rich bar on a terminal, else as
    log lines (:class:`rtscli.engine.lightning_task.LogProgress`); Lightning's CSV log goes to ``run_dir/logs``.

    Args:
        module: a :class:`rtscli.engine.lightning_task.DetectionModule` or ``SslModule``.
        train_loader: the training batches.
        val_loader: the validation batches; None validates nothing.
        settings: the run's settings.
        run_dir: the run directory.
        resume: continue from ``checkpoints/last.ckpt``.
        steps_per_epoch: training batches per epoch (how often Lightning logs).

    Returns:
        The trainer, once the run is complete.

    Raises:
        RtsError: ``resume`` without ``checkpoints/last.ckpt``.
        NonFiniteLoss: the loss became NaN or infinite.
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from rtscli.engine.devices import training_device
    from rtscli.engine.lightning_task import LogProgress, RunCheckpoints
    from rtscli.logs import adopt_lightning

    adopt_lightning()  # Lightning's "GPU available" lines and tips: through rts's log (warnings only), not raw

    ckpt_dir = run_dir / "checkpoints"
    callbacks: list[L.Callback] = [RunCheckpoints(ckpt_dir)]
    show = is_terminal()
    if show:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    else:
        callbacks.append(LogProgress())
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
        precision=choose_precision(settings),  # type: ignore[arg-type]  # a name Lightning checks
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
    # frozen backbones are in eval mode on purpose (rts finetune); Lightning would warn about them
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # runs checkpointed before rts kept its own last/best files name Lightning's ModelCheckpoint: not needed to resume
    warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
    ckpt = ckpt_dir / "last.ckpt" if resume else None
    if ckpt is not None and not ckpt.exists():
        raise RtsError("nothing to resume: no checkpoints/last.ckpt", path=run_dir, fix="start without --resume")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    return trainer


def bundle_weights(module: DetectionModule, trainer: L.Trainer, run_dir: Path,
                   val_slumps: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights a bundle keeps after :func:`fit`, and which epoch they are and why.

    The best validated epoch when some validation AP50 was above 0 (ties go to the latest epoch; a resumed run
    reads it from ``checkpoints/best.ckpt`` with ``weights_only=True``). Otherwise the last epoch: when every
    validation measured 0 (or none ran) the scores cannot rank epochs, and the weights that trained longest are
    the bet.

    Args:
        module: the module :func:`fit` trained.
        trainer: the trainer :func:`fit` returned.
        run_dir: the run directory (for ``checkpoints/best.ckpt``).
        val_slumps: the slumps in the validation split; with none, nothing can be measured, whatever the
            scores. None: not counted.

    Returns:
        ``(state_dict, {"bundle_epoch": epoch, "bundle_weights": reason})``, the epoch 0-based and the state
        on the CPU.
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
    """Per-epoch rows from Lightning's CSV log (``run_dir/logs/metrics.csv``).

    Args:
        run_dir: the run directory.

    Returns:
        One dict per epoch, in order: ``epoch``, the epoch means of the training losses (``train_loss``, ...)
        and the validation metrics (``val_ap50``, ...) of the epochs that validated; none without a log.
    """
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
    """Write the per-epoch rows (:func:`epoch_metrics`) as ``run_dir/metrics.csv``.

    Args:
        run_dir: the run directory.
        rows: the rows; the columns are ``epoch`` then every other key, sorted (blank where a row lacks one).

    Returns:
        The path written.
    """
    keys = sorted({k for r in rows for k in r} - {"epoch"})
    path = run_dir / "metrics.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch"] + keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


