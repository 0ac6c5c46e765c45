"""How the user names the splits: the split names (:data:`SPLITS`), ``--split`` fractions (:func:`parse_fractions`)
and ``--split-file`` (:func:`read_split_file`, :func:`lookup`).

How each item of ``rts prepare`` gets its split is :mod:`rtscli.data.split_plan`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

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
