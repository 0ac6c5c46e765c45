"""``rts ablate``: the grid of fusion strategies x modality sets -> tables like the paper's 3-4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rtscli.cli import options


def ablate(
    data: Annotated[Path, typer.Option(help="Dataset directory made by `rts prepare` (with every modality).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ablation directory (re-run the same command to resume).")],
    modalities: Annotated[str, typer.Option(help="Modalities, e.g. rgb,ndvi,nir; every set with the primary is tried.")] = "rgb,ndvi,nir",
    fusions: Annotated[str, typer.Option(help="'all' or a comma list of strategies (see `rts finetune --help`).")] = "all",
    sets: Annotated[Optional[str], typer.Option(help="Only these modality sets, e.g. rgb+ndvi,rgb+ndvi+nir.")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Unimodal bundles to reuse, comma-separated; the others are pretrained into OUT/pretrain.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Model preset of the unimodal models pretrained here (default: that of the --from bundles, else cascade-mvitv2-b).")] = None,
    primary: Annotated[str, typer.Option(help="The primary modality (attention queries, baseline).")] = "rgb",
    tile_size: options.TileSize = None,
    split: Annotated[str, typer.Option(help="Split to score every cell on.")] = "test",
    pretrain_epochs: Annotated[Optional[int], typer.Option(help="Epochs of each unimodal pretraining. Default: the preset's.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each fusion cell. Default: the preset's.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Steps per run (overrides the epochs; for quick checks). Default: run all the epochs.")] = None,
    batch_size: options.BatchSize = None,
    lr: options.LearningRate = None,
    warmup_steps: options.WarmupSteps = None,
    fresh_heads: Annotated[bool, typer.Option(help="Start every cell's decoder fresh instead of from the primary's bundle.")] = False,
    accelerator: options.Accelerator = "auto",
    precision: options.Precision = "auto",
    workers: options.Workers = 2,
    seed: options.Seed = 0,
    val_every: options.ValEvery = 1,
    threads: options.Threads = None,
) -> None:
    """Run every fusion strategy on every modality set (resumable) and write OUT/table.md, table.csv, ablation.png.

    Cells run one after the other on one device each (for many GPUs, run `rts finetune` cells
    under torchrun yourself).
    """
    # first thing: locals() are the parameters (--epochs: the fusion cells'); the cells run on one device each
    opts = options.TrainingOptions.of(locals(), weight_decay=None, schedule=None, grad_clip=1.0, devices="1",
                                      num_nodes=1, backbone_weights=None, keep_checkpoints=False)
    options.use_threads(threads)
    from dataclasses import replace

    from rtscli.console import console
    from rtscli.data.modalities import parse_names
    from rtscli.engine.ablate import ablate as run
    from rtscli.engine.ablate import modality_sets, parse_fusions
    from rtscli.engine.ablate import check_ablation_time
    from rtscli.engine.train import sigterm_stops

    sources = [Path(s.strip()) for s in from_.split(",") if s.strip()] if from_ else []
    defaults = options.fusion_defaults(sources, preset)
    mods, strategies = parse_names(modalities), parse_fusions(fusions)
    pre, ft = replace(opts, epochs=pretrain_epochs).settings(defaults), opts.settings(defaults)
    with sigterm_stops():  # SIGTERM between or before its runs: exit 143 with one line, like one during them
        # before the ablation folder exists: a GPU-sized grid on a CPU is refused, the time it takes said
        check_ablation_time(data=data, modalities=mods, preset=preset, sources=sources, tile_size=tile_size,
                            pretrain_settings=pre, finetune_settings=ft,
                            cells=len(modality_sets(mods, primary.lower(), sets)) * len(strategies))
        res = run(data=data, modalities=mods, fusions=strategies, out=out, pretrain_settings=pre, finetune_settings=ft,
                  preset=preset, primary=primary.lower(), sources=sources or None, sets=sets, split=split,
                  init_heads=not fresh_heads, tile_size=tile_size,
                  on_cell=lambda name: console.print(f"[bold]ablate[/]: {name}"))
    console.print(res["table"].read_text())
    console.print(f"table: {out}/table.md, {out}/table.csv; chart: {out}/ablation.png")
