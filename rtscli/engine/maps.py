"""Map products of ``rts predict`` beside the polygons: an instance-id GeoTIFF and a quicklook PNG.

Both work on any affine grid (rotated and sheared too) and in bounded memory: the raster is written
by blocks, each filled from the polygons that reach the block's true footprint; the quicklook reads
the scene decimated and draws in the scene's pixel space (polygons through the inverse transform).

The quicklook is a picture for review: predicted outlines, optional reference outlines (``--truth``)
in a colour-blind-safe second colour, each polygon's id, a scale bar of true ground distance, the map
coordinates of the image corners, a north arrow and the CRS.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: outline colours, Okabe & Ito's colour-blind-safe palette: orange (predictions) and sky blue (reference)
PRED_COLOUR = "#E69F00"
TRUTH_COLOUR = "#56B4E9"
#: above this many predicted polygons the ids are not written (they would cover the scene); the title says so
MAX_ID_LABELS = 300
#: the scale bar is the longest 1, 2 or 5 x 10^k metres not over this fraction of the image's width
SCALE_BAR_FRACTION = 0.25


def write_instance_raster(gdf, scene, path: Path, *, overwrite: bool, block: int = 1024) -> None:
    """An instance-id GeoTIFF (uint32, 0 = background) on the scene's grid, written by windows."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from shapely import STRtree

    from rtscli.geometry.footprint import window_footprint
    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import window_transform

    geoms = list(gdf.to_crs(scene.crs).geometry) if len(gdf) else []
    ids = list(gdf["id"]) if len(gdf) else []
    tree = STRtree(geoms) if geoms else None
    profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint32", crs=scene.crs,
                   transform=scene.transform, nodata=0, compress="deflate", tiled=True, blockxsize=256,
                   blockysize=256, BIGTIFF="IF_SAFER")
    with atomic_file(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, scene.height, block):
            for c in range(0, scene.width, block):
                h, w = min(block, scene.height - r), min(block, scene.width - c)
                t = window_transform(scene.transform, c, r)
                arr = np.zeros((h, w), np.uint32)
                if tree is not None:  # the block's true footprint (all four corners: rotated grids too)
                    hits = tree.query(window_footprint(scene.transform, c, r, w, h), predicate="intersects")
                    if len(hits):
                        arr = rasterize(((geoms[i], int(ids[i])) for i in hits), out_shape=(h, w), transform=t,
                                        fill=0, dtype="uint32")
                dst.write(arr, 1, window=Window(c, r, w, h))


# --- the quicklook --------------------------------------------------------------------------------------------


def write_quicklook(gdf, scene, path: Path, *, overwrite: bool, truth: Path | None = None,
                    max_side: int = 2048) -> None:
    """A PNG for review: the predicted outlines (and ``truth``'s) over an RGB rendering of the scene.

    ``gdf``: the predicted polygons (any CRS; column ``id`` written beside each one, up to
    :data:`MAX_ID_LABELS` of them). ``truth``: an optional vector file of reference outlines (any OGR
    format, any CRS: reprojected to the scene's, logged), drawn in a second colour. The scene (RGB bands,
    else its first band, stretched 2-98 %) is read decimated to at most ``max_side`` pixels a side, so
    memory stays bounded whatever the scene's size. With a scale bar (true ground metres), the map
    coordinates of the image corners, a north arrow and the CRS in the caption. Written atomically:
    an existing ``path`` needs ``overwrite``; an interrupted write leaves nothing.
    """
    from rtscli.io.atomic import atomic_file

    truth_px = truth_outlines(truth, scene) if truth is not None else None  # a bad file fails before any drawing
    img, decimation = _read_rendering(scene, max_side)
    fig = quicklook_figure(img, gdf, scene, truth=truth_px, truth_name=truth.name if truth is not None else None,
                           decimation=decimation)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight", pad_inches=0.15)


