"""``rts info BUNDLE`` or ``rts info --preset NAME``: what a model is and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from rich.table import Table


def info(
    bundle: Annotated[Optional[Path], typer.Argument(help="Model bundle directory.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Describe a preset instead (e.g. cascade-mvitv2-b).")] = None,
) -> None:
    """Parameters (total/trainable), modalities, tile size, band map, provenance and metrics."""
    from rtscli.console import console
    from rtscli.errors import RtsError

    if (bundle is None) == (preset is None):
        raise RtsError("give either a bundle or --preset NAME", fix="e.g. rts info runs/rgb or rts info --preset nano")
    if preset is not None:
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
        from rtscli.modeling.config import training_defaults
        from rtscli.modeling.memory import estimate_step_memory

        d = training_defaults(preset)
        console.print(f"  training defaults: lr {d.lr:g} (at 16 tiles per step), warmup {d.warmup_steps} steps, batch "
                      f"{d.batch_size}, weight decay {d.weight_decay:g}, {d.schedule} schedule, {d.epochs} epochs "
                      f"({d.source})")
        mem = estimate_step_memory(cfg, batch_size=d.batch_size, device="cpu")
        console.print(f"  one training step at batch {d.batch_size} on a CPU: about {mem.total / 2**30:.1f} GiB "
                      "(estimate; `rts pretrain` checks it against this machine's memory)")
        return
    assert bundle is not None  # exactly one of bundle and --preset is given (checked above)
    from rtscli.modeling.backbone_bundle import describe, is_backbone_bundle, read_backbone_bundle

    if is_backbone_bundle(bundle):  # a backbone of rts ssl, not a model
        bb = read_backbone_bundle(bundle)
        for line in describe(bb) + ssl_lines(bb.config):
            console.print(line, markup=False, soft_wrap=True)
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
            score = (f"training-chip AP50 {src['train_chips_ap50']} (no validation split)" if "train_chips_ap50" in src
                     else f"val AP50 {src.get('val_ap50')}")
            console.print(f"    {name}: {src['path']} (sha256 {src['sha256'][:12]}..., {score})")
    cost = c.get("cost")
    if cost:
        from rtscli.modeling.cost import format_cost

        console.print(f"  cost: {format_cost(cost)}")
    src = c.get("source_band_map")
    if src:
        console.print(f"  scene bands (what `rts predict` reads without --bands): "
                      f"{', '.join(f'{k}={v}' for k, v in src.items() if k != 'mask')}")
    console.print(f"  channels of the training chips: {', '.join(f'{k}={v}' for k, v in c['band_map'].items())}; "
                  f"nodata: {c.get('nodata')}")
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
    metrics = c.get("metrics") or {}
    if any(k.startswith("train_chips") for k in metrics):
        console.print("  scores: the dataset had no validation split, so AP50 was measured on the training chips "
                      "(a measure of fit, not of how the model generalizes); `rts evaluate` scores a held-out split",
                      markup=False, soft_wrap=True)
    cov = c.get("anchor_coverage")
    if cov:  # how well the anchors covered the training boxes, measured when training started
        from rtscli.engine.training_health import coverage_lines

        for line in coverage_lines(cov) + ([f"  warning: {cov['warning']}"] if cov.get("warning") else []):
            console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print(metrics_table(bundle, metrics))
    from rtscli.engine.training_health import run_warnings

    for line in run_warnings(metrics):  # AP50 0 at every validation, a collapse
        console.print(f"  {line}", markup=False, soft_wrap=True)


def metrics_table(bundle: Path, metrics: dict) -> Table:
    """The bundle's training metrics and every evaluation stored beside it (``eval_SPLIT.json`` of ``rts
    evaluate``), as a Rich table."""
    import json

    from rich.table import Table

    t = Table(title="metrics", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if k in ("bundle_weights", "ap50_note", "collapse_warning"):  # told in words below the table
            continue
        name = k.replace("train_chips_", "training-chip ").replace("_", " ")
        t.add_row(name, f"{v:.4f}" if isinstance(v, float) else str(v))
    if metrics.get("bundle_weights"):
        t.add_row("weights of", str(metrics["bundle_weights"]))
    for path in sorted(Path(bundle).glob("eval_*.json")):
        try:
            rep = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        split = rep.get("split", path.stem.removeprefix("eval_"))
        for kind, name in (("segm", "mask"), ("bbox", "box")):
            m = (rep.get("metrics") or {}).get(kind)
            if m:
                t.add_row(f"{split} {name} AP / AP50 / AP75 ({rep.get('images', '?')} chips)",
                          f"{m['AP']:.3f} / {m['AP50']:.3f} / {m['AP75']:.3f}")
    return t


def ssl_lines(config: dict) -> list[str]:
    """More lines about a backbone bundle of ``rts ssl`` (its ``config.yaml``): the dataset or COCO set it read, when
    not scenes, and how its reconstruction loss fell (the means of the first and last tenth of its steps), with
    its warning when it fell too little (:func:`rtscli.engine.training_health.loss_fall`). Older bundles: none."""
    lines = []
    data = config.get("data") or {}
    if data.get("kind") == "dataset":
        lines.append(f"  pretrained on the dataset {data.get('path')}: {data.get('chips')} chips of its "
                     f"{' and '.join(data.get('splits') or [])} split(s) (never its test chips)")
    elif data.get("kind") == "coco":
        lines.append(f"  pretrained on the images of COCO file(s) {', '.join(data.get('files') or {})} "
                     f"({data.get('images')} images)")
    m = config.get("metrics") or {}
    if m.get("loss_fall") is not None:
        fall = float(m["loss_fall"])
        lines.append(f"  reconstruction loss over the run: {m.get('loss_start')} -> {m.get('loss_end')} (means of "
                     f"the first and last {m.get('loss_steps_compared')} steps), {abs(100 * fall):.0f}% "
                     f"{'lower' if fall >= 0 else 'higher'}")
    if m.get("loss_warning"):
        lines.append(f"  warning: {m['loss_warning']}")
    return lines
