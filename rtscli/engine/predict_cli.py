"""What ``rts predict`` does around :mod:`rtscli.engine.predict`: inputs, outputs, many scenes, ranks."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path


from rtscli.engine.predict import PredictOptions, Scene, Source, dropped_note, open_scene, predict_scene
from rtscli.errors import RtsError
from rtscli.io.vector import SHP_NAMES

log = logging.getLogger("rtscli")

EXTS = (".gpkg", ".shp", ".geojson", ".parquet")
RASTER_EXTS = (".tif", ".tiff", ".vrt", ".jp2", ".img")


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
    from rtscli.data.inputs import parse_aux

    for name, path in parse_aux(aux).items():
        srcs.append(Source(path, {name: 1}))
    for s in srcs:
        if not s.path.exists():
            raise RtsError("raster not found", path=s.path, fix="check the path")
    return srcs


def scene_key(path: Path) -> str:
    """How a scene is named in the manifest: its absolute path."""
    return str(Path(path).resolve())


def provenance(model: Path, opts: PredictOptions, **given) -> dict:
    """What decides an output's polygons: the model (path and SHA-256 of its weights) and the options."""
    from rtscli.engine.predict import weights_sha256
    from rtscli.modeling.bundle import WEIGHTS

    bm = given.pop("band_map")
    nd = given.get("nodata")
    if nd is not None:
        given["nodata"] = "nan" if nd != nd else float(nd)  # NaN never equals itself, and is not JSON
    return {"model": scene_key(Path(model)), "model_sha256": weights_sha256(Path(model) / WEIGHTS),
            "bands": bm.as_dict() if bm is not None else None, "overlap_px": opts.overlap,
            "min_score": opts.min_score, "min_area": opts.min_area, "simplify": opts.simplify, "merge": opts.merge,
            "match": opts.match_metric, "match_threshold": opts.match_threshold, "to_crs": opts.to_crs, **given}


def same_provenance(before: dict | None, now: dict) -> bool:
    """The same model (by its weights' hash, wherever the bundle now lies) and the same options."""
    if not before:
        return False
    return {k: v for k, v in before.items() if k != "model"} == {k: v for k, v in now.items() if k != "model"}


def difference(before: dict | None, now: dict) -> str:
    """The first way ``before`` (an earlier run's provenance) differs from ``now``, in words."""
    if not before:
        return "by a run that left no record of its model and options"
    if before.get("model_sha256") != now.get("model_sha256"):
        return f"with another model ({before.get('model')}; now {now.get('model')})"
    for k, v in now.items():
        if k != "model" and before.get(k) != v:
            return f"with other options (--{k.replace('_', '-')} {before.get(k)}; now {v})"
    return "with other options"


def earlier_records(out: Path) -> dict[str, dict]:
    """Per-scene records of earlier runs into ``out``: manifest.json, then the ranks' parts (newer win)."""
    records: dict[str, dict] = {}
    files = [out / "manifest.json"] + sorted(out.glob(".manifest-rank*.json"), key=lambda f: f.stat().st_mtime_ns)
    for f in files:
        if not f.exists():
            continue
        try:
            data = json.loads(f.read_text())
        except (ValueError, OSError):  # a damaged record: its scenes count as unrecorded
            log.warning("cannot read %s: the scenes it recorded will count as made by an unknown run", f)
            continue
        for r in data.get("scenes", []) if isinstance(data, dict) else data:
            if isinstance(r, dict) and "scene" in r:
                layer = (r.get("provenance") or {}).get("layer", "rts")
                records[record_key(Path(r["scene"]), layer)] = r
    return records


def record_key(scene: Path, layer: str) -> str:
    """Records are per scene and output layer (one GeoPackage can hold the maps of several runs)."""
    return f"{scene_key(scene)}::{layer}"


def _write_json(path: Path, data, tag: str = "", indent: int | None = None) -> None:
    """``data`` as JSON at ``path``, through a temporary file (``tag``: writers that share ``path`` use their own)."""
    tmp = path.with_name(f"{path.name}.tmp{tag}")
    tmp.write_text(json.dumps(data, indent=indent))
    tmp.replace(path)