def truth_outlines(path: Path, scene) -> list:
    """The reference polygons of the vector file ``path`` in the scene's pixel space (col, row; shapely).

    Any OGR format and CRS: read with :func:`rtscli.io.vector.read_polygons` (invalid polygons repaired,
    non-polygons dropped), reprojected to the scene's CRS (logged), then taken through the inverse of the
    scene's transform (right on rotated grids). Outlines outside the scene are kept (the picture clips
    them). An empty layer gives ``[]``. Raises :class:`RtsError` for a missing or unreadable file, a file
    with several layers, or one without a CRS.
    """
    from rtscli.geometry.footprint import to_pixels
    from rtscli.io.vector import TRUTH, read_polygons

    gdf, _ = read_polygons(Path(path), scene.crs, role=TRUTH)
    return [to_pixels(g, scene.transform) for g in gdf.geometry]


def scale_bar(width_px: float, pixel_m: float, *, fraction: float = SCALE_BAR_FRACTION) -> tuple[float, float, str]:
    """A round scale bar for an image ``width_px`` pixels wide whose pixels are ``pixel_m`` metres on the ground.

    Returns ``(length_m, length_px, label)``: the longest 1, 2 or 5 x 10^k metres that is at most ``fraction``
    of the image's ground width, its length in pixels (``length_m / pixel_m``), and a label in m or km
    (``"500 m"``, ``"2 km"``).
    """
    if not (width_px > 0 and pixel_m > 0 and math.isfinite(width_px * pixel_m) and 0 < fraction <= 1):
        raise ValueError(f"scale_bar needs a positive width and pixel size, got {width_px} px of {pixel_m} m")
    target = width_px * pixel_m * fraction
    exp = math.floor(math.log10(target))
    length_m = max(k * 10.0**exp for k in (1, 2, 5, 10) if k * 10.0**exp <= target * (1 + 1e-9))
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    return length_m, length_m / pixel_m, label


def pixel_size_m(transform, crs, width: int, height: int) -> tuple[float, float]:
    """True ground size (m) of one pixel step along a row and along a column, on the CRS's ellipsoid.

    Each is the geodesic length (pyproj ``Geod.line_length``, densified to at most 512 segments) of the
    scene's centre row (column) divided by its pixels: right for projected, geographic, rotated and sheared
    grids (on a geographic grid the two differ: a pixel is not square on the ground). Raises
    :class:`RtsError` when the CRS is missing or has no datum.
    """
    to_lonlat, geod, _, _ = _geodetic(crs)

    def per_pixel(c0: float, r0: float, c1: float, r1: float, n: int) -> float:
        s = np.linspace(0.0, 1.0, max(1, min(512, n)) + 1)
        cols, rows = c0 + (c1 - c0) * s, r0 + (r1 - r0) * s
        x = transform.a * cols + transform.b * rows + transform.c
        y = transform.d * cols + transform.e * rows + transform.f
        lon, lat = to_lonlat.transform(x, y)
        return float(geod.line_length(lon, lat)) / max(n, 1)

    return (per_pixel(0, height / 2, width, height / 2, width), per_pixel(width / 2, 0, width / 2, height, height))


def corner_labels(transform, crs, width: int, height: int) -> dict[str, str]:
    """The map coordinates of the four image corners (pixel edges), as text, keyed ``top left`` ... ``bottom right``.

    Projected CRS: ``x 470,000  y 7,550,000`` (the CRS's unit) and, on a second line, latitude and longitude;
    geographic CRS: latitude and longitude (5 decimals); no CRS: pixel coordinates.
    """
    from rtscli.io.raster import apply

    corners = {"top left": (0, 0), "top right": (width, 0), "bottom left": (0, height),
               "bottom right": (width, height)}
    try:
        to_lonlat, _, horizontal, _ = _geodetic(crs)
    except RtsError:
        to_lonlat = horizontal = None
    out = {}
    for name, (c, r) in corners.items():
        x, y = apply(transform, c, r)
        if horizontal is None:
            out[name] = f"x {x:,.2f}  y {y:,.2f}"
            continue
        lon, lat = to_lonlat.transform(x, y)
        ll = f"{abs(lat):.5f}°{'N' if lat >= 0 else 'S'}  {abs(lon):.5f}°{'E' if lon >= 0 else 'W'}"
        out[name] = ll if horizontal.is_geographic else f"x {x:,.0f}  y {y:,.0f}\n{ll}"
    return out


