"""What ``rts prepare`` reads: rasters found under the inputs, their sites, and the items to cut.

An :class:`Item` is one unit of work: a whole image (per-sample chips, with a mask band or a mask
file) or one chip window of a larger raster (scenes with vector labels, or large images). Items carry
their raster's :class:`~rtscli.io.raster.RasterInfo`, their site, aligned ``--aux`` rasters and the
names a split file may use for them. Nothing here reads pixels.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from rtscli.data.bands import BandMap
from rtscli.data.options import PrepareOptions
from rtscli.errors import RtsError, inspect_raster, resample_like
from rtscli.io.raster import RASTER_SUFFIXES, RasterInfo, check_whole_read, crs_name, inspect

if TYPE_CHECKING:  # for annotations only: nothing here reads pixels
    import numpy as np

log = logging.getLogger("rtscli")

MASK_SUFFIXES = ("", "_mask", "-mask", "_label", "_labels", "_gt")
#: the most chip windows one raster is cut into (2 million chips of 256 px are 360 000 px a side): a header that
#: claims billions of pixels a side would otherwise plan windows without end
MAX_WINDOWS = 2_000_000


@dataclass
class Item:
    """One unit of work: an image (paper/masks) or one chip window of a scene (vectors)."""

    key: str  # chip name, unique in the dataset
    site: str
    image: RasterInfo
    mask: RasterInfo | None = None
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height
    aux: dict[str, RasterInfo] = field(default_factory=dict)
    source_names: tuple[str, ...] = ()
    coco: Any = None  # rtscli.data.coco_import.CocoImage: the image's COCO entry and annotations (--coco)
    negative_area: bool = False  # the window reaches a background area of the labels (ARTS TrainClass Negative)


def site_of(path: Path, root: Path, forced: str | None) -> str:
    """The site of a raster: ``forced`` (``--site``) when given, else the first folder of ``path`` under ``root``,
    else ``default`` (a raster directly in ``root``, or not under it)."""
    if forced:
        return forced
    try:
        rel = path.relative_to(root)
    except ValueError:
        return "default"
    return rel.parts[0] if len(rel.parts) > 1 else "default"


def band_map_from_descriptions(info: RasterInfo) -> BandMap | None:
    """A band map from the raster's band descriptions when they are all names, else from GDAL's colour
    interpretation when it says red, green and blue (an RGB JPEG or PNG, an RGB GeoTIFF: an alpha band is
    left out), else None."""
    desc = [d.strip().lower() for d in info.descriptions]
    if desc and all(re.fullmatch(r"[a-z][a-z0-9_]*", d or "-") for d in desc) and len(set(desc)) == len(desc):
        return BandMap(tuple((d, i + 1) for i, d in enumerate(desc)))
    colours = [c.lower() for c in info.colorinterp]
    rgb = {c: colours.index(c) + 1 for c in ("red", "green", "blue") if colours.count(c) == 1}
    if len(rgb) == 3 and all(c in ("red", "green", "blue", "alpha") for c in colours):
        return BandMap(tuple(rgb.items()))
    return None


def match_by_name(image: Path, folder: Path, what: str, suffixes: tuple[str, ...] = MASK_SUFFIXES) -> Path:
    """The file in ``folder`` named as ``image`` (its stem, one of ``suffixes``, a raster extension).

    Args:
        image: the image whose companion is looked for.
        folder: where to look.
        what: what is looked for, for the error (``mask``, ``aux raster 'dem'``).
        suffixes: the endings tried after the image's stem, in order (``""``: the same stem).

    Returns:
        The first existing candidate that is not ``image`` itself.

    Raises:
        RtsError: none exists, naming the first names tried.
    """
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


def position_count(length: int, size: int, stride: int) -> int:
    """How many offsets :func:`chip_positions` gives, without making them."""
    if length <= size:
        return 1
    n = (length - size) // stride + 1
    return n + int((n - 1) * stride + size < length)


def chip_positions(length: int, size: int, stride: int) -> list[int]:
    """Offsets of chips along one axis; the last chip covers the remainder (shifted back)."""
    if length <= size:
        return [0]
    pos = list(range(0, length - size + 1, stride))
    if pos[-1] + size < length:
        pos.append(length - size)
    return pos


def sha256(path: Path, block: int = 1 << 20) -> str:
    """The SHA-256 hex digest of the file ``path``, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def parse_aux(specs: list[str] | None) -> dict[str, Path]:
    """``--aux NAME=PATH`` options (rts prepare, rts predict, rts ssl) as ``{name (lower case): path}``. Raises
    :class:`RtsError` for one without a name or a path."""
    out: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise RtsError(f"cannot read --aux {spec!r}", fix="write NAME=PATH, e.g. --aux dem=dem.tif")
        out[name.strip().lower()] = Path(path.strip())
    return out


