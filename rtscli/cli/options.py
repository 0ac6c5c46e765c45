"""The options of the training commands (``rts pretrain``, ``finetune``, ``ssl``, ``ablate``), each defined once.

Typer takes every option as a parameter of the command's function, so the commands share the options
as ``Annotated`` aliases (type, flag and help text, defined here once) and hand what they received to
:class:`TrainingOptions`, the one place that turns them into the engine's
:class:`rtscli.engine.train_settings.TrainSettings` (the preset's defaults for what was left out). Nothing here
imports torch: ``rts --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from pathlib import Path

    from rtscli.engine.train_settings import TrainSettings
    from rtscli.modeling.config import TrainingDefaults

MaxSteps = Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides --epochs; for quick checks). Default: run all the epochs.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Tiles per step per device. Default: the preset's (`rts info --preset P`).")]
LearningRate = Annotated[Optional[float], typer.Option(help="Learning rate at 16 tiles per step; scaled linearly with the total batch. Default: the preset's.")]
WeightDecay = Annotated[Optional[float], typer.Option(help="AdamW weight decay. Default: the preset's.")]
WarmupSteps = Annotated[Optional[int], typer.Option(help="Linear warmup steps. Default: the preset's.")]
Schedule = Annotated[Optional[str], typer.Option(help="cosine or step decay after warmup. Default: the preset's.")]
Epochs = Annotated[Optional[int], typer.Option(help="Epochs (the paper: 36). Default: the preset's.")]
GradClip = Annotated[float, typer.Option(help="Gradient norm clipping.")]
Devices = Annotated[str, typer.Option(help="Devices per node (number or 'auto').")]
NumNodes = Annotated[int, typer.Option(help="Nodes (multi-node DDP under torchrun/SLURM).")]
Accelerator = Annotated[str, typer.Option(help="auto (a CUDA GPU, else Apple silicon's MPS, else the CPU), cpu, gpu or mps. On the CPU the estimated time per step and per run is printed first; with auto, a run estimated at over 10 s per step (a GPU-sized preset such as the default) is refused and names the CPU presets (cpu-r18, nano): --accelerator cpu runs it on the CPU anyway.")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 mixed on GPU, fp32 on CPU) or a Lightning precision.")]
Workers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Seed = Annotated[int, typer.Option(help="Random seed (runs on the CPU are deterministic).")]
ValEvery = Annotated[int, typer.Option(help="Validate (mask AP50, best checkpoint) every N epochs.")]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run directory.")]
TileSize = Annotated[Optional[int], typer.Option(help="The model's square input tile in pixels, a multiple of 32 (the backbone's total stride). Default: the preset's (nano 256, MViTv2 1024). Chips up to the tile are used whole (smaller ones padded); training crops larger chips at random, evaluation refuses them: make it at least your chip size (rts prepare --chip-size). Slumps should fit well inside it: rts predict cuts scenes into tiles and merges slumps cut by tile borders, but one much wider than about half a tile is seen only in pieces.", show_default=False)]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads of torch (default: the CPUs this job may use: SLURM_CPUS_PER_TASK, cgroup quota, OMP_NUM_THREADS).", show_default=False)]
LayerDecay = Annotated[Optional[float], typer.Option(help="Layer-wise learning-rate decay of a pretrained backbone (--backbone-weights): each block trains at lr x F^(blocks above it), the stem lowest, as MAE and SimMIM fine-tune. Default: 0.75 with --backbone-weights, 1 (off) from random weights.", show_default=False)]
CopyPaste = Annotated[Optional[float], typer.Option(help="Copy-paste augmentation (Ghiasi et al. 2021): the chance per training chip that slumps of another training chip are pasted onto it (0-1). Default: the preset's (0: off).", show_default=False)]
KeepCheckpoints = Annotated[bool, typer.Option("--keep-checkpoints", help="Keep checkpoints/ (optimizer state, larger than the model) in the bundle after a complete run, e.g. to continue it with more --epochs and --resume.")]


@dataclass(frozen=True)
class TrainingOptions:
    """The training options of one command line, as given: None means "the preset's default".

    Every field is required, so a command that forgets to hand one over fails at once (``TypeError``)
    instead of training with a silent default. :meth:`of` picks them out of the command's parameters;
    :meth:`settings` turns them into the engine's :class:`rtscli.engine.train_settings.TrainSettings`.
    """

    epochs: int | None
    max_steps: int | None
    batch_size: int | None
    lr: float | None
    weight_decay: float | None
    warmup_steps: int | None
    schedule: str | None
    grad_clip: float
    devices: str
    num_nodes: int
    accelerator: str
    precision: str
    workers: int
    seed: int
    val_every: int
    backbone_weights: str | None
    keep_checkpoints: bool
    # detector training only (rts pretrain, finetune, ablate); rts ssl has neither
    layer_decay: float | None = None
    copy_paste: float | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any], **fixed: Any) -> TrainingOptions:
        """The training options among a command's parameters.

        Args:
            params: the command function's parameters by name (its ``locals()`` taken first thing, before
                it defines anything else); names that are no training option are ignored.
            **fixed: values of the training options the command does not offer on its command line
                (``rts ssl`` has no ``--schedule``, for one).

        Returns:
            The options, ``fixed`` ones included.

        Raises:
            TypeError: a training option is neither among ``params`` nor in ``fixed``, or is in both.
        """
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in params.items() if k in names}
        if both := given.keys() & fixed.keys():
            raise TypeError(f"training options both on the command line and fixed: {', '.join(sorted(both))}")
        return cls(**given, **fixed)

    def settings(self, defaults: TrainingDefaults | None = None) -> TrainSettings:
        """The engine's settings: each option left out (None) takes the preset's training default.

        ``--devices`` becomes a number when it is one ("auto" stays), ``--accelerator auto`` the device
        this machine has, and no ``--max-steps`` Lightning's "no limit" (-1: all the epochs run).

        Args:
            defaults: the preset's training defaults (:func:`rtscli.modeling.config.training_defaults`);
                the paper's recipe (:class:`rtscli.modeling.config.TrainingDefaults`) when None.

        Returns:
            The :class:`rtscli.engine.train_settings.TrainSettings` of the run.

        Raises:
            RtsError: an unknown ``--schedule``, or an ``--accelerator`` this machine lacks
                (:func:`rtscli.engine.devices.resolve_accelerator`).
        """
        from rtscli.engine.devices import resolve_accelerator
        from rtscli.engine.train_settings import TrainSettings
        from rtscli.errors import unknown_choice
        from rtscli.modeling.config import TrainingDefaults

        d = defaults or TrainingDefaults()

        def pick(given: Any, default: Any) -> Any:
            return default if given is None else given

        schedule = pick(self.schedule, d.schedule)
        if schedule not in ("cosine", "step"):
            raise unknown_choice("--schedule", schedule, ("cosine", "step"))
        return TrainSettings(
            epochs=pick(self.epochs, d.epochs or 36),
            max_steps=pick(self.max_steps, -1),  # Lightning's "no limit": run all the epochs
            batch_size=pick(self.batch_size, d.batch_size),
            base_lr=pick(self.lr, d.lr),
            weight_decay=pick(self.weight_decay, d.weight_decay),
            warmup_steps=pick(self.warmup_steps, d.warmup_steps),
            schedule=schedule,
            grad_clip=self.grad_clip,
            devices=int(self.devices) if self.devices.isdigit() else self.devices,
            num_nodes=self.num_nodes,
            accelerator=resolve_accelerator(self.accelerator),
            precision=self.precision,
            workers=self.workers,
            seed=self.seed,
            val_every=self.val_every,
            keep_checkpoints=self.keep_checkpoints,
            backbone_weights=self.backbone_weights,
            layer_decay=check_layer_decay(pick(self.layer_decay, 0.75 if self.backbone_weights else 1.0)),
            copy_paste=check_share(pick(self.copy_paste, d.copy_paste), "--copy-paste"),
        )


def check_layer_decay(value: float) -> float:
    """``--layer-decay``, checked: a number in (0, 1]. Raises :class:`RtsError` otherwise."""
    from rtscli.errors import RtsError

    if not 0.0 < value <= 1.0:
        raise RtsError(f"--layer-decay {value} must lie in (0, 1]", fix="e.g. --layer-decay 0.75, or 1 for none")
    return float(value)


def check_share(value: float, flag: str) -> float:
    """A probability option (``--copy-paste``), checked: in [0, 1]. Raises :class:`RtsError` otherwise."""
    from rtscli.errors import RtsError

    if not 0.0 <= value <= 1.0:
        raise RtsError(f"{flag} {value} must lie between 0 and 1", fix=f"e.g. {flag} 0.5, or 0 for none")
    return float(value)


def fusion_defaults(sources: list[Path], preset: str | None) -> TrainingDefaults:
    """The training defaults of a model that fuses unimodal ones (``rts finetune``, ``rts ablate``).

    Args:
        sources: the ``--from`` bundles (may be empty).
        preset: ``--preset``, for when there is no ``--from`` (default ``cascade-mvitv2-b``).

    Returns:
        The defaults of the first ``--from`` bundle's model, else those of the preset.

    Raises:
        RtsError: a ``--from`` bundle that cannot be read, or an unknown preset.
    """
    from rtscli.modeling.bundle import read_bundle
    from rtscli.modeling.config import training_defaults

    if sources:
        return training_defaults(read_bundle(sources[0]).model_config)
    return training_defaults(preset or "cascade-mvitv2-b")


def use_threads(threads: int | None) -> int:
    """``--threads``, checked, set as torch's CPU threads (:func:`rtscli.machine.use_threads`): the training
    commands' share of the job's cores.

    Args:
        threads: ``--threads N``, or None (the job's CPUs: ``SLURM_CPUS_PER_TASK``, the cgroup quota,
            ``OMP_NUM_THREADS``).

    Returns:
        The threads set.

    Raises:
        RtsError: a count below 1.
    """
    from rtscli.errors import RtsError
    from rtscli.machine import use_threads as set_threads

    if threads is not None and threads < 1:
        raise RtsError(f"--threads {threads} must be 1 or more", fix="drop --threads for the default")
    return set_threads(threads)