def north_arrow(transform, crs, width: int, height: int) -> tuple[float, float] | None:
    """The direction of true north at the scene's centre, as a unit vector (right, up) on the picture.

    The picture shows pixel space (columns right, rows down), so north is up only on a north-up grid whose
    CRS has north up there (not on a rotated grid, nor far from the central meridian of a polar projection).
    ``None`` when the CRS is missing or has no datum.
    """
    from rtscli.io.raster import apply

    try:
        to_lonlat, _, _, from_lonlat = _geodetic(crs)
    except RtsError:
        return None
    x, y = apply(transform, width / 2, height / 2)
    lon, lat = to_lonlat.transform(x, y)
    step = 1e-3 if lat < 89.99 else -1e-3  # a step north (south beside the pole: then the arrow is reversed)
    x2, y2 = from_lonlat.transform(lon, lat + step)
    inv = ~transform
    dc = (inv.a * x2 + inv.b * y2 + inv.c) - width / 2
    dr = (inv.d * x2 + inv.e * y2 + inv.f) - height / 2
    n = math.hypot(dc, dr)
    if not math.isfinite(n) or n == 0:
        return None
    sign = 1 if step > 0 else -1
    return sign * dc / n, -sign * dr / n


def label_anchor(geom, width: float, height: float) -> tuple[float, float, bool, bool]:
    """Where a polygon's id goes: ``(col, row, right, up)``, a vertex of its outline (pixel space) and the side.

    The outermost vertex towards the top right (so the id sits beside the outline, not at a bounding-box
    corner that may lie far from a curved slump), or towards the left / bottom when that vertex is within
    4 % of the image's right / top edge (the id stays inside the picture).
    """
    import shapely

    parts = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty]
    xy = np.asarray(max(parts, key=lambda p: p.area).exterior.coords)[:, :2] if parts else \
        np.asarray([geom.representative_point().coords[0]])

    def towards(right: bool, up: bool) -> np.ndarray:
        return xy[np.argmax((1 if right else -1) * xy[:, 0] + (-1 if up else 1) * xy[:, 1])]

    x, y = towards(True, True)
    right, up = bool(x < 0.96 * width), bool(y > 0.04 * height)
    if not (right and up):
        x, y = towards(right, up)
    return float(x), float(y), right, up


