"""``rts ssl``: self-supervised (masked image modelling) pretraining of one modality's backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rtscli.cli import options


def ssl(
    scenes: Annotated[list[str], typer.Argument(help="Unlabeled scenes (files, folders, globs (quoted), .txt lists, VRT mosaics, STAC items; read by random windows, never whole); or one prepared dataset folder (its train chips, with its own bands and statistics; never its test chips); or COCO JSON files (their images).")],
    modality: Annotated[str, typer.Option(help="Modality whose backbone to pretrain: rgb, nir, ndvi, or a band the band map names.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; becomes the backbone bundle.")],
    bands: Annotated[Optional[str], typer.Option(help="Band map or preset of the scenes or COCO images (see `rts bands`); default: the rasters' band names (RGB images: their colour interpretation). A prepared dataset has its own.")] = None,
    preset: Annotated[str, typer.Option(help="Model preset whose backbone is pretrained (see `rts models`). The default, the paper's, is sized for a GPU: on a CPU use nano (without a GPU the default is refused, with its estimated time, unless --accelerator cpu).")] = "cascade-mvitv2-b",
    tile_size: options.TileSize = None,
    aux: Annotated[Optional[list[str]], typer.Option(help="Extra aligned raster as a band: NAME=PATH (one scene only).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Reflectance bands: physical = stored x scale + offset (as rts prepare). Default: the rasters' GDAL band scale/offset, else the values as stored.")] = None,
    offset: Annotated[Optional[float], typer.Option(help="Added after --scale.")] = None,
    nodata: Annotated[Optional[float], typer.Option(help="Nodata value of the scenes when they do not tag one.")] = None,
    quality: Annotated[Optional[str], typer.Option(help="Quality mask per scene: clouds, shadow, haze, snow are nodata (never in a window's loss). auto (beside each scene: *_udm2.tif, *_SCL_20m.jp2, SCL.tif, *_QA_PIXEL.TIF), a mask file (one scene) or a folder of masks.")] = None,
    quality_invalid: Annotated[Optional[str], typer.Option(help="With --quality: the classes counted invalid, of cloud, shadow, haze, cirrus, snow, dark (default cloud,shadow,haze,cirrus,snow).")] = None,
    dem: Annotated[Optional[Path], typer.Option(help="A DEM for the terrain channels (slope, relief, hillshade) of --modality terrain beside the scenes' imagery. Without it, --modality terrain reads the scenes themselves as DEMs (e.g. ArcticDEM tiles or a VRT mosaic).")] = None,
    dem_radius: Annotated[float, typer.Option(help="The relief's radius, metres (as rts prepare --dem-radius).")] = 100.0,
    windows: Annotated[int, typer.Option(help="Random windows per epoch.")] = 1000,
    mask_ratio: Annotated[float, typer.Option(help="Share of 32 px blocks hidden (SimMIM: 0.6).")] = 0.6,
    stats_windows: Annotated[int, typer.Option(help="Windows sampled for the normalization statistics.")] = 64,
    repeat_to: Annotated[Optional[int], typer.Option(help="Repeat 1-channel modalities to this many channels (0 = no), as rts prepare. Default: 3, or a prepared dataset's own.")] = None,
    include_val: Annotated[bool, typer.Option("--include-val", help="With a prepared dataset: its val chips too (its test chips are never read).")] = False,
    images: Annotated[Optional[Path], typer.Option(help="With COCO files: the folder of their images (default: beside the JSON, or its images/).")] = None,
    norm_target: Annotated[bool, typer.Option("--norm-target", help="Reconstruct each hidden 32 px block standardized over its pixels (MAE's target) instead of its normalized values (SimMIM's).")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs of --windows windows each.")] = 10,
    max_steps: options.MaxSteps = None,
    batch_size: options.BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate at 16 tiles per step; scaled linearly with the total batch. Default: 6e-4, rts ssl's own (measured with nano), not the preset's detector rate.")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (SimMIM: 0.05).")] = 0.05,
    warmup_steps: options.WarmupSteps = None,
    backbone_weights: Annotated[Optional[str], typer.Option(help="Start from imagenet or a .safetensors file instead of random weights.")] = None,
    devices: options.Devices = "1",
    num_nodes: options.NumNodes = 1,
    accelerator: options.Accelerator = "auto",
    precision: options.Precision = "auto",
    workers: options.Workers = 2,
    seed: options.Seed = 0,
    resume: options.Resume = False,
    keep_checkpoints: options.KeepCheckpoints = False,
    overwrite: options.Overwrite = False,
    threads: options.Threads = None,
) -> None:
    """Pretrain one modality's backbone on unlabeled imagery by masked image modelling (SimMIM).

    Random windows of the scenes (or of a prepared dataset's train chips, or of a COCO set's
    images, when there is no other imagery) are masked (60% of 32 px blocks) and the backbone
    learns to reconstruct them. A dataset's chips are built with its own band map, statistics and
    channels, as fine-tuning sees them; its test chips are never read. The run warns when its
    loss fell by less than 10% (first tenth of the steps to last). The run directory becomes a
    backbone bundle: use it with `rts pretrain --backbone-weights RUN` (the same modality, preset
    and tile size).
    """
    # first thing: locals() are the parameters; rts ssl offers no --schedule, --grad-clip or --val-every
    opts = options.TrainingOptions.of(locals(), schedule="cosine", grad_clip=5.0, val_every=1)
    options.use_threads(threads)
    from rtscli.console import console
    from rtscli.data.bands import BandMap
    from rtscli.cli.predict import quality_request
    from rtscli.engine.ssl import ssl_defaults
    from rtscli.engine.ssl_inputs import input_kind
    from rtscli.engine.ssl import ssl as run
    from rtscli.errors import RtsError

    kind = input_kind(list(scenes))
    band_map = BandMap.parse(bands) if bands else None
    if band_map is None and modality.lower() == "terrain" and dem is None and kind == "scenes":
        band_map = BandMap.parse("elevation=1")  # the scenes are DEMs
    if band_map is None and kind == "scenes":  # a dataset has its own; COCO images: found from the first
        from rtscli.data.inputs import band_map_from_descriptions
        from rtscli.data.scenes import is_item, scene_paths
        from rtscli.io.raster import inspect

        first = scene_paths(list(scenes))[0]
        # a STAC item's bands are found by name: the four of every optical product (only the names count)
        band_map = BandMap.parse("blue=1,green=2,red=3,nir=4") if is_item(first) else \
            band_map_from_descriptions(inspect(first))
        if band_map is None:
            raise RtsError("no band map given and the scenes' bands are not named",
                           fix="pass --bands (e.g. planetscope4, sentinel2-10 or blue=1,green=2,red=3,nir=4)")
    from rtscli.engine.train import sigterm_stops

    settings = opts.settings(ssl_defaults(preset))  # rts ssl's own learning rate, not the detector's
    with sigterm_stops():  # SIGTERM before training starts: exit 143 with one line, like one during it
        cfg = run(inputs=list(scenes), modality=modality.lower(), band_map=band_map, out=out, preset=preset,
                  settings=settings, tile_size=tile_size, aux=aux, scale=scale, offset=offset, nodata=nodata,
                  windows=windows, mask_ratio=mask_ratio, stats_windows=stats_windows, repeat_to=repeat_to,
                  resume=resume, overwrite=overwrite, quality=quality_request(quality, quality_invalid),
                  dem=dem, dem_radius=dem_radius, include_val=include_val, images=images, norm_target=norm_target)
    m = cfg["metrics"]
    console.print(f"backbone bundle {out}: {cfg['preset']}, modality {cfg['modality']['name']}, {m['steps_run']} "
                  f"steps, {loss_summary(m)}", markup=False, soft_wrap=True)
    console.print(f"  use it: rts pretrain --modality {cfg['modality']['name']} --preset {cfg['preset']} "
                  f"--backbone-weights {out} ...; curves: {out}/curves.png, {out}/reconstructions.png",
                  markup=False, soft_wrap=True)


def loss_summary(metrics: dict) -> str:
    """The reconstruction loss of a run for its final message: ``one epoch: reconstruction loss 0.743``, or the
    epoch means of its first and last epochs, ``reconstruction loss 0.963 -> 0.412 (epoch means, 10 epochs)``.

    Args:
        metrics: the ``metrics`` of the backbone bundle's config (``loss_first``, ``loss_last``, ``loss_epochs``).

    Returns:
        The words; "no loss recorded" when the run logged none.
    """
    first, last, epochs = metrics.get("loss_first"), metrics.get("loss_last"), metrics.get("loss_epochs")
    if last is None:
        return "no loss recorded"
    if epochs == 1 or first is None:
        return f"one epoch: reconstruction loss {last:.3g}"
    return f"reconstruction loss {first:.3g} -> {last:.3g} (epoch means" + (f", {epochs} epochs)" if epochs else ")")
