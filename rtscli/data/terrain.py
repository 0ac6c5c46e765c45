"""Terrain from a DEM as a modality: slope, relative elevation and hillshade, read by window onto any scene's grid.

A thaw slump is a landform first: a bowl cut into a slope with a steep headwall. ``--dem PATH`` (a GeoTIFF, a VRT
mosaic of ArcticDEM tiles or a folder of tiles; any CRS and resolution: ArcticDEM mosaics are EPSG:3413 at 2, 10 or
32 m, scenes UTM at 3 or 10 m) gives three channels, the modality ``terrain`` (:data:`CHANNELS`):

* ``slope``: degrees, Horn's (1981) 3 x 3 finite differences, as ``gdaldem slope`` computes it;
* ``relief``: relative elevation (topographic position index), metres: the elevation minus the mean elevation
  within :attr:`TerrainSettings.radius_m` (a disc; default 100 m, the size of a large slump's scar);
* ``hillshade``: 0-1, the cosine of the angle between the surface normal and the sun (azimuth 315°, altitude 45°),
  ESRI's and ``gdaldem hillshade``'s formula without the 0-255 scaling.

The DEM is read by window onto the scene's grid (bilinear, GDAL's warper: :class:`rasterio.vrt.WarpedVRT`), with a
margin around each window of the relief radius plus two pixels, so that the derivatives of a window equal those of
the whole raster (no seam at tile borders); it is never read whole. DEM voids (its nodata, NaN) stay NaN: no slope or
relief is made up from them, and every channel is NaN where any pixel it needs is void, which rts counts as nodata.
Vertical units come from the band's unit (``ft``/``foot``/``US survey foot``) or a compound CRS's vertical axis, and
are converted to metres.

Why not a terrain library: ``xdem`` and ``richdem`` compute these attributes on whole in-memory DEMs (``richdem`` has
no release since 2018), while rts needs them per window with a margin, on the scene's grid; GDAL's ``gdaldem`` is
not reachable from rasterio. The formulas are few and standard, and the tests check them against surfaces whose
slope, relief and shading are known exactly.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.data.modalities import TERRAIN
from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: the channels of the modality ``terrain``, in order, and their units
CHANNELS = TERRAIN
UNITS = {"slope": "degrees", "relief": "metres", "hillshade": "0-1 (cosine of the sun's incidence)", "dem": "metres"}
#: the least share of a scene a DEM must cover (the rest is nodata for the terrain channels)
MIN_COVER = 0.5
_FEET = {"ft", "foot", "feet", "us survey foot", "us_survey_foot", "ftus", "us-ft", "foot_us"}
FOOT_M = 0.3048


@dataclass(frozen=True)
class TerrainSettings:
    """How the terrain channels are made (recorded in the dataset and the bundle, so ``rts predict`` makes the same)."""

    radius_m: float = 100.0  # relief: the radius of the disc the mean elevation is taken over, metres
    azimuth: float = 315.0  # hillshade: the sun's azimuth, degrees clockwise from north
    altitude: float = 45.0  # hillshade: the sun's altitude above the horizon, degrees

    def record(self) -> dict[str, Any]:
        """What the manifest and bundle keep (YAML-safe)."""
        return {"channels": list(CHANNELS), "radius_m": self.radius_m, "azimuth": self.azimuth,
                "altitude": self.altitude, "units": {c: UNITS[c] for c in CHANNELS},
                "method": "slope and hillshade: Horn (1981) 3x3; relief: elevation minus the disc mean"}

    @classmethod
    def from_record(cls, rec: dict[str, Any] | None) -> "TerrainSettings":
        rec = rec or {}
        return cls(float(rec.get("radius_m", 100.0)), float(rec.get("azimuth", 315.0)),
                   float(rec.get("altitude", 45.0)))

    def margin(self, pixel_m: float) -> int:
        """Pixels read around a window so that its derivatives need nothing beyond them."""
        return int(math.ceil(self.radius_m / pixel_m)) + 2


def _disc(radius_px: float) -> np.ndarray:
    r = int(math.floor(radius_px))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy <= radius_px * radius_px).astype(np.float32)


def derivatives(elev: np.ndarray, pixel_m: tuple[float, float], settings: TerrainSettings,
                margin: int) -> dict[str, np.ndarray]:
    """Slope, relief and hillshade of the inner part of a DEM window.

    Args:
        elev: elevations, metres, ``(H + 2 * margin, W + 2 * margin)`` float32; voids NaN.
        pixel_m: pixel width and height, metres (both positive).
        settings: the relief radius and the sun.
        margin: pixels on each side of ``elev`` that only feed the derivatives (at least the relief radius + 1).

    Returns:
        ``{channel: (H, W) float32}`` for :data:`CHANNELS`; NaN where a pixel the channel needs is void.

    Source: Horn, B. K. P. (1981), "Hill shading and the reflectance map", Proc. IEEE 69(1); ESRI, "How Hillshade
    works" (ArcGIS Pro documentation); the relative elevation as in the topographic position index of Weiss (2001).
    """
    import cv2

    e = elev.astype(np.float32, copy=False)
    dx, dy = float(pixel_m[0]), float(pixel_m[1])
    a, b, c = e[:-2, :-2], e[:-2, 1:-1], e[:-2, 2:]
    d, f = e[1:-1, :-2], e[1:-1, 2:]
    g, h, i = e[2:, :-2], e[2:, 1:-1], e[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * dx)  # eastward
    dzdy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8 * dy)  # southward (rows grow downward)
    slope_rad = np.arctan(np.hypot(dzdx, dzdy))
    aspect = np.arctan2(dzdy, -dzdx)
    zenith = math.radians(90.0 - settings.altitude)
    azimuth = math.radians((360.0 - settings.azimuth + 90.0) % 360.0)
    shade = math.cos(zenith) * np.cos(slope_rad) + math.sin(zenith) * np.sin(slope_rad) * np.cos(azimuth - aspect)
    inner = (slice(margin - 1, e.shape[0] - margin - 1), slice(margin - 1, e.shape[1] - margin - 1))
    valid = np.isfinite(e)
    kernel = _disc(settings.radius_m / max(dx, dy))
    zero = np.where(valid, e, 0).astype(np.float32)
    total = cv2.filter2D(zero, cv2.CV_32F, kernel, borderType=cv2.BORDER_CONSTANT)
    count = cv2.filter2D(valid.astype(np.float32), cv2.CV_32F, kernel, borderType=cv2.BORDER_CONSTANT)
    full = count >= kernel.sum() - 0.5  # every pixel of the disc has an elevation
    with np.errstate(invalid="ignore", divide="ignore"):
        relief = np.where(full & valid, e - total / np.maximum(count, 1), np.nan)
    m = margin
    void = ~valid[m:-m or None, m:-m or None]  # Horn's window leaves out its centre: a void pixel stays void
    out = {"slope": np.where(void, np.nan, np.degrees(slope_rad)[inner]), "relief": relief[m:-m or None, m:-m or None],
           "hillshade": np.where(void, np.nan, np.clip(shade, 0.0, 1.0)[inner])}
    return {k: v.astype(np.float32, copy=False) for k, v in out.items()}


def _vertical_factor(src: Any, path: Path) -> float:
    """Metres per stored unit of the DEM's heights: from the band's unit, else a compound CRS's vertical axis."""
    units = [str(u or "").strip().lower() for u in (src.units or ())]
    if units and units[0] in _FEET:
        return FOOT_M
    if units and units[0] not in ("", "m", "metre", "meter", "metres", "meters"):
        raise RtsError(f"the DEM's heights are in {units[0]!r}, which rts cannot convert to metres", path=path,
                       fix="convert the DEM to metres first (QGIS Raster Calculator), or set its band unit to m or ft")
    if src.crs is not None:
        from pyproj import CRS

        crs = CRS.from_wkt(src.crs.to_wkt())
        for sub in crs.sub_crs_list or []:
            if sub.is_vertical and sub.axis_info:
                unit = sub.axis_info[0].unit_name.lower()
                if "foot" in unit or "feet" in unit:
                    return FOOT_M if "us" not in unit else 1200 / 3937
    return 1.0