def quicklook_figure(img: np.ndarray, gdf, scene, *, truth: list | None = None, truth_name: str | None = None,
                     decimation: int = 1):
    """The quicklook as a matplotlib ``Figure`` (no pyplot state), for :func:`write_quicklook` and tests.

    ``img``: (h, w, 3) floats in [0, 1], the scene decimated ``decimation`` times, drawn over the scene's
    full pixel extent. ``truth``: reference polygons in pixel space (:func:`truth_outlines`). Artists carry
    gids: ``predictions`` and ``truth`` (LineCollections of pixel-space rings), ``id`` (one Text per
    labelled polygon), ``scale-bar``, ``corner``, ``north``.
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
        ax.add_collection(_outlines([g for g in truth if g is not None and g.intersects(frame)], TRUTH_COLOUR,
                                    2.8, _halo(3.8), gid="truth", zorder=3))
    if preds:
        ax.add_collection(_outlines(preds, PRED_COLOUR, 1.0, _halo(1.8), gid="predictions", zorder=4))
    labelled = 0 < n <= MAX_ID_LABELS
    if labelled:
        for g, i in zip(preds, ids, strict=True):
            if g is None or g.is_empty:
                continue
            x, y, right, up = label_anchor(g, W, H)
            ax.annotate(str(i), xy=(x, y), xytext=(2 if right else -2, 2 if up else -2), textcoords="offset points",
                        ha="left" if right else "right", va="bottom" if up else "top", fontsize=7, color="black",
                        path_effects=_halo(2.5, "white", 0.9), zorder=5, gid="id", annotation_clip=False)

    # scale bar (true ground metres along rows) and north arrow
    notes = []
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
                                    path_effects=_halo(3.5, "white", 0.9)))
        ax.text(0.7, 0, "N", transform=offset_copy(anchor, fig=fig, x=ux * 20, y=uy * 20, units="points"),
                ha="center", va="center", fontsize=9, fontweight="bold", path_effects=_halo(2.5, "white", 0.9),
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
    handles = [Line2D([], [], color=PRED_COLOUR, lw=2, path_effects=_halo(3.4), label=f"predicted ({n})")]
    if truth_name is not None:
        short = truth_name if len(truth_name) <= 40 else truth_name[:18] + "..." + truth_name[-19:]
        handles.append(Line2D([], [], color=TRUTH_COLOUR, lw=2.8, path_effects=_halo(3.8),
                              label=f"reference: {short} ({in_scene} in the scene, of {len(truth)})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 0), ncol=1, frameon=False, fontsize=8,
              bbox_transform=ax.transAxes + ScaledTranslation(0, -28 / 72, fig.dpi_scale_trans),
              borderaxespad=0, handlelength=2.2)
    crs = crs_name(scene.crs)
    long_name = _crs_long_name(scene.crs)
    unit = _unit(scene.crs)
    geographic = unit is not None and _is_geographic(scene.crs)
    caption = [f"CRS {crs}" + (f" ({long_name})" if long_name and long_name != crs else ""),
               "corners: latitude, longitude of the image corners" if geographic else
               f"corners: map x, y{f' ({unit})' if unit else ''} and latitude, longitude of the image corners"]
    caption += notes
    if decimation > 1:
        caption.append(f"image shown at 1/{decimation} of its resolution")
    text = "\n".join(textwrap.wrap("; ".join(caption), 125))
    ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -78), textcoords="offset points",
                ha="left", va="top", fontsize=7, color="#333333")
    return fig


def _read_rendering(scene, max_side: int) -> tuple[np.ndarray, int]:
    """The scene's RGB bands (else its first band, grey) read decimated, stretched 2-98 % to [0, 1] (nodata white).

    Returns ``(image (h, w, 3) float32, decimation)``; at most ``max_side`` pixels a side, each raster read
    once (all of its bands together).
    """
    names = {n: (s, i) for s in scene.sources for n, i in s.bands.items()}
    picks = [names[n] for n in ("red", "green", "blue") if n in names] or [next(iter(names.values()))]
    scale = max(1, int(np.ceil(max(scene.width, scene.height) / max_side)))
    h, w = max(1, scene.height // scale), max(1, scene.width // scale)
    by_path: dict[Path, list[int]] = {}  # each raster read once, all of its picked bands together
    for s, i in picks:
        by_path.setdefault(s.path, []).append(i)
    planes = {}
    for p, bands in by_path.items():
        data = read_decimated(scene, p, bands, h, w, masked=True).astype(np.float32).filled(np.nan)
        planes |= {(p, i): x for i, x in zip(bands, data, strict=True)}
    img = np.stack([planes[s.path, i] for s, i in picks], -1)
    for k in range(img.shape[-1]):
        x = img[..., k]
        lo, hi = (np.nanpercentile(x, [2, 98]) if np.isfinite(x).any() else (0.0, 1.0))
        img[..., k] = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.nan_to_num(img, nan=1.0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return img, scale


def read_decimated(scene, path: Path, bands: list[int], h: int, w: int, **read_options) -> np.ndarray:
    """``bands`` (1-based) of the raster ``path``, on the scene's grid (resampled onto it with ``--resample``),
    read whole but decimated to (len(bands), h, w) by GDAL (overviews when the file has them): bounded memory
    whatever the scene's size. ``read_options`` go to rasterio's ``read`` (``masked``, ``resampling``). Raises
    :class:`RtsError` naming the file when GDAL cannot read it."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from rtscli.io.raster import read_error

    try:
        with rasterio.open(path) as src, _on_scene_grid(src, scene, path) as grid:
            return grid.read(bands, out_shape=(len(bands), h, w), **read_options)
    except RasterioIOError as exc:
        raise read_error(path, exc) from None


