"""``rts info BUNDLE`` or ``rts info --preset NAME``: what a model is and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def info(
    bundle: Annotated[Optional[Path], typer.Argument(help="Model bundle directory.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Describe a preset instead (e.g. cascade-mvitv2-b).")] = None,
) -> None:
    """Parameters (total/trainable), modalities, tile size, band map, provenance and metrics."""
    from rtscli.console import console
    from rtscli.errors import RtsError

    if (bundle is None) == (preset is None):
        raise RtsError("give either a bundle or --preset NAME", fix="e.g. rts info runs/rgb or rts info --preset nano")
    if preset:
        import torch

        from rtscli.modeling.config import load_preset
        from rtscli.modeling.detector import Detector, count_parameters

        cfg = load_preset(preset)
        with torch.device("meta"):  # count without allocating
            model = Detector(cfg=cfg)
        total, trainable = count_parameters(model)
        console.print(f"preset {cfg.name}: {cfg.description}")
        console.print(f"  parameters: {total / 1e6:.2f}M total ({total:,}), {trainable / 1e6:.2f}M trainable")
        console.print(f"  tile size: {cfg.tile_size} px; backbone: {cfg.backbone.kind} depths {list(cfg.backbone.depths)} "
                      f"dim {cfg.backbone.embed_dim}; box stages: {cfg.roi_heads.num_stages} "
                      f"(IoU {', '.join(map(str, cfg.roi_heads.iou_thresholds))}); masks: {cfg.roi_heads.mask}")
        return
    from rtscli.modeling.bundle import read_bundle

    b = read_bundle(bundle)
    c = b.config
    p = c.get("parameters", {})
    console.print(f"bundle {bundle}: {c['model']['name']} (rts {c.get('rts_version')}, {c.get('created')})")
    console.print(f"  parameters: {p.get('total', 0) / 1e6:.2f}M total, {p.get('trainable', 0) / 1e6:.2f}M trainable")
    fu = c.get("fusion") or {}
    console.print(f"  modalities: {', '.join(m['name'] + '(' + ','.join(m['channels']) + ')' for m in c['modalities'])}"
                  f"; fusion: {fu.get('strategy', 'none')}; tile size: {c['tile_size']} px")
    if fu:
        frozen = "frozen" if c.get("training", {}).get("frozen_backbones") else "trained"
        console.print(f"  fusion: {fu['strategy']}, primary {fu.get('primary')}, {frozen} backbones"
                      + (f", attention {fu['heads']} heads in {fu['window']}x{fu['window']} windows" if "window" in fu else "")
                      + f"; decoder from {fu.get('heads_from', 'fresh')}")
        for name, src in (fu.get("sources") or {}).items():
            console.print(f"    {name}: {src['path']} (sha256 {src['sha256'][:12]}..., val AP50 {src.get('val_ap50')})")
    cost = c.get("cost")
    if cost:
        from rtscli.modeling.cost import format_cost

        console.print(f"  cost: {format_cost(cost)}")
    console.print(f"  band map: {', '.join(f'{k}={v}' for k, v in c['band_map'].items())}; nodata: {c.get('nodata')}")
    vals = c.get("values")
    if vals:
        from rtscli.data.values import Conversion

        conv = Conversion(vals.get("scale") or {}, vals.get("offset") or {}, vals.get("source", "none"))
        console.print(f"  training values: {conv.describe()} ({vals.get('source')}; stored as {vals.get('stored_dtype')})")
    t = c.get("training", {})
    console.print(f"  training: {t.get('stage')}, backbone weights {t.get('backbone_weights')}, lr {t.get('lr')}, "
                  f"world size {t.get('world_size')}")
    d = c.get("dataset", {})
    console.print(f"  dataset: {d.get('path')} (sha256 {str(d.get('checksum'))[:12]}...)")
    console.print(f"  metrics: {c.get('metrics')}")
