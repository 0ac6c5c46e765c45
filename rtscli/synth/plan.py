"""Procedural thaw-slump scenes: the vector plan of a scene (rendered by :mod:`rtscli.synth.render`).

A :class:`Plan` holds every object of a scene as a polygon in scene pixel coordinates (x = column,
y = row, origin at the top-left corner of the top-left pixel): lakes, rivers, slumps (scar, debris
tongue, headwall), and look-alikes (river bars, roads, dry patches, burnt patches), plus the valid
footprint (outside it is nodata). :func:`rtscli.synth.render.render` turns any window of the plan into surface
reflectance; textures come from coherent hash noise (:mod:`rtscli.synth.noise`), so windows rendered
separately are seamless and a scene of any size is written with bounded memory.

Slumps are horseshoe/lobate scars that open downslope: they sit on lake shores and valley sides with
their debris tongue pointing to the water, are clipped by the water, and some are placed against a
neighbour so that two slumps touch. A share of them are "weak": their RGB is close to the tundra,
but their NIR is low, so only NDVI/NIR shows them. The site's realism level (:mod:`rtscli.synth.realism`, ``rts synth
--realism``) sets their sizes, outlines (:mod:`rtscli.synth.outlines`) and, under ``hard``, each one's tone.

Truth describes what the image shows: every slump is placed whole inside the scene, at least
:attr:`Plan.edge_margin` pixels from its edge (:meth:`Plan.interior`), so that it, its growth and its merge
partner in a series (:mod:`rtscli.synth.series`) are on the image; a nodata swath edge cuts slumps, and those
keep the part on the valid pixels, flagged ``clipped``. :func:`shown` is the last guard of every truth writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union

from rtscli.synth import noise
from rtscli.synth.outlines import outline as slump_outline
from rtscli.synth.realism import DEMO, draw_tone
from rtscli.synth.sites import (
    BURNT, DRY, HEADWALL, MUD, ROAD, SAND, SOIL, WATER, WHEAD, WMUD, WSOIL,
    SiteStyle,
)


@dataclass
class Slump:
    geometry: Polygon  # the label: scar + tongue, minus water
    tongue: Polygon
    headwall: Polygon
    direction: tuple[float, float]  # downslope unit vector (x, y) in pixel space
    weak: bool
    setting: str  # lake | river | slope
    touching: bool = False
    clipped: bool = False  # a nodata edge (or the image edge) cut it: the geometry is the part on valid pixels
    # --realism hard: (mean RGB, NIR) over the tundra around it (rtscli.synth.realism.draw_tone); None: site spectra
    tone: tuple[float, float] | None = None


@dataclass
class Plan:
    width: int
    height: int
    resolution: float
    style: SiteStyle
    seed: int
    lakes: list[Polygon] = field(default_factory=list)
    rivers: list[Polygon] = field(default_factory=list)
    river_lines: list[LineString] = field(default_factory=list)
    slumps: list[Slump] = field(default_factory=list)
    bars: list[Polygon] = field(default_factory=list)
    roads: list[Polygon] = field(default_factory=list)
    dry: list[Polygon] = field(default_factory=list)
    burnt: list[Polygon] = field(default_factory=list)
    footprint: Polygon | None = None
    noise_offset: tuple[int, int] = (0, 0)
    edge_margin: float = 0.0  # px: slumps are placed at least this far inside the scene's edge

    def __post_init__(self) -> None:
        self._tree: shapely.STRtree | None = None

    def interior(self) -> Polygon:
        """Where slumps may lie: the scene box shrunk by :attr:`edge_margin` pixels on every side.

        Returns:
            A box in scene pixel coordinates (empty when the margin leaves no room).
        """
        m = self.edge_margin
        if self.width <= 2 * m or self.height <= 2 * m:
            return Polygon()
        return box(m, m, self.width - m, self.height - m)

    def image(self) -> Any:
        """The part of the plan the rendered image shows: the scene box, within :attr:`footprint` when set.

        Returns:
            A polygon in scene pixel coordinates; outside it the image is nodata or absent.
        """
        scene = box(0, 0, self.width, self.height)
        return scene if self.footprint is None else scene.intersection(self.footprint)

    # painting order: later layers cover earlier ones
    def layers(self) -> list[tuple[int, int, Polygon]]:
        out: list[tuple[int, int, Polygon]] = []
        out += [(BURNT, 0, g) for g in self.burnt]
        out += [(DRY, 0, g) for g in self.dry]
        out += [(WATER, 0, g) for g in self.lakes]
        out += [(WATER, 0, g) for g in self.rivers]
        out += [(SAND, 0, g) for g in self.bars]
        out += [(ROAD, 0, g) for g in self.roads]
        for s in self.slumps:
            out.append((WSOIL if s.weak else SOIL, 1, s.geometry))
        for s in self.slumps:
            if not s.tongue.is_empty:
                out.append((WMUD if s.weak else MUD, 2, s.tongue))
            if not s.headwall.is_empty:
                out.append((WHEAD if s.weak else HEADWALL, 2, s.headwall))
        return out

    def query(self, x0: float, y0: float, x1: float, y1: float) -> list[tuple[int, int, Polygon]]:
        if self._tree is None:  # built on first use: the plan is complete by then
            self._layers = self.layers()
            self._tree = shapely.STRtree([g for _, _, g in self._layers])
        idx = sorted(self._tree.query(box(x0, y0, x1, y1)))
        return [self._layers[i] for i in idx]

    def water(self) -> list[Polygon]:
        return self.lakes + self.rivers


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def _lobate(cx, cy, r, rng, *, n=64, amp=0.22, stretch=1.0, angle=0.0) -> Polygon:
    th = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += (amp / math.sqrt(k)) * rng.uniform(0.3, 1.0) * np.sin(k * th + rng.uniform(0, 2 * math.pi))
    x = r * rad * np.cos(th) * stretch
    y = r * rad * np.sin(th)
    ca, sa = math.cos(angle), math.sin(angle)
    return Polygon(np.c_[cx + x * ca - y * sa, cy + x * sa + y * ca]).buffer(0)


class SpatialHash:
    """A coarse spatial hash so that planning a 20k x 20k scene stays near-linear."""

    def __init__(self, cell: float = 256.0) -> None:
        self.cell = cell
        self.cells: dict[tuple[int, int], list[int]] = {}
        self.items: list = []

    def _keys(self, bounds, pad=0.0):
        x0, y0, x1, y1 = bounds
        c = self.cell
        for i in range(int(math.floor((x0 - pad) / c)), int(math.floor((x1 + pad) / c)) + 1):
            for j in range(int(math.floor((y0 - pad) / c)), int(math.floor((y1 + pad) / c)) + 1):
                yield (i, j)

    def add(self, geom: Any) -> None:
        k = len(self.items)
        self.items.append(geom)
        for key in self._keys(geom.bounds):
            self.cells.setdefault(key, []).append(k)

    def near(self, geom: Any, pad: float = 0.0) -> list:
        seen: set[int] = set()
        for key in self._keys(geom.bounds, pad):
            seen.update(self.cells.get(key, ()))
        return [self.items[k] for k in sorted(seen)]

    def union_near(self, geom: Any, pad: float = 0.0) -> Any:
        near = self.near(geom, pad)
        return unary_union(near) if near else Polygon()


def _poisson(rng, lam: float) -> int:
    return int(rng.poisson(max(lam, 0.0)))


#: px: default distance of every slump from the scene edge (a few pixels of tundra around the outermost ones)
EDGE_MARGIN_PX = 8.0


def edge_margin_px(width: int, height: int) -> float:
    """The default :attr:`Plan.edge_margin` of a ``width`` x ``height`` pixel scene.

    Args:
        width: scene width, pixels.
        height: scene height, pixels.

    Returns:
        :data:`EDGE_MARGIN_PX`, or 2 % of the shorter side on scenes under 400 px (so small ones keep room).
    """
    return min(EDGE_MARGIN_PX, 0.02 * min(width, height))


def shown(g: Any, image: Any) -> tuple[Any, bool]:
    """The part of the truth polygon ``g`` that an image covering ``image`` shows.

    Args:
        g: a slump (or look-alike) polygon, in the same coordinates as ``image``.
        image: the area the image shows (valid pixels), e.g. :meth:`Plan.image`.

    Returns:
        ``(part, clipped)``: the polygonal part of ``g`` inside ``image`` (an empty polygon when none), and
        whether clipping removed more than a 1e-9 share of its area (it lay partly outside).
    """
    if g.is_empty or image.contains(g):
        return g, False
    part = poly(g.intersection(image))
    return part, part.area < g.area * (1 - 1e-9)


def _slump_radius_px(rng, resolution: float, area_ha: tuple[float, float, float, float] = DEMO.area_ha) -> float:
    # demo: area from ~0.5 ha to tens of ha, most a few ha (log-normal, truncated); see Realism.area_ha
    median, sigma, lo, hi = area_ha
    ha = float(np.clip(rng.lognormal(mean=math.log(median), sigma=sigma), lo, hi))
    return math.sqrt(ha * 1e4 / math.pi) / resolution


def make_plan(
    width: int,
    height: int,
    style: SiteStyle,
    seed: int,
    *,
    resolution: float = 3.0,
    slump_density: float | None = None,
    nodata_margin: bool | None = None,
    touch_probability: float = 0.2,
    edge_margin: float | None = None,
) -> Plan:
    """Place every object of a ``width`` x ``height`` pixel scene. Deterministic in ``seed``.

    Args:
        width: scene width, pixels.
        height: scene height, pixels.
        style: the site's look (:mod:`rtscli.synth.sites`).
        seed: the random seed; the same seed gives the same plan.
        resolution: pixel size, metres.
        slump_density: slumps per km2 (default: the site's).
        nodata_margin: cut a slanted nodata swath edge (None: on about 30 % of scenes, by the seed); slumps it
            cuts keep the part on valid pixels and are flagged ``clipped``.
        touch_probability: chance that a slump gets a touching neighbour.
        edge_margin: pixels between every slump and the scene edge (default :func:`edge_margin_px`): slumps
            lie whole inside the scene, so the truth is what the image shows.

    Returns:
        The :class:`Plan`, in scene pixel coordinates.
    """
    rng = np.random.default_rng(noise.key_of("plan", seed, style.name, width, height))
    plan = Plan(width, height, resolution, style, seed,
                edge_margin=edge_margin_px(width, height) if edge_margin is None else float(edge_margin))
    plan.noise_offset = (int(rng.integers(0, 10**7)), int(rng.integers(0, 10**7)))
    km2 = width * height * resolution**2 / 1e6
    scene = box(0, 0, width, height)
    px_per_km = 1000.0 / resolution

    # lakes: blobby, some partly outside the scene
    lakes = SpatialHash()
    for _ in range(_poisson(rng, style.lakes_per_km2 * km2) + (1 if rng.random() < 0.6 else 0)):
        r = math.exp(rng.uniform(math.log(18), math.log(220))) * 3.0 / resolution
        cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        lake = _lobate(cx, cy, r, rng, stretch=rng.uniform(1.0, 1.8), angle=rng.uniform(0, math.pi))
        if any(lake.distance(o) < 8 for o in lakes.near(lake, 8)) or not lake.intersects(scene):
            continue
        plan.lakes.append(lake)
        lakes.add(lake)

    # rivers: meandering lines across the scene
    n_rivers = _poisson(rng, style.rivers_per_10km * (width + height) / (10 * px_per_km))
    for _ in range(n_rivers):
        line = _meander(rng, width, height)
        w = rng.uniform(3.0, 11.0) * 3.0 / resolution
        plan.river_lines.append(line)
        plan.rivers.append(line.buffer(w / 2))
        # river bars: sandy, elongated, on the inside of bends (slump look-alikes by colour)
        for _ in range(_poisson(rng, line.length / 250.0)):
            d = rng.uniform(0, line.length)
            p, q = line.interpolate(d), line.interpolate(min(d + 2, line.length))
            tx, ty = q.x - p.x, q.y - p.y
            nrm = math.hypot(tx, ty) or 1.0
            tx, ty = tx / nrm, ty / nrm
            side = rng.choice([-1.0, 1.0])
            bw = rng.uniform(4, 12) * 3.0 / resolution
            off = w / 2 + bw * 0.6
            bx, by = p.x - ty * off * side, p.y + tx * off * side
            bar = _lobate(bx, by, bw, rng, amp=0.1, stretch=rng.uniform(2.5, 5.0), angle=math.atan2(ty, tx))
            plan.bars.append(bar)

    water = SpatialHash()
    for g in plan.water():
        water.add(g)
    taken = SpatialHash()

    # slumps
    dens = style.slumps_per_km2 if slump_density is None else slump_density
    n_slumps = _poisson(rng, dens * km2)
    attempts = 0
    while len(plan.slumps) < n_slumps and attempts < n_slumps * 20:
        attempts += 1
        s = place_slump(plan, rng, water, taken)
        if s is None:
            continue
        plan.slumps.append(s)
        taken.add(s.geometry)
        if rng.random() < touch_probability:
            t = neighbour(plan, rng, s, water, taken)
            if t is not None:
                s.touching = t.touching = True
                plan.slumps.append(t)
                taken.add(t.geometry)

    def free(g, gap=4.0):
        """``g`` less 4 px around water and ``gap`` px around slumps."""
        if gap == 4.0:  # one cut, as the demo always made it (the same geometry, the same files)
            return g.difference(unary_union(taken.near(g, 4) + water.near(g, 4)).buffer(4))
        near = taken.near(g, gap)
        if near:
            g = g.difference(unary_union(near).buffer(gap) if gap > 0 else unary_union(near))
        return g.difference(unary_union(water.near(g, 4)).buffer(4))
    # dry patches: lobate, slump-sized, bright in RGB like bare soil but high NIR
    for _ in range(_poisson(rng, style.dry_per_km2 * km2)):
        r = _slump_radius_px(rng, resolution, style.realism.area_ha) * rng.uniform(0.5, 1.0)
        g = _lobate(rng.uniform(0, width), rng.uniform(0, height), r, rng, stretch=rng.uniform(1.0, 1.6),
                    angle=rng.uniform(0, math.pi))
        g = free(g)
        if g.area > 50:
            plan.dry.append(largest(g))
    for _ in range(_poisson(rng, style.burnt_per_km2 * km2)):
        r = rng.uniform(60, 250) * 3.0 / resolution
        g = _lobate(rng.uniform(0, width), rng.uniform(0, height), r, rng, amp=0.35)
        g = free(g, style.realism.burn_gap)
        if g.area > 50:
            plan.burnt.append(g)
    for _ in range(_poisson(rng, style.roads_per_100km2 * km2 / 100.0)):
        line = _meander(rng, width, height, wiggle=0.02, step=20.0)
        plan.roads.append(line.buffer(rng.uniform(1.2, 2.2) * 3.0 / resolution))

    # nodata margin: a slanted swath edge on some scenes
    if nodata_margin is None:
        nodata_margin = rng.random() < 0.3
    if nodata_margin:
        plan.footprint = _swath(rng, width, height)
        kept = []
        for s in plan.slumps:
            g, cut = shown(s.geometry, plan.footprint)
            g = largest(g)
            if g.area * resolution**2 >= style.realism.min_area_m2 / 2:  # still a visible slump (demo: 0.2 ha)
                if cut:
                    s.geometry, s.clipped = g, True
                    s.tongue, s.headwall = poly(s.tongue.intersection(g)), poly(s.headwall.intersection(g))
                kept.append(s)
        plan.slumps = kept
    return plan


def largest(g: Any) -> Any:
    """The largest polygon of ``g`` (itself when it is one polygon; an empty polygon when it has none)."""
    if g.geom_type == "Polygon":
        return g
    parts = [p for p in getattr(g, "geoms", []) if p.geom_type == "Polygon"]
    return max(parts, key=lambda p: p.area) if parts else Polygon()


def _meander(rng, width, height, wiggle=0.05, step=6.0) -> LineString:
    side = rng.integers(0, 4)
    t = rng.uniform(0.1, 0.9)
    start = [(t * width, -10), (width + 10, t * height), (t * width, height + 10), (-10, t * height)][side]
    heading = [math.pi / 2, math.pi, -math.pi / 2, 0.0][side] + rng.uniform(-0.6, 0.6)
    pts = [start]
    turn = 0.0
    x, y = start
    for _ in range(int(4 * (width + height) / step)):
        turn = 0.8 * turn + rng.normal(0, wiggle)
        turn = max(-0.25, min(0.25, turn))
        heading += turn
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        pts.append((x, y))
        if not (-40 <= x <= width + 40 and -40 <= y <= height + 40):
            break
    return LineString(pts)


def _swath(rng, width, height) -> Polygon:
    """The scene box minus a slanted strip along one side."""
    side = rng.integers(0, 4)
    a, b = rng.uniform(0.05, 0.25), rng.uniform(0.05, 0.3)
    w, h = width, height
    cuts = {
        0: Polygon([(0, 0), (w, 0), (w, b * h), (0, a * h)]),
        1: Polygon([(w, 0), (w, h), ((1 - b) * w, h), ((1 - a) * w, 0)]),
        2: Polygon([(0, h), (w, h), (w, (1 - b) * h), (0, (1 - a) * h)]),
        3: Polygon([(0, 0), (0, h), (b * w, h), (a * w, 0)]),
    }
    return box(0, 0, w, h).difference(cuts[int(side)])


def _direction_to(p: Point, target: Point) -> tuple[float, float]:
    dx, dy = target.x - p.x, target.y - p.y
    n = math.hypot(dx, dy)
    if n < 1e-9:
        return (1.0, 0.0)
    return (dx / n, dy / n)


def _anchor(plan: Plan, rng) -> tuple[Point, tuple[float, float], str] | None:
    """A point on a shore or valley side and the downslope direction there."""
    r = rng.random()
    if plan.lakes and r < 0.6:
        lake = plan.lakes[int(rng.integers(0, len(plan.lakes)))]
        ring = lake.exterior
        p = ring.interpolate(rng.uniform(0, ring.length))
        inner = lake.buffer(-max(3.0, math.sqrt(lake.area) * 0.15))
        target = inner.centroid if not inner.is_empty else lake.centroid
        return p, _direction_to(p, target), "lake"
    if plan.river_lines and r < 0.9:
        i = int(rng.integers(0, len(plan.river_lines)))
        line, poly = plan.river_lines[i], plan.rivers[i]
        d = rng.uniform(0, line.length)
        c = line.interpolate(d)
        q = line.interpolate(min(d + 2, line.length))
        tx, ty = _direction_to(c, q)
        side = rng.choice([-1.0, 1.0])
        # walk out from the centre line to the bank
        p = Point(c.x - ty * side, c.y + tx * side)
        for step in range(1, 60):
            p = Point(c.x - ty * side * step, c.y + tx * side * step)
            if not poly.contains(p):
                break
        return p, (ty * side, -tx * side), "river"
    p = Point(rng.uniform(0, plan.width), rng.uniform(0, plan.height))
    a = rng.uniform(0, 2 * math.pi)
    return p, (math.cos(a), math.sin(a)), "slope"


def _build(plan: Plan, rng, p: Point, u: tuple[float, float], setting: str, water, radius=None):
    real = plan.style.realism
    radius = radius or _slump_radius_px(rng, plan.resolution, real.area_ha)
    outline, tongue, head = slump_outline(p.x, p.y, u, radius, rng, real, anchored=setting != "slope")
    near_water = water.union_near(outline)
    if not near_water.is_empty:
        outline = largest(outline.difference(near_water))
        tongue = tongue.intersection(outline)
        head = head.intersection(outline)
    return outline, tongue, head, radius


def place_slump(plan: Plan, rng: np.random.Generator, water: SpatialHash, taken: SpatialHash) -> Slump | None:
    """A new slump on a shore, valley side or slope of ``plan``, clipped by ``water``.

    Args:
        plan: the scene; the slump lies whole inside :meth:`Plan.interior`.
        rng: the random generator (consumed whether or not the try fits).
        water: the lakes and rivers, which cut the slump.
        taken: polygons the slump stays at least 3 px from.

    Returns:
        The slump, or None when this try does not fit (below the realism level's smallest area, ~0.4 ha under
        ``demo``, after clipping; not whole inside the scene with its margin; too close to another).
    """
    a = _anchor(plan, rng)
    if a is None:
        return None
    p, u, setting = a
    outline, tongue, head, _ = _build(plan, rng, p, u, setting, water)
    if outline.is_empty or outline.area * plan.resolution**2 < plan.style.realism.min_area_m2:  # demo: ~0.4 ha
        return None
    if not plan.interior().contains(outline):
        return None
    if any(outline.distance(g) < 3 for g in taken.near(outline, 3)):
        return None
    weak = bool(rng.random() < plan.style.weak_fraction)
    tone = draw_tone(rng, plan.style.realism, weak, plan.style.weak_contrast)
    return Slump(outline, poly(tongue), poly(head), u, weak, setting, tone=tone)


def neighbour(plan: Plan, rng: np.random.Generator, s: Slump, water: SpatialHash, taken: SpatialHash) -> Slump | None:
    """A second slump beside ``s`` along the same slope, cut so the two touch but never overlap.

    Args:
        plan: the scene; the neighbour lies whole inside :meth:`Plan.interior`.
        rng: the random generator.
        s: the slump to put a neighbour beside.
        water: the lakes and rivers, which cut the neighbour.
        taken: polygons (``s`` among them) the neighbour stays at least 3 px from, ``s`` excepted.

    Returns:
        The neighbour, or None when it does not fit (below the realism level's smallest area, not touching ``s``,
        not whole inside the scene with its margin, too close to another).
    """
    ux, uy = s.direction
    r0 = math.sqrt(s.geometry.area / math.pi)
    r1 = r0 * rng.uniform(0.6, 1.1)
    side = rng.choice([-1.0, 1.0])
    c = s.geometry.centroid
    shift = (r0 + r1) * 0.85
    p = Point(c.x - uy * side * shift + ux * r1 * 0.5, c.y + ux * side * shift + uy * r1 * 0.5)
    outline, tongue, head, _ = _build(plan, rng, p, (ux, uy), "slope", water, radius=r1)
    outline = largest(outline.difference(s.geometry))
    if outline.is_empty or outline.area * plan.resolution**2 < plan.style.realism.min_area_m2:
        return None
    if outline.distance(s.geometry) > 1e-6 or outline.intersection(s.geometry).area > 1e-6:
        return None
    if not plan.interior().contains(outline):
        return None
    if any(g is not s.geometry and outline.distance(g) < 3 for g in taken.near(outline, 3)):
        return None
    tongue, head = tongue.intersection(outline), head.intersection(outline)
    weak = bool(rng.random() < plan.style.weak_fraction)
    tone = draw_tone(rng, plan.style.realism, weak, plan.style.weak_contrast)
    return Slump(outline, poly(tongue), poly(head), (ux, uy), weak, "slope", tone=tone)


def poly(g: Any) -> Any:
    """The polygonal part of ``g`` (clipping leaves lines and points), or an empty polygon."""
    from rtscli.io.vector import polygonal

    return polygonal(g) or Polygon()


