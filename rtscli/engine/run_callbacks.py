"""Training-run callbacks that keep a run recoverable: checkpoints after every epoch and a clean stop on SIGTERM.

* :class:`RunCheckpoints`: ``checkpoints/last.ckpt`` after every epoch, ``best.ckpt`` after each best one.
* :class:`StopOnSigterm`: SIGTERM stops a run after its step, with ``last.ckpt`` at that step inside an epoch;
  a resume from there continues exactly.

This module imports lightning at its top, so it is imported late, inside the functions that train
(:func:`rtscli.engine.train.fit`), as :mod:`rtscli.engine.lightning_task` is.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rtscli.errors import user_error

log = logging.getLogger("rtscli")


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
