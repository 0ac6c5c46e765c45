"""``rts merge maps/2021/ -o region_2021.parquet``: the per-scene maps of one period -> one map, each slump once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def merge(
    maps: Annotated[list[Path], typer.Argument(help="Per-scene maps of one period: a folder of rts predict outputs (its manifest.json says which), a glob ('maps/*.gpkg', quoted) or files; any CRS each.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged map: .parquet (GeoParquet, written in row groups; its coverage beside it as NAME_footprint.parquet) or .gpkg (layers rts and rts_footprint).")],
    layer: Annotated[Optional[str], typer.Option(help="Layer of the maps that holds the slumps (default: rts, or the only layer); also the layer written into a .gpkg output.")] = None,
    match: Annotated[str, typer.Option(help="Overlap that makes two scenes' polygons one slump: ios (intersection over the smaller: a view cut by a scene edge still joins) or iou.")] = "ios",
    match_threshold: Annotated[float, typer.Option(help="Least overlap that joins two polygons (touching slumps share no area and stay apart).")] = 0.3,
    min_area: Annotated[float, typer.Option(help="Leave out polygons smaller than this (true m²): slivers.")] = 0.0,
    block_km: Annotated[float, typer.Option(help="Side of the square blocks the region is merged in (km): memory follows one block's polygons, not the region's.")] = 50.0,
    to_crs: Annotated[Optional[str], typer.Option(help="CRS of the merged map, e.g. EPSG:3413 for a region across UTM zones. Default: the maps' CRS (the most common one when they differ; logged).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output if it exists (a .gpkg: its two layers; other layers are kept).")] = False,
) -> None:
    """Join the per-scene maps of one period into one map of the region: each slump once, with n_observed (scenes that detected it), n_covered (scenes whose valid footprint covered it) and detection_rate = n_observed / n_covered, its first and last date, the scenes, the best score and the true area (m²).

    Its outline is the best-viewed observation: not touching nodata or a scene edge, then the highest score. Slumps seen only at a scene edge or next to nodata (clouds) in every scene are flagged partial_only. The coverage (union of the valid footprints) is written beside the slumps, so that rts track of merged maps knows where each period looked. Merged maps are read by rts track and rts export --schema arts.
    """
    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.track.merge import MergeOptions, MergeRequest, check
    from rtscli.track.merge_inputs import expand_inputs
    from rtscli.track.merge_run import run

    req = MergeRequest(maps=[], out=out, layer=layer,
                       options=MergeOptions(match, match_threshold, min_area, block_km), to_crs=to_crs,
                       overwrite=overwrite)
    check(req)  # options and the output first: nothing is read when they are wrong
    req.maps = expand_inputs(maps, out)
    with progress() as bar:
        tasks: dict[str, list] = {}  # stage -> [task, done so far]

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                what = "reading map headers" if stage == "maps" else "merging blocks"
                tasks[stage] = [bar.add_task(what, total=total, unit=stage), 0]
            task, before = tasks[stage]
            bar.advance(task, done - before)
            tasks[stage][1] = done

        s = run(req, progress=advance)
    seen = ", ".join(f"{n} by {k}" for k, n in s["n_observed"].items()) or "none"
    console.print(f"{s['slumps']} slumps from {s['observations']} polygons of {s['maps']} maps "
                  f"({s['joined']} seen again in overlapping scenes) -> {out} ({', '.join(s['layers'])}; {s['crs']})")
    console.print(f"  scenes that detected each slump: {seen}")
    if s["coverage_known"]:
        bins = s["rate_bins"]
        rated = sum(bins)
        low = sum(bins[:10])
        console.print(f"  detection_rate: {bins[-1]} of {rated} slumps seen by every scene that covered them, "
                      f"{low} by fewer than half")
    else:
        console.print("  n_covered and detection_rate unknown: some maps have no footprint layer")
    if s["partial_only"]:
        console.print(f"  {s['partial_only']} seen only at a scene edge or next to nodata (partial_only)")
