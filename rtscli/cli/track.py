"""``rts track MAP1 MAP2 [...] -o changes.gpkg``: slumps followed through time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def track(
    maps: Annotated[list[Path], typer.Argument(help="Slump maps of one area at different dates (rts predict outputs, or any GeoPackage/Shapefile/GeoJSON/GeoParquet; any CRS each), or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="GeoPackage to write: layers observations (a row per slump per date) and tracks (a row per slump).")],
    dates: Annotated[Optional[str], typer.Option(help="The imagery date of each map (or folder of maps), in order: 2019-07-15,2020-07-20,... Default: a date field, the scene name of rts predict outputs, the file name, or the folder name. Dates out of time order, or in another year than a map's own date, are refused; another day of the same year is a warning.")] = None,
    force_dates: Annotated[bool, typer.Option(help="Take --dates as given even when they are not in time order or fall in another year than the dates the maps carry (a name holding a wrong date); each disagreement is still a warning.")] = False,
    date_field: Annotated[Optional[str], typer.Option(help="Field holding each feature's imagery date (one file may then hold several dates). An ARTS BaseMapDate field is read without it.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of the maps that holds the slumps. Default: rts, or the only layer.")] = None,
    match: Annotated[str, typer.Option(help="Overlap that links a slump to its next date: ios (intersection over the smaller: robust to growth) or iou.")] = "ios",
    match_threshold: Annotated[float, typer.Option(help="Least overlap that links two polygons (touching slumps share no area and never link).")] = 0.3,
    min_area: Annotated[float, typer.Option(help="Leave out polygons smaller than this (true m²): slivers.")] = 0.0,
    gone: Annotated[str, typer.Option(help="What a slump gone from a map that covers its place is: disappeared, or stabilized (maps of active slumps no longer show a revegetated scar).")] = "disappeared",
    stabilized: Annotated[Optional[Path], typer.Option(help="Polygons of known stabilized scars: a slump gone where one lies is stabilized.")] = None,
    stabilized_layer: Annotated[Optional[str], typer.Option(help="The layer of --stabilized that holds the scars (when it has several).")] = None,
    to_crs: Annotated[Optional[str], typer.Option(help="CRS of the output layers. Default: the first map's.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of area over time for the fastest-growing (or largest) slumps.")] = None,
    plot_top: Annotated[int, typer.Option(help="How many slumps --plot shows.")] = 10,
    plot_by: Annotated[str, typer.Option(help="rate (fastest-growing) or area (largest) slumps on --plot.")] = "rate",
    quicklook: Annotated[Optional[Path], typer.Option(help="PNG map of the tracks coloured by growth rate.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output layers and figures if they exist (the GeoPackage's other layers are kept).")] = False,
) -> None:
    """Follow every slump through time: new, continued, merged, split, disappeared or stabilized, with stable track ids, true areas, growth (m²/year) and boundary change (m/year: + where the outline advanced, - where a shrinking slump drew back).

    Maps are matched in one equal-area CRS. A map's footprint layer (rts predict writes <layer>_footprint) says where it looked: a slump outside a map is not 'disappeared' but followed to the next map that sees it. Touching slumps stay apart; slumps cut by a scene edge or nodata are flagged uncertain.
    """
    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.track.change import TrackOptions
    from rtscli.track.run import TrackRequest, check, expand, parse_dates, run

    groups = expand(maps)
    per_input = parse_dates(dates, len(groups))
    files = [f for g in groups for f in g]
    file_dates = [d for g, d in zip(groups, per_input, strict=True) for _ in g] if per_input else None
    req = TrackRequest(maps=files, out=out, dates=file_dates, force_dates=force_dates, date_field=date_field, layer=layer,
                       min_area=min_area, options=TrackOptions(match, match_threshold, gone), stabilized=stabilized,
                       stabilized_layer=stabilized_layer,
                       to_crs=to_crs, plot=plot, plot_top=plot_top, plot_by=plot_by, quicklook=quicklook,
                       overwrite=overwrite)
    check(req)
    with progress() as bar:
        task = bar.add_task("reading maps", total=len(files), unit="maps")
        s = run(req, progress=lambda k: bar.advance(task, k))
    rel = ", ".join(f"{n} {k}" for k, n in sorted(s["relations"].items()))
    console.print(f"{s['tracks']} slump tracks over {len(s['dates'])} dates ({s['dates'][0]} to {s['dates'][-1]}) "
                  f"-> {out} (layers observations, tracks)")
    console.print(f"  observations: {rel}; {s['uncertain']} uncertain (touch a scene edge or nodata)")
    for f in s["fastest"]:
        console.print(f"  fast growth: track {f['track_id'][:8]} {f['growth_rate_m2_yr']:+,.0f} m²/yr "
                      f"(now {f['last_area_m2']:,.0f} m²)")
    for p, what in ((plot, "growth plot"), (quicklook, "quicklook")):
        if p is not None:
            console.print(f"  {what}: {p}")
