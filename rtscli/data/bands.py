"""Band maps: which band of a raster is which.

A band map is a small immutable mapping from a band *name* (``red``, ``nir``, ``mask``...) to a
1-based band index, as GDAL and rasterio number bands. It is written on the command line as
``blue=1,green=2,red=3,nir=4`` or given by the name of a sensor preset (``planetscope4``).

Names are free text (``dem``, ``swir1``...); a few have a meaning to the rest of the toolkit:
``red``, ``green``, ``blue`` make the ``rgb`` modality, ``nir`` the ``nir`` modality, ``ndvi`` a
precomputed NDVI band, and ``mask`` a binary label band (the paper's sample layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from rtscli.errors import RtsError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class BandMap:
    """Band name -> 1-based band index."""

    bands: tuple[tuple[str, int], ...]
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        seen_names: set[str] = set()
        seen_idx: dict[int, str] = {}
        for name, idx in self.bands:
            if not _NAME.match(name):
                raise RtsError(
                    f"band name {name!r} is not valid",
                    fix="use lower-case letters, digits and '_' (e.g. red, nir, dem)",
                )
            if idx < 1:
                raise RtsError(f"band {name}={idx}: band numbers start at 1", fix="fix --bands")
            if name in seen_names:
                raise RtsError(f"band name {name!r} is given twice", fix="fix --bands")
            if idx in seen_idx:
                raise RtsError(
                    f"band {idx} is named both {seen_idx[idx]!r} and {name!r}", fix="fix --bands"
                )
            seen_names.add(name)
            seen_idx[idx] = name

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int], preset: str | None = None) -> "BandMap":
        return cls(tuple((str(k), int(v)) for k, v in mapping.items()), preset=preset)

    @classmethod
    def parse(cls, spec: str) -> "BandMap":
        """Parse ``blue=1,green=2,...`` or a preset name (see :data:`PRESETS`)."""
        text = spec.strip()
        key = text.lower()
        if key in PRESETS:
            return PRESETS[key]
        if key in _ALIASES:
            return PRESETS[_ALIASES[key]]
        if "=" not in text:
            raise RtsError(
                f"unknown band preset {spec!r}",
                fix=f"use one of {', '.join(sorted(PRESETS))} or name bands as blue=1,green=2,red=3,nir=4",
            )
        pairs = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, num = item.partition("=")
            if not sep or not num.strip().isdigit():
                raise RtsError(
                    f"cannot read band entry {item!r} in {spec!r}",
                    fix="write bands as name=number pairs, e.g. blue=1,green=2,red=3,nir=4",
                )
            pairs.append((name.strip().lower(), int(num)))
        return cls(tuple(pairs))

    # -- queries -------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.bands)

    def __getitem__(self, name: str) -> int:
        for n, i in self.bands:
            if n == name:
                return i
        raise KeyError(name)

    def get(self, name: str, default: int | None = None) -> int | None:
        return self[name] if name in self else default

    @property
    def names(self) -> list[str]:
        """Band names in band order."""
        return [n for n, _ in sorted(self.bands, key=lambda b: b[1])]

    def as_dict(self) -> dict[str, int]:
        return {n: i for n, i in sorted(self.bands, key=lambda b: b[1])}

    def __str__(self) -> str:
        return ",".join(f"{n}={i}" for n, i in sorted(self.bands, key=lambda b: b[1]))

    def max_index(self) -> int:
        return max(i for _, i in self.bands)

    def without(self, names: Iterable[str]) -> "BandMap":
        drop = set(names)
        return BandMap(tuple((n, i) for n, i in self.bands if n not in drop), preset=self.preset)

    def renumbered(self) -> "BandMap":
        """The same names in the same order, numbered 1..n (the layout of a written chip)."""
        return BandMap(tuple((n, k + 1) for k, n in enumerate(self.names)))

    def check_against(self, count: int, path: str | Path | None) -> None:
        """Raise a clear error if a band index is beyond the raster's band count.

        Args:
            count: the raster's number of bands.
            path: the raster, named in the error (or None).

        Raises:
            RtsError: a band of the map is numbered above ``count``.
        """
        over = [(i, n) for n, i in sorted(self.bands, key=lambda b: b[1]) if i > count]
        if over:
            listed = ", ".join(f"{i} ({n})" for i, n in over)
            raise RtsError(
                f"the band map asks for band{'s' if len(over) > 1 else ''} {listed} but the raster has "
                f"{count} band{'s' if count != 1 else ''}",
                path=path,
                fix="fix --bands (see `rts bands` for presets)",
            )


def _bm(preset: str, **bands: int) -> BandMap:
    return BandMap(tuple(bands.items()), preset=preset)


#: Named sensor presets. Keys are what ``--bands`` accepts.
PRESETS: dict[str, BandMap] = {
    # PlanetScope 4-band analytic / surface reflectance: B, G, R, NIR.
    "planetscope4": _bm("planetscope4", blue=1, green=2, red=3, nir=4),
    # PlanetScope 8-band (SuperDove): coastal blue, blue, green I, green, yellow, red, red edge, NIR.
    "planetscope8": _bm(
        "planetscope8", coastal=1, blue=2, green_i=3, green=4, yellow=5, red=6, rededge=7, nir=8
    ),
    # Sentinel-2 stack of B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (e.g. the Bykovsky scene).
    "sentinel2-10": _bm(
        "sentinel2-10",
        blue=1, green=2, red=3, rededge1=4, rededge2=5, rededge3=6, nir=7, nir08=8, swir1=9,
        swir2=10,
    ),
    # Sentinel-2 stack of B2..B8 (B2, B3, B4, B5, B6, B7, B8; e.g. the Peel scene).
    "sentinel2-7": _bm(
        "sentinel2-7", blue=1, green=2, red=3, rededge1=4, rededge2=5, rededge3=6, nir=7
    ),
    # Landsat-8 stack of B2..B8 (blue, green, red, NIR, SWIR1, SWIR2, panchromatic).
    "landsat8-7": _bm("landsat8-7", blue=1, green=2, red=3, nir=4, swir1=5, swir2=6, pan=7),
    # The paper's per-sample layout: RGB, NDVI, NIR and a binary mask band.
    "paper": _bm("paper", red=1, green=2, blue=3, ndvi=4, nir=5, mask=6),
}

_ALIASES = {
    "planetscope": "planetscope4",
    "ps4": "planetscope4",
    "bgrn": "planetscope4",
    "s2-10": "sentinel2-10",
    "s2-7": "sentinel2-7",
    "l8-7": "landsat8-7",
}

PRESET_NOTES: dict[str, str] = {
    "planetscope4": "PlanetScope 4-band (BGRN)",
    "planetscope8": "PlanetScope 8-band SuperDove",
    "sentinel2-10": "Sentinel-2 B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12",
    "sentinel2-7": "Sentinel-2 B2..B8",
    "landsat8-7": "Landsat-8 B2..B8",
    "paper": "the paper's sample: R,G,B,NDVI,NIR + mask",
}
