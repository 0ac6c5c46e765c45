"""``rts predict SCENE -o slumps.gpkg``: tiled inference over scenes -> one polygon per slump."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer



def predict(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Scene GeoTIFF(s), a folder, a glob ('scenes/*.tif') or a .txt list of paths.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .gpkg (layer rts), .shp, .geojson or .parquet; a folder for many scenes.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of the .gpkg output (default rts). An existing GeoPackage keeps its other layers; replacing this layer needs --overwrite.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Model bundle (default: `rts models use`, or $RTS_MODEL).")] = None,
    bands: Annotated[Optional[str], typer.Option(help="Band map of the scene(s): a preset (planetscope4, sentinel2-10, ...) or red=3,green=2,...; default: that of the model's training rasters (`rts info BUNDLE`).")] = None,
    rgb: Annotated[Optional[Path], typer.Option(help="Instead of one scene: an RGB raster (bands 1-3 = red, green, blue).")] = None,
    nir: Annotated[Optional[Path], typer.Option(help="An aligned NIR raster (band 1).")] = None,
    ndvi: Annotated[Optional[Path], typer.Option(help="An aligned NDVI raster (band 1); else NDVI is computed from red and NIR.")] = None,
    aux: Annotated[Optional[list[str]], typer.Option(help="Another aligned raster as NAME=PATH (band 1), e.g. dem=dem.tif. Repeatable.")] = None,
    nodata: Annotated[Optional[float], typer.Option(help="Nodata value of the input rasters, when they do not tag one (overrides their tags).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Reflectance bands: physical = stored x scale + offset (e.g. 0.0001 for reflectance x 10000). Default: the band scale/offset stored in the raster (GDAL metadata), else the conversion of the model's training data for a raster stored like them.")] = None,
    offset: Annotated[Optional[float], typer.Option(help="Added after --scale (e.g. -0.1 for Sentinel-2 L2A processed since 2022: x 10000 + 1000; -0.2 with --scale 2.75e-5 for Landsat Collection 2).")] = None,
    resample: Annotated[bool, typer.Option(help="Resample rasters on other grids onto the first one (bilinear) instead of refusing them.")] = False,
    overlap: Annotated[Optional[float], typer.Option(help="Tile overlap: a fraction of the tile (<1) or pixels (default: 25% or the typical slump size).")] = None,
    min_score: Annotated[float, typer.Option(help="Keep detections scoring at least this.")] = 0.5,
    min_area: Annotated[float, typer.Option(help="Drop polygons smaller than this many m^2.")] = 0.0,
    simplify: Annotated[float, typer.Option(help="Simplify polygons with this tolerance (map units; 0 = exact pixel edges).")] = 0.0,
    merge: Annotated[str, typer.Option(help="Seam merging: union (overlapping pieces become one polygon) or nms (keep the best box).")] = "union",
    match: Annotated[str, typer.Option(help="Overlap measure for merging: ios (intersection over the smaller) or iou.")] = "ios",
    match_threshold: Annotated[float, typer.Option(help="Merge pieces overlapping at least this much.")] = 0.2,
    to_crs: Annotated[Optional[str], typer.Option(help="Reproject the polygons, e.g. EPSG:4326 (default: the scene's CRS).")] = None,
    raster: Annotated[Optional[Path], typer.Option(help="Also write an instance-id GeoTIFF (0 = background), one scene only.")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="With --quicklook: reference outlines to draw beside the predictions (a .gpkg, .shp, .geojson, ... in any CRS; reprojected to the scene's).")] = None,
    quicklook: Annotated[Optional[Path], typer.Option(help="Also write a PNG of the polygons over the scene's RGB, one scene only.")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    workers: Annotated[int, typer.Option(help="Tile-reading worker processes.")] = 2,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N or mps (default: a CUDA GPU when there is one, else Apple silicon's MPS, else the CPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (a .gpkg: only its --layer; many scenes: re-do finished scenes).")] = False,
) -> None:
    """Map every slump of a scene as its own polygon, in the scene's coordinates.

    Reads the scene by windows (never whole), runs the model tile by tile with overlap, merges
    slumps cut by tile borders into one polygon, and writes the polygons with score, area_m2,
    perimeter_m and flags. Many scenes (a folder, glob or list): one output per scene in OUT/, a
    manifest, and a re-run skips finished scenes; under torchrun the scenes are shared out by rank.
    """
    from rtscli.engine import predict_cli as run

    run.main(inputs=inputs or [], out=out, model=model, bands=bands, rgb=rgb, nir=nir, ndvi=ndvi, aux=aux or [],
             resample=resample, overlap=overlap, min_score=min_score, min_area=min_area, simplify=simplify,
             merge=merge, match=match, match_threshold=match_threshold, to_crs=to_crs, raster=raster,
             quicklook=quicklook, batch_size=batch_size, workers=workers, device=device, overwrite=overwrite,
             nodata=nodata, scale=scale, offset=offset, layer=layer, truth=truth)