class Dem:
    """A DEM (file, VRT or folder of tiles) read by window onto scene grids.

    Args:
        path: a raster GDAL reads (GeoTIFF, VRT) or a folder of tiles (mosaicked as an in-memory VRT; tiles of one
            CRS, resolution and data type, e.g. ArcticDEM mosaic tiles).
        settings: the derivatives' settings.

    Raises:
        RtsError: a missing file, a folder without rasters or with tiles that differ, a DEM without CRS, heights in
            units rts cannot convert, a DEM whose sampled pixels are all void.
    """

    def __init__(self, path: Path, settings: TerrainSettings | None = None) -> None:
        import rasterio

        from rtscli.io.raster import gdal_env

        self.given = Path(path)
        self.settings = settings or TerrainSettings()
        self.path = _mosaic(self.given) if self.given.is_dir() else self.given
        if not self.given.exists():
            raise RtsError("DEM not found", path=self.given, fix="pass a DEM GeoTIFF, VRT or folder of tiles to --dem")
        try:
            with gdal_env(), rasterio.open(self.path) as src:
                if src.crs is None:
                    raise RtsError("the DEM has no CRS", path=self.given,
                                   fix="set it (ArcticDEM is EPSG:3413): Raster > Projections > Assign Projection in "
                                       "QGIS")
                self.crs, self.bounds, self.nodata = src.crs, src.bounds, src.nodata
                self.res = src.res
                self.factor = _vertical_factor(src, self.given)
                side = 256
                sample = src.read(1, out_shape=(min(side, src.height), min(side, src.width)), masked=True)
        except rasterio.errors.RasterioIOError as exc:
            raise RtsError(f"cannot read the DEM ({' '.join(str(exc).split())[:160]})", path=self.given,
                           fix="pass a DEM GDAL reads (GeoTIFF, VRT)") from None
        data = np.ma.filled(sample.astype(np.float32), np.nan)
        if not np.isfinite(data).any():
            raise RtsError("the DEM is void everywhere rts sampled it (all nodata)", path=self.given,
                           fix="check its nodata value, or pass another DEM")
        if self.factor != 1.0:
            log.info("DEM %s: heights in feet, converted to metres", self.given.name)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("path", "_open")}

    def __setstate__(self, state: dict[str, Any]) -> None:  # another process (a Ray worker): mosaic the folder anew
        self.__dict__.update(state)
        self.path = _mosaic(self.given) if self.given.is_dir() else self.given

    def record(self) -> dict[str, Any]:
        """The DEM and the settings, for the manifest and the bundle."""
        return {"path": str(self.given.resolve()), **self.settings.record()}

    def coverage(self, crs: Any, transform: Any, width: int, height: int) -> float:
        """The share (0-1) of a scene's footprint that the DEM's extent covers."""
        from shapely.geometry import box

        from rtscli.geometry.footprint import to_crs, window_footprint

        scene = window_footprint(transform, 0, 0, width, height)
        dem = to_crs([box(*self.bounds)], self.crs, crs)[0]
        return float(scene.intersection(dem).area / scene.area) if scene.area else 0.0

    def check_covers(self, crs: Any, transform: Any, width: int, height: int, scene: str) -> None:
        """Refuse a scene the DEM covers less than :data:`MIN_COVER` of (saying how much it covers); warn below 1."""
        share = self.coverage(crs, transform, width, height)
        if share < MIN_COVER:
            raise RtsError(f"the DEM covers {share:.0%} of scene {scene} (at least {MIN_COVER:.0%} is needed)",
                           path=self.given, fix="pass a DEM (or a mosaic of tiles) that covers the scene")
        if share < 0.999:
            log.warning("the DEM covers %.0f%% of scene %s: the terrain channels are nodata on the rest", share * 100,
                        scene)

    def read(self, crs: Any, transform: Any, col: int, row: int, width: int, height: int) -> dict[str, np.ndarray]:
        """The terrain channels of one window of a scene grid.

        Args:
            crs: the scene's CRS (projected, metres).
            transform: the scene's affine transform.
            col: the window's first column, pixels.
            row: the window's first row, pixels.
            width: columns, pixels.
            height: rows, pixels.

        Returns:
            ``{channel: (height, width) float32}`` for :data:`CHANNELS` (NaN where the DEM is void or absent).
        """
        elev, pixel, m = self.elevation(crs, transform, col, row, width, height)
        return derivatives(elev, pixel, self.settings, m)

    def elevation(self, crs: Any, transform: Any, col: int, row: int, width: int, height: int
                  ) -> tuple[np.ndarray, tuple[float, float], int]:
        """The DEM's heights (metres, NaN voids) on a window of a scene grid with the derivatives' margin:
        ``(elevations (height + 2m, width + 2m), (pixel width, pixel height) in metres, m)``."""
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.transform import Affine
        from rasterio.vrt import WarpedVRT

        from rtscli.io.raster import gdal_env

        px = (math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e))
        m = self.settings.margin(max(px))
        t = transform @ Affine.translation(col - m, row - m)
        pid = os.getpid()
        opened = getattr(self, "_open", None)
        if opened is None or opened[0] != pid:  # opened once per process (tiles are read one after the other)
            with gdal_env():
                self._open = opened = (pid, rasterio.open(self.path))
        with gdal_env(), WarpedVRT(opened[1], crs=crs, transform=t, width=width + 2 * m, height=height + 2 * m,
                                   resampling=Resampling.bilinear, src_nodata=self.nodata, nodata=np.nan,
                                   dtype="float32") as vrt:
            elev = vrt.read(1)
        if self.factor != 1.0:
            elev *= np.float32(self.factor)
        return elev, px, m


