"""``rts prepare``: from what analysts have to a training dataset (chips + COCO + manifest).

Four kinds of input, detected from the options or chosen with ``mode``:

``paper``   per-sample GeoTIFFs whose band map has a ``mask`` band (the paper's layout);
``masks``   images + separate mask images matched by name (``--masks DIR``): binary masks (one instance
            per connected part) or instance-id masks (one per id), any format GDAL reads;
``vectors`` large scenes + vector labels (``--labels FILE``) cut into chips of a given size and
            overlap, one instance per label polygon;
``coco``    an existing COCO instance dataset (``--coco FILE``, or COCO JSON in the input folder):
            :mod:`rtscli.data.coco_import`.

Images may be GeoTIFF, JPEG, PNG or any format GDAL reads. Images without georeference (plain JPEG/PNG
chips) get a pixel grid: each is its own place for the split, and their chips carry no CRS.

The dataset directory::

    DATASET/manifest.yaml        band map, modalities, normalization stats, splits, counts, checksums
    DATASET/{train,val,test}.json  COCO instances; every image carries crs, transform, site, source
    DATASET/chips/<site>/*.tif   GeoTIFF chips with their georeference (named bands only, no mask)

It is built in a temporary directory and renamed when complete. Everything is read by window,
so memory does not grow with scene size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtscli.data import coco, values
from rtscli.data.bands import BandMap
from rtscli.data.chips import chip_transform, crs_text, iter_chips, write_chip
from rtscli.data.inputs import (
    MASK_SUFFIXES, all_aux, aux_lookup, band_map_from_descriptions, find_rasters, sample_items, vector_items,
)
from rtscli.data.modalities import channel, resolve, resolve_all
from rtscli.data.manifest import build_manifest, values_record
from rtscli.data.split import SPLITS, read_split_file
from rtscli.data.split_items import plan_splits, split_warnings, warn_single_chip_scenes
from rtscli.data.stats import StatsSampler
from rtscli.errors import RtsError
from rtscli.io.raster import (
    RasterInfo, gdal_env, inspect,
)

log = logging.getLogger("rtscli")

MODES = ("auto", "paper", "masks", "vectors", "coco")
#: nodata of chips whose values were converted (--scale/--offset or GDAL band scale): the stored nodata (often 0)
#: could be a real value after conversion
CONVERTED_NODATA = -9999.0


@dataclass
class PrepareOptions:
    inputs: list[Path]
    out: Path
    bands: BandMap | None = None
    mode: str = "auto"
    masks: Path | None = None
    labels: list[Path] | None = None  # one or several label files (e.g. one per site), any CRS each
    labels_layer: str | None = None
    labels_crs: Any = None
    aux: dict[str, Path] = field(default_factory=dict)
    modalities: list[str] | None = None
    chip_size: int | None = None  # scenes: 256 when None; per-sample images: cut only when given
    overlap: float = 0.25
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: Path | None = None
    split_block: int = 512
    seed: int = 0
    min_area: int = 16
    segmentation: str = "auto"
    site: str | None = None
    assume_crs: Any = None
    scale: float | None = None  # reflectance bands: physical = stored * scale + offset (else GDAL metadata)
    offset: float | None = None
    keep_empty: bool = True
    repeat_to: int = 3
    dedupe_labels: bool = True
    overwrite: bool = False
    mask_kind: str = "auto"  # masks and mask bands: auto, binary or instances (ids)
    coco: list[Path] | None = None  # COCO instance files
    coco_split: dict[Path, str] | None = None  # {file: split}; default: from the file names
    images: Path | None = None  # where the COCO files' images are
    category: str | None = None  # the COCO category of the slumps


@dataclass
class Result:
    out: Path
    manifest: dict
    counts: dict


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def detect_mode(opts: PrepareOptions, band_map: BandMap) -> str:
    if opts.mode != "auto":
        return opts.mode
    if opts.labels is not None:
        return "vectors"
    if opts.masks is not None:
        return "masks"
    if opts.coco is not None:
        return "coco"
    if "mask" in band_map:
        return "paper"
    raise RtsError(
        "no labels given",
        fix="pass --labels FILE (vector labels), --masks DIR (mask images), --coco FILE (COCO instances), or a "
        "band map with a mask band (e.g. --bands paper)",
    )


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def prepare(opts: PrepareOptions, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> Result:
    """Build the dataset described by ``opts``; see the module docstring."""
    from rtscli.geometry.measure import pixel_area_m2
    from rtscli.io.atomic import atomic_dir, check_output

    check_output(opts.out, opts.overwrite)
    if opts.scale is not None and not opts.scale > 0:
        raise RtsError("--scale must be positive", fix="e.g. --scale 0.0001 for reflectance x 10000")
    if opts.segmentation not in coco.SEGMENTATION_FORMATS:
        raise RtsError(f"unknown segmentation format {opts.segmentation!r}", fix="use auto, polygon or rle")
    if not 0 <= opts.overlap < 1:
        raise RtsError("--overlap must be in [0, 1)", fix="use e.g. 0.25")
    if opts.chip_size is not None and opts.chip_size < 16:
        raise RtsError("--chip-size must be at least 16 pixels", fix="use e.g. 256")

    from rtscli.data.chips import MaskReader

    mask_reader = MaskReader(opts.mask_kind)
    opts = _with_coco(opts)
    coco_records: dict = {}
    coco_meta: dict = {}
    exclude = [opts.out]  # an output folder inside the input folder is not input
    if opts.masks is not None and all(opts.masks.resolve() != i.resolve() for i in opts.inputs if i.is_dir()):
        exclude.append(opts.masks)
    coco_reader = None
    if opts.coco is not None:
        from rtscli.data.coco_import import CocoReader, read_sources

        coco_reader = CocoReader()
        rasters, coco_records, coco_meta = read_sources(opts.coco, split_map=opts.coco_split, images=opts.images,
                                                        inputs=opts.inputs, category=opts.category,
                                                        site=opts.site)
    else:
        rasters = find_rasters(opts.inputs, exclude=exclude)
    # per-sample images (not scenes with vector labels) may come without georeference: they get a pixel grid
    pixel_ok = opts.mode != "vectors" and opts.labels is None
    if not pixel_ok:
        rasters = _georeferenced(rasters, opts)
    if opts.masks is not None:
        if not opts.masks.is_dir():
            raise RtsError("mask folder not found", path=opts.masks, fix="pass the folder that holds the masks")
        # when images and masks share a folder, the masks are not images
        rasters = [(p, r) for p, r in rasters
                   if not any(p.stem.endswith(s) for s in MASK_SUFFIXES if s)]
    first = inspect(rasters[0][0], assume_crs=opts.assume_crs, pixel_grid_ok=pixel_ok)  # a clear error if not a raster
    band_map = opts.bands or band_map_from_descriptions(first)
    if opts.bands is None and band_map is not None and not any(first.descriptions):
        log.info("band map from the images' colour interpretation: %s", band_map)
    if band_map is None:
        raise RtsError("no band map given and the raster's bands are not named", path=rasters[0][0],
                       fix="pass --bands (e.g. planetscope4, sentinel2-10, paper or blue=1,green=2,red=3,nir=4)")
    mode = detect_mode(opts, band_map)
    if mode == "paper" and "mask" not in band_map:
        raise RtsError(f"mode 'paper' needs a mask band in the band map ({band_map})",
                       fix="name it, e.g. --bands paper or ...,mask=6")
    if mode == "vectors" and opts.chip_size is None:
        opts = dataclasses.replace(opts, chip_size=256)  # scenes are always cut; the caller's opts stay
    if mode == "vectors" and opts.labels is None:
        raise RtsError("mode 'vectors' needs --labels FILE", fix="pass the label GeoPackage/shapefile/GeoJSON")
    if mode == "masks" and opts.masks is None:
        raise RtsError("mode 'masks' needs --masks DIR", fix="pass the folder of mask images")
    if mode == "coco" and opts.coco is None:
        raise RtsError("mode 'coco' needs --coco FILE (or COCO JSON files in the input folder)",
                       fix="pass the COCO instances JSON of each split with --coco")
    if mode == "coco" and opts.split_file is not None:
        raise RtsError("--split-file and --coco both give the splits", path=opts.split_file,
                       fix="drop --split-file (the COCO files give the splits), or use --coco-split")

    image_bands = band_map.without(["mask"])
    aux_names = list(opts.aux)
    for name in aux_names:
        if name in image_bands:
            raise RtsError(f"aux raster name {name!r} is already a band", fix="choose another --aux name")
    chip_band_names = image_bands.names + aux_names
    chip_bands = BandMap(tuple((n, i + 1) for i, n in enumerate(chip_band_names)))
    mod_names = opts.modalities or _default_modalities(chip_bands)
    modalities = resolve_all(mod_names, chip_bands)

    # inspect every input once (clear errors before any work)
    infos: list[tuple[RasterInfo, Path]] = []
    for path, root in rasters:
        info = inspect(path, assume_crs=opts.assume_crs, pixel_grid_ok=pixel_ok)
        band_map.check_against(info.count, path)
        infos.append((info, root))
    pixel_grids = [i.path for i, _ in infos if i.pixel_grid]
    if pixel_grids:
        log.info("%d image(s) have no georeference (e.g. %s): they get a pixel grid, each image its own place in the "
                 "split; their chips carry no CRS, so rts predict cannot map them (rts evaluate scores them)",
                 len(pixel_grids), pixel_grids[0].name)
    nodatas = {("nan" if v is not None and v != v else v) for v in (i.nodata for i, _ in infos)}
    if len(nodatas) > 1:
        ex = {str(i.nodata): i.path.name for i, _ in infos}
        raise RtsError(
            "the inputs have different nodata values (" + ", ".join(f"{n}: {v}" for v, n in ex.items()) + ")",
            path=infos[0][0].path.parent,
            fix="give them one nodata value first (gdal_edit.py -a_nodata VALUE file.tif)",
        )
    aux_infos = {name: aux_lookup(name, p) for name, p in opts.aux.items()}
    conversions = {info.path: values.resolve(info, image_bands.as_dict(), scale=opts.scale, offset=opts.offset)
                   for info, _ in infos}

    split_map = read_split_file(opts.split_file) if opts.split_file else None
    labels = None
    label_meta: dict[str, Any] = {}
    if mode == "vectors":
        items, labels, label_meta = vector_items(opts, infos, aux_infos)
    elif mode == "coco":
        from rtscli.data.coco_import import coco_items

        items = coco_items(opts, infos, coco_records, aux_infos)
    else:
        items = sample_items(opts, infos, aux_infos, mode)
    splits, split_report = plan_splits(items, opts, split_map)
    # the splits asked for; an evaluation-only dataset (--split 0,0,1) takes its statistics from all chips
    wanted = {s: f for s, f in zip(SPLITS, opts.fractions, strict=True)} if split_map is None else \
        {s: float(s in split_map.values()) for s in SPLITS}
    if mode == "coco" and any(it.coco.split for it in items):  # the COCO files give the splits
        given = {it.coco.split for it in items}
        wanted = {s: float(s in given or (s == "val" and bool(split_report.get("val_drawn")))) for s in SPLITS}
    stats_from = "train" if wanted["train"] > 0 else "all"
    if split_map is None and sum(f > 0 for f in wanted.values()) > 1 and mode != "coco":
        warn_single_chip_scenes(items, opts)  # a split file assigns whole scenes

    for a in all_aux(items):
        name = next(n for it in items for n, i in it.aux.items() if i.path == a.path)
        conversions[a.path] = values.resolve(a, {name: 1}, scale=opts.scale, offset=opts.offset)
    values.report(conversions)
    converted = any(not c.identity for c in conversions.values())
    dtypes = {np.dtype(info.dtype) for info, _ in infos} | {np.dtype(i.dtype) for i in all_aux(items)}
    chip_dtype = np.result_type(*dtypes)
    if (len(dtypes) > 1 or converted) and not np.issubdtype(chip_dtype, np.floating):
        chip_dtype = np.dtype("float32")
    nodata = infos[0][0].nodata
    if converted and (nodata is None or nodata == nodata):
        # a stored nodata value (e.g. 0) could be a physical value after conversion, and padding beyond a raster's
        # edge must stay nodata: converted chips always carry one
        nodata = CONVERTED_NODATA

    stat_names = list(chip_bands.names)
    can_ndvi = "ndvi" not in chip_bands and "red" in chip_bands and "nir" in chip_bands
    if can_ndvi:
        stat_names.append("ndvi")
    sampler = StatsSampler(stat_names, seed=opts.seed)

    counts: dict = defaultdict(lambda: {s: {"images": 0, "instances": 0, "negatives": 0} for s in SPLITS})
    dropped = {"specks_below_min_area": 0, "nodata_chips_skipped": 0, "empty_chips_dropped": 0,
               "labels_clipped_below_min_area": 0, "overlapping_other_split": len(items) - len(splits)}
    items = [it for it in items if it.key in splits]
    sizes: list[float] = []
    ratios: list[float] = []
    areas_m2: list[float] = []  # true areas of the training slumps (pixels x the chip's mean true pixel area)
    image_id = ann_id = crowd = 0

    advance = progress("preparing", len(items)) if progress else (lambda k: None)
    with atomic_dir(opts.out, overwrite=opts.overwrite) as tmp, gdal_env():
        docs = {s: coco.CocoWriter(tmp / f"{s}.json", f"rts dataset, split {s}") for s in SPLITS}
        for item, image, valid, instances, specks, nclipped in iter_chips(items, opts, mode, band_map, image_bands,
                                                                         labels, chip_dtype, conversions, nodata,
                                                                         mask_reader, coco_reader):
            advance(1)
            dropped["specks_below_min_area"] += specks
            dropped["labels_clipped_below_min_area"] += nclipped
            if image is None:
                dropped["nodata_chips_skipped"] += 1
                continue
            if not instances and not opts.keep_empty and not item.negative_area:  # labelled background stays
                dropped["empty_chips_dropped"] += 1
                continue
            split = splits[item.key]
            image_id += 1
            rel = Path("chips") / item.site / f"{item.key}.tif"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            transform = chip_transform(item)
            write_chip(tmp / rel, image, transform, item.image.crs, nodata, chip_band_names)
            entry = {
                "id": image_id,
                "file_name": rel.as_posix(),
                "width": int(image.shape[2]),
                "height": int(image.shape[1]),
                "crs": crs_text(item.image.crs),
                "transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
                "site": item.site,
                "source": str(item.image.path),
                "split": split,
            }
            if item.window is not None:
                entry["window"] = list(item.window)
            if item.coco is not None:  # where it came from in the COCO file it was read from
                entry["source_image_id"] = item.coco.id
                entry["source_file"] = item.coco.json.name
            docs[split].add_image(entry)
            learn = split == "train" or stats_from == "all"  # statistics come from the training chips only
            px_m2 = pixel_area_m2(transform, entry["width"], entry["height"], item.image.crs) \
                if learn and instances and item.image.crs is not None else float("nan")
            for inst in instances:
                ann_id += 1
                docs[split].add_annotation(coco.annotation(inst, ann_id, image_id))
                if inst.iscrowd:
                    crowd += 1
                    continue
                if learn:
                    sizes.append(float(np.sqrt(inst.bbox[2] * inst.bbox[3])))
                    ratios.append(float(inst.bbox[3] / inst.bbox[2]))
                    if px_m2 == px_m2:  # images without georeference have no true area
                        areas_m2.append(inst.area * px_m2)
            slumps = sum(not i.iscrowd for i in instances)  # crowd regions are not slumps
            c = counts[item.site][split]
            c["images"] += 1
            c["instances"] += slumps
            c["negatives"] += int(not slumps)
            if learn:
                chans = {n: channel(n, image, chip_bands, valid) for n in stat_names}
                sampler.add(chans, valid)

        warnings = split_warnings(counts, wanted, mode, split_report)
        for w in warnings:
            log.warning(w)
        mask_notes = mask_reader.notes()
        for n in mask_notes:
            log.info(n)
        if coco_reader is not None:
            bad = coco_reader.bad
            coco_meta["unreadable_segmentations_left_out"] = len(bad)
            if bad:
                log.warning("%d annotation(s) with an unreadable or empty segmentation were left out (e.g. %s)",
                            len(bad), "; ".join(f"{f} id {i}: {why}" for f, i, why in bad[:3]))
        if sampler.count == 0:
            raise RtsError("the training split has no valid pixels" if stats_from == "train" else
                           "the dataset has no valid pixels",
                           fix="check nodata settings, add images, or change --split")
        if stats_from == "all":
            log.info("no training split (an evaluation-only dataset): normalization statistics from all chips; models "
                     "evaluated on it use their own")
        stats = sampler.result()
        for s in SPLITS:
            docs[s].close()
        manifest = build_manifest(opts, mode, band_map, chip_bands, chip_dtype, nodata, modalities, stats, sampler,
                             counts, dropped, label_meta, items, (sizes, ratios, areas_m2), splits, split_map,
                             infos, split_report)
        manifest["values"] = values_record(conversions, infos)
        manifest["normalization_method"]["split"] = "train" if stats_from == "train" else "all (no training split)"
        manifest["warnings"] = warnings
        if mask_notes:
            manifest["masks"] = {"kind": opts.mask_kind, "notes": mask_notes}
        if coco_meta:
            manifest["coco"] = {**coco_meta, "crowd_regions_kept": crowd}
        manifest["pixel_grid_images"] = len(pixel_grids)
        import yaml

        (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return Result(opts.out, manifest, {k: dict(v) for k, v in counts.items()})


def _georeferenced(rasters: list[tuple[Path, Path]], opts: PrepareOptions) -> list[tuple[Path, Path]]:
    """Scenes for vector labels: JPEG/PNG files found in a scene folder without any georeference (a preview, a
    quicklook) are left out with a note; any other file is kept (and refused by ``inspect`` if it has none)."""
    keep, skipped = [], []
    given = {p.resolve() for p in opts.inputs}
    for path, root in rasters:
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.resolve() not in given and \
                inspect(path, assume_crs=opts.assume_crs, pixel_grid_ok=True).pixel_grid:
            skipped.append(path)
        else:
            keep.append((path, root))
    if skipped:
        log.info("%d JPEG/PNG file(s) without georeference in the scene folder(s) left out (e.g. %s)", len(skipped),
                 skipped[0].name)
    if not keep:
        raise RtsError("no georeferenced image found for the vector labels", path=rasters[0][1],
                       fix="point to the folder of the scenes (GeoTIFF), or georeference the images")
    return keep


def _with_coco(opts: PrepareOptions) -> PrepareOptions:
    """``opts`` with ``coco`` set to the COCO files found in the input folders, when no other labels are given
    (auto-detection); the files found are logged with the split each stands for."""
    from rtscli.data.coco_import import find_coco_files, split_of

    if opts.coco is not None or opts.mode not in ("auto", "coco") or opts.labels or opts.masks:
        return opts
    if opts.bands is not None and "mask" in opts.bands and opts.mode == "auto":
        return opts  # the paper's layout: masks in the images
    found = find_coco_files(opts.inputs)
    if not found:
        return opts
    log.info("COCO instances found: %s", ", ".join(
        f"{p.name} ({(opts.coco_split or {}).get(p) or split_of(p) or 'split by --split'})" for p in found))
    return dataclasses.replace(opts, coco=found)


def _default_modalities(chip_bands: BandMap) -> list[str]:
    out = []
    for name in ["rgb", "ndvi", "nir"]:
        try:
            resolve(name, chip_bands)
            out.append(name)
        except RtsError:
            pass
    if not out:
        raise RtsError(f"the band map ({chip_bands}) gives none of the modalities rgb, ndvi, nir",
                       fix="name red, green, blue and nir in --bands, or pass --modalities")
    return out


