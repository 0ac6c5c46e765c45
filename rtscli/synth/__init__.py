"""Procedural thaw-slump scenes with known truth, for demos, tests and benchmarks.

Two products:

* :func:`write_chips`: per-sample chips in the paper's layout, one GeoTIFF each with bands
  red, green, blue (surface reflectance, 0..1), NDVI, NIR and a binary slump mask
  (float32, nodata -9999), in ``chips/<site>/``.
* :func:`write_scene`: a large PlanetScope-like scene (uint16 surface reflectance x 10000 with a GDAL
  band scale of 0.0001, so that it reads as reflectance 0-1 like the chips; bands blue, green, red,
  NIR, nodata 0), written window by window, with its ground-truth slump polygons in a GeoPackage
  (layer ``rts``) and the look-alikes in ``*_distractors.gpkg``.

How hard the data is (``rts synth --realism demo|hard``: slump sizes, outlines, contrast, slumps per chip, JPEG chips)
is the sites' realism level, :mod:`rtscli.synth.realism`.

Truth describes what the image shows: every truth polygon (slump or look-alike, of a chip or a scene) is
the part of the object on the image's valid pixels (:func:`rtscli.synth.plan.shown`), ``area_m2`` is the true
area of that part, and ``clipped`` says that the image's edge or nodata cut the object. Scene slumps are placed
whole inside the scene (:meth:`rtscli.synth.plan.Plan.interior`), so only a nodata swath edge cuts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rtscli.synth.plan import Plan, make_plan, shown
from rtscli.synth.render import render
from rtscli.synth.sites import SITES, site

CHIP_BANDS = ["red", "green", "blue", "ndvi", "nir", "mask"]
CHIP_DEM_BANDS = [*CHIP_BANDS, "dem"]  # rts synth --dem: heights in metres (preset paper-dem)
SCENE_BANDS = ["blue", "green", "red", "nir"]
SCENE_SCALE = 1e-4  # scenes store reflectance x 10000; their GDAL band scale turns it into reflectance 0-1
CHIP_NODATA = -9999.0

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Georef:
    crs: object  # rasterio CRS
    x0: float
    y0: float
    resolution: float

    def transform(self, col_off: float = 0.0, row_off: float = 0.0) -> Any:
        from rasterio.transform import Affine

        r = self.resolution
        return Affine(r, 0.0, self.x0 + col_off * r, 0.0, -r, self.y0 - row_off * r)


def site_origin(site_name: str, crs_text: str, resolution: float, index: int = 0) -> Georef:
    """Map origin of a synthetic scene near the named site, in ``crs_text`` (must be projected)."""
    from pyproj import Transformer
    from rasterio.crs import CRS

    from rtscli.errors import RtsError

    crs = CRS.from_user_input(crs_text)
    if crs.is_geographic:
        raise RtsError(
            f"synthetic scenes need a projected CRS with metre units, not {crs_text}",
            fix="use e.g. --crs EPSG:3413 (NSIDC polar stereographic) or a UTM zone",
        )
    lon, lat = SITES[site_name].lonlat
    x, y = Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True).transform(lon, lat)
    # keep scenes of one site apart: 200 km steps east
    x += index * 200_000.0
    snap = resolution * 16
    return Georef(crs, math.floor(x / snap) * snap, math.floor(y / snap) * snap, resolution)


def _site_list(sites: Sequence[str] | None) -> list[str]:
    names = list(sites) if sites else list(SITES)
    for n in names:
        site(n)  # validates
    return names


def _swath_in_window(rng, col0, row0, size):
    from shapely.affinity import translate

    from rtscli.synth.plan import _swath

    return translate(_swath(rng, size, size), col0, row0)


def write_chips(
    out_dir: str | Path,
    n: int,
    *,
    size: int = 256,
    seed: int = 0,
    sites: Sequence[str] | None = None,
    crs: str = "EPSG:3413",
    resolution: float = 3.0,
    negatives: float = 0.1,
    nodata_fraction: float = 0.15,
    progress: Progress | None = None,
    dem: bool = False,
) -> list[Path]:
    """Write ``n`` chips in the paper's layout under ``out_dir/<site>/``; also ``labels.gpkg``.

    With ``dem`` each chip has a seventh band ``dem`` (:data:`CHIP_DEM_BANDS`, preset ``paper-dem``): the heights
    of the chip's ground in metres (:func:`rtscli.synth.dem.elevation`: each slump a bowl with a headwall, the
    look-alikes flat), with a void patch (nodata) on every third chip, as ArcticDEM strips have.

    The sites' realism level (:func:`rtscli.synth.sites.set_overrides`, ``rts synth --realism``) sets how many
    slumps a chip has, how they look, and whether its RGB and NIR go through JPEG (``hard``:
    :func:`rtscli.synth.realism.jpeg_roundtrip`, at a quality drawn per chip from the seed).

    ``labels.gpkg`` holds one polygon per slump and chip: the part of the slump on the chip's valid pixels
    (``chip``, ``site``, ``weak_rgb``, ``touching``, ``setting``, ``clipped``: the chip's edge or nodata cut it,
    ``area_m2``: true area of that part on the ellipsoid, m2).

    Args:
        out_dir: the output folder (created).
        n: number of chips.
        size: chip side, pixels.
        seed: the random seed; the same seed gives the same chips.
        sites: synthetic sites to cycle through (default: all).
        crs: the projected CRS of the outputs (metre units).
        resolution: pixel size, metres.
        negatives: share of chips without any slump.
        nodata_fraction: share of chips with a nodata swath edge.
        progress: called with 1 per chip written.
        dem: add the ``dem`` band.

    Returns:
        The chip paths, in order.

    Raises:
        RtsError: ``crs`` is geographic or a site is unknown.
    """
    import geopandas as gpd
    from shapely.affinity import translate
    from shapely.geometry import box

    from rtscli.geometry.footprint import to_map
    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.raster import write_geotiff
    from rtscli.io.vector import write_vector
    from rtscli.synth import noise

    out_dir = Path(out_dir)
    names = _site_list(sites)
    paths: list[Path] = []
    records = []
    for k in range(n):
        name = names[k % len(names)]
        style = site(name)
        rng = np.random.default_rng(noise.key_of("chip", seed, k))
        negative = rng.random() < negatives
        img = valid = mask = None
        for attempt in range(50):
            # negatives: no slumps at all (look-alikes stay, so they teach what a slump is not)
            density = 0.0 if negative else style.realism.chip_density * style.slumps_per_km2
            plan = make_plan(3 * size, 3 * size, style, seed=noise.key_of(seed, k, attempt) % 2**31,
                             resolution=resolution, slump_density=density, nodata_margin=False)
            if negative:
                col0, row0 = (int(v) for v in rng.integers(0, 2 * size, 2))
            else:
                central = [s for s in plan.slumps
                           if size * 0.8 <= s.geometry.centroid.x <= size * 2.2
                           and size * 0.8 <= s.geometry.centroid.y <= size * 2.2]
                if not central:
                    continue
                s = central[int(rng.integers(0, len(central)))]
                c = s.geometry.centroid
                col0 = int(c.x - rng.uniform(0.3, 0.7) * size)
                row0 = int(c.y - rng.uniform(0.3, 0.7) * size)
            if rng.random() < nodata_fraction:
                plan.footprint = _swath_in_window(rng, col0, row0, size)
            img, valid, mask = render(plan, row0, col0, size, size)
            if negative and mask.any():
                continue
            if not negative and not mask.any():
                continue
            break
        else:  # pragma: no cover - the plan densities make this practically unreachable
            raise RuntimeError(f"could not place synthetic chip {k}")
        geo = site_origin(name, crs, resolution)
        gx, gy = (k % 50) * size * 2, (k // 50) * size * 2  # chips of a site spread on a grid
        transform = geo.transform(gx, gy)
        refl = img / 10000.0
        blue, green, red, nir = refl
        if style.realism.jpeg_quality is not None:  # as the real chips are: 8-bit JPEGs (RGB, and NIR alone)
            from rtscli.synth.realism import jpeg_roundtrip

            lo, hi = style.realism.jpeg_quality
            quality = int(np.random.default_rng(noise.key_of("jpeg", seed, k)).integers(lo, hi + 1))
            (red, green, blue), nir = jpeg_roundtrip(np.stack([red, green, blue]), nir, valid, quality)
        ndvi = np.zeros_like(red)
        np.divide(nir - red, nir + red, out=ndvi, where=(nir + red) > 0)
        planes = [red, green, blue, ndvi, nir, mask.astype(np.float32)]
        if dem:
            from rtscli.synth.dem import elevation

            z = elevation(plan, row0, col0, size, size, seed=noise.key_of(seed, k, "dem") % 2**31)
            z[~valid] = CHIP_NODATA
            if k % 3 == 1:  # a void patch, as ArcticDEM strips have over water and in steep shadows
                r, c = (int(v) for v in rng.integers(0, size - size // 6, 2))
                z[r:r + size // 6, c:c + size // 6] = CHIP_NODATA
            planes.append(z)
        chip = np.stack(planes).astype(np.float32)
        chip[:5, ~valid] = CHIP_NODATA
        path = out_dir / name / f"{name}_{k:05d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_geotiff(path, chip, transform=transform, crs=geo.crs, nodata=CHIP_NODATA,
                      band_names=CHIP_DEM_BANDS if dem else CHIP_BANDS,
                      tags={"RTS_SITE": name, "RTS_SYNTH_SEED": str(seed)})
        paths.append(path)
        # truth polygons in map coordinates: plan pixels -> chip pixels -> map, through the chip's full transform
        win = box(col0, row0, col0 + size, row0 + size)
        if plan.footprint is not None:
            win = win.intersection(plan.footprint)
        for s in plan.slumps:
            g, cut = shown(s.geometry, win)
            if g.is_empty or g.area < 1:
                continue
            g = to_map(translate(g, -col0, -row0), transform)
            records.append(dict(chip=path.name, site=name, weak_rgb=s.weak, touching=s.touching,
                                setting=s.setting, clipped=bool(s.clipped or cut), geometry=g))
        if progress:
            progress(1)
    if records:
        # chips of different sites share one CRS, so one layer holds them all
        gdf = gpd.GeoDataFrame(records, geometry="geometry", crs=site_origin(names[0], crs, resolution).crs)
        gdf.insert(len(gdf.columns) - 1, "area_m2", geodesic_area_perimeter(gdf.geometry.values, gdf.crs)[0])
        write_vector(gdf, out_dir / "labels.gpkg", overwrite=True)
    return paths


def scene_plan(height: int, width: int, *, seed: int, site_name: str, resolution: float = 3.0,
               nodata_margin: bool | None = None, edge_margin: float | None = None) -> Plan:
    """The plan of a ``height`` x ``width`` pixel scene at ``site_name`` (:func:`rtscli.synth.plan.make_plan`).

    Args:
        height: scene height, pixels.
        width: scene width, pixels.
        seed: the random seed.
        site_name: the synthetic site.
        resolution: pixel size, metres.
        nodata_margin: cut a nodata swath edge (None: decided by the seed).
        edge_margin: pixels between every slump and the scene edge (None:
            :func:`rtscli.synth.plan.edge_margin_px`).

    Returns:
        The plan; its slumps lie whole inside the scene.

    Raises:
        RtsError: ``site_name`` is unknown.
    """
    return make_plan(width, height, site(site_name), seed, resolution=resolution, nodata_margin=nodata_margin,
                     edge_margin=edge_margin)


def write_scene(
    path: str | Path,
    height: int,
    width: int,
    *,
    seed: int = 0,
    site_name: str = "tuktoyaktuk",
    crs: str = "EPSG:3413",
    resolution: float = 3.0,
    nodata_margin: bool | None = None,
    block: int = 1024,
    plan: Plan | None = None,
    progress: Progress | None = None,
    index: int = 0,
    sky: Any = None,
    masks: Sequence[str] = (),
    dem_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write a scene GeoTIFF by windows and its truth GeoPackage; returns both paths.

    Memory is bounded by the window size (``block``), not by the scene size. The truth (layer ``rts``: ``id``,
    ``site``, ``weak_rgb``, ``touching``, ``setting``, ``clipped``, ``area_m2``) and the look-alikes
    (``*_distractors.gpkg``) are the parts of the objects on the scene's valid pixels; ``area_m2`` is the true
    area of that part on the ellipsoid, m2.

    Args:
        path: the GeoTIFF to write; the truth goes to the same name with ``.gpkg``.
        height: scene height, pixels.
        width: scene width, pixels.
        seed: the random seed; the same seed gives the same files.
        site_name: the synthetic site.
        crs: the projected CRS of the outputs (metre units).
        resolution: pixel size, metres.
        nodata_margin: cut a nodata swath edge (None: decided by the seed).
        block: side of the windows rendered at a time, pixels.
        plan: the plan to render (default: :func:`scene_plan` of the arguments above).
        progress: called with the number of pixels written, as they are written.
        index: the scene's index at its site (scenes of one site are placed 200 km apart).
        sky: clouds, haze, shadows and snow painted over the scene (:class:`rtscli.synth.clouds.Sky`); their
            polygons go into the truth's layer ``quality`` (``kind``). None: a clear scene.
        masks: the quality masks written beside the scene with ``sky`` (of :data:`rtscli.synth.clouds.MASKS`:
            ``<stem>_udm2.tif``, ``<stem>_SCL_20m.tif``; :func:`rtscli.synth.clouds.write_masks`).
        dem_dir: write the scene's DEM (``<stem>_dem.tif``, :func:`rtscli.synth.dem.write_dem`) into this folder;
            None: no DEM.

    Returns:
        ``(GeoTIFF, truth GeoPackage)``.

    Raises:
        RtsError: ``crs`` is geographic, or an output cannot be written.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window

    from rtscli.geometry.footprint import to_map
    from rtscli.geometry.measure import geodesic_area_perimeter
    from rtscli.io.atomic import atomic_file
    from rtscli.io.raster import gdal_env
    from rtscli.io.vector import write_vector

    path = Path(path)
    plan = plan or scene_plan(height, width, seed=seed, site_name=site_name, resolution=resolution,
                              nodata_margin=nodata_margin)
    geo = site_origin(site_name, crs, resolution, index=index)
    transform = geo.transform()
    profile = dict(driver="GTiff", width=width, height=height, count=4, dtype="uint16", crs=geo.crs,
                   transform=transform, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    with atomic_file(path, overwrite=True) as tmp, gdal_env(), rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(SCENE_BANDS, start=1):
            dst.set_band_description(i, name)
        # stored as reflectance x 10000, as real products; GDAL's band scale says so (physical = x * 0.0001),
        # so scenes and chips (reflectance 0-1) are in one convention once rts applies it
        dst.scales = (SCENE_SCALE,) * len(SCENE_BANDS)
        dst.offsets = (0.0,) * len(SCENE_BANDS)
        dst.update_tags(RTS_SITE=site_name, RTS_SYNTH_SEED=str(seed))
        for row0 in range(0, height, block):
            for col0 in range(0, width, block):
                h, w = min(block, height - row0), min(block, width - col0)
                img, valid, _ = render(plan, row0, col0, h, w)
                if sky is not None:
                    from rtscli.synth.clouds import paint

                    paint(img, valid, sky, row0, col0)
                dst.write(np.rint(img).astype(np.uint16), window=Window(col0, row0, w, h))
                if progress:
                    progress(h * w)

    image = plan.image()
    rows = []
    for i, s in enumerate(plan.slumps):
        g, cut = shown(s.geometry, image)
        if g.is_empty:
            continue
        rows.append(dict(id=i + 1, site=site_name, weak_rgb=s.weak, touching=s.touching,
                         setting=s.setting, clipped=bool(s.clipped or cut), geometry=to_map(g, transform)))
    cols = ["id", "site", "weak_rgb", "touching", "setting", "clipped", "area_m2", "geometry"]
    truth = gpd.GeoDataFrame(rows, columns=[c for c in cols if c != "area_m2"], geometry="geometry", crs=geo.crs)
    truth["area_m2"] = geodesic_area_perimeter(truth.geometry.values, geo.crs)[0]  # true area on the ellipsoid
    truth = truth[cols]
    gpkg = path.with_suffix(".gpkg")
    write_vector(truth, gpkg, layer="rts", overwrite=True)
    if sky is not None:
        from rtscli.synth.clouds import quality_frame, write_masks

        write_vector(quality_frame(sky, transform, geo.crs), gpkg, layer="quality", overwrite=True)
        write_masks(path, plan, sky, transform=transform, crs=geo.crs, masks=tuple(masks), block=block)
    drows = []
    for kind, geoms in (("river_bar", plan.bars), ("road", plan.roads), ("dry_patch", plan.dry),
                        ("burnt_patch", plan.burnt)):
        for g in geoms:
            part, _ = shown(g, image)
            if not part.is_empty:
                drows.append(dict(kind=kind, geometry=to_map(part, transform)))
    dist = gpd.GeoDataFrame(drows, columns=["kind", "geometry"], geometry="geometry", crs=geo.crs)
    write_vector(dist, path.with_name(path.stem + "_distractors.gpkg"), layer="distractors", overwrite=True)
    if dem_dir is not None:
        from rtscli.synth.dem import write_dem

        Path(dem_dir).mkdir(parents=True, exist_ok=True)
        write_dem(Path(dem_dir) / f"{path.stem}_dem.tif", plan, transform=transform, crs=geo.crs, seed=seed,
                  index=index, block=block)
    return path, gpkg
