"""``rts finetune``: fuse frozen unimodal backbones (the paper's phase 2) -> a fused model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rtscli.cli import options


def finetune(
    data: Annotated[Path, typer.Option(help="Dataset directory made by `rts prepare` (with every modality).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; becomes the fused model bundle.")],
    fusion: Annotated[str, typer.Option(help="residual-cross (the paper's), residual-stacked, residual-conv, cross-attn, stacked-attn, conv, or channel-stack.")] = "residual-cross",
    modalities: Annotated[str, typer.Option(help="Modalities to fuse, e.g. rgb,ndvi,nir (must include the primary).")] = "rgb,ndvi,nir",
    from_: Annotated[Optional[str], typer.Option("--from", help="Unimodal bundles from `rts pretrain`, comma-separated, one per modality (any order). Without: backbones start from --backbone-weights.")] = None,
    freeze: Annotated[Optional[bool], typer.Option("--freeze/--no-freeze", help="Freeze the --from backbones (default when --from is given); --no-freeze trains everything.")] = None,
    init_heads_from: Annotated[Optional[Path], typer.Option(help="Start RPN + box/mask heads from this bundle (e.g. the RGB one) instead of fresh.")] = None,
    primary: Annotated[str, typer.Option(help="The modality that gives the attention queries.")] = "rgb",
    preset: Annotated[Optional[str], typer.Option(help="Model preset when no --from is given (default cascade-mvitv2-b).")] = None,
    window: Annotated[int, typer.Option(help="Attention window side in tokens (memory grows with its square).")] = 8,
    heads: Annotated[int, typer.Option(help="Attention heads (at most; reduced to divide the FPN width).")] = 8,
    epochs: options.Epochs = None,
    max_steps: options.MaxSteps = None,
    batch_size: options.BatchSize = None,
    lr: options.LearningRate = None,
    weight_decay: options.WeightDecay = None,
    warmup_steps: options.WarmupSteps = None,
    schedule: options.Schedule = None,
    grad_clip: options.GradClip = 1.0,
    anchors: Annotated[str, typer.Option(help="Without --from: auto, preset, or 5 sizes.")] = "auto",
    tile_size: options.TileSize = None,
    backbone_weights: Annotated[Optional[str], typer.Option(help="Without --from: imagenet, a .safetensors file, or one `rts ssl` bundle per modality (rgb=runs/ssl_rgb,nir=runs/ssl_nir); default random.")] = None,
    measure_memory: Annotated[bool, typer.Option(help="Measure peak training memory for one sample before training.")] = True,
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
    """Fuse per-modality backbones with a fusion module and train the decoder; write a fused bundle to OUT.

    Prints the cost report (parameters, peak training memory for one sample) before training.
    """
    opts = options.TrainingOptions.of(locals())  # first thing: locals() are the parameters
    options.use_threads(threads)
    from rtscli.console import console
    from rtscli.data.modalities import parse_names
    from rtscli.engine.finetune import finetune as run

    sources = [Path(s.strip()) for s in from_.split(",") if s.strip()] if from_ else []
    settings = opts.settings(options.fusion_defaults(sources, preset))
    mods = parse_names(modalities)
    from rtscli.engine.train import sigterm_stops

    with sigterm_stops():  # SIGTERM before training starts: exit 143 with one line, like one during it
        cfg = run(data=data, fusion=fusion, modalities=mods, out=out, settings=settings, sources=sources,
                  preset=preset, primary=primary.lower(), freeze=freeze, init_heads_from=init_heads_from, heads=heads,
                  window=window, anchors=anchors, resume=resume, overwrite=overwrite, measure_memory=measure_memory,
                  tile_size=tile_size)
    m = cfg["metrics"]
    console.print(f"bundle {out}: {cfg['model']['name']}, {fusion} over {'+'.join(mods)} "
                  f"({'frozen' if cfg['training']['frozen_backbones'] else 'trained'} backbones), "
                  f"{m['steps_run']} steps; weights of {m['bundle_weights']}", markup=False, soft_wrap=True)
    console.print(f"  per-epoch metrics: {out}/metrics.csv, curves: {out}/curves.png; rts info {out}")
    from rtscli.engine.training_health import run_warnings

    for line in run_warnings(m):  # AP50 0 at every validation, a collapse: said, with what to try
        console.print(line, markup=False, soft_wrap=True)
