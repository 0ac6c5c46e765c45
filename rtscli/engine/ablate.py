"""``rts ablate``: fusion strategies x modality sets, laid out like the paper's Tables 3-4.

Layout of the output directory (every step is skipped when its result exists, so a crashed or
interrupted ablation continues where it stopped; a half-trained cell resumes from its checkpoint)::

    OUT/pretrain/<modality>/          unimodal bundles (unless given with --from)
    OUT/baseline_eval.json            the primary modality alone (the tables' baseline row)
    OUT/cells/<strategy>__<a+b+c>/    one fused bundle per cell, with eval_<split>.json
    OUT/table.md, table.csv           AP50 per strategy per modality set
    OUT/ablation.png                  grouped bar chart
"""

from __future__ import annotations

import csv
import json
import logging
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rtscli.errors import RtsError, unknown_choice
from rtscli.modeling.fusion import STRATEGIES

if TYPE_CHECKING:
    from rtscli.engine.step_time import StepTime
    from rtscli.engine.train_settings import TrainSettings

log = logging.getLogger("rtscli")

#: the paper's names for the strategies, in its tables' order
LABELS = {
    "channel-stack": "data-level channel expansion",
    "conv": "convolutional fusion",
    "stacked-attn": "stacked-modality attention",
    "cross-attn": "cross-modality attention",
    "residual-conv": "residual convolutional",
    "residual-stacked": "residual stacked-modality attention",
    "residual-cross": "residual cross-modality attention (proposed)",
}


def modality_sets(modalities: list[str], primary: str, sets: str | None = None) -> list[list[str]]:
    """Every subset with the primary and at least one more modality (or the ``--sets`` given)."""
    if sets:
        out = []
        for s in sets.split(","):
            names = [n.strip().lower() for n in s.split("+") if n.strip()]
            bad = [n for n in names if n not in modalities]
            if bad or primary not in names or len(names) < 2:
                raise RtsError(f"--sets: {s!r} must join two or more of {', '.join(modalities)} with '+', "
                               f"including {primary}", fix="e.g. --sets rgb+ndvi,rgb+ndvi+nir")
            out.append(names)
        return out
    aux = [m for m in modalities if m != primary]
    return [[primary, *c] for k in range(1, len(aux) + 1) for c in combinations(aux, k)]


def parse_fusions(text: str) -> list[str]:
    if text == "all":
        return list(STRATEGIES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in STRATEGIES]
    if bad or not names:
        raise unknown_choice("fusion strategy", bad[0] if bad else text, STRATEGIES, also="or all")
    return names


