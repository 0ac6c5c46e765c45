"""The splits of ``rts prepare``'s items: where each lies on the map, which split it goes to, and what is wrong.

Items are compared by their footprints in one common CRS (:func:`footprint_units`; images without
georeference each in their own pixel frame), grouped so that no place is in two splits
(:func:`rtscli.data.split.spatial_groups`), drawn within each site (:func:`rtscli.data.split.assign`), taken
from a split file or from the COCO files they came from, and left out when they would still share pixels
with an item of a stricter split (:func:`rtscli.data.split.drop_overlapping`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtscli.data.inputs import Item
from rtscli.data.split import SPLITS, assign, lookup
from rtscli.errors import RtsError
from rtscli.io.raster import crs_name

if TYPE_CHECKING:
    from rtscli.data.prepare import PrepareOptions

log = logging.getLogger("rtscli")


def plan_splits(items: list[Item], opts: PrepareOptions,
                split_map: dict[str, str] | None) -> tuple[dict[str, str], dict]:
    """Each item's split, and a report. Items are grouped by where they lie on the map, across all
    files (:func:`rtscli.data.split.spatial_groups`); items still sharing pixels with an item of another
    split are left out (:func:`rtscli.data.split.drop_overlapping`)."""
    from rtscli.data.split import drop_overlapping, overlapping_pairs, spatial_groups

    units = footprint_units(items)
    pairs = overlapping_pairs(units)  # once: grouping and the guard both need them
    block = max(opts.split_block, 2 * opts.chip_size) if opts.chip_size else opts.split_block
    groups, report = spatial_groups(units, block, pairs)
    if split_map is None and any(it.coco is not None and it.coco.split for it in items):
        out = coco_splits(items, groups, opts, report)
    elif split_map is None:
        out = assign(((it.key, *groups[it.key]) for it in items), opts.fractions, opts.seed)
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
    if report["overlapping_pairs_across_files"]:
        log.info("%d pair(s) of items from different files overlap on the map (copies, or several dates of one "
                 "place): overlapping items are kept in one split, or left out",
                 report["overlapping_pairs_across_files"])
    drop, cross_file = drop_overlapping(units, out, pairs)
    cross = len(cross_file)
    if drop:
        log.info("%d chip(s) overlapping chips of another split were left out (no shared pixels between splits)",
                 len(drop))
    if cross:
        log.warning("%d item(s) overlap, on the map, an item of another file in a stricter split and were left out%s "
                    "(e.g. %s)", cross, " (the split file puts one place in two splits)" if split_map else "",
                    ", ".join(sorted(cross_file)[:3]))
    report["left_out_items"] = sorted(drop)[:100]  # the manifest names them (the first 100)
    report["left_out_overlapping_other_file"] = cross
    return {k: v for k, v in out.items() if k not in drop}, report


def coco_splits(items: list[Item], groups: dict, opts: PrepareOptions, report: dict) -> dict[str, str]:
    """Splits from the COCO files: each image's file says it; without a val file, val is drawn from the train
    file's images (by group, as ``--split`` asks: e.g. 0.7,0.15,0.15 -> 15/85 of them)."""
    out = {it.key: it.coco.split for it in items if it.coco.split in ("val", "test")}
    train = [it for it in items if it.coco.split == "train"]
    ft, fv, _ = opts.fractions
    if any(it.coco.split == "val" for it in items) or fv == 0 or ft == 0:
        out.update({it.key: "train" for it in train})
        return out
    drawn = assign(((it.key, *groups[it.key]) for it in train), (ft / (ft + fv), fv / (ft + fv), 0.0), opts.seed)
    out.update(drawn)
    report["val_drawn"] = sum(s == "val" for s in drawn.values())
    log.info("no val COCO file: %d of the %d train item(s) drawn for val (--split %.2f,%.2f)", report["val_drawn"],
             len(train), ft, fv)
    return out


