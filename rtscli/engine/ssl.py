"""``rts ssl``: self-supervised pretraining of one modality's backbone on unlabeled scenes (SimMIM).

Random windows of the scenes (:mod:`rtscli.data.windows`) train the preset's backbone by masked
image modelling (:mod:`rtscli.modeling.mim`) with the engine of ``rts pretrain``: Lightning, mixed
precision on a GPU, DDP, exact ``--resume``, progress bars or log lines, ``metrics.csv`` and
``curves.png``. The run directory becomes a backbone bundle (:mod:`rtscli.modeling.backbone_bundle`)
with ``reconstructions.png``: a few masked windows next to what the backbone made of them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from rtscli.engine.train_settings import TrainSettings
from rtscli.errors import RtsError

if TYPE_CHECKING:
    from rtscli.data.bands import BandMap
    from rtscli.data.scenes import Scene
    from rtscli.data.windows import RandomWindows
    from rtscli.modeling.mim import MaskedImageModel

log = logging.getLogger("rtscli")


def open_scenes(inputs: list[str], band_map: BandMap, *, aux: list[str], scale: float | None,
                offset: float | None, nodata: float | None, quality: Any = None, dem: Any = None,
                dems: bool = False, terrain: Any = None) -> list[Scene]:
    """The unlabeled scenes (files, folders, globs, .txt lists, VRT mosaics; folders with site subfolders too; STAC
    items, catalogs and item collections: :func:`rtscli.data.scenes.open_item`) as :class:`Scene` objects, each
    with its ``--aux`` rasters (NAME=PATH; only with one scene, on its grid). The band map is checked against
    every scene (:func:`rtscli.data.bands.check_fits`) before any is read. ``dem`` (a
    :class:`rtscli.data.terrain.Dem`) gives every scene the terrain channels; with ``dems`` each scene is a DEM and
    gives its own (made with ``terrain``, a :class:`rtscli.data.terrain.TerrainSettings`)."""
    from rtscli.data.bands import check_fits
    from rtscli.data.scenes import Source, is_item, open_item, open_scene, scene_paths
    from rtscli.io.raster import inspect

    from rtscli.data.inputs import parse_aux

    paths = scene_paths(inputs)
    items = [p for p in paths if is_item(p)]
    extra = parse_aux(aux)
    if extra and len(paths) > 1:
        raise RtsError(f"--aux rasters go with one scene, {len(paths)} were given",
                       fix="run rts ssl on one scene with its aux rasters, or build a VRT mosaic of each")
    bands = {k: v for k, v in band_map.as_dict().items() if k != "mask"}
    if extra and items:
        raise RtsError("--aux rasters go with a scene file, and a STAC item was given", path=items[0],
                       fix="add the raster to the item as an asset, or drop --aux")
    for p in paths:
        if not is_item(p):
            info = inspect(p)
            check_fits(band_map.without(["mask"]), info.count, info.descriptions, p)
    scenes = []
    for p in paths:
        if is_item(p):  # the bands by name from the item's assets (only the band map's names count)
            scene, missing, assets = open_item(p, list(bands), nodata=nodata, scale=scale, offset=offset,
                                               quality=quality, dem=dem)
            if missing:
                raise RtsError(f"STAC item {scene.item} has no asset with {', '.join(missing)} (its assets: "
                               f"{'; '.join(assets)})", path=p,
                               fix="pass --bands naming only the bands the modality needs (e.g. red=1,green=2,blue=3)")
            scenes.append(scene)
            continue
        sources = [Source(p, bands)] + [Source(q, {n: 1}) for n, q in extra.items()]
        # --quality (a rtscli.data.quality.QualityRequest): clouds, shadow, haze, snow are nodata in every window
        own = None
        if dems:  # a DEM itself: its terrain channels, by window
            from rtscli.data.terrain import Dem

            own = Dem(p, terrain)
        scenes.append(open_scene(sources, nodata=nodata, scale=scale, offset=offset, quality=quality,
                                 dem=own if dems else dem))
    return scenes


def ssl(*, inputs: list[str], modality: str, band_map: BandMap, out: Path, preset: str, settings: TrainSettings,
        tile_size: int | None = None, aux: list[str] | None = None, scale: float | None = None,
        offset: float | None = None, nodata: float | None = None, windows: int = 1000, mask_ratio: float = 0.6,
        stats_windows: int = 64, repeat_to: int = 3, resume: bool = False, overwrite: bool = False,
        quality: Any = None, dem: Path | None = None, dem_radius: float = 100.0) -> dict:
    """Pretrain ``modality``'s backbone on random windows of the scenes; write the backbone bundle to ``out``.

    ``windows``: windows per epoch; ``mask_ratio``: share of 32 px blocks hidden (SimMIM: 0.6);
    ``stats_windows``: windows sampled for the normalization statistics. Returns the bundle's config.
    Raises :class:`RtsError` for unreadable scenes, a modality the band map cannot make, a bad tile size,
    a GPU-sized run on a CPU that ``--accelerator cpu`` did not ask for, or an existing ``out`` without
    ``resume``/``overwrite``.

    The scenes are opened, read (here and in the data-loading workers, which start inside it) and closed inside
    one GDAL environment (:func:`rtscli.io.raster.gdal_env`), so GDAL's and libtiff's messages (a TIFF whose
    ExtraSamples tag is missing warns at every directory read) reach rts's log, once each and harmless ones not
    at all, instead of being printed raw as ``Warning 1: TIFFReadDirectory...`` lines.
    """
    import gc

    from rtscli.io.raster import gdal_env

    with gdal_env():
        try:
            return _ssl(inputs=inputs, modality=modality, band_map=band_map, out=out, preset=preset,
                        settings=settings, tile_size=tile_size, aux=aux, scale=scale, offset=offset, nodata=nodata,
                        windows=windows, mask_ratio=mask_ratio, stats_windows=stats_windows, repeat_to=repeat_to,
                        resume=resume, overwrite=overwrite, quality=quality, dem=dem, dem_radius=dem_radius)
        finally:
            gc.collect()  # the scenes' open datasets (kept in reference cycles) close inside the environment


def _ssl(*, inputs: list[str], modality: str, band_map: BandMap, out: Path, preset: str, settings: TrainSettings,
         tile_size: int | None, aux: list[str] | None, scale: float | None, offset: float | None,
         nodata: float | None, windows: int, mask_ratio: float, stats_windows: int, repeat_to: int, resume: bool,
         overwrite: bool, quality: Any = None, dem: Path | None = None, dem_radius: float = 100.0) -> dict:
    """:func:`ssl`'s work, inside its GDAL environment."""
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import resolve
    from rtscli.data.windows import RandomWindows, sample_stats
    from rtscli.engine.curves import plot_curves
    from rtscli.engine.lightning_task import SslModule
    from rtscli.engine.step_time import check_cpu_time, check_fill, run_steps
    from rtscli.engine.pretrain import (
        check_memory, check_run_dir, discard_unfinished, fetch_imagenet, prepare_run_dir, prune_checkpoints,
    )
    from rtscli.engine.train import EpochSampler, epoch_metrics, fit, write_epoch_csv
    from rtscli.engine.train_settings import settings_dict
    from rtscli.modeling.backbone import build_backbone, load_backbone_weights
    from rtscli.modeling.backbone_bundle import KIND
    from rtscli.modeling.bundle import save_bundle
    from rtscli.data.tiling import check_tile_size
    from rtscli.modeling.config import load_preset
    from rtscli.io.raster import inspect
    from rtscli.modeling.mim import MASK_BLOCK, MaskedImageModel

    if windows < 1 or stats_windows < 1:
        raise RtsError("--windows and --stats-windows must be at least 1", fix="e.g. --windows 1000")
    if not 0.05 <= mask_ratio <= 0.95:
        raise RtsError(f"--mask-ratio {mask_ratio} must be in [0.05, 0.95]", fix="SimMIM uses 0.6")
    check_run_dir(out, resume=resume, overwrite=overwrite)  # an unwritable -o is told before any work
    cfg = load_preset(preset)
    if tile_size is not None:
        cfg.tile_size = check_tile_size(tile_size)
    terrain = None
    if dem is not None or modality == "terrain":  # slope, relief, hillshade: from --dem, or the scenes are DEMs
        from rtscli.data.terrain import Dem, TerrainSettings

        if not dem_radius > 0:
            raise RtsError("--dem-radius must be positive (metres)", fix="e.g. --dem-radius 100")
        terrain = TerrainSettings(radius_m=dem_radius)
    scenes = open_scenes(inputs, band_map, aux=list(aux or []), scale=scale, offset=offset, nodata=nodata,
                         quality=quality, dem=Dem(dem, terrain) if dem is not None else None,
                         dems=modality == "terrain" and dem is None, terrain=terrain)
    names = dict.fromkeys(n for s in scenes[0].sources for n in s.bands)
    if scenes[0].dem is not None:
        from rtscli.data.modalities import TERRAIN

        names.update(dict.fromkeys(TERRAIN))
    chip_bands = BandMap(tuple((n, i + 1) for i, n in enumerate(names)))
    mod = resolve(modality, chip_bands)
    repeat = repeat_to if repeat_to and repeat_to > 1 else None
    channels = mod.input_channels(repeat)
    cfg.backbone.in_channels = channels
    # before any window is read or the model exists: a step too large for this machine, or ImageNet weights it
    # cannot have, is refused in one line with the fix
    check_memory(cfg, settings, what="rts ssl", task="ssl")
    big = max(scenes, key=lambda sc: sc.width * sc.height)
    check_fill((big.width, big.height), cfg.tile_size, what="the scenes")
    check_cpu_time(cfg, settings, steps=run_steps(windows, settings), what="rts ssl", task="ssl")
    imagenet = fetch_imagenet(settings.backbone_weights, cfg)

    import lightning as L

    L.seed_everything(settings.seed, workers=True, verbose=False)
    probe = RandomWindows(scenes, tile=cfg.tile_size, modality=mod, stats=None, repeat_to=repeat, n=stats_windows,
                          seed=settings.seed, mask_ratio=mask_ratio)
    stats, sampled = sample_stats(probe, stats_windows, settings.seed)
    log.info("normalization of %s from %d valid pixels of %d windows", ", ".join(stats), sampled, stats_windows)
    data = RandomWindows(scenes, tile=cfg.tile_size, modality=mod, stats=stats, repeat_to=repeat, n=windows,
                         seed=settings.seed, mask_ratio=mask_ratio)
    loader = torch.utils.data.DataLoader(data, batch_size=settings.batch_size,
                                         sampler=EpochSampler(len(data), settings.seed),
                                         num_workers=settings.workers, drop_last=len(data) > settings.batch_size,
                                         persistent_workers=settings.workers > 0)
    backbone = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    start = load_backbone_weights(backbone, settings.backbone_weights, timm_name=cfg.backbone.timm_name,
                                  preset=cfg.name, imagenet=imagenet)
    del imagenet
    model = MaskedImageModel(backbone, channels)
    steps_per_epoch = max(1, len(loader))
    total = settings.max_steps if settings.max_steps > 0 else settings.epochs * steps_per_epoch
    module = SslModule(model, settings=settings, total_steps=total)
    log.info("rts ssl: %s backbone of %s, modality %s (%d channels), %d px tiles, %d windows per epoch, %.0f%% of "
             "%d px blocks hidden; start: %s", cfg.backbone.kind, cfg.name, mod.name, channels, cfg.tile_size,
             windows, 100 * mask_ratio, MASK_BLOCK, start)
    # every check passed and the weights are loaded: only now is the run directory made
    made = prepare_run_dir(out, resume=resume, overwrite=overwrite)
    with discard_unfinished(out, made):
        trainer = fit(module, loader, None, settings=settings, run_dir=out, resume=resume,
                      steps_per_epoch=steps_per_epoch)
    rows = epoch_metrics(out)
    write_epoch_csv(out, rows)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    from rtscli import __version__
    from rtscli.data.inputs import sha256

    config: dict[str, Any] = {
        "kind": KIND,
        "format_version": 1,
        "rts_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": f"SimMIM (Xie et al. 2022): {mask_ratio:.0%} of {MASK_BLOCK} px blocks hidden, L1 on normalized "
                  "values of the hidden pixels",
        "preset": cfg.name,
        "backbone": {**cfg.backbone.__dict__, "depths": list(cfg.backbone.depths)},
        "tile_size": cfg.tile_size,
        "modality": {"name": mod.name, "channels": list(mod.channels)},
        **({"terrain": terrain.record()} if terrain is not None else {}),
        "repeat_to": repeat,
        "band_map": chip_bands.as_dict(),
        "normalization": {k: v.as_dict() for k, v in stats.items()},
        # how stored values were made physical (rts pretrain compares value ranges through the statistics)
        "values": scenes[0].sources[0].conversion.record(str(inspect(scenes[0].sources[0].path).dtype)),
        "scenes": [{"path": str(s.sources[0].path.resolve()), "width": s.width, "height": s.height,
                    "sha256": sha256(s.sources[0].path)} for s in scenes],
        "training": {"settings": settings_dict(settings), "start": start, "windows_per_epoch": windows,
                     "world_size": trainer.world_size, "lr": settings.lr(trainer.world_size)},
        "metrics": {"steps_run": trainer.global_step, "epochs_run": trainer.current_epoch,
                    "windows_seen": trainer.global_step * settings.batch_size * trainer.world_size,
                    "loss_first": round(losses[0], 5) if losses else None,
                    "loss_last": round(losses[-1], 5) if losses else None, "loss_epochs": len(losses)},
    }
    if trainer.is_global_zero:
        body = cast(nn.Module, model.backbone.body)  # nn.Module's __getattr__ types a submodule as Tensor | Module
        state = {k: v.detach().cpu() for k, v in body.state_dict().items()}
        save_bundle(out, state, config)
        plot_curves(out, rows, title=f"{out.resolve().name} (rts ssl {mod.name}, {cfg.name})", score=None,
                    loss_label="reconstruction loss")
        write_reconstructions(out / "reconstructions.png", model, data, count=4)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        prune_checkpoints(out, keep=settings.keep_checkpoints)
    return config


