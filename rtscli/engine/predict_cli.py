"""What ``rts predict`` does around :mod:`rtscli.engine.predict`: inputs, outputs, many scenes, ranks."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from rtscli.engine.predict import PredictOptions, Scene, Source, open_scene, predict_scene
from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

EXTS = (".gpkg", ".shp", ".geojson", ".parquet")
RASTER_EXTS = (".tif", ".tiff", ".vrt", ".jp2", ".img")
SHP_NAMES = {"perimeter_m": "perim_m", "touches_nodata": "touch_nd", "touches_edge": "touch_edge"}


def scene_list(inputs: list[str]) -> list[Path]:
    """Scenes from paths, folders, globs and .txt lists (one path per line)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in RASTER_EXTS)
            if not found:
                raise RtsError("no rasters (.tif, .vrt, ...) in this folder", path=p, fix="check the folder")
            out += found
        elif p.suffix.lower() == ".txt" and p.exists():
            lines = [s.strip() for s in p.read_text().splitlines() if s.strip() and not s.startswith("#")]
            out += [(p.parent / s) if not Path(s).is_absolute() else Path(s) for s in lines]
        elif any(c in item for c in "*?["):
            found = sorted(Path(s) for s in glob.glob(item))
            if not found:
                raise RtsError(f"the pattern {item!r} matches no file", fix="check the pattern (quote it)")
            out += found
        else:
            if not p.exists():
                raise RtsError("scene not found", path=p, fix="check the path")
            out.append(p)
    return out


def _sources(scene: Path | None, *, band_map, rgb, nir, ndvi, aux: list[str]) -> list[Source]:
    if scene is not None:
        return [Source(scene, {k: v for k, v in band_map.as_dict().items() if k != "mask"})]
    srcs = []
    if rgb:
        srcs.append(Source(Path(rgb), {"red": 1, "green": 2, "blue": 3}))
    if nir:
        srcs.append(Source(Path(nir), {"nir": 1}))
    if ndvi:
        srcs.append(Source(Path(ndvi), {"ndvi": 1}))
    for a in aux:
        if "=" not in a:
            raise RtsError(f"--aux {a!r}: expected NAME=PATH", fix="e.g. --aux dem=dem.tif")
        name, path = a.split("=", 1)
        srcs.append(Source(Path(path), {name.strip().lower(): 1}))
    for s in srcs:
        if not s.path.exists():
            raise RtsError("raster not found", path=s.path, fix="check the path")
    return srcs


def check_modalities(bundle, sources: list[Source], where: str) -> None:
    """Every channel the bundle's modalities need must come from the inputs (NDVI may be derived)."""
    from rtscli.data.modalities import missing_channel

    have = {n for s in sources for n in s.bands}
    for mod in bundle.modalities:
        ch = missing_channel(mod, have)
        if ch is not None:
            raise RtsError(f"the model needs modality {mod.name} (channel {ch!r}), which {where} lacks",
                           fix=f"pass --bands naming {ch}, or an aligned raster (--{ch} PATH or --aux {ch}=PATH)")


