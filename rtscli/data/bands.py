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
from typing import Iterable, Mapping, Sequence

from rtscli.errors import RtsError, unknown_choice

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
            raise unknown_choice("band preset", spec, PRESETS,
                                 also="or name bands as blue=1,green=2,red=3,nir=4 (see `rts bands`)")
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

    def check_against(self, count: int, path: str | Path | None, descriptions: Sequence[str | None] = ()) -> None:
        """Raise a clear error if a band index is beyond the raster's band count (naming the presets that fit).

        Args:
            count: the raster's number of bands.
            path: the raster, named in the error (or None).
            descriptions: the raster's band descriptions (GDAL), to name the preset that fits; may be empty.

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
                fix=_fits_fix(fitting_presets(count, descriptions)),
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
    # The paper's layout and a DEM band (heights, metres: terrain from it), as `rts synth --dem` writes chips.
    "paper-dem": _bm("paper-dem", red=1, green=2, blue=3, ndvi=4, nir=5, mask=6, dem=7),
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
    "paper-dem": "the paper's sample + a DEM band (metres)",
}


# ---------------------------------------------------------------------------------------------
# does a band map fit a raster? (every command that applies one: prepare, ssl, predict)
# ---------------------------------------------------------------------------------------------
#: what the band codes of a sensor's files mean (GDAL band descriptions such as ``B02``, ``B8A``, ``SR_B5``)
SENSOR_CODES: dict[str, dict[str, str]] = {
    "sentinel2": {"b1": "coastal", "b2": "blue", "b3": "green", "b4": "red", "b5": "rededge1", "b6": "rededge2",
                  "b7": "rededge3", "b8": "nir", "b8a": "nir08", "b9": "water_vapour", "b10": "cirrus",
                  "b11": "swir1", "b12": "swir2"},
    "landsat": {"b1": "coastal", "b2": "blue", "b3": "green", "b4": "red", "b5": "nir", "b6": "swir1",
                "b7": "swir2", "b8": "pan", "b9": "cirrus", "b10": "thermal1", "b11": "thermal2"},
}
SENSOR_NAMES = {"sentinel2": "Sentinel-2", "landsat": "Landsat-8/9"}

#: the sensor whose band codes a preset's rasters carry
PRESET_SENSORS = {"sentinel2-10": "sentinel2", "sentinel2-7": "sentinel2", "landsat8-7": "landsat"}

#: band descriptions written as words, and the band name each stands for
_WORDS = {
    "blue": "blue", "green": "green", "red": "red", "nir": "nir", "near_infrared": "nir", "nearinfrared": "nir",
    "near_ir": "nir", "coastal": "coastal", "coastal_blue": "coastal", "coastalblue": "coastal",
    "coastal_aerosol": "coastal", "green_i": "green_i", "yellow": "yellow", "rededge": "rededge",
    "red_edge": "rededge", "rededge1": "rededge1", "red_edge_1": "rededge1", "rededge2": "rededge2",
    "red_edge_2": "rededge2", "rededge3": "rededge3", "red_edge_3": "rededge3", "nir08": "nir08",
    "narrow_nir": "nir08", "nir_narrow": "nir08", "swir1": "swir1", "swir_1": "swir1", "swir16": "swir1",
    "swir2": "swir2", "swir_2": "swir2", "swir22": "swir2", "pan": "pan", "panchromatic": "pan", "ndvi": "ndvi",
    "mask": "mask",
}
#: band names with a meaning that a description can contradict (others, such as ``dem``, are free)
KNOWN_BANDS = frozenset(_WORDS.values()) | {m for codes in SENSOR_CODES.values() for m in codes.values()}

_CODE = re.compile(r"(?:(sr|st)_)?b0*(\d+a?)")


def _family(name: str) -> str:
    """Bands that may stand for one another: any red edge for any red edge, the narrow NIR for NIR."""
    if name.startswith("rededge"):
        return "rededge"
    return {"nir08": "nir", "green_i": "green"}.get(name, name)


def raster_sensor(descriptions: Sequence[str | None]) -> str | None:
    """The sensor the band descriptions name without doubt: Sentinel-2 (``B8A`` or ``B12`` among them), Landsat
    (``SR_B4``-style names), else None."""
    codes = [_CODE.fullmatch((d or "").strip().lower()) for d in descriptions]
    if any(m and m.group(1) for m in codes):
        return "landsat"
    if any(m and m.group(2) in ("8a", "12") for m in codes):
        return "sentinel2"
    return None


def band_meaning(description: str | None, sensor: str | None) -> str | None:
    """The band name a GDAL band description stands for (``Blue`` -> blue, ``B05`` -> rededge1 for Sentinel-2,
    nir for Landsat), or None when the description says nothing certain (empty, another word, or a band code
    whose meaning differs between sensors while the sensor is not known)."""
    text = re.sub(r"[\s\-]+", "_", (description or "").strip().lower())
    if not text:
        return None
    if text in _WORDS:
        return _WORDS[text]
    m = _CODE.fullmatch(text)
    if not m:
        return None
    code = f"b{m.group(2)}"
    if m.group(1):
        sensor = "landsat"
    if sensor is not None:
        return SENSOR_CODES[sensor].get(code)
    meanings = {codes.get(code) for codes in SENSOR_CODES.values()}
    return meanings.pop() if len(meanings) == 1 else None  # B2, B3, B4 are blue, green, red on both


def _contradictions(band_map: BandMap, count: int, descriptions: Sequence[str | None],
                    sensor: str | None) -> list[tuple[int, str, str]]:
    """``(band, name in the map, description)`` for each band the map names otherwise than its description."""
    out = []
    for name, i in sorted(band_map.bands, key=lambda b: b[1]):
        if i > min(count, len(descriptions)) or name not in KNOWN_BANDS:
            continue
        meaning = band_meaning(descriptions[i - 1], sensor)
        if meaning is not None and _family(meaning) != _family(name):
            out.append((i, name, str(descriptions[i - 1]).strip()))
    return out


def _counts_fit(band_map: BandMap, count: int) -> bool:
    """A preset's band count is the raster's, or one less when its last band is the label band (a scene to map)."""
    top = band_map.max_index()
    return count == top or (band_map.get("mask") == top and count == top - 1)


def fitting_presets(count: int, descriptions: Sequence[str | None] = ()) -> list[str]:
    """The presets made for rasters of ``count`` bands whose band descriptions (if any) agree with them. The
    paper's sample layout is named only when the descriptions say so (any 6-band raster is not one)."""
    described = any((d or "").strip() for d in descriptions)
    sensor = raster_sensor(descriptions)
    out = []
    for name, bm in PRESETS.items():
        if not _counts_fit(bm, count) or (name.startswith("paper") and not described):
            continue
        if _contradictions(bm, count, descriptions, sensor or PRESET_SENSORS.get(name)):
            continue
        if described and not any(band_meaning(descriptions[i - 1], sensor or PRESET_SENSORS.get(name))
                                  for _, i in bm.bands if i <= min(count, len(descriptions))):
            continue  # descriptions that name nothing this preset has
        out.append(name)
    return out


