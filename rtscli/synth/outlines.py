"""Slump outlines: the demo's horseshoe (:func:`slump_shape`) and the elongated, gullied one of ``--realism hard``
(:func:`gullied_shape`); :func:`outline` picks by the realism level (:mod:`rtscli.synth.realism`).

Every shape is built in the slump's own frame (u downslope, v across) and returned in scene pixel coordinates
(x = column, y = row) as ``(outline, tongue, headwall)``: the label, its wet debris tongue, and the bright headwall
arc along its upslope rim (both inside the outline).
"""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import LineString, Polygon
from shapely.ops import unary_union

from rtscli.synth.realism import Realism

Shape = tuple[Polygon, Polygon, Polygon]


def _local_to_scene(cx, cy, ux, uy, u, v):
    return np.c_[cx + u * ux - v * uy, cy + u * uy + v * ux]


def slump_shape(cx: float, cy: float, ux: float, uy: float, radius: float, rng: np.random.Generator) -> Shape:
    """A horseshoe scar opening towards (ux, uy), with a lobate debris tongue and a headwall arc (``--realism demo``).

    Args:
        cx: the scar's centre, column (pixels).
        cy: the scar's centre, row (pixels).
        ux: downslope unit vector, x.
        uy: downslope unit vector, y.
        radius: the scar's radius, pixels.
        rng: the random generator.

    Returns:
        ``(outline, tongue, headwall)`` in scene pixel coordinates.
    """
    n = 96
    th = np.linspace(0.0, 2 * math.pi, n, endpoint=False)  # angle from the downslope axis
    rad = np.ones(n)
    for k in range(3, 8):
        rad += (0.12 / math.sqrt(k)) * rng.uniform(0.2, 1.0) * np.sin(k * th + rng.uniform(0, 2 * math.pi))
    c = np.cos(th)
    rad *= 1.0 - 0.28 * np.clip(c, 0, None) ** 2  # narrower towards the outlet
    a_u, a_v = radius * rng.uniform(0.75, 0.95), radius * rng.uniform(1.0, 1.25)
    scar = Polygon(_local_to_scene(cx, cy, ux, uy, a_u * rad * c, a_v * rad * np.sin(th))).buffer(0)

    length = radius * rng.uniform(0.6, 1.4)
    width = radius * rng.uniform(0.28, 0.48)
    t_c = a_u * 0.65 + length / 2
    tt = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    trad = 1.0 + 0.1 * np.sin(3 * tt + rng.uniform(0, 6.3)) * (np.cos(tt) > 0)
    tongue = Polygon(
        _local_to_scene(cx, cy, ux, uy, t_c + (length / 2) * trad * np.cos(tt), width * trad * np.sin(tt))
    ).buffer(0)
    close = max(radius * 0.12, 1.0)
    outline = unary_union([scar, tongue]).buffer(close).buffer(-close)
    # headwall: the upslope arc of the scar rim
    sel = c < -0.35
    rim = _local_to_scene(cx, cy, ux, uy, (a_u * rad * c)[sel] * 0.97, (a_v * rad * np.sin(th))[sel] * 0.97)
    order = np.argsort(np.arctan2(np.sin(th[sel]), -c[sel]))
    head = LineString(rim[order]).buffer(max(1.2, radius * 0.05), cap_style="flat")
    return outline, tongue.intersection(outline), head.intersection(outline)


