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
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rtscli.engine.train_settings import TrainSettings
from rtscli.errors import Stopped
from rtscli.progress import is_terminal

if TYPE_CHECKING:
    import lightning as L

    from rtscli.engine.lightning_task import DetectionModule

log = logging.getLogger("rtscli")


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls ``set_epoch`` on samplers that have it (and wraps this one for DDP). It yields
    ``(index, epoch)`` pairs: data-loading workers keep their own copy of the dataset, so the epoch
    (which seeds the augmentation) must travel with the index. ``skip``: indices the next pass leaves out at its
    start, once (the batches a run resumed inside an epoch had trained: :class:`StopOnSigterm`).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        skip, self.skip, epoch = self.skip, 0, self.epoch
        return iter([(i, epoch) for i in torch.randperm(self.n, generator=g).tolist()[skip:]])

    def __len__(self) -> int:
        return self.n


def worker_init(worker_id: int) -> None:
    """The ``worker_init_fn`` of training data loaders: a worker process ignores SIGTERM (SLURM and ``timeout``
    signal every process of a job, sometimes more than once; the main process stops the run after its step and
    ends the workers itself, and a worker dead of the signal would end the run with PyTorch's "DataLoader worker
    ... killed by signal: Terminated" instead of rts's stop; a worker whose main process is gone ends by itself),
    then seeds itself as Lightning does (``seed_everything(workers=True)``)."""
    import os
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


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
    (:class:`rtscli.engine.run_callbacks.RunCheckpoints`). Progress shows as a Rich bar on a terminal, else as
    log lines (:class:`rtscli.engine.lightning_task.LogProgress`); Lightning's CSV log goes to ``run_dir/logs``,
    and the rows of the runs before a resume are kept (:func:`keep_history`).

    SIGTERM (SLURM's time limit, ``kill``) stops the run after its running step, with ``last.ckpt`` at that step
    when it fell inside a training epoch of a one-process run, else the latest completed epoch
    (:class:`rtscli.engine.run_callbacks.StopOnSigterm`), and ``run_dir/metrics.csv`` so far. The training
    loader's worker processes leave the signal to this process (:func:`worker_init`, unless the loader has a
    ``worker_init_fn`` of its own).

    Args:
        module: a :class:`rtscli.engine.lightning_task.DetectionModule` or ``SslModule``.
        train_loader: the training batches.
        val_loader: the validation batches; None validates nothing.
        settings: the run's settings.
        run_dir: the run directory.
        resume: continue from ``checkpoints/last.ckpt``; without one, the run starts from the beginning (a run
            stopped before its first checkpoint, a SLURM job script that always passes ``--resume``).
        steps_per_epoch: training batches per epoch (how often Lightning logs).

    Returns:
        The trainer, once the run is complete.

    Raises:
        Stopped: SIGTERM stopped the run (exit code 143); its message says where and what it kept.
        NonFiniteLoss: the loss became NaN or infinite.
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from rtscli.engine.devices import training_device
    from rtscli.engine.lightning_task import LogProgress
    from rtscli.engine.run_callbacks import RunCheckpoints, StopOnSigterm
    from rtscli.logs import adopt_lightning

    adopt_lightning()  # Lightning's "GPU available" lines and tips: through rts's log (warnings only), not raw

    ckpt_dir = run_dir / "checkpoints"
    sampler = train_loader.sampler if isinstance(train_loader.sampler, EpochSampler) else None
    stop = StopOnSigterm(ckpt_dir, sampler=sampler, batch_size=train_loader.batch_size or 1)
    if train_loader.num_workers > 0 and train_loader.worker_init_fn is None:
        train_loader.worker_init_fn = worker_init
    callbacks: list[L.Callback] = [RunCheckpoints(ckpt_dir), stop]
    show = is_terminal()
    if show:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    else:
        callbacks.append(LogProgress())
    strategy = "auto"
    devices = settings.devices
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    # under torchrun each process is a DDP rank, also alone (--nproc-per-node 1): the process group is set up
    if (isinstance(devices, int) and devices > 1) or settings.num_nodes > 1 or TorchElasticEnvironment.detect():
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
    # a run resumed inside an epoch: its loader leaves out the batches done (StopOnSigterm), not Lightning's case
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
    ckpt = ckpt_dir / "last.ckpt" if resume else None
    if ckpt is not None and not ckpt.exists():
        log.info("nothing to resume in %s (no checkpoints/last.ckpt): starting the run from the beginning", run_dir)
        ckpt = None
    keep_history(run_dir, resume=ckpt is not None)  # before Lightning's CSV logger replaces logs/metrics.csv
    guard = _guards[-1] if _guards else None
    if guard is not None and guard.pending:  # a SIGTERM came after an earlier run of the command (rts ablate)
        guard.stopping = True
        raise Stopped(f"stopped by SIGTERM before training started; no checkpoint yet in {run_dir}")
    previous = _handle_sigterm(stop.handle_signal)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except BaseException as exc:
        if not (stop.received or trainer.received_sigterm or _worker_terminated(exc)):
            raise
        if guard is not None:
            guard.stopping = True  # more SIGTERMs while the stop unwinds change nothing
        raise _stopped(run_dir, trainer, stop) from exc
    finally:
        if previous is not None:
            _handle_sigterm(previous)
    if stop.received:  # after the loop's end: last.ckpt is the run's last epoch, a resume writes the bundle
        if guard is not None:
            guard.stopping = True
        raise _stopped(run_dir, trainer, stop)
    if guard is not None:
        guard.trained = True  # a SIGTERM from here on lets the bundle be written (seconds) first
    return trainer