def write_reconstructions(path: Path, model: MaskedImageModel, data: RandomWindows, *, count: int = 4) -> Path:
    """A PNG of ``count`` windows: the input, what the backbone saw (hidden blocks grey) and its reconstruction
    of the hidden blocks pasted into the visible ones. Channels shown: the first three, or the first as grey."""
    from matplotlib.figure import Figure

    from rtscli.io.atomic import atomic_file

    model.eval()
    fig = Figure(figsize=(7.5, 2.5 * count))
    axes = fig.subplots(count, 3, squeeze=False)
    for i in range(count):
        image, valid, mask = data[(i, 0, 2)]  # stream 2: windows not used in training or statistics
        with torch.no_grad():
            _, recon = model(image[None].float(), valid[None], mask[None])
        hidden = mask.repeat_interleave(model.block, 0).repeat_interleave(model.block, 1).numpy()
        x = image.numpy()
        r = np.where(hidden[None], recon[0].numpy(), x)
        seen = np.where(hidden[None], np.nan, x)
        for j, (img, title) in enumerate(((x, "input"), (seen, "masked (what it saw)"), (r, "reconstruction"))):
            axes[i][j].imshow(_display(img), cmap="gray" if img.shape[0] < 3 else None, interpolation="nearest")
            axes[i][j].set_axis_off()
            if i == 0:
                axes[i][j].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return path


def _display(img: np.ndarray) -> np.ndarray:
    """Normalized channels (C, H, W) as an image in [0, 1] (-2..2 standard deviations; NaN grey)."""
    x = img[:3] if img.shape[0] >= 3 else img[:1]
    y = np.clip((x + 2) / 4, 0, 1)
    y = np.where(np.isnan(y), 0.5, y)
    return y.transpose(1, 2, 0) if y.shape[0] == 3 else y[0]
