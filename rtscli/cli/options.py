"""Command-line options shared by the training commands (``rts pretrain``, ``rts finetune``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

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
Accelerator = Annotated[str, typer.Option(help="auto (a CUDA GPU, else Apple silicon's MPS, else the CPU), cpu, gpu or mps.")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 mixed on GPU, fp32 on CPU) or a Lightning precision.")]
Workers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Seed = Annotated[int, typer.Option(help="Random seed (runs on the CPU are deterministic).")]
ValEvery = Annotated[int, typer.Option(help="Validate (mask AP50, best checkpoint) every N epochs.")]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run directory.")]
TileSize = Annotated[Optional[int], typer.Option(help="The model's square input tile in pixels, a multiple of 32 (the backbone's total stride). Default: the preset's (nano 256, MViTv2 1024). Chips up to the tile are used whole (smaller ones padded); training crops larger chips at random, evaluation refuses them: make it at least your chip size (rts prepare --chip-size). Slumps should fit well inside it: rts predict cuts scenes into tiles and merges slumps cut by tile borders, but one much wider than about half a tile is seen only in pieces.", show_default=False)]
KeepCheckpoints = Annotated[bool, typer.Option("--keep-checkpoints", help="Keep checkpoints/ (optimizer state, larger than the model) in the bundle after a complete run, e.g. to continue it with more --epochs and --resume.")]
