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

:func:`prepare` runs the steps in order: check the inputs, find and inspect the rasters and decide the bands
(:mod:`rtscli.data.discovery`), plan the items (:mod:`rtscli.data.inputs`) and their splits
(:mod:`rtscli.data.split_plan`), decide the chips' values (:mod:`rtscli.data.values`), write the chips with
their instances and statistics (:mod:`rtscli.data.chips`), then the manifest (:mod:`rtscli.data.manifest`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from affine import Affine

from rtscli.data import coco, values
from rtscli.data.bands import BandMap
from rtscli.data.chips import MAX_INVALID_SHARE, MaskReader, chip_transform, crs_text, iter_chips, write_chip
from rtscli.data.discovery import Layout, Scan, Sources, check_options, chip_layout, find_sources, \
    inspect_sources, with_coco
from rtscli.data.inputs import Item, all_aux, sample_items, vector_items
from rtscli.data.manifest import build_manifest, values_record
from rtscli.data.modalities import channel
from rtscli.data.options import PrepareOptions
from rtscli.data.split_files import SPLITS, read_split_file
from rtscli.data.split_plan import plan_splits, site_warnings, split_warnings, warn_single_chip_scenes
from rtscli.data.stats import StatsSampler
from rtscli.errors import RtsError
from rtscli.io.raster import gdal_env

log = logging.getLogger("rtscli")

#: nodata of chips whose values were converted (--scale/--offset or GDAL band scale): the stored nodata (often 0)
#: could be a real value after conversion
CONVERTED_NODATA = -9999.0


@dataclass
class Result:
    out: Path
    manifest: dict
    counts: dict


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def prepare(opts: PrepareOptions, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> Result:
    """Build the dataset described by ``opts``; see the module docstring.

    ``progress(description, total)`` gives a callback that advances a progress bar by a number of chips.
    Raises :class:`RtsError` for inputs that cannot make a dataset (before any chip is written, where it can
    be told); nothing is left at ``opts.out`` when a run fails or is interrupted.
    """
    from rtscli.io.atomic import atomic_dir

    check_options(opts)
    mask_reader = MaskReader(opts.mask_kind)
    opts = with_coco(opts)
    sources = find_sources(opts)
    opts, layout = chip_layout(opts, sources)
    scan = inspect_sources(opts, sources, layout)
    quality = _quality_masks(opts, scan)
    dem = _dem(opts, scan, layout)
    items = _plan_items(opts, layout.mode, sources, scan)
    splits = _plan_splits(opts, layout.mode, items)
    chip_values = _chip_values(opts, layout, scan, items.items)
    tally = _Tally.start(layout.chip_bands, opts.seed, overlapping=len(items.items) - len(splits.splits))
    if quality:
        tally.dropped["quality_chips_dropped"] = 0
    advance = progress("preparing", len(splits.kept)) if progress else (lambda k: None)
    with atomic_dir(opts.out, overwrite=opts.overwrite) as tmp, gdal_env():
        _write_chips(tmp, opts, layout, items, splits, chip_values, mask_reader, sources.coco_reader, tally, advance,
                     quality, dem)
        warnings, mask_notes = _report(opts, sources, layout, splits, tally, mask_reader)
        manifest = _manifest(opts, sources, layout, scan, items, splits, chip_values, tally, warnings, mask_notes)
        if dem is not None:
            manifest["terrain"] = dem.record()
        if quality:
            manifest["quality"] = {"invalid": sorted(opts.quality.invalid),
                                   "masks": {str(k): f"{m.path} ({m.title})" for k, m in quality.items()},
                                   "chips_dropped": tally.dropped["quality_chips_dropped"],
                                   "max_invalid_share": MAX_INVALID_SHARE}
        import yaml

        (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return Result(opts.out, manifest, {k: dict(v) for k, v in tally.counts.items()})


def _dem(opts: PrepareOptions, scan: Scan, layout: Layout) -> Any:
    """Where the terrain channels come from: the DEM of ``--dem`` (:class:`rtscli.data.terrain.Dem`, checked to
    cover every raster), else a band named ``dem`` of the rasters or ``--aux dem=``
    (:class:`rtscli.data.terrain.BandDem`), else None.

    Raises:
        RtsError: a DEM that cannot be used (no CRS, heights in unknown units, all void) or covers too little of a
            raster; a raster not in a projected CRS; ``--dem`` beside a ``dem`` band.
    """
    from rtscli.data.terrain import DEM_BAND, BandDem, Dem, TerrainSettings

    in_band = DEM_BAND in layout.image_bands or DEM_BAND in opts.aux
    if opts.dem is None and not in_band:
        return None
    if opts.dem is not None and in_band:
        raise RtsError("--dem and a band named dem both give the heights", path=opts.dem,
                       fix="leave out --dem, or name that band otherwise in --bands / --aux")
    if not opts.dem_radius > 0:
        raise RtsError("--dem-radius must be positive (metres)", fix="e.g. --dem-radius 100")
    settings = TerrainSettings(radius_m=opts.dem_radius)
    for info, _ in scan.infos:
        if info.crs is None or info.crs.is_geographic:
            raise RtsError("terrain needs rasters in a projected CRS (metres)", path=info.path,
                           fix="reproject the raster (e.g. to its UTM zone)"
                               + (" or leave out --dem" if opts.dem is not None else ""))
    if opts.dem is None:
        log.info("terrain (slope, relief, hillshade) from the band %r", DEM_BAND)
        return BandDem(settings)
    dem = Dem(opts.dem, settings)
    for info, _ in scan.infos:
        dem.check_covers(info.crs, info.transform, info.width, info.height, info.path.name)
    return dem


def _quality_masks(opts: PrepareOptions, scan: Scan) -> dict[Path, Any]:
    """The quality mask of every raster (``--quality``: :mod:`rtscli.data.quality`), checked before any chip is
    written, each logged with what it counts invalid; ``{}`` without ``--quality``.

    Raises:
        RtsError: a raster whose mask is not found, not a known encoding or does not overlap it.
    """
    if opts.quality is None:
        return {}
    import dataclasses

    from rtscli.data.quality import AUTO
    from rtscli.data.stac_vrt import vrt_item

    out = {}
    for info, _ in scan.infos:
        request = opts.quality
        item = vrt_item(info.path)
        if item is not None and request.where == AUTO:  # a STAC item: its mask asset
            ref, its = item
            if its.mask is None:
                raise RtsError(f"STAC item {its.item_id} has no quality-mask asset (scl, udm2, qa_pixel); its assets: "
                               f"{'; '.join(its.assets)}", path=ref, fix="pass --quality MASK, or drop --quality")
            request = dataclasses.replace(request, where=str(its.mask[0]), product=its.mask[1])
        out[info.path] = request.open_for(info.path, info.crs, info.transform, info.width, info.height)
        log.info("%s: %s", info.path.name, out[info.path].describe())
    return out


# ---------------------------------------------------------------------------------------------
# items and splits
# ---------------------------------------------------------------------------------------------
@dataclass
class _Items:
    """The items to cut, with the labels they are cut with."""

    split_map: dict[str, str] | None  # the split file's {name: split}: read before the items, its errors first
    items: list[Item]  # every item, also those that end up left out of the splits
    labels: dict | None = None  # vectors: {CRS WKT: (labels in that CRS, their spatial index)}
    label_meta: dict[str, Any] = field(default_factory=dict)  # vectors: the manifest's ``labels`` record


def _plan_items(opts: PrepareOptions, mode: str, sources: Sources, scan: Scan) -> _Items:
    """The items of the mode: chip windows of scenes (vectors), COCO images, or images with their mask."""
    split_map = read_split_file(opts.split_file) if opts.split_file else None
    if mode == "vectors":
        items, labels, label_meta = vector_items(opts, scan.infos, scan.aux_paths)
        return _Items(split_map, items, labels, label_meta)
    if mode == "coco":
        from rtscli.data.coco_import import coco_items

        return _Items(split_map, coco_items(opts, scan.infos, sources.coco_records, scan.aux_paths))
    return _Items(split_map, sample_items(opts, scan.infos, scan.aux_paths, mode))


@dataclass
class _Splits:
    """Each item's split and what was asked for."""

    splits: dict[str, str]  # {item key: split}; items left out (overlapping another split) have none
    report: dict  # the manifest's ``split`` details
    wanted: dict[str, float]  # the share asked for each split (1 or 0 when a file gives them)
    stats_from: str  # "train", or "all" for an evaluation-only dataset
    kept: list[Item]  # the items with a split, in order


def _plan_splits(opts: PrepareOptions, mode: str, planned: _Items) -> _Splits:
    """The items' splits (:func:`rtscli.data.split_plan.plan_splits`) and the splits asked for."""
    items, split_map = planned.items, planned.split_map
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
    return _Splits(splits, split_report, wanted, stats_from, [it for it in items if it.key in splits])


# ---------------------------------------------------------------------------------------------
# the chips' values
# ---------------------------------------------------------------------------------------------
@dataclass
class _ChipValues:
    """How stored values become the chips' values."""

    conversions: dict[Path, values.Conversion]  # per raster file (images, then --aux rasters)
    dtype: np.dtype
    nodata: float | None


def _chip_values(opts: PrepareOptions, layout: Layout, scan: Scan, items: list[Item]) -> _ChipValues:
    """Each raster's conversion to physical values (:mod:`rtscli.data.values`, logged once), and the chips' data
    type and nodata: float32 when the rasters' types differ or values are converted, and then
    :data:`CONVERTED_NODATA` unless the nodata is NaN."""
    conversions = {info.path: values.resolve(info, layout.image_bands.as_dict(), scale=opts.scale,
                                             offset=opts.offset) for info, _ in scan.infos}
    for a in all_aux(items):
        name = next(n for it in items for n, i in it.aux.items() if i.path == a.path)
        conversions[a.path] = values.resolve(a, {name: 1}, scale=opts.scale, offset=opts.offset)
    values.report(conversions)
    converted = any(not c.identity for c in conversions.values())
    dtypes = {np.dtype(info.dtype) for info, _ in scan.infos} | {np.dtype(i.dtype) for i in all_aux(items)}
    chip_dtype = np.result_type(*dtypes)
    if (len(dtypes) > 1 or converted) and not np.issubdtype(chip_dtype, np.floating):
        chip_dtype = np.dtype("float32")
    nodata = scan.infos[0][0].nodata
    if "slope" in layout.chip_bands:  # terrain channels (--dem or a dem band) are floats, and DEM voids are nodata
        converted = True
        chip_dtype = np.dtype("float32")
    if opts.quality is not None and nodata is None:  # clouds become nodata: the chips need a nodata value
        converted = True
        if not np.issubdtype(chip_dtype, np.floating):
            chip_dtype = np.dtype("float32")
    if converted and (nodata is None or nodata == nodata):
        # a stored nodata value (e.g. 0) could be a physical value after conversion, and padding beyond a raster's
        # edge must stay nodata: converted chips always carry one
        nodata = CONVERTED_NODATA
    return _ChipValues(conversions, chip_dtype, nodata)


# ---------------------------------------------------------------------------------------------
# the chips
# ---------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    """What the chips written came to: counts, what was dropped, the training slumps' sizes, the statistics."""

    chip_bands: BandMap
    sampler: StatsSampler  # normalization statistics of the chips' bands (and NDVI when it can be computed)
    dropped: dict[str, int]
    counts: dict = field(default_factory=lambda: defaultdict(
        lambda: {s: {"images": 0, "instances": 0, "negatives": 0} for s in SPLITS}))  # {site: {split: counts}}
    sizes: list[float] = field(default_factory=list)  # box side sqrt(w * h) of the training slumps, pixels
    ratios: list[float] = field(default_factory=list)  # their box height / width
    areas_m2: list[float] = field(default_factory=list)  # their true areas (pixels x the chip's mean pixel area)
    crowd: int = 0  # crowd regions kept (COCO)

    @classmethod
    def start(cls, chip_bands: BandMap, seed: int, overlapping: int) -> _Tally:
        stat_names = list(chip_bands.names)
        if "ndvi" not in chip_bands and "red" in chip_bands and "nir" in chip_bands:
            stat_names.append("ndvi")
        dropped = {"specks_below_min_area": 0, "nodata_chips_skipped": 0, "empty_chips_dropped": 0,
                   "labels_below_min_pixels": 0, "labels_clipped_below_min_area": 0,
                   "overlapping_other_split": overlapping}
        return cls(chip_bands, StatsSampler(stat_names, seed=seed), dropped)

    def add(self, site: str, split: str, image: np.ndarray, valid: np.ndarray, instances: list, learn: bool,
            px_m2: float) -> None:
        """Count one chip written; a chip that ``learn``s gives its slumps' sizes and its pixels' statistics."""
        for inst in instances:
            if inst.iscrowd:
                self.crowd += 1
            elif learn:
                self.sizes.append(float(np.sqrt(inst.bbox[2] * inst.bbox[3])))
                self.ratios.append(float(inst.bbox[3] / inst.bbox[2]))
                if px_m2 == px_m2:  # images without georeference have no true area
                    self.areas_m2.append(inst.area * px_m2)
        slumps = sum(not i.iscrowd for i in instances)  # crowd regions are not slumps
        c = self.counts[site][split]
        c["images"] += 1
        c["instances"] += slumps
        c["negatives"] += int(not slumps)
        if learn:
            chans = {n: channel(n, image, self.chip_bands, valid) for n in self.sampler.names}
            self.sampler.add(chans, valid)


def _write_chips(tmp: Path, opts: PrepareOptions, layout: Layout, items: _Items, splits: _Splits,
                 chip_values: _ChipValues, mask_reader: MaskReader, coco_reader: Any, tally: _Tally,
                 advance: Callable[[int], None], quality: dict[Path, Any] | None = None, dem: Any = None) -> None:
    """Write every kept item's chip (``tmp/chips/<site>/<key>.tif``) and its instances (``tmp/<split>.json``),
    counting into ``tally``; all-nodata chips, empty ones with ``--drop-empty``, and chips mostly invalid in their
    raster's quality mask (``quality``: clouds, shadow, haze, snow) are skipped and counted."""
    from rtscli.geometry.measure import pixel_area_m2

    docs = {s: coco.CocoWriter(tmp / f"{s}.json", f"rts dataset, split {s}") for s in SPLITS}
    image_id = ann_id = 0
    dropped = tally.dropped
    small_labels: set = set()  # labels lying whole in a chip, smaller than --min-pixels: counted once each
    cloudy: set[str] = set()  # chips mostly under clouds, shadow, haze or snow (--quality)
    for item, image, valid, instances, specks, nclipped in iter_chips(
            splits.kept, opts, layout.mode, layout.band_map, layout.image_bands, items.labels, chip_values.dtype,
            chip_values.conversions, chip_values.nodata, mask_reader, coco_reader, small_labels, quality, cloudy,
            dem):
        advance(1)
        dropped["specks_below_min_area"] += specks
        dropped["labels_clipped_below_min_area"] += nclipped
        if image is None or valid is None:  # a chip without valid pixels (both None), or mostly clouded
            if item.key in cloudy:
                dropped["quality_chips_dropped"] += 1
            else:
                dropped["nodata_chips_skipped"] += 1
            continue
        if not instances and not opts.keep_empty and not item.negative_area:  # labelled background stays
            dropped["empty_chips_dropped"] += 1
            continue
        split = splits.splits[item.key]
        image_id += 1
        rel = Path("chips") / item.site / f"{item.key}.tif"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        transform = chip_transform(item)
        write_chip(tmp / rel, image, transform, item.image.crs, chip_values.nodata, layout.chip_bands.names)
        docs[split].add_image(_image_entry(image_id, rel, image, transform, item, split))
        for inst in instances:
            ann_id += 1
            docs[split].add_annotation(coco.annotation(inst, ann_id, image_id))
        learn = split == "train" or splits.stats_from == "all"  # statistics come from the training chips only
        px_m2 = pixel_area_m2(transform, int(image.shape[2]), int(image.shape[1]), item.image.crs) \
            if learn and instances and item.image.crs is not None else float("nan")
        tally.add(item.site, split, image, valid, instances, learn, px_m2)
    dropped["labels_below_min_pixels"] = len(small_labels)
    for s in SPLITS:
        docs[s].close()


def _image_entry(image_id: int, rel: Path, image: np.ndarray, transform: Affine, item: Item, split: str) -> dict:
    """The COCO image entry of a chip ``image`` (C, H, W) written at ``rel``: its georeference, site and source."""
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
    return entry


# ---------------------------------------------------------------------------------------------
# what came out: warnings and the manifest
# ---------------------------------------------------------------------------------------------
def _report(opts: PrepareOptions, sources: Sources, layout: Layout, splits: _Splits, tally: _Tally,
            mask_reader: MaskReader) -> tuple[list[str], list[str]]:
    """Log what is wrong with the splits (over all sites, then per site), how masks were read and which COCO
    annotations were left out; refuse a dataset without valid pixels to learn the normalization from. Returns
    (split warnings, mask notes)."""
    warnings = split_warnings(tally.counts, splits.wanted, layout.mode, splits.report) + \
        site_warnings(tally.counts, splits.wanted, splits.report, opts)
    for w in warnings:
        log.warning(w)
    mask_notes = mask_reader.notes()
    for n in mask_notes:
        log.info(n)
    if sources.coco_reader is not None:
        bad = sources.coco_reader.bad
        sources.coco_meta["unreadable_segmentations_left_out"] = len(bad)
        if bad:
            log.warning("%d annotation(s) with an unreadable or empty segmentation were left out (e.g. %s)",
                        len(bad), "; ".join(f"{f} id {i}: {why}" for f, i, why in bad[:3]))
    if tally.sampler.count == 0:
        raise RtsError("the training split has no valid pixels" if splits.stats_from == "train" else
                       "the dataset has no valid pixels",
                       fix="check nodata settings, add images, or change --split")
    if splits.stats_from == "all":
        log.info("no training split (an evaluation-only dataset): normalization statistics from all chips; models "
                 "evaluated on it use their own")
    return warnings, mask_notes


def _manifest(opts: PrepareOptions, sources: Sources, layout: Layout, scan: Scan, items: _Items, splits: _Splits,
              chip_values: _ChipValues, tally: _Tally, warnings: list[str], mask_notes: list[str]) -> dict:
    """The manifest (:func:`rtscli.data.manifest.build_manifest`) with what this run adds: values, warnings,
    masks, COCO and pixel-grid records."""
    sampler = tally.sampler
    manifest = build_manifest(opts, layout.mode, layout.band_map, layout.chip_bands, chip_values.dtype,
                              chip_values.nodata, layout.modalities, sampler.result(), sampler, tally.counts,
                              tally.dropped, items.label_meta, splits.kept,
                              (tally.sizes, tally.ratios, tally.areas_m2), splits.splits, items.split_map,
                              scan.infos, splits.report)
    manifest["values"] = values_record(chip_values.conversions, scan.infos)
    manifest["normalization_method"]["split"] = "train" if splits.stats_from == "train" else \
        "all (no training split)"
    manifest["warnings"] = warnings
    if mask_notes:
        manifest["masks"] = {"kind": opts.mask_kind, "notes": mask_notes}
    if sources.coco_meta:
        manifest["coco"] = {**sources.coco_meta, "crowd_regions_kept": tally.crowd}
    manifest["pixel_grid_images"] = len(scan.pixel_grids)
    return manifest
