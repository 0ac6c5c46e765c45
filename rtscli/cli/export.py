"""``rts export MAP -o arts.geojson --schema arts ...``: slump maps and changes in a community schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export(
    source: Annotated[Path, typer.Argument(help="A slump map (rts predict output, or any polygon layer), or the GeoPackage of rts track (then the change relations are filled).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write: .geojson (as the ARTS main file), .gpkg, .shp (ARTS short field names) or .parquet.")],
    schema: Annotated[str, typer.Option(help="The schema: arts (the Arctic Retrogressive Thaw Slumps data set).")] = "arts",
    region: Annotated[Optional[str], typer.Option(help="ARTS RegionName: the geographical region (required).")] = None,
    creator: Annotated[Optional[str], typer.Option(help="ARTS CreatorLab: data creator and organization (required).")] = None,
    basemap_source: Annotated[Optional[str], typer.Option(help="ARTS BaseMapSource: the sensor of the imagery, e.g. PlanetScope, Sentinel-2 (required).")] = None,
    basemap_resolution: Annotated[Optional[float], typer.Option(help="ARTS BaseMapResolution: the imagery's resolution in metres (required).")] = None,
    basemap_date: Annotated[Optional[str], typer.Option(help="ARTS BaseMapDate: YYYY-MM-DD or a range YYYY-MM-DD,YYYY-MM-DD. Default: the dates of rts track, or the date in the scene or file name.")] = None,
    basemap_id: Annotated[Optional[str], typer.Option(help="ARTS BaseMapID: the image id. Default: the scene name of rts predict outputs.")] = None,
    contribution_date: Annotated[Optional[str], typer.Option(help="ARTS ContributionDate (YYYY-MM-DD). Default: today.")] = None,
    notes: Annotated[Optional[str], typer.Option(help="ARTS Notes for every feature.")] = None,
    date_field: Annotated[Optional[str], typer.Option(help="Field holding each feature's imagery date (BaseMapDate), for a file of several dates.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="The layer of SOURCE that holds the slumps. Default: rts, or the only layer.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Export only the model predictions scoring this or more (0 to 1). ARTS is a curated data set: a map of predictions (a score field) needs --min-score or --all. Each prediction's Notes record its score and model.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Export every model prediction, whatever its score (their Notes say so).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the output if it exists.")] = False,
) -> None:
    """Write slump polygons as ARTS features: every ARTS field, the ARTS UID, EPSG:3413 geometry, and with rts track's output the change relations (MergedRTS, SplitRTS, NewRTS, StabilizedRTS, UnknownRelationship). Model predictions need --min-score (or --all)."""
    from rtscli.console import console
    from rtscli.errors import RtsError
    from rtscli.track.arts import export_arts

    if schema.lower() != "arts":
        raise RtsError(f"unknown schema {schema!r}", fix="use --schema arts")
    c = export_arts(source, out, region=region, creator=creator, basemap_source=basemap_source,
                    basemap_resolution=basemap_resolution, basemap_date=basemap_date, basemap_id=basemap_id,
                    contribution_date=contribution_date, notes=notes, layer=layer, date_field=date_field,
                    min_score=min_score, keep_all=all_, overwrite=overwrite)
    extra = f", {c['uids']} UIDs (one per slump track), {c['with_relations']} with change relations" \
        if c["tracked"] else ""
    console.print(f"{c['features']} ARTS features -> {out} (EPSG:3413{extra})")
    if c["predictions"]:
        left = f"; {c['below_min_score']} below --min-score {min_score:g} left out" if c["below_min_score"] else ""
        console.print(f"  {c['predictions']} of them model predictions (their Notes give score and model){left}")
