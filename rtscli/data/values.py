"""Units of stored band values: scale and offset, from the command line or from GDAL metadata.

Real products do not store reflectance as it is. Sentinel-2 L2A processed since 2022 (baseline
04.00) stores ``reflectance x 10000 + 1000`` (BOA_ADD_OFFSET = -1000), Landsat Collection 2 Level-2
stores ``(reflectance + 0.2) / 2.75e-5``, and PlanetScope reflectance x 10000. GDAL describes this
with a band scale and offset: ``physical = stored * scale + offset`` (rasterio ``src.scales``,
``src.offsets``). ``rts`` turns stored values into physical ones before anything else (NDVI, the
normalization statistics, the model), in this order of precedence:

1. ``--scale`` / ``--offset`` given on the command line: applied to the reflectance bands
   (:data:`REFLECTANCE`; a precomputed NDVI or an elevation band is left alone);
2. otherwise the band scale/offset the raster carries (GDAL metadata), per band, said in the log;
3. otherwise (``rts predict`` only) the conversion the model's training data went through, when the
   scene is stored in the same data type as those data were (an integer product without metadata,
   like the one the model was trained from);
4. otherwise the values as stored.

The conversion used is recorded in the dataset manifest and in model bundles (:meth:`Conversion.record`).
Nodata is decided on the stored values, before any conversion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # for annotations only: this module stays free of rasterio at import
    from rtscli.io.raster import RasterInfo

log = logging.getLogger("rtscli")

#: band names that hold surface reflectance (what --scale/--offset describe) and may get brightness jitter
REFLECTANCE = frozenset({"red", "green", "blue", "nir", "coastal", "green_i", "yellow", "rededge", "rededge1",
                         "rededge2", "rededge3", "nir08", "swir1", "swir2", "pan"})


@dataclass(frozen=True)
class Conversion:
    """``physical = stored * scale[band] + offset[band]`` for the named bands (others stay as stored).

    ``source``: ``options`` (--scale/--offset), ``gdal-metadata`` (the raster's band scale/offset),
    ``stac-raster-bands`` (a STAC item's raster:bands), ``training-data`` (the model's record) or ``none``.
    """

    scale: Mapping[str, float]
    offset: Mapping[str, float]
    source: str = "none"
    replaced: str = ""  # the file's own band scale/offset that --scale/--offset replaced (for the log)

    @property
    def identity(self) -> bool:
        return all(v == 1.0 for v in self.scale.values()) and all(v == 0.0 for v in self.offset.values())

    def vectors(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-band (scale, offset) float32 vectors for bands ``names`` in this order."""
        s = np.array([self.scale.get(n, 1.0) for n in names], np.float32)
        o = np.array([self.offset.get(n, 0.0) for n in names], np.float32)
        return s, o

    def apply(self, data: np.ndarray, names: list[str]) -> np.ndarray:
        """``data`` (bands, rows, cols) of bands ``names`` -> float32 physical values."""
        if self.identity:
            return data.astype(np.float32, copy=False)
        s, o = self.vectors(names)
        return data.astype(np.float32, copy=False) * s[:, None, None] + o[:, None, None]

    def describe(self) -> str:
        """``x * 0.0001 - 0.1`` (one pair for all bands), or per band, for messages."""
        pairs = {(self.scale.get(n, 1.0), self.offset.get(n, 0.0)) for n in set(self.scale) | set(self.offset)}
        if not pairs or self.identity:
            return "as stored"
        if len(pairs) == 1:
            (s, o), = pairs
            return _affine_text(s, o)
        return ", ".join(f"{n}: {_affine_text(self.scale.get(n, 1.0), self.offset.get(n, 0.0))}"
                         for n in sorted(set(self.scale) | set(self.offset)))

    def record(self, stored_dtype: str) -> dict[str, Any]:
        """What the manifest and bundles keep (YAML-safe)."""
        return {"formula": "physical = stored * scale + offset", "source": self.source,
                "scale": {k: float(v) for k, v in self.scale.items() if v != 1.0},
                "offset": {k: float(v) for k, v in self.offset.items() if v != 0.0},
                "stored_dtype": stored_dtype}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any] | None) -> "Conversion | None":
        if not rec:
            return None
        return cls(dict(rec.get("scale") or {}), dict(rec.get("offset") or {}), "training-data")


