"""Train/val/test splits: within each site (the paper's scheme), by group, with a fixed seed.

A *group* is the unit that is never divided between splits: an image for per-sample chips, a
spatial block of chips for chips cut from a large scene (neighbouring chips overlap, so they go to
the same split). Groups are formed from the items' footprints on the map, across all input files
(:func:`spatial_groups`): copies of one chip, or two dates of one place, share a split. Items that
would still share pixels with an item of another split are left out (:func:`drop_overlapping`).
An explicit split file overrides the draw, but not the guard.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable

import numpy as np

from rtscli.errors import RtsError

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(0.0)
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise RtsError(f"cannot read split fractions {text!r}", fix="use train,val,test e.g. 0.7,0.15,0.15")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


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
    items: Iterable[tuple[Hashable, str, Hashable]],
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[Hashable, str]:
    """``items`` are (key, site, group); returns key -> split. Deterministic in ``seed``."""
    by_site: dict[str, dict[Hashable, list[Hashable]]] = defaultdict(lambda: defaultdict(list))
    for key, site, group in items:
        by_site[site][group].append(key)
    out: dict[Hashable, str] = {}
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


def read_split_file(path: str | Path) -> dict[str, str]:
    """A CSV (``name,split``) or JSON (``{name: split}`` or ``{split: [names]}``) split file."""
    path = Path(path)
    if not path.exists():
        raise RtsError("split file not found", path=path, fix="check the path")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            lists = [isinstance(v, list) for v in data.values()]
            if any(lists) and not all(lists):
                raise ValueError("mixes {split: [names]} and {name: split}")
            if all(lists):
                mapping = {str(n): s for s, names in data.items() for n in names}
            else:
                mapping = {str(k): str(v) for k, v in data.items()}
        else:
            with path.open(newline="") as fh:
                rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
            if rows and [c.strip().lower() for c in rows[0][:2]] == ["name", "split"]:
                rows = rows[1:]
            if rows and not any(len(r) >= 2 for r in rows):
                raise ValueError("no line has two comma-separated fields")
            mapping = {r[0].strip(): r[1].strip().lower() for r in rows if len(r) >= 2}
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise RtsError(f"cannot read split file ({exc})", path=path,
                       fix="write CSV lines 'name,split' or JSON {name: split}") from None
    bad = sorted({s for s in mapping.values() if s not in SPLITS})
    if bad:
        raise RtsError(f"unknown split name(s) {', '.join(bad)}", path=path, fix="use train, val or test")
    if not mapping:
        raise RtsError("split file is empty", path=path, fix="list 'name,split' lines")
    return mapping


def lookup(mapping: dict[str, str], *names: str) -> str | None:
    for n in names:
        if n in mapping:
            return mapping[n]
    return None


# ---------------------------------------------------------------------------------------------
# spatial grouping: no place in two splits, whatever file it comes from
# ---------------------------------------------------------------------------------------------
_RANK = {"train": 0, "val": 1, "test": 2}


@dataclass
class Unit:
    """One item to split, as the spatial guard sees it.

    ``footprint`` is the item's outline in the common CRS of the run (a shapely polygon: all four
    corners of its window, so rotated grids are right); ``pixel_area`` is one pixel's area in that
    CRS's units; ``cut`` is True for a chip cut from a larger raster (grouped by spatial blocks),
    False for a whole image (grouped with every image it overlaps). Units of different ``frame`` never overlap.
    """

    key: str
    site: str
    source: str
    footprint: Any
    pixel_area: float
    cut: bool
    frame: str = "map"  # "map": the common CRS; "pixels:FILE": an image without georeference, its own frame


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
                   pairs: list[tuple[int, int]]) -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """Split groups such that items at one place share a split, across all files.

    * A chip cut from a raster belongs to the spatial block (``block_px`` pixels of the coarsest
      cut raster, in the common CRS) that holds its centre: chips of two overlapping scenes (two
      dates of one place, copies) at the same place fall in the same block.
    * A whole image is grouped with every item of another file that it overlaps (union-find), so
      copies of one chip or two acquisitions of one place land in one split.

    ``pairs``: :func:`overlapping_pairs` of ``units``. Chips that straddle a block edge still overlap chips of
    the next block; :func:`drop_overlapping` leaves those out. Returns ``({key: (site, group)}, report)``; the
    group's site is the first (sorted) site among its members, so a group never spans two sites' draws.
    """
    import math

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
    joined = across = 0
    for a, b in pairs:
        ua, ub = units[a], units[b]
        across += ua.source != ub.source
        if ua.source == ub.source or (ua.cut and ub.cut):
            continue  # chips of one raster, or chips of two rasters: the blocks and the buffer handle them
        ra, rb = union_root(parent, index[names[a]]), union_root(parent, index[names[b]])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            joined += 1
    label = sorted(index, key=index.get)
    members: dict[int, list[Unit]] = defaultdict(list)
    for u, name in zip(units, names, strict=True):
        members[union_root(parent, index[name])].append(u)
    out: dict[str, tuple[str, str]] = {}
    for root, us in members.items():
        site = min(u.site for u in us)
        for u in us:
            out[u.key] = (site, label[root])
    return out, {"overlapping_pairs_across_files": across, "images_joined_across_files": joined}


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
        if ua.source != ub.source:
            cross.add(loser.key)
    return drop, cross
