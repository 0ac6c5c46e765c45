"""Label policy: which features of label files are slumps, which are background, which repeat another.

Label files (one per site, any format and CRS) are read once each by :func:`rtscli.io.vector.read_polygons`;
here (:class:`LabelSet`) they become one layer of slumps per raster CRS, with where each feature came from, ARTS
background areas (``TrainClass`` ``Negative``) marked, and near-identical features (the same slump drawn twice)
found and dropped. A file is reprojected once per CRS, and only into the CRS of rasters it may reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rtscli.errors import RtsError
from rtscli.geometry.polygons import overlap
from rtscli.io.raster import crs_name
from rtscli.io.schema import TRAIN_CLASS, column
from rtscli.io.vector import LabelReport, layer_names, read_polygons, reproject_polygons


#: two label polygons with at least this IoU are the same slump drawn twice
DUPLICATE_IOU = 0.9


#: pairs overlapping this much (but less than DUPLICATE_IOU) are reported: labels of several dates stacked?
OVERLAP_IOU = 0.5


def duplicate_labels(geoms: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Near-identical label polygons: returns (positions of the features that repeat an earlier one,
    the other pairs ``(a, b)``, a < b, overlapping by IoU >= OVERLAP_IOU).

    A feature whose IoU with an earlier kept feature reaches :data:`DUPLICATE_IOU` repeats it (the same
    slump drawn twice, or the same outline at two dates); the first in file order is the one kept.
    """
    from shapely import STRtree

    geoms = list(geoms)
    if len(geoms) < 2:
        return [], []
    left, right = STRtree(geoms).query(geoms, predicate="intersects")
    dropped: set[int] = set()
    overlapping = []
    for a, b in sorted((a, b) for a, b in zip(left.tolist(), right.tolist(), strict=True) if a < b):
        iou = overlap(geoms[a], geoms[b], "iou")
        if iou <= 0:
            continue
        if iou >= DUPLICATE_IOU:
            if a not in dropped:
                dropped.add(b)
        elif iou >= OVERLAP_IOU:
            overlapping.append((a, b))
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


@dataclass
class LabelFile:
    """One label file, read once in its own CRS; its reprojections are made once per CRS and kept."""

    path: Path
    gdf: Any  # GeoDataFrame in the file's own CRS: label_file, source_id, negative, uid, geometry
    reprojected: dict[str, Any] = field(default_factory=dict)  # {CRS WKT: the features in that CRS}

    def in_crs(self, crs: Any) -> Any:
        """The features in ``crs``: the file's own, or reprojected once per CRS (logged once:
        :func:`rtscli.io.vector.reproject_polygons`)."""
        if self.gdf.crs == crs:
            return self.gdf
        key = crs.to_wkt()
        if key not in self.reprojected:
            self.reprojected[key] = reproject_polygons(self.gdf, crs, self.path)
        return self.reprojected[key]

    def may_reach(self, crs: Any, footprints: list[Any]) -> bool:
        """Whether the file's features may reach one of ``footprints`` (outlines in ``crs``): its bounds are compared
        with theirs in ``crs``, then theirs with its bounds in its own CRS. When a bounding box cannot be carried
        into the other CRS (infinite or inverted), the answer is yes: the reprojection then says what is wrong."""
        from shapely.geometry import box

        if not len(self.gdf):
            return False
        own = self.gdf.crs.to_wkt()
        bounds = tuple(float(v) for v in self.gdf.total_bounds)
        if self.gdf.crs == crs:
            return any(box(*bounds).intersects(fp) for fp in footprints)
        mine = _bounds_in(bounds, own, crs)
        if mine is None or any(mine.intersects(fp) for fp in footprints):
            return True
        for fp in footprints:
            theirs = _bounds_in(fp.bounds, crs, own)
            if theirs is None or theirs.intersects(box(*bounds)):
                return True
        return False


def _bounds_in(bounds: tuple[float, ...], src: Any, dst: Any) -> Any | None:
    """The box of ``bounds`` (xmin, ymin, xmax, ymax in ``src``'s units) carried into ``dst`` (edges densified), or
    None when it cannot be (a failed transform, infinite coordinates, or a box across the antimeridian)."""
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    try:
        b = transform_bounds(src, dst, *bounds, densify_pts=21)
    except Exception:  # pyproj or GDAL refusing the transform: cannot tell
        return None
    if not np.isfinite(b).all() or b[0] > b[2] or b[1] > b[3]:
        return None
    return box(*b)


