"""How a run trains: the resolved training options every training command shares (no torch, no lightning).

Read by the Lightning modules (:mod:`rtscli.engine.lightning_task`), the fit loop (:mod:`rtscli.engine.train`)
and the commands that build them (:mod:`rtscli.cli.options`); recorded in every bundle (:func:`settings_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rtscli.errors import RtsError


#: learning rates are given for this total batch size and scaled linearly (Goyal et al.; the paper)
REFERENCE_BATCH = 16


@dataclass
class TrainSettings:
    """How a run trains: the command line's training options, resolved (:class:`rtscli.cli.options.TrainingOptions`).

    ``max_steps`` -1 runs all the ``epochs``; ``base_lr`` is the learning rate at :data:`REFERENCE_BATCH` tiles
    per step (:meth:`lr`); ``devices`` a count or "auto"; ``extra``: more entries for the bundle's record.
    """

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
    # layer-wise learning-rate decay of a pretrained backbone's body: the block k layers below the top trains at
    # lr x layer_decay^k, its stem lowest (BEiT, MAE and SimMIM fine-tuning); 1.0: every parameter at lr
    layer_decay: float = 1.0
    copy_paste: float = 0.0  # per training chip, the chance that slumps of another chip are pasted onto it
    extra: dict[str, Any] = field(default_factory=dict)

    def lr(self, world_size: int) -> float:
        """The learning rate of the run.

        Args:
            world_size: the processes training together (devices x nodes).

        Returns:
            ``base_lr`` scaled linearly from :data:`REFERENCE_BATCH` to the total batch.
        """
        return self.base_lr * self.batch_size * world_size / REFERENCE_BATCH


class NonFiniteLoss(RtsError):
    """The training loss became NaN or infinite: the run stops (the last good epoch is in its checkpoints)."""


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    """The settings as a bundle records them.

    Args:
        s: the run's settings.

    Returns:
        Every field but ``extra``, then ``extra``'s entries.
    """
    return {k: v for k, v in asdict(s).items() if k != "extra"} | dict(s.extra)
