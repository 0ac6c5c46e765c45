"""The fields of ``rts merge``'s regional maps, shared by their writer (:mod:`rtscli.track.merge`) and readers
(``rts track`` and ``rts export`` through :mod:`rtscli.track.maps`).

A merged map holds one feature per slump of a period, with how many scenes saw it (``n_observed``), how many
looked where it lies (``n_covered``), and the date and scene of the outline kept (``date``, ``best_scene``). Its
coverage, the union of the scenes' valid footprints, is the ``<layer>_footprint`` layer of a GeoPackage (as
``rts predict`` writes a scene's), or the file ``<name>_footprint.parquet`` beside a GeoParquet map (a Parquet
file holds one layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtscli.io.schema import FOOTPRINT_SUFFIX

#: the per-slump fields, in the order they are written
FIELDS = ("id", "n_observed", "n_covered", "detection_rate", "partial_only", "date", "first_date", "last_date",
          "best_scene", "scenes", "score", "outline_score", "area_m2", "perimeter_m", "touches_edge",
          "touches_nodata", "model", "source")
#: the fields of the coverage layer: one row per block of the merge grid that a scene's footprint reaches
COVERAGE_FIELDS = ("block", "n_scenes", "first_date", "last_date", "area_km2")
#: the columns that mark a map as a merged one (``rts track`` dates it by its outlines' ``date``)
MARKERS = ("n_observed", "n_covered", "best_scene", "date")


def is_merged(columns: Any) -> bool:
    """Whether a layer with these columns is an ``rts merge`` output (it has every column of :data:`MARKERS`)."""
    names = {str(c) for c in columns}
    return all(m in names for m in MARKERS)


def parquet_coverage(path: str | Path) -> Path:
    """Where the coverage of a GeoParquet map lies: ``<name>_footprint.parquet`` beside it."""
    p = Path(path)
    return p.with_name(f"{p.stem}{FOOTPRINT_SUFFIX}{p.suffix}")


def is_coverage_file(path: str | Path) -> bool:
    """Whether ``path`` is the coverage file beside a GeoParquet map (not a map of slumps itself)."""
    p = Path(path)
    return p.suffix.lower() in (".parquet", ".geoparquet") and p.stem.endswith(FOOTPRINT_SUFFIX)
