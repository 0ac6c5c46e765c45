"""Which split each item of ``rts prepare`` goes to, and what is wrong with the splits that came out.

Splits are drawn within each site (the paper's scheme), by group, with a fixed seed (:func:`assign`). A
*group* is the unit that is never divided between splits: an image for per-sample chips, a spatial block
of chips for chips cut from a large scene (neighbouring chips overlap, so they go to the same split).

Items are compared by their footprints in one common CRS (:func:`footprint_units`; images without
georeference each in their own pixel frame) and grouped across all input files (:func:`spatial_groups`):
copies of one chip, or two dates of one place, share a split. The splits are drawn, taken from a split file
(:mod:`rtscli.data.split_files`) or from the COCO files the items came from (:func:`coco_splits`); items that
would still share pixels with an item of a stricter split are left out (:func:`drop_overlapping`). An
explicit split file overrides the draw, but not the guard. :func:`plan_splits` does all of it.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, TypeVar

import numpy as np

from rtscli.data.inputs import Item
from rtscli.data.options import PrepareOptions
from rtscli.data.split_files import SPLITS, lookup
from rtscli.errors import RtsError
from rtscli.io.raster import crs_name

log = logging.getLogger("rtscli")

K = TypeVar("K", bound=Hashable)


# ---------------------------------------------------------------------------------------------
# the draw: within each site, by group
# ---------------------------------------------------------------------------------------------
def _allocate(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split ``n`` groups by largest remainder; every split with a fraction > 0 gets one if it can."""
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(3) if fractions[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(3), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign(
    items: Iterable[tuple[K, str, Hashable]],
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[K, str]:
    """``items`` are (key, site, group); returns key -> split. Deterministic in ``seed``.

    Args:
        items: ``(key, site, group)`` per item: the groups of each site are drawn into splits whole.
        fractions: the shares of train, val and test (groups, not items), summing to 1.
        seed: the seed of the draw (with each site's name).

    Returns:
        ``{key: "train" | "val" | "test"}`` for every item.
    """
    by_site: dict[str, dict[Hashable, list[K]]] = defaultdict(lambda: defaultdict(list))
    for key, site, group in items:
        by_site[site][group].append(key)
    out: dict[K, str] = {}
    for site in sorted(by_site):
        groups = sorted(by_site[site], key=str)
        rng = np.random.default_rng([seed, abs(hash_str(site)) % (2**31)])
        order = [groups[i] for i in rng.permutation(len(groups))]
        counts = _allocate(len(order), fractions)
        k = 0
        for split, c in zip(SPLITS, counts, strict=True):
            for g in order[k : k + c]:
                for key in by_site[site][g]:
                    out[key] = split
            k += c
    return out


def hash_str(s: str) -> int:
    """A stable (not per-process salted) hash of a string."""
    import hashlib

    return int.from_bytes(hashlib.sha1(s.encode()).digest()[:4], "little")


# ---------------------------------------------------------------------------------------------
# spatial grouping: no place in two splits, whatever file it comes from
# ---------------------------------------------------------------------------------------------
_RANK = {"train": 0, "val": 1, "test": 2}


@dataclass
class Unit:
    """One item to split, as the spatial guard sees it.

    ``footprint`` is the item's outline in the common CRS of the run (a shapely polygon: all four
    corners of its window, so rotated grids are right); ``pixel_area`` is one pixel's area in that
    CRS's units; ``source`` is the file it is read from; ``cut`` is True for a chip cut from a larger raster
    (grouped by spatial blocks), False for a whole image (grouped with every image it overlaps); ``scene`` is, for
    a chip of rts prepare read back from COCO, the scene it was cut from (``CocoImage.scene``): chips of one scene
    overlap where their windows did, they are not copies. Units of different ``frame`` never overlap.
    """

    key: str
    site: str
    source: str
    footprint: Any
    pixel_area: float
    cut: bool
    frame: str = "map"  # "map": the common CRS; "pixels:FILE": an image without georeference, its own frame
    scene: tuple[str, tuple] | None = None  # (scene, window) a chip read back from COCO was cut at, as recorded


def _one_scene(a: Unit, b: Unit) -> bool:
    """Whether two units are chips of one scene at different windows (their COCO entries say so), not copies."""
    return a.scene is not None and b.scene is not None and a.scene[0] == b.scene[0] and a.scene[1] != b.scene[1]


def overlapping_pairs(units: list[Unit]) -> list[tuple[int, int]]:
    """Pairs (i < j) of units whose footprints share more than half a pixel of area (positions in ``units``).

    Only units of one frame are compared (one spatial index per frame): images without georeference, each in
    its own pixel frame, all lie at the same coordinates and are never paired."""
    from shapely import STRtree

    frames: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        frames[u.frame].append(i)
    pairs = []
    for members in frames.values():
        geoms = [units[i].footprint for i in members]
        left, right = STRtree(geoms).query(geoms, predicate="intersects")
        for la, lb in zip(left.tolist(), right.tolist(), strict=True):
            if la >= lb:
                continue
            a, b = members[la], members[lb]
            tol = 0.5 * min(units[a].pixel_area, units[b].pixel_area)
            if geoms[la].intersection(geoms[lb]).area > tol:
                pairs.append((a, b) if a < b else (b, a))
    return sorted(pairs)


def spatial_groups(units: list[Unit], block_px: int,
                   pairs: list[tuple[int, int]]) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """Split groups such that items at one place share a split, across all files.

    * A chip cut from a raster belongs to the spatial block (``block_px`` pixels of the coarsest
      cut raster, in the common CRS) that holds its centre: chips of two overlapping scenes (two
      dates of one place, copies) at the same place fall in the same block.
    * A whole image is grouped with every item of another file that it overlaps (union-find), so
      copies of one chip or two acquisitions of one place land in one split.

    ``pairs``: :func:`overlapping_pairs` of ``units``. Chips that straddle a block edge still overlap chips of
    the next block; :func:`drop_overlapping` leaves those out. Returns ``({key: (site, group)}, report)``; the
    group's site is the first (sorted) site among its members, so a group never spans two sites' draws. The
    report (two counts) starts the one :func:`plan_splits` returns, which adds entries of other types.
    """
    from rtscli.geometry.polygons import union_root

    cut_px: dict[str, float] = {}
    for u in units:
        if u.cut:
            cut_px[u.frame] = max(cut_px.get(u.frame, 0.0), math.sqrt(u.pixel_area))
    side = {f: block_px * px for f, px in cut_px.items()}  # per frame: the map, or one image's own pixels
    names = [f"block:{'' if u.frame == 'map' else u.frame + ':'}{math.floor(u.footprint.centroid.x / side[u.frame])}:"
             f"{math.floor(u.footprint.centroid.y / side[u.frame])}" if u.cut else f"image:{u.key}" for u in units]
    index = {name: i for i, name in enumerate(sorted(set(names)))}  # groups, numbered in a stable order
    parent = list(range(len(index)))
    joined = across = same_scene = 0
    for a, b in pairs:
        ua, ub = units[a], units[b]
        if ua.source != ub.source:
            if _one_scene(ua, ub):
                same_scene += 1
            else:
                across += 1
        if ua.source == ub.source or (ua.cut and ub.cut):
            continue  # chips of one raster, or chips of two rasters: the blocks and the buffer handle them
        ra, rb = union_root(parent, index[names[a]]), union_root(parent, index[names[b]])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            joined += 1
    label = sorted(index, key=index.__getitem__)
    members: dict[int, list[Unit]] = defaultdict(list)
    for u, name in zip(units, names, strict=True):
        members[union_root(parent, index[name])].append(u)
    out: dict[str, tuple[str, str]] = {}
    for root, us in members.items():
        site = min(u.site for u in us)
        for u in us:
            out[u.key] = (site, label[root])
    return out, {"overlapping_pairs_across_files": across, "overlapping_chip_pairs_of_one_scene": same_scene,
                 "images_joined_across_files": joined}


def drop_overlapping(units: list[Unit], splits: dict[str, str],
                     pairs: list[tuple[int, int]]) -> tuple[set[str], set[str]]:
    """The units that overlap a unit of a stricter split (test > val > train) by more than half a pixel,
    whatever file each comes from: leaving them out keeps every place in one split only.

    ``pairs``: :func:`overlapping_pairs` of ``units``; units without a split are ignored. Returns ``(keys to
    leave out, those of them that overlap an item of another file)``.
    """
    drop: set[str] = set()
    cross: set[str] = set()
    for a, b in pairs:
        ua, ub = units[a], units[b]
        if ua.key not in splits or ub.key not in splits:
            continue
        ra, rb = _RANK[splits[ua.key]], _RANK[splits[ub.key]]
        if ra == rb:
            continue
        loser = ua if ra < rb else ub
        drop.add(loser.key)
        if ua.source != ub.source and not _one_scene(ua, ub):
            cross.add(loser.key)
    return drop, cross


# ---------------------------------------------------------------------------------------------
# the items of rts prepare
# ---------------------------------------------------------------------------------------------
def plan_splits(items: list[Item], opts: PrepareOptions,
                split_map: dict[str, str] | None) -> tuple[dict[str, str], dict]:
    """Each item's split, and a report. Items are grouped by where they lie on the map, across all
    files (:func:`spatial_groups`); items still sharing pixels with an item of another
    split are left out (:func:`drop_overlapping`)."""
    units = footprint_units(items)
    pairs = overlapping_pairs(units)  # once: grouping and the guard both need them
    block = block_px(opts)
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
    if report["overlapping_chip_pairs_of_one_scene"]:  # rts prepare's chips read back (rts export-coco)
        scenes = sorted({u.scene[0] for u in units if u.scene})
        log.info("%d pair(s) of images overlap where the windows they were cut from did: chips of %d scene(s) "
                 "(e.g. %s), as their COCO entries record (source and window): overlapping chips are kept in one "
                 "split, or left out", report["overlapping_chip_pairs_of_one_scene"], len(scenes),
                 re.split(r"[\\/]", scenes[0])[-1])
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
    if split_map is None and not any(it.coco is not None and it.coco.split for it in items):
        report["per_site"] = site_blocks(items, groups, drop)  # drawn here: site_warnings reads it
    return {k: v for k, v in out.items() if k not in drop}, report


def site_blocks(items: list[Item], groups: Mapping[str, tuple[str, str]], left_out: set[str]) -> dict[str, dict]:
    """Per site, how its chips cut from scenes fared in the draw (for :func:`site_warnings` and the manifest).

    Args:
        items: the items of the run; only chips cut from a raster (``window`` set) are counted.
        groups: ``{key: (site, group)}`` (:func:`spatial_groups`): a cut chip's group is its spatial block.
        left_out: the keys left out because they overlap an item of another split (:func:`drop_overlapping`).

    Returns:
        ``{site: {"chips": n, "left_out": n, "blocks": n, "scenes": [file names], "smallest_px": [width, height]}}``
        (``smallest_px``: the smallest of its scenes, pixels); sites without cut chips are absent.
    """
    per: dict[str, dict] = {}
    blocks: dict[str, set[str]] = defaultdict(set)
    for it in items:
        if it.window is None:
            continue
        rec = per.setdefault(it.site, {"chips": 0, "left_out": 0, "blocks": 0, "scenes": [], "smallest_px": None})
        rec["chips"] += 1
        rec["left_out"] += it.key in left_out
        blocks[it.site].add(groups[it.key][1])
        if it.image.path.name not in rec["scenes"]:
            rec["scenes"].append(it.image.path.name)
            size = [it.image.width, it.image.height]
            if rec["smallest_px"] is None or min(size) < min(rec["smallest_px"]):
                rec["smallest_px"] = size
    for site, rec in per.items():
        rec["blocks"] = len(blocks[site])
    return per


def coco_splits(items: list[Item], groups: Mapping[str, tuple[str, str]], opts: PrepareOptions,
                report: dict[str, Any]) -> dict[str, str]:
    """Splits from the COCO files: each image's file says it; without a val file, val is drawn from the train
    file's images (by group, as ``--split`` asks: e.g. 0.7,0.15,0.15 -> 15/85 of them).

    Args:
        items: the COCO items (``item.coco`` set).
        groups: ``{key: (site, group)}`` (:func:`spatial_groups`).
        opts: the run's options (``fractions``, ``seed``).
        report: the split report; ``val_drawn`` is added when val is drawn.

    Returns:
        ``{key: split}`` of every item whose file gives a split (or whose val split is drawn). The log line of a
        draw says why: no val file was given, or the val file(s) given list no images (an empty val split
        exported by ``rts export-coco``).
    """
    out = {it.key: it.coco.split for it in items if it.coco.split in ("val", "test")}
    train = [it for it in items if it.coco.split == "train"]
    ft, fv, _ = opts.fractions
    if any(it.coco.split == "val" for it in items) or fv == 0 or ft == 0:
        out.update({it.key: "train" for it in train})
        return out
    drawn = assign(((it.key, *groups[it.key]) for it in train), (ft / (ft + fv), fv / (ft + fv), 0.0), opts.seed)
    out.update(drawn)
    report["val_drawn"] = sum(s == "val" for s in drawn.values())
    from rtscli.data.coco_import import splits_of

    empty = [p.name for p, s in splits_of(list(opts.coco or []), opts.coco_split).items() if s == "val"]
    why = f"{', '.join(empty)} list{'s' if len(empty) == 1 else ''} no images" if empty else "no val COCO file"
    log.info("%s: %d of the %d train item(s) drawn for val (--split %.2f,%.2f)", why, report["val_drawn"],
             len(train), ft, fv)
    return out


def footprint_units(items: list[Item]) -> list[Unit]:
    """The items' footprints in one common CRS: the first georeferenced input's, or, when some do not fit it, a
    Lambert azimuthal equal-area projection centred on the data. Images without georeference (a pixel grid)
    stay in their own pixel frame each: they never overlap another file's items."""
    from pyproj import Transformer

    from rtscli.geometry.footprint import reproject, window_footprint

    def footprint(it: Item) -> tuple[Any, int]:
        c, r, w, h = it.window or (0, 0, it.image.width, it.image.height)
        w, h = max(1, min(w, it.image.width - c)), max(1, min(h, it.image.height - r))  # the part inside the raster
        return window_footprint(it.image.transform, c, r, w, h), w * h

    def build(common: Any) -> list[Unit] | None:
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
            out.append(Unit(it.key, it.site, str(it.image.path), fp, fp.area / n, it.window is not None,
                            scene=it.coco.scene if it.coco is not None else None))
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


def block_px(opts: PrepareOptions) -> int:
    """The side of the split's spatial blocks, pixels: ``--split-block``, at least twice ``--chip-size`` (a block
    holds a few chips, so few are left out for straddling a block edge)."""
    return max(opts.split_block, 2 * opts.chip_size) if opts.chip_size else opts.split_block


def warn_single_chip_scenes(items: list[Item], opts: PrepareOptions) -> None:
    """A raster cut into one chip cannot be shared between splits: say so, naming ``--chip-size``."""
    chips: dict[Path, int] = defaultdict(int)
    for it in items:
        if it.window is not None:
            chips[it.image.path] += 1
    for it in {it.image.path: it for it in items if it.window is not None}.values():
        if chips[it.image.path] == 1:
            side = min(it.image.width, it.image.height)
            assert opts.chip_size is not None  # items have windows only when rasters are cut (chip_size set)
            smaller = max(16, min(opts.chip_size // 2, 2 ** int(math.log2(max(side // 2, 1)))))
            log.warning("%s (%d x %d px) gives a single %d px chip, so it cannot be shared between the splits: use "
                        "a smaller --chip-size (e.g. %d)", it.image.path.name, it.image.width, it.image.height,
                        opts.chip_size, smaller)


#: a validation or test split with fewer slumps than this measures AP50 too coarsely to choose or compare models
FEW_SLUMPS = 5


def split_warnings(counts: Mapping[str, Mapping[str, Mapping[str, int]]], wanted: dict[str, float], mode: str,
                   split_report: Mapping[str, Any] | None = None) -> list[str]:
    """What is wrong with the splits that came out: empty, lopsided, or unable to measure anything.

    Args:
        counts: ``{site: {split: {"images": n, "instances": n, ...}}}`` of the chips written.
        wanted: the share asked for each split (``--split``; with a split file, 1 for the splits it names).
        mode: the input mode (``vectors``, ``coco``, ...), for the hint.
        split_report: :func:`plan_splits`' report (``images_joined_across_files``), or None.

    Returns:
        One message per problem (empty list: none).
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


def site_warnings(counts: Mapping[str, Mapping[str, Mapping[str, int]]], wanted: Mapping[str, float],
                  split_report: Mapping[str, Any], opts: PrepareOptions) -> list[str]:
    """Per site, when the split drawn within it lost something: a split asked for that has no chip of the site (said
    when there are several sites: for one, :func:`split_warnings` says it), or most of its chips left out for sharing
    pixels with chips of another split. Each message names the site, what it lost, why (its scenes' size against
    the split blocks) and what works for small scenes: a smaller ``--chip-size`` with a smaller ``--split-block``
    (``--overlap 0``), or a ``--split-file`` that puts each scene whole in one split.

    Args:
        counts: ``{site: {split: {"images": n, ...}}}`` of the chips written.
        wanted: the share asked for each split (``--split``).
        split_report: :func:`plan_splits`' report; its ``per_site`` (:func:`site_blocks`) is there only when the
            split was drawn here (not given by a split file or COCO files).
        opts: the run's options (``chip_size``, ``split_block``, ``overlap``, pixels).

    Returns:
        One message per site that lost something (empty list: none).
    """
    per_site = split_report.get("per_site") or {}
    out = []
    for site, rec in sorted(per_site.items()):
        got = counts.get(site, {})
        empty = [s for s, f in wanted.items() if f > 0 and not got.get(s, {}).get("images", 0)]
        lost = rec["left_out"] > rec["chips"] / 2
        if not lost and not (empty and len(per_site) > 1):
            continue
        what = []
        if empty:
            what.append(f"no chip in {' or '.join(empty)} (asked for "
                        f"{', '.join(f'{wanted[s]:.0%}' for s in empty)})")
        if rec["left_out"]:
            what.append(f"{rec['left_out']} of its {rec['chips']} chips were left out (they share pixels with chips "
                        "of another split)")
        out.append(f"site {site}: {'; '.join(what)}: {_why_and_fix(rec, opts)}")
    return out


def _why_and_fix(rec: Mapping[str, Any], opts: PrepareOptions) -> str:
    """Why a site's scenes split badly (their size against the split blocks) and what works for small scenes."""
    assert opts.chip_size is not None  # only chips cut from scenes are counted (site_blocks)
    block = block_px(opts)
    w, h = rec["smallest_px"]
    n = len(rec["scenes"])
    scenes = f"its scene ({w} x {h} px)" if n == 1 else f"its {n} scenes (the smallest {w} x {h} px)"
    raised = f" (--split-block {opts.split_block} was raised to {block}, twice --chip-size)" \
        if opts.split_block < block else ""
    why = f"{scenes} {'spans' if n == 1 else 'span'} {rec['blocks']} split block(s) of {block} px{raised}"
    # blocks shorter than the scene's side: every scene spans at least 2 x 2 of them; chips half a block
    new_block = max(32, 2 ** int(math.log2(max(2 * min(w, h) / 3, 1))))
    new_chip = max(16, new_block // 2)
    fixes = []
    if new_block < block or (opts.overlap > 0 and rec["left_out"]):
        fixes.append(f"--chip-size {min(new_chip, opts.chip_size)} --split-block {min(new_block, block)}"
                     + (" --overlap 0 (chips that do not overlap are not left out)"
                        if opts.overlap > 0 and rec["left_out"] else ""))
    fixes.append(f"a --split-file that puts each scene whole in one split (lines name,split, e.g. "
                 f"{rec['scenes'][0]},train; every scene listed)")
    return f"{why}. For small scenes use {', or '.join(fixes)}"