def ablate(*, data: Path, modalities: list[str], fusions: list[str], out: Path, pretrain_settings: TrainSettings,
           finetune_settings: TrainSettings, preset: str | None = None, primary: str = "rgb",
           sources: list[Path] | None = None, sets: str | None = None, split: str = "test", init_heads: bool = True,
           on_cell: Callable[[str], None] | None = None, tile_size: int | None = None) -> dict:
    from rtscli.data.dataset import DatasetInfo
    from rtscli.engine.evaluate import evaluate_bundle
    from rtscli.engine.finetune import check_sources, finetune
    from rtscli.engine.pretrain import pretrain
    from rtscli.io.atomic import check_writable

    if primary not in modalities:
        raise RtsError(f"the primary modality {primary!r} is not in --modalities", fix=f"add {primary}")
    if out.exists() and not out.is_dir():
        raise RtsError("exists and is not a folder", path=out, fix="choose another -o")
    check_writable(out, into=out.exists())  # before any work; a re-run resumes in the folder
    info = DatasetInfo.open(data)
    for m in modalities:
        info.modality(m)
    grid = modality_sets(modalities, primary, sets)

    # 1. one unimodal bundle per modality: given, or pretrained here (skipped when done)
    given = check_sources(list(sources or []), modalities=modalities, info=info, data=data)
    unimodal: dict[str, Path] = {m: b.path for m, b in given.items()}
    if given:  # the missing modalities are pretrained like the given ones, or the cells could not fuse them
        theirs = next(iter(given.values())).model_config.name
        if preset and preset != theirs:
            raise RtsError(f"--preset {preset} differs from the --from bundles' model {theirs}",
                           fix="drop --preset: the missing modalities are then pretrained like the given ones")
        preset = theirs
        tile = next(iter(given.values())).tile_size
        if tile_size is not None and tile_size != tile:
            raise RtsError(f"--tile-size {tile_size} differs from the --from bundles' {tile} px",
                           fix="drop --tile-size: the missing modalities are then pretrained like the given ones")
    preset = preset or "cascade-mvitv2-b"
    to_pretrain = [m for m in modalities if m not in unimodal and not (out / "pretrain" / m / "config.yaml").exists()]
    if to_pretrain:  # the memory check of rts pretrain, for the widest modality, before anything is written
        from rtscli.engine.pretrain import build_config, check_memory

        repeat = info.manifest.get("repeat_to", 3)
        widest = max(info.modality(m).input_channels(repeat) for m in to_pretrain)
        check_memory(build_config(preset, in_channels=widest, anchors="preset", info=info, tile_size=tile_size),
                     pretrain_settings, what="rts ablate")
    out.mkdir(parents=True, exist_ok=True)  # every check passed
    for m in modalities:
        if m in unimodal:
            continue
        run = out / "pretrain" / m
        if not (run / "config.yaml").exists():
            if on_cell:
                on_cell(f"pretrain {m}")
            resume = (run / "checkpoints" / "last.ckpt").exists()
            pretrain(data=data, modality=m, preset=preset, out=run, settings=pretrain_settings, resume=resume,
                     overwrite=not resume, tile_size=tile_size)
        unimodal[m] = run

    def scored(bundle: Path, report: Path) -> dict:
        if not report.exists():
            rep, _, _ = evaluate_bundle(bundle, data, split)
            tmp = report.with_suffix(".tmp")
            tmp.write_text(json.dumps(rep, indent=2))
            tmp.replace(report)
        return json.loads(report.read_text())

    # 2. the baseline: the primary modality alone
    base = scored(unimodal[primary], out / "baseline_eval.json")
    rows = [{"strategy": f"{primary} alone", "modalities": primary, **_row(base, unimodal[primary])}]

    # 3. the grid
    for mods in grid:
        for fusion in fusions:
            key = f"{fusion}__{'+'.join(mods)}"
            cell = out / "cells" / key
            if not (cell / "config.yaml").exists():
                if on_cell:
                    on_cell(key)
                resume = (cell / "checkpoints" / "last.ckpt").exists()
                srcs = [unimodal[primary]] if fusion == "channel-stack" else [unimodal[m] for m in mods]
                finetune(data=data, fusion=fusion, modalities=mods, out=cell, settings=finetune_settings,
                         sources=srcs, primary=primary, init_heads_from=unimodal[primary] if init_heads else None,
                         resume=resume, overwrite=not resume, tile_size=tile_size)
            rows.append({"strategy": fusion, "modalities": "+".join(mods),
                         **_row(scored(cell, cell / f"eval_{split}.json"), cell)})
    write_tables(out, rows, [("+".join(m)) for m in grid], fusions, primary, split)
    return {"rows": rows, "table": out / "table.md"}


def _row(report: dict, bundle: Path) -> dict:
    from rtscli.io.readers import read_yaml

    cfg = read_yaml(bundle / "config.yaml", what="model config")
    cost = cfg.get("cost") or {}
    return {"mask_ap50": round(report["metrics"]["segm"]["AP50"], 4),
            "box_ap50": round(report["metrics"]["bbox"]["AP50"], 4),
            "params_total": cfg["parameters"]["total"], "params_trainable": cfg["parameters"]["trainable"],
            "peak_train_mb": cost.get("peak_train_mb"), "bundle": str(bundle)}


