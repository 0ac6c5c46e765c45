"""Pictures of ``rts track``: slump area over time, and a map of the tracks coloured by growth rate.

Both are matplotlib ``Figure`` objects built without pyplot state (:func:`growth_figure`,
:func:`tracks_figure`) and written atomically as PNG (:func:`write_png`). The growth plot is always in m2 on a
logarithmic axis (so that one large slump does not flatten the others, and runs compare); the map has a north
arrow (:func:`rtscli.render.furniture.north_arrow`: north is not up in a polar CRS such as EPSG:3413), a
graticule of latitude and longitude over a tinted background, and axes in km.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Okabe & Ito's colour-blind-safe palette, for the lines of the growth plot
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
#: how a track ends when its slump is gone: not among the fastest-growing, whatever it did before
GONE = ("disappeared", "stabilized")
#: the map's background (a pale tint: white and grey slumps stand out on it) and its graticule
BACKGROUND = "#eef0e6"
GRATICULE = "#9aa39a"


def pick_tracks(tracks: Any, top: int, by: str = "rate") -> list[str]:
    """The ids of the ``top`` tracks with the fastest growth (``by="rate"``: only tracks that grew, growth rate
    above 0 m2/year, and whose slump is not gone (ended ``disappeared`` or ``stabilized``); there may be fewer
    than ``top``) or the largest last area (``by="area"``)."""
    if not len(tracks) or top <= 0:
        return []
    if by == "rate":
        grew = tracks[(tracks["growth_rate_m2_yr"] > 0) & ~tracks["end"].isin(GONE)]
        order = grew.sort_values(["growth_rate_m2_yr", "last_area_m2"], ascending=False)
    else:
        order = tracks.assign(_k=tracks["last_area_m2"].fillna(-np.inf)).sort_values(["_k"], ascending=False)
    return list(order["track_id"].head(top))


def plot_what(n: int, top: int, by: str = "rate") -> str:
    """What the growth plot shows, for its title: ``the 10 fastest-growing``; when fewer grew, says so."""
    if by != "rate":
        return f"the {n} largest"
    if n >= top:
        return f"the {n} fastest-growing"
    if n == 0:
        return "no slump grew"
    return f"all {n} growing slump{'s' if n != 1 else ''}"


def growth_figure(obs: Any, tracks: Any, ids: list[str], *, title: str = "", growing: bool = True) -> Figure:
    """Area (m2, on a logarithmic axis: equal steps are equal ratios, so a large slump does not flatten the
    others) over time of the tracks ``ids``: one line per track, a dotted line from a merged or split slump's
    parents to it, hollow markers where a change is uncertain. Lines carry the gid ``track:<id>``. ``growing``: the
    tracks are those :func:`pick_tracks` gives ``by="rate"`` (a note says which slumps are left out)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.add_subplot()
    present = obs[obs["present"] & (obs["area_m2"] > 0)]
    unit, scale = "m²", 1.0
    by_id = tracks.set_index("track_id")
    first_point, last_point, colours = {}, {}, {}
    for k, tid in enumerate(ids):
        rows = present[present["track_id"] == tid].sort_values("date")
        if not len(rows):
            continue
        x = [date.fromisoformat(d) for d in rows["date"]]
        y = rows["area_m2"].to_numpy() * scale
        colour = PALETTE[k % len(PALETTE)]
        rate = by_id.loc[tid, "growth_rate_m2_yr"]
        end = by_id.loc[tid, "end"]
        label = f"{tid[:8]} ({by_id.loc[tid, 'start']}" + (f", {rate:+,.0f} m²/yr" if rate == rate else "") + \
            (f", then {end})" if end != "open" else ")")
        style = ("-", "--", "-.")[(k // len(PALETTE)) % 3]  # colours repeat after 8: the line style tells them apart
        # (matplotlib plots dates through its date units; its stubs take only numbers and strings)
        (line,) = ax.plot(x, y, style, color=colour, lw=1.8, label=label)  # type: ignore[arg-type]
        line.set_gid(f"track:{tid}")
        unsure = rows["uncertain"].to_numpy(bool)
        ax.plot([xi for xi, u in zip(x, unsure, strict=True) if not u], y[~unsure], "o", color=colour,  # type: ignore[arg-type]
                ms=5)
        ax.plot([xi for xi, u in zip(x, unsure, strict=True) if u], y[unsure], "o", mfc="white",  # type: ignore[arg-type]
                color=colour, ms=5)
        first_point[tid], last_point[tid], colours[tid] = (x[0], y[0]), (x[-1], y[-1]), colour
    for tid in first_point:  # a merged or split slump: a dotted line from each parent shown
        for p in str(by_id.loc[tid, "parents"] or "").split(","):
            if p in last_point:
                (a, b), (c, d) = last_point[p], first_point[tid]
                ax.plot([a, c], [b, d], ":", color=colours[tid], lw=1.2)  # type: ignore[arg-type]  # dates, as above
    ax.set_yscale("log")
    _log_ticks(ax, list(present.loc[present["track_id"].isin(ids), "area_m2"] * scale))
    ax.set_ylabel(f"slump area ({unit}, log scale; true area on the ellipsoid)")
    ax.set_xlabel("imagery date")
    ax.grid(alpha=0.3, which="both")
    if ids:
        fig.legend(fontsize=7, loc="outside right upper", title="track (start, growth)", title_fontsize=7)
    ax.set_title(title or "slump area over time", fontsize=10)
    fig.text(0.99, 0.005, "hollow marker: uncertain (touches a scene edge or nodata)" +
             ("\nnot shown: slumps that shrank, did not change or are gone" if growing else ""), ha="right",
             fontsize=7, color="0.4")
    return fig


def _log_ticks(ax: Any, values: list[float]) -> None:
    """Plain-number ticks (``2,000``, ``50,000``) on a log axis, closer the narrower the values' span (so that a
    few ticks always stand inside, and never crowd): every 1..9 x 10^k within half a decade, 1-2-3-5 within a
    decade and a half, 1-2-5 within four decades, powers of ten beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray([x for x in values if x > 0 and np.isfinite(x)], float)
    decades = float(np.log10(v.max() / v.min())) if len(v) else 0.0
    subs: tuple[float, ...] = tuple(range(1, 10)) if decades < 0.5 else (1.0, 2.0, 3.0, 5.0) if decades < 1.5 else \
        (1.0, 2.0, 5.0) if decades < 4 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}" if y >= 1 else f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def tracks_figure(obs: Any, tracks: Any, *, title: str = "") -> Figure:
    """A map of the tracks: each slump's last polygon filled by its growth rate (m2/year, diverging colours
    around 0), its first polygon outlined in black, ended tracks dashed grey; on a tinted background with a
    graticule (gid ``graticule``), a north arrow (gid ``north``; north is not up in most polar CRSs), axes in km
    of the tracks' CRS (degrees in a geographic one), and a scale bar when that CRS is projected in metres."""
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    def patch(g: Any) -> PathPatch:
        parts = g.geoms if g.geom_type == "MultiPolygon" else [g]
        verts: list[np.ndarray] = []
        codes: list[np.uint8] = []
        for p in parts:
            for ring in [p.exterior, *p.interiors]:
                xy = np.asarray(ring.coords)
                verts.extend(xy)
                codes.extend([MPath.MOVETO] + [MPath.LINETO] * (len(xy) - 2) + [MPath.CLOSEPOLY])
        return PathPatch(MPath(verts, codes))

    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.set_facecolor(BACKGROUND)
    rates = tracks["growth_rate_m2_yr"].to_numpy(float)
    finite = rates[np.isfinite(rates)]
    span = max(float(np.max(np.abs(finite))) if len(finite) else 1.0, 1.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    live = tracks[tracks["end"] == "open"]
    ended = tracks[tracks["end"] != "open"]
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].copy()
    cmap.set_bad("0.8")  # seen at one date: no rate
    pc = PatchCollection([patch(g) for g in live.geometry], cmap=cmap, norm=norm, edgecolor="0.2", lw=0.5)
    pc.set_array(np.ma.masked_invalid(live["growth_rate_m2_yr"].to_numpy(float)))
    pc.set_gid("tracks")
    ax.add_collection(pc)
    if len(ended):
        pe = PatchCollection([patch(g) for g in ended.geometry], facecolor="none", edgecolor="0.5", lw=0.8,
                             linestyle="--")
        pe.set_gid("ended")
        ax.add_collection(pe)
    firsts = obs[obs["present"]].sort_values("date").groupby("track_id").head(1)
    firsts = firsts[firsts["track_id"].isin(live["track_id"])]
    pf = PatchCollection([patch(g) for g in firsts.geometry], facecolor="none", edgecolor="black", lw=0.6)
    pf.set_gid("first")
    ax.add_collection(pf)
    if len(tracks):
        x0, y0, x1, y1 = tracks.total_bounds
        pad = max(x1 - x0, y1 - y0) * 0.05 + 10
        w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
        wide, tall = max(w, 0.75 * h), max(h, 0.75 * w)  # not a sliver: room for the ticks, arrow and labels
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ax.set_xlim(cx - wide / 2, cx + wide / 2)
        ax.set_ylim(cy - tall / 2, cy + tall / 2)
    fig.colorbar(pc, ax=ax, shrink=0.7, label="growth rate (m²/year); grey: seen once; dashed: ended")
    crs = tracks.crs
    if crs is not None and crs.is_projected and (crs.axis_info[0].unit_name in ("metre", "meter")):
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        from rtscli.render.furniture import scale_bar

        width = ax.get_xlim()[1] - ax.get_xlim()[0]
        length_m, _, label = scale_bar(width, 1.0)
        bar = AnchoredSizeBar(ax.transData, length_m, label, "lower left", frameon=True, size_vertical=width / 300)
        bar.set_gid("scale-bar")
        ax.add_artist(bar)
    _map_axes(ax, crs)
    if crs is not None and len(tracks):
        _graticule(ax, crs)
        _north(fig, ax, crs, _free_corner(ax, tracks))
    ax.set_title(title or "slump tracks", fontsize=10)
    return fig


def _map_axes(ax: Any, crs: Any) -> None:
    """Readable axes: km with thousands separators (no offset or 1e6 factor) in a CRS of metres, degrees in a
    geographic one; about five ticks a side, and the CRS named once."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    metres = crs is not None and crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter")
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        step = abs(lim[1] - lim[0]) / 5 / (1000 if metres else 1)
        nd = max(0, -int(np.floor(np.log10(step)))) if step > 0 else 0
        if metres:
            axis.set_major_formatter(FuncFormatter(lambda v, _, nd=nd: f"{v / 1000:,.{nd}f}"))
        else:
            axis.set_major_formatter(FuncFormatter(lambda v, _, nd=nd: f"{v:,.{nd}f}" + ("°" if crs else "")))
    name = crs.name if crs is not None else "no CRS"
    if metres:
        ax.set_xlabel(f"x (km), {name}", fontsize=8)
        ax.set_ylabel("y (km)", fontsize=8)
    elif crs is not None and crs.is_geographic:
        ax.set_xlabel(f"longitude, {name}", fontsize=8)
        ax.set_ylabel("latitude", fontsize=8)
    else:
        ax.set_xlabel(f"x, {name}", fontsize=8)
        ax.set_ylabel("y", fontsize=8)
    ax.tick_params(labelsize=8)


def _view(ax: Any) -> tuple[Any, int, int]:
    """The axes' view as a grid of pixels (an affine transform, width, height), as the map furniture takes it."""
    from affine import Affine

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    w = 1000
    h = max(1, int(round(w * (y1 - y0) / (x1 - x0)))) if x1 > x0 else w
    return Affine((x1 - x0) / w, 0.0, x0, 0.0, -(y1 - y0) / h, y1), w, h


def _free_corner(ax: Any, tracks: Any) -> tuple[float, float]:
    """The corner of the map (axes fraction: top right, top left or bottom right; the scale bar is bottom left)
    whose eighth of the map holds the fewest slumps: where the north arrow hides least."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    b = np.asarray([g.bounds for g in tracks.geometry if g is not None and not g.is_empty]).reshape(-1, 4)
    fx, fy = (b[:, [0, 2]] - x0) / (x1 - x0), (b[:, [1, 3]] - y0) / (y1 - y0)

    def hidden(cx: float, cy: float) -> int:
        lo_x, hi_x = (0.8, 1.0) if cx > 0.5 else (0.0, 0.2)
        lo_y, hi_y = (0.8, 1.0) if cy > 0.5 else (0.0, 0.2)
        return int(((fx[:, 1] >= lo_x) & (fx[:, 0] <= hi_x) & (fy[:, 1] >= lo_y) & (fy[:, 0] <= hi_y)).sum())

    return min([(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)], key=lambda c: hidden(*c))


def _north(fig: Any, ax: Any, crs: Any, corner: tuple[float, float] = (1.0, 1.0)) -> None:
    """A north arrow (true north at the centre of the view: :func:`rtscli.render.furniture.north_arrow`) in a
    ``corner`` of the map (axes fraction), with an N at its tip."""
    from matplotlib.transforms import offset_copy

    from rtscli.render.furniture import halo, north_arrow

    transform, w, h = _view(ax)
    north = north_arrow(transform, crs, w, h)
    if north is None:
        return
    ux, uy = north
    cx, cy = corner
    anchor = offset_copy(ax.transAxes, fig=fig, x=-32 if cx > 0.5 else 32, y=-34 if cy > 0.5 else 34, units="points")
    tail = offset_copy(anchor, fig=fig, x=-ux * 14, y=-uy * 14, units="points")
    tip = offset_copy(anchor, fig=fig, x=ux * 14, y=uy * 14, units="points")
    ax.annotate("", xy=corner, xycoords=tip, xytext=corner, textcoords=tail, gid="north", zorder=6,
                arrowprops=dict(arrowstyle="-|>", color="black", lw=1.8, mutation_scale=14,
                                path_effects=halo(4, "white", 0.9)))
    ax.text(cx, cy, "N", transform=offset_copy(anchor, fig=fig, x=ux * 24, y=uy * 24, units="points"), ha="center",
            va="center", fontsize=10, fontweight="bold", path_effects=halo(3, "white", 0.9), gid="north", zorder=6)


def _graticule(ax: Any, crs: Any) -> None:
    """Lines of longitude and latitude across the view (a round step giving 2 to 6 of each), labelled where they
    enter it: with the north arrow, they show how the CRS's grid lies (gid ``graticule``)."""
    from matplotlib.collections import LineCollection
    from pyproj import Transformer

    from rtscli.render.furniture import halo

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    try:
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        from_ll = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    except Exception:  # pyproj's errors: a CRS without a datum has no graticule
        return
    t = np.linspace(0.0, 1.0, 64)
    bx = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0)])
    by = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1), y1 - (y1 - y0) * t])
    lon, lat = to_ll.transform(bx, by)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        return
    shift = 360.0 if lon.max() - lon.min() > 180 else 0.0  # across the antimeridian: longitudes 0..360
    lon = np.where(lon < 0, lon + shift, lon)
    lines, labels = [], []
    for values, other, is_lon in ((lon, lat, True), (lat, lon, False)):
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo
        if span <= 0:
            continue
        step = next((k for k in (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                 15, 30, 45) if span / k <= 6), 90.0)
        nd = max(0, -int(np.floor(np.log10(step))))
        for v in np.arange(np.ceil(lo / step) * step, hi + step / 2, step):
            along = np.linspace(other.min(), other.max(), 200)
            ll = (np.full_like(along, v), along) if is_lon else (along, np.full_like(along, v))
            x, y = from_ll.transform(*ll)
            keep = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & np.isfinite(x) & np.isfinite(y)
            if keep.sum() < 2:
                continue
            lines.append(np.column_stack([x, y]))
            i = int(np.flatnonzero(keep)[0])
            w = ((v + 180) % 360 - 180) if is_lon else v
            text = f"{abs(w):.{nd}f}°{('E' if w >= 0 else 'W') if is_lon else ('N' if w >= 0 else 'S')}"
            labels.append((x[i], y[i], text))
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if not lines:
        return
    ax.add_collection(LineCollection(lines, colors=GRATICULE, linewidths=0.6, linestyles=(0, (4, 3)), zorder=0.5,
                                     gid="graticule"))
    placed: list[tuple[float, float]] = []
    for x, y, text in labels:  # inside the map, beside where the line enters it; none on top of another
        f = ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0))
        if any(abs(f[0] - p[0]) < 0.12 and abs(f[1] - p[1]) < 0.04 for p in placed):
            continue
        placed.append(f)
        right, up = x < xm, y < ym
        ax.annotate(text, xy=(x, y), xytext=(3 if right else -3, 3 if up else -3), textcoords="offset points",
                    ha="left" if right else "right", va="bottom" if up else "top", fontsize=6.5, color="0.35",
                    path_effects=halo(2, BACKGROUND, 1.0), gid="graticule", annotation_clip=True, zorder=0.6)


def write_png(fig: Figure, path: Path, *, overwrite: bool) -> None:
    """Save ``fig`` as a PNG at ``path`` atomically (an existing file needs ``overwrite``)."""
    from rtscli.io.atomic import atomic_file

    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=130, format="png")


def span_title(obs: Any) -> str:
    """``"12 slumps, 3 dates (2019-07-01 to 2021-07-01)"`` for the figures' titles."""
    dates = sorted(set(obs["date"]))
    n = obs.loc[obs["present"], "track_id"].nunique()
    span = f"{dates[0]} to {dates[-1]}" if dates else "no dates"
    return f"{n} slump{'s' if n != 1 else ''}, {len(dates)} date{'s' if len(dates) != 1 else ''} ({span})"