def _fits_fix(presets: list[str], named: str = "") -> str:
    """The fix of a band map that does not fit: the presets that do, or naming the bands (``named``: as the
    raster's descriptions say, from :func:`_named_from`)."""
    hint = (f"name the bands as the raster's descriptions say: --bands {named}" if named else
            "name the bands yourself: --bands blue=N,green=N,red=N,nir=N with their band numbers (`rts bands` "
            "lists the presets)")
    if not presets:
        return hint
    which = " or ".join(f"--bands {p} ({PRESET_NOTES.get(p, p)})" for p in presets)
    return f"use {which}, or {hint}"


def check_fits(band_map: BandMap, count: int, descriptions: Sequence[str | None] = (),
               path: str | Path | None = None) -> None:
    """Refuse a band map that does not fit a raster: the one check of ``rts prepare``, ``rts ssl`` and
    ``rts predict`` before they read it.

    * a band numbered beyond the raster's band count (:meth:`BandMap.check_against`);
    * a band the raster's GDAL descriptions name otherwise (``--bands planetscope4`` reads band 4 as nir, the
      raster describes it as ``B5``, the red edge of Sentinel-2; or as ``Red``);
    * a sensor preset made for another band count (``planetscope4`` on a 7- or 10-band Sentinel-2 stack):
      refused, naming the presets that fit, unless every preset made for this band count reads the preset's
      bands the same way (``sentinel2-7`` on a 10-band Sentinel-2 stack reads B2..B8 right);
      a raster whose band count no preset is made for is left to the band numbers and descriptions.

    Args:
        band_map: the band map applied to the raster (``--bands``, a preset or the model's).
        count: the raster's number of bands.
        descriptions: its GDAL band descriptions, band 1 first (empty strings or None where unnamed).
        path: the raster, named in the error.

    Raises:
        RtsError: the band map does not fit, with the preset that fits when one does.
    """
    descriptions = list(descriptions)
    band_map.check_against(count, path, descriptions)
    what = f"--bands {band_map.preset}" if band_map.preset else f"the band map ({band_map})"
    sensor = raster_sensor(descriptions) or PRESET_SENSORS.get(band_map.preset or "")
    wrong = _contradictions(band_map, count, descriptions, sensor)
    if wrong:
        i, name, desc = wrong[0]
        said = band_meaning(desc, sensor)
        where = f", {SENSOR_NAMES[sensor]}'s {said}" if sensor and _CODE.fullmatch(desc.lower()) else ""
        more = f" (and {len(wrong) - 1} more band(s))" if len(wrong) > 1 else ""
        raise RtsError(f"{what} reads band {i} as {name}, but the raster describes band {i} as {desc!r}{where}"
                       f"{more}", path=path, fix=_fits_fix(fitting_presets(count, descriptions),
                                                          _named_from(count, descriptions, sensor)))
    if band_map.preset is None or _counts_fit(band_map, count):
        return
    fits = fitting_presets(count, descriptions)
    mine = band_map.without(["mask"]).as_dict()
    if not fits or all(all(PRESETS[f].get(n) == i for n, i in mine.items()) for f in fits):
        return  # a raster no preset is made for, or one the preset reads right (a subset of its bands)
    note = PRESET_NOTES.get(band_map.preset, band_map.preset)
    raise RtsError(f"--bands {band_map.preset} is made for {band_map.max_index()}-band rasters ({note}) and this "
                   f"raster has {count} bands: its band {mine.get('nir', band_map.max_index())} would be read as "
                   f"{'nir' if 'nir' in mine else band_map.names[-1]}", path=path,
                   fix=_fits_fix(fits, _named_from(count, descriptions, sensor)))


def _named_from(count: int, descriptions: Sequence[str | None], sensor: str | None) -> str:
    """``blue=1,green=2,red=3,nir=7`` as the descriptions say, when they name blue, green, red and nir, else ''."""
    named = {}
    for i, d in enumerate(list(descriptions)[:count], 1):
        m = band_meaning(d, sensor)
        if m in ("blue", "green", "red", "nir") and m not in named:
            named[m] = i
    if len(named) < 4:
        return ""
    return ",".join(f"{n}={i}" for n, i in sorted(named.items(), key=lambda b: b[1]))
