"""Site looks for synthetic scenes, loosely after the paper's seven Arctic sites.

Spectra are surface reflectance x 10000 in PlanetScope band order (blue, green, red, NIR), from
typical values of the cover types, with slump contrast checked against the real Sentinel-2 scenes
in shared/data/rts-digitization (there slumps are 5-30% brighter in red than the tundra, or darker
where wet, and about half as bright in NIR): tundra vegetation (NDVI ~0.6-0.8), bare thawed soil and wet mud
in slump floors (NDVI ~0.1-0.25), lake water (NIR near zero), sandy river bars, gravel roads, burnt
tundra (dark) and dry lichen/grass patches (bright in RGB but high NIR: the RGB look-alike of a
slump that NIR/NDVI tells apart). Each site varies greenness, soil colour, water turbidity and how
many lakes, rivers, slumps and look-alikes it has. Under ``rts synth --realism hard`` slumps and dry patches are
painted as ratios of the tundra around them instead, as measured on the real scenes (:mod:`rtscli.synth.realism`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, TypedDict

from rtscli.synth.realism import DEMO, Realism

# Class ids of the rendered land cover.
VEG, WATER, SOIL, MUD, HEADWALL, SAND, ROAD, DRY, BURNT, WSOIL, WMUD, WHEAD = range(12)
N_CLASSES = 12


@dataclass(frozen=True)
class SiteStyle:
    name: str
    lonlat: tuple[float, float]
    veg_a: tuple[int, int, int, int]  # lush (shrubs, wet sedge)
    veg_b: tuple[int, int, int, int]  # sparse (tussock, lichen-rich)
    soil: tuple[int, int, int, int]  # slump scar floor
    mud: tuple[int, int, int, int]  # debris tongue, wet
    headwall: tuple[int, int, int, int]  # exposed ice-rich scarp
    water: tuple[int, int, int, int]
    sand: tuple[int, int, int, int]  # river bars
    road: tuple[int, int, int, int]
    dry: tuple[int, int, int, int]  # RGB look-alike, high NIR
    burnt: tuple[int, int, int, int]
    lakes_per_km2: float = 0.6
    rivers_per_10km: float = 1.0
    slumps_per_km2: float = 1.2
    weak_fraction: float = 0.25  # slumps whose RGB contrast is weak (revegetating) but NDVI shows
    weak_contrast: float = 1.0  # scales the RGB contrast of weak slumps (0: same RGB as the tundra)
    dry_per_km2: float = 0.35
    burnt_per_km2: float = 0.1
    roads_per_100km2: float = 0.0
    relief_m: float = 15.0
    texture: float = 0.09
    polygons: float = 0.5  # strength of the ice-wedge polygon network
    gain: float = 1.0
    realism: Realism = DEMO  # how hard the data is (rts synth --realism; rtscli.synth.realism)


Spectrum = tuple[int, int, int, int]


class _Spectra(TypedDict):
    """The spectra of a site's cover types (the spectrum fields of :class:`SiteStyle`)."""

    veg_a: Spectrum
    veg_b: Spectrum
    soil: Spectrum
    mud: Spectrum
    headwall: Spectrum
    water: Spectrum
    sand: Spectrum
    road: Spectrum
    dry: Spectrum
    burnt: Spectrum


_BASE = _Spectra(
    veg_a=(300, 560, 420, 3200),
    veg_b=(420, 640, 610, 2500),
    soil=(700, 860, 950, 1500),
    mud=(470, 560, 600, 900),
    headwall=(1000, 1150, 1250, 1650),
    water=(420, 430, 260, 90),
    sand=(960, 1110, 1270, 1620),
    road=(1150, 1220, 1300, 1580),
    dry=(720, 880, 970, 2900),
    burnt=(240, 300, 330, 1250),
)

