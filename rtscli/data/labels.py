"""Label policy: which features of label files are slumps, which are background, which repeat another.

Label files (one per site, any format and CRS) are read by :func:`rtscli.io.vector.read_polygons`; here
they become one layer of slumps in the rasters' CRS, with where each feature came from, ARTS background
areas (``TrainClass`` ``Negative``) marked, and near-identical features (the same slump drawn twice)
found and dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError
from rtscli.geometry.polygons import overlap
from rtscli.io.schema import TRAIN_CLASS, column
from rtscli.io.vector import LabelReport, layer_names, read_polygons


#: two label polygons with at least this IoU are the same slump drawn twice
DUPLICATE_IOU = 0.9


#: pairs overlapping this much (but less than DUPLICATE_IOU) are reported: labels of several dates stacked?
OVERLAP_IOU = 0.5


def duplicate_labels(geoms: Any) -> tuple[list[int], int]:
    """Near-identical label polygons: returns (positions of the features that repeat an earlier one,
    number of other pairs overlapping by IoU >= OVERLAP_IOU).

    A feature whose IoU with an earlier kept feature reaches :data:`DUPLICATE_IOU` repeats it (the same
    slump drawn twice, or the same outline at two dates); the first in file order is the one kept.
    """
    from shapely import STRtree

    geoms = list(geoms)
    if len(geoms) < 2:
        return [], 0
    left, right = STRtree(geoms).query(geoms, predicate="intersects")
    dropped: set[int] = set()
    overlapping = 0
    for a, b in sorted((a, b) for a, b in zip(left.tolist(), right.tolist(), strict=True) if a < b):
        iou = overlap(geoms[a], geoms[b], "iou")
        if iou <= 0:
            continue
        if iou >= DUPLICATE_IOU:
            if a not in dropped:
                dropped.add(b)
        elif iou >= OVERLAP_IOU:
            overlapping += 1
    return sorted(dropped), overlapping


def negatives_of(gdf: Any, path: Path) -> np.ndarray | None:
    """Which features of a label layer are ARTS background areas (``TrainClass`` ``Negative``, case and spaces
    ignored); None when the layer has no TrainClass field. Raises :class:`RtsError` for a value that is neither
    Positive nor Negative (ARTS: github.com/whrc/ARTS, Metadata_Format_Summary.csv)."""
    c = column(gdf, TRAIN_CLASS)
    if c is None:
        return None
    v = gdf[c].astype(str).str.strip().str.lower()
    bad = sorted(set(v) - {"positive", "negative"})
    if bad:
        raise RtsError(f"field {c} holds {bad[0]!r}; ARTS uses Positive and Negative", path=path,
                       fix="fix those features' TrainClass")
    return v.eq("negative").to_numpy()


def read_labels(paths: list[Path], target_crs: Any, *, assume_crs: Any = None, dedupe: bool = True,
                layer: str | None = None) -> tuple[Any, LabelReport]:
    """Read one or several label files (one per site, in any CRS each) as one layer in ``target_crs``.

    Each file is read by :func:`read_polygons` (repaired, reprojected explicitly and logged). Every feature keeps
    where it came from: ``label_file`` (the file's path) and ``source_id`` (its row in its file, counted from 0
    as GIS software does; ``"NAME#ROW"`` when there are several files), which the instances carry.
    ``layer`` applies to the files that have several layers.
    A file with an ARTS ``TrainClass`` field gives its ``Negative`` features as background areas: column
    ``negative`` true (chips there are kept as negatives; they never become slumps).
    Near-identical slump features are found across all files (:func:`duplicate_labels`). Returns
    ``(GeoDataFrame, LabelReport)`` with the counts of all files (``reprojected_from``: one entry per file).
    """
    import geopandas as gpd
    import pandas as pd

    frames, total = [], LabelReport()
    sources = []
    for path in paths:
        this_layer = layer if layer is None or len(paths) == 1 or len(layer_names(Path(path))) > 1 else None
        gdf, rep = read_polygons(path, target_crs, assume_crs=assume_crs, layer=this_layer)
        rows = [int(i) for i in gdf.index]  # the file's own row numbers (dropped features leave gaps)
        ids = rows if len(paths) == 1 else [f"{Path(path).name}#{i}" for i in rows]
        neg = negatives_of(gdf, Path(path))
        neg = np.zeros(len(gdf), bool) if neg is None else neg
        total.negatives += int(neg.sum())
        frames.append(gdf.assign(label_file=str(path), source_id=ids, negative=neg)[
            ["label_file", "source_id", "negative", "geometry"]])
        total.features += rep.features
        total.repaired += rep.repaired
        total.empty += rep.empty
        total.not_polygon += rep.not_polygon
        total.notes += rep.notes
        sources.append(rep.reprojected_from)
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=frames[0].crs)
    total.reprojected_from = sources[0] if len(paths) == 1 else ", ".join(str(s) for s in sources)
    slumps = np.flatnonzero(~gdf["negative"].to_numpy(bool))  # background areas are not slumps drawn twice
    found, total.overlapping_pairs = duplicate_labels(gdf.geometry.values[slumps])
    repeats = [int(slumps[k]) for k in found]
    total.duplicates = len(repeats)
    if repeats and dedupe:
        gdf = gdf.drop(index=gdf.index[repeats])
        total.duplicates_dropped = len(repeats)
    return gdf, total
