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
    ``training-data`` (the model's record) or ``none``.
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
            training: Conversion | None = None, training_dtype: str | None = None) -> Conversion:
    """The conversion for the bands ``bands`` of one raster (see the module docstring for the order).

    Nothing is logged here: :func:`report` says it once for many files.

    Args:
        info: the raster's :class:`rtscli.io.raster.RasterInfo` (data type, GDAL scales and offsets).
        bands: band name -> 1-based band index of the bands read from this raster.
        scale: ``--scale`` for the reflectance bands, or None.
        offset: ``--offset`` for the reflectance bands, or None.
        training: ``rts predict``: the model's recorded conversion, or None.
        training_dtype: ``rts predict``: the data type the model's training rasters were stored in, or None.

    Returns:
        The conversion to apply (:data:`NONE` when values are read as stored).
    """
    names = list(bands)
    meta = from_metadata(info.scales, info.offsets, bands)
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
        elif source == "training-data":
            log.info("values of %s: %s, as the model's training data (%s, like this file) were read; pass "
                     "--scale 1 --offset 0 to read the values as stored", which, text, training_dtype)


def suggestion(scene_median: float, train_median: float) -> str:
    """A hint for a scene whose values do not fit the training data's (medians of a reflectance band)."""
    if train_median <= 0 or scene_median <= 0:
        return "check --bands, --scale and --offset against the training data"
    ratio = scene_median / train_median
    if 2e3 <= ratio <= 5e4:
        return ("the scene looks like reflectance x 10000 and the model like 0-1 reflectance: pass --scale 0.0001 "
                "(and --offset -0.1 for Sentinel-2 L2A processed since 2022)")
    if 2e-5 <= ratio <= 5e-4:
        return "the scene looks like 0-1 reflectance and the model like reflectance x 10000: pass --scale 10000"
    return "the scene may be in other units (--scale, --offset) or another band order (--bands)"