#: the band name whose heights give the terrain channels when no ``--dem`` is given (a raster band or ``--aux dem=``)
DEM_BAND = "dem"


class BandDem:
    """Terrain from a band named :data:`DEM_BAND` of the input rasters (a band of the raster, e.g. ``rts synth --dem``
    chips, or an aligned ``--aux dem=PATH``), on the raster's own grid.

    A window is read with the same margin as from a :class:`Dem`, so windows of one raster join without seams.
    Beyond the raster's edge the edge's heights are repeated (as ``gdaldem -compute_edges`` does), so that a chip
    which is a whole sample keeps its borders; voids (the band's nodata, NaN) stay void.

    Args:
        settings: the derivatives' settings.
    """

    def __init__(self, settings: TerrainSettings | None = None) -> None:
        self.settings = settings or TerrainSettings()

    def record(self) -> dict[str, Any]:
        """The source and the settings, for the manifest and the bundle."""
        return {"band": DEM_BAND, **self.settings.record()}

    def read_band(self, src: Any, band: int, transform: Any, col: int, row: int, width: int, height: int,
                  scale: float = 1.0, offset: float = 0.0) -> dict[str, np.ndarray]:
        """The terrain channels of one window of a raster whose band ``band`` holds heights.

        Args:
            src: the open raster (rasterio dataset).
            band: the heights' band, 1-based.
            transform: the raster's affine transform (projected, metres).
            col: the window's first column, pixels.
            row: the window's first row, pixels.
            width: columns, pixels.
            height: rows, pixels.
            scale: stored -> metres factor of the band (its GDAL scale, ``--scale``), before any foot conversion.
            offset: stored -> metres offset of the band.

        Returns:
            ``{channel: (height, width) float32}`` for :data:`CHANNELS` (NaN where the heights are void).

        Raises:
            RtsError: the band's heights are in units rts cannot convert, or cannot be read.
        """
        from rasterio.windows import Window

        from rtscli.io.raster import read_window

        px = (math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e))
        m = self.settings.margin(max(px))
        r0, c0, r1, c1 = max(row - m, 0), max(col - m, 0), min(row + height + m, src.height), min(col + width + m,
                                                                                                    src.width)
        if r0 >= r1 or c0 >= c1:
            return {c: np.full((height, width), np.nan, np.float32) for c in CHANNELS}
        z = read_window(src, Window(c0, r0, c1 - c0, r1 - r0), [band])[0].astype(np.float32)
        if src.nodata is not None:
            z[z == np.float32(src.nodata)] = np.nan
        units = (src.units or ())[band - 1:band]
        factor = FOOT_M if units and str(units[0] or "").strip().lower() in _FEET else 1.0
        z = (z * np.float32(scale) + np.float32(offset)) * np.float32(factor)
        # heights beyond the raster's edge repeat the edge's (gdaldem -compute_edges)
        pads = ((r0 - (row - m), row + height + m - r1), (c0 - (col - m), col + width + m - c1))
        elev = np.pad(z, pads, mode="edge") if any(v for p in pads for v in p) else z
        return derivatives(elev, px, self.settings, m)


