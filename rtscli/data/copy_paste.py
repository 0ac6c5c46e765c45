"""Simple Copy-Paste: the slumps of one training chip pasted onto another.

Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation" (CVPR 2021):
a random subset of a donor image's instances, both images scale-jittered and flipped, is pasted onto the
target image; the target's masks lose the pixels now covered, fully occluded objects are dropped, the pasted
masks are added. Here every channel of the stacked image moves together (RGB, NDVI, terrain stay consistent),
and nothing is pasted onto the target's invalid (nodata) pixels nor taken from the donor's invalid ones.

The edge is blended lightly (the paper's optional blending): the pasted pixels themselves are the donor's
exactly, and a Gaussian-smoothed alpha (sigma ~1 px) feathers only *outwards*, into the target pixels around
them; ``sigma=0`` pastes hard. Pure numpy (and OpenCV's Gaussian blur), no dataset or model.
"""

from __future__ import annotations

import numpy as np

MIN_PIXELS = 8  # a pasted or partly covered instance smaller than this is dropped (the paper drops occluded ones)
SIGMA = 1.0  # px: the blend of the pasted edge into the target


def usable(masks: np.ndarray, valid: np.ndarray, *, min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """The donor instances worth pasting: at least ``min_pixels`` valid pixels.

    Args:
        masks: the donor's instance masks, (N, H, W), 0/1.
        valid: the donor's valid (not nodata) pixels, (H, W) bool.
        min_pixels: the smallest instance kept.

    Returns:
        Indices into ``masks``, (K,) int, ascending.
    """
    if not len(masks):
        return np.zeros(0, np.int64)
    counts = (masks.astype(bool) & valid.astype(bool)).sum(axis=(1, 2))
    return np.flatnonzero(counts >= min_pixels)


def shift(a: np.ndarray, dy: int, dx: int, shape: tuple[int, int]) -> np.ndarray:
    """``a`` moved ``dy`` rows down and ``dx`` columns right into a frame of ``shape``; zeros (False) elsewhere.

    Args:
        a: an array (..., h, w), e.g. an image (C, h, w), masks (N, h, w) or a valid mask (h, w).
        dy: rows to move down (negative: up).
        dx: columns to move right (negative: left).
        shape: the frame's (H, W).

    Returns:
        An array (..., H, W) of ``a``'s dtype: ``out[..., y + dy, x + dx] = a[..., y, x]`` where inside.
    """
    out = np.zeros(a.shape[:-2] + tuple(shape), a.dtype)
    h, w = a.shape[-2:]
    hh, ww = shape
    r0, r1 = max(0, -dy), min(h, hh - dy)
    c0, c1 = max(0, -dx), min(w, ww - dx)
    if r1 > r0 and c1 > c0:
        out[..., r0 + dy:r1 + dy, c0 + dx:c1 + dx] = a[..., r0:r1, c0:c1]
    return out


def paste(image: np.ndarray, masks: np.ndarray, valid: np.ndarray, d_image: np.ndarray, d_masks: np.ndarray,
          d_valid: np.ndarray, *, sigma: float = SIGMA, min_pixels: int = MIN_PIXELS
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Paste donor instances (already in the target's frame) onto a target image (Simple Copy-Paste).

    Pasted masks are restricted to pixels valid in both images and dropped below ``min_pixels``; under them
    the image becomes the donor's, in every channel. The target's masks lose the covered pixels; one that lost
    pixels and keeps fewer than ``min_pixels`` is dropped (the paper drops fully occluded objects). With
    ``sigma > 0`` the alpha is ``max(union, gaussian(union, sigma))`` on pixels valid in both: 1 on the pasted
    pixels, feathering outwards only. Source: Ghiasi et al., CVPR 2021.

    Args:
        image: the target image, (C, H, W) float32.
        masks: the target's instance masks, (N, H, W) 0/1.
        valid: the target's valid pixels, (H, W) bool.
        d_image: the donor image moved into the target's frame, (C, H, W) float32.
        d_masks: the donor masks to paste, in the target's frame, (M, H, W) 0/1.
        d_valid: the donor's valid pixels in the target's frame, (H, W) bool.
        sigma: the Gaussian blend of the edge in px; 0 pastes hard.
        min_pixels: the smallest instance kept (pasted, or target instance partly covered).

    Returns:
        ``(image (C, H, W) float32, masks (N' + M', H, W) uint8, M')``: the new image (a new array), the
        target's remaining masks followed by the pasted ones, and the number pasted (0: nothing changed).
    """
    ok = valid.astype(bool) & d_valid.astype(bool)
    pm = d_masks.astype(bool) & ok
    pm = pm[pm.sum(axis=(1, 2)) >= min_pixels]
    if not len(pm):
        return image, masks, 0
    union = pm.any(axis=0)
    if sigma > 0:
        import cv2

        blur = cv2.GaussianBlur(union.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
        alpha = np.where(ok, np.maximum(blur, union.astype(np.float32)), np.float32(0)).astype(np.float32)
    else:
        alpha = union.astype(np.float32)
    # exact at the ends: alpha 1 gives the donor's value, alpha 0 the target's
    out = (image * (1 - alpha) + d_image * alpha).astype(np.float32)
    out[:, union] = d_image[:, union]
    kept = masks.astype(bool)
    lost = (kept & union).any(axis=(1, 2)) if len(kept) else np.zeros(0, bool)
    kept = kept & ~union
    keep = ~(lost & (kept.sum(axis=(1, 2)) < min_pixels)) if len(kept) else np.zeros(0, bool)
    new = np.concatenate([kept[keep], pm]).astype(np.uint8)
    return out, new, len(pm)


def copy_paste(image: np.ndarray, masks: np.ndarray, valid: np.ndarray, region: tuple[int, int],
               d_image: np.ndarray, d_masks: np.ndarray, d_valid: np.ndarray, rng: np.random.Generator, *,
               sigma: float = SIGMA, min_pixels: int = MIN_PIXELS) -> tuple[np.ndarray, np.ndarray, int]:
    """Paste a random subset (at least one) of a donor's instances at a random place (Simple Copy-Paste).

    The subset's bounding box is moved to a random place inside ``region`` (the chip's part of the tile; where
    the box is larger than the region, a random overlap), then :func:`paste` pastes it. Draws from ``rng``
    only when the donor has a usable instance. Source: Ghiasi et al., CVPR 2021.

    Args:
        image: the target image, (C, H, W) float32 (H, W: the tile).
        masks: the target's instance masks, (N, H, W) 0/1.
        valid: the target's valid pixels, (H, W) bool (False on padding and nodata).
        region: ``(h, w)``: the chip's part of the tile, from its top-left corner.
        d_image: the donor image, (C, h', w') float32 (any size: it is jittered on its own).
        d_masks: the donor's instance masks, (M, h', w') 0/1.
        d_valid: the donor's valid pixels, (h', w') bool.
        rng: the generator of the subset and the place.
        sigma: the Gaussian blend of the edge in px; 0 pastes hard.
        min_pixels: the smallest instance kept.

    Returns:
        ``(image (C, H, W) float32, masks (N' + M', H, W) uint8, M')`` as :func:`paste` returns them; with
        no usable donor instance, the inputs and 0.
    """
    idx = usable(d_masks, d_valid, min_pixels=min_pixels)
    if not len(idx):
        return image, masks, 0
    n = int(rng.integers(1, len(idx) + 1))
    chosen = np.sort(rng.choice(idx, size=n, replace=False))
    sel = d_masks[chosen].astype(bool) & d_valid.astype(bool)
    union = sel.any(axis=0)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    bh, bw = int(rows[-1]) + 1 - r0, int(cols[-1]) + 1 - c0
    hh, ww = region
    y = int(rng.integers(0, hh - bh + 1)) if bh <= hh else int(rng.integers(hh - bh, 1))
    x = int(rng.integers(0, ww - bw + 1)) if bw <= ww else int(rng.integers(ww - bw, 1))
    dy, dx = y - r0, x - c0
    shape = (image.shape[1], image.shape[2])
    return paste(image, masks, valid, shift(d_image, dy, dx, shape), shift(sel, dy, dx, shape),
                 shift(d_valid.astype(bool), dy, dx, shape), sigma=sigma, min_pixels=min_pixels)
