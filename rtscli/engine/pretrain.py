"""``rts pretrain``: one unimodal model from a prepared dataset -> a model bundle."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rtscli.data.dataset import ChipDataset, DatasetInfo, collate
from rtscli.data.modalities import Modality
from rtscli.errors import RtsError
from rtscli.engine.curves import plot_curves
from rtscli.engine.train import EpochSampler, bundle_weights, epoch_metrics, fit, write_epoch_csv
from rtscli.engine.train_settings import TrainSettings, settings_dict
from rtscli.engine.training_health import report_coverage, zero_ap_note
from rtscli.modeling.config import ModelConfig, load_preset

if TYPE_CHECKING:
    from rtscli.modeling.detector import Detector

log = logging.getLogger("rtscli")


def auto_anchors(info: DatasetInfo, tile: int) -> tuple[int, ...]:
    """Anchor sizes for P2..P6 from the training boxes (the paper tuned anchors to RTS sizes).

    The five sizes double from level to level (FPN), starting where the smallest 5% of the
    training boxes lie, so that they span the boxes' range up to the tile.
    """
    sizes = (info.manifest.get("instance_sizes") or {}).get("box_side_px_percentiles")
    if not sizes:
        raise RtsError("the dataset has no instance size statistics", path=info.root,
                       fix="re-run `rts prepare`, or use the preset's anchors (--anchors preset)")
    from rtscli.modeling.anchors import anchors_from_sides

    return anchors_from_sides(float(sizes["p5"]), tile)


def build_config(preset: str, *, in_channels: int, anchors: str, info: DatasetInfo,
                 tile_size: int | None = None) -> ModelConfig:
    """The model config of a new model: the preset's, with ``in_channels``, the anchors and ``tile_size``
    (pixels, a multiple of 32: :func:`rtscli.modeling.config.check_tile_size`; default the preset's)."""
    from rtscli.data.tiling import check_tile_size

    cfg = load_preset(preset)
    cfg.backbone.in_channels = in_channels
    if tile_size is not None:
        cfg.tile_size = check_tile_size(tile_size)
    if anchors == "auto":
        cfg.rpn.anchor_sizes = auto_anchors(info, cfg.tile_size)
        log.info("anchor sizes from the training boxes: %s", ", ".join(map(str, cfg.rpn.anchor_sizes)))
    elif anchors != "preset":
        try:
            cfg.rpn.anchor_sizes = tuple(int(v) for v in anchors.split(","))
        except ValueError:
            raise RtsError(f"cannot read --anchors {anchors!r}",
                           fix="use preset, auto or 5 sizes like 16,32,64,128,256") from None
        if len(cfg.rpn.anchor_sizes) != 5:
            raise RtsError("--anchors needs 5 sizes (P2..P6)", fix="e.g. --anchors 16,32,64,128,256")
    return cfg


def check_memory(cfg: ModelConfig, settings: TrainSettings, *, what: str, resident_on_cpu: bool = False,
                 **kw: Any) -> None:
    """Refuse, before anything is written, a run whose training step cannot fit in this machine's memory
    (:func:`rtscli.engine.memory_check.check_fits`: an estimate for the preset, tile, batch and device).

    One process per machine checks (local rank 0, which is also the process that starts Lightning's own
    DDP processes): on a CPU it counts the memory of all ``--devices`` processes at once, and later ranks would
    see what the earlier ones already took. ``resident_bytes`` (in ``kw``) counts only against a CPU run when
    ``resident_on_cpu`` (the model was built in CPU memory).
    """
    import os

    from rtscli.engine.devices import training_device
    from rtscli.engine.train import choose_precision
    from rtscli.engine.memory_check import check_fits

    local = int(os.environ.get("LOCAL_RANK", 0))
    if local != 0:
        return
    device = training_device(settings.accelerator, local)
    if resident_on_cpu and device != "cpu":
        kw["resident_bytes"] = 0
    devices = settings.devices if isinstance(settings.devices, int) else 1
    check_fits(cfg, batch_size=settings.batch_size, device=device, precision=choose_precision(settings),
               processes=devices if device == "cpu" else 1, what=what, **kw)


def check_time(cfg: ModelConfig, settings: TrainSettings, train: ChipDataset, *, what: str,
               fusion: dict | None = None) -> None:
    """Before anything is written: warn when the training chips fill little of the tile
    (:func:`rtscli.engine.step_time.check_fill`), and on a CPU log the estimated time per step and per run, refusing
    a GPU-sized run that ``--accelerator cpu`` did not ask for (:func:`rtscli.engine.step_time.check_cpu_time`).

    Args:
        cfg: the model's configuration, at its tile size and input channels.
        settings: the run's settings.
        train: the training chips (their number and sizes).
        what: the command, for the messages.
        fusion: the fusion spec of a ``rts finetune`` model (None: unimodal).

    Raises:
        RtsError: a GPU-sized run on a CPU nobody asked for.
    """
    from rtscli.engine.step_time import check_cpu_time, check_fill, run_steps

    images = train.coco.dataset.get("images") or []
    if images:
        big = max(images, key=lambda im: int(im["width"]) * int(im["height"]))
        check_fill((int(big["width"]), int(big["height"])), cfg.tile_size, what="the training chips")
    check_cpu_time(cfg, settings, steps=run_steps(len(train), settings), what=what, fusion=fusion)


def fetch_imagenet(spec: str | None, cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """With ``--backbone-weights imagenet``: the ImageNet weights of the preset's backbone, fetched now, before the
    run directory exists, so that a machine that cannot have them (no network, ``HF_HUB_OFFLINE``, a preset without
    ImageNet weights) is refused with the fix and nothing is left behind
    (:func:`rtscli.modeling.backbone.imagenet_weights`). None for any other ``spec``."""
    if spec != "imagenet":
        return None
    from rtscli.modeling.backbone import imagenet_weights

    return imagenet_weights(cfg.backbone.kind, cfg.backbone.timm_name, preset=cfg.name, norm=cfg.backbone.norm)


def _first_process() -> bool:
    """Under DDP every process runs the command (Lightning re-launches it, torchrun starts them all): only the
    first one checks, clears or creates the run directory."""
    import os

    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a run directory that cannot be used: it exists without ``resume`` or ``overwrite``,
    it is a file, or it (or the folder it goes in) cannot be written (:func:`rtscli.io.atomic.check_writable`).
    Touches nothing; only the first process checks, under DDP.

    Raises:
        RtsError: one line naming the folder and the fix.
    """
    from rtscli.io.atomic import check_writable

    if not _first_process():
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RtsError("exists and is not a folder", path=out, fix="choose another -o")
    if out.exists() and not (resume or overwrite):
        if (out / "checkpoints" / "last.ckpt").exists():
            raise RtsError("output exists", path=out, fix="pass --resume to continue it or --overwrite to replace it")
        raise RtsError("output exists (with no checkpoint to resume from)", path=out,
                       fix="pass --overwrite to replace it, or choose another -o")
    if resume and (out / "config.yaml").exists() and not (out / "checkpoints" / "last.ckpt").exists():
        # --resume without a checkpoint starts a run from the beginning (fit): never over a finished bundle
        raise RtsError("the run is complete (its bundle is written) and kept no checkpoint to continue from",
                       path=out, fix="pass --overwrite without --resume to train it again, or choose another -o "
                                     "(--keep-checkpoints keeps a run's checkpoints to continue it with more --epochs)")
    if not out.exists() or (overwrite and not resume):  # made (again) in its folder
        check_writable(out)
    if out.exists():  # written into
        check_writable(out, into=True)


def prepare_run_dir(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check (:func:`check_run_dir`), clear or create the run directory (only the first process does, under DDP).

    Call it once every other check has passed: a refused run leaves no folder. Returns whether this call made the
    folder (new, or cleared by ``overwrite``): :func:`discard_unfinished` removes such a folder again when the run
    fails before its first checkpoint.
    """
    import shutil

    check_run_dir(out, resume=resume, overwrite=overwrite)
    first = _first_process()
    made = first and (not out.exists() or (overwrite and not resume))
    if first and out.exists() and overwrite and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return made


@contextmanager
def discard_unfinished(out: Path, made: bool) -> Iterator[None]:
    """Around a run's training: when it fails (refused by a late check, out of space, interrupted) before its
    first checkpoint, the run directory it made (``made``, from :func:`prepare_run_dir`) is removed, so nothing
    is left that could neither be used nor resumed. A folder that was there before, or that holds a checkpoint to
    ``--resume`` from, is kept; so is the folder of a run stopped by SIGTERM (:class:`rtscli.errors.Stopped`: its
    message says what it kept and how to continue)."""
    import shutil

    from rtscli.errors import Stopped

    try:
        yield
    except BaseException as exc:
        if made and not isinstance(exc, Stopped) and not (Path(out) / "checkpoints" / "last.ckpt").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def bundle_config(*, cfg: ModelConfig, info: DatasetInfo, data: Path, mods: list[Modality], repeat: int | None,
                  fusion: dict | None, stage: str, settings: TrainSettings, weights_note: str,
                  parameters: tuple[int, int]) -> dict:
    """The config.yaml of a bundle, less what training fills in (metrics, world size, lr)."""
    from rtscli import __version__

    used = {c for m in mods for c in m.channels}
    return {
        "kind": "rts-model",
        "format_version": 1,
        "rts_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.to_dict(),
        "modalities": [{"name": m.name, "channels": list(m.channels)} for m in mods],
        "repeat_to": repeat,
        "fusion": fusion,
        "band_map": info.band_map.as_dict(),  # the chips' layout: what the model's channels are made of
        # the layout of the rasters the training chips were cut from: rts predict reads scenes with it
        "source_band_map": info.manifest.get("source_band_map"),
        "source_bands": info.manifest.get("source_bands"),
        "normalization": {k: v.as_dict() for k, v in info.stats.items() if k in used},
        "nodata": info.nodata,
        "classes": ["rts"],
        "tile_size": cfg.tile_size,
        "parameters": {"total": parameters[0], "trainable": parameters[1]},
        "training": {"stage": stage, "settings": settings_dict(settings), "backbone_weights": weights_note},
        "dataset": {"path": str(Path(data).resolve()), "checksum": info.checksum(),
                    "split_seed": info.manifest["split"]["seed"]},
        "instance_sizes": info.manifest.get("instance_sizes"),
        # how the training rasters' stored values were turned into physical ones: rts predict reads scenes alike
        "values": info.manifest.get("values"),
        # the DEM's derivatives (rts prepare --dem): rts predict --dem makes the same
        "terrain": info.manifest.get("terrain"),
    }


def adopt_backbone_stats(spec: str | None, cfg: ModelConfig, mod: Modality, info: DatasetInfo, *, what: str) -> None:
    """With a backbone bundle of ``rts ssl`` as ``--backbone-weights``: check that it fits the run
    (:func:`rtscli.modeling.backbone_bundle.check_fits`: modality, preset, tile size, value range) and
    normalize the modality's channels with the bundle's statistics, as its backbone learned them (the model
    bundle records them, so rts evaluate and rts predict use them too). Anything else: nothing to do."""
    from rtscli.modeling.backbone_bundle import check_fits, is_backbone_bundle, read_backbone_bundle

    if not spec or not is_backbone_bundle(spec):
        return
    bb = read_backbone_bundle(spec)
    check_fits(bb, model_config=cfg, modality=mod, stats=info.stats, what=what)
    info.stats = info.stats | {k: v for k, v in bb.stats.items() if k in mod.channels}
    log.info("normalizing %s with the statistics of the backbone bundle %s", ", ".join(mod.channels), spec)


def open_splits(info: DatasetInfo, mods: list[Modality], tile: int, repeat: int | None,
                seed: int, copy_paste: float = 0.0) -> tuple[ChipDataset, ChipDataset]:
    """The training and validation chips, checked before a run directory exists (an empty training split, or
    validation chips larger than the tile, are refused with their fix and leave nothing behind). An empty
    validation split falls back to the training chips (the second dataset's ``split`` is then "train"), with a
    warning: their AP50 is logged as a training-chip score and the bundle keeps the last epoch's weights
    (:func:`train_and_save`). ``copy_paste``: the chance per training chip of pasting another chip's slumps onto it
    (:mod:`rtscli.data.copy_paste`)."""
    train_ds = ChipDataset(info, "train", mods, tile, repeat_to=repeat, augment=True, seed=seed,
                           copy_paste=copy_paste)
    val_ds = ChipDataset(info, "val", mods, tile, repeat_to=repeat, augment=False)
    if len(train_ds) == 0:
        raise RtsError("the training split is empty", path=info.root,
                       fix="re-run `rts prepare` with more data or another --split")
    if len(val_ds) == 0:
        log.warning("the validation split is empty: AP50 is measured on the training chips (a measure of fit, "
                    "reported as training-chip AP50) and the bundle keeps the last epoch's weights, since no epoch "
                    "can be chosen on held-out chips (re-run `rts prepare` with a val split)")
        val_ds = ChipDataset(info, "train", mods, tile, repeat_to=repeat, augment=False)
    return train_ds, val_ds


def train_and_save(model: Detector, *, config: dict, info: DatasetInfo, mods: list[Modality], repeat: int | None,
                   settings: TrainSettings, out: Path, resume: bool,
                   splits: tuple[ChipDataset, ChipDataset] | None = None) -> dict:
    """Train ``model`` on the dataset's train split (validating on val) and write the bundle to ``out``.

    The bundle holds the best validated epoch's weights, or the last epoch's when no validation scored above 0
    (:func:`rtscli.engine.train.bundle_weights`); its ``metrics`` say which (``bundle_epoch``, 0-based) and why
    (``bundle_weights``), next to ``best_epoch`` and ``val_mask_ap50_best`` (``val_box_ap50_best`` without masks).
    Without a validation split (the training chips stand in, :func:`open_splits`) the bundle keeps the last epoch
    and its metrics hold ``train_chips_mask_ap50`` (or ``train_chips_box_ap50``), the latest AP50 on the training
    chips, and ``train_chips_ap50_epoch``, its epoch: nothing named ``val_*`` claims a validation.

    Whether it learned (:mod:`rtscli.engine.training_health`): the anchors' coverage of the training boxes is logged
    before training and kept as the config's ``anchor_coverage``; a run whose AP50 stayed at 0 has ``ap50_note`` in
    its metrics, and one whose training collapsed has ``collapse_step`` and ``collapse_warning``.
    """
    import json

    from rtscli.engine.lightning_task import DetectionModule
    from rtscli.modeling.bundle import save_bundle

    cfg = model.cfg
    train_ds, val_ds = splits or open_splits(info, mods, cfg.tile_size, repeat, settings.seed, settings.copy_paste)
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=settings.batch_size, sampler=EpochSampler(len(train_ds), settings.seed),
        collate_fn=collate, num_workers=settings.workers, drop_last=len(train_ds) > settings.batch_size,
        persistent_workers=settings.workers > 0)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=settings.batch_size, shuffle=False,
                                             collate_fn=collate, num_workers=0)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = settings.max_steps if settings.max_steps > 0 else settings.epochs * steps_per_epoch
    coverage = report_coverage(train_ds.coco.dataset, cfg)  # how well the anchors cover the training boxes
    if coverage is not None:
        config["anchor_coverage"] = coverage
    val_gt = json.loads(Path(val_ds.info.root / f"{val_ds.split}.json").read_text())
    if not any(not a.get("iscrowd") for a in val_gt["annotations"]):
        log.warning("the %s split (%d chips) has no slump: AP50 cannot be measured on it, so no best epoch can be "
                    "chosen and the bundle will hold the last epoch's weights (re-run `rts prepare` so that val "
                    "holds slumps: a smaller --chip-size or --split-block, or a --split-file)", val_ds.split,
                    len(val_ds))
    scored_on = "val" if val_ds.split == "val" else "train_chips"
    module = DetectionModule(model, settings=settings, val_gt=val_gt, tile=cfg.tile_size, total_steps=total_steps,
                             scored_on=scored_on)
    trainer = fit(module, train_loader, val_loader, settings=settings, run_dir=out, resume=resume,
                  steps_per_epoch=steps_per_epoch)

    rows = epoch_metrics(out)
    write_epoch_csv(out, rows)
    val_slumps = sum(not a.get("iscrowd") for a in val_gt["annotations"])
    state, chosen = bundle_weights(module, trainer, out, val_slumps=val_slumps)
    what = "mask" if cfg.roi_heads.mask else "box"
    if scored_on == "val":
        best_epoch = module.best_epoch if module.best_epoch >= 0 else None  # None: no validation ran
        scores: dict[str, Any] = {f"val_{what}_ap50_best": round(max(module.best_ap50, 0.0), 4),
                                  "best_epoch": best_epoch}
    else:  # the latest training-chip score (metrics.csv has them all, a resumed run's too), never called validation
        scored = [r for r in rows if "train_chips_ap50" in r]
        scores = {f"train_chips_{what}_ap50": round(scored[-1]["train_chips_ap50"], 4) if scored else None,
                  "train_chips_ap50_epoch": int(scored[-1]["epoch"]) if scored else None}
    config["metrics"] = {**scores, **chosen, "epochs_run": trainer.current_epoch, "steps_run": trainer.global_step}
    # the best validation's AP50, or the latest training-chip one (None: no validation ran)
    ap50 = (module.best_ap50 if module.best_epoch >= 0 else None) if scored_on == "val" else \
        scores[f"train_chips_{what}_ap50"]
    note = zero_ap_note(scored_on=scored_on, what=what, ap50=ap50, val_slumps=val_slumps)
    if note:
        config["metrics"]["ap50_note"] = note
    if module.collapse is not None and module.collapse.fired is not None:
        fired = module.collapse.fired
        config["metrics"].update(collapse_step=fired["step"], collapse_warning=f"at step {fired['step']}: "
                                 f"{fired['reason']}")
    config["training"].update(world_size=trainer.world_size, lr=settings.lr(trainer.world_size))
    if trainer.is_global_zero:
        save_bundle(out, state, config)
        plot_curves(out, rows, bundle_epoch=chosen["bundle_epoch"], title=f"{out.resolve().name} ({cfg.name})",
                    score=scored_on)
    trainer.strategy.barrier()  # every rank is done with best.ckpt before it goes
    if trainer.is_global_zero:
        prune_checkpoints(out, keep=settings.keep_checkpoints)
    return config