def _affine_text(s: float, o: float) -> str:
    text = f"x * {s:g}" if s != 1.0 else "x"
    if o:
        text += f" {'-' if o < 0 else '+'} {abs(o):g}"
    return text


NONE = Conversion({}, {}, "none")


def from_options(names: list[str], scale: float | None, offset: float | None) -> Conversion | None:
    """The conversion ``--scale``/``--offset`` ask for on the reflectance bands among ``names``, or None."""
    if scale is None and offset is None:
        return None
    s = 1.0 if scale is None else float(scale)
    o = 0.0 if offset is None else float(offset)
    refl = [n for n in names if n in REFLECTANCE]
    return Conversion({n: s for n in refl}, {n: o for n in refl}, "options")


def from_metadata(scales: Sequence[float | None] | None, offsets: Sequence[float | None] | None,
                  bands: Mapping[str, int]) -> Conversion | None:
    """The band scale/offset a raster carries (GDAL metadata; rasterio ``src.scales``, ``src.offsets``)
    for the named bands (``bands``: name -> 1-based index), or None when all are 1 and 0.

    Args:
        scales: per band (band 1 first), the GDAL scale; None (or missing bands, or None entries) means 1.
        offsets: per band, the GDAL offset; None (or missing bands, or None entries) means 0.
        bands: band name -> 1-based band index.

    Returns:
        The ``gdal-metadata`` conversion, or None when it changes nothing.
    """
    scales, offsets = scales or (), offsets or ()

    def pick(values: Sequence[float | None], i: int, default: float) -> float:
        v = values[i - 1] if i - 1 < len(values) else None
        return default if v is None else float(v)

    conv = Conversion({n: pick(scales, i, 1.0) for n, i in bands.items()},
                      {n: pick(offsets, i, 0.0) for n, i in bands.items()}, "gdal-metadata")
    return None if conv.identity else conv


def resolve(info: RasterInfo, bands: Mapping[str, int], *, scale: float | None, offset: float | None,
            training: Conversion | None = None, training_dtype: str | None = None,
            declared: Conversion | None = None) -> Conversion:
    """The conversion for the bands ``bands`` of one raster (see the module docstring for the order).

    Nothing is logged here: :func:`report` says it once for many files.

    Args:
        info: the raster's :class:`rtscli.io.raster.RasterInfo` (data type, GDAL scales and offsets).
        bands: band name -> 1-based band index of the bands read from this raster.
        scale: ``--scale`` for the reflectance bands, or None.
        offset: ``--offset`` for the reflectance bands, or None.
        training: ``rts predict``: the model's recorded conversion, or None.
        training_dtype: ``rts predict``: the data type the model's training rasters were stored in, or None.
        declared: the scale/offset a catalogue declares for these bands (STAC ``raster:bands``), taken in place of the
            raster's own GDAL scale/offset; None: the raster's own.

    Returns:
        The conversion to apply (:data:`NONE` when values are read as stored).
    """
    names = list(bands)
    meta = from_metadata(info.scales, info.offsets, bands)
    if declared is not None and not declared.identity:
        meta = Conversion({n: declared.scale.get(n, 1.0) for n in names},
                          {n: declared.offset.get(n, 0.0) for n in names}, declared.source)
    opts = from_options(names, scale, offset)
    if opts is not None:
        # the options describe the reflectance bands; any other band (NDVI, elevation) keeps its own metadata
        sc, of = dict(opts.scale), dict(opts.offset)
        replaced = ""
        if meta is not None:
            for n in names:
                if n not in REFLECTANCE:
                    sc[n], of[n] = meta.scale.get(n, 1.0), meta.offset.get(n, 0.0)
            refl = [n for n in names if n in REFLECTANCE]
            mine = Conversion({n: meta.scale[n] for n in refl}, {n: meta.offset[n] for n in refl})
            if not mine.identity and mine.describe() != opts.describe():
                replaced = mine.describe()
        return Conversion(sc, of, "options", replaced=replaced)
    if meta is not None:
        return meta
    if training is not None and not training.identity and training_dtype and info.dtype == training_dtype:
        conv = Conversion({n: v for n, v in training.scale.items() if n in bands},
                          {n: v for n, v in training.offset.items() if n in bands}, "training-data")
        if not conv.identity:
            return conv
    return NONE


