"""``rts pretrain``: train one unimodal Cascade Mask R-CNN -> a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rtscli.cli import options


def pretrain(
    modality: Annotated[str, typer.Option(help="Modality to train on: rgb, ndvi, nir, or another in the dataset.")],
    data: Annotated[Path, typer.Option(help="Dataset directory made by `rts prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; becomes the model bundle.")],
    preset: Annotated[str, typer.Option(help="Model preset (see `rts models`): nano, cascade-mvitv2-b, ... The default, the paper's, is sized for a GPU: on a CPU use nano (without a GPU the default is refused, with its estimated time, unless --accelerator cpu).")] = "cascade-mvitv2-b",
    epochs: options.Epochs = None,
    max_steps: options.MaxSteps = None,
    batch_size: options.BatchSize = None,
    lr: options.LearningRate = None,
    weight_decay: options.WeightDecay = None,
    warmup_steps: options.WarmupSteps = None,
    schedule: options.Schedule = None,
    grad_clip: options.GradClip = 1.0,
    detection_only: Annotated[bool, typer.Option(help="No mask head: boxes only (the paper's GeoImageNet experiment).")] = False,
    tile_size: options.TileSize = None,
    anchors: Annotated[str, typer.Option(help="auto (from the training boxes), preset, or 5 sizes e.g. 16,32,64,128,256.")] = "auto",
    backbone_weights: Annotated[Optional[str], typer.Option(help="imagenet (downloads when possible), a .safetensors state dict (timm MViTv2 / torchvision ResNet50 names), or a backbone bundle of `rts ssl` (its statistics normalize the data); default random.")] = None,
    devices: options.Devices = "1",
    num_nodes: options.NumNodes = 1,
    accelerator: options.Accelerator = "auto",
    precision: options.Precision = "auto",
    workers: options.Workers = 2,
    seed: options.Seed = 0,
    val_every: options.ValEvery = 1,
    resume: options.Resume = False,
    keep_checkpoints: options.KeepCheckpoints = False,
    layer_decay: options.LayerDecay = None,
    copy_paste: options.CopyPaste = None,
    overwrite: options.Overwrite = False,
    threads: options.Threads = None,
) -> None:
    """Train one unimodal model (the paper's phase 1) and write a model bundle to OUT.

    Tile size and chip size: the model sees square tiles of --tile-size pixels (default the
    preset's). Prepare chips no larger than the tile (rts prepare --chip-size), or pick a tile at
    least as large as your chips (e.g. --tile-size 320 for 300 px chips); and let the tile be a few
    times the size of the largest slumps, so that each is seen whole with its surroundings. The
    bundle records the tile size; rts predict and rts evaluate use it.
    """
    opts = options.TrainingOptions.of(locals())  # first thing: locals() are the parameters
    options.use_threads(threads)
    from rtscli.console import console
    from rtscli.engine.pretrain import pretrain as run
    from rtscli.modeling.config import training_defaults

    from rtscli.engine.train import sigterm_stops

    settings = opts.settings(training_defaults(preset))
    with sigterm_stops():  # SIGTERM before training starts: exit 143 with one line, like one during it
        cfg = run(data=data, modality=modality.lower(), preset=preset, out=out, settings=settings, anchors=anchors,
                  resume=resume, overwrite=overwrite, masks=not detection_only, tile_size=tile_size)
    m = cfg["metrics"]
    console.print(f"bundle {out}: {cfg['model']['name']}, modality {modality}, {m['steps_run']} steps; "
                  f"weights of {m['bundle_weights']}", markup=False, soft_wrap=True)
    console.print(f"  per-epoch metrics: {out}/metrics.csv, curves: {out}/curves.png")
    from rtscli.engine.training_health import run_warnings

    for line in run_warnings(m):  # AP50 0 at every validation, a collapse: said, with what to try
        console.print(line, markup=False, soft_wrap=True)