def aux_lookup(name: str, path: Path) -> Path:
    """``path`` itself when it exists (an ``--aux`` file or folder); raises :class:`RtsError` naming ``name``
    otherwise."""
    if not path.exists():
        raise RtsError(f"aux raster for {name!r} not found", path=path, fix="check --aux NAME=PATH")
    return path


def all_aux(items: list[Item]) -> Iterator[RasterInfo]:
    """Every ``--aux`` raster the items read, once each (first-seen order)."""
    seen: set[Path] = set()
    for it in items:
        for info in it.aux.values():
            if info.path not in seen:
                seen.add(info.path)
                yield info


def aux_for(image: RasterInfo, aux_paths: dict[str, Path], cache: dict[Path, RasterInfo],
            assume_crs: Any) -> dict[str, RasterInfo]:
    """The ``--aux`` rasters of one image, each checked to lie on its grid.

    Args:
        image: the image.
        aux_paths: ``{aux name: file, or folder holding one per image (named as the image)}``.
        cache: ``{aux file: RasterInfo}`` of files inspected already; filled in here.
        assume_crs: the CRS assumed for rasters without one (``--assume-crs``), or None.

    Returns:
        ``{aux name: RasterInfo}``.

    Raises:
        RtsError: an aux raster that is missing, unreadable or not on the image's grid.
    """
    out = {}
    for name, p in aux_paths.items():
        path = match_by_name(image.path, p, f"aux raster '{name}'", suffixes=("", f"_{name}", f"-{name}")) \
            if p.is_dir() else p
        if path not in cache:
            cache[path] = inspect(path, assume_crs=assume_crs, pixel_grid_ok=image.pixel_grid)
        info = cache[path]
        if not info.same_grid(image):
            raise RtsError(
                f"aux raster '{name}' is not on the grid of {image.path.name} "
                f"({info.width}x{info.height} {crs_name(info.crs)} vs "
                f"{image.width}x{image.height} {crs_name(image.crs)})",
                path=path,
                fix=resample_like(path, image.path),
            )
        out[name] = info
    return out


def sample_items(opts: PrepareOptions, infos: list[tuple[RasterInfo, Path]], aux_paths: dict[str, Path],
                 mode: str) -> list[Item]:
    """One item per image (per-sample chips), or its chip windows when larger than ``opts.chip_size``; in
    ``masks`` mode each with its mask, checked to lie on the image's grid.

    Args:
        opts: the run's options (``site``, ``masks``, ``chip_size``, pixels, ``overlap``, ``assume_crs``).
        infos: ``(image, the input root it was found under)`` per image.
        aux_paths: ``{aux name: file or folder}`` (``--aux``).
        mode: ``paper`` (a mask band) or ``masks`` (a mask file per image, in ``opts.masks``).

    Returns:
        The items, in image order; a larger image's chip windows row by row.

    Raises:
        RtsError: two images with one name, a missing mask or one off its image's grid, or an ``--aux`` raster
            that does not fit.
    """
    items: list[Item] = []
    bare_masks: list[str] = []
    aux_cache: dict[Path, RasterInfo] = {}
    names_seen: dict[str, Path] = {}
    for info, root in infos:
        site = site_of(info.path, root, opts.site)
        key = info.path.stem
        if key in names_seen:
            key = f"{site}_{key}"
        if key in names_seen:
            raise RtsError(f"two inputs are both named {info.path.stem}", path=info.path,
                           fix="give chips unique file names")
        names_seen[key] = info.path
        mask = None
        if mode == "masks":
            assert opts.masks is not None  # check_options: mode 'masks' needs --masks DIR
            mpath = match_by_name(info.path, opts.masks, "mask")
            mask = inspect(mpath, need_crs=False)
            if mask.pixel_grid and mask.shape == info.shape:
                if not info.pixel_grid:  # one note for all of them, below
                    bare_masks.append(mpath.name)
            else:
                diff = []
                if mask.shape != info.shape:
                    diff.append(f"size {mask.width}x{mask.height} vs {info.width}x{info.height}")
                if not mask.transform.almost_equals(info.transform, 1e-6):
                    diff.append(f"origin/pixel size {tuple(mask.transform)[:6]} vs {tuple(info.transform)[:6]}")
                if mask.crs is not None and mask.crs != info.crs:
                    diff.append(f"CRS {crs_name(mask.crs)} vs {crs_name(info.crs)}")
                if diff:
                    raise RtsError(f"mask is not on the grid of image {info.path.name} ({'; '.join(diff)})",
                                   path=mpath, fix="masks must have the image's size, transform and CRS")
        aux = aux_for(info, aux_paths, aux_cache, opts.assume_crs)
        names = (info.path.name, info.path.stem, key)
        cs = opts.chip_size
        if cs is None or (info.width <= cs and info.height <= cs):
            check_whole_read(info.path, info.width, info.height, info.count + len(aux))  # read whole: its header
            items.append(Item(key, site, info, mask=mask, aux=aux, source_names=names))
            continue
        for c, r in grid_windows(info, opts):  # a large image: cut it like a scene
            items.append(Item(f"{key}_r{r:06d}_c{c:06d}", site, info, mask=mask,
                              window=(c, r, cs, cs), aux=aux, source_names=names))
    if bare_masks:
        log.info("%d mask(s) have no georeference (e.g. %s): each uses the grid of its image", len(bare_masks),
                 bare_masks[0])
    return items


