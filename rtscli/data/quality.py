"""Quality masks: which pixels of a scene are clouds, cloud shadow, haze, cirrus, snow or the product's own no data.

``rts predict``, ``rts prepare`` and ``rts ssl`` take one quality mask per scene (``--quality auto|PATH``) and treat
its invalid pixels as nodata: no detection from them, ``touches_nodata`` for slumps that reach them, and they are
left out of the map's footprint, so ``rts track`` does not call a slump under a cloud "disappeared".

The products are read as their providers write them (one decoding function each, :data:`PRODUCTS`):

* **PlanetScope UDM2** (``*_udm2.tif`` beside ``*_AnalyticMS_SR*.tif``): 8 bands, uint8, no nodata value; bands
  1 clear, 2 snow, 3 shadow, 4 light haze, 5 heavy haze, 6 cloud (0/1 each, one class per pixel), 7 confidence
  (0-100, not used here), 8 the legacy unusable-data mask (UDM1 bits: 0 blackfill, 1 cloud, 2-6 missing or
  suspect data in a band). Planet, "PSScene" asset ``ortho_udm2`` band metadata
  (https://docs.planet.com/data/imagery/planetscope/psscene/) and "Usable Data Masks" (UDM2, Cloud 2.0).
* **Sentinel-2 L2A SCL** (``*_SCL_20m.jp2`` in the SAFE's ``R20m`` folder, ``SCL.tif`` in the COG layouts of
  Element84 and Microsoft): 1 band, uint8, 20 m beside the 10 m bands, nodata 0; classes 0 no data,
  1 saturated or defective, 2 dark area (topographic shadow in newer processing baselines), 3 cloud shadow,
  4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability, 9 cloud high probability,
  10 thin cirrus, 11 snow or ice. ESA, "Sentinel-2 MSI Level-2A Product Format Specification" (S2-PDGS-TAS-DI-PSD)
  and the Sen2Cor Software User Manual, Scene Classification.
* **Landsat Collection 2 QA_PIXEL** (``*_QA_PIXEL.TIF`` beside the ``*_SR_B*.TIF`` bands): 1 band, uint16 bit
  flags, fill value 1; bit 0 fill, 1 dilated cloud, 2 cirrus (Landsat 8-9), 3 cloud, 4 cloud shadow, 5 snow,
  6 clear, 7 water, 8-15 confidences (not used here). USGS, "Landsat 8-9 Collection 2 Level 2 Science Product
  Guide" (LSDS-1619), Table 6-3, and the Landsat 4-7 guide (LSDS-1618).
* **A plain 0/1 mask**: 1 band, any integer type, 1 = usable and 0 = not (as UDM2's clear band); the file's own
  nodata value is not usable either. No classes: ``--quality-invalid`` does not apply.

Which classes count as invalid is :data:`DEFAULT_INVALID` (cloud, shadow, haze, cirrus, snow), changed with
``--quality-invalid`` (e.g. ``cloud,shadow,cirrus,snow`` keeps haze). The product's own no data (UDM2 blackfill
and suspect data, SCL 0 and 1, QA_PIXEL fill) is always invalid.

A mask may lie on another grid than the scene (SCL's 20 m beside 10 m bands, another CRS): it is read onto the
scene's grid by window, nearest neighbour (each scene pixel takes the mask pixel under its centre), never whole;
scene pixels the mask does not cover count as invalid. Masks are found beside a scene by the providers' naming
(:func:`find_mask`); a file that is named like a mask is never taken for a scene (:func:`product_by_name`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: the classes a quality mask can flag, in words
CLASSES = {
    "cloud": "cloud (UDM2 cloud; SCL cloud of medium and high probability; QA_PIXEL cloud and dilated cloud)",
    "shadow": "cloud shadow",
    "haze": "haze (UDM2 light and heavy haze)",
    "cirrus": "thin cirrus (SCL 10, QA_PIXEL bit 2)",
    "snow": "snow and ice",
    "dark": "dark area or topographic shadow (SCL 2)",
}
#: the classes counted invalid unless ``--quality-invalid`` says otherwise
DEFAULT_INVALID = ("cloud", "shadow", "haze", "cirrus", "snow")
#: UDM2 band numbers (1-based) of each class, and of its legacy unusable-data mask (Planet, PSScene ortho_udm2)
UDM2_BANDS = {"clear": 1, "snow": 2, "shadow": 3, "haze_light": 4, "haze_heavy": 5, "cloud": 6, "confidence": 7,
              "udm1": 8}
#: UDM1 bits that mean no data: 0 blackfill, 2-6 missing or suspect data in the blue, green, red, red-edge, NIR band
UDM1_NODATA_BITS = 0b0111_1101
#: SCL values (ESA L2A product format specification)
SCL = {"no_data": 0, "saturated_defective": 1, "dark_area": 2, "cloud_shadow": 3, "vegetation": 4,
       "not_vegetated": 5, "water": 6, "unclassified": 7, "cloud_medium": 8, "cloud_high": 9, "thin_cirrus": 10,
       "snow": 11}
#: QA_PIXEL bit numbers (USGS LSDS-1619, Table 6-3)
QA_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "cloud_shadow": 4, "snow": 5, "clear": 6,
           "water": 7}
#: how a quality mask is chosen, as ``--quality`` says it
AUTO = "auto"
#: the longest side of the decimated read that checks a mask's content (values, share invalid)
SNIFF_SIDE = 256


def _udm2(data: np.ndarray, invalid: frozenset[str]) -> np.ndarray:
    """Invalid pixels of a PlanetScope UDM2 window.

    Args:
        data: ``(8, H, W)`` uint8, the file's eight bands.
        invalid: the classes counted invalid (of :data:`CLASSES`).

    Returns:
        ``(H, W)`` bool: True where a chosen class band is 1, or the legacy mask (band 8) flags blackfill or
        suspect data.
    """
    out = (data[UDM2_BANDS["udm1"] - 1] & UDM1_NODATA_BITS) != 0
    names = {"cloud": ("cloud",), "shadow": ("shadow",), "haze": ("haze_light", "haze_heavy"), "snow": ("snow",)}
    for cls, bands in names.items():
        if cls in invalid:
            for b in bands:
                out |= data[UDM2_BANDS[b] - 1] != 0
    return out


def _scl(data: np.ndarray, invalid: frozenset[str]) -> np.ndarray:
    """Invalid pixels of a Sentinel-2 L2A scene classification (SCL) window.

    Args:
        data: ``(1, H, W)`` uint8 class values (0-11).
        invalid: the classes counted invalid.

    Returns:
        ``(H, W)`` bool: True for no data (0), saturated or defective (1), a value beyond 11, and the chosen
        classes (cloud 8 and 9, shadow 3, cirrus 10, snow 11, dark 2).
    """
    v = data[0]
    bad = [SCL["no_data"], SCL["saturated_defective"]]
    codes = {"cloud": (SCL["cloud_medium"], SCL["cloud_high"]), "shadow": (SCL["cloud_shadow"],),
             "cirrus": (SCL["thin_cirrus"],), "snow": (SCL["snow"],), "dark": (SCL["dark_area"],)}
    for cls, values in codes.items():
        if cls in invalid:
            bad += list(values)
    return np.isin(v, bad) | (v > SCL["snow"])


def _qa_pixel(data: np.ndarray, invalid: frozenset[str]) -> np.ndarray:
    """Invalid pixels of a Landsat Collection 2 QA_PIXEL window.

    Args:
        data: ``(1, H, W)`` uint16 bit flags.
        invalid: the classes counted invalid.

    Returns:
        ``(H, W)`` bool: True where the fill bit (0) or a chosen class's bit is set (cloud: bits 1 and 3, cirrus 2,
        shadow 4, snow 5).
    """
    v = data[0].astype(np.uint32)
    bits = 1 << QA_BITS["fill"]
    for cls, names in {"cloud": ("dilated_cloud", "cloud"), "cirrus": ("cirrus",), "shadow": ("cloud_shadow",),
                       "snow": ("snow",)}.items():
        if cls in invalid:
            for n in names:
                bits |= 1 << QA_BITS[n]
    return (v & bits) != 0


def _binary(data: np.ndarray, invalid: frozenset[str]) -> np.ndarray:
    """Invalid pixels of a plain 0/1 mask window (1 = usable).

    Args:
        data: ``(1, H, W)`` values.
        invalid: not used (a plain mask has no classes).

    Returns:
        ``(H, W)`` bool: True where the value is not 1.
    """
    return data[0] != 1


@dataclass(frozen=True)
class Product:
    """A quality-mask product: its layout, the classes it flags and how its values are decoded."""

    key: str  # as --quality-product and the log name it
    title: str
    count: int  # bands
    dtypes: tuple[str, ...]  # data types it comes in
    classes: tuple[str, ...]  # the classes of CLASSES it flags
    spec: str  # where its encoding is specified
    decode: Callable[[np.ndarray, frozenset[str]], np.ndarray]  # (bands, H, W) values -> (H, W) invalid


PRODUCTS: dict[str, Product] = {p.key: p for p in (
    Product("udm2", "PlanetScope UDM2", 8, ("uint8",), ("cloud", "shadow", "haze", "snow"),
            "Planet PSScene ortho_udm2", _udm2),
    Product("scl", "Sentinel-2 L2A SCL", 1, ("uint8",), ("cloud", "shadow", "cirrus", "snow", "dark"),
            "ESA Sentinel-2 L2A product format, SCL", _scl),
    Product("qa_pixel", "Landsat Collection 2 QA_PIXEL", 1, ("uint16",), ("cloud", "shadow", "cirrus", "snow"),
            "USGS LSDS-1619 QA_PIXEL", _qa_pixel),
    Product("binary", "0/1 mask (1 = usable)", 1,
            ("uint8", "int8", "uint16", "int16", "uint32", "int32"), (), "rts: 1 = usable", _binary),
)}


def parse_classes(text: str | None) -> frozenset[str]:
    """``--quality-invalid``: the classes counted invalid.

    Args:
        text: comma-separated class names (of :data:`CLASSES`); None or empty: :data:`DEFAULT_INVALID`.

    Returns:
        The class names.

    Raises:
        RtsError: an unknown class (with the choices and, when close, "did you mean").
    """
    from rtscli.errors import unknown_choice

    if text is None or not text.strip():
        return frozenset(DEFAULT_INVALID)
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in CLASSES:
            raise unknown_choice("quality class", n, list(CLASSES))
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# finding a mask by name
# ---------------------------------------------------------------------------------------------
_UDM2_NAME = re.compile(r"_udm2(_|$)", re.I)
_SCL_NAME = re.compile(r"(^|_)SCL(_[0-9]+m)?$", re.I)
_QA_NAME = re.compile(r"_QA_PIXEL$", re.I)
#: a PlanetScope scene's id and what follows its product name (``_clip``)
_PLANET = re.compile(r"^(?P<id>.+?)_(?:AnalyticMS|Analytic|BGRN|RGBN)(?:_SR)?(?:_8b)?(?:_SR)?(?:_harmonized)?"
                     r"(?P<tail>_clip)?(?:_.*)?$", re.I)
#: a Sentinel-2 SAFE band file (``T33UUP_20230715T101031_B04_10m``) or product id
#: (``S2A_MSIL2A_20230715T101031_N0509_R022_T33UUP_20230715T130221``)
_S2_BAND = re.compile(r"(?P<tile>T\d{2}[A-Z]{3})_(?P<time>\d{8}T\d{6})", re.I)
_S2_PRODUCT = re.compile(r"S2[ABCD]_MSIL2A_(?P<time>\d{8}T\d{6})_N\d{4}_R\d{3}_(?P<tile>T\d{2}[A-Z]{3})", re.I)
#: a Landsat Collection 2 product id (``LC08_L2SP_034033_20230715_20230721_02_T1``)
_LANDSAT = re.compile(r"L[COTEM]0\d_L\d[A-Z]{2}_\d{6}_\d{8}_\d{8}_\d{2}_(?:T1|T2|RT)", re.I)


def product_by_name(path: Path) -> str | None:
    """The quality-mask product a file's name says it is (``udm2``, ``scl``, ``qa_pixel``), else None.

    Args:
        path: a file.

    Returns:
        The product's key, or None for a name no provider gives its masks.
    """
    stem = Path(path).stem
    if _UDM2_NAME.search(stem):
        return "udm2"
    if _SCL_NAME.search(stem):
        return "scl"
    if _QA_NAME.search(stem):
        return "qa_pixel"
    return None


def _candidates(scene: Path, folder: Path) -> list[Path]:
    """The files a quality mask of ``scene`` would be, by the providers' naming, in order of preference: UDM2
    (PlanetScope), SCL (Sentinel-2: a SAFE's ``R20m`` folder too, and ``SCL.tif`` of the COG layouts), QA_PIXEL
    (Landsat), then a file named as the scene in ``folder`` (when it is not the scene's own folder)."""
    stem = scene.stem
    out: list[Path] = []
    ids, tails = [stem], [""]
    m = _PLANET.match(stem)
    if m:
        ids.insert(0, m.group("id"))
        if m.group("tail"):
            tails.insert(0, m.group("tail"))
    out += [folder / f"{i}_udm2{t}.tif" for i in ids for t in tails]
    prefixes = [stem]
    s2 = _S2_PRODUCT.search(stem) or _S2_BAND.search(stem)
    if s2:
        prefixes.append(f"{s2.group('tile').upper()}_{s2.group('time').upper()}")
    for p in prefixes:
        out += [folder / f"{p}_SCL_20m{ext}" for ext in (".jp2", ".tif")] + [folder / f"{p}_SCL.tif"]
    if s2 and folder.name.upper() in ("R10M", "R20M", "R60M"):  # the SAFE: IMG_DATA/R10m beside IMG_DATA/R20m
        out.append(folder.parent / "R20m" / f"{prefixes[-1]}_SCL_20m.jp2")
    out += [folder / "SCL.tif"]
    ls = _LANDSAT.search(stem)
    for pid in ([ls.group(0)] if ls else []) + [stem]:
        out += [folder / f"{pid}_QA_PIXEL.TIF", folder / f"{pid}_QA_PIXEL.tif"]
    if folder.resolve() != scene.parent.resolve():
        out += [folder / scene.name, folder / f"{stem}.tif"]
    return list(dict.fromkeys(out))  # each name once, in order


def find_mask(scene: Path, folder: Path | None = None) -> Path:
    """The quality mask of ``scene``, found by the providers' naming beside it (or in ``folder``).

    Args:
        scene: the scene's (first) raster.
        folder: where to look (``--quality DIR``); None: the scene's own folder (``--quality auto``).

    Returns:
        The mask file (the first found: UDM2, then SCL, then QA_PIXEL, then a file named as the scene in
        ``folder``; others found are logged).

    Raises:
        RtsError: none found, naming the names looked for.
    """
    where = Path(folder) if folder is not None else Path(scene).parent
    cands = _candidates(Path(scene), where)
    found = [p for p in cands if p.is_file() and p.resolve() != Path(scene).resolve()]
    if not found:
        shown = ", ".join(p.name for p in cands[:4])
        raise RtsError(f"no quality mask found for this scene in {where} (looked for {shown}, ...)", path=scene,
                       fix="pass the mask with --quality PATH (a UDM2, SCL, QA_PIXEL or 0/1 GeoTIFF), or drop "
                           "--quality")
    if len(found) > 1:
        log.info("%s: quality masks %s found; %s is used (pass --quality PATH for another)", Path(scene).name,
                 ", ".join(p.name for p in found), found[0].name)
    return found[0]


# ---------------------------------------------------------------------------------------------
# what a mask holds
# ---------------------------------------------------------------------------------------------
def sniff(count: int, dtype: str, sample: np.ndarray) -> str | None:
    """The product a raster's layout and values fit (by content alone), else None.

    Args:
        count: its band count.
        dtype: its data type (numpy name).
        sample: ``(count, h, w)`` values read decimated (nearest neighbour) from the whole raster.

    Returns:
        ``udm2`` (8 uint8 bands, bands 1-6 0/1, band 7 at most 100), ``binary`` (1 band of whole numbers 0/1),
        ``scl`` (1 uint8 band of values 0-11, not only 0/1), ``qa_pixel`` (1 uint16 band whose clear bit is set
        exactly where no cloud bit is, fill pixels apart), or None.
    """
    if count == 8 and dtype == "uint8":
        if sample.size == 0 or (sample[:6] <= 1).all() and (sample[6] <= 100).all():
            return "udm2"
        return None
    if count != 1:
        return None
    v = sample[0]
    if np.issubdtype(v.dtype, np.floating):
        return None
    values = np.unique(v)
    if dtype in PRODUCTS["binary"].dtypes and set(values.tolist()) <= {0, 1}:
        return "binary"
    if dtype == "uint8" and values.size and int(values.max()) <= SCL["snow"]:
        return "scl"
    if dtype == "uint16":
        u = v.astype(np.uint32)
        data = u[(u & 1) == 0]  # fill pixels apart
        if not data.size:
            return "qa_pixel" if (u == 1).all() else None
        cloudy = (data & ((1 << QA_BITS["cloud"]) | (1 << QA_BITS["dilated_cloud"]))) != 0
        clear = (data & (1 << QA_BITS["clear"])) != 0
        if float(np.mean(clear != cloudy)) >= 0.99 and ((u & 1) == 0).sum() + (u == 1).sum() == u.size:
            return "qa_pixel"
    return None


def _layout(count: int, dtype: str) -> str:
    return f"{count} band{'' if count == 1 else 's'} of {dtype}"


@dataclass(frozen=True)
class QualityMask:
    """A scene's quality mask, checked: its file, product, the classes counted invalid and its own grid.

    Small and picklable (a scene carries it to DataLoader and Ray workers); each reader opens the file itself.
    """

    path: Path
    product: str  # a key of PRODUCTS
    invalid: frozenset[str]  # the classes counted invalid
    crs: Any  # the mask's own grid (None: it has none and takes the scene's, same size)
    transform: Any
    width: int
    height: int
    nodata: float | None
    how: str = "given"  # "given" (--quality PATH), "found by name", "found in DIR"
    share: float = 0.0  # share of the mask's pixels invalid (from the decimated content check)
    same_grid: bool = False  # exactly the scene's grid: windows are read as they are
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def title(self) -> str:
        """The product's name (``PlanetScope UDM2``)."""
        return PRODUCTS[self.product].title

    def describe(self) -> str:
        """One line for the log: the file, the product, how it was chosen, what counts invalid and how much is."""
        p = PRODUCTS[self.product]
        classes = [c for c in CLASSES if c in self.invalid and c in p.classes]
        what = ("invalid: " + ", ".join(classes + ["no data"])) if p.classes else "invalid: 0 and nodata"
        return f"quality mask {self.path.name} ({p.title}, {self.how}; {what}; about {self.share:.0%} of it invalid)"

    def open(self) -> Any:
        """The mask's file, opened (rasterio dataset; the caller closes it)."""
        from rtscli.io.raster import open_raster

        return open_raster(self.path)

    def read_invalid(self, src: Any, transform: Any, crs: Any, height: int, width: int) -> np.ndarray:
        """Invalid pixels of a grid, read from the mask by window, nearest neighbour.

        Each pixel of the grid takes the mask pixel under its centre (any affine grid; another CRS through pyproj).
        Only the mask's window under the grid is read; a grid much coarser than the mask (a decimated footprint)
        is read decimated by GDAL (nearest), so memory stays bounded by the grid's size.

        Args:
            src: the mask's open dataset (:meth:`open`).
            transform: the grid's affine transform (of its top-left pixel corner).
            crs: the grid's CRS.
            height: grid rows, pixels.
            width: grid columns, pixels.

        Returns:
            ``(height, width)`` bool: True where the pixel is invalid (a chosen class, the product's no data, the
            file's nodata value) or lies outside the mask.

        Raises:
            RtsError: the mask's pixels cannot be read (naming the file and the window).
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        from rtscli.io.raster import read_window

        rows, cols = self._indices(transform, crs, height, width)
        out = np.ones((height, width), bool)
        inside = (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)
        if not inside.any():
            return out
        rr, cc = np.broadcast_to(rows, out.shape)[inside], np.broadcast_to(cols, out.shape)[inside]
        r0, r1, c0, c1 = int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1
        win = Window(c0, r0, c1 - c0, r1 - r0)
        fr = max(1, (r1 - r0) // max(2 * height, 1))
        fc = max(1, (c1 - c0) // max(2 * width, 1))
        bands = list(range(1, PRODUCTS[self.product].count + 1))
        if fr == 1 and fc == 1:
            data = read_window(src, win, bands, path=self.path)
            ri, ci = rr - r0, cc - c0
        else:  # a coarse grid over a large mask: decimated by GDAL (overviews when the file has them)
            from rasterio.errors import RasterioIOError

            from rtscli.io.raster import read_error

            oh, ow = -(-(r1 - r0) // fr), -(-(c1 - c0) // fc)
            try:
                data = src.read(bands, window=win, out_shape=(len(bands), oh, ow), resampling=Resampling.nearest)
            except RasterioIOError as exc:
                raise read_error(self.path, exc, win) from None
            ri = np.minimum((rr - r0) * oh // (r1 - r0), oh - 1)
            ci = np.minimum((cc - c0) * ow // (c1 - c0), ow - 1)
        bad = self.decode(data)
        out[inside] = bad[ri, ci]
        return out

    def decode(self, data: np.ndarray) -> np.ndarray:
        """``(bands, H, W)`` stored values -> ``(H, W)`` invalid: the product's decoding, and the file's nodata."""
        bad = PRODUCTS[self.product].decode(data, self.invalid)
        if self.nodata is not None and self.nodata == self.nodata:
            bad |= (data == self.nodata).all(axis=0)
        return bad

    def _indices(self, transform: Any, crs: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The mask's (row, column) under each pixel centre of the grid: arrays that broadcast to (height, width)."""
        from affine import Affine

        m = self.transform
        cols = np.arange(width, dtype=np.float64) + 0.5
        rows = np.arange(height, dtype=np.float64) + 0.5
        same_crs = self.crs is None or crs is None or self.crs == crs
        t = Affine(*transform[:6]) if not isinstance(transform, Affine) else transform
        if same_crs and t.b == 0 and t.d == 0 and m.b == 0 and m.d == 0:  # north-up grids: one axis at a time
            xs = t.c + t.a * cols
            ys = t.f + t.e * rows
            mc = np.floor((xs - m.c) / m.a).astype(np.int64)
            mr = np.floor((ys - m.f) / m.e).astype(np.int64)
            return mr[:, None], mc[None, :]
        cc, rr = np.meshgrid(cols, rows)
        xs, ys = t.a * cc + t.b * rr + t.c, t.d * cc + t.e * rr + t.f
        if not same_crs:
            from rasterio.warp import transform as warp

            x2, y2 = warp(crs, self.crs, xs.ravel().tolist(), ys.ravel().tolist())
            xs, ys = np.asarray(x2).reshape(xs.shape), np.asarray(y2).reshape(ys.shape)
        inv = ~m
        mc = np.floor(inv.a * xs + inv.b * ys + inv.c).astype(np.int64)
        mr = np.floor(inv.d * xs + inv.e * ys + inv.f).astype(np.int64)
        return mr, mc


@dataclass(frozen=True)
class QualityRequest:
    """What ``--quality`` and ``--quality-invalid`` ask: where each scene's mask is, and the classes counted invalid.

    ``where`` is ``auto`` (beside each scene, by the providers' naming), a folder (the masks of many scenes, found
    there by the same names or named as the scene) or a file (one scene's mask).
    """

    where: str = AUTO
    invalid: frozenset[str] = frozenset(DEFAULT_INVALID)
    product: str | None = None  # force a product (None: by name, then by content)

    def record(self) -> dict[str, Any]:
        """What the request is, JSON-ready (a many-scene run's provenance: maps made with other masks differ)."""
        where = self.where if self.where == AUTO else str(Path(self.where).resolve())
        return {"where": where, "invalid": sorted(self.invalid), "product": self.product}

    def mask_path(self, scene: Path) -> tuple[Path, str]:
        """The mask file of ``scene`` and how it was chosen.

        Raises:
            RtsError: ``auto`` or a folder finds none; a given file does not exist.
        """
        if self.where == AUTO:
            return find_mask(scene), "found by name"
        from rtscli.io.raster import is_virtual

        p = Path(self.where)
        if p.is_dir():
            return find_mask(scene, p), f"found in {p}"
        if not p.exists() and not is_virtual(p):
            raise RtsError("quality mask not found", path=p,
                           fix="pass the mask file (or a folder of masks) to --quality, or --quality auto")
        return p, "given"

    def open_for(self, scene: Path, crs: Any, transform: Any, width: int, height: int) -> QualityMask:
        """The checked mask of a scene on the grid (crs, transform, width, height) (:func:`open_mask`)."""
        path, how = self.mask_path(scene)
        return open_mask(path, crs=crs, transform=transform, width=width, height=height, invalid=self.invalid,
                         product=self.product, how=how)


def open_mask(path: Path, *, crs: Any, transform: Any, width: int, height: int,
              invalid: frozenset[str] = frozenset(DEFAULT_INVALID), product: str | None = None,
              how: str = "given") -> QualityMask:
    """Check a quality mask against a scene's grid and say what it is.

    The product comes from ``product``, else the file's name (:func:`product_by_name`), else its content
    (:func:`sniff`: band count, data type and values read decimated, never whole); a name and a content that
    disagree, or a content no product fits, are refused. The mask must overlap the scene; a mask without any
    georeference is taken on the scene's grid when it has the scene's size.

    Args:
        path: the mask file.
        crs: the scene's CRS.
        transform: the scene's affine transform.
        width: the scene's columns, pixels.
        height: the scene's rows, pixels.
        invalid: the classes counted invalid.
        product: the product (a key of :data:`PRODUCTS`); None: by name, then by content.
        how: how the file was chosen (for the log).

    Returns:
        The :class:`QualityMask`.

    Raises:
        RtsError: an unreadable file, an unknown encoding, a name that contradicts the content, a mask that does
            not overlap the scene.
    """
    from rasterio.enums import Resampling

    from rtscli.geometry.footprint import to_crs, window_footprint
    from rtscli.io.raster import gdal_env, inspect, open_raster

    path = Path(path)
    info = inspect(path, need_crs=False, pixel_grid_ok=True)
    k = max(1, -(-max(info.width, info.height) // SNIFF_SIDE))
    sh, sw = max(1, -(-info.height // k)), max(1, -(-info.width // k))
    try:
        with gdal_env(), open_raster(path) as src:
            sample = src.read(out_shape=(info.count, sh, sw), resampling=Resampling.nearest)
    except Exception as exc:  # a damaged file: one line naming it
        from rtscli.io.raster import read_error

        raise read_error(path, exc) from None
    by_content = sniff(info.count, info.dtype, sample)
    named = product_by_name(path)
    chosen = product or named or by_content
    known = ", ".join(f"{p.title} ({_layout(p.count, p.dtypes[0])})" for p in PRODUCTS.values())
    if chosen is None:
        raise RtsError(f"this quality mask is not one of the known encodings ({_layout(info.count, info.dtype)}; "
                       f"rts reads {known})", path=path,
                       fix="pass a PlanetScope *_udm2.tif, a Sentinel-2 SCL, a Landsat *_QA_PIXEL.TIF, or a 0/1 "
                           "GeoTIFF with 1 = usable")
    p = PRODUCTS[chosen]
    # an SCL of classes 0 and 1 only reads as a 0/1 mask by content: its name (or --quality-product) decides
    fits = info.count == p.count and info.dtype in p.dtypes and \
        by_content in ({"scl", "binary"} if chosen == "scl" else {chosen})
    if not fits:
        said = "its name says" if product is None and named == chosen else "it is given as"
        got = _layout(info.count, info.dtype)
        raise RtsError(f"{said} {p.title}, but it does not hold that encoding ({got}"
                       + (f", values {_values(sample)}" if info.count == p.count and info.dtype in p.dtypes else "")
                       + f"; {p.title} is {_layout(p.count, p.dtypes[0])}: {p.spec})", path=path,
                       fix="pass the product's own mask file, or a 0/1 GeoTIFF with 1 = usable")
    mask_crs = info.crs
    if info.pixel_grid:  # no georeference: the scene's grid, if it is the scene's size
        if (info.width, info.height) != (width, height):
            raise RtsError(f"this quality mask has no georeference and another size than the scene "
                           f"({info.width}x{info.height} vs {width}x{height})", path=path,
                           fix=f"write the mask on the scene's grid (its size), or georeference it: rio edit-info "
                               f"{path} --crs EPSG:XXXX --transform '[a, b, c, d, e, f]'")
        m_transform, mask_crs = transform, None
    else:
        m_transform = info.transform
    scene_fp = window_footprint(transform, 0, 0, width, height)
    mask_fp = window_footprint(m_transform, 0, 0, info.width, info.height)
    if mask_crs is not None and crs is not None and mask_crs != crs:
        mask_fp = to_crs([mask_fp], mask_crs, crs)[0]
    shared = scene_fp.intersection(mask_fp).area / scene_fp.area if scene_fp.area > 0 else 0.0
    if shared <= 0:
        raise RtsError("this quality mask does not overlap the scene (another place, or another CRS than its "
                       "tags say)", path=path, fix="pass the mask of this scene (same place and date)")
    notes = []
    if shared < 0.999:
        notes.append(f"covers {shared:.0%} of the scene; pixels it does not cover count as invalid")
        log.warning("%s: the quality mask %s %s", path.name, path.name, notes[-1])
    same = (mask_crs is None or mask_crs == crs) and (info.width, info.height) == (width, height) and \
        m_transform.almost_equals(transform, precision=1e-6)
    mask = QualityMask(path=path, product=chosen, invalid=frozenset(invalid), crs=mask_crs, transform=m_transform,
                       width=info.width, height=info.height, nodata=info.nodata, how=how, same_grid=bool(same),
                       notes=tuple(notes))
    share = float(mask.decode(sample).mean()) if sample.size else 0.0
    return dataclasses.replace(mask, share=share)


def _values(sample: np.ndarray) -> str:
    """A few of the values a sample holds, for an error message."""
    u = np.unique(sample)
    return ", ".join(f"{x:g}" for x in u[:6].tolist()) + (", ..." if len(u) > 6 else "")