def prune_checkpoints(run_dir: Path, *, keep: bool) -> None:
    """Once the bundle is written, its training checkpoints (Lightning files with the optimizer state, larger
    than the model) are removed, so the bundle is the size of its weights; ``--keep-checkpoints`` keeps them
    (to continue training later with ``--resume``)."""
    import shutil

    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return
    size = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file())
    if keep:
        log.info("training checkpoints kept in %s (%.0f MB; delete the folder to prune them)", ckpt, size / 2**20)
        return
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info("training checkpoints removed (%.0f MB): the run is complete; --keep-checkpoints keeps them", size / 2**20)


def pretrain(*, data: Path, modality: str, preset: str, out: Path, settings: TrainSettings, anchors: str = "auto",
             resume: bool = False, overwrite: bool = False, repeat_to: int | None = None,
             masks: bool = True, tile_size: int | None = None) -> dict:
    from rtscli.modeling.backbone import load_backbone_weights
    from rtscli.modeling.detector import Detector, count_parameters

    check_run_dir(out, resume=resume, overwrite=overwrite)  # first: an unwritable -o is told before any work
    info = DatasetInfo.open(data)
    mod = info.modality(modality)
    repeat = info.manifest.get("repeat_to", 3) if repeat_to is None else repeat_to
    channels = mod.input_channels(repeat)
    cfg = build_config(preset, in_channels=channels, anchors=anchors, info=info, tile_size=tile_size)
    cfg.roi_heads.mask = cfg.roi_heads.mask and masks
    adopt_backbone_stats(settings.backbone_weights, cfg, mod, info, what="rts pretrain")
    check_memory(cfg, settings, what="rts pretrain")  # before the run directory or the model exists
    splits = open_splits(info, [mod], cfg.tile_size, repeat, settings.seed,  # its errors leave nothing behind
                         settings.copy_paste)
    check_time(cfg, settings, splits[0], what="rts pretrain")  # a GPU-sized run on a CPU, before any download
    imagenet = fetch_imagenet(settings.backbone_weights, cfg)  # a refusal leaves nothing behind

    import lightning as L

    L.seed_everything(settings.seed, workers=True, verbose=False)
    model = Detector(cfg=cfg)
    weights_note = load_backbone_weights(model.backbone, settings.backbone_weights, timm_name=cfg.backbone.timm_name,
                                         preset=cfg.name, imagenet=imagenet)
    del imagenet
    total, trainable = count_parameters(model)
    log.info("model %s: %.1fM parameters (%.1fM trainable), %s input channels, tile %d; backbone weights: %s",
             cfg.name, total / 1e6, trainable / 1e6, channels, cfg.tile_size, weights_note)
    config = bundle_config(cfg=cfg, info=info, data=data, mods=[mod], repeat=repeat, fusion=None, stage="pretrain",
                           settings=settings, weights_note=weights_note, parameters=(total, trainable))
    made = prepare_run_dir(out, resume=resume, overwrite=overwrite)  # every check passed, the weights are loaded
    with discard_unfinished(out, made):
        return train_and_save(model, config=config, info=info, mods=[mod], repeat=repeat, settings=settings, out=out,
                              resume=resume, splits=splits)
