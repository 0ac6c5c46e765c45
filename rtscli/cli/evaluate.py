"""``rts evaluate BUNDLE --data DATASET``: COCO AP/AP50/AP75 for masks and boxes, per site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    data: Annotated[Path, typer.Option(help="Dataset directory made by `rts prepare`.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    report: Annotated[Optional[Path], typer.Option("--report", "-o", help="JSON report (default: BUNDLE/eval_SPLIT.json).")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    errors: Annotated[Optional[Path], typer.Option(help="Write true positives, false positives and missed slumps (IoU 0.5) as layers of this GeoPackage (an existing one keeps its other layers).")] = None,
    min_score: Annotated[float, typer.Option(help="Score threshold for the --errors layers.")] = 0.5,
    overwrite: Annotated[bool, typer.Option(help="Replace the error layers of an existing --errors GeoPackage.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads of torch (default: the CPUs this job may use: SLURM_CPUS_PER_TASK, cgroup quota, OMP_NUM_THREADS).")] = None,
) -> None:
    """Score a model on a dataset split with pycocotools (the paper's metric: mask AP50)."""
    import json

    from rich.table import Table

    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.engine.evaluate import evaluate_bundle
    from rtscli.errors import RtsError

    if split not in ("train", "val", "test"):
        from rtscli.errors import unknown_choice

        raise unknown_choice("split", split, ("train", "val", "test"))
    from rtscli.io.atomic import check_writable, write_text_atomic

    path = report or Path(bundle) / f"eval_{split}.json"
    check_writable(path)  # before the model runs: the report goes there (default: into the bundle's folder)
    if errors is not None:
        from rtscli.engine.evaluate import ERROR_LAYERS
        from rtscli.io.vector import check_vector_output

        if errors.suffix.lower() != ".gpkg":
            raise RtsError("--errors is written as a GeoPackage", path=errors, fix="use a .gpkg file name")
        check_vector_output(errors, overwrite, ERROR_LAYERS)
        split_json = Path(data) / f"{split}.json"
        if split_json.exists() and any(im.get("crs") is None for im in json.loads(split_json.read_text())["images"]):
            raise RtsError("--errors writes map layers, but the chips of this split have no georeference (images "
                           "without CRS were prepared on a pixel grid)", path=data,
                           fix="drop --errors (AP is measured all the same), or prepare georeferenced images")
    from rtscli.machine import use_threads

    if threads is not None and threads < 1:
        raise RtsError(f"--threads {threads} must be 1 or more", fix="drop --threads for the default")
    use_threads(threads)
    with progress() as bar:
        task = bar.add_task(f"evaluating {split}", total=None, unit="chips")
        out, gt, results = evaluate_bundle(bundle, data, split, batch_size=batch_size,
                                           progress=lambda k, n: bar.update(task, advance=k, total=n))
    metrics, sites = out["metrics"], out["per_site_mask_ap50"]
    write_text_atomic(path, json.dumps(out, indent=2))
    t = Table(title=f"{bundle} on {data} ({split}: {out['images']} chips, {out['instances']} slumps)")
    for c in ("", "AP", "AP50", "AP75"):
        t.add_column(c, justify="right")
    for k in ("segm", "bbox"):
        m = metrics[k]
        t.add_row("mask" if k == "segm" else "box", *(f"{m[x]:.3f}" for x in ("AP", "AP50", "AP75")))
    console.print(t)
    s = Table(title="mask AP50 per site")
    s.add_column("site")
    s.add_column("AP50", justify="right")
    for site, v in sites.items():
        s.add_row(site, f"{v:.3f}")
    console.print(s)
    console.print(f"report: {path}")
    if errors is not None:
        from rtscli.engine.evaluate import error_layers, write_error_layers

        layers = error_layers(gt, results, min_score=min_score)
        write_error_layers(layers, errors, overwrite=overwrite)
        console.print(f"errors: {errors} ({', '.join(f'{k}: {len(v)}' for k, v in layers.items())}); "
                      "open it in QGIS over the chips")