def _band_label(description: str | None) -> str:
    """A band description made comparable: lower case, and Sentinel-2/Landsat names without leading zeros
    (``B02`` = ``b2``, ``SR_B4`` = ``b4``, ``B8A`` = ``b8a``)."""
    import re

    text = (description or "").strip().lower()
    m = re.fullmatch(r"(?:sr_|st_)?b0*(\d+a?)", text)
    return f"b{m.group(1)}" if m else text


def check_band_layout(bundle, scene: Path) -> None:
    """Without ``--bands`` a scene is read with the band layout of the model's training rasters: refuse, with the
    fix, a scene whose band count or band descriptions (GDAL) say it is laid out otherwise."""

    from rtscli.io.raster import inspect

    layout = bundle.config.get("source_bands")
    bm = bundle.source_band_map or bundle.band_map
    text = ", ".join(f"{k}={v}" for k, v in bm.as_dict().items())
    fix = "pass --bands naming this scene's bands (`rts bands` lists the presets)"
    if bundle.source_band_map is None:
        log.warning("%s predates band-layout records: %s is read with the band map of its training chips (%s); pass "
                    "--bands if the scene is laid out otherwise", bundle.path, scene.name, text)
    if not layout:
        return
    info = inspect(scene)
    counts = {layout["count"]}
    mask = (bundle.config.get("source_band_map") or {}).get("mask")
    if mask == layout["count"]:  # the label band of the paper's layout: a scene to map has none
        counts.add(layout["count"] - 1)
    if info.count not in counts:
        raise RtsError(f"the model was trained on {layout['count']}-band rasters ({text}) and this scene has "
                       f"{info.count} bands", path=scene, fix=fix)
    mine = [_band_label(d) for d in info.descriptions]
    theirs = [_band_label(d) for d in layout.get("descriptions") or []]
    used = sorted(set(bm.as_dict().values()))
    for i in used:
        if i > len(mine) or i > len(theirs) or not mine[i - 1] or not theirs[i - 1] or mine[i - 1] == theirs[i - 1]:
            continue
        if mine[i - 1] in theirs:  # the scene holds the training rasters' bands in another order: a contradiction
            raise RtsError(f"band {i} of this scene is described as {mine[i - 1]!r} but the model's training rasters "
                           f"had {theirs[i - 1]!r} there ({text})", path=scene, fix=fix)
        log.warning("%s: band %d is described as %r, the training rasters' as %r; reading it as %s (pass --bands if "
                    "that is wrong)", scene.name, i, mine[i - 1], theirs[i - 1],
                    next(k for k, v in bm.as_dict().items() if v == i))


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
            km2 = task.fields.get("area_km2", 0.0) * speed / task.total * 3600 if task.total else 0.0
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
    from rtscli.engine.devices import default_device, has_cuda, has_mps

    if device is None:
        device = default_device(local)
    elif device == "cuda":
        device = f"cuda:{local}"
    if device.startswith("cuda") and not has_cuda():
        raise RtsError(f"--device {device}: this machine has no CUDA GPU that PyTorch can use",
                       fix="use --device cpu (or mps on Apple silicon)")
    if device == "mps" and not has_mps():
        raise RtsError("--device mps: Apple's MPS GPU is not available here", fix="use --device cpu")
    if not (device == "cpu" or device == "mps" or device.startswith("cuda")):
        raise RtsError(f"unknown --device {device!r}", fix="use cpu, cuda, cuda:N or mps")
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def run_scene(model, bundle, scene: Scene, out: Path, opts: PredictOptions, *, overwrite: bool,
              raster: Path | None = None, quicklook: Path | None = None, label: str = "", layer: str = "rts",
              truth: Path | None = None) -> dict:
    """Predict one scene (opened and checked by :func:`open_scene`) and write its outputs."""
    from rtscli.engine.maps import write_instance_raster, write_quicklook
    from rtscli.io.vector import write_vector

    from rtscli.geometry.footprint import window_footprint
    from rtscli.geometry.measure import geodesic_area

    # the rate is the scene's true area mapped per hour: its share done is tiles done / tiles (tiles overlap,
    # so counting tile areas would inflate it)
    area_km2 = geodesic_area(window_footprint(scene.transform, 0, 0, scene.width, scene.height), scene.crs) / 1e6
    t0 = time.perf_counter()
    with _progress_bar() as bar:
        task = bar.add_task(f"{label}{scene.name}", total=None, area_km2=area_km2, unit="tiles")
        gdf, timing = predict_scene(model, bundle, scene, opts,
                                    progress=lambda k, n: bar.update(task, advance=k, total=n))
    t = time.perf_counter()
    if out.suffix.lower() == ".shp":  # Shapefile field names are at most 10 characters
        gdf = gdf.rename(columns=SHP_NAMES)
        log.info("Shapefile: fields renamed %s", ", ".join(f"{k}->{v}" for k, v in SHP_NAMES.items()))
    if out.suffix.lower() == ".gpkg":  # with where the map looked, for rts track (a slump outside is not gone)
        from rtscli.io.vector import footprint_layer, write_layers

        write_layers({layer: gdf, footprint_layer(layer): footprint_frame(scene, gdf.crs)}, out, overwrite=overwrite)
    else:
        write_vector(gdf, out, layer=layer, overwrite=overwrite)
    if raster is not None:
        write_instance_raster(gdf, scene, raster, overwrite=overwrite)
    if quicklook is not None:
        write_quicklook(gdf, scene, quicklook, overwrite=overwrite, truth=truth)
    timing.write += time.perf_counter() - t
    return {"scene": scene_key(scene.sources[0].path), "output": str(out), "polygons": len(gdf),
            "seconds": round(time.perf_counter() - t0, 2), "timing": timing.as_dict(),
            "dropped": dropped_note(timing, opts)}


