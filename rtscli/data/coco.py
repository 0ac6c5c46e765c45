"""Instances and their COCO encoding.

Two sources of instances:

* a binary mask: one instance per outer contour found by OpenCV ``findContours`` (the paper's
  method), holes kept, specks below ``min_area`` pixels dropped and counted. The pixels of an
  instance are exactly the 8-connected component its contour traces.
* polygons (vector labels) in chip pixel coordinates: one instance per polygon feature, so slumps
  that touch stay apart.

Pixel coordinates follow COCO: x = column, y = row, (0, 0) is the top-left corner of the top-left
pixel; a pixel belongs to a polygon when its centre does (pycocotools rasterizes the same way).
Segmentations are written as polygons when the instance has no hole and as RLE when it has one
(``auto``), or always in one format (``polygon`` drops holes, ``rle`` is exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

SEGMENTATION_FORMATS = ("auto", "polygon", "rle")


@dataclass
class Instance:
    crop: np.ndarray  # bool, the instance's pixels inside its bounding box
    x0: int
    y0: int
    shape: tuple[int, int]  # (H, W) of the image it belongs to
    bbox: list[float]  # x, y, w, h
    area: float  # pixels: a whole count, except a COCO image kept whole keeps its source's (polygon) area
    segmentation: Any
    has_holes: bool
    source_id: Any = None
    iscrowd: int = 0  # 1: a crowd region (COCO), ignored by AP and not trained on
    pixels: int | None = None  # what its segmentation decodes to (pycocotools), pixels; None: crop.sum()

    def decoded_pixels(self) -> int:
        """The pixels its COCO segmentation decodes to (pycocotools, at the image's resolution): what every COCO
        reader, ``rts prepare --coco`` among them, sees of it; a polygon may decode to a pixel or two more or less
        than the mask it was drawn from."""
        return int(self.crop.sum()) if self.pixels is None else self.pixels

    def full_mask(self) -> np.ndarray:
        m = np.zeros(self.shape, dtype=bool)
        h, w = self.crop.shape
        m[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.crop
        return m


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def rle_encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _rings_of(geom: Any) -> tuple[list[list[float]], bool]:
    """Exterior rings of a (multi)polygon as flat COCO lists, and whether any hole exists."""
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    out, holes = [], False
    for p in polys:
        if p.is_empty:
            continue
        coords = np.asarray(p.exterior.coords)[:-1]
        if len(coords) >= 3:
            out.append([round(float(v), 3) for v in coords.ravel()])
        holes = holes or len(p.interiors) > 0
    return out, holes


def _crop_polygons(crop: np.ndarray, x0: int, y0: int) -> Any:
    """Exact pixel-edge polygons of a cropped mask, in image pixel coordinates (a shapely (multi)polygon)."""
    from rasterio.transform import Affine

    from rtscli.geometry.polygons import mask_to_polygon

    return mask_to_polygon(crop, Affine.translation(x0, y0))


def _make(crop: np.ndarray, x0: int, y0: int, shape_hw: tuple[int, int], fmt: str, geom: Any = None,
          source_id: Any = None) -> Instance:
    """Encode one instance; polygon segmentations take area and bbox from pycocotools' own
    rasterization, so they agree with what any COCO evaluator decodes.

    Args:
        crop: the instance's pixels inside its bounding box, bool ``(h, w)``.
        x0: column of the crop's top-left pixel in the image.
        y0: row of the crop's top-left pixel in the image.
        shape_hw: ``(H, W)`` of the image, pixels.
        fmt: ``auto``, ``polygon`` or ``rle`` (:data:`SEGMENTATION_FORMATS`).
        geom: the instance's outline in image pixel coordinates (shapely), or None to trace it from ``crop``.
        source_id: the label's id in its source, or None.

    Returns:
        The instance, with its COCO segmentation, area and bbox (and for a polygon the pixels it decodes to: its
        ``area`` and ``pixels``). A polygon that decodes to no pixel at all (thinner than a pixel) is written as
        RLE of ``crop`` instead.
    """
    from pycocotools import mask as mask_utils

    if geom is None:
        geom = _crop_polygons(crop, x0, y0)
    rings, holes = _rings_of(geom)
    h, w = shape_hw
    area = int(crop.sum())
    bbox = [float(x0), float(y0), float(crop.shape[1]), float(crop.shape[0])]
    a = 0
    if rings and not (fmt == "rle" or (fmt == "auto" and holes)):
        rle = mask_utils.merge(mask_utils.frPyObjects(rings, h, w))
        a = int(mask_utils.area(rle))
    if a == 0:  # RLE asked for, a hole kept (auto), or a polygon too thin to cover a pixel centre: RLE, exact
        inst = Instance(crop, x0, y0, shape_hw, bbox, area, None, holes, source_id)
        inst.segmentation = rle_encode(inst.full_mask())
        return inst
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return Instance(crop, x0, y0, shape_hw, bbox, a, rings, holes, source_id, pixels=a)


def too_small(inst: Instance, min_pixels: int) -> bool:
    """Whether ``--min-pixels`` drops an instance: the one rule of every ``rts prepare`` path (vector labels, and
    COCO annotations, whole or clipped at a chip's edge), so that a dataset and its ``rts export-coco`` read back
    keep the same instances.

    The measure is :meth:`Instance.decoded_pixels`: the pixels its COCO segmentation decodes to at the chip's (or
    image's) resolution, after clipping to the chip and removing nodata pixels, as pycocotools decodes it. Crowd
    regions are never dropped.

    Args:
        inst: the instance, its segmentation encoded (:func:`_make`, or an annotation kept as its source has it).
        min_pixels: the fewest pixels an instance keeps (``--min-pixels``), pixels.

    Returns:
        True when it is not crowd and decodes to fewer than ``min_pixels`` pixels.
    """
    return not inst.iscrowd and inst.decoded_pixels() < min_pixels


def instances_from_mask(mask: np.ndarray, *, min_area: int = 1, fmt: str = "auto") -> tuple[list[Instance], int]:
    """One instance per outer contour of a binary mask (OpenCV findContours, as the paper).

    The pixels of an instance are the 8-connected component its outer contour traces (holes
    excluded, islands inside holes are instances of their own). Returns (instances, specks dropped).
    Work and memory scale with the instances' bounding boxes, not with instances x image size.
    """
    import cv2

    m = (np.asarray(mask) > 0).astype(np.uint8)
    if not m.any():
        return [], 0
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    out: list[Instance] = []
    dropped = 0
    for i, contour in enumerate(contours):
        if hierarchy[0][i][3] != -1:  # a hole, belongs to its parent
            continue
        x, y = contour[0][0]
        k = labels[y, x]
        x0, y0, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            dropped += 1
            continue
        crop = labels[y0:y0 + h, x0:x0 + w] == k
        out.append(_make(crop, x0, y0, m.shape, fmt))
    return out, dropped


def instances_from_ids(labels: np.ndarray, *, min_area: int = 1, fmt: str = "auto") -> tuple[list[Instance], int]:
    """One instance per id of an instance-id mask (H, W) of whole numbers: 0 is background, every other value
    one slump, so slumps that touch stay apart (an id in several pieces is one instance). Returns
    (instances in id order, ids below ``min_area`` pixels dropped). Work scales with the labelled pixels."""
    lab = np.asarray(labels)
    rows, cols = np.nonzero(lab)
    if not len(rows):
        return [], 0
    ids = lab[rows, cols]
    order = np.argsort(ids, kind="stable")
    ids, rows, cols = ids[order], rows[order], cols[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    out: list[Instance] = []
    dropped = 0
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a < min_area:
            dropped += 1
            continue
        r, c = rows[a:b], cols[a:b]
        y0, x0 = int(r.min()), int(c.min())
        crop = np.zeros((int(r.max()) - y0 + 1, int(c.max()) - x0 + 1), dtype=bool)
        crop[r - y0, c - x0] = True
        out.append(_make(crop, x0, y0, lab.shape, fmt))
    return out, dropped


def instance_from_polygon(
    geom: Any, shape: tuple[int, int], *, valid: np.ndarray | None = None, min_area: int = 1,
    fmt: str = "auto", source_id: Any = None,
) -> Instance | None:
    """One instance from a polygon in chip pixel coordinates, or None if below ``min_area`` (:func:`too_small`:
    the pixels its written segmentation decodes to, which for a polygon may differ by a pixel or two from the
    pixels rasterio burns).

    Args:
        geom: the polygon (shapely), in chip pixel coordinates (x = column, y = row).
        shape: ``(H, W)`` of the chip, pixels.
        valid: bool ``(H, W)``, or None: removes nodata pixels from the mask (a slump cannot be seen there).
        min_area: the fewest pixels an instance keeps (``--min-pixels``), pixels.
        fmt: ``auto``, ``polygon`` or ``rle`` (:data:`SEGMENTATION_FORMATS`).
        source_id: the label's id in its source, or None.

    Returns:
        The instance, or None when it covers no (valid) pixel of the chip or is :func:`too_small`.
    """
    from rasterio.features import rasterize
    from shapely.geometry import box

    from rtscli.io.vector import polygonal

    # clipping can leave lines or points where a label only touches the chip edge: keep the area
    geom = polygonal(geom.intersection(box(0, 0, shape[1], shape[0])))
    if geom is None or geom.is_empty:
        return None
    mask = rasterize([(geom, 1)], out_shape=shape, fill=0, dtype="uint8").astype(bool)
    exact = True
    if valid is not None and not valid[mask].all():
        mask &= valid
        exact = False
    if not mask.any():
        return None
    x0, y0, x1, y1 = _crop_box(mask)
    inst = _make(mask[y0:y1, x0:x1], x0, y0, shape, fmt, geom=geom if exact else None, source_id=source_id)
    return None if too_small(inst, min_area) else inst  # the pixels it is written as, as rts prepare --coco counts


def annotation(inst: Instance, ann_id: int, image_id: int) -> dict:
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": inst.segmentation,
        "area": float(inst.area),
        "bbox": inst.bbox,
        "iscrowd": int(inst.iscrowd),
    }
    if inst.source_id is not None:
        ann["source_id"] = inst.source_id
    return ann


CATEGORIES = [{"id": 1, "name": "rts", "supercategory": "landform"}]


def empty_coco(description: str) -> dict:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": CATEGORIES,
    }


class CocoWriter:
    """Write a COCO file without holding it in memory.

    Images and annotations are appended as JSON lines to two temporary files beside the target
    and assembled into one COCO JSON document by :meth:`close`, line by line, so memory does not
    grow with the number of chips or instances.
    """

    def __init__(self, path: str | Path, description: str) -> None:
        """Open the two temporary files beside ``path`` (the COCO file to write, with ``description``)."""
        from pathlib import Path

        self.path = Path(path)
        self.description = description
        self._img = open(self.path.with_name(self.path.name + ".images.jsonl"), "w+")
        self._ann = open(self.path.with_name(self.path.name + ".annotations.jsonl"), "w+")
        self.images = 0
        self.annotations = 0

    def add_image(self, entry: dict) -> None:
        import json

        self._img.write(json.dumps(entry) + "\n")
        self.images += 1

    def add_annotation(self, ann: dict) -> None:
        import json

        self._ann.write(json.dumps(ann) + "\n")
        self.annotations += 1

    def close(self) -> None:
        import json
        import os

        head = empty_coco(self.description)
        with open(self.path, "w") as out:
            out.write("{")
            for key in ("info", "licenses", "categories"):
                out.write(f"{json.dumps(key)}: {json.dumps(head[key])}, ")
            for key, fh, n in (("images", self._img, self.images), ("annotations", self._ann, self.annotations)):
                out.write(f"{json.dumps(key)}: [")
                fh.seek(0)
                for i, line in enumerate(fh):
                    out.write(line.rstrip("\n"))
                    if i < n - 1:
                        out.write(", ")
                out.write("]")
                out.write(", " if key == "images" else "")
            out.write("}")
        for fh in (self._img, self._ann):
            fh.close()
            os.remove(fh.name)
