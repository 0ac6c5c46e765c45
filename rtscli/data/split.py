"""Train/val/test splits: within each site (the paper's scheme), by group, with a fixed seed.

A *group* is the unit that is never divided between splits: an image for per-sample chips, a
spatial block of chips for chips cut from a large scene (neighbouring chips overlap, so they go to
the same split). An explicit split file overrides all of this.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Hashable, Iterable

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
