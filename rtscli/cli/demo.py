"""``rts demo``: the analyst's whole day on built-in synthetic data, on a CPU, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable

import typer

#: runs one rts command line and returns its exit code: the CLI's own entry point, handed over by
#: :mod:`rtscli.cli` when it registers this command (the demo drives the CLI it belongs to, without
#: importing it back)
_runner: list[Callable[[list[str]], int]] = []


def use_runner(run: Callable[[list[str]], int]) -> None:
    """Set what runs the demo's steps (:func:`rtscli.cli.main`)."""
    _runner[:] = [run]


def run_cli(argv: list[str]) -> int:
    """Run one rts command line through the runner set by :func:`use_runner`; returns its exit code."""
    return _runner[0](argv)


def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo makes.")] = Path("rts_demo"),
    steps: Annotated[int, typer.Option(help="Training steps of the RGB model and of the fusion (NDVI and NIR get 4/3 of it).")] = 120,
    min_score: Annotated[float, typer.Option(help="Score threshold of the demo's predictions (low: the models are barely trained).")] = 0.3,
    set_default: Annotated[bool, typer.Option(help="Make the demo's fused model the default of `rts predict`.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """synth -> prepare -> pretrain rgb, ndvi, nir -> finetune residual-cross -> evaluate -> predict a scene -> track its slumps over three years.

    Tiny models trained for minutes: the figures show the tool working, not what it can reach.
    """
    import json
    import shutil
    import time

    from rtscli.console import console
    from rtscli.errors import RtsError
    from rtscli.io.atomic import check_writable

    if out.exists() and not overwrite:
        raise RtsError("output exists", path=out, fix="pass --overwrite to replace it, or another folder")
    check_writable(out)  # before anything is removed or made
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()

    def step(title: str, *argv) -> None:
        console.rule(f"[bold]{title}")
        console.print("$ rts " + " ".join(str(a) for a in argv), style="dim")
        code = run_cli([str(a) for a in argv])
        if code:
            raise RtsError(f"the demo stopped at: {title}", fix="see the message above")

    syn, ds, runs = out / "synth", out / "dataset", out / "runs"
    step("1/8 synthetic data: 120 chips in the paper's layout (R,G,B,NDVI,NIR + mask; reflectance 0-1) and "
         "a 1280 x 1024 scene to map at three dates a year apart (PlanetScope-like, reflectance x 10000 with a band "
         "scale of 0.0001, truth polygons beside each)",
         "synth", syn, "--chips", 120, "--chip-size", 256, "--scenes", 1, "--scene-size", "1280x1024", "--years", 3,
         "--site", "herschel,banks,tuktoyaktuk,lena", "--weak-fraction", 0.5, "--weak-contrast", 0.3, "--seed", 5)
    step("2/8 prepare: GeoTIFF chips + mask band -> COCO instances (findContours), splits, statistics",
         "prepare", syn / "chips", "-o", ds, "--bands", "paper", "--modalities", "rgb,ndvi,nir")
    # learning rate, warmup and batch: the nano preset's training defaults (models/nano.yaml)
    train = ["--data", ds, "--preset", "nano", "--workers", 1, "--val-every", 3]
    for mod, n in (("rgb", steps), ("ndvi", max(1, steps * 4 // 3)), ("nir", max(1, steps * 4 // 3))):
        step(f"3/8 pretrain a {mod.upper()} model (nano, {n} steps)", "pretrain", "--modality", mod, *train,
             "-o", runs / mod, "--max-steps", n)
    fused = runs / "fused"
    step("4/8 finetune: frozen RGB, NDVI and NIR backbones + residual cross-modality attention",
         "finetune", "--fusion", "residual-cross", "--modalities", "rgb,ndvi,nir",
         "--from", ",".join(str(runs / m) for m in ("rgb", "ndvi", "nir")), "--init-heads-from", runs / "rgb",
         *train, "--max-steps", steps, "-o", fused)
    for name in ("rgb", "fused"):
        step(f"5/8 evaluate the {name} model on the held-out test chips (mask AP50)",
             "evaluate", runs / name, "--data", ds, "--split", "test")
    scenes = sorted((syn / "scenes").glob("*.tif"))
    scene = scenes[0]
    gpkg, png = out / "slumps.gpkg", out / "slumps.png"
    step("6/8 predict: map every slump of a 1280 x 1024 scene as its own polygon (its bands are in another "
         "order: --bands planetscope4; it stores reflectance x 10000 with a band scale of 0.0001, which rts applies)",
         "predict", scene, "-o", gpkg, "--model", fused, "--bands", "planetscope4",
         "--min-score", min_score, "--quicklook", png)
    maps, changes, growth = out / "maps", out / "changes.gpkg", out / "growth.png"
    step("7/8 track: map the scene's next two years, then follow every slump through the three dates (growth, "
         "headwall retreat, merged, new, stabilized)",
         "predict", *scenes[1:], "-o", maps, "--model", fused, "--bands", "planetscope4", "--min-score", min_score)
    step("7/8 track (continued)", "track", gpkg, maps, "-o", changes, "--gone", "stabilized", "--plot", growth,
         "--quicklook", out / "tracks.png")
    if set_default:
        step("8/8 make the demo model the default of `rts predict`", "models", "use", fused)
    ap = {n: json.loads((runs / n / "eval_test.json").read_text())["metrics"] for n in ("rgb", "fused")}
    console.rule("[bold]demo done")
    console.print(f"test mask AP50: RGB alone {ap['rgb']['segm']['AP50']:.3f}, residual-cross RGB+NDVI+NIR "
                  f"{ap['fused']['segm']['AP50']:.3f} (box AP50 {ap['rgb']['bbox']['AP50']:.3f} / "
                  f"{ap['fused']['bbox']['AP50']:.3f})")
    console.print(f"polygons: {gpkg} (layer rts)   quicklook: {png}   truth: {scene.with_suffix('.gpkg')}")
    console.print(f"change: {changes} (layers observations, tracks)   growth plot: {growth}   map: "
                  f"{out / 'tracks.png'}")
    console.print(f"In QGIS: Layer > Add Layer > Add Raster Layer: {scene}; then drag {gpkg.name} and "
                  f"{scene.with_suffix('.gpkg').name} onto the map (both EPSG:3413).")
    console.print(f"The demo models are nano models trained for {steps}-{steps * 4 // 3} steps on 120 synthetic chips in "
                  f"{(time.perf_counter() - t0) / 60:.1f} min: their figures show the pipeline working, not what "
                  "rts reaches with the paper's models and real labels (see README).")