def _progress_bar():
    """Tiles done, tiles/s, km²/h and time left: a Rich bar on a terminal, log lines otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from rtscli.progress import bar

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("")
            km2 = task.fields.get("km2_per_tile", 0.0) * speed * 3600
            return Text(f"{speed:.1f} tiles/s  {km2:,.0f} km²/h")

    return bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
               transient=True)


def _distributed(device: str | None):
    """(rank, world size, device) under torchrun; rank and world come from torch.distributed.

    Each rank takes its own GPU (LOCAL_RANK). No collective follows the set-up: every rank writes
    its own part of the manifest, so a rank with nothing (left) to do never waits on the others.
    """
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def run_scene(model, bundle, scene: Scene, out: Path, opts: PredictOptions, *, overwrite: bool,
              raster: Path | None = None, quicklook: Path | None = None, label: str = "", layer: str = "rts") -> dict:
    """Predict one scene (opened and checked by :func:`open_scene`) and write its outputs."""
    from rtscli.io.vector import write_vector

    from rtscli.geometry.measure import pixel_area_m2

    km2_per_tile = bundle.tile_size**2 * pixel_area_m2(scene.transform, scene.width, scene.height, scene.crs) / 1e6
    t0 = time.perf_counter()
    with _progress_bar() as bar:
        task = bar.add_task(f"{label}{scene.name}", total=None, km2_per_tile=km2_per_tile, unit="tiles")
        gdf, timing = predict_scene(model, bundle, scene, opts,
                                    progress=lambda k, n: bar.update(task, advance=k, total=n))
    t = time.perf_counter()
    if out.suffix.lower() == ".shp":  # Shapefile field names are at most 10 characters
        gdf = gdf.rename(columns=SHP_NAMES)
        log.info("Shapefile: fields renamed %s", ", ".join(f"{k}->{v}" for k, v in SHP_NAMES.items()))
    write_vector(gdf, out, layer=layer, overwrite=overwrite)
    if raster is not None:
        write_instance_raster(gdf, scene, raster, overwrite=overwrite)
    if quicklook is not None:
        write_quicklook(gdf, scene, quicklook, overwrite=overwrite)
    timing.write += time.perf_counter() - t
    return {"scene": str(scene.sources[0].path), "output": str(out), "polygons": len(gdf),
            "seconds": round(time.perf_counter() - t0, 2), "timing": timing.as_dict()}


def write_instance_raster(gdf, scene, path: Path, *, overwrite: bool, block: int = 1024) -> None:
    """An instance-id GeoTIFF (uint32, 0 = background) on the scene's grid, written by windows."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from shapely import STRtree

    from rtscli.geometry.footprint import window_footprint
    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import window_transform

    geoms = list(gdf.to_crs(scene.crs).geometry) if len(gdf) else []
    ids = list(gdf["id"]) if len(gdf) else []
    tree = STRtree(geoms) if geoms else None
    profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint32", crs=scene.crs,
                   transform=scene.transform, nodata=0, compress="deflate", tiled=True, blockxsize=256,
                   blockysize=256, BIGTIFF="IF_SAFER")
    with atomic_file(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, scene.height, block):
            for c in range(0, scene.width, block):
                h, w = min(block, scene.height - r), min(block, scene.width - c)
                t = window_transform(scene.transform, c, r)
                arr = np.zeros((h, w), np.uint32)
                if tree is not None:  # the block's true footprint (all four corners: rotated grids too)
                    hits = tree.query(window_footprint(scene.transform, c, r, w, h), predicate="intersects")
                    if len(hits):
                        arr = rasterize(((geoms[i], int(ids[i])) for i in hits), out_shape=(h, w), transform=t,
                                        fill=0, dtype="uint32")
                dst.write(arr, 1, window=Window(c, r, w, h))