def gullied_shape(x: float, y: float, ux: float, uy: float, radius: float, rng: np.random.Generator,
                  real: Realism, *, anchored: bool) -> Shape:
    """An elongated scar with a scalloped headwall cut by gullies and a narrow debris tongue (``--realism hard``).

    The aspect ratio is drawn log-uniform from ``real.aspect``; the long axis runs downslope (along a drainage line)
    on ``real.along_slope`` of the slumps, else along the slope (a shore-parallel scar). The upslope rim carries
    short-wave scallops and ``real.gullies`` gullies: narrow, wandering fingers cut upslope into the tundra, 1-2 px
    to a few pixels wide. The area is about that of a disc of ``radius``.

    Args:
        x: the anchor, column (pixels): on a shore or bank the scar's downslope end, else its centre.
        y: the anchor, row (pixels).
        ux: downslope unit vector, x.
        uy: downslope unit vector, y.
        radius: the radius of the disc of the same area, pixels.
        rng: the random generator.
        real: the realism level (aspect, share along the slope, gullies).
        anchored: the anchor is on a shore or bank (the scar is moved upslope of it), not the centre.

    Returns:
        ``(outline, tongue, headwall)`` in scene pixel coordinates.
    """
    assert real.aspect is not None
    aspect = math.exp(rng.uniform(math.log(real.aspect[0]), math.log(real.aspect[1])))
    s = math.sqrt(aspect)
    along = rng.random() < real.along_slope
    a_u, a_v = (radius * s, radius / s) if along else (radius / s, radius * s)
    back = a_u * rng.uniform(0.7, 1.0) if anchored else 0.0
    cx, cy = x - ux * back, y - uy * back

    n = 160
    th = np.linspace(0.0, 2 * math.pi, n, endpoint=False)  # angle from the downslope axis
    c, sn = np.cos(th), np.sin(th)
    rad = np.ones(n)
    for k in range(2, 6):  # irregular overall
        rad += (0.14 / math.sqrt(k)) * rng.uniform(0.2, 1.0) * np.sin(k * th + rng.uniform(0, 2 * math.pi))
    up = np.clip(-c, 0, None)  # the upslope half: a scalloped headwall
    for k in range(7, 15):
        rad += up * (0.12 / math.sqrt(k - 5)) * rng.uniform(0.0, 1.0) * np.sin(k * th + rng.uniform(0, 2 * math.pi))
    rad *= 1.0 - 0.3 * np.clip(c, 0, None) ** 2  # narrower towards the outlet
    pu, pv = a_u * rad * c, a_v * rad * sn
    scar = Polygon(_local_to_scene(cx, cy, ux, uy, pu, pv)).buffer(0)

    parts = [scar]
    # debris tongue: narrow, down the drainage line
    length = a_u * rng.uniform(0.4, 1.0)
    width = min(a_u, a_v) * rng.uniform(0.3, 0.55)
    t_c = a_u * 0.7 + length / 2
    tt = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    trad = 1.0 + 0.12 * np.sin(3 * tt + rng.uniform(0, 6.3)) * (np.cos(tt) > 0)
    tongue = Polygon(
        _local_to_scene(cx, cy, ux, uy, t_c + (length / 2) * trad * np.cos(tt), width * trad * np.sin(tt))
    ).buffer(0)
    parts.append(tongue)
    # gullies: fingers from the upslope rim into the tundra, wandering, narrowing
    for _ in range(int(rng.integers(real.gullies[0], real.gullies[1] + 1))):
        i = int(round((math.pi + rng.uniform(-1.1, 1.1)) / (2 * math.pi) * n)) % n  # a point of the upslope rim
        p = np.array([pu[i], pv[i]]) * 0.9
        heading = math.atan2(pv[i] / a_v, pu[i] / a_u) + rng.uniform(-0.35, 0.35)
        total = radius * rng.uniform(0.3, 0.8)
        half = max(0.7, radius * rng.uniform(0.05, 0.1))
        pts = [p.copy()]
        for _ in range(3):
            heading += rng.uniform(-0.4, 0.4)
            p = p + total / 3 * np.array([math.cos(heading), math.sin(heading)])
            pts.append(p.copy())
        xy = _local_to_scene(cx, cy, ux, uy, np.array([q[0] for q in pts]), np.array([q[1] for q in pts]))
        parts.append(LineString(xy[:3]).buffer(half))
        parts.append(LineString(xy[1:]).buffer(half * 0.6))
    close = max(radius * 0.04, 0.5)
    outline = unary_union(parts).buffer(close).buffer(-close)
    # headwall: the upslope arc of the scar rim
    sel = c < -0.35
    rim = _local_to_scene(cx, cy, ux, uy, pu[sel] * 0.97, pv[sel] * 0.97)
    order = np.argsort(np.arctan2(sn[sel], -c[sel]))
    head = LineString(rim[order]).buffer(max(0.8, radius * 0.05), cap_style="flat")
    return outline, tongue.intersection(outline), head.intersection(outline)


def outline(x: float, y: float, u: tuple[float, float], radius: float, rng: np.random.Generator, real: Realism,
            *, anchored: bool) -> Shape:
    """The outline of a new slump at the realism level ``real``: the horseshoe, or the gullied shape.

    Args:
        x: the anchor, column (pixels): on a shore or bank (``anchored``), else the slump's centre.
        y: the anchor, row (pixels).
        u: downslope unit vector (x, y).
        radius: the slump's radius, pixels.
        rng: the random generator (``demo`` draws exactly as before realism levels existed).
        real: the realism level.
        anchored: the anchor is on a shore or bank: the scar lies upslope of it.

    Returns:
        ``(outline, tongue, headwall)`` in scene pixel coordinates (before water cuts them).
    """
    ux, uy = u
    if real.aspect is None:
        back = radius * rng.uniform(0.7, 1.0) if anchored else 0.0
        return slump_shape(x - ux * back, y - uy * back, ux, uy, radius, rng)
    return gullied_shape(x, y, ux, uy, radius, rng, real, anchored=anchored)
