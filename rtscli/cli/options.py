"""Command-line options shared by the training commands (``rts pretrain``, ``rts finetune``)."""

from __future__ import annotations

from typing import Annotated

import typer

MaxSteps = Annotated[int, typer.Option(help="Stop after this many steps (overrides --epochs; for quick checks).")]
BatchSize = Annotated[int, typer.Option(help="Tiles per step per device.")]
LearningRate = Annotated[float, typer.Option(help="Learning rate at 16 tiles per step; scaled linearly with the total batch.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
WarmupSteps = Annotated[int, typer.Option(help="Linear warmup steps.")]
Schedule = Annotated[str, typer.Option(help="cosine or step decay after warmup.")]
GradClip = Annotated[float, typer.Option(help="Gradient norm clipping.")]
Devices = Annotated[str, typer.Option(help="Devices per node (number or 'auto').")]
NumNodes = Annotated[int, typer.Option(help="Nodes (multi-node DDP under torchrun/SLURM).")]
Accelerator = Annotated[str, typer.Option(help="auto, cpu or gpu.")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 mixed on GPU, fp32 on CPU) or a Lightning precision.")]
Workers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Seed = Annotated[int, typer.Option(help="Random seed (runs on the CPU are deterministic).")]
ValEvery = Annotated[int, typer.Option(help="Validate (mask AP50, best checkpoint) every N epochs.")]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run directory.")]
