"""COCO annotations to instances, checked against their image before anything is decoded.

A segmentation (polygons, compressed or uncompressed RLE) is only trusted as far as its image: an RLE of
another size, counts that do not add up, or polygons far outside are left out, never allocated. Masks of
images larger than the whole-read budget are decoded within the annotation's own box only.
:class:`CocoReader` turns the annotations of a COCO image (or of one chip window of it) into
:class:`rtscli.data.coco.Instance` objects for ``rts prepare``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtscli.data import coco
from rtscli.data.inputs import Item
from rtscli.data.options import PrepareOptions
from rtscli.errors import RtsError


def to_rle(seg: Any, h: int, w: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE (pycocotools), checked
    first (:func:`check_segmentation`): nothing pycocotools allocates is sized by the file alone.

    Args:
        seg: the annotation's ``segmentation``: a list of flat polygons, or an RLE dict.
        h: the image's height, pixels.
        w: the image's width, pixels.

    Returns:
        The compressed RLE (``size``, ``counts``).

    Raises:
        ValueError: what :func:`check_segmentation` refuses.
    """
    from pycocotools import mask as mask_utils

    rings = check_segmentation(seg, h, w)
    if rings is not None:
        return mask_utils.merge(mask_utils.frPyObjects(rings, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    counts = seg["counts"]
    return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}


#: pycocotools draws a polygon on a 5 times finer grid, with one point per fine pixel along its edges
_POLY_SCALE = 5


def check_segmentation(seg: Any, h: int, w: int) -> list[list[float]] | None:
    """Check a COCO segmentation against its image (``h`` x ``w`` px) before pycocotools sees it: a polygon's
    coordinates must be numbers, and its edges short enough to be drawn within the whole-read budget
    (pycocotools allocates a point per fifth of a pixel along them, so coordinates of 1e9 take gigabytes, or a
    crash); an RLE's ``size`` must be the image's and its counts must add up to its pixels (else pycocotools
    reads or writes past its mask).

    Args:
        seg: the annotation's ``segmentation``.
        h: the image's height, pixels.
        w: the image's width, pixels.

    Returns:
        The polygons (rings of 3 or more points, flat ``[x, y, ...]``) of a polygon segmentation; None for RLE.

    Raises:
        ValueError: what is wrong, in a few words (the annotation is left out and named in a warning).
    """
    from rtscli.io.raster import whole_read_budget

    if isinstance(seg, list):
        rings = [r for r in seg if isinstance(r, list) and len(r) >= 6 and len(r) % 2 == 0]
        if not rings:
            odd = any(isinstance(r, list) and len(r) % 2 for r in seg)
            raise ValueError("a polygon with an odd number of coordinates" if odd else
                             "no polygon with 3 or more points")
        work = 0.0
        for r in rings:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r):
                raise ValueError("a polygon coordinate that is not a number")
            xy = np.asarray(r, np.float64).reshape(-1, 2)
            if not np.isfinite(xy).all():
                raise ValueError("a polygon coordinate that is not finite")
            step = np.abs(xy - np.roll(xy, -1, axis=0)).max(axis=1)
            work += float(step.sum()) * _POLY_SCALE + len(step)
        if work > whole_read_budget():
            raise ValueError(f"polygon edges {work / _POLY_SCALE:.3g} px long in all on an image of {w} x {h} px "
                             "(coordinates far outside the image?)")
        return rings
    if not isinstance(seg, dict) or "counts" not in seg:
        raise ValueError("neither polygons nor RLE")
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError("an RLE without a size [height, width]")
    if size != [h, w]:
        raise ValueError(f"an RLE of size {size[1]} x {size[0]} px on an image of {w} x {h} px")
    runs = rle_counts(seg["counts"])
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts that add up to {int(runs.sum())} pixels, not the image's {h * w}")
    return None


def rle_counts(counts: Any) -> np.ndarray:
    """The run lengths of an RLE's ``counts`` (a list, or COCO's compressed string as pycocotools writes it:
    ``rleFrString``), as int64, background first.

    Raises:
        ValueError: a count that is negative or not a whole number, or a string that is not COCO's encoding.
    """
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise ValueError("RLE counts that are not whole numbers >= 0")
        return np.asarray(counts, np.int64)
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", "replace")
    if not isinstance(counts, str):
        raise ValueError("RLE counts that are neither a list nor a string")
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("a compressed RLE string cut short")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError("a compressed RLE string with a character outside COCO's encoding")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if x < 0:
            raise ValueError("a compressed RLE string with a negative count")
        out.append(x)
    return np.asarray(out, np.int64)


