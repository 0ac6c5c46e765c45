"""Modalities built from a band map.

A *modality* is what one backbone sees: ``rgb`` (red, green, blue), ``nir`` (one band), ``ndvi``
((nir - red) / (nir + red), or a precomputed ``ndvi`` band when the raster has one), ``terrain`` (slope, relief,
hillshade from a DEM: :mod:`rtscli.data.terrain`), or any other
single band named in the band map (``dem``, ``swir1``...), which may come from another aligned
raster. One-channel modalities can be repeated to three channels, as the paper does so that every
backbone keeps a 3-channel stem; that is a setting (``repeat_to``), not a rule.

Everything here works on numpy arrays of shape (bands, rows, cols) and never on whole scenes: the
callers pass one window at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from rtscli.data.bands import BandMap
from rtscli.errors import RtsError, close_matches, unknown_choice

#: Channels that are computed rather than read. name -> the bands it needs.
DERIVED: dict[str, tuple[str, ...]] = {"ndvi": ("nir", "red")}
#: the channels of the modality ``terrain`` (:data:`rtscli.data.terrain.CHANNELS`), made from a DEM (``--dem``)
TERRAIN = ("slope", "relief", "hillshade")


@dataclass(frozen=True)
class Modality:
    """One input modality: a name and the channels (band or derived names) it is made of."""

    name: str
    channels: tuple[str, ...]

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def input_channels(self, repeat_to: int | None) -> int:
        """The channels a backbone sees: a 1-channel modality repeated to ``repeat_to`` (as the paper duplicates
        NDVI and NIR to three), any other as it is."""
        return repeat_to if self.num_channels == 1 and repeat_to and repeat_to > 1 else self.num_channels


def resolve(name: str, band_map: BandMap) -> Modality:
    """The channels of modality ``name`` under ``band_map``; a clear error when a band is missing."""
    name = name.strip().lower()
    if name == "rgb":
        needed: tuple[str, ...] = ("red", "green", "blue")
    elif name == "terrain":  # slope, relief, hillshade from a DEM (--dem): rtscli.data.terrain
        needed = TERRAIN
    elif name == "ndvi" and "ndvi" not in band_map:
        needed = DERIVED["ndvi"]
        missing = [b for b in needed if b not in band_map]
        if missing:
            raise RtsError(
                f"modality 'ndvi' needs bands {', '.join(needed)} but the band map ({band_map}) "
                f"lacks {', '.join(missing)}",
                fix="name them in --bands (e.g. red=3,nir=4)",
            )
        return Modality("ndvi", ("ndvi",))
    else:
        needed = (name,)
    missing = [b for b in needed if b not in band_map]
    if missing and name == "terrain":
        raise RtsError(f"modality 'terrain' needs a DEM, and the band map ({band_map}) has no terrain channels",
                       fix="pass --dem DEM (rts prepare, rts predict, rts ssl)")
    if missing and name not in ("rgb", "ndvi"):
        # a modality is rgb, ndvi or any band the map names: a near miss of one of them is a typo
        possible = ["rgb", "ndvi", *[n for n in band_map.names if n not in ("mask", "ndvi")]]
        if close_matches(name, possible):
            raise unknown_choice("modality", name, possible,
                                 also="or name that band in --bands, or add an aligned raster with --aux NAME=PATH")
    if missing:
        raise RtsError(
            f"modality {name!r} needs band{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}, which the band map ({band_map}) does not name",
            fix="name it in --bands, or add an aligned raster with --aux NAME=PATH",
        )
    if name == "mask":
        raise RtsError("'mask' is the label band, not a modality", fix="choose e.g. rgb,ndvi,nir")
    return Modality(name, needed)


def resolve_all(names: Iterable[str], band_map: BandMap) -> list[Modality]:
    mods = [resolve(n, band_map) for n in names if n.strip()]
    if not mods:
        raise RtsError("no modality given", fix="pass e.g. --modalities rgb,ndvi,nir")
    seen = set()
    for m in mods:
        if m.name in seen:
            raise RtsError(f"modality {m.name!r} is listed twice", fix="list each modality once")
        seen.add(m.name)
    return mods


def missing_channel(mod: Modality, have: Iterable[str]) -> str | None:
    """The first channel of ``mod`` that bands named ``have`` cannot give (NDVI may be derived), or None."""
    have = set(have)
    for ch in mod.channels:
        if ch not in have and not (ch == "ndvi" and set(DERIVED["ndvi"]) <= have):
            return ch
    return None


def parse_names(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def ndvi(nir: np.ndarray, red: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(nir - red) / (nir + red) as float32, finite everywhere.

    Zero or near-zero sums, non-finite inputs and pixels outside ``valid`` give 0; results are
    clipped to [-1, 1] (negative reflectances from atmospheric correction can push them out).
    """
    nir = np.asarray(nir, dtype=np.float32)
    red = np.asarray(red, dtype=np.float32)
    denom = nir + red
    ok = np.isfinite(nir) & np.isfinite(red) & (np.abs(denom) > 1e-6)
    if valid is not None:
        ok &= valid
    out = np.zeros(np.broadcast(nir, red).shape, dtype=np.float32)
    np.divide(nir - red, denom, out=out, where=ok)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def valid_mask(
    image: np.ndarray, band_map: BandMap, nodata: float | None, names: Iterable[str] | None = None
) -> np.ndarray:
    """Pixels where the data is valid: finite in every named band and not all equal to nodata.

    A pixel counts as nodata when *every* considered band equals the nodata value (GDAL's
    per-dataset nodata convention for multiband imagery), so a legitimately dark band does not
    blank the pixel.
    """
    names = [n for n in (names or band_map.names) if n != "mask"]
    idx = [band_map[n] - 1 for n in names]
    data = image[idx]
    finite = np.isfinite(data).all(axis=0)
    if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)):
        return finite
    return finite & ~(data == nodata).all(axis=0)


