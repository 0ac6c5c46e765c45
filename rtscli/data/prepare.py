"""``rts prepare``: from what analysts have to a training dataset (chips + COCO + manifest).

Three kinds of input, detected from the options or chosen with ``mode``:

``paper``   per-sample GeoTIFFs whose band map has a ``mask`` band (the paper's layout);
``masks``   image GeoTIFFs + separate mask GeoTIFFs matched by name (``--masks DIR``);
``vectors`` large scenes + vector labels (``--labels FILE``) cut into chips of a given size and
            overlap, one instance per label polygon.

The dataset directory::

    DATASET/manifest.yaml        band map, modalities, normalization stats, splits, counts, checksums
    DATASET/{train,val,test}.json  COCO instances; every image carries crs, transform, site, source
    DATASET/chips/<site>/*.tif   GeoTIFF chips with their georeference (named bands only, no mask)

It is built in a temporary directory and renamed when complete. Everything is read by window,
so memory does not grow with scene size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rtscli.data import coco
from rtscli.data.bands import BandMap
from rtscli.data.modalities import channel, resolve, resolve_all, valid_mask
from rtscli.data.split import SPLITS, assign, lookup, read_split_file
from rtscli.data.stats import StatsSampler
from rtscli.errors import RtsError
from rtscli.io.raster import (
    RASTER_SUFFIXES, RasterInfo, apply, gdal_env, inspect, read_window, window_transform,
)

log = logging.getLogger("rtscli")

MODES = ("auto", "paper", "masks", "vectors")
MASK_SUFFIXES = ("", "_mask", "-mask", "_label", "_labels", "_gt")


@dataclass
class PrepareOptions:
    inputs: list[Path]
    out: Path
    bands: BandMap | None = None
    mode: str = "auto"
    masks: Path | None = None
    labels: Path | None = None
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
    keep_empty: bool = True
    repeat_to: int = 3
    overwrite: bool = False


@dataclass
class Item:
    """One unit of work: an image (paper/masks) or one chip window of a scene (vectors)."""

    key: str  # chip name, unique in the dataset
    site: str
    group: str
    image: RasterInfo
    mask: RasterInfo | None = None
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height
    aux: dict[str, RasterInfo] = field(default_factory=dict)
    source_names: tuple[str, ...] = ()


@dataclass
class Result:
    out: Path
    manifest: dict
    counts: dict


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def find_rasters(inputs: list[Path], exclude: list[Path] = ()) -> list[tuple[Path, Path]]:
    """All GeoTIFFs under the inputs, as (file, root it was found under).

    Hidden files and folders (including rts's own temporary builds) and everything under
    ``exclude`` (the output dataset, a mask folder) are left out.
    """
    out: list[tuple[Path, Path]] = []
    ex = [e.resolve() for e in exclude]
    for inp in inputs:
        if not inp.exists():
            raise RtsError("input not found", path=inp, fix="check the path")
        if inp.is_dir():
            files = []
            for p in sorted(inp.rglob("*")):
                if p.suffix.lower() not in RASTER_SUFFIXES or not p.is_file():
                    continue
                if any(part.startswith(".") for part in p.relative_to(inp).parts):
                    continue
                rp = p.resolve()
                if any(e == rp or e in rp.parents for e in ex):
                    continue
                files.append(p)
            if not files:
                raise RtsError("no GeoTIFFs (*.tif, *.tiff) found in this directory", path=inp,
                               fix="point to the folder that holds your images")
            out.extend((p, inp) for p in files)
        else:
            out.append((inp, inp.parent))
    return out


def _site_of(path: Path, root: Path, forced: str | None) -> str:
    if forced:
        return forced
    try:
        rel = path.relative_to(root)
    except ValueError:
        return "default"
    return rel.parts[0] if len(rel.parts) > 1 else "default"


def band_map_from_descriptions(path: Path) -> BandMap | None:
    """A band map from the raster's band descriptions when they are all known names."""
    import rasterio

    with gdal_env(), rasterio.open(path) as src:
        desc = [d.strip().lower() if d else "" for d in src.descriptions]
    if not desc or not all(re.fullmatch(r"[a-z][a-z0-9_]*", d or "-") for d in desc):
        return None
    if len(set(desc)) != len(desc):
        return None
    return BandMap(tuple((d, i + 1) for i, d in enumerate(desc)))


def _match_by_name(image: Path, folder: Path, what: str, suffixes=MASK_SUFFIXES) -> Path:
    stem = image.stem
    tried = []
    for suf in suffixes:
        for ext in RASTER_SUFFIXES:
            cand = folder / f"{stem}{suf}{ext}"
            tried.append(cand.name)
            if cand.exists() and cand.resolve() != image.resolve():
                return cand
    raise RtsError(
        f"no {what} found for image {image.name} in {folder}",
        path=image,
        fix=f"name it like {', '.join(tried[:4])}",
    )


def detect_mode(opts: PrepareOptions, band_map: BandMap) -> str:
    if opts.mode != "auto":
        return opts.mode
    if opts.labels is not None:
        return "vectors"
    if opts.masks is not None:
        return "masks"
    if "mask" in band_map:
        return "paper"
    raise RtsError(
        "no labels given",
        fix="pass --labels FILE (vector labels), --masks DIR (mask rasters), or a band map with a "
        "mask band (e.g. --bands paper)",
    )


def chip_positions(length: int, size: int, stride: int) -> list[int]:
    """Offsets of chips along one axis; the last chip covers the remainder (shifted back)."""
    if length <= size:
        return [0]
    pos = list(range(0, length - size + 1, stride))
    if pos[-1] + size < length:
        pos.append(length - size)
    return pos


def sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def prepare(opts: PrepareOptions, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> Result:
    """Build the dataset described by ``opts``; see the module docstring."""
    from rtscli.io.atomic import atomic_dir, check_output

    check_output(opts.out, opts.overwrite)
    if opts.segmentation not in coco.SEGMENTATION_FORMATS:
        raise RtsError(f"unknown segmentation format {opts.segmentation!r}", fix="use auto, polygon or rle")
    if not 0 <= opts.overlap < 1:
        raise RtsError("--overlap must be in [0, 1)", fix="use e.g. 0.25")
    if opts.chip_size is not None and opts.chip_size < 16:
        raise RtsError("--chip-size must be at least 16 pixels", fix="use e.g. 256")

    exclude = [opts.out]  # an output folder inside the input folder is not input
    if opts.masks is not None and all(opts.masks.resolve() != i.resolve() for i in opts.inputs if i.is_dir()):
        exclude.append(opts.masks)
    rasters = find_rasters(opts.inputs, exclude=exclude)
    if opts.masks is not None:
        if not opts.masks.is_dir():
            raise RtsError("mask folder not found", path=opts.masks, fix="pass the folder that holds the masks")
        # when images and masks share a folder, the masks are not images
        rasters = [(p, r) for p, r in rasters
                   if not any(p.stem.endswith(s) for s in MASK_SUFFIXES if s)]
    inspect(rasters[0][0], assume_crs=opts.assume_crs)  # a clear error if the first file is not a raster
    band_map = opts.bands or band_map_from_descriptions(rasters[0][0])
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
        raise RtsError("mode 'masks' needs --masks DIR", fix="pass the folder of mask GeoTIFFs")

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
        info = inspect(path, assume_crs=opts.assume_crs)
        band_map.check_against(info.count, path)
        infos.append((info, root))
    nodatas = {("nan" if v is not None and v != v else v) for v in (i.nodata for i, _ in infos)}
    if len(nodatas) > 1:
        ex = {str(i.nodata): i.path.name for i, _ in infos}
        raise RtsError(
            "the inputs have different nodata values (" + ", ".join(f"{n}: {v}" for v, n in ex.items()) + ")",
            path=infos[0][0].path.parent,
            fix="give them one nodata value first (gdal_edit.py -a_nodata VALUE file.tif)",
        )
    aux_infos = {name: _aux_lookup(name, p) for name, p in opts.aux.items()}

    split_map = read_split_file(opts.split_file) if opts.split_file else None
    labels = None
    label_meta: dict[str, Any] = {}
    if mode == "vectors":
        items, labels, label_meta = _vector_items(opts, infos, aux_infos)
    else:
        items = _sample_items(opts, infos, aux_infos, mode)
    splits = _splits(items, opts, split_map)

    dtypes = {np.dtype(info.dtype) for info, _ in infos} | {np.dtype(i.dtype) for i in _all_aux(items)}
    chip_dtype = np.result_type(*dtypes)
    if len(dtypes) > 1 and not np.issubdtype(chip_dtype, np.floating):
        chip_dtype = np.dtype("float32")
    nodata = infos[0][0].nodata

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
    image_id = ann_id = 0

    advance = progress("preparing", len(items)) if progress else (lambda k: None)
    with atomic_dir(opts.out, overwrite=opts.overwrite) as tmp, gdal_env():
        docs = {s: coco.CocoWriter(tmp / f"{s}.json", f"rts dataset, split {s}") for s in SPLITS}
        for item, image, valid, instances, specks, nclipped in _iter_chips(items, opts, mode, band_map,
                                                                         image_bands, labels, chip_dtype):
            advance(1)
            dropped["specks_below_min_area"] += specks
            dropped["labels_clipped_below_min_area"] += nclipped
            if image is None:
                dropped["nodata_chips_skipped"] += 1
                continue
            if not instances and not opts.keep_empty:
                dropped["empty_chips_dropped"] += 1
                continue
            split = splits[item.key]
            image_id += 1
            rel = Path("chips") / item.site / f"{item.key}.tif"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            transform = _chip_transform(item)
            _write_chip(tmp / rel, image, transform, item.image.crs, nodata, chip_band_names)
            entry = {
                "id": image_id,
                "file_name": rel.as_posix(),
                "width": int(image.shape[2]),
                "height": int(image.shape[1]),
                "crs": _crs_text(item.image.crs),
                "transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
                "site": item.site,
                "source": str(item.image.path),
                "split": split,
            }
            if item.window is not None:
                entry["window"] = list(item.window)
            docs[split].add_image(entry)
            for inst in instances:
                ann_id += 1
                docs[split].add_annotation(coco.annotation(inst, ann_id, image_id))
                if split == "train":
                    sizes.append(float(np.sqrt(inst.bbox[2] * inst.bbox[3])))
                    ratios.append(float(inst.bbox[3] / inst.bbox[2]))
            c = counts[item.site][split]
            c["images"] += 1
            c["instances"] += len(instances)
            c["negatives"] += int(not instances)
            if split == "train":
                chans = {n: channel(n, image, chip_bands, valid) for n in stat_names}
                sampler.add(chans, valid)

        split_warnings = _split_warnings(counts, opts.fractions, mode)
        for w in split_warnings:
            log.warning(w)
        if sampler.count == 0:
            raise RtsError("the training split has no valid pixels",
                           fix="check nodata settings, add images, or change --split")
        stats = sampler.result()
        for s in SPLITS:
            docs[s].close()
        manifest = _manifest(opts, mode, band_map, chip_bands, chip_dtype, nodata, modalities, stats, sampler,
                             counts, dropped, label_meta, items, sizes, ratios, splits, split_map, infos)
        manifest["warnings"] = split_warnings
        import yaml

        (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return Result(opts.out, manifest, {k: dict(v) for k, v in counts.items()})


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


def _aux_lookup(name: str, path: Path):
    if not path.exists():
        raise RtsError(f"aux raster for {name!r} not found", path=path, fix="check --aux NAME=PATH")
    return path


def _all_aux(items: list[Item]) -> Iterator[RasterInfo]:
    seen = set()
    for it in items:
        for info in it.aux.values():
            if info.path not in seen:
                seen.add(info.path)
                yield info


def _aux_for(image: RasterInfo, aux_paths: dict[str, Path], cache: dict, assume_crs) -> dict[str, RasterInfo]:
    out = {}
    for name, p in aux_paths.items():
        path = _match_by_name(image.path, p, f"aux raster '{name}'", suffixes=("", f"_{name}", f"-{name}")) \
            if p.is_dir() else p
        if path not in cache:
            cache[path] = inspect(path, assume_crs=assume_crs)
        info = cache[path]
        if not info.same_grid(image):
            raise RtsError(
                f"aux raster '{name}' is not on the grid of {image.path.name} "
                f"({info.width}x{info.height} {info.crs} vs {image.width}x{image.height} {image.crs})",
                path=path,
                fix="resample it to the image grid first (gdalwarp -te ... -tr ... -t_srs ...)",
            )
        out[name] = info
    return out


def _sample_items(opts, infos, aux_paths, mode) -> list[Item]:
    items: list[Item] = []
    aux_cache: dict = {}
    names_seen: dict[str, Path] = {}
    for info, root in infos:
        site = _site_of(info.path, root, opts.site)
        key = info.path.stem
        if key in names_seen:
            key = f"{site}_{key}"
        if key in names_seen:
            raise RtsError(f"two inputs are both named {info.path.stem}", path=info.path,
                           fix="give chips unique file names")
        names_seen[key] = info.path
        mask = None
        if mode == "masks":
            mpath = _match_by_name(info.path, opts.masks, "mask")
            mask = inspect(mpath, need_crs=False)
            from rasterio.transform import Affine

            ungeoreferenced = mask.crs is None and mask.transform == Affine.identity()
            if ungeoreferenced and mask.shape == info.shape:
                log.info("mask %s has no georeference; using the grid of %s", mpath.name, info.path.name)
            else:
                diff = []
                if mask.shape != info.shape:
                    diff.append(f"size {mask.width}x{mask.height} vs {info.width}x{info.height}")
                if not mask.transform.almost_equals(info.transform, 1e-6):
                    diff.append(f"origin/pixel size {tuple(mask.transform)[:6]} vs {tuple(info.transform)[:6]}")
                if mask.crs is not None and mask.crs != info.crs:
                    diff.append(f"CRS {mask.crs} vs {info.crs}")
                if diff:
                    raise RtsError(f"mask is not on the grid of image {info.path.name} ({'; '.join(diff)})",
                                   path=mpath, fix="masks must have the image's size, transform and CRS")
        aux = _aux_for(info, aux_paths, aux_cache, opts.assume_crs)
        names = (info.path.name, info.path.stem, key)
        cs = opts.chip_size
        if cs is None or (info.width <= cs and info.height <= cs):
            items.append(Item(key, site, key, info, mask=mask, aux=aux, source_names=names))
            continue
        for c, r, group in _grid(info, opts):  # a large image: cut it like a scene
            items.append(Item(f"{key}_r{r:06d}_c{c:06d}", site, group, info, mask=mask,
                              window=(c, r, cs, cs), aux=aux, source_names=names))
    return items


def _grid(info: RasterInfo, opts: PrepareOptions) -> Iterator[tuple[int, int, str]]:
    """Chip windows over one raster: (col_off, row_off, split group).

    The split group is a spatial block of chips; a block spans at least two chips, so that some
    chips stay whole on both sides of a block edge (see :func:`_buffer_splits`).
    """
    stride = max(1, int(round(opts.chip_size * (1 - opts.overlap))))
    block = max(1, int(round(max(opts.split_block, 2 * opts.chip_size) / stride)))
    rows = chip_positions(info.height, opts.chip_size, stride)
    cols = chip_positions(info.width, opts.chip_size, stride)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            yield c, r, f"{info.path.name}:{i // block}:{j // block}"


def _vector_items(opts, infos, aux_paths):
    from shapely.geometry import box

    from rtscli.io.vector import read_polygons

    labels_by_crs: dict[str, Any] = {}
    reports = {}
    items: list[Item] = []
    aux_cache: dict = {}
    overlaps_any = False
    per_scene = {}
    for info, root in infos:
        ck = info.crs.to_wkt()
        if ck not in labels_by_crs:
            gdf, rep = read_polygons(opts.labels, info.crs, assume_crs=opts.labels_crs)
            labels_by_crs[ck] = (gdf, gdf.sindex)
            reports[ck] = rep
        gdf, sindex = labels_by_crs[ck]
        footprint = box(*info.bounds)
        hits = sindex.query(footprint, predicate="intersects")
        per_scene[info.path.name] = int(len(hits))
        if len(hits):
            overlaps_any = True
        site = _site_of(info.path, root, opts.site)
        aux = _aux_for(info, aux_paths, aux_cache, opts.assume_crs)
        for c, r, group in _grid(info, opts):
            key = f"{info.path.stem}_r{r:06d}_c{c:06d}"
            items.append(Item(key, site, group, info, window=(c, r, opts.chip_size, opts.chip_size), aux=aux,
                              source_names=(key, info.path.name, info.path.stem)))
    if not overlaps_any:
        gdf = next(iter(labels_by_crs.values()))[0]
        lb = gdf.total_bounds if len(gdf) else None
        raise RtsError(
            f"no label polygon overlaps the raster(s) (labels bounds {_fmt_bounds(lb)} vs scene bounds "
            f"{_fmt_bounds(infos[0][0].bounds)} in {infos[0][0].crs})",
            path=opts.labels,
            fix="check that the labels and the scenes cover the same area (and the labels' CRS)",
        )
    for name, n in per_scene.items():
        if n == 0:
            log.warning("no label intersects scene %s: its chips become negatives", name)
    rep = next(iter(reports.values()))
    meta = {
        "file": str(opts.labels),
        "features": rep.features,
        "repaired_invalid": rep.repaired,
        "dropped_empty": rep.empty,
        "dropped_not_polygon": rep.not_polygon,
        "reprojected_from": rep.reprojected_from,
        "per_scene_intersecting": per_scene,
    }
    if rep.repaired:
        log.info("repaired %d invalid label polygon(s) with make_valid", rep.repaired)
    labels = {k: v for k, v in labels_by_crs.items()}
    return items, labels, meta


def _fmt_bounds(b) -> str:
    if b is None:
        return "(empty)"
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"


def _splits(items: list[Item], opts: PrepareOptions, split_map: dict[str, str] | None) -> dict[str, str]:
    if split_map is None:
        out = assign(((it.key, it.site, it.group) for it in items), opts.fractions, opts.seed)
    else:
        out, missing = {}, []
        for it in items:
            s = lookup(split_map, *it.source_names)
            if s is None:
                missing.append(it.source_names[0])
            else:
                out[it.key] = s
        if missing:
            raise RtsError(
                f"the split file does not list {len(missing)} input(s), e.g. {', '.join(missing[:3])}",
                path=opts.split_file,
                fix="list every image (or scene) name with its split",
            )
        known = {n for it in items for n in it.source_names}
        unused = sorted(set(split_map) - known)
        if unused:
            log.warning("the split file names %d input(s) that were not found, e.g. %s", len(unused),
                        ", ".join(unused[:3]))
    return _buffer_splits(items, out)


_RANK = {"train": 0, "val": 1, "test": 2}


def _split_warnings(counts, fractions, mode) -> list[str]:
    totals = {s: sum(c[s]["images"] for c in counts.values()) for s in SPLITS}
    n = sum(totals.values())
    hint = ("use a smaller --split-block, more scenes, or a --split-file" if mode == "vectors"
            else "add images, or use a --split-file")
    out = []
    for s, f in zip(SPLITS, fractions, strict=True):
        if f > 0 and totals[s] == 0:
            out.append(f"the {s} split is empty (asked for {f:.0%}): {hint}")
        elif n and abs(totals[s] / n - f) > 0.15:
            out.append(f"the {s} split has {totals[s] / n:.0%} of the chips (asked for {f:.0%}): {hint}")
    return out


def _buffer_splits(items: list[Item], splits: dict[str, str]) -> dict[str, str]:
    """Drop chips that share pixels with a chip of a stricter split (test > val > train).

    Chips cut with overlap from one scene straddle the block edges of the spatial split; without
    this, the same pixels would be in training and in evaluation.
    """
    import bisect

    by_image: dict[Path, list[Item]] = defaultdict(list)
    for it in items:
        if it.window is not None:
            by_image[it.image.path].append(it)
    drop: set[str] = set()
    for chips in by_image.values():
        grid = {(it.window[1], it.window[0]): it for it in chips}
        rows = sorted({r for r, _ in grid})
        cols = sorted({c for _, c in grid})
        for it in chips:
            c, r, w, h = it.window
            mine = _RANK[splits[it.key]]
            for rr in rows[bisect.bisect_right(rows, r - h): bisect.bisect_left(rows, r + h)]:
                for cc in cols[bisect.bisect_right(cols, c - w): bisect.bisect_left(cols, c + w)]:
                    other = grid.get((rr, cc))
                    if other is not None and other is not it and _RANK[splits[other.key]] > mine:
                        drop.add(it.key)
                        break
                if it.key in drop:
                    break
    if drop:
        log.info("%d chip(s) overlapping chips of another split were left out (no shared pixels between splits)",
                 len(drop))
    return {k: v for k, v in splits.items() if k not in drop}


def _chip_transform(item: Item):
    t = item.image.transform
    if item.window is None:
        return t
    c, r, _, _ = item.window
    return window_transform(t, c, r)


def _crs_text(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _write_chip(path, image, transform, crs, nodata, names):
    from rtscli.io.raster import write_geotiff

    write_geotiff(path, image, transform=transform, crs=crs, nodata=nodata, band_names=names)


def _check_binary(values: np.ndarray, path: Path) -> np.ndarray:
    u = np.unique(values[np.isfinite(values)]) if np.issubdtype(values.dtype, np.floating) else np.unique(values)
    if not (set(u.tolist()) <= {0, 1} or set(u.tolist()) <= {0, 255}):
        shown = ", ".join(f"{v:g}" for v in u[:6]) + (", ..." if len(u) > 6 else "")
        raise RtsError(
            f"mask is not binary (values {shown})",
            path=path,
            fix="write 0 for background and 1 (or 255) for slumps, e.g. gdal_calc.py --calc 'A>0'",
        )
    return np.nan_to_num(values) > 0


def _read_mask(src, win, band: int, path: Path) -> np.ndarray:
    """A binary mask window; the file's nodata value counts as "no slump"."""
    m = read_window(src, win, [band])[0]
    if src.nodata is not None:
        m = np.where(m == src.nodata, 0, m)
    return _check_binary(m, path)


def _iter_chips(items, opts, mode, band_map, image_bands, labels, chip_dtype):
    """Yield (item, image, valid, instances, specks_dropped, clipped_dropped) per item."""
    import rasterio
    from rasterio.windows import Window

    open_files: dict[Path, Any] = {}

    def handle(path: Path):
        if path not in open_files:
            if len(open_files) > 16:
                for f in open_files.values():
                    f.close()
                open_files.clear()
            open_files[path] = rasterio.open(path)
        return open_files[path]

    idx = [image_bands[n] for n in image_bands.names]
    try:
        for item in items:
            src = handle(item.image.path)
            if item.window is None:
                win = Window(0, 0, item.image.width, item.image.height)
            else:
                win = Window(*item.window)
            data = read_window(src, win, idx)
            planes = [data]
            for info in item.aux.values():
                planes.append(read_window(handle(info.path), win, [1]))
            image = np.concatenate(planes, axis=0).astype(chip_dtype, copy=False) if len(planes) > 1 else \
                data.astype(chip_dtype, copy=False)
            chip_bm = BandMap(tuple((n, i + 1) for i, n in enumerate(image_bands.names + list(item.aux))))
            valid = valid_mask(image, chip_bm, item.image.nodata, names=image_bands.names)
            # padding beyond the raster's edge is never data, whatever the nodata setting
            inside_h = max(0, min(int(win.height), item.image.height - int(win.row_off)))
            inside_w = max(0, min(int(win.width), item.image.width - int(win.col_off)))
            valid[inside_h:, :] = False
            valid[:, inside_w:] = False
            if not valid.any():
                yield item, None, None, [], 0, 0
                continue
            specks = clipped = 0
            if mode == "paper":
                binary = _read_mask(src, win, band_map["mask"], item.image.path) & valid
                instances, specks = coco.instances_from_mask(binary, min_area=opts.min_area, fmt=opts.segmentation)
            elif mode == "masks":
                binary = _read_mask(handle(item.mask.path), win, 1, item.mask.path) & valid
                instances, specks = coco.instances_from_mask(binary, min_area=opts.min_area, fmt=opts.segmentation)
            else:
                instances, clipped = _instances_from_labels(item, labels, valid, opts)
            yield item, image, valid, instances, specks, clipped
    finally:
        for f in open_files.values():
            f.close()


def _instances_from_labels(item: Item, labels, valid, opts):
    from shapely.affinity import affine_transform
    from shapely.geometry import box

    gdf, sindex = labels[item.image.crs.to_wkt()]
    c, r, w, h = item.window
    t = window_transform(item.image.transform, c, r)
    inv = ~t
    x0, y0 = apply(t, 0, 0)
    x1, y1 = apply(t, w, h)
    win_box = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    out, clipped = [], 0
    geoms = gdf.geometry.values
    for k in sorted(sindex.query(win_box, predicate="intersects")):
        g = geoms[k].intersection(win_box)
        if g.is_empty:
            continue
        gp = affine_transform(g, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])
        inst = coco.instance_from_polygon(gp, (h, w), valid=valid, min_area=opts.min_area,
                                          fmt=opts.segmentation, source_id=int(gdf.index[k]))
        if inst is None:
            clipped += 1
        else:
            out.append(inst)
    return out, clipped


def _manifest(opts, mode, band_map, chip_bands, chip_dtype, nodata, modalities, stats, sampler, counts, dropped,
              label_meta, items, sizes, ratios, splits, split_map, infos) -> dict:
    from rtscli import __version__

    sources = []
    seen = set()
    paths = [i.path for i, _ in infos] + [it.mask.path for it in items if it.mask is not None]
    paths += [a.path for it in items for a in it.aux.values()]
    if opts.labels is not None:
        paths.append(opts.labels)
        if opts.labels.suffix.lower() == ".shp":
            sidecars = [opts.labels.with_suffix(s) for s in (".dbf", ".shx", ".prj")]
            paths += [p for p in sidecars if p.exists()]
    for p in paths:
        if p in seen:
            continue
        seen.add(p)
        sources.append({"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)})
    totals = {s: {"images": 0, "instances": 0, "negatives": 0} for s in SPLITS}
    for site_counts in counts.values():
        for s in SPLITS:
            for k in totals[s]:
                totals[s][k] += site_counts[s][k]
    size_stats = {}
    if sizes:
        def pct(values, ps, digits):
            return {f"p{p}": round(float(v), digits) for p, v in zip(ps, np.percentile(values, ps), strict=True)}

        size_stats = {
            "box_side_px_percentiles": pct(sizes, [5, 25, 50, 75, 95], 2),
            "box_aspect_h_over_w_percentiles": pct(ratios, [5, 50, 95], 3),
            "instances": len(sizes),
        }
    m: dict[str, Any] = {
        "kind": "rts-dataset",
        "format_version": 1,
        "rts_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "inputs": [str(p) for p in opts.inputs],
        "source_band_map": band_map.as_dict(),
        "source_band_preset": band_map.preset,
        "band_map": chip_bands.as_dict(),
        "aux": {k: str(v) for k, v in opts.aux.items()},
        "dtype": str(chip_dtype),
        "nodata": None if nodata is None else float(nodata),
        "modalities": {m.name: list(m.channels) for m in modalities},
        "repeat_to": opts.repeat_to,
        "normalization": {k: {kk: round(vv, 6) for kk, vv in v.as_dict().items()} for k, v in stats.items()},
        "normalization_method": {
            "split": "train", "clip_percentiles": [sampler.p_low, sampler.p_high],
            "sampled_pixels": sampler.count, "formula": "(clip(x, low, high) - mean) / std",
        },
        "chips": {"size": opts.chip_size,
                  "overlap": opts.overlap if opts.chip_size else None,
                  "min_area_px": opts.min_area, "segmentation": opts.segmentation,
                  "keep_empty": opts.keep_empty},
        "split": {
            "method": "file" if split_map else "within-site",
            "file": str(opts.split_file) if opts.split_file else None,
            "fractions": dict(zip(SPLITS, [round(f, 6) for f in opts.fractions], strict=True)),
            "seed": opts.seed,
            "unit": "spatial block of chips" if opts.chip_size else "image",
            "block_px": max(opts.split_block, 2 * opts.chip_size) if opts.chip_size else None,
        },
        "counts": {"per_site": {k: v for k, v in sorted(counts.items())}, "total": totals},
        "dropped": dropped,
        "instance_sizes": size_stats,
        "labels": label_meta or None,
        "sources": sources,
    }
    return m