def report(conversions: Mapping[Any, Conversion], training_dtype: str | None = None) -> None:
    """Log how stored values were read, one line per kind of conversion (not one per file)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for path, conv in conversions.items():
        groups.setdefault((conv.source, conv.describe(), conv.replaced), []).append(str(getattr(path, "name", path)))
    for (source, text, replaced), files in sorted(groups.items()):
        which = files[0] if len(files) == 1 else f"{len(files)} files (e.g. {files[0]})"
        if source == "options":
            log.info("values of %s: %s (--scale/--offset)%s", which, text,
                     f", replacing the band scale/offset stored in the file ({replaced})" if replaced else "")
        elif source == "gdal-metadata":
            log.info("values of %s: %s, the band scale/offset stored in the file (GDAL metadata)", which, text)
        elif source == "stac-raster-bands":
            log.info("values of %s: %s, the scale/offset of the STAC item's raster:bands", which, text)
        elif source == "training-data":
            log.info("values of %s: %s, as the model's training data (%s, like this file) were read; pass "
                     "--scale 1 --offset 0 to read the values as stored", which, text, training_dtype)


#: the conversions of common products, tried when a scene's values do not fit the model's
PRODUCTS: tuple[tuple[float, float], ...] = (
    (1e-4, 0.0),  # reflectance x 10000 (PlanetScope, Sentinel-2 L2A before 2022)
    (1e-4, -0.1),  # reflectance x 10000 + 1000 (Sentinel-2 L2A processed since 2022)
    (2.75e-5, -0.2),  # Landsat Collection 2 Level-2
    (1e4, 0.0),  # 0-1 reflectance, for a model of reflectance x 10000
)


def suggestion(scene_value: float, train_value: float, *, band: str, scene: Conversion,
               training: Conversion | None = None) -> str:
    """The fix for a scene whose values do not fit the model's, worked out from the actual conversions: the
    ``--scale``/``--offset`` that turn the scene's *stored* values into values like the training data's.

    The scene's stored value is ``scene_value`` taken back through ``scene`` (the conversion it was read with);
    the candidates are the conversion the model's training data went through (``training``), the values as
    stored (``--scale 1``) and those of common products (:data:`PRODUCTS`). The training data's own conversion
    wins when it brings the value within a factor of 3 of ``train_value``, else the closest candidate that does;
    the conversion the scene was read with is never suggested again (following the advice must change
    something).

    Args:
        scene_value: a typical value (median) of ``band`` as read from the scene, in the model's units.
        train_value: a typical value of ``band`` in the training data (the model's normalization mean).
        band: the band compared (a reflectance band).
        scene: the conversion the scene's source of ``band`` was read with.
        training: the conversion of the model's training data (:meth:`Conversion.from_record`), or None.

    Returns:
        A hint for the warning: ``pass --scale 1 (...)``, or what to check when no conversion fits.
    """
    s, o = float(scene.scale.get(band, 1.0)), float(scene.offset.get(band, 0.0))
    stored = (scene_value - o) / s if s else scene_value
    tried: list[tuple[float, float, str]] = []
    if training is not None:
        tried.append((float(training.scale.get(band, 1.0)), float(training.offset.get(band, 0.0)), "training"))
    tried.append((1.0, 0.0, "stored"))
    tried += [(ps, po, "product") for ps, po in PRODUCTS]
    best: tuple[float, float, float, str] | None = None
    for cs, co, kind in tried:
        value = stored * cs + co
        if (_same(cs, s) and _same(co, o)) or value <= 0 or train_value <= 0:
            continue
        err = abs(float(np.log(value / train_value)))
        if err > float(np.log(3.0)):
            continue
        if kind == "training":
            best = (err, cs, co, kind)
            break
        if best is None or err < best[0]:
            best = (err, cs, co, kind)
    read = f"this scene's {band} was read as {scene.describe()}" if not scene.identity else \
        f"this scene's {band} was read as stored"
    if best is None:
        return (f"{read} (about {scene_value:g}; the model's training data: about {train_value:g}) and no usual "
                "conversion fits: check --bands (the band order), --scale and --offset against the training data")
    _, cs, co, kind = best
    flags = f"--scale {cs:g}" + (f" --offset {co:g}" if co or o else "")
    how = {"training": "as the model's training data were read" + (
               f" ({Conversion({band: cs}, {band: co}).describe()})" if (cs, co) != (1.0, 0.0) else " (as stored)"),
           "stored": "the values as stored",
           "product": f"as {Conversion({band: cs}, {band: co}).describe()}"}[kind]
    return f"{read}; pass {flags} to read it {how}"


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
