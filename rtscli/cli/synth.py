"""``rts synth OUT``: procedural thaw-slump chips and scenes with known truth."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer


def _parse_size(text: str) -> tuple[int, int]:
    from rtscli.errors import RtsError

    t = text.lower().replace(" ", "")
    try:
        if "x" in t:
            w, h = t.split("x")
            return int(h), int(w)
        return int(t), int(t)
    except ValueError:
        raise RtsError(f"cannot read size {text!r}", fix="use e.g. 2048 or 4096x2048 (width x height)") from None


def synth(
    out: Annotated[Path, typer.Argument(help="Output directory (created; must not exist unless --overwrite).")],
    chips: Annotated[int, typer.Option(help="Number of per-sample chips (paper layout).")] = 60,
    chip_size: Annotated[int, typer.Option(help="Chip side in pixels.")] = 256,
    scenes: Annotated[int, typer.Option(help="Number of large scenes.")] = 1,
    scene_size: Annotated[str, typer.Option(help="Scene size: 2048 or WIDTHxHEIGHT.")] = "2048",
    site: Annotated[str, typer.Option(help="Sites: 'all' or a comma list (see the README).")] = "all",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
    crs: Annotated[str, typer.Option(help="Projected CRS of the outputs.")] = "EPSG:3413",
    resolution: Annotated[float, typer.Option(help="Pixel size in metres.")] = 3.0,
    negatives: Annotated[float, typer.Option(help="Share of chips without any slump.")] = 0.1,
    nodata_fraction: Annotated[float, typer.Option(help="Share of chips with a nodata margin.")] = 0.15,
    weak_fraction: Annotated[Optional[float], typer.Option(help="Share of slumps with weak RGB contrast that NDVI/NIR show (default: per site, 0.25-0.35).")] = None,
    weak_contrast: Annotated[float, typer.Option(help="Scale of the weak slumps' RGB contrast: 1 default, 0 invisible in RGB.")] = 1.0,
    realism: Annotated[str, typer.Option(help="How hard the data is: demo (large horseshoe slumps, bright in RGB; the demo's) or hard (as real data: small, elongated, gullied slumps only 3-18% brighter or 6-20% darker than the tundra in RGB, 2-3 per chip, chips through JPEG).")] = "demo",
    years: Annotated[int, typer.Option(help="Write each scene at this many dates one year apart (from 2019-07-15), its slumps growing along their headwalls, two merging, one appearing and one stabilizing each year, with the truth of each date (for rts track).")] = 1,
    clouds: Annotated[float, typer.Option(help="Share of each scene under clouds (with haze rings and shadows; some over slumps), written with quality masks beside it (--cloud-masks). 0: clear.")] = 0.0,
    snow: Annotated[float, typer.Option(help="Share of each scene under snow patches (in the quality masks too).")] = 0.0,
    cloud_masks: Annotated[str, typer.Option(help="With --clouds or --snow: the masks written beside each scene: udm2 (<scene>_udm2.tif, PlanetScope UDM2), scl (<scene>_SCL_20m.tif, Sentinel-2 SCL at twice the pixel size), or udm2,scl.")] = "udm2,scl",
    dem: Annotated[bool, typer.Option("--dem", help="Also write a DEM of each scene (dem/<scene>_dem.tif, float32 metres on the scene's grid: hills, lake basins, river valleys, each slump a bowl with a steep headwall and a debris tongue; look-alikes flat; voids on every third scene): rts prepare ... --dem OUT/dem; and a dem band (7th) in each chip: rts prepare OUT/chips --bands paper-dem.")] = False,
    stac: Annotated[bool, typer.Option("--stac", help="Also write each scene as a STAC item (stac/<scene>/<scene>.json: one file per band as Earth Search's Sentinel-2 L2A items, nir at twice the pixel size, SCL with --clouds) and stac/catalog.json linking them: rts predict OUT/stac/catalog.json.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Write synthetic thaw-slump data: chips in the paper's layout and large scenes with truth.

    OUT/chips/<site>/*.tif hold bands red, green, blue, ndvi, nir, mask (use --bands paper; with --dem also dem:
    --bands paper-dem);
    OUT/scenes/*.tif are 4-band PlanetScope-like scenes (--bands planetscope4) with their
    ground-truth slumps in *.gpkg beside them.
    """
    import yaml

    from rtscli import __version__
    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.errors import RtsError
    from rtscli.io.atomic import atomic_dir
    from rtscli.synth import CHIP_BANDS, CHIP_DEM_BANDS, write_chips, write_scene
    from rtscli.synth.realism import realism as realism_level
    from rtscli.synth.sites import SITES, overridden

    names = list(SITES) if site == "all" else [s.strip() for s in site.split(",") if s.strip()]
    for n in names:
        if n not in SITES:
            from rtscli.errors import unknown_choice

            raise unknown_choice("synthetic site", n, SITES, also="or all")
    if chips < 0 or scenes < 0 or chip_size < 32:
        raise RtsError("--chips and --scenes must be >= 0 and --chip-size >= 32", fix="fix the options")
    height, width = _parse_size(scene_size)
    if scenes and min(height, width) < 32:
        raise RtsError(f"--scene-size {scene_size} is too small", fix="use at least 32 pixels, e.g. 2048")
    from rtscli.io.raster import parse_crs

    parse_crs(crs, "--crs")
    if years < 1:
        raise RtsError("--years must be at least 1", fix="e.g. --years 3")
    if resolution <= 0:
        raise RtsError("--resolution must be positive", fix="use e.g. 3")
    if (weak_fraction is not None and not 0 <= weak_fraction <= 1) or not 0 <= weak_contrast <= 2:
        raise RtsError("--weak-fraction must be in [0, 1] and --weak-contrast in [0, 2]", fix="fix the options")
    level = realism_level(realism)
    from rtscli.synth.clouds import MASKS

    if not 0 <= clouds <= 0.9 or not 0 <= snow <= 0.5:
        raise RtsError("--clouds must be in [0, 0.9] and --snow in [0, 0.5]", fix="e.g. --clouds 0.2 --snow 0.05")
    masks = tuple(m.strip().lower() for m in cloud_masks.split(",") if m.strip())
    for m in masks:
        if m not in MASKS:
            from rtscli.errors import unknown_choice

            raise unknown_choice("--cloud-masks", m, MASKS)

    chips_written = 0
    scene_files: list[str] = []
    with (overridden(weak_fraction, weak_contrast if weak_contrast != 1.0 else None, level),
          atomic_dir(out, overwrite=overwrite) as tmp, progress() as bar):
        if chips:
            task = bar.add_task("chips", total=chips, unit="chips")
            write_chips(tmp / "chips", chips, size=chip_size, seed=seed, sites=names, crs=crs,
                        resolution=resolution, negatives=negatives, nodata_fraction=nodata_fraction,
                        progress=lambda k: bar.advance(task, k), dem=dem)
            chips_written = chips
        for i in range(scenes):
            (tmp / "scenes").mkdir(exist_ok=True)
            name = names[i % len(names)]
            task = bar.add_task(f"scene {i + 1}/{scenes} ({name})", total=height * width * years, unit="pixels")
            if years > 1:
                from rtscli.synth.series import write_series

                pairs = write_series(tmp / "scenes", f"scene_{i:02d}_{name}", height, width, years,
                                     seed=seed * 1000 + i, site_name=name, crs=crs, resolution=resolution, index=i,
                                     progress=partial(bar.advance, task), clouds=clouds, snow=snow, masks=masks,
                                     dem_dir=tmp / "dem" if dem else None)
                scene_files += [tif.name for tif, _ in pairs]
                continue
            sky = None
            if clouds > 0 or snow > 0:
                from rtscli.synth import scene_plan
                from rtscli.synth.clouds import make_sky

                plan = scene_plan(height, width, seed=seed * 1000 + i, site_name=name, resolution=resolution)
                sky = make_sky(plan, clouds=clouds, snow=snow, seed=seed * 1000 + i)
            else:
                plan = None
            tif, gpkg = write_scene(tmp / "scenes" / f"scene_{i:02d}_{name}.tif", height, width,
                                    seed=seed * 1000 + i, site_name=name, crs=crs, resolution=resolution,
                                    progress=partial(bar.advance, task), index=i, plan=plan, sky=sky, masks=masks,
                                    dem_dir=tmp / "dem" if dem else None)
            scene_files.append(tif.name)
        stac_items = _write_stac(tmp, scene_files) if stac and scene_files else []
        meta = dict(rts_version=__version__, seed=seed, crs=crs, resolution_m=resolution, sites=names,
                    weak_fraction=weak_fraction, weak_contrast=weak_contrast, realism=level.name,
                    chips=dict(count=chips, size=chip_size, bands=CHIP_DEM_BANDS if dem else CHIP_BANDS,
                               band_preset="paper-dem" if dem else "paper", negatives=negatives),
                    scenes=dict(files=scene_files, height=height, width=width, years=years,
                                bands=["blue", "green", "red", "nir"], band_preset="planetscope4",
                                **(dict(clouds=clouds, snow=snow, quality_masks=list(masks))
                                   if clouds > 0 or snow > 0 else {}),
                                **(dict(stac="stac/catalog.json") if stac_items else {}),
                                **(dict(dem="dem/<scene>_dem.tif") if dem else {})))
        (tmp / "synth.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    console.print(f"wrote {chips_written} chips and {len(scene_files)} scene(s) to {out}"
                  + (f" (--realism {level.name})" if level.name != "demo" else ""))
    if chips_written:
        preset = "paper-dem" if dem else "paper"
        console.print(f"  chips:  {out}/chips/<site>/*.tif   (rts prepare {out}/chips --bands {preset} ...)")
    for s in scene_files:
        console.print(f"  scene:  {out}/scenes/{s}  truth: {Path(s).stem}.gpkg  (--bands planetscope4)")
    if dem and scene_files:
        console.print(f"  DEM:    {out}/dem/<scene>_dem.tif (metres; rts prepare ... --dem {out}/dem)")
    if stac_items:
        console.print(f"  STAC:   {out}/stac/catalog.json ({len(stac_items)} item(s), one file per band; rts predict "
                      f"{out}/stac/catalog.json -o maps/)")
    if scene_files and (clouds > 0 or snow > 0) and masks:
        mask_names = {"udm2": "<scene>_udm2.tif", "scl": "<scene>_SCL_20m.tif"}
        console.print(f"  quality masks: {', '.join(mask_names[m] for m in masks)} beside each scene (rts predict "
                      "--quality auto); clouds, haze, shadows, snow: layer quality of the truth")


def _write_stac(root: Path, scene_files: list[str]) -> list[Path]:
    """Each scene as a STAC item under ``root/stac/<scene>/`` and ``root/stac/catalog.json`` linking them
    (:mod:`rtscli.synth.stac_items`); the item's date is the one in the scene's name (else 2019-07-15, 12:00 UTC)."""
    from datetime import datetime, timezone

    from rtscli.synth.series import FIRST_DATE
    from rtscli.synth.stac_items import write_catalog, write_item
    from rtscli.track.dates import find_date

    items = []
    for name in scene_files:
        scene = root / "scenes" / name
        found = find_date(scene.stem)
        day = found[0] if found else FIRST_DATE
        when = datetime(day.year, day.month, day.day, 12, 0, tzinfo=timezone.utc)
        items.append(write_item(scene, root / "stac" / scene.stem, when))
    write_catalog(root / "stac", items)
    return items
