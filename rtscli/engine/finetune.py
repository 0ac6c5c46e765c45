"""``rts finetune``: frozen unimodal backbones + a fusion module + a decoder -> a fused model bundle.

The paper's phase 2. Each ``--from`` bundle (made by ``rts pretrain`` on one modality) gives its
backbone + FPN; they are frozen (eval mode, no gradients, not in the optimizer) unless
``--no-freeze``; the fusion module and a fresh decoder (RPN, cascade box heads, mask head; or the
decoder of ``--init-heads-from``) are trained with the same engine as ``rts pretrain``.

``channel-stack`` (data-level fusion) is one backbone over all stacked channels: started from the
primary modality's bundle when one is given (its stem filters tiled over the extra channels) and
always trained whole.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rtscli.data.dataset import DatasetInfo
from rtscli.data.modalities import Modality
from rtscli.engine.pretrain import (
    adopt_backbone_stats, build_config, bundle_config, check_memory, check_run_dir, check_time, discard_unfinished,
    fetch_imagenet, open_splits, prepare_run_dir, train_and_save,
)
from rtscli.engine.train_settings import TrainSettings
from rtscli.errors import RtsError, unknown_choice
from rtscli.modeling.fusion import STRATEGIES, is_feature_level

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rtscli.modeling.bundle import Bundle
    from rtscli.modeling.config import ModelConfig
    from rtscli.modeling.multimodal import FusedBackbone

log = logging.getLogger("rtscli")


def _bands(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """What two backbones (+FPN) must share to be fused: everything but the input channels."""
    return {k: v for k, v in cfg.backbone.__dict__.items() if k != "in_channels"} | {"fpn": cfg.fpn.__dict__}


def _source_ap50(metrics: dict[str, Any]) -> dict[str, float | None]:
    """A source bundle's AP50 (mask, or box for a detection-only model) as the fused bundle records it:
    ``{"val_ap50": best validation AP50}``, or ``{"train_chips_ap50": AP50 on its training chips}`` for a bundle
    trained without a validation split (never recorded as a validation score); ``{"val_ap50": None}`` when the
    bundle has neither."""
    for key in ("val_mask_ap50_best", "val_box_ap50_best"):
        if key in metrics:
            return {"val_ap50": metrics[key]}
    for key in ("train_chips_mask_ap50", "train_chips_box_ap50"):
        if key in metrics:
            return {"train_chips_ap50": metrics[key]}
    return {"val_ap50": None}


def check_sources(sources: list[Path], *, modalities: list[str], info: DatasetInfo, data: Path
                  ) -> dict[str, Bundle]:
    """Read the ``--from`` bundles and check them against each other and the dataset.

    Returns ``{modality: Bundle}``. Every mismatch is an :class:`RtsError` naming the bundle.
    """
    from rtscli.modeling.bundle import read_bundle

    out: dict[str, Bundle] = {}
    for path in sources:
        b = read_bundle(path)
        if b.config.get("fusion"):
            raise RtsError("--from needs unimodal bundles (from `rts pretrain`), this one is fused", path=path,
                           fix="pass the bundles of `rts pretrain --modality ...`")
        name = b.config["modalities"][0]["name"]
        if name not in modalities:
            raise RtsError(f"this bundle was trained on modality {name!r}, which is not in --modalities "
                           f"{','.join(modalities)}", path=path, fix=f"add {name} to --modalities or drop the bundle")
        if name in out:
            raise RtsError(f"two --from bundles are both for modality {name!r}", path=path,
                           fix="pass one bundle per modality")
        if b.band_map.as_dict() != info.band_map.as_dict():
            raise RtsError(f"the bundle's band map ({_bands(b.band_map.as_dict())}) differs from the dataset's "
                           f"({_bands(info.band_map.as_dict())})", path=path,
                           fix=f"use bundles trained on data prepared with the same --bands as {data}")
        ds_mod = info.modality(name)
        if tuple(b.modalities[0].channels) != tuple(ds_mod.channels):
            raise RtsError(f"modality {name} is made of {','.join(b.modalities[0].channels)} in the bundle but of "
                           f"{','.join(ds_mod.channels)} in the dataset", path=path,
                           fix="prepare the dataset with the same modality definitions")
        out[name] = b
    if out:
        first_name, first = next(iter(out.items()))
        for name, b in out.items():
            if b.tile_size != first.tile_size:
                raise RtsError(f"tile sizes differ: {first_name} {first.tile_size} px, {name} {b.tile_size} px",
                               path=b.path, fix="pretrain every modality with the same preset")
            mc, fc = b.model_config, first.model_config
            if _architecture(mc) != _architecture(fc):
                raise RtsError(f"the backbones of {first_name} and {name} differ ({fc.backbone.kind}/"
                               f"{fc.fpn.out_channels} vs {mc.backbone.kind}/{mc.fpn.out_channels} FPN channels)",
                               path=b.path,
                               fix="pretrain every modality with the same preset")
            if b.config.get("repeat_to") != first.config.get("repeat_to"):
                raise RtsError("the bundles repeat 1-channel modalities differently", path=b.path,
                               fix="pretrain every modality from the same dataset")
            if b.config.get("dataset", {}).get("checksum") != info.checksum():
                own = b.stats
                if any(own[c].as_dict() != info.stats[c].as_dict() for c in own if c in info.stats):
                    log.warning("%s was trained with other normalization statistics than %s; the fused model "
                                "uses the dataset's", b.path, data)
    return out


def backbone_specs(spec: str | None, names: list[str]) -> dict[str, str | None]:
    """``--backbone-weights`` of rts finetune per backbone: one spec for all (imagenet, a file), or
    ``MOD=PATH,MOD=PATH`` (one ``rts ssl`` bundle per modality; modalities left out start at random)."""
    if not spec:
        return {n: None for n in names}
    if "=" not in spec or Path(spec).exists():
        return {n: spec for n in names}
    out: dict[str, str | None] = {n: None for n in names}
    for part in spec.split(","):
        name, sep, path = part.partition("=")
        if not sep or name.strip().lower() not in out:
            raise RtsError(f"cannot read --backbone-weights {spec!r}: {name.strip()!r} is not one of the "
                           f"backbones ({', '.join(names)})", fix="write MOD=PATH pairs, e.g. rgb=ssl_rgb,nir=ssl_nir")
        out[name.strip().lower()] = path.strip()
    return out


def _load_part(model: nn.Module, state: dict[str, torch.Tensor], src_prefix: str, dst_prefix: str, *, what: str,
               path: Path, adapt_stem: bool = False) -> int:
    """Copy tensors ``src_prefix*`` of ``state`` into ``dst_prefix*`` of ``model``; shapes must match."""
    from rtscli.modeling.backbone import adapt_stem_weight, fit_rel_pos

    own = model.state_dict()
    picked = {}
    for k, v in state.items():
        if not k.startswith(src_prefix):
            continue
        dst = dst_prefix + k[len(src_prefix):]
        if dst not in own:
            raise RtsError(f"{what}: tensor {k} has no place in the new model", path=path,
                           fix="use bundles made with the same preset")
        v = fit_rel_pos(dst, v, own[dst].shape)  # a backbone trained at another tile size
        if own[dst].shape != v.shape:
            if adapt_stem and v.ndim == 4 and own[dst].shape[0] == v.shape[0] and own[dst].shape[2:] == v.shape[2:]:
                v = adapt_stem_weight(v, own[dst].shape[1])
            else:
                raise RtsError(f"{what}: tensor {k} has shape {tuple(v.shape)}, the new model needs "
                               f"{tuple(own[dst].shape)}", path=path,
                               fix="use bundles made with the same preset and anchors")
        picked[dst] = v
    if not picked:
        raise RtsError(f"{what}: no {src_prefix}* tensors in the bundle", path=path, fix="use a bundle made by rts")
    missing = [k for k in own if k.startswith(dst_prefix) and k not in picked]
    if missing:
        raise RtsError(f"{what}: the bundle lacks {len(missing)} tensors (e.g. {missing[0]})", path=path,
                       fix="use bundles made with the same preset")
    model.load_state_dict(picked, strict=False)
    return len(picked)


def finetune(*, data: Path, fusion: str, modalities: list[str], out: Path, settings: TrainSettings,
             sources: list[Path] | None = None, preset: str | None = None, primary: str = "rgb",
             freeze: bool | None = None, init_heads_from: Path | None = None, heads: int = 8, window: int = 8,
             anchors: str = "auto", resume: bool = False, overwrite: bool = False,
             measure_memory: bool = True, tile_size: int | None = None) -> dict:
    from rtscli.data.inputs import sha256
    from rtscli.io.readers import load_safetensors
    from rtscli.modeling.backbone import load_backbone_weights
    from rtscli.modeling.bundle import WEIGHTS, read_bundle
    from rtscli.modeling.cost import cost_report, format_cost
    from rtscli.modeling.multimodal import build_model, fusion_heads, fusion_spec

    if fusion not in STRATEGIES:
        raise unknown_choice("fusion strategy", fusion, STRATEGIES)
    if len(modalities) < 2 or len(set(modalities)) != len(modalities):
        raise RtsError(f"--modalities {','.join(modalities)}: fusion needs two or more different modalities",
                       fix="e.g. --modalities rgb,ndvi,nir")
    if primary not in modalities:
        raise RtsError(f"the primary modality {primary!r} is not in --modalities {','.join(modalities)}",
                       fix=f"add it, or pass --primary {modalities[0]}")
    check_run_dir(out, resume=resume, overwrite=overwrite)  # an unwritable -o is told before any work
    sources = list(sources or [])
    info = DatasetInfo.open(data)
    mods = [info.modality(n) for n in modalities]  # every modality must exist in the dataset
    bundles = check_sources(sources, modalities=modalities, info=info, data=data)
    feature = is_feature_level(fusion)
    if feature and bundles and set(bundles) != set(modalities):
        lack = [m for m in modalities if m not in bundles]
        raise RtsError(f"no --from bundle for modality {', '.join(lack)}",
                       fix="pass one `rts pretrain` bundle per modality (same order does not matter), or none")
    if freeze is None:
        freeze = feature and bool(bundles)
    if freeze and not feature:
        raise RtsError("channel-stack has one backbone over all channels: it cannot be frozen",
                       fix="drop --freeze (channel-stack always trains its backbone)")
    if freeze and not bundles:
        raise RtsError("--freeze needs pretrained backbones", fix="pass --from with one bundle per modality")
    heads_bundle = read_bundle(init_heads_from) if init_heads_from else None

    import lightning as L

    L.seed_everything(settings.seed, workers=True, verbose=False)
    ref = bundles.get(primary) or next(iter(bundles.values()), None)
    if ref is not None:
        cfg = copy.deepcopy(ref.model_config)
        if preset and preset != cfg.name:
            raise RtsError(f"--preset {preset} differs from the --from bundles' model {cfg.name}",
                           fix="drop --preset: the bundles decide the architecture")
        repeat = ref.config.get("repeat_to")
        if tile_size is not None and tile_size != cfg.tile_size:
            from rtscli.data.tiling import check_tile_size

            # the backbones' relative-position tables are interpolated to the new tile (_load_part)
            log.info("tile size %d px (the --from bundles were trained at %d px)", tile_size, cfg.tile_size)
            cfg.tile_size = check_tile_size(tile_size)
    else:
        repeat = info.manifest.get("repeat_to", 3)
        cfg = build_config(preset or "cascade-mvitv2-b", in_channels=3, anchors=anchors, info=info,
                           tile_size=tile_size)
    if heads_bundle is not None:
        hc = heads_bundle.model_config
        if hc.fpn.out_channels != cfg.fpn.out_channels:
            raise RtsError("--init-heads-from has another FPN width than the backbones",
                           path=heads_bundle.path, fix="use a bundle made with the same preset")
        cfg.rpn = copy.deepcopy(heads_bundle.model_config.rpn)
        cfg.roi_heads = copy.deepcopy(heads_bundle.model_config.roi_heads)
    if not feature:
        repeat = 1  # stacked channels as they are: rgb 3 + ndvi 1 + nir 1
    channels = [m.input_channels(repeat) for m in mods]
    if feature:
        spec = fusion_spec(fusion, modalities, channels, primary=primary,
                           heads=fusion_heads(cfg.fpn.out_channels, heads), window=window, frozen=freeze)
    else:
        cfg.backbone.in_channels = sum(channels)
        spec = fusion_spec(fusion, modalities, channels, primary=primary, frozen=False)
        spec.pop("heads"), spec.pop("window")
    model = build_model(cfg, spec)

    # weights: backbones from the --from bundles, decoder from --init-heads-from (else fresh)
    origin = {}
    for name, b in bundles.items():
        state = load_safetensors(b.path / WEIGHTS, what="model weights")
        if feature:
            _load_part(model, state, "backbone.", f"backbone.backbones.{name}.", what=f"backbone of {name}",
                       path=b.path)
        elif name == (primary if primary in bundles else next(iter(bundles))):
            _load_part(model, state, "backbone.", "backbone.", what=f"backbone of {name}", path=b.path, adapt_stem=True)
        else:
            continue
        origin[name] = {"path": str(b.path.resolve()), "sha256": sha256(b.path / WEIGHTS),
                        **_source_ap50(b.config.get("metrics") or {})}
    if not bundles:
        notes = []
        specs = backbone_specs(settings.backbone_weights, modalities if feature else ["+".join(modalities)])
        # fetched once for every backbone that starts from them (a machine that cannot have them is refused here)
        imagenet = fetch_imagenet("imagenet", cfg) if "imagenet" in specs.values() else None
        # a feature-level fusion's backbone is a FusedBackbone (build_model)
        parts = (dict(cast("FusedBackbone", model.backbone).backbones.items()) if feature
                 else {"+".join(modalities): model.backbone})
        for name, bb in parts.items():
            if specs.get(name):
                mod = next((m for m in mods if m.name == name), None) or \
                    Modality(name, tuple(c for m in mods for c in m.channels))
                adopt_backbone_stats(specs[name], cfg, mod, info, what=f"rts finetune ({name})")
            notes.append(load_backbone_weights(bb, specs.get(name), timm_name=cfg.backbone.timm_name, preset=cfg.name,
                                               imagenet=imagenet))
        del imagenet
        weights_note = notes[0] if len(set(notes)) == 1 else \
            "; ".join(f"{n}: {w}" for n, w in zip(parts, notes, strict=True))
    else:
        weights_note = "from bundles: " + ", ".join(f"{k} {v['path']}" for k, v in origin.items())
    if heads_bundle is not None:
        state = load_safetensors(heads_bundle.path / WEIGHTS, what="model weights")
        for part in ("rpn.", "roi_heads."):
            _load_part(model, state, part, part, what="--init-heads-from", path=heads_bundle.path)
        heads_note = str(heads_bundle.path.resolve())
    else:
        heads_note = "fresh"
    spec["sources"] = origin
    spec["heads_from"] = heads_note
    from rtscli.modeling.detector import count_parameters

    total, trainable = count_parameters(model)
    resident = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # built on the CPU
    check_memory(cfg, settings, what="rts finetune", trainable_params=trainable, total_params=total, fusion=spec,
                 resident_bytes=resident, resident_on_cpu=True)
    splits = open_splits(info, mods, cfg.tile_size, repeat, settings.seed, settings.copy_paste)
    check_time(cfg, settings, splits[0], what="rts finetune", fusion=spec)  # before the cost report's measurement

    import os

    from rtscli.engine.devices import training_device

    device = training_device(settings.accelerator, int(os.environ.get("LOCAL_RANK", 0)))
    first = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"  # only rank 0 writes the bundle
    rep = cost_report(model, fusion=spec, tile=cfg.tile_size, channels=sum(channels), device=device,
                      memory=measure_memory and first)
    model.to("cpu")
    rep["configuration"] = (f"{cfg.name}, {fusion}, {'+'.join(modalities)}, "
                            f"{'frozen' if freeze else 'trained'} backbones")
    from rtscli.console import err_console

    err_console.print(f"[bold]cost[/]: {rep['configuration']}: {format_cost(rep)}")
    config = bundle_config(cfg=cfg, info=info, data=data, mods=mods, repeat=repeat, fusion=spec, stage="finetune",
                           settings=settings, weights_note=weights_note,
                           parameters=(rep["parameters_total"], rep["parameters_trainable"]))
    config["training"]["frozen_backbones"] = bool(freeze)
    config["cost"] = rep
    # every check and every weight is in place: only now is the run directory touched
    made = prepare_run_dir(out, resume=resume, overwrite=overwrite)
    with discard_unfinished(out, made):
        return train_and_save(model, config=config, info=info, mods=mods, repeat=repeat, settings=settings, out=out,
                              resume=resume, splits=splits)