SITES: dict[str, SiteStyle] = {
    s.name: s
    for s in [
        SiteStyle("yamal_gydan", (70.0, 70.3), **_BASE, lakes_per_km2=1.2, slumps_per_km2=1.4,
                  dry_per_km2=0.5, roads_per_100km2=2.0, relief_m=12),
        SiteStyle("lena", (126.5, 72.4), **(_BASE | {"veg_a": (280, 520, 380, 3000),
                  "water": (520, 560, 380, 160), "soil": (660, 800, 880, 1450)}),
                  lakes_per_km2=0.8, rivers_per_10km=3.0, slumps_per_km2=1.0, relief_m=20),
        SiteStyle("kolguev", (49.0, 69.1), **(_BASE | {"veg_b": (460, 680, 660, 2400)}),
                  lakes_per_km2=0.5, slumps_per_km2=1.0, dry_per_km2=0.6, texture=0.11),
        SiteStyle("herschel", (-139.1, 69.6), **(_BASE | {"soil": (640, 740, 820, 1400),
                  "mud": (430, 480, 520, 800)}), lakes_per_km2=0.3, rivers_per_10km=1.5,
                  slumps_per_km2=1.8, relief_m=35, weak_fraction=0.3),
        SiteStyle("horton", (-126.9, 69.9), **(_BASE | {"water": (380, 400, 240, 70)}),
                  lakes_per_km2=1.0, rivers_per_10km=2.5, slumps_per_km2=1.2, burnt_per_km2=0.3),
        SiteStyle("tuktoyaktuk", (-132.9, 69.4), **(_BASE | {"veg_a": (290, 540, 400, 3400)}),
                  lakes_per_km2=1.6, slumps_per_km2=1.5, relief_m=10, polygons=0.8),
        SiteStyle("banks", (-121.0, 72.5), **(_BASE | {"veg_a": (430, 600, 600, 2300),
                  "veg_b": (560, 720, 760, 1900), "soil": (820, 960, 1080, 1550)}),
                  lakes_per_km2=0.4, rivers_per_10km=2.0, slumps_per_km2=1.2, weak_fraction=0.35,
                  dry_per_km2=0.45, relief_m=25, gain=1.05),
    ]
}


class _Overrides(TypedDict, total=False):
    """The :class:`SiteStyle` fields that :func:`set_overrides` overrides."""

    weak_fraction: float
    weak_contrast: float
    realism: Realism


#: overrides applied to every site by :func:`set_overrides` (``rts synth --weak-fraction/--weak-contrast/--realism``)
_OVERRIDES: _Overrides = {}


def set_overrides(weak_fraction: float | None = None, weak_contrast: float | None = None,
                  realism: Realism | None = None) -> None:
    """Override, for every site (:func:`site`), the share of weak-RGB slumps, their RGB contrast and the realism
    level; each None keeps the site's own. Replaces the overrides set before.

    Args:
        weak_fraction: share of slumps with weak RGB contrast (0-1).
        weak_contrast: scale of the weak slumps' RGB contrast (1: the site's, 0: invisible in RGB).
        realism: how hard the data is (:mod:`rtscli.synth.realism`).
    """
    global _OVERRIDES
    overrides: _Overrides = {}
    if weak_fraction is not None:
        overrides["weak_fraction"] = float(weak_fraction)
    if weak_contrast is not None:
        overrides["weak_contrast"] = float(weak_contrast)
    if realism is not None:
        overrides["realism"] = realism
    _OVERRIDES = overrides


@contextmanager
def overridden(weak_fraction: float | None = None, weak_contrast: float | None = None,
               realism: Realism | None = None) -> Iterator[None]:
    """:func:`set_overrides` for the ``with`` block, then the overrides set before it again.

    Args:
        weak_fraction: share of slumps with weak RGB contrast (0-1), None: the site's.
        weak_contrast: scale of the weak slumps' RGB contrast, None: the site's.
        realism: the realism level, None: the site's (``demo``).
    """
    global _OVERRIDES
    before = _OVERRIDES
    set_overrides(weak_fraction, weak_contrast, realism)
    try:
        yield
    finally:
        _OVERRIDES = before


def site(name: str) -> SiteStyle:
    from dataclasses import replace

    from rtscli.errors import RtsError

    try:
        style = SITES[name]
    except KeyError:
        raise RtsError(f"unknown synthetic site {name!r}", fix=f"use one of {', '.join(SITES)}") from None
    return replace(style, **_OVERRIDES) if _OVERRIDES else style


def spectra_table(style: SiteStyle) -> list[tuple[int, ...]]:
    """Class id -> spectrum. Weak slumps take soil close to the vegetation in RGB, low in NIR."""
    va, vb = style.veg_a, style.veg_b
    vmid = tuple((a + b) // 2 for a, b in zip(va, vb, strict=True))
    # Weak (revegetating) slump: RGB within ~10-20% of vegetation, NIR about half: NDVI shows it.
    k = style.weak_contrast

    def rgb(f: float) -> float:
        return 1.0 + (f - 1.0) * k

    wsoil = (int(vmid[0] * rgb(1.12)), int(vmid[1] * rgb(1.08)), int(vmid[2] * rgb(1.15)), int(vmid[3] * 0.55))
    wmud = (int(vmid[0] * rgb(1.0)), int(vmid[1] * rgb(0.98)), int(vmid[2] * rgb(1.05)), int(vmid[3] * 0.45))
    whead = (int(vmid[0] * rgb(1.2)), int(vmid[1] * rgb(1.15)), int(vmid[2] * rgb(1.2)), int(vmid[3] * 0.6))
    table = [vmid, style.water, style.soil, style.mud, style.headwall, style.sand, style.road,
             style.dry, style.burnt, wsoil, wmud, whead]
    return table