def write_tables(out: Path, rows: list[dict], sets: list[str], fusions: list[str], primary: str, split: str) -> None:
    keys = ["strategy", "modalities", "mask_ap50", "box_ap50", "params_total", "params_trainable", "peak_train_mb",
            "bundle"]
    tmp = out / "table.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "table.csv")
    ap = {(r["strategy"], r["modalities"]): r["mask_ap50"] for r in rows}
    base = rows[0]["mask_ap50"]
    lines = [f"Mask AP50 on the {split} split ({primary.upper()} alone: {100 * base:.2f}); "
             "the paper's Tables 3-4 layout, in %.", "",
             "| strategy | " + " | ".join(s.upper() for s in sets) + " |",
             "|---|" + "---|" * len(sets)]
    for f in [f for f in STRATEGIES if f in fusions]:
        cells = [f"{100 * ap[(f, s)]:.2f}" if (f, s) in ap else "-" for s in sets]
        lines.append(f"| {LABELS[f]} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _bar_chart(out / "ablation.png", ap, base, sets, [f for f in STRATEGIES if f in fusions], primary)


def _bar_chart(path: Path, ap: dict, base: float, sets: list[str], fusions: list[str], primary: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(fusions)), 4))
    width = 0.8 / max(1, len(sets))
    x = np.arange(len(fusions))
    for i, s in enumerate(sets):
        ax.bar(x + i * width, [100 * ap.get((f, s), np.nan) for f in fusions], width, label=s.upper())
    ax.axhline(100 * base, color="k", ls="--", lw=1, label=f"{primary.upper()} alone")
    ax.set_xticks(x + width * (len(sets) - 1) / 2, fusions, rotation=20, ha="right")
    ax.set_ylabel("mask AP50 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def check_ablation_time(*, data: Path, modalities: list[str], preset: str | None, sources: list[Path],
                        tile_size: int | None, pretrain_settings: TrainSettings, finetune_settings: TrainSettings,
                        cells: int) -> StepTime | None:
    """:func:`rtscli.engine.step_time.check_cpu_time` for ``rts ablate``, before its folder is made: the unimodal
    model's step (the
    ``--from`` bundles' model, else ``preset``, at the widest modality), over the steps of every pretraining still
    to run and of every cell (a cell of frozen backbones and a fusion module costs about what a pretraining step
    does), with the chip-size warning of :func:`check_fill`.

    Args:
        data: the dataset directory.
        modalities: ``--modalities``.
        preset: ``--preset`` (None: the ``--from`` bundles' model, else ``cascade-mvitv2-b``).
        sources: the ``--from`` bundles.
        tile_size: ``--tile-size`` (None: the model's).
        pretrain_settings: the settings of the pretrainings.
        finetune_settings: the settings of the cells.
        cells: the cells of the grid (modality sets x fusion strategies).

    Returns:
        The estimate of one step, or None where nothing was estimated (a GPU).

    Raises:
        RtsError: a dataset or bundle that cannot be read, or a GPU-sized ablation on a CPU that ``--accelerator
            cpu`` did not ask for.
    """
    import copy

    from rtscli.data.dataset import ChipDataset, DatasetInfo
    from rtscli.engine.pretrain import build_config
    from rtscli.engine.step_time import check_cpu_time, check_fill, run_steps

    info = DatasetInfo.open(data)
    repeat = info.manifest.get("repeat_to", 3)
    widest = max(info.modality(m).input_channels(repeat) for m in modalities)
    if sources:
        from rtscli.data.tiling import check_tile_size
        from rtscli.modeling.bundle import read_bundle

        cfg = copy.deepcopy(read_bundle(sources[0]).model_config)
        cfg.backbone.in_channels = widest
        if tile_size is not None:
            cfg.tile_size = check_tile_size(tile_size)
    else:
        cfg = build_config(preset or "cascade-mvitv2-b", in_channels=widest, anchors="preset", info=info,
                           tile_size=tile_size)
    train = ChipDataset(info, "train", [info.modality(modalities[0])], cfg.tile_size, augment=True)
    images = train.coco.dataset.get("images") or []
    if images:
        big = max(images, key=lambda im: int(im["width"]) * int(im["height"]))
        check_fill((int(big["width"]), int(big["height"])), cfg.tile_size, what="the training chips")
    pretrainings = max(0, len(modalities) - len(sources))
    steps = pretrainings * run_steps(len(images), pretrain_settings) + cells * run_steps(len(images),
                                                                                        finetune_settings)
    return check_cpu_time(cfg, pretrain_settings, steps=max(1, steps), what="rts ablate",
                          run=f"ablation ({pretrainings} pretraining(s), {cells} cell(s))")