def channel(
    name: str, image: np.ndarray, band_map: BandMap, valid: np.ndarray | None = None
) -> np.ndarray:
    """One channel (a band or a derived one) as float32, rows x cols."""
    if name in band_map:
        return image[band_map[name] - 1].astype(np.float32, copy=False)
    if name == "ndvi":
        return ndvi(image[band_map["nir"] - 1], image[band_map["red"] - 1], valid)
    raise KeyError(name)


@dataclass(frozen=True)
class BandStats:
    """Robust normalization statistics of one channel: clip to [low, high], then (x - mean) / std."""

    mean: float
    std: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> "BandStats":
        return cls(float(d["mean"]), float(d["std"]), float(d["low"]), float(d["high"]))


def normalize(x: np.ndarray, stats: BandStats) -> np.ndarray:
    y = np.clip(x.astype(np.float32, copy=False), stats.low, stats.high)
    return (y - np.float32(stats.mean)) / np.float32(max(stats.std, 1e-6))


def compose(
    image: np.ndarray,
    band_map: BandMap,
    modalities: Iterable[Modality],
    stats: Mapping[str, BandStats] | None = None,
    *,
    nodata: float | None = None,
    repeat_to: int | None = 3,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Build every modality of one chip or window.

    Returns ``({modality: float32 array (C, rows, cols)}, valid)``. With ``stats`` the channels are
    normalized, and invalid pixels are set to 0 (the mean) after normalization. With ``repeat_to``
    a 1-channel modality is repeated to that many channels.
    """
    modalities = list(modalities)
    valid = valid_mask(image, band_map, nodata)
    cache: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for mod in modalities:
        planes = []
        for cname in mod.channels:
            if cname not in cache:
                x = channel(cname, image, band_map, valid)
                if stats is not None:
                    if cname not in stats:
                        raise RtsError(
                            f"no normalization statistics for channel {cname!r}",
                            fix="re-run `rts prepare` with this modality",
                        )
                    x = normalize(x, stats[cname])
                x = np.where(valid, x, np.float32(0.0)).astype(np.float32, copy=False)
                cache[cname] = x
            planes.append(cache[cname])
        arr = np.stack(planes, axis=0)
        if repeat_to and arr.shape[0] == 1 and repeat_to > 1:
            arr = np.repeat(arr, repeat_to, axis=0)
        out[mod.name] = arr
    return out, valid