class LabelSet:
    """One or several label files (one per site, in any CRS each), each read once, and their layers in the rasters'
    CRSs.

    Each file is read by :func:`read_polygons` (repaired, non-polygons dropped) in its own CRS. Every feature keeps
    where it came from: ``label_file`` (the file's path) and ``source_id`` (its row in its file, counted from 0 as GIS
    software does; ``"NAME#ROW"`` when there are several files), which the instances carry; ``uid`` numbers the
    features of all files in order. A file with an ARTS ``TrainClass`` field gives its ``Negative`` features as
    background areas: column ``negative`` true (chips there are kept as negatives; they never become slumps).
    :meth:`layers` then gives, per raster CRS, the features of the files that may reach those rasters, each file
    reprojected once per CRS and only where it is needed, with near-identical slump features dropped.

    Args:
        paths: the label files.
        assume_crs: the CRS of a file that has none (``--labels-crs``).
        layer: the layer to read (``--labels-layer``); it applies to the files that have several layers.

    Raises:
        RtsError: a missing or unreadable file, an unknown layer, no CRS, no features, or an ARTS ``TrainClass`` value
            that is neither Positive nor Negative.
    """

    def __init__(self, paths: list[Path], *, assume_crs: Any = None, layer: str | None = None) -> None:
        self.files: list[LabelFile] = []
        self.report = LabelReport()
        self.dropped: set[int] = set()  # uids of the features dropped as repeats of an earlier one
        uid = 0
        for path in paths:
            this_layer = layer if layer is None or len(paths) == 1 or len(layer_names(Path(path))) > 1 else None
            gdf, rep = read_polygons(path, None, assume_crs=assume_crs, layer=this_layer)
            rows = [int(i) for i in gdf.index]  # the file's own row numbers (dropped features leave gaps)
            ids = rows if len(paths) == 1 else [f"{Path(path).name}#{i}" for i in rows]
            neg = negatives_of(gdf, Path(path))
            neg = np.zeros(len(gdf), bool) if neg is None else neg
            self.report.negatives += int(neg.sum())
            gdf = gdf.assign(label_file=str(path), source_id=ids, negative=neg,
                             uid=np.arange(uid, uid + len(gdf)))[["label_file", "source_id", "negative", "uid",
                                                                  "geometry"]]
            uid += len(gdf)
            self.files.append(LabelFile(Path(path), gdf))
            for name in ("features", "repaired", "empty", "not_polygon"):
                setattr(self.report, name, getattr(self.report, name) + getattr(rep, name))
            self.report.notes += rep.notes

    def layers(self, scenes: Mapping[str, tuple[Any, list[Any]]], *, dedupe: bool = True) -> dict[str, Any]:
        """The labels in each raster CRS: ``{CRS WKT: GeoDataFrame}`` of the files that may reach its rasters.

        A file is reprojected (and logged) once per CRS, and only into the CRS of rasters its bounds reach
        (:meth:`LabelFile.may_reach`). Near-identical slump features (:func:`duplicate_labels`) are found in each
        layer, where the files that share a place meet; a feature that repeats an earlier one (file order) in any
        layer is dropped from all (with ``dedupe``). Fills in the report's ``duplicates``,
        ``duplicates_dropped``, ``overlapping_pairs`` and ``reprojected_from`` (one entry per file: the CRS it was
        reprojected from, or None).

        Args:
            scenes: ``{CRS WKT: (that CRS, the outlines of its rasters in it)}``.
            dedupe: drop the features that repeat an earlier one (``--dedupe-labels``), else only count them.

        Returns:
            ``{CRS WKT: GeoDataFrame in that CRS}`` (empty where no file reaches those rasters).

        Raises:
            RtsError: a reprojection to infinite coordinates (a wrong CRS in the file).
        """
        import geopandas as gpd
        import pandas as pd

        out = {}
        for key, (crs, footprints) in scenes.items():
            parts = [f.in_crs(crs) for f in self.files if f.may_reach(crs, footprints)]
            frame = pd.concat(parts, ignore_index=True) if parts else self.files[0].gdf.iloc[:0]
            # the files' own CRSs equal ``crs`` (in_crs), however their .prj spells it: one CRS object for the layer
            out[key] = gpd.GeoDataFrame(frame, geometry="geometry").set_crs(crs, allow_override=True)
        repeats: set[int] = set()
        pairs: set[tuple[int, int]] = set()
        for gdf in out.values():
            slumps = np.flatnonzero(~gdf["negative"].to_numpy(bool))  # background areas are not slumps drawn twice
            uids = gdf["uid"].to_numpy()[slumps]
            found, overlapping = duplicate_labels(gdf.geometry.values[slumps])
            repeats.update(int(uids[k]) for k in found)
            pairs.update((int(uids[a]), int(uids[b])) for a, b in overlapping)
        self.report.duplicates = len(repeats)
        self.report.overlapping_pairs = len(pairs)
        if repeats and dedupe:
            self.dropped = repeats
            self.report.duplicates_dropped = len(repeats)
            out = {k: g[~g["uid"].isin(repeats)] for k, g in out.items()}
        sources = [crs_name(f.gdf.crs) if f.reprojected else None for f in self.files]
        self.report.reprojected_from = sources[0] if len(sources) == 1 else ", ".join(str(s) for s in sources)
        return out

    def features_per_file(self) -> dict[str, int]:
        """Label features kept per label file (after repairs and duplicates), by the file's path."""
        return {str(f.path): int((~f.gdf["uid"].isin(self.dropped)).sum()) for f in self.files}

    def bounds_in(self, crs: Any) -> tuple[float, ...] | None:
        """The bounds ``(xmin, ymin, xmax, ymax)`` of all the labels in ``crs`` (each file's bounds carried over), or
        None when there are none or they cannot be carried into ``crs``."""
        boxes = []
        for f in self.files:
            if not len(f.gdf):
                continue
            b = tuple(float(v) for v in f.gdf.total_bounds)
            if f.gdf.crs == crs:
                boxes.append(b)
            elif (carried := _bounds_in(b, f.gdf.crs.to_wkt(), crs)) is not None:
                boxes.append(tuple(carried.bounds))
        if not boxes:
            return None
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes))