def decode_crop(seg: Any, h: int, w: int, *, path: Path, what: str) -> tuple[np.ndarray, int, int] | None:
    """An annotation's mask cropped to its pixels: ``(bool crop, x0, y0)``, or None when no pixel of it lies
    inside the image (``h`` x ``w`` px).

    An image within the whole-read budget (:func:`rtscli.io.raster.whole_read_budget`) is decoded whole by
    pycocotools, then cropped. A larger one (cut into chips) is never decoded whole: pycocotools' compressed RLE
    of the annotation (which is as large as its outline, not as the image) is unrolled into its own box only,
    checked against the budget first; the pixels are the same.

    Args:
        seg: the annotation's ``segmentation`` (polygons or RLE).
        h: the image's height, pixels.
        w: the image's width, pixels.
        path: the COCO file, named when the annotation cannot be decoded within the budget.
        what: the annotation, for that message (``annotation 7 of image 3``).

    Raises:
        ValueError: a segmentation :func:`check_segmentation` refuses.
        RtsError: the annotation's box is larger than the whole-read budget, or the image has 2**32 pixels or
            more (pycocotools counts pixels in 32 bits).
    """
    from pycocotools import mask as mask_utils

    from rtscli.io.raster import whole_read_budget

    if h * w <= whole_read_budget():
        m = mask_utils.decode(to_rle(seg, h, w)).astype(bool)
        if not m.any():
            return None
        x0, y0, x1, y1 = coco._crop_box(m)
        return m[y0:y1, x0:x1], x0, y0
    if h * w >= 2**32:
        raise RtsError(f"{what}: its image is {w} x {h} px, too large for COCO masks (pycocotools counts pixels in "
                       "32 bits)", path=path, fix="cut the image into smaller ones (e.g. rio clip) with their "
                                                  "annotations")
    return _runs_crop(rle_counts(to_rle(seg, h, w)["counts"]), h, w, path=path, what=what)


def _runs_crop(runs: np.ndarray, h: int, w: int, *, path: Path, what: str) -> tuple[np.ndarray, int, int] | None:
    """The pixels of an RLE (``runs``: alternating background and mask run lengths, column by column over an
    ``h`` x ``w`` image) as ``(bool crop of its box, x0, y0)``, or None when it has none; the box is checked
    against the whole-read budget before it is allocated."""
    from rtscli.io.raster import check_whole_read

    ends = np.cumsum(runs)
    starts = ends - runs
    s, e = starts[1::2], ends[1::2]
    keep = e > s
    s, e = s[keep], e[keep] - 1  # each run of mask pixels: first and last pixel, column-major
    if not len(s):
        return None
    c0, r0, c1, r1 = s // h, s % h, e // h, e % h
    multi = c1 > c0  # runs that wrap into the next column reach the top and the bottom row
    x0, x1 = int(c0.min()), int(c1.max()) + 1
    y0 = 0 if multi.any() else int(r0.min())
    y1 = h if multi.any() else int(r1.max()) + 1
    check_whole_read(path, x1 - x0, y1 - y0, 1, f"{what}: its box",
                     fix="split the annotation into smaller ones, or leave it out")
    crop = np.zeros((y1 - y0, x1 - x0), bool)
    for a, ra, b, rb in zip((c0 - x0).tolist(), (r0 - y0).tolist(), (c1 - x0).tolist(), (r1 - y0).tolist(),
                            strict=True):
        if a == b:
            crop[ra:rb + 1, a] = True
        else:
            crop[ra:, a] = True
            crop[:, a + 1:b] = True
            crop[:rb + 1, b] = True
    return crop, x0, y0


