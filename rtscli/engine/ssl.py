"""``rts ssl``: self-supervised pretraining of one modality's backbone by masked image modelling (SimMIM).

What it reads (:func:`input_kind`):

* **unlabeled scenes** (files, folders, globs, .txt lists, VRT mosaics, STAC items): random windows of them
  (:mod:`rtscli.data.windows`), normalized with statistics sampled from the scenes;
* **a prepared dataset** (a folder of ``rts prepare``: ``manifest.yaml``, ``chips/``, ``train.json``...), when
  no other unlabeled imagery exists: its **train** chips only (``include_val`` adds the val chips; the test chips
  are never read, so pretraining never sees what the model is scored on), built with the dataset's own band map,
  normalization statistics, modality channels and repeat-to-3, so the backbone sees exactly what fine-tuning
  will show it (:class:`ImageWindows`);
* **a COCO set's images** (a COCO instances JSON, whose images are found as ``rts prepare --coco`` finds them:
  ``--images``, beside the JSON, its ``images/``): its annotations are not read; a file whose name says it is a
  test split is refused.

The windows train the preset's backbone (:mod:`rtscli.modeling.mim`) with the engine of ``rts pretrain``:
Lightning, mixed precision on a GPU, DDP, exact ``--resume``, progress bars or log lines, ``metrics.csv`` and
``curves.png``. The run directory becomes a backbone bundle (:mod:`rtscli.modeling.backbone_bundle`) with
``reconstructions.png``: a few masked windows next to what the backbone made of them. At the end the loss of the
first and the last tenth of the steps are compared (:func:`rtscli.engine.training_health.loss_fall`): a loss that
did not fall is one warning line, also recorded in the bundle (``metrics.loss_warning``) and shown by ``rts info``.

Learning rate: :data:`SSL_LR`, rts ssl's own, not the preset's detector learning rate (see there).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from rtscli.engine.ssl_images import ImageWindows, coco_images, sample_image_stats
from rtscli.engine.ssl_inputs import Pool, dataset_pool, input_kind, scene_pool
from rtscli.engine.train_settings import TrainSettings
from rtscli.errors import RtsError

if TYPE_CHECKING:
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import BandStats
    from rtscli.data.windows import RandomWindows
    from rtscli.modeling.config import TrainingDefaults
    from rtscli.modeling.mim import MaskedImageModel

log = logging.getLogger("rtscli")

#: rts ssl's AdamW learning rate at 16 tiles per step (the engine scales it linearly with the total batch, as every
#: run's). Not the preset's detector learning rate, which rts ssl took before: nano's 8e-3 (4e-3 at batch 8) made
#: the reconstruction loss stall after some 40 steps and jump about (the benchmark's NIR loss rose between its
#: epochs), and the large presets' 4e-5 (2.5e-6 at their batch of 1) hardly moves a randomly initialised backbone.
#: Measured on two 1024 px `rts synth` scenes, nano at 128 px tiles, batch 8, 200 steps, SimMIM targets, the mean
#: loss of the last 20 steps at each learning rate (at batch 8): 4e-3 0.571, 1e-3 0.414, 3e-4 0.396, 1e-4 0.473;
#: 3e-4 at batch 8 is 6e-4 at 16. Not measured for the large presets (no GPU): SimMIM itself trains Swin-B at
#: 8e-4 for a batch of 2048 (Xie et al. 2022), far lower per image, over hundreds of epochs.
SSL_LR = 6e-4


def ssl_defaults(preset: str) -> TrainingDefaults:
    """The training defaults of ``rts ssl`` with ``preset``: the preset's (batch, warmup, epochs), with rts ssl's
    own learning rate (:data:`SSL_LR`, at 16 tiles per step), weight decay 0.05 and cosine decay (SimMIM's).

    Raises:
        RtsError: an unknown preset (:func:`rtscli.modeling.config.training_defaults`).
    """
    from rtscli.modeling.config import training_defaults

    d = training_defaults(preset)
    return replace(d, lr=SSL_LR, weight_decay=0.05, schedule="cosine",
                   source=f"rts ssl's lr {SSL_LR:g} (measured with nano: rtscli.engine.ssl.SSL_LR); batch and "
                          f"warmup of the preset ({d.source})")


class LossRecord:
    """The loss of every training step this process runs: a forward hook on the
    :class:`rtscli.modeling.mim.MaskedImageModel` (``register_forward_hook``) that keeps each training forward's
    loss (the first output) on its device, without a synchronisation per step; evaluation forwards (the
    reconstructions' picture) and forwards without gradients are not kept."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.pending: list[torch.Tensor] = []

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.pending.append(output[0].detach().float().reshape(1))
            if len(self.pending) >= 1024:
                self.chunks.append(torch.cat(self.pending))
                self.pending = []

    def values(self) -> list[float]:
        """The losses kept, in step order."""
        parts = self.chunks + ([torch.cat(self.pending)] if self.pending else [])
        return torch.cat(parts).cpu().tolist() if parts else []


def step_losses(run_dir: Path, kept: list[float], global_step: int) -> list[float]:
    """The loss of every step of a run, for :func:`rtscli.engine.training_health.loss_fall`: ``kept``
    (:class:`LossRecord`: the steps this process ran, the last ``len(kept)`` of ``global_step``) after the steps
    logged before them (Lightning's ``train_loss_step`` rows of ``run_dir/logs``, every logged step of the runs
    before a resume: :func:`rtscli.engine.train.log_history`)."""
    from rtscli.engine.train import log_history

    first = global_step - len(kept)
    if first <= 0:
        return list(kept)
    earlier = []
    for r in log_history(run_dir):
        v, step = r.get("train_loss_step"), r.get("step")
        if v not in (None, "") and step not in (None, "") and int(float(step)) < first:
            earlier.append(float(v))
    return earlier + list(kept)


def ssl(*, inputs: list[str], modality: str, band_map: BandMap | None, out: Path, preset: str,
        settings: TrainSettings, tile_size: int | None = None, aux: list[str] | None = None,
        scale: float | None = None, offset: float | None = None, nodata: float | None = None, windows: int = 1000,
        mask_ratio: float = 0.6, stats_windows: int = 64, repeat_to: int | None = 3, resume: bool = False,
        overwrite: bool = False, quality: Any = None, dem: Path | None = None, dem_radius: float = 100.0,
        include_val: bool = False, images: Path | None = None, norm_target: bool = False) -> dict:
    """Pretrain ``modality``'s backbone on random windows of the inputs; write the backbone bundle to ``out``.

    Args:
        inputs: scenes, one prepared dataset folder, or COCO JSON files (:func:`input_kind`).
        modality: the modality whose backbone is pretrained (rgb, nir, ndvi, terrain, a band).
        band_map: the scenes' (or COCO images') bands; None for a dataset (its own) or COCO images (their band
            names or colour interpretation).
        out: the run directory, which becomes the bundle.
        preset: the model preset whose backbone is pretrained.
        settings: the training settings (:func:`ssl_defaults` fills what the command line leaves out).
        tile_size: the tile side in pixels (default: the preset's).
        aux, quality, dem, dem_radius: scenes only (``--aux``, ``--quality``, ``--dem``, ``--dem-radius``).
        scale, offset, nodata: how the scenes' or COCO images' stored values are read (a dataset's are its own).
        windows: windows per epoch.
        mask_ratio: share of 32 px blocks hidden (SimMIM: 0.6).
        stats_windows: windows sampled for the normalization statistics (a dataset has its own).
        repeat_to: 1-channel modalities repeated to this many channels; None: 3, or a dataset's own.
        resume, overwrite: continue the run in ``out``, or replace it.
        include_val: a dataset's val chips too (never its test chips).
        images: the COCO images' folder (``--images``).
        norm_target: reconstruct each 32 px block standardized (MAE's target) instead of SimMIM's values.

    Returns:
        The bundle's config.

    Raises:
        RtsError: unreadable inputs, a path of a dataset or COCO file leading outside its folder, options that do
            not apply to the inputs, a modality the bands cannot make, a bad tile size, a GPU-sized run on a CPU
            that ``--accelerator cpu`` did not ask for, or an existing ``out`` without ``resume``/``overwrite``.

    The inputs are opened, read (here and in the data-loading workers, which start inside it) and closed inside
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
                        resume=resume, overwrite=overwrite, quality=quality, dem=dem, dem_radius=dem_radius,
                        include_val=include_val, images=images, norm_target=norm_target)
        finally:
            gc.collect()  # the scenes' open datasets (kept in reference cycles) close inside the environment


def _ssl(*, inputs: list[str], modality: str, band_map: BandMap | None, out: Path, preset: str,
         settings: TrainSettings, tile_size: int | None, aux: list[str] | None, scale: float | None,
         offset: float | None, nodata: float | None, windows: int, mask_ratio: float, stats_windows: int,
         repeat_to: int | None, resume: bool, overwrite: bool, quality: Any = None, dem: Path | None = None,
         dem_radius: float = 100.0, include_val: bool = False, images: Path | None = None,
         norm_target: bool = False) -> dict:
    """:func:`ssl`'s work, inside its GDAL environment."""
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
    from rtscli.engine.training_health import loss_fall
    from rtscli.modeling.backbone import build_backbone, load_backbone_weights
    from rtscli.modeling.backbone_bundle import KIND
    from rtscli.modeling.bundle import save_bundle
    from rtscli.data.tiling import check_tile_size
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.mim import MASK_BLOCK, MaskedImageModel

    if windows < 1 or stats_windows < 1:
        raise RtsError("--windows and --stats-windows must be at least 1", fix="e.g. --windows 1000")
    if not 0.05 <= mask_ratio <= 0.95:
        raise RtsError(f"--mask-ratio {mask_ratio} must be in [0.05, 0.95]", fix="SimMIM uses 0.6")
    kind = input_kind(inputs)
    if kind != "scenes":  # options of scenes only, refused before anything is read or written
        given = [n for n, v in (("--aux", aux), ("--quality", quality), ("--dem", dem)) if v]
        if kind == "dataset":
            given += [n for n, v in (("--bands", band_map), ("--scale", scale), ("--offset", offset),
                                     ("--nodata", nodata)) if v is not None]
        if given:
            what = "a prepared dataset (it has its own bands, values and statistics)" if kind == "dataset" \
                else "COCO images"
            raise RtsError(f"{', '.join(given)} do(es) not apply to {what}", path=inputs[0],
                           fix=f"leave out {', '.join(given)}")
    elif images is not None or include_val:
        raise RtsError(f"{'--images' if images is not None else '--include-val'} applies to a COCO file or a "
                       "prepared dataset, and scenes were given", fix="leave it out")
    check_run_dir(out, resume=resume, overwrite=overwrite)  # an unwritable -o is told before any work
    cfg = load_preset(preset)
    if tile_size is not None:
        cfg.tile_size = check_tile_size(tile_size)
    if kind == "dataset":
        pool = dataset_pool(Path(inputs[0]), modality, repeat_to=repeat_to, include_val=include_val)
    elif kind == "coco":
        found, bm, coco = coco_images([Path(i) for i in inputs], images_dir=images, band_map=band_map,
                                        scale=scale, offset=offset, nodata=nodata)
        big = max(found, key=lambda c: c.width * c.height)
        rep = 3 if repeat_to is None else repeat_to
        pool = Pool(kind="coco", modality=resolve(modality, bm), band_map=bm, repeat=rep if rep > 1 else None,
                     largest=(big.width, big.height), record={"data": {k: v for k, v in coco.items()
                                                                       if k != "values"}, "scenes": []},
                     values=coco["values"], images=found)
    else:
        pool = scene_pool(inputs, modality, band_map, aux=aux, scale=scale, offset=offset, nodata=nodata,
                           repeat_to=repeat_to, quality=quality, dem=dem, dem_radius=dem_radius)
    mod, repeat = pool.modality, pool.repeat
    channels = mod.input_channels(repeat)
    cfg.backbone.in_channels = channels
    # before any window is read or the model exists: a step too large for this machine, or ImageNet weights it
    # cannot have, is refused in one line with the fix
    check_memory(cfg, settings, what="rts ssl", task="ssl")
    check_fill(pool.largest, cfg.tile_size, what="the scenes" if kind == "scenes" else "the images")
    check_cpu_time(cfg, settings, steps=run_steps(windows, settings), what="rts ssl", task="ssl")
    imagenet = fetch_imagenet(settings.backbone_weights, cfg)

    import lightning as L

    L.seed_everything(settings.seed, workers=True, verbose=False)

    def make(stats: dict[str, BandStats] | None, n: int) -> RandomWindows | ImageWindows:
        if pool.scenes is not None:
            return RandomWindows(pool.scenes, tile=cfg.tile_size, modality=mod, stats=stats, repeat_to=repeat, n=n,
                                 seed=settings.seed, mask_ratio=mask_ratio)
        assert pool.images is not None  # a dataset's chips or a COCO set's images
        return ImageWindows(pool.images, band_map=pool.band_map, tile=cfg.tile_size, modality=mod, stats=stats,
                            repeat_to=repeat, n=n, seed=settings.seed, mask_ratio=mask_ratio)

    stats = pool.stats
    if stats is None:
        probe = make(None, stats_windows)
        stats, sampled = (sample_stats(probe, stats_windows, settings.seed) if isinstance(probe, RandomWindows)
                          else sample_image_stats(probe, stats_windows, settings.seed))
        log.info("normalization of %s from %d valid pixels of %d windows", ", ".join(stats), sampled, stats_windows)
    else:
        stats = {k: v for k, v in stats.items() if k in mod.channels}
        log.info("normalization of %s: the dataset's statistics (those fine-tuning on it uses)", ", ".join(stats))
    data = make(stats, windows)
    loader = torch.utils.data.DataLoader(data, batch_size=settings.batch_size,
                                         sampler=EpochSampler(len(data), settings.seed),
                                         num_workers=settings.workers, drop_last=len(data) > settings.batch_size,
                                         persistent_workers=settings.workers > 0)
    backbone = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    start = load_backbone_weights(backbone, settings.backbone_weights, timm_name=cfg.backbone.timm_name,
                                  preset=cfg.name, imagenet=imagenet)
    del imagenet
    model = MaskedImageModel(backbone, channels, norm_target=norm_target)
    kept = LossRecord()
    model.register_forward_hook(kept)
    steps_per_epoch = max(1, len(loader))
    total = settings.max_steps if settings.max_steps > 0 else settings.epochs * steps_per_epoch
    module = SslModule(model, settings=settings, total_steps=total)
    log.info("rts ssl: %s backbone of %s, modality %s (%d channels), %d px tiles, %d windows per epoch, %.0f%% of "
             "%d px blocks hidden%s; lr %.3g at %d tiles per step; start: %s", cfg.backbone.kind, cfg.name, mod.name,
             channels, cfg.tile_size, windows, 100 * mask_ratio, MASK_BLOCK,
             ", block-normalized targets" if norm_target else "", settings.lr(1), settings.batch_size, start)
    # every check passed and the weights are loaded: only now is the run directory made
    made = prepare_run_dir(out, resume=resume, overwrite=overwrite)
    with discard_unfinished(out, made):
        trainer = fit(module, loader, None, settings=settings, run_dir=out, resume=resume,
                      steps_per_epoch=steps_per_epoch)
    rows = epoch_metrics(out)
    write_epoch_csv(out, rows)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    fall = loss_fall(step_losses(out, kept.values(), trainer.global_step)) if trainer.is_global_zero else None
    if fall is not None and fall.warning:
        log.warning("%s", fall.warning)
    from rtscli import __version__

    target = ("each hidden 32 px block standardized over its pixels and channels (MAE's target, He et al. 2022)"
              if norm_target else "normalized values")
    config: dict[str, Any] = {
        "kind": KIND,
        "format_version": 1,
        "rts_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": f"SimMIM (Xie et al. 2022): {mask_ratio:.0%} of {MASK_BLOCK} px blocks hidden, L1 on {target} "
                  "of the hidden pixels",
        "preset": cfg.name,
        "backbone": {**cfg.backbone.__dict__, "depths": list(cfg.backbone.depths)},
        "tile_size": cfg.tile_size,
        "modality": {"name": mod.name, "channels": list(mod.channels)},
        **({"terrain": pool.terrain} if pool.terrain is not None else {}),
        "repeat_to": repeat,
        "band_map": pool.band_map.as_dict(),
        "normalization": {k: v.as_dict() for k, v in stats.items()},
        # how stored values were made physical (rts pretrain compares value ranges through the statistics)
        "values": pool.values,
        **pool.record,
        "training": {"settings": settings_dict(settings), "start": start, "windows_per_epoch": windows,
                     "world_size": trainer.world_size, "lr": settings.lr(trainer.world_size),
                     "norm_target": norm_target},
        "metrics": {"steps_run": trainer.global_step, "epochs_run": trainer.current_epoch,
                    "windows_seen": trainer.global_step * settings.batch_size * trainer.world_size,
                    "loss_first": round(losses[0], 5) if losses else None,
                    "loss_last": round(losses[-1], 5) if losses else None, "loss_epochs": len(losses),
                    **(fall.record() if fall is not None else {})},
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


def write_reconstructions(path: Path, model: MaskedImageModel, data: RandomWindows | ImageWindows, *,
                          count: int = 4) -> Path:
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
