"""``rts predict SCENE -o slumps.gpkg``: tiled inference over scenes -> one polygon per slump."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from rtscli.errors import RtsError


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
    quality: Annotated[Optional[str], typer.Option(help="Quality mask per scene (clouds, shadow, haze, snow are nodata): auto (found beside each scene: PlanetScope *_udm2.tif, Sentinel-2 *_SCL_20m.jp2 or SCL.tif, Landsat *_QA_PIXEL.TIF), a mask file (one scene; also a 0/1 GeoTIFF, 1 = usable) or a folder of masks.")] = None,
    quality_invalid: Annotated[Optional[str], typer.Option(help="With --quality: the classes counted invalid, of cloud, shadow, haze, cirrus, snow, dark (default cloud,shadow,haze,cirrus,snow; e.g. cloud,shadow,cirrus,snow maps through haze).")] = None,
    dem: Annotated[Optional[Path], typer.Option(help="DEM for a model trained with terrain (rts prepare --dem): a GeoTIFF, a VRT mosaic (e.g. of ArcticDEM tiles) or a folder of tiles, in any CRS and resolution; slope, relief and hillshade are made from it by window as in training.")] = None,
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
    truth_layer: Annotated[Optional[str], typer.Option(help="The layer of --truth that holds the outlines (e.g. rts of an rts synth truth file).")] = None,
    quicklook: Annotated[Optional[Path], typer.Option(help="Also write a PNG of the polygons over the scene's RGB, one scene only.")] = None,
    stretch: Annotated[Optional[str], typer.Option(help="With --quicklook: colours as LO,HI (or RLO,RHI,GLO,GHI,BLO,BHI) in stored values, the same for every date of a place (default: 2-98% of each scene; the value used is printed).")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    workers: Annotated[int, typer.Option(help="Tile-reading worker processes.")] = 2,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N or mps (default: a CUDA GPU when there is one, else Apple silicon's MPS, else the CPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (a .gpkg: only its --layer; many scenes: re-do finished scenes).")] = False,
    engine: Annotated[str, typer.Option(help="Many scenes: local (this process) or ray (Ray workers: a Ray instance of this machine's own, or the cluster of --address; pip install 'rts[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --engine ray: the Ray cluster to join (auto: the one started on this node by ray start or a SLURM script; or HOST:PORT).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(help="With --engine ray: mapping workers (default: one per GPU, else one per CPU).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads of torch (per Ray worker with --engine ray; default: the CPUs this job may use: SLURM_CPUS_PER_TASK, cgroup quota, OMP_NUM_THREADS).")] = None,
) -> None:
    """Map every slump of a scene as its own polygon, in the scene's coordinates.

    Reads the scene by windows (never whole), runs the model tile by tile with overlap, merges
    slumps cut by tile borders into one polygon, and writes the polygons with score, area_m2,
    perimeter_m and flags. Many scenes (a folder, glob or list): one output per scene in OUT/, a
    manifest, and a re-run skips finished scenes; under torchrun the scenes are shared out by rank. A
    scene that cannot be opened or read is skipped and recorded, the others are mapped, and the run
    ends with a summary and exit code 1; a re-run retries the failed scenes.
    """
    run(inputs=inputs or [], out=out, model=model, bands=bands, rgb=rgb, nir=nir, ndvi=ndvi, aux=aux or [],
        resample=resample, overlap=overlap, min_score=min_score, min_area=min_area, simplify=simplify,
        merge=merge, match=match, match_threshold=match_threshold, to_crs=to_crs, raster=raster,
        quicklook=quicklook, batch_size=batch_size, workers=workers, device=device, overwrite=overwrite,
        nodata=nodata, scale=scale, offset=offset, layer=layer, truth=truth, truth_layer=truth_layer, stretch=stretch,
        engine=engine, address=address, ray_workers=ray_workers, threads=threads, quality=quality,
        quality_invalid=quality_invalid, dem=dem)


#: vector formats of a one-scene output (many scenes: a folder of .gpkg)
EXTS = (".gpkg", ".shp", ".geojson", ".parquet")


def check_options(*, batch_size: int, workers: int, match_threshold: float, min_score: float, to_crs: str | None,
                  merge: str, match: str, overlap: float | None, scale: float | None = None) -> None:
    """Refuse option values that cannot work, before anything is read (one line each, with the fix)."""
    if merge not in ("union", "nms") or match not in ("ios", "iou"):
        raise RtsError("--merge is union or nms, --match is ios or iou", fix="fix the option")
    if batch_size < 1 or workers < 0:
        raise RtsError("--batch-size must be >= 1 and --workers >= 0", fix="e.g. --batch-size 4 --workers 2")
    if not 0 < match_threshold <= 1 or not 0 <= min_score <= 1:
        raise RtsError("--match-threshold must be in (0, 1] and --min-score in [0, 1]", fix="e.g. 0.2 and 0.5")
    if scale is not None and not scale > 0:
        raise RtsError("--scale must be positive", fix="e.g. --scale 0.0001 for reflectance x 10000")
    if overlap is not None and overlap < 0:
        raise RtsError("--overlap must be >= 0", fix="a fraction of the tile (e.g. 0.25) or pixels (e.g. 64)")
    if to_crs:
        from rtscli.io.raster import parse_crs

        parse_crs(to_crs, "--to-crs")


def run(*, inputs: list[str], out: Path | None, model: Path | None, bands: str | None, rgb: Path | None,
        nir: Path | None, ndvi: Path | None, aux: list[str], resample: bool, overlap: float | None, min_score: float,
        min_area: float, simplify: float, merge: str, match: str, match_threshold: float, to_crs: str | None,
        raster: Path | None, quicklook: Path | None, batch_size: int, workers: int, device: str | None,
        overwrite: bool, layer: str | None = None, nodata: float | None = None, scale: float | None = None,
        offset: float | None = None, truth: Path | None = None, truth_layer: str | None = None,
        stretch: str | None = None, engine: str = "local", address: str | None = None,
        ray_workers: int | None = None, threads: int | None = None, quality: str | None = None,
        quality_invalid: str | None = None, dem: Path | None = None) -> None:
    """``rts predict``: check the options and inputs, then map one scene or many (:mod:`rtscli.engine.batch`)."""
    from rtscli.cli.userconfig import default_model
    from rtscli.console import console
    from rtscli.data.bands import BandMap
    from rtscli.data.scenes import open_scene, scene_paths
    from rtscli.engine.devices import distributed
    from rtscli.engine.mapping import run_scene
    from rtscli.engine.predict import PredictOptions
    from rtscli.engine.scene_checks import check_modalities, open_checked, scene_sources
    from rtscli.io.atomic import check_output
    from rtscli.io.schema import footprint_layer
    from rtscli.io.vector import check_vector_output
    from rtscli.modeling.bundle import load_model, read_bundle
    from rtscli.render.quicklook import QuicklookRequest, parse_stretch

    check_options(batch_size=batch_size, workers=workers, match_threshold=match_threshold, min_score=min_score,
                  to_crs=to_crs, merge=merge, match=match, overlap=overlap, scale=scale)
    if truth is not None and quicklook is None:
        raise RtsError("--truth draws reference outlines on the quicklook, and no --quicklook was given",
                       fix="add --quicklook q.png, or drop --truth")
    if stretch is not None and quicklook is None:
        raise RtsError("--stretch sets the quicklook's colours, and no --quicklook was given",
                       fix="add --quicklook q.png, or drop --stretch")
    stretch_pairs = parse_stretch(stretch) if stretch is not None else None
    runner = _engine(engine, address=address, ray_workers=ray_workers, threads=threads)
    if truth_layer is not None and truth is None:
        raise RtsError("--truth-layer names a layer of the --truth file, and no --truth was given",
                       fix="add --truth FILE, or drop --truth-layer")
    if out is None:
        raise RtsError("no output given", fix="pass -o slumps.gpkg (or -o folder/ for many scenes)")
    if layer is not None and out.suffix.lower() in EXTS and out.suffix.lower() != ".gpkg":
        raise RtsError(f"--layer names a layer of a GeoPackage; a {out.suffix} file holds one layer", path=out,
                       fix="write a .gpkg, or drop --layer")
    layer = layer or "rts"
    if not layer.strip() or any(c in layer for c in "\"'`;"):
        raise RtsError(f"--layer {layer!r} is not a usable layer name", fix="use letters, digits and _ (e.g. slumps)")
    per_modality = any([rgb, nir, ndvi, aux])
    if per_modality and inputs:
        raise RtsError("give either scene(s) or per-modality rasters (--rgb/--nir/...), not both",
                       fix="drop one of them")
    if not per_modality and not inputs:
        raise RtsError("no scene given", fix="rts predict scene.tif -o slumps.gpkg (or --rgb a.tif --nir b.tif)")
    if model is None:
        model, origin = default_model()
        console.print(f"model: {model} ({origin})")
    bundle = read_bundle(model)
    band_map = BandMap.parse(bands) if bands else (bundle.source_band_map or bundle.band_map)
    tile = bundle.tile_size
    ov = None if overlap is None else (int(round(overlap * tile)) if overlap < 1 else int(overlap))
    if ov is not None and ov >= tile:  # before anything is read: it would fail every scene alike
        raise RtsError(f"--overlap {overlap:g} is {ov} px, not below the model's tile size ({tile} px)",
                       fix="a fraction of the tile (e.g. --overlap 0.25) or fewer pixels")
    opts = PredictOptions(overlap=ov, batch_size=batch_size, workers=workers, min_score=min_score, min_area=min_area,
                          simplify=simplify, merge=merge, match_metric=match, match_threshold=match_threshold,
                          to_crs=to_crs, device=device)
    _check_memory(bundle, batch_size=batch_size, device=device)  # before any scene is read or output written
    units: dict[str, Any] = dict(scale=scale, offset=offset, training=bundle.values, dem=terrain_dem(bundle, dem))
    scenes = [] if per_modality else scene_paths(inputs)
    is_dir_input = len(inputs) == 1 and Path(inputs[0]).is_dir()
    many = len(scenes) > 1 or is_dir_input or bool(inputs and any(c in inputs[0] for c in "*?[")) \
        or bool(inputs and inputs[0].endswith(".txt")) \
        or bool(inputs and inputs[0].lower().endswith(".json") and scenes != [Path(inputs[0])])  # a catalog
    units["quality"] = quality_request(quality, quality_invalid, many=many)
    if many:
        _run_many(scenes, out, model=model, bundle=bundle, band_map=band_map, bands_given=bool(bands), opts=opts,
                  overwrite=overwrite, layer=layer, units=units, nodata=nodata, scale=scale, offset=offset,
                  raster=raster, quicklook=quicklook, engine=runner)
        return
    if runner.name != "local":
        raise RtsError("--engine ray maps many scenes (a folder, a glob or a .txt list) into a folder",
                       fix="drop --engine for one scene, or give several scenes and -o a_folder/")
    if out.suffix.lower() not in EXTS:
        raise RtsError(f"unknown output format {out.suffix!r}", path=out, fix=f"use one of {', '.join(EXTS)}")
    check_vector_output(out, overwrite, [layer, footprint_layer(layer)])
    for extra in (raster, quicklook):
        if extra is not None:
            check_output(extra, overwrite)
    if scenes:  # every check before the model loads
        scene = open_checked(scenes[0], bundle=bundle, band_map=band_map, bands_given=bool(bands), nodata=nodata,
                             units=units, resample=resample)
    else:
        srcs = scene_sources(None, band_map=band_map, rgb=rgb, nir=nir, ndvi=ndvi, aux=aux)
        check_modalities(bundle, srcs, "the given rasters", dem=units["dem"] is not None)
        scene = open_scene(srcs, resample=resample, nodata=nodata, **units)
    if truth is not None:
        from rtscli.render.quicklook import truth_outlines

        truth_outlines(truth, scene, layer=truth_layer)  # a bad --truth file fails here, before the model loads
    _, _, opts.device = distributed(device)
    net, _ = load_model(model)
    request = None if quicklook is None else QuicklookRequest(quicklook, truth, truth_layer, stretch_pairs)
    rep = run_scene(net, bundle, scene, out, opts, overwrite=overwrite, raster=raster, quicklook=request,
                    layer=layer)
    tm = rep.timing
    console.print(f"{rep.polygons} slumps -> {out} ({rep.seconds:.1f} s, {tm['tiles']} tiles, "
                  f"{tm['skipped_nodata_tiles']} all-nodata tiles skipped)")
    if rep.dropped:
        console.print(rep.dropped)
    if quicklook:
        console.print(f"quicklook: {quicklook} (colours --stretch {rep.stretch}"
                      + (")" if stretch else ": give it to other dates of this place to draw them alike)"),
                      markup=False, soft_wrap=True)
    if raster:
        console.print(f"instance raster: {raster}")
    console.print("open it in QGIS: drag the file onto the map, over the scene")


def terrain_dem(bundle: Any, dem: Path | None) -> Any:
    """``--dem`` checked against the model: a :class:`rtscli.data.terrain.Dem` with the bundle's terrain settings, or
    None for a model without terrain.

    Raises:
        RtsError: a model that reads terrain without ``--dem``, ``--dem`` for a model trained without terrain, a DEM
            that cannot be used (no CRS, heights in unknown units, all void).
    """
    if dem is None:
        if bundle.needs_terrain:
            was = (bundle.terrain or {}).get("path")
            raise RtsError("the model reads terrain (slope, relief, hillshade) and no --dem was given",
                           fix="pass --dem DEM" + (f" (it was trained with {was})" if was else ""))
        return None
    if not bundle.needs_terrain:
        raise RtsError("--dem gives terrain channels, and the model was trained without terrain", path=dem,
                       fix="drop --dem, or use a model trained on a dataset made with rts prepare --dem")
    from rtscli.data.terrain import Dem, TerrainSettings

    return Dem(dem, TerrainSettings.from_record(bundle.terrain))


def quality_request(quality: str | None, invalid: str | None, *, many: bool = False) -> Any:
    """``--quality`` and ``--quality-invalid`` as a :class:`rtscli.data.quality.QualityRequest` (None without
    ``--quality``); ``rts predict``, ``rts prepare`` and ``rts ssl`` take them alike.

    Args:
        quality: ``auto``, a mask file or a folder of masks; None: no quality mask.
        invalid: the classes counted invalid (comma-separated); None: the default.
        many: several scenes are read (one mask file cannot serve them all).

    Returns:
        The request, or None.

    Raises:
        RtsError: ``--quality-invalid`` without ``--quality``, an unknown class, one mask file for many scenes.
    """
    from rtscli.data.quality import AUTO, QualityRequest, parse_classes

    if quality is None:
        if invalid is not None:
            raise RtsError("--quality-invalid says which classes of the quality mask are invalid, and no --quality "
                           "was given", fix="add --quality auto (or --quality MASK), or drop --quality-invalid")
        return None
    where = AUTO if quality.strip().lower() == AUTO else quality
    if where != AUTO and many and Path(where).is_file():
        raise RtsError("--quality names one mask file, and several scenes are given", path=where,
                       fix="use --quality auto (masks beside their scenes) or --quality FOLDER (masks named as the "
                           "providers name them, or as their scenes)")
    return QualityRequest(where, parse_classes(invalid))


def _engine(name: str, *, address: str | None, ray_workers: int | None, threads: int | None) -> Any:
    """The checked ``--engine``, ``--address``, ``--ray-workers`` and ``--threads`` (:class:`Engine`); a local run's
    torch threads are set here (:func:`rtscli.machine.use_threads`).

    Raises:
        RtsError: an unknown engine, Ray options without ``--engine ray``, Ray not installed, a count below 1.
    """
    from rtscli.engine.batch import Engine
    from rtscli.errors import unknown_choice

    if name not in ("local", "ray"):
        raise unknown_choice("--engine", name, ["local", "ray"])
    for option, count in (("--ray-workers", ray_workers), ("--threads", threads)):
        if count is not None and count < 1:
            raise RtsError(f"{option} {count} must be 1 or more", fix=f"drop {option} for the default")
    if name != "ray":
        for option, given in (("--address", address is not None), ("--ray-workers", ray_workers is not None)):
            if given:
                raise RtsError(f"{option} is for --engine ray", fix=f"add --engine ray, or drop {option}")
        from rtscli.machine import use_threads

        use_threads(threads)
        return Engine("local", threads=threads)
    from rtscli.engine.ray_engine import ray_module

    ray_module()  # installed, or the fix
    return Engine("ray", address=address, workers=ray_workers, threads=threads)


def _check_memory(bundle: Any, *, batch_size: int, device: str | None) -> None:
    """Refuse a model whose forward pass over --batch-size tiles cannot fit in this machine's memory (one line with
    the fix: a smaller --batch-size, a GPU; :func:`rtscli.engine.memory_check.check_inference_fits`)."""
    import os

    from rtscli.engine.devices import resolve_device
    from rtscli.engine.memory_check import check_inference_fits

    where = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    check_inference_fits(bundle, batch_size=batch_size, device=where, what="rts predict", gpu="a GPU (--device cuda)")


class ScenesFailed(RtsError):
    """Some scenes of a many-scene run failed (each recorded and listed) while the others were mapped: exit code 1,
    after the summary (the message is its last line)."""

    exit_code = 1


def _run_many(scenes: list[Path], out: Path, *, raster: Path | None, quicklook: Path | None, **kw: Any) -> None:
    """Many scenes: one output per scene in the folder ``out``, resumable (:func:`rtscli.engine.batch.predict_many`).

    A scene that fails (it does not open or cannot be read) is skipped and the others are mapped; at the end a
    summary names each failed scene and why, and the command exits with code 1 (:class:`ScenesFailed`). Under
    torchrun the last rank to finish gives the summary and the exit code.
    """
    from rtscli.console import console, err_console
    from rtscli.engine.batch import EXT, predict_many
    from rtscli.engine.mapping import SceneReport

    if raster is not None or quicklook is not None:
        raise RtsError("--raster and --quicklook take one scene", fix="run them per scene")
    if out.suffix.lower() in EXTS or (out.exists() and not out.is_dir()):
        raise RtsError(f"for many scenes -o must be a folder (one {EXT} per scene goes in it)", path=out,
                       fix="pass -o a_folder/")
    from rtscli.io.atomic import check_writable

    check_writable(out, into=True)  # before any scene is checked or the model loads

    def done(scene: Path, target: Path, rep: SceneReport, pace: str) -> None:
        console.print(f"{scene.name}: {rep.polygons} slumps -> {target} ({rep.seconds:.1f} s) | {pace}",
                      markup=False, soft_wrap=True)
        if rep.dropped:
            console.print(f"  {rep.dropped}")

    res = predict_many(scenes, out, on_scene=done, **kw)
    failed = f", {res.failed_here} failed" if res.failed_here else ""
    shared = f" by this process ({res.todo} to do over {res.world} processes)" if res.world > 1 else ""
    console.print(f"{res.run_here} scene{'' if res.run_here == 1 else 's'} mapped{failed}, {res.done_before} skipped "
                  f"(done before){shared} -> {out}/; manifest: {res.manifest}")
    if not res.failed:
        return
    if not res.complete:  # other ranks are still mapping: the last one to finish sums up and sets the exit code
        console.print(f"{len(res.failed)} scene(s) failed here; the last process to finish lists every failed "
                      "scene of the run")
        return
    lines = [f"{len(res.failed)} of {res.done_before + res.todo} scene(s) failed and were skipped:"]
    lines += [f"  {Path(scene).name}: {reason}" for scene, reason in res.failed]
    for line in lines:  # as they are: a reason may hold brackets, and a long one stays on its line
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise ScenesFailed(f"{len(res.failed)} scene(s) failed (listed above; \"status\": \"failed\" in {res.manifest})",
                       fix="fix or replace those files, then run the same command again: only the failed and missing "
                           "scenes are mapped")
