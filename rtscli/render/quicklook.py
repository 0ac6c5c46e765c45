"""The quicklook of ``rts predict``: a PNG of the scene with predicted (and reference) outlines.

The scene is read decimated (bounded memory whatever its size) and drawn in its pixel space (polygons
through the inverse transform): predicted outlines, optional reference outlines (``--truth``) in a
colour-blind-safe second colour, each polygon's id, a scale bar of true ground distance, the map
coordinates of the image corners, a north arrow and the CRS.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rtscli.data.scenes import Scene, read_decimated
from rtscli.errors import RtsError
from rtscli.render.furniture import (
    PRED_COLOUR, TRUTH_COLOUR, corner_labels, crs_long_name, halo, is_geographic, label_anchor, map_unit,
    north_arrow, outlines, pixel_size_m, scale_bar,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("rtscli")


#: the colour stretch of a quicklook: per band drawn (red, green, blue; or one grey band), the stored values drawn
#: black and white
Stretch = list[tuple[float, float]]


def parse_stretch(text: str) -> Stretch:
    """``--stretch``: ``LO,HI`` for every band drawn, or ``RLO,RHI,GLO,GHI,BLO,BHI`` one pair per band, in the
    raster's stored values (before ``--scale``): the same stretch for every date of a place, so that dates can be
    compared by eye (the default, 2-98 % of each scene, differs from scene to scene).

    Args:
        text: the option's value.

    Returns:
        The pairs ``(black, white)`` per band: one pair (every band) or three.

    Raises:
        RtsError: not 2 or 6 numbers, or a pair whose white is not above its black.
    """
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        values = []
    if len(values) not in (2, 6) or not all(math.isfinite(v) for v in values):
        raise RtsError(f"--stretch {text!r}: give LO,HI (every band) or RLO,RHI,GLO,GHI,BLO,BHI in the raster's "
                       "stored values", fix="copy the stretch written under an earlier quicklook, e.g. --stretch "
                                            "120,1650")
    pairs = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    if any(hi <= lo for lo, hi in pairs):
        raise RtsError(f"--stretch {text!r}: each pair is black then white, and white must be above black",
                       fix="e.g. --stretch 120,1650")
    return pairs


def stretch_text(stretch: Stretch) -> str:
    """``stretch`` as the ``--stretch`` value that draws it again (the inverse of :func:`parse_stretch`)."""
    pairs = stretch if len({p for p in stretch}) > 1 else stretch[:1]
    return ",".join(f"{v:.6g}" for p in pairs for v in p)


@dataclass(frozen=True)
class QuicklookRequest:
    """What ``rts predict --quicklook`` asks for: where the PNG goes, the reference outlines to draw (``--truth``,
    ``--truth-layer``) and the colour stretch (``--stretch``; None: 2-98 % of the scene)."""

    path: Path
    truth: Path | None = None
    truth_layer: str | None = None
    stretch: Stretch | None = None


#: above this many predicted polygons the ids are not written (they would cover the scene); the title says so
MAX_ID_LABELS = 300


def write_quicklook(gdf: Any, scene: Scene, path: Path, *, overwrite: bool, truth: Path | None = None,
                    truth_layer: str | None = None, stretch: Stretch | None = None, max_side: int = 2048) -> Stretch:
    """A PNG for review: the predicted outlines (and ``truth``'s) over an RGB rendering of the scene.

    ``gdf``: the predicted polygons (any CRS; column ``id`` written beside each one, up to
    :data:`MAX_ID_LABELS` of them). ``truth``: an optional vector file of reference outlines (any OGR
    format, any CRS: reprojected to the scene's, logged), drawn in a second colour. The scene (RGB bands,
    else its first band, stretched 2-98 % or by ``stretch``) is read decimated to at most ``max_side`` pixels a side, so
    memory stays bounded whatever the scene's size. With a scale bar (true ground metres), the map
    coordinates of the image corners, a north arrow and the CRS in the caption. Written atomically:
    an existing ``path`` needs ``overwrite``; an interrupted write leaves nothing.

    Args:
        gdf: the predicted polygons (GeoDataFrame, any CRS).
        scene: the scene (:func:`rtscli.data.scenes.open_scene`).
        path: the PNG to write.
        overwrite: replace an existing ``path``.
        truth: a vector file of reference outlines, or None.
        truth_layer: the layer of ``truth`` that holds them (``--truth-layer``); None: its only layer.
        stretch: the colour stretch (:func:`parse_stretch`; stored values), or None: 2-98 % of this scene.
        max_side: the longest side of the rendered scene, pixels.

    Returns:
        The stretch drawn (the one given, or this scene's 2-98 %): pass it to the quicklooks of other dates of
        this place (``--stretch``, :func:`stretch_text`) to draw them alike. The caption says it too.

    Raises:
        RtsError: ``path`` exists without ``overwrite``, the scene cannot be read, or ``truth`` cannot be read
            (:func:`truth_outlines`).
    """
    from rtscli.io.atomic import atomic_file

    # a bad file fails before any drawing
    truth_px = truth_outlines(truth, scene, layer=truth_layer) if truth is not None else None
    img, decimation, used = _read_rendering(scene, max_side, stretch)
    name = None if truth is None else truth.name + (f" ({truth_layer})" if truth_layer else "")
    fig = quicklook_figure(img, gdf, scene, truth=truth_px, truth_name=name, decimation=decimation,
                           stretch=used, stretch_given=stretch is not None)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight", pad_inches=0.15)
    return used


def truth_outlines(path: Path, scene: Scene, *, layer: str | None = None) -> list[Any]:
    """The reference polygons of the vector file ``path`` in the scene's pixel space (col, row; shapely).

    Any OGR format and CRS: read with :func:`rtscli.io.vector.read_polygons` (invalid polygons repaired,
    non-polygons dropped), reprojected to the scene's CRS (logged), then taken through the inverse of the
    scene's transform (right on rotated grids). Outlines outside the scene are kept (the picture clips
    them). An empty layer gives ``[]``.

    Args:
        path: the vector file.
        scene: the scene whose CRS and pixel grid the outlines are taken to.
        layer: the layer that holds the outlines (``--truth-layer``, e.g. ``rts`` of an ``rts synth`` truth file);
            None: the file's only layer.

    Returns:
        The outlines as shapely geometries in pixel space (col, row).

    Raises:
        RtsError: a missing or unreadable file, several layers and no ``layer``, an unknown ``layer``, or no CRS.
    """
    from rtscli.geometry.footprint import to_pixels
    from rtscli.io.vector import TRUTH, read_polygons

    gdf, _ = read_polygons(Path(path), scene.crs, role=TRUTH, layer=layer)
    return [to_pixels(g, scene.transform) for g in gdf.geometry]


def quicklook_figure(img: np.ndarray, gdf: Any, scene: Scene, *, truth: list[Any] | None = None,
                     truth_name: str | None = None, decimation: int = 1, stretch: Stretch | None = None,
                     stretch_given: bool = False) -> Figure:
    """The quicklook as a matplotlib ``Figure`` (no pyplot state), for :func:`write_quicklook` and tests.

    ``img``: (h, w, 3) floats in [0, 1], the scene decimated ``decimation`` times, drawn over the scene's
    full pixel extent. ``truth``: reference polygons in pixel space (:func:`truth_outlines`). Artists carry
    gids: ``predictions`` and ``truth`` (LineCollections of pixel-space rings), ``id`` (one Text per
    labelled polygon), ``scale-bar``, ``corner``, ``north``.

    Args:
        img: the rendering, (h, w, 3) float in [0, 1] (:func:`_read_rendering`).
        gdf: the predicted polygons (GeoDataFrame, any CRS; column ``id`` when there is one).
        scene: the scene (its grid, CRS and name).
        truth: reference polygons in pixel space, or None.
        truth_name: the reference file's name, for the title and legend (None: no reference).
        decimation: how many scene pixels one pixel of ``img`` spans, per side.
        stretch: the colour stretch ``img`` was drawn with (stored values), for the caption; None: not said.
        stretch_given: whether ``stretch`` was the user's (``--stretch``) rather than this scene's 2-98 %.

    Returns:
        The matplotlib ``Figure``.
    """
    import textwrap

    import shapely
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation, offset_copy
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from rtscli.geometry.footprint import to_pixels
    from rtscli.io.raster import crs_name

    W, H = scene.width, scene.height
    aspect = H / W if W else 1.0
    size = (9.0, max(2.5, 9.0 * aspect)) if aspect <= 1 else (max(2.5, 9.0 / aspect), 9.0)
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.imshow(img, extent=(0, W, H, 0), interpolation="antialiased")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_axis_off()
    frame = shapely.box(0, 0, W, H)

    # predictions (pixel space through the inverse transform: right on rotated grids too) and their ids
    n = len(gdf)
    preds = [to_pixels(g, scene.transform) for g in gdf.to_crs(scene.crs).geometry] if n else []
    ids = list(gdf["id"]) if n and "id" in gdf.columns else list(range(1, n + 1))
    truth = truth or []
    in_scene = sum(1 for g in truth if g is not None and not g.is_empty and g.intersects(frame))
    if truth:  # under the predictions, wider: where both coincide, each stays visible
        ax.add_collection(outlines([g for g in truth if g is not None and g.intersects(frame)], TRUTH_COLOUR,
                                    2.8, halo(3.8), gid="truth", zorder=3))
    if preds:
        ax.add_collection(outlines(preds, PRED_COLOUR, 1.0, halo(1.8), gid="predictions", zorder=4))
    labelled = 0 < n <= MAX_ID_LABELS
    if labelled:
        for g, i in zip(preds, ids, strict=True):
            if g is None or g.is_empty:
                continue
            x, y, right, up = label_anchor(g, W, H)
            ax.annotate(str(i), xy=(x, y), xytext=(2 if right else -2, 2 if up else -2), textcoords="offset points",
                        ha="left" if right else "right", va="bottom" if up else "top", fontsize=7, color="black",
                        path_effects=halo(2.5, "white", 0.9), zorder=5, gid="id", annotation_clip=False)

    # scale bar (true ground metres along rows) and north arrow
    notes: list[str] = []
    try:
        px_row, px_col = pixel_size_m(scene.transform, scene.crs, W, H)
    except RtsError as exc:
        px_row = px_col = float("nan")
        notes.append(f"no scale bar ({exc})")
    if math.isfinite(px_row) and px_row > 0:
        length_m, length_px, label = scale_bar(W, px_row)
        # below the image (it hides nothing), right-aligned under the bottom right corner's coordinates
        bar = AnchoredSizeBar(ax.transData, length_px, label, "upper right", pad=0, borderpad=0, sep=2,
                              frameon=False, size_vertical=max(H / 250, 1e-9), color="black",
                              fontproperties={"size": 8}, bbox_to_anchor=(1, 0),
                              bbox_transform=ax.transAxes + ScaledTranslation(0, -32 / 72, fig.dpi_scale_trans))
        bar.set_gid("scale-bar")
        ax.add_artist(bar)
        notes.append(f"scale bar: true ground distance along rows (pixel {px_row:.3g} m)")
        if math.isfinite(px_col) and abs(px_col / px_row - 1) > 0.02:
            notes.append(f"pixels are {px_row:.3g} m x {px_col:.3g} m on the ground (the picture is stretched)")
    elif not notes:
        notes.append("no scale bar (the pixel size on the ground is unknown)")
    north = north_arrow(scene.transform, scene.crs, W, H)
    if north is not None:  # below the image, left of the scale bar (which takes at most a quarter of the width)
        ux, uy = north
        anchor = offset_copy(ax.transAxes, fig=fig, x=0, y=-50, units="points")
        tail = offset_copy(anchor, fig=fig, x=-ux * 11, y=-uy * 11, units="points")
        tip = offset_copy(anchor, fig=fig, x=ux * 11, y=uy * 11, units="points")
        ax.annotate("", xy=(0.7, 0), xycoords=tip, xytext=(0.7, 0), textcoords=tail, gid="north",
                    arrowprops=dict(arrowstyle="-|>", color="black", lw=1.6, mutation_scale=12,
                                    path_effects=halo(3.5, "white", 0.9)))
        ax.text(0.7, 0, "N", transform=offset_copy(anchor, fig=fig, x=ux * 20, y=uy * 20, units="points"),
                ha="center", va="center", fontsize=9, fontweight="bold", path_effects=halo(2.5, "white", 0.9),
                gid="north")

    # map coordinates of the corners, outside the image
    for name, text in corner_labels(scene.transform, scene.crs, W, H).items():
        top, left = name.startswith("top"), name.endswith("left")
        ax.annotate(text, xy=(0 if left else 1, 1 if top else 0), xycoords="axes fraction",
                    xytext=(0, 3 if top else -3), textcoords="offset points", ha="left" if left else "right",
                    va="bottom" if top else "top", fontsize=7, linespacing=1.1, gid="corner")

    # title, legend and caption
    title = f"{scene.name}: {n} slump{'s' if n != 1 else ''} predicted"
    if truth_name is not None:
        title += f", {in_scene} reference outline{'s' if in_scene != 1 else ''} ({truth_name})"
    if n > MAX_ID_LABELS:
        title += f"\nids not written: {n} polygons, more than {MAX_ID_LABELS} (see the id column in QGIS)"
    ax.set_title(title, fontsize=10, pad=30)
    handles = [Line2D([], [], color=PRED_COLOUR, lw=2, path_effects=halo(3.4), label=f"predicted ({n})")]
    if truth_name is not None:
        short = truth_name if len(truth_name) <= 40 else truth_name[:18] + "..." + truth_name[-19:]
        handles.append(Line2D([], [], color=TRUTH_COLOUR, lw=2.8, path_effects=halo(3.8),
                              label=f"reference: {short} ({in_scene} in the scene, of {len(truth)})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 0), ncol=1, frameon=False, fontsize=8,
              bbox_transform=ax.transAxes + ScaledTranslation(0, -28 / 72, fig.dpi_scale_trans),
              borderaxespad=0, handlelength=2.2)
    crs = crs_name(scene.crs)
    long_name = crs_long_name(scene.crs)
    unit = map_unit(scene.crs)
    geographic = unit is not None and is_geographic(scene.crs)
    caption = [f"CRS {crs}" + (f" ({long_name})" if long_name and long_name != crs else ""),
               "corners: latitude, longitude of the image corners" if geographic else
               f"corners: map x, y{f' ({unit})' if unit else ''} and latitude, longitude of the image corners"]
    caption += notes
    if stretch:
        caption.append(f"colours stretched {'as asked' if stretch_given else '2-98 % of this scene'} "
                       f"(--stretch {stretch_text(stretch)}" + ("" if stretch_given else
                                                                 ": give it to other dates to draw them alike") + ")")
    if decimation > 1:
        caption.append(f"image shown at 1/{decimation} of its resolution")
    text = "\n".join(textwrap.wrap("; ".join(caption), 125))
    ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -78), textcoords="offset points",
                ha="left", va="top", fontsize=7, color="#333333")
    return fig


def _read_rendering(scene: Scene, max_side: int, stretch: Stretch | None = None) -> tuple[np.ndarray, int, Stretch]:
    """The scene's RGB bands (else its first band, grey) read decimated, stretched to [0, 1] (nodata white): by
    ``stretch`` (stored values; one pair for all bands or one per band), else 2-98 % of each band.

    Returns ``(image (h, w, 3) float32, decimation, stretch drawn)``; at most ``max_side`` pixels a side, each
    raster read once (all of its bands together).

    Raises:
        RtsError: ``stretch`` has one pair per band for 3 bands and the scene is drawn from one (grey).
    """
    names = {n: (s, i) for s in scene.sources for n, i in s.bands.items()}
    picks = [names[n] for n in ("red", "green", "blue") if n in names] or [next(iter(names.values()))]
    scale = max(1, int(np.ceil(max(scene.width, scene.height) / max_side)))
    h, w = max(1, scene.height // scale), max(1, scene.width // scale)
    by_path: dict[Path, list[int]] = {}  # each raster read once, all of its picked bands together
    for s, i in picks:
        by_path.setdefault(s.path, []).append(i)
    planes: dict[tuple[Path, int], np.ndarray] = {}
    for p, bands in by_path.items():
        # masked=True: rasterio reads a masked array (read_decimated is annotated with its base class, ndarray)
        raw = cast(np.ma.MaskedArray, read_decimated(scene, p, bands, h, w, masked=True))
        # numpy's stubs give MaskedArray.astype ndarray's return type; at run time it returns a MaskedArray
        data = raw.astype(np.float32).filled(np.nan)  # type: ignore[attr-defined]
        planes |= {(p, i): x for i, x in zip(bands, data, strict=True)}
    img = np.stack([planes[s.path, i] for s, i in picks], -1)
    bands_drawn = img.shape[-1]
    if stretch is not None and len(stretch) not in (1, bands_drawn):
        raise RtsError(f"--stretch gives {len(stretch)} pairs and the quicklook draws {bands_drawn} band(s) (no "
                       "red, green and blue in the scene)", fix="give one pair, LO,HI")
    used: Stretch = []
    for k in range(bands_drawn):
        x = img[..., k]
        if stretch is not None:
            lo, hi = stretch[k if len(stretch) > 1 else 0]
        else:
            lo, hi = (float(v) for v in (np.nanpercentile(x, [2, 98]) if np.isfinite(x).any() else (0.0, 1.0)))
        used.append((lo, hi))
        img[..., k] = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.nan_to_num(img, nan=1.0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return img, scale, used