def valid_footprint(scene, max_side: int = 1024):
    """Where the scene has data: the polygon (scene CRS) of the pixels valid in every band of every source.

    Read decimated to at most ``max_side`` pixels a side (bounded memory whatever the scene's size;
    nearest-neighbour, so the outline is exact to one decimated pixel), with each source's nodata (its own
    or ``--nodata``; NaN too), polygonized through the decimated grid's transform and clipped to the scene's
    true footprint. A scene without nodata gives that footprint itself.
    """
    from rasterio.enums import Resampling
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely import union_all
    from shapely.geometry import shape

    from rtscli.geometry.footprint import window_footprint

    whole = window_footprint(scene.transform, 0, 0, scene.width, scene.height)
    scale = max(1, int(np.ceil(max(scene.width, scene.height) / max_side)))
    h, w = max(1, int(np.ceil(scene.height / scale))), max(1, int(np.ceil(scene.width / scale)))
    valid = np.ones((h, w), bool)
    for s in scene.sources:
        data = read_decimated(scene, s.path, sorted(set(s.bands.values())), h, w, resampling=Resampling.nearest)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.isfinite(data).all(axis=0)
        if s.nodata is not None and s.nodata == s.nodata:
            valid &= (data != s.nodata).all(axis=0)
    if valid.all():
        return whole
    t = scene.transform * Affine.scale(scene.width / w, scene.height / h)
    parts = [shape(g) for g, v in shapes(valid.astype(np.uint8), mask=valid, transform=t) if v == 1]
    if not parts:
        from shapely.geometry import Polygon

        return Polygon()
    return union_all(parts).intersection(whole)


def _outlines(geoms: list, colour: str, width: float, effects: list, *, gid: str, zorder: int):
    """A LineCollection of every ring (outer and holes) of the (multi)polygons ``geoms`` (pixel space)."""
    import shapely
    from matplotlib.collections import LineCollection

    rings = []
    for g in geoms:
        if g is None or g.is_empty:
            continue
        for part in shapely.get_parts(g):
            if part.geom_type == "Polygon":
                rings += [np.asarray(r.coords)[:, :2] for r in shapely.get_rings(part)]
    return LineCollection(rings, colors=colour, linewidths=width, path_effects=effects, gid=gid, zorder=zorder)


def _halo(width: float, colour: str = "black", alpha: float = 0.6) -> list:
    """Path effects drawing a line or text over a wider halo, readable on bright and dark imagery alike."""
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=width, foreground=colour, alpha=alpha), patheffects.Normal()]


def _geodetic(crs) -> tuple[Any, Any, Any, Any]:
    """``(to_lonlat, geod, horizontal_crs, from_lonlat)`` for ``crs`` (its horizontal part when compound).

    Raises :class:`RtsError` when the CRS is missing, unreadable or has no datum.
    """
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    if crs is None:
        raise RtsError("the scene has no CRS", fix="assign one (gdal_edit.py -a_srs EPSG:...)")
    try:
        c = CRS.from_user_input(crs)
        horizontal = c.sub_crs_list[0] if c.is_compound else c
        geodetic = horizontal.geodetic_crs
        if geodetic is None:
            raise RtsError(f"the CRS {horizontal.name} has no datum", fix="assign a CRS with a datum")
        return (Transformer.from_crs(horizontal, geodetic, always_xy=True), geodetic.get_geod(), horizontal,
                Transformer.from_crs(geodetic, horizontal, always_xy=True))
    except (CRSError, ProjError) as exc:
        raise RtsError(f"the scene's CRS cannot be used ({' '.join(str(exc).split())[:80]})",
                       fix="assign an EPSG CRS") from None


def _crs_long_name(crs) -> str | None:
    """The CRS's own name (``WGS 84 / UTM zone 8N``), or None."""
    try:
        from pyproj import CRS

        return CRS.from_user_input(crs).name if crs is not None else None
    except Exception:  # pyproj's CRSError: the short name in the caption is enough
        return None


def _unit(crs) -> str | None:
    """The unit of the CRS's map x, y as a short word (``m``, ``degree``, ``US survey foot``), or None."""
    try:
        _, _, horizontal, _ = _geodetic(crs)
    except RtsError:
        return None
    unit = horizontal.axis_info[0].unit_name if horizontal.axis_info else None
    return "m" if unit == "metre" else unit


def _is_geographic(crs) -> bool:
    """Whether the CRS's map x, y are longitude and latitude."""
    try:
        return bool(_geodetic(crs)[2].is_geographic)
    except RtsError:
        return False


def _on_scene_grid(src, scene, path: Path):
    """``src`` itself, or (a source resampled with ``--resample``) a bilinear view of it on the scene's grid."""
    import contextlib

    if not scene.resample or path == scene.sources[0].path:
        return contextlib.nullcontext(src)
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    return WarpedVRT(src, crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                     resampling=Resampling.bilinear)