def footprint_units(items: list[Item]):
    """The items' footprints in one common CRS: the first georeferenced input's, or, when some do not fit it, a
    Lambert azimuthal equal-area projection centred on the data. Images without georeference (a pixel grid)
    stay in their own pixel frame each: they never overlap another file's items."""
    from pyproj import Transformer

    from rtscli.data.split import Unit
    from rtscli.geometry.footprint import reproject, window_footprint

    def footprint(it: Item):
        c, r, w, h = it.window or (0, 0, it.image.width, it.image.height)
        w, h = max(1, min(w, it.image.width - c)), max(1, min(h, it.image.height - r))  # the part inside the raster
        return window_footprint(it.image.transform, c, r, w, h), w * h

    def build(common) -> list[Unit] | None:
        cache: dict[str, Any] = {}
        out = []
        for it in mapped:
            fp, n = footprint(it)
            if it.image.crs != common:
                key = it.image.crs.to_wkt()
                if key not in cache:
                    cache[key] = Transformer.from_crs(key, common.to_wkt(), always_xy=True)
                fp = reproject(fp, cache[key], max(fp.length / 64, 1e-9))
                if not np.isfinite(fp.bounds).all() or not fp.is_valid:
                    return None
            out.append(Unit(it.key, it.site, str(it.image.path), fp, fp.area / n, it.window is not None))
        return out

    pixels = [Unit(it.key, it.site, str(it.image.path), footprint(it)[0], 1.0, it.window is not None,
                   frame=f"pixels:{it.image.path}") for it in items if it.image.crs is None]
    mapped = [it for it in items if it.image.crs is not None]
    if not mapped:
        return pixels
    units = build(mapped[0].image.crs)
    if units is None:  # e.g. UTM zones far apart: compare in an equal-area projection centred on the data
        from rasterio.crs import CRS

        lon, lat = Transformer.from_crs(mapped[0].image.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(
            *footprint(mapped[0])[0].centroid.coords[0])
        laea = CRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 +units=m +no_defs")
        log.info("the inputs do not all fit the first one's CRS (%s): their footprints are compared in a "
                 "Lambert azimuthal equal-area projection centred at %.3f, %.3f", crs_name(mapped[0].image.crs),
                 lat, lon)
        units = build(laea)
    if units is None:
        raise RtsError("the inputs' footprints cannot be brought into one CRS to check that no place is in two "
                       "splits (they lie too far apart)", path=mapped[0].image.path,
                       fix="prepare far-apart regions as separate datasets, or give a --split-file")
    sides = [math.sqrt(u.pixel_area) for u in units]
    if max(sides) > 2 * min(sides):
        log.info("the inputs' pixels range from %.3g to %.3g map units: the spatial blocks of the split are sized "
                 "for the coarsest (use --split-block to change them)", min(sides), max(sides))
    return units + pixels


def warn_single_chip_scenes(items: list[Item], opts: PrepareOptions) -> None:
    """A raster cut into one chip cannot be shared between splits: say so, naming ``--chip-size``."""
    chips: dict[Path, int] = defaultdict(int)
    for it in items:
        if it.window is not None:
            chips[it.image.path] += 1
    for it in {it.image.path: it for it in items if it.window is not None}.values():
        if chips[it.image.path] == 1:
            side = min(it.image.width, it.image.height)
            smaller = max(16, min(opts.chip_size // 2, 2 ** int(math.log2(max(side // 2, 1)))))
            log.warning("%s (%d x %d px) gives a single %d px chip, so it cannot be shared between the splits: use "
                        "a smaller --chip-size (e.g. %d)", it.image.path.name, it.image.width, it.image.height,
                        opts.chip_size, smaller)


#: a validation or test split with fewer slumps than this measures AP50 too coarsely to choose or compare models
FEW_SLUMPS = 5


def split_warnings(counts, wanted: dict[str, float], mode, split_report=None) -> list[str]:
    """What is wrong with the splits that came out: empty, lopsided, or unable to measure anything.

    ``wanted``: the share asked for each split (``--split``; with a split file, 1 for the splits it names).
    """
    totals = {s: sum(c[s]["images"] for c in counts.values()) for s in SPLITS}
    slumps = {s: sum(c[s]["instances"] for c in counts.values()) for s in SPLITS}
    n = sum(totals.values())
    hint = {"vectors": "use a smaller --chip-size or --split-block, more scenes, or a --split-file",
            "coco": "add images, give a COCO file for that split, or change --split"}.get(
        mode, "add images, or use a --split-file")
    joined = (split_report or {}).get("images_joined_across_files", 0)
    if joined and mode != "coco":  # e.g. chips that all carry one placeholder georeference: one place, one split
        hint += (f" ({joined} pair(s) of images overlap on the map, so they share a split: check that the images "
                 "carry their true georeference)")
    out = []
    for s, f in wanted.items():
        if f > 0 and totals[s] == 0:
            asked = "the split file names it" if f == 1 and sum(wanted.values()) > 1 else f"asked for {f:.0%}"
            out.append(f"the {s} split is empty ({asked}): {hint}")
        elif n and f < 1 and abs(totals[s] / n - f) > 0.15:
            out.append(f"the {s} split has {totals[s] / n:.0%} of the chips (asked for {f:.0%}): {hint}")
        if s != "train" and totals[s] and slumps[s] < FEW_SLUMPS:
            what = "no slump" if slumps[s] == 0 else f"only {slumps[s]} slump(s)"
            out.append(f"the {s} split has {totals[s]} chip(s) and {what}: its AP50 cannot tell models apart"
                       f"{' (rts pretrain keeps the last weights)' if s == 'val' and slumps[s] == 0 else ''}: "
                       f"{hint}")
    return out