def write_quicklook(gdf, scene, path: Path, *, overwrite: bool, max_side: int = 2048) -> None:
    """Polygons over an RGB (or first band) rendering of the scene, read decimated (bounded memory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from rasterio.errors import RasterioIOError

    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import read_error

    names = {n: (s, i) for s in scene.sources for n, i in s.bands.items()}
    picks = [names[n] for n in ("red", "green", "blue") if n in names] or [next(iter(names.values()))]
    scale = max(1, int(np.ceil(max(scene.width, scene.height) / max_side)))
    h, w = max(1, scene.height // scale), max(1, scene.width // scale)
    by_path: dict[Path, list[int]] = {}  # each raster read once, all of its picked bands together
    for s, i in picks:
        by_path.setdefault(s.path, []).append(i)
    planes = {}
    for p, bands in by_path.items():
        try:
            with rasterio.open(p) as src, _on_scene_grid(src, scene, p) as grid:
                data = grid.read(bands, out_shape=(len(bands), h, w), masked=True).astype(np.float32).filled(np.nan)
        except RasterioIOError as exc:
            raise read_error(p, exc) from None
        planes |= {(p, i): x for i, x in zip(bands, data, strict=True)}
    img = np.stack([planes[s.path, i] for s, i in picks], -1)
    for k in range(img.shape[-1]):
        x = img[..., k]
        lo, hi = (np.nanpercentile(x, [2, 98]) if np.isfinite(x).any() else (0.0, 1.0))
        img[..., k] = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.nan_to_num(img, nan=1.0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    # drawn in the scene's pixel space (polygons through the inverse transform): right on rotated grids too
    fig, ax = plt.subplots(figsize=(8, 8 * h / w if w else 8))
    ax.imshow(img, extent=(0, scene.width, scene.height, 0))
    if len(gdf):
        import geopandas as gpd

        from rtscli.geometry.footprint import to_pixels

        pixels = [to_pixels(g, scene.transform) for g in gdf.to_crs(scene.crs).geometry]
        gpd.GeoSeries(pixels).boundary.plot(ax=ax, color="#ff2d55", linewidth=0.8)
    ax.set_xlim(0, scene.width)
    ax.set_ylim(scene.height, 0)
    ax.set_title(f"{scene.name}: {len(gdf)} slumps")
    ax.set_axis_off()
    fig.tight_layout()
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _on_scene_grid(src, scene, path: Path):
    """``src`` itself, or (a source resampled with ``--resample``) a bilinear view of it on the scene's grid."""
    import contextlib

    if not scene.resample or path == scene.sources[0].path:
        return contextlib.nullcontext(src)
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    return WarpedVRT(src, crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                     resampling=Resampling.bilinear)


def _check_options(*, batch_size: int, workers: int, match_threshold: float, min_score: float, to_crs: str | None,
                   merge: str, match: str, overlap: float | None, scale: float | None = None) -> None:
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