class CocoReader:
    """The instances of COCO items (:meth:`instances`), for :func:`rtscli.data.chips.iter_chips`.

    The decoded annotations of the image being read are kept while its items come (one after another when it
    is cut into chips): per annotation its mask cropped to its bounding box, so memory scales with the slumps,
    not the image. Unreadable segmentations (a two-point polygon, an odd number of coordinates) and empty ones
    are left out and kept in ``bad`` (``(file, annotation id, why)``) for one warning at the end.
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.masks: list[tuple[dict, np.ndarray, int, int] | None] = []
        self.bad: list[tuple[str, Any, str]] = []

    def _decoded(self, item: Item) -> list[tuple[dict, np.ndarray, int, int] | None]:
        if self.path != item.image.path:
            h, w = item.image.height, item.image.width
            self.masks = []
            for ann in item.coco.annotations:
                what = f"annotation {ann['id']} of image {item.coco.id}"
                try:
                    found = decode_crop(ann["segmentation"], h, w, path=item.coco.json, what=what)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    self.bad.append((item.coco.json.name, ann["id"], str(exc)))
                    self.masks.append(None)
                    continue
                if found is None:
                    self.bad.append((item.coco.json.name, ann["id"], "no pixel inside the image"))
                    self.masks.append(None)
                    continue
                crop, x0, y0 = found
                self.masks.append((ann, crop, x0, y0))
            self.path = item.image.path
        return self.masks

    def instances(self, item: Item, valid: np.ndarray, opts: PrepareOptions) -> tuple[list[coco.Instance], int, int]:
        """The instances of one item: ``(instances, annotations below --min-pixels dropped, pieces dropped at
        chip edges)``.

        A whole image keeps each annotation's segmentation, area and bbox as the source has them (area and bbox
        of the decoded mask where missing); a chip window gets each annotation's mask clipped to it (its
        ``valid`` pixels only), encoded by ``opts.segmentation``. Crowd regions stay crowd (RLE). ``--min-pixels``
        is :func:`rtscli.data.coco.too_small`, the rule of the vector path too: the pixels each annotation (or
        piece) decodes to.

        Args:
            item: a COCO item (``item.coco`` set): a whole image, or a window (col_off, row_off, width, height)
                of it, pixels.
            valid: bool ``(H, W)`` of the item's chip: the pixels with data.
            opts: the run's options (``min_area``, pixels; ``segmentation``).

        Returns:
            ``(instances in chip pixels, annotations below --min-pixels dropped, pieces dropped at chip edges)``.
        """
        rec = item.coco
        out: list[coco.Instance] = []
        clipped = specks = 0
        for entry in self._decoded(item):
            if entry is None:
                continue
            ann, crop, x0, y0 = entry
            crowd = int(bool(ann.get("iscrowd")))
            sid = f"{rec.source_id_prefix}{ann['id']}" if rec.source_id_prefix else ann["id"]
            if item.window is None:
                whole = _whole(ann, crop, x0, y0, item.image.height, item.image.width, crowd, sid)
                if coco.too_small(whole, opts.min_area):  # --min-pixels: the rule of the vector path too
                    specks += 1
                    continue
                out.append(whole)
                continue
            c, r, w, h = item.window
            cx0, cy0 = max(x0, c), max(y0, r)
            cx1, cy1 = min(x0 + crop.shape[1], c + w), min(y0 + crop.shape[0], r + h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            piece = crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] & valid[cy0 - r:cy1 - r, cx0 - c:cx1 - c]
            if not piece.any():
                continue
            px0, py0, px1, py1 = coco._crop_box(piece)
            inst = coco._make(piece[py0:py1, px0:px1], cx0 - c + px0, cy0 - r + py0, (h, w),
                              "rle" if crowd else opts.segmentation, source_id=sid)
            inst.iscrowd = crowd
            if coco.too_small(inst, opts.min_area):  # the pixels it is written as, as for vector labels
                clipped += 1
                continue
            out.append(inst)
        return out, specks, clipped


def _whole(ann: dict, crop: np.ndarray, x0: int, y0: int, h: int, w: int, crowd: int, sid: Any) -> coco.Instance:
    """An annotation of an image kept whole, as the source has it; a missing area or bbox is that of its
    decoded mask (``crop`` at ``x0, y0``: what pycocotools' ``area`` and ``toBbox`` give)."""
    seg = ann["segmentation"]
    area = ann.get("area")
    bbox = ann.get("bbox")
    if area is None:
        area = float(crop.sum())
    if not (isinstance(bbox, list) and len(bbox) == 4):
        bbox = [float(x0), float(y0), float(crop.shape[1]), float(crop.shape[0])]
    if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
        seg = {**seg, "counts": seg["counts"].decode("ascii")}
    return coco.Instance(crop, x0, y0, (h, w), [float(v) for v in bbox], float(area), seg, False, sid, crowd)