def grid_windows(info: RasterInfo, opts: PrepareOptions) -> Iterator[tuple[int, int]]:
    """Chip windows over one raster: (col_off, row_off), pixels. Their split groups are spatial blocks on
    the map (:func:`rtscli.data.split_plan.spatial_groups`).

    Args:
        info: the raster.
        opts: the run's options: ``chip_size`` (pixels; set: rasters are cut only then) and ``overlap`` (0..1).

    Returns:
        ``(col_off, row_off)`` of each window, row by row; the last ones shifted back to end at the raster's edge.

    Raises:
        RtsError: the raster's header claims a size that makes more than :data:`MAX_WINDOWS` windows.
    """
    size = opts.chip_size
    assert size is not None  # only rasters that are cut get windows: vectors mode defaults chip_size to 256
    stride = max(1, int(round(size * (1 - opts.overlap))))
    n = position_count(info.height, size, stride) * position_count(info.width, size, stride)
    if n > MAX_WINDOWS:  # counted before any list of them is made
        raise RtsError(f"raster claims {info.width} x {info.height} px: {n} chips of {size} px, more than rts cuts "
                       f"one raster into ({MAX_WINDOWS})", path=info.path,
                       fix=f"check its size with {inspect_raster(info.path)} (a damaged header?), or cut it into "
                           "smaller rasters first (rio clip, or Clip Raster by Extent in QGIS), or use a larger "
                           "--chip-size or smaller --overlap")
    rows = chip_positions(info.height, size, stride)
    cols = chip_positions(info.width, size, stride)
    for r in rows:
        for c in cols:
            yield c, r


def _reaches(gdf: Any, sindex: Any, negatives: np.ndarray, info: RasterInfo, c: int, r: int, size: int) -> bool:
    """Whether the chip window (c, r, size) shares area with a background (negative) label area."""
    from rtscli.geometry.footprint import window_footprint

    fp = window_footprint(info.transform, c, r, size, size)
    return any(negatives[k] and gdf.geometry.values[k].intersection(fp).area > 0
               for k in sindex.query(fp, predicate="intersects"))