def _mosaic(folder: Path) -> Path:
    """A folder of DEM tiles as one in-memory VRT mosaic (GDAL ``/vsimem/``), tiles of one CRS, resolution and type."""
    import rasterio
    from rasterio.io import MemoryFile

    tiles = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".vrt")
                   and p.is_file() and not p.name.startswith("."))
    if not tiles:
        raise RtsError("no DEM tiles (*.tif, *.tiff, *.vrt) in this folder", path=folder,
                       fix="pass the folder that holds the tiles, or one DEM file")
    infos = []
    for p in tiles:
        with rasterio.open(p) as src:
            infos.append((p, src.crs, src.res, src.dtypes[0], src.bounds, src.nodata, src.width, src.height))
    first = infos[0]
    for p, crs, res, dtype, *_ in infos[1:]:
        if crs != first[1] or not np.allclose(res, first[2]) or dtype != first[3]:
            raise RtsError(f"DEM tile {p.name} differs from {first[0].name} (CRS, resolution or data type)",
                           path=folder, fix="pass tiles of one CRS and resolution, or one VRT of them (QGIS: Raster > "
                                             "Miscellaneous > Build Virtual Raster)")
    rx, ry = first[2]
    x0 = min(i[4].left for i in infos)
    y1 = max(i[4].top for i in infos)
    x1 = max(i[4].right for i in infos)
    y0 = min(i[4].bottom for i in infos)
    w, h = int(round((x1 - x0) / rx)), int(round((y1 - y0) / ry))
    dtype = {"float32": "Float32", "float64": "Float64", "int16": "Int16", "uint16": "UInt16", "int32": "Int32"}.get(
        first[3], "Float32")
    nd = first[5]
    sources = "".join(
        f'<ComplexSource><SourceFilename relativeToVRT="0">{p.resolve()}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{tw}" ySize="{th}"/>'
        f'<DstRect xOff="{(b.left - x0) / rx!r}" yOff="{(y1 - b.top) / ry!r}" xSize="{tw}" ySize="{th}"/>'
        + (f"<NODATA>{nd!r}</NODATA>" if nd is not None else "") + "</ComplexSource>"
        for p, _, _, _, b, _, tw, th in infos)
    from xml.sax.saxutils import escape

    xml = (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{escape(first[1].to_wkt())}</SRS>'
           f"<GeoTransform>{x0!r}, {rx!r}, 0.0, {y1!r}, 0.0, {-ry!r}</GeoTransform>"
           f'<VRTRasterBand dataType="{dtype}" band="1">'
           + (f"<NoDataValue>{nd!r}</NoDataValue>" if nd is not None else "") + sources
           + "</VRTRasterBand></VRTDataset>")
    mem = MemoryFile(xml.encode(), dirname="rts_dem" + str(folder.resolve()), filename="mosaic.vrt")
    _MOSAICS.append(mem)
    log.info("DEM: %d tiles of %s mosaicked (an in-memory VRT)", len(tiles), folder)
    return Path(mem.name)


_MOSAICS: list[Any] = []  # the in-memory mosaics, kept for as long as the process runs