def footprint_frame(scene: Scene, crs):
    """Where the map looked, as a one-row layer in ``crs``: the scene's valid pixels (not nodata) within its true
    footprint (all four corners: rotated grids too; :func:`rtscli.engine.maps.valid_footprint`). Its edges are
    densified before reprojection, so that they follow the target's curves."""
    import geopandas as gpd

    from rtscli.engine.maps import valid_footprint
    from rtscli.geometry.footprint import to_crs

    fp = valid_footprint(scene)
    geom = to_crs([fp], scene.crs, crs)[0] if crs is not None and not scene.crs == crs else fp
    return gpd.GeoDataFrame({"scene": [scene.name], "width_px": [scene.width], "height_px": [scene.height]},
                            geometry=[geom], crs=crs or scene.crs)


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
         nodata: float | None = None, scale: float | None = None, offset: float | None = None,
         truth: Path | None = None) -> None:
    from rtscli.console import console
    from rtscli.data.bands import BandMap
    from rtscli.io.atomic import check_output
    from rtscli.io.vector import check_vector_output, footprint_layer, gpkg_layers
    from rtscli.modeling.bundle import load_model, read_bundle

    _check_options(batch_size=batch_size, workers=workers, match_threshold=match_threshold, min_score=min_score,
                   to_crs=to_crs, merge=merge, match=match, overlap=overlap, scale=scale)
    if truth is not None and quicklook is None:
        raise RtsError("--truth draws reference outlines on the quicklook, and no --quicklook was given",
                       fix="add --quicklook q.png, or drop --truth")
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
    band_map = BandMap.parse(bands) if bands else (bundle.source_band_map or bundle.band_map)
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
        check_vector_output(out, overwrite, [layer, footprint_layer(layer)])
        for extra in (raster, quicklook):
            if extra is not None:
                check_output(extra, overwrite)
        srcs = _sources(scenes[0] if scenes else None, band_map=band_map, rgb=rgb, nir=nir, ndvi=ndvi, aux=aux)
        if scenes and not bands:
            check_band_layout(bundle, scenes[0])
        check_modalities(bundle, srcs, str(srcs[0].path) if scenes else "the given rasters")
        scene = open_scene(srcs, resample=resample, nodata=nodata, **units)  # every check before the model loads
        if truth is not None:
            from rtscli.engine.maps import truth_outlines

            truth_outlines(truth, scene)  # a bad --truth file fails here, before the model loads
        _, _, opts.device = _distributed(device)
        net, _ = load_model(model)
        rep = run_scene(net, bundle, scene, out, opts, overwrite=overwrite, raster=raster, quicklook=quicklook,
                        layer=layer, truth=truth)
        tm = rep["timing"]
        console.print(f"{rep['polygons']} slumps -> {out} ({rep['seconds']:.1f} s, {tm['tiles']} tiles, "
                      f"{tm['skipped_nodata_tiles']} all-nodata tiles skipped)")
        note = rep.get("dropped")
        if note:
            console.print(note)
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
    # what made each output: a re-run with another model or other options must not keep the old maps silently
    prov = provenance(model, opts, band_map=band_map, scale=scale, offset=offset, nodata=nodata, layer=layer)
    old = earlier_records(out)
    done = [s for s in scenes if not overwrite and (out / f"{s.stem}.gpkg").exists()
            and layer in gpkg_layers(out / f"{s.stem}.gpkg")]
    stale = [s for s in done if not same_provenance((old.get(record_key(s, layer)) or {}).get("provenance"), prov)]
    if stale:
        why = difference((old.get(record_key(stale[0], layer)) or {}).get("provenance"), prov)
        names = ", ".join(f"{s.stem}.gpkg" for s in stale[:3]) + (", ..." if len(stale) > 3 else "")
        raise RtsError(f"{len(stale)} scene(s) already mapped in this folder ({names}) were made {why}", path=out,
                       fix="pass --overwrite to map every scene again with this model and these options, delete those "
                       "outputs to redo only them, or choose another -o")
    opened = {}
    for s in scenes:  # check every scene (metadata only) before the first is run
        srcs = _sources(s, band_map=band_map, rgb=None, nir=None, ndvi=None, aux=[])
        if not bands:
            check_band_layout(bundle, s)
        check_modalities(bundle, srcs, str(s))
        opened[s] = open_scene(srcs, nodata=nodata, **units)
    rank, world, opts.device = _distributed(device)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in scenes if s not in done]
    # every rank carries the records of the scenes done before, and writes them before any work: a rank that
    # replaces its old part can never lose a record, however the run ends
    reports = [old[record_key(s, layer)] | {"skipped": "done before"} for s in done]
    mine = todo[rank::world]  # shared out after the finished scenes are set aside
    net = None
    part = out / f".manifest-rank{rank}.json"
    _write_json(part, reports)
    for k, s in enumerate(mine):
        target = out / f"{s.stem}{ext}"
        if net is None:
            net, _ = load_model(model)
        rep = run_scene(net, bundle, opened[s], target, opts, overwrite=True, label=f"[{k + 1}/{len(mine)}] ",
                        layer=layer)
        rep["provenance"] = prov
        reports.append(rep)
        _write_json(part, reports)  # after every scene: an interrupted run keeps the record of what it made
        console.print(f"{s.name}: {rep['polygons']} slumps -> {target} ({rep['seconds']:.1f} s)")
        note = rep.get("dropped")
        if note:
            console.print(f"  {note}")
    _write_json(part, reports)
    # every rank rebuilds the manifest from the parts it sees; the last to finish sees them all
    files = sorted(out.glob(".manifest-rank*.json"), key=lambda f: f.stat().st_mtime_ns)
    parts = [r for f in files for r in json.loads(f.read_text())]
    by_scene = dict(old)  # earlier records (other layers, other scenes) stay; this run's replace theirs
    by_scene.update({record_key(Path(r["scene"]), (r.get("provenance") or {}).get("layer", "rts")): r for r in parts})
    manifest = {"model": str(Path(model).resolve()), "provenance": prov,
                "scenes": [by_scene[k] for k in sorted(by_scene)],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(out / "manifest.json", manifest, tag=str(rank), indent=2)
    console.print(f"{len(mine)} scene(s) run here, {len(scenes) - len(todo)} done before, "
                  f"{len(todo)} to do over {world} process(es) -> {out}/; manifest: {out}/manifest.json")