def vector_items(opts: PrepareOptions, infos: list[tuple[RasterInfo, Path]], aux_paths: dict[str, Path]
                 ) -> tuple[list[Item], dict[str, tuple[Any, Any]], dict[str, Any]]:
    """Chip windows of every scene, and the labels in each scene CRS (``opts.labels``: one or several files, each
    read once and reprojected once per CRS, only into the CRS of scenes it may reach:
    :class:`rtscli.data.labels.LabelSet`).

    Args:
        opts: the run's options: ``labels`` (set), ``chip_size`` (pixels, set), ``overlap``, ``site``, the label
            reading options.
        infos: ``(scene, the input root it was found under)`` per scene.
        aux_paths: ``{aux name: file or folder}`` (``--aux``).

    Returns:
        ``(items, {CRS WKT: (labels GeoDataFrame in that CRS, its spatial index)}, the manifest's labels record)``.

    Raises:
        RtsError: no label overlaps any scene, two scenes with one name, an unreadable label file or an ``--aux``
            raster that does not fit.
    """
    from rtscli.data.labels import LabelSet

    # check_options and chip_layout guarantee both in vectors mode (--labels needed, chip_size 256 by default)
    assert opts.labels is not None and opts.chip_size is not None

    # every label file read once, in its own CRS; reprojected once per raster CRS, only where its rasters lie
    label_set = LabelSet(opts.labels, assume_crs=opts.labels_crs, layer=opts.labels_layer)
    scenes: dict[str, tuple[Any, list[Any]]] = {}
    for info, _ in infos:
        scenes.setdefault(info.crs.to_wkt(), (info.crs, []))[1].append(info.footprint)
    labels_by_crs = {ck: (gdf, gdf.sindex) for ck, gdf in label_set.layers(scenes, dedupe=opts.dedupe_labels).items()}
    rep = label_set.report
    items: list[Item] = []
    aux_cache: dict[Path, RasterInfo] = {}
    overlaps_any = False
    per_scene = {}
    stems: dict[str, Path] = {}
    for info, root in infos:
        gdf, sindex = labels_by_crs[info.crs.to_wkt()]
        hits = sindex.query(info.footprint, predicate="intersects")  # the true outline (rotated grids too)
        per_scene[info.path.name] = int(len(hits))
        if len(hits):
            overlaps_any = True
        site = site_of(info.path, root, opts.site)
        aux = aux_for(info, aux_paths, aux_cache, opts.assume_crs)
        stem = info.path.stem
        if stem in stems:  # one scene name in two site folders (e.g. a date): keys must stay unique
            stem = f"{site}_{stem}"
        if stem in stems:
            raise RtsError(f"two scenes are both named {info.path.stem} (in {stems[stem]} and here)", path=info.path,
                           fix="give the scenes unique file names")
        stems[stem] = info.path.parent
        negatives = gdf["negative"].to_numpy(bool)
        for c, r in grid_windows(info, opts):
            key = f"{stem}_r{r:06d}_c{c:06d}"
            items.append(Item(key, site, info, window=(c, r, opts.chip_size, opts.chip_size), aux=aux,
                              source_names=(key, info.path.name, info.path.stem),
                              negative_area=negatives.any() and _reaches(gdf, sindex, negatives, info, c, r,
                                                                         opts.chip_size)))
    if not overlaps_any:
        lb = label_set.bounds_in(infos[0][0].crs)
        raise RtsError(
            f"no label polygon overlaps the raster(s) (labels bounds {fmt_bounds(lb)} vs scene bounds "
            f"{fmt_bounds(infos[0][0].bounds)} in {crs_name(infos[0][0].crs)})",
            path=", ".join(str(p) for p in opts.labels),
            fix="check that the labels and the scenes cover the same area (and the labels' CRS)",
        )
    for name, n in per_scene.items():
        if n == 0:
            log.warning("no label intersects scene %s: its chips become negatives", name)
    meta = {
        "files": [str(p) for p in opts.labels],
        "layer": opts.labels_layer,
        "features": rep.features,
        "features_per_file": label_set.features_per_file(),
        "repaired_invalid": rep.repaired,
        "dropped_empty": rep.empty,
        "dropped_not_polygon": rep.not_polygon,
        "reprojected_from": rep.reprojected_from,
        "negative_areas": rep.negatives,
        "duplicates": rep.duplicates,
        "duplicates_dropped": rep.duplicates_dropped,
        "overlapping_pairs": rep.overlapping_pairs,
        "per_scene_intersecting": per_scene,
    }
    if rep.negatives:
        log.info("%d background area(s) in the labels (ARTS TrainClass Negative): never slumps; the chips that reach "
                 "them are kept as negatives (also with --drop-empty)", rep.negatives)
    if rep.repaired:
        log.info("repaired %d invalid label polygon(s) with make_valid", rep.repaired)
    if rep.duplicates:
        from rtscli.data.labels import DUPLICATE_IOU

        log.warning("%d label polygon(s) repeat an earlier one (IoU >= %g: the same slump drawn twice, or one outline "
                    "at several dates): %s", rep.duplicates, DUPLICATE_IOU,
                    "the first of each was kept" if rep.duplicates_dropped else
                    "all were kept (--keep-duplicate-labels), so they become stacked duplicate instances")
    if rep.overlapping_pairs:
        from rtscli.data.labels import OVERLAP_IOU

        log.warning("%d pair(s) of label polygons overlap by IoU >= %g (one slump labelled at several dates, or by "
                    "several experts?): they become overlapping instances; keep one label per slump (the imagery's "
                    "date, e.g. selected in QGIS, or a consensus of the experts)", rep.overlapping_pairs, OVERLAP_IOU)
    labels = {k: v for k, v in labels_by_crs.items()}
    return items, labels, meta


def fmt_bounds(b: Iterable[float] | None) -> str:
    """Bounds ``(xmin, ymin, xmax, ymax)`` as text with one decimal, or ``(empty)`` for None."""
    if b is None:
        return "(empty)"
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"