def main(*, inputs: list[str], out: Path | None, model: Path | None, bands: str | None, rgb, nir, ndvi,
         aux: list[str], resample: bool, overlap: float | None, min_score: float, min_area: float, simplify: float,
         merge: str, match: str, match_threshold: float, to_crs: str | None, raster: Path | None,
         quicklook: Path | None, batch_size: int, workers: int, device: str | None, overwrite: bool,
         layer: str | None = None,
         nodata: float | None = None, scale: float | None = None, offset: float | None = None) -> None:
    from rtscli.console import console
    from rtscli.data.bands import BandMap
    from rtscli.io.atomic import check_output
    from rtscli.io.vector import check_vector_output, gpkg_layers
    from rtscli.modeling.bundle import load_model, read_bundle

    _check_options(batch_size=batch_size, workers=workers, match_threshold=match_threshold, min_score=min_score,
                   to_crs=to_crs, merge=merge, match=match, overlap=overlap, scale=scale)
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
        from rtscli.userconfig import default_model

        model, origin = default_model()
        console.print(f"model: {model} ({origin})")
    bundle = read_bundle(model)
    band_map = BandMap.parse(bands) if bands else bundle.band_map
    tile = bundle.tile_size
    ov = None if overlap is None else (int(round(overlap * tile)) if overlap < 1 else int(overlap))
    opts = PredictOptions(overlap=ov, batch_size=batch_size, workers=workers, min_score=min_score, min_area=min_area,
                          simplify=simplify, merge=merge, match_metric=match, match_threshold=match_threshold,
                          to_crs=to_crs, device=device)
    units = dict(scale=scale, offset=offset, training=bundle.config.get("values"))
    scenes = [] if per_modality else scene_list(inputs)
    is_dir_input = len(inputs) == 1 and Path(inputs[0]).is_dir()
    many = len(scenes) > 1 or is_dir_input or bool(inputs and any(c in inputs[0] for c in "*?[")) \
        or bool(inputs and inputs[0].endswith(".txt"))
    if not many:
        if out.suffix.lower() not in EXTS:
            raise RtsError(f"unknown output format {out.suffix!r}", path=out, fix=f"use one of {', '.join(EXTS)}")
        check_vector_output(out, overwrite, [layer])
        for extra in (raster, quicklook):
            if extra is not None:
                check_output(extra, overwrite)
        srcs = _sources(scenes[0] if scenes else None, band_map=band_map, rgb=rgb, nir=nir, ndvi=ndvi, aux=aux)
        check_modalities(bundle, srcs, str(srcs[0].path) if scenes else "the given rasters")
        scene = open_scene(srcs, resample=resample, nodata=nodata, **units)  # every check before the model loads
        _, _, opts.device = _distributed(device)
        net, _ = load_model(model)
        rep = run_scene(net, bundle, scene, out, opts, overwrite=overwrite, raster=raster, quicklook=quicklook,
                        layer=layer)
        tm = rep["timing"]
        console.print(f"{rep['polygons']} slumps -> {out} ({rep['seconds']:.1f} s, {tm['tiles']} tiles, "
                      f"{tm['skipped_nodata_tiles']} all-nodata tiles skipped)")
        if quicklook:
            console.print(f"quicklook: {quicklook}")
        if raster:
            console.print(f"instance raster: {raster}")
        console.print("open it in QGIS: drag the file onto the map, over the scene")
        return
    # many scenes: one output per scene, resumable, shared out by rank under torchrun
    if raster is not None or quicklook is not None:
        raise RtsError("--raster and --quicklook take one scene", fix="run them per scene")
    if out.suffix.lower() in EXTS or (out.exists() and not out.is_dir()):
        raise RtsError("for many scenes -o must be a folder (one .gpkg per scene goes in it)", path=out,
                       fix="pass -o a_folder/")
    ext = ".gpkg"
    stems = [s.stem for s in scenes]
    if len(set(stems)) != len(stems):
        raise RtsError("two scenes have the same file name; their outputs would collide",
                       fix="predict them into different folders")
    opened = {}
    for s in scenes:  # check every scene (metadata only) before the first is run
        srcs = _sources(s, band_map=band_map, rgb=None, nir=None, ndvi=None, aux=[])
        check_modalities(bundle, srcs, str(s))
        opened[s] = open_scene(srcs, nodata=nodata, **units)
    rank, world, opts.device = _distributed(device)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in scenes if overwrite or not (out / f"{s.stem}{ext}").exists()
            or layer not in gpkg_layers(out / f"{s.stem}{ext}")]
    reports = [{"scene": str(s), "output": str(out / f"{s.stem}{ext}"), "skipped": "done before"}
               for s in scenes if s not in todo] if rank == 0 else []
    mine = todo[rank::world]  # shared out after the finished scenes are set aside
    net = None
    for k, s in enumerate(mine):
        target = out / f"{s.stem}{ext}"
        if net is None:
            net, _ = load_model(model)
        rep = run_scene(net, bundle, opened[s], target, opts, overwrite=True, label=f"[{k + 1}/{len(mine)}] ",
                        layer=layer)
        reports.append(rep)
        console.print(f"{s.name}: {rep['polygons']} slumps -> {target} ({rep['seconds']:.1f} s)")
    part = out / f".manifest-rank{rank}.json"
    part.with_suffix(".tmp").write_text(json.dumps(reports))
    part.with_suffix(".tmp").replace(part)
    # every rank rebuilds the manifest from the parts it sees; the last to finish sees them all
    files = sorted(out.glob(".manifest-rank*.json"), key=lambda f: f.stat().st_mtime_ns)
    parts = [r for f in files for r in json.loads(f.read_text())]
    by_scene = {r["scene"]: r for r in parts}
    manifest = {"model": str(Path(model).resolve()), "scenes": [by_scene[k] for k in sorted(by_scene)],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = out / f"manifest.json.tmp{rank}"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")
    console.print(f"{len(mine)} scene(s) run here, {len(scenes) - len(todo)} done before, "
                  f"{len(todo)} to do over {world} process(es) -> {out}/; manifest: {out}/manifest.json")
