"""Pictures of ``rts track``: slump area over time, and a map of the tracks coloured by growth rate.

Both are matplotlib ``Figure`` objects built without pyplot state (:func:`growth_figure`,
:func:`tracks_figure`) and written atomically as PNG (:func:`write_png`).
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


def pick_tracks(tracks: Any, top: int, by: str = "rate") -> list[str]:
    """The ids of the ``top`` tracks with the fastest growth (``by="rate"``, m2/year; tracks seen at one date
    come last) or the largest last area (``by="area"``)."""
    if not len(tracks) or top <= 0:
        return []
    key = "growth_rate_m2_yr" if by == "rate" else "last_area_m2"
    order = tracks.assign(_k=tracks[key].fillna(-np.inf)).sort_values(["_k", "last_area_m2"], ascending=False)
    return list(order["track_id"].head(top))


def growth_figure(obs: Any, tracks: Any, ids: list[str], *, title: str = "") -> Figure:
    """Area (m2, or ha above 10 ha) over time of the tracks ``ids``: one line per track, a dotted line from a
    merged or split slump's parents to it, hollow markers where a change is uncertain. Lines carry the gid
    ``track:<id>``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.add_subplot()
    present = obs[obs["present"]]
    big = len(present) and present[present["track_id"].isin(ids)]["area_m2"].max() > 1e5
    unit, scale = ("ha", 1e-4) if big else ("m²", 1.0)
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
    ax.set_ylabel(f"slump area ({unit}, true area on the ellipsoid)")
    ax.set_xlabel("imagery date")
    ax.grid(alpha=0.3)
    if ids:
        fig.legend(fontsize=7, loc="outside right upper", title="track (start, growth)", title_fontsize=7)
    ax.set_title(title or "slump area over time", fontsize=10)
    fig.text(0.99, 0.005, "hollow marker: uncertain (touches a scene edge or nodata)", ha="right", fontsize=7,
             color="0.4")
    return fig


def tracks_figure(obs: Any, tracks: Any, *, title: str = "") -> Figure:
    """A map of the tracks: each slump's last polygon filled by its growth rate (m2/year, diverging colours
    around 0), its first polygon outlined in black, ended tracks dashed grey; metres east/north in the tracks'
    CRS, with a scale bar of true metres when that CRS is projected in metres."""
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
        ax.set_xlim(x0 - pad, x1 + pad)
        ax.set_ylim(y0 - pad, y1 + pad)
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
    ax.set_xlabel(f"x ({crs.name if crs is not None else 'no CRS'})", fontsize=8)
    ax.set_ylabel("y", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title or "slump tracks", fontsize=10)
    return fig


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


