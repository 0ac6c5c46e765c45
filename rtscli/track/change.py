"""Slumps followed through time: the overlap graph between dates, relations, stable ids and growth.

Between each date and the next, every slump still followed (its last polygon) and every polygon of
the new date are the nodes of a graph; two are joined when their polygons overlap by ``metric``
(``ios``: intersection over the smaller area, robust to growth; or ``iou``) of at least ``threshold``.
Polygons that only touch share no area and are never joined. Each connected part of the graph says
what happened (the words of the ARTS data set's change fields in brackets; Yang et al. 2023, ARTS
metadata description, github.com/whrc/ARTS):

* one earlier, one now: ``continued`` (the same slump: ARTS keeps its UID, "RepeatRTS");
* several earlier, one now: ``merged`` (MergedRTS); the earlier slumps' tracks end ``merged``;
* one earlier, several now: ``split`` (SplitRTS); the earlier track ends ``split``;
* several and several: ``unknown`` (UnknownRelationship);
* none earlier, one now: ``new`` when the previous date's map covered the place (NewRTS; a new slump
  on the scar of a stabilized one lists it, StabilizedRTS), ``first`` when it did not (or at the first date);
* one earlier, none now, the place covered by the new date's map: the track ends ``disappeared``, or
  ``stabilized`` when a ``stabilized`` polygon marks its place or the rule ``gone_as="stabilized"`` says so
  (a map of active slumps no longer shows a slump whose scar has revegetated). A row at the new date,
  ``present`` false, holds the last polygon. A place the new date's maps did not cover is not news: the
  slump stays followed, and is matched again at the next date that sees it.

Merged and split slumps start new tracks (their parents are listed), as ARTS gives them new UIDs. A track's
id is a UUID5 of its first date and the centroid of its first polygon taken in EPSG:4326 (as ARTS takes
centroids; rounded to 1e-6 degree, about 0.1 m), so the same maps give the same ids in any order, and in
any CRS as long as reprojection keeps their vertices (an id can change where a centroid sits on a rounding
boundary). Distances are measured in a local equidistant CRS when the maps reach beyond ``LOCAL_KM`` of the
working CRS's centre. Per observation: the true area (m2 on the ellipsoid), its change
since the previous date (m2 and m2/year; for a merged slump against its parents' union), the signed boundary
change (m and m/year; :func:`boundary_change`): for a slump that grew, + the largest distance from the previous
polygon to any point of the new one (how far its outline advanced: the headwall retreat of a growing slump);
for one that shrank, - the largest distance from the new polygon to any point of the previous one (how far its
outline drew back), so that a shrinking slump never reads as advancing; and the centroid shift (geodesic m).
An observation (or the end of a track) is ``uncertain`` when it or the polygons it is compared with touch a
scene edge or nodata (``rts predict``'s flags): a slump cut by the edge of the imagery seems to grow or shrink
as the cut moves.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable

import numpy as np

from rtscli.track.dates import years_between
from rtscli.geometry.polygons import overlap, union_root
from rtscli.track.maps import DateFrame

log = logging.getLogger("rtscli")

#: the namespace of track ids (uuid5 of the URL of this project's track definition)
TRACK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://rts.invalid/track/v1")
#: a followed slump counts as looked at by a date's maps when this share of its polygon lies in their coverage
COVERED_SHARE = 0.5
#: beyond this distance (km) from the working CRS's centre, boundary changes are measured in a local equidistant CRS
#: (the equal-area CRS's distances are off by about (d / 2R)^2: 0.06 % at 100 km, 1.4 % at 1500 km)
LOCAL_KM = 100.0


@dataclass
class TrackOptions:
    """How ``rts track`` matches and names (see the module docstring)."""

    metric: str = "ios"
    threshold: float = 0.3
    gone_as: str = "disappeared"  # or "stabilized"
    stabilized: list = field(default_factory=list)  # polygons (working CRS) of known stabilized scars

    def check(self) -> None:
        from rtscli.errors import RtsError

        if self.metric not in ("ios", "iou"):
            raise RtsError(f"--match {self.metric!r} is not a metric", fix="use ios or iou")
        if not 0 < self.threshold <= 1:
            raise RtsError("--match-threshold must be in (0, 1]", fix="e.g. 0.3")
        if self.gone_as not in ("disappeared", "stabilized"):
            raise RtsError(f"--gone {self.gone_as!r} is not a relation", fix="use disappeared or stabilized")


@dataclass
class Obs:
    """One slump at one date (or, ``present`` false, the date its track ended)."""

    track: str
    date: date
    geometry: Any
    relation: str
    present: bool = True
    related: list[str] = field(default_factory=list)  # track ids: parents (merged, split, unknown)
    on_scar: list[str] = field(default_factory=list)  # tracks of stabilized scars a new slump formed on
    area_m2: float = float("nan")
    prev_date: datetime.date | None = None  # (here ``date`` names the field above, not the type)
    prev_area_m2: float = float("nan")
    boundary_change_m: float = float("nan")  # signed: + advanced (the slump grew), - drew back (it shrank)
    centroid_shift_m: float = float("nan")
    touches_edge: bool = False
    touches_nodata: bool = False
    uncertain: bool = False
    source: str = ""
    date_given: str = ""  # the date as the map wrote it (an ARTS BaseMapDate range stays a range)
    score: float = float("nan")  # rts predict's score of the polygon (nan: not a prediction)
    model: str = ""  # the model that predicted it ("": not a prediction)

    @property
    def years(self) -> float:
        return years_between(self.prev_date, self.date) if self.prev_date else float("nan")


@dataclass
class Track:
    id: str
    start: str
    obs: list[Obs] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    end: str = "open"
    end_date: date | None = None


def directed_advance(new: Any, old: Any) -> float:
    """The largest distance (CRS units) from ``old`` to a point of ``new``: how far the outline advanced.

    The directed Hausdorff distance h(new, old) = max_{p in new} min_{q in old} |p - q| (points inside ``old``
    are at 0), taken over the outline of ``new - old`` densified to 1/2000 of its length (at least 0.01
    units), and over the centre of the largest circle inside each part of ``new - old`` (shapely
    ``maximum_inscribed_circle``), where the distance peaks inside a part that ``old`` surrounds (a hole
    that closed). Exact for growth that ``old`` does not surround; otherwise within the densification step.
    """
    import shapely

    diff = new.difference(old)
    if diff.is_empty or diff.area <= 0:
        return 0.0
    step = max(diff.length / 2000.0, 0.01)
    pts = shapely.points(shapely.get_coordinates(shapely.segmentize(diff.boundary, step)))
    parts = [p for p in shapely.get_parts(diff) if p.geom_type == "Polygon" and p.area > 0]
    centres = [shapely.get_point(shapely.maximum_inscribed_circle(p, step), 0) for p in parts]
    both = np.concatenate([pts, np.asarray(centres, dtype=object)]) if centres else pts
    return float(np.max(shapely.distance(both, old))) if len(both) else 0.0


def boundary_change(new: Any, old: Any, grew: bool) -> float:
    """How far the outline moved between ``old`` and ``new``, signed by whether the slump ``grew`` (its area did
    not decrease): ``+directed_advance(new, old)`` (how far it advanced beyond the old outline) for a slump that
    grew, ``-directed_advance(old, new)`` (how far the old outline lies beyond the new one) for one that shrank."""
    return directed_advance(new, old) if grew else -directed_advance(old, new)


class Tracker:
    """Follows the slumps of :class:`DateFrame` s (sorted by date, one working CRS ``crs``)."""

    def __init__(self, crs: Any, opts: TrackOptions) -> None:
        from pyproj import Transformer

        from rtscli.geometry.measure import geodesic_area_perimeter

        self.crs = crs
        self.opts = opts
        self.tracks: dict[str, Track] = {}
        self.active: dict[str, Obs] = {}  # followed slumps: their last present observation
        self.scars: list[tuple[str, Any]] = []  # (track, polygon) of stabilized slumps
        self._scar_tree: tuple[int, Any] | None = None  # (scars indexed, STRtree)
        self._marked = _Index(opts.stabilized)  # known stabilized scars (--stabilized)
        self._to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        self._area = lambda gs: geodesic_area_perimeter(gs, crs)[0]
        from pyproj import Geod

        self._geod = Geod(ellps="WGS84")
        self.far = False  # set by run(): the data reach beyond LOCAL_KM of the working CRS's centre
        self._aeqd: dict = {}

    # --- ids and measures ------------------------------------------------------------------------------------

    def _lonlat(self, geom) -> tuple[float, float]:
        """(lon, lat) of ``geom``'s centroid taken in EPSG:4326, as ARTS takes it: its vertices are the input's
        own points whatever CRS they came in, so the centroid does not depend on the working CRS."""
        from rtscli.geometry.footprint import lonlat_centroids

        lon, lat = lonlat_centroids([geom], to_lonlat=self._to_ll)
        return float(lon[0]), float(lat[0])

    def _local(self, geoms: list) -> list:
        """``geoms`` in an azimuthal equidistant CRS centred on the first one (for true distances far from the
        working CRS's centre); unchanged when the data lie within :data:`LOCAL_KM` of that centre."""
        if not self.far:
            return geoms
        import shapely
        from pyproj import Transformer

        lon, lat = self._lonlat(geoms[0])
        key = (round(lon * 2) / 2, round(lat * 2) / 2)  # one local CRS per half degree: scale error < 3e-5
        if key not in self._aeqd:
            self._aeqd[key] = Transformer.from_crs(
                self.crs, f"+proj=aeqd +lat_0={key[1]} +lon_0={key[0]} +datum=WGS84 +units=m", always_xy=True)
        t = self._aeqd[key]
        return [shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))) for g in geoms]

    def _new_track(self, first: Obs, start: str, parents: list[str] | None = None) -> Track:
        lon, lat = self._lonlat(first.geometry)
        name = f"{first.date.isoformat()} {lat:.6f} {lon:.6f}"
        tid = str(uuid.uuid5(TRACK_NAMESPACE, name))
        k = 1
        while tid in self.tracks:  # two first polygons at one place and date: never in a valid map, but keep ids unique
            k += 1
            tid = str(uuid.uuid5(TRACK_NAMESPACE, f"{name} #{k}"))
        first.track = tid
        t = Track(tid, start, [first], parents=list(parents or []))
        self.tracks[tid] = t
        for p in t.parents:
            self.tracks[p].children.append(tid)
        return t

    def _compare(self, o: Obs, before: list[Obs]) -> None:
        """Fill ``o``'s change figures against the union of ``before`` (its previous polygons)."""
        from shapely import union_all

        prev = union_all([b.geometry for b in before]) if len(before) > 1 else before[0].geometry
        o.prev_date = max(b.date for b in before)
        o.prev_area_m2 = float(self._area([prev])[0])
        new, old = self._local([o.geometry, prev])
        o.boundary_change_m = boundary_change(new, old, grew=o.area_m2 >= o.prev_area_m2)
        (lon1, lat1), (lon2, lat2) = self._lonlat(prev), self._lonlat(o.geometry)
        o.centroid_shift_m = float(self._geod.inv(lon1, lat1, lon2, lat2)[2])
        o.uncertain = o.uncertain or any(b.touches_edge or b.touches_nodata for b in before)

    # --- one date ----------------------------------------------------------------------------------------------

    def step(self, frame: DateFrame, previous: DateFrame | None) -> list[Obs]:
        """Match ``frame`` against the followed slumps (``previous``: the date before, for 'new' vs 'first').
        Returns the observations made at this date: its polygons, and the rows of the tracks that ended."""
        from shapely import STRtree

        cur = self._observations(frame)
        prev_ids = list(self.active)
        prev = [self.active[t] for t in prev_ids]
        parent = list(range(len(prev) + len(cur)))  # union-find: earlier nodes 0..P-1, new ones P..

        def root(i: int) -> int:
            return union_root(parent, i)

        if prev and cur:
            tree = STRtree([o.geometry for o in cur])
            left, right = tree.query([o.geometry for o in prev], predicate="intersects")
            for i, j in zip(left.tolist(), right.tolist(), strict=True):
                if overlap(prev[i].geometry, cur[j].geometry, self.opts.metric) >= self.opts.threshold:
                    parent[root(len(prev) + j)] = root(i)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for i in range(len(prev)):
            groups.setdefault(root(i), ([], []))[0].append(i)
        for j in range(len(cur)):
            groups.setdefault(root(len(prev) + j), ([], []))[1].append(j)
        made = list(cur)
        for ps, cs in sorted(groups.values(), key=lambda g: (g[1][:1] or [len(cur)], g[0][:1])):
            before = [prev[i] for i in ps]
            now = [cur[j] for j in cs]
            if not now:
                made += self._gone(before[0], frame)
            elif not before:
                self._appeared(now[0], frame, previous)
            elif len(before) == 1 and len(now) == 1:
                o = now[0]
                o.relation, o.track = "continued", before[0].track
                self._compare(o, before)
                self.tracks[o.track].obs.append(o)
                self.active[o.track] = o
            else:
                relation = "merged" if len(now) == 1 else "split" if len(before) == 1 else "unknown"
                for b in before:
                    t = self.tracks[b.track]
                    t.end, t.end_date = relation, frame.date
                    del self.active[b.track]
                for o in now:
                    o.relation = relation
                    o.related = sorted(b.track for b in before)  # not in the order of the inputs
                    if relation == "merged":
                        self._compare(o, before)
                    else:
                        o.prev_date = max(b.date for b in before)
                        o.uncertain = o.uncertain or any(b.touches_edge or b.touches_nodata for b in before)
                    self._new_track(o, relation, parents=o.related)
                    self.active[o.track] = o
        return made

    def _observations(self, frame: DateFrame) -> list[Obs]:
        """The polygons of ``frame`` as observations, with their true areas."""
        areas = self._area(frame.geoms) if frame.geoms else np.zeros(0)
        given = frame.given or [frame.date.isoformat()] * len(frame.geoms)
        scores = frame.scores or [float("nan")] * len(frame.geoms)
        models = frame.models or [""] * len(frame.geoms)
        return [Obs("", frame.date, g, "first", area_m2=float(a), touches_edge=e, touches_nodata=n,
                    uncertain=bool(e or n), source=s, date_given=t, score=float(sc), model=md)
                for g, a, e, n, s, t, sc, md in zip(frame.geoms, areas, frame.touches_edge, frame.touches_nodata,
                                                    frame.sources, given, scores, models, strict=True)]

    def _appeared(self, o: Obs, frame: DateFrame, previous: DateFrame | None) -> None:
        looked = previous is not None and _covered(o.geometry, previous.coverage)
        o.relation = "new" if looked else "first"
        if self._scar_tree is None or self._scar_tree[0] != len(self.scars):
            self._scar_tree = (len(self.scars), _Index([g for _, g in self.scars]))
        o.on_scar = [self.scars[i][0] for i in self._scar_tree[1].sharing_area(o.geometry)]
        self._new_track(o, o.relation)
        self.active[o.track] = o

    def _gone(self, last: Obs, frame: DateFrame) -> list[Obs]:
        """End ``last``'s track at ``frame`` when its maps looked there (returns the ending row), else keep it."""
        share = _share_covered(last.geometry, frame.coverage)
        if share < COVERED_SHARE:
            return []  # not looked at: still followed
        marked = bool(self._marked.sharing_area(last.geometry))
        relation = "stabilized" if marked or self.opts.gone_as == "stabilized" else "disappeared"
        t = self.tracks[last.track]
        t.end, t.end_date = relation, frame.date
        row = Obs(last.track, frame.date, last.geometry, relation, present=False, prev_date=last.date,
                  prev_area_m2=last.area_m2, touches_edge=last.touches_edge, touches_nodata=last.touches_nodata,
                  uncertain=bool(last.touches_edge or last.touches_nodata or share < 1.0), source=last.source,
                  date_given=frame.date.isoformat())
        t.obs.append(row)
        del self.active[last.track]
        if relation == "stabilized":
            self.scars.append((last.track, last.geometry))
        return [row]

    def run(self, frames: list[DateFrame], progress: Callable[[int], object] | None = None) -> None:
        """Follow the slumps through ``frames`` (sorted by date); one log line per date."""
        from collections import Counter

        bounds = [g.bounds for f in frames for g in f.geoms]
        if bounds:
            b = np.abs(np.asarray(bounds))
            self.far = bool(np.hypot(np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])).max() > LOCAL_KM * 1e3)
        for k, f in enumerate(frames):
            if k == 0:
                made = self._observations(f)
                for o in made:
                    self._new_track(o, "first")
                    self.active[o.track] = o
            else:
                made = self.step(f, frames[k - 1])
            seen = Counter(o.relation for o in made)
            log.info("%s: %d slump(s) (%s), %d followed", f.date.isoformat(), len(f.geoms),
                     ", ".join(f"{n} {r}" for r, n in sorted(seen.items())) or "none", len(self.active))
            if progress:
                progress(1)

    def observations(self) -> list[Obs]:
        return sorted((o for t in self.tracks.values() for o in t.obs), key=lambda o: (o.date, o.track))


class _Index:
    """Polygons found by an STRtree: :meth:`sharing_area` gives those that share area with a polygon."""

    def __init__(self, geoms: list) -> None:
        from shapely import STRtree

        self.geoms = list(geoms)
        self.tree = STRtree(self.geoms) if self.geoms else None

    def sharing_area(self, geom: Any) -> list[int]:
        if self.tree is None:
            return []
        hits = self.tree.query(geom, predicate="intersects")
        return [int(i) for i in sorted(hits) if self.geoms[i].intersection(geom).area > 0]


def _share_covered(geom: Any, coverage: Any) -> float:
    """The share of ``geom``'s area inside ``coverage`` (1 when the coverage is unknown). The coverage is
    prepared (shapely), so that the common cases (wholly inside, wholly outside) need no intersection."""
    import shapely

    if coverage is None:
        return 1.0
    shapely.prepare(coverage)
    if coverage.contains(geom):
        return 1.0
    if not coverage.intersects(geom):
        return 0.0
    a = geom.area
    return coverage.intersection(geom).area / a if a > 0 else float(coverage.intersects(geom))


def _covered(geom: Any, coverage: Any) -> bool:
    return _share_covered(geom, coverage) >= COVERED_SHARE