def _worker_terminated(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's error for a data-loading worker that SIGTERM ended: the job is being stopped
    (the signal reached a worker before, or instead of, this process)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DataLoader worker" in text and "Terminated" in text


class _CommandStop:
    """The SIGTERM handler of a training command outside its training loops (:func:`sigterm_stops`).

    Before training starts, a SIGTERM stops the command at once (:class:`rtscli.errors.Stopped`: exit 143 and one
    line, not a process ended without a word). Once a run has trained (``trained``, set by :func:`fit`) it is
    noted (``pending``) and the bundle is written first (seconds); the next :func:`fit` of the command (``rts
    ablate``'s next cell) then stops before it starts. While a stop unwinds (``stopping``) more SIGTERMs are
    ignored.
    """

    def __init__(self) -> None:
        self.trained = False
        self.pending = False
        self.stopping = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.stopping or self.pending:
            return
        if self.trained:
            self.pending = True
            log.warning("SIGTERM: the run has finished training; its bundle is written before rts stops")
            return
        self.stopping = True
        raise Stopped("stopped by SIGTERM before training started")


#: the handlers of the training commands running in this process (innermost last; see :func:`sigterm_stops`)
_guards: list[_CommandStop] = []


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Around a whole training command (``rts pretrain``, ``finetune``, ``ssl``, ``ablate``): SIGTERM outside the
    training loop stops it cleanly (:class:`_CommandStop`; inside the loop :func:`fit`'s own handler stops it after
    its step). Without it, a SIGTERM while the command checks its inputs, builds its model or loads weights would
    end the process without a word. The previous handler is put back afterwards (where signals can be handled
    here: the main thread)."""
    guard = _CommandStop()
    previous = _handle_sigterm(guard)
    _guards.append(guard)
    try:
        yield
    finally:
        _guards.remove(guard)
        if previous is not None:
            _handle_sigterm(previous)


def _handle_sigterm(handler: Any) -> Any:
    """Make ``handler`` the SIGTERM handler; returns the one it replaces (None where signals cannot be handled
    here: not the main thread)."""
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None
    return signal.SIG_DFL if previous is None else previous


def _stopped(run_dir: Path, trainer: L.Trainer, stop: Any) -> Stopped:
    """The error of a run that SIGTERM stopped: where, and what ``checkpoints/last.ckpt`` holds; with
    ``run_dir/metrics.csv`` so far written (first process)."""
    if trainer.is_global_zero:
        try:
            write_epoch_csv(run_dir, epoch_metrics(run_dir))
        except Exception as exc:  # never in the way of the stop
            log.warning("could not write %s: %s", run_dir / "metrics.csv", exc)
    last = run_dir / "checkpoints" / "last.ckpt"
    where = f"after step {trainer.global_step}" if stop.in_loop else "before training started"
    if stop.saved_at is not None:
        kept = f", inside epoch {trainer.current_epoch}; saved {last} at that step"
    elif last.exists():
        step = f"step {stop.checkpoint_step}" if stop.checkpoint_step is not None else "its latest completed epoch"
        kept = f"; {last} holds {step}"
    else:
        kept = f"; no checkpoint yet in {run_dir}: it starts from the beginning"
    return Stopped(f"stopped by SIGTERM {where}{kept}")


#: Lightning's CSV rows of the runs of a run directory before its latest resume (``logs/metrics.csv`` holds the
#: latest run's only: Lightning's CSV logger replaces it when a run starts)
EARLIER = "earlier.csv"


def _log_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _row_epoch(row: dict[str, str]) -> int | None:
    value = row.get("epoch")
    return int(float(value)) if value not in ("", None) else None


def log_history(run_dir: Path) -> list[dict[str, str]]:
    """Lightning's CSV rows of every run of ``run_dir``: those of the runs before the latest resume
    (``logs/earlier.csv``) up to the epoch where the latest run's rows (``logs/metrics.csv``) begin, then these.

    A resumed run starts in the epoch of its checkpoint: the earlier rows of that epoch and later ones, which it
    trains again (or continues), give way to its own, so every epoch is there once.
    """
    earlier = _log_rows(run_dir / "logs" / EARLIER)
    latest = _log_rows(run_dir / "logs" / "metrics.csv")
    epochs = [e for e in map(_row_epoch, latest) if e is not None]
    if epochs:
        start = min(epochs)
        earlier = [r for r in earlier if (e := _row_epoch(r)) is not None and e < start]
    return earlier + latest


def keep_history(run_dir: Path, *, resume: bool) -> None:
    """Before a run starts in ``run_dir`` (first process only): resumed, the rows of the runs so far
    (:func:`log_history`) go to ``logs/earlier.csv``, which Lightning's CSV logger leaves alone; started from the
    beginning, an ``earlier.csv`` left by a run with no checkpoint goes."""
    import os

    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0":
        return
    logs = run_dir / "logs"
    if not resume:
        (logs / EARLIER).unlink(missing_ok=True)
        return
    rows = log_history(run_dir)
    if not rows:
        return
    keys = sorted({k for r in rows for k in r})
    tmp = logs / (EARLIER + ".partial")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, logs / EARLIER)
    (logs / "metrics.csv").unlink(missing_ok=True)


def bundle_weights(module: DetectionModule, trainer: L.Trainer, run_dir: Path,
                   val_slumps: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights a bundle keeps after :func:`fit`, and which epoch they are and why.

    The best validated epoch when some validation AP50 was above 0 (ties go to the latest epoch; a resumed run
    reads it from ``checkpoints/best.ckpt`` with ``weights_only=True``). Otherwise the last epoch: when every
    validation measured 0 (or none ran) the scores cannot rank epochs, and the weights that trained longest are
    the bet; so too when the dataset has no validation split (``module.scored_on`` "train_chips"): how well an
    epoch fits the training chips says nothing of how well it generalizes.

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
    if module.scored_on != "val":
        return final, {"bundle_epoch": last, "bundle_weights": f"last epoch {last}: the dataset has no validation "
                       f"split, so no epoch can be chosen on held-out chips (its {what} AP50 on the training chips "
                       "measures fit, not generalization)"}
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
    """Per-epoch rows from Lightning's CSV log (``run_dir/logs/metrics.csv``, after those of the runs before a
    resume: :func:`log_history`).

    Args:
        run_dir: the run directory.

    Returns:
        One dict per epoch, in order: ``epoch``, ``steps`` (optimizer steps done at its end), ``wall_s`` (seconds
        since training started in that process), the epoch means of the training losses (``train_loss``, ...)
        and of the detector's side statistics (``rpn_pos_per_img``, ``rpn_top_fg``, ``roi_pos_per_img_s{k}``,
        ``roi_pos_fg``: :mod:`rtscli.engine.training_health`), and the validation metrics (``val_ap50``, ...;
        ``train_chips_ap50``, ... when the training chips were scored for want of a validation split) of the
        epochs that validated; none without a log.
    """
    rows: dict[int, dict[str, float]] = {}
    for r in log_history(run_dir):
        if not r.get("epoch"):
            continue
        e = int(float(r["epoch"]))
        d = rows.setdefault(e, {"epoch": e})
        for k, v in r.items():
            if v not in ("", None) and k not in ("epoch", "step") and (
                    k.endswith("_epoch") or k.startswith(("val", "train_chips", "rpn_", "roi_"))
                    or k in ("steps", "wall_s")):
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


