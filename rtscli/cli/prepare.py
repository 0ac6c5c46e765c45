"""``rts prepare``: images + masks, polygons or COCO instances -> chips, COCO instances and a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to create.")],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Images (GeoTIFF, JPEG, PNG, JP2 ...) or folders of them (subfolders = sites); a folder holding COCO JSON is read as a COCO dataset.", show_default=False)] = None,
    bands: Annotated[Optional[str], typer.Option(help="Band map or preset: planetscope4, sentinel2-10, paper, blue=1,green=2,red=3,nir=4 ... (default: the rasters' band names).")] = None,
    labels: Annotated[Optional[list[Path]], typer.Option(help="Vector labels (GeoPackage, shapefile, GeoJSON) for large scenes; repeat it for one file per site (any CRS each).", metavar="FILE")] = None,
    labels_layer: Annotated[Optional[str], typer.Option(help="The layer of --labels that holds the slumps, when the file has several (a project GeoPackage).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Folder of mask images (any format the images may have) matched to images by name: binary (0/1, 0/255) or instance ids (0 = background, 1..N = one slump each).")] = None,
    mask_kind: Annotated[str, typer.Option(help="How masks (and mask bands) are read: auto (0/1 or 0/255 binary, near-0/near-255 JPEG noise thresholded, other whole numbers instance ids), binary, or instances.")] = "auto",
    coco: Annotated[Optional[list[Path]], typer.Option(help="COCO instances JSON (polygons or RLE); repeat it for one file per split (named *train*, *val*, *test*).", metavar="FILE")] = None,
    coco_split: Annotated[Optional[str], typer.Option(help="The split of each --coco file when their names do not say it: train=a.json,val=b.json,test=c.json.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of the --coco files' images (default: the input folders, or beside the JSON).")] = None,
    category: Annotated[Optional[str], typer.Option(help="The COCO category of the slumps when the files have several (default: the only one, the one named 'rts', or the only one with annotations).")] = None,
    crowd_as_instances: Annotated[bool, typer.Option("--crowd-as-instances", help="Train on COCO crowd annotations (iscrowd=1) as slumps: CVAT exports every brush mask as crowd (default: crowd regions are kept as crowd, not trained on).")] = False,
    mode: Annotated[str, typer.Option(help="auto, paper (mask band), masks, vectors or coco.")] = "auto",
    modalities: Annotated[Optional[str], typer.Option(help="Modalities to record, e.g. rgb,ndvi,nir,dem (default: all the bands allow of rgb,ndvi,nir).")] = None,
    aux: Annotated[Optional[list[str]], typer.Option(help="Extra aligned raster as a band: NAME=PATH (file or folder). Repeatable.")] = None,
    chip_size: Annotated[Optional[int], typer.Option(help="Chip side in pixels. Scenes with vector labels: default 256. Per-sample and COCO images larger than this are cut too, their annotations clipped (default: kept whole; smaller ones are padded to the model's tile when trained).")] = None,
    overlap: Annotated[float, typer.Option(help="Chip overlap as a fraction of the chip side.")] = 0.25,
    split: Annotated[str, typer.Option(help="train,val,test fractions, applied within each site.")] = "0.7,0.15,0.15",
    split_file: Annotated[Optional[Path], typer.Option(help="CSV 'name,split' or JSON assigning each image/scene to a split.")] = None,
    split_block: Annotated[int, typer.Option(help="Scenes: chips within blocks of this many pixels share a split.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    min_pixels: Annotated[Optional[int], typer.Option(help="Drop instances smaller than this many pixels (counted); default 16. (`rts predict --min-area` is in m2.)")] = None,
    min_area_old: Annotated[Optional[int], typer.Option("--min-area", hidden=True, help="Old name of --min-pixels.")] = None,
    segmentation: Annotated[str, typer.Option(help="auto (polygons, RLE when holes), polygon or rle.")] = "auto",
    site: Annotated[Optional[str], typer.Option(help="Site name for all inputs (default: first subfolder name).")] = None,
    assume_crs: Annotated[Optional[str], typer.Option(help="CRS for rasters that have none, e.g. EPSG:3413.")] = None,
    labels_crs: Annotated[Optional[str], typer.Option(help="CRS for a label file that has none.")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Reflectance bands: physical = stored x scale + offset (e.g. 0.0001 for reflectance x 10000). Default: the band scale/offset stored in each raster (GDAL metadata), else the values as stored.")] = None,
    offset: Annotated[Optional[float], typer.Option(help="Added after --scale (e.g. -0.1 for Sentinel-2 L2A processed since 2022; -0.2 with --scale 2.75e-5 for Landsat Collection 2).")] = None,
    quality: Annotated[Optional[str], typer.Option(help="Quality mask per raster (clouds, shadow, haze, snow are nodata; chips more than half invalid are left out and counted): auto (found beside each raster: *_udm2.tif, *_SCL_20m.jp2, SCL.tif, *_QA_PIXEL.TIF), a mask file (one raster; also a 0/1 GeoTIFF, 1 = usable) or a folder of masks.")] = None,
    quality_invalid: Annotated[Optional[str], typer.Option(help="With --quality: the classes counted invalid, of cloud, shadow, haze, cirrus, snow, dark (default cloud,shadow,haze,cirrus,snow).")] = None,
    dem: Annotated[Optional[Path], typer.Option(help="A DEM (GeoTIFF, VRT mosaic of ArcticDEM tiles, or a folder of tiles; any CRS and resolution): slope (degrees), relief (m) and hillshade become chip bands and the modality terrain.")] = None,
    dem_radius: Annotated[float, typer.Option(help="With --dem: the radius of the relief (elevation minus the mean elevation within it), metres.")] = 100.0,
    drop_empty: Annotated[bool, typer.Option("--drop-empty", help="Drop chips without slumps (kept as negatives by default).")] = False,
    repeat_to: Annotated[int, typer.Option(help="Repeat 1-channel modalities to this many channels (0 = no).")] = 3,
    dedupe_labels: Annotated[bool, typer.Option("--dedupe-labels/--keep-duplicate-labels", help="Label polygons that repeat an earlier one (IoU >= 0.9: one slump drawn twice) are counted; keep only the first of each (default), or keep them all.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace the dataset directory if it exists.")] = False,
) -> None:
    """Turn imagery and labels into a training dataset: chips, COCO JSON per split, manifest.

    Four kinds of input: per-sample GeoTIFFs with a mask band (--bands paper), images plus
    mask images (--masks DIR), large scenes plus vector labels (--labels FILE), which are cut
    into chips of --chip-size with --overlap, or a COCO instance dataset (--coco FILE --images DIR).
    Images may be GeoTIFF, JPEG, PNG or any format GDAL reads; those without georeference get a
    pixel grid (trained on and scored, not mapped by rts predict).
    """
    from rich.table import Table

    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.data.bands import BandMap
    from rtscli.data.coco_import import parse_coco_split
    from rtscli.data.inputs import parse_aux
    from rtscli.data.modalities import parse_names
    from rtscli.data.options import MODES, PrepareOptions
    from rtscli.data.prepare import prepare as run
    from rtscli.data.split_files import SPLITS, parse_fractions
    from rtscli.errors import RtsError
    from rtscli.io.paths import safe_component
    from rtscli.io.raster import parse_crs

    if min_area_old is not None and min_pixels is not None:
        raise RtsError("--min-area is the old name of --min-pixels: give one of them", fix="use --min-pixels")
    if min_pixels is None and min_area_old is None:
        min_pixels = 16
    if min_area_old is not None:  # one unit per option name: --min-area is m2 in rts predict
        import logging

        logging.getLogger("rtscli").warning("rts prepare --min-area is now --min-pixels (a count of pixels; "
                                            "--min-area is m2 in rts predict)")
        min_pixels = min_area_old
    assert min_pixels is not None  # 16 by default, else the value of --min-pixels or --min-area
    split_files = parse_coco_split(coco_split) if coco_split else None
    if split_files and not coco and (not inputs or all(p.is_file() for p in split_files)):
        coco = list(split_files)  # else the COCO files are found in the input folders, matched by base name
    if site is not None:
        site = safe_component(site, "--site")  # a folder of the dataset: chips/<site>/
    if not inputs and not coco:
        raise RtsError("no input given", fix="pass image files or folders, or --coco FILE --images DIR")
    if mode not in MODES:
        from rtscli.errors import unknown_choice

        raise unknown_choice("--mode", mode, MODES)
    aux_map = parse_aux(aux)
    from rtscli.cli.predict import quality_request

    inputs_many = len(inputs or []) != 1 or (inputs is not None and inputs[0].is_dir())
    opts = PrepareOptions(
        inputs=list(inputs or []),
        out=out,
        bands=BandMap.parse(bands) if bands else None,
        mode=mode,
        masks=masks,
        labels=list(labels) if labels else None,
        labels_layer=labels_layer,
        labels_crs=parse_crs(labels_crs, "--labels-crs"),
        aux=aux_map,
        modalities=parse_names(modalities) if modalities else None,
        chip_size=chip_size,
        overlap=overlap,
        fractions=parse_fractions(split),
        split_file=split_file,
        split_block=split_block,
        seed=seed,
        min_area=min_pixels,
        segmentation=segmentation,
        site=site,
        assume_crs=parse_crs(assume_crs),
        scale=scale,
        offset=offset,
        keep_empty=not drop_empty,
        repeat_to=repeat_to,
        dedupe_labels=dedupe_labels,
        overwrite=overwrite,
        mask_kind=mask_kind,
        coco=list(coco) if coco else None,
        coco_split=split_files,
        images=images,
        category=category,
        crowd_as_instances=crowd_as_instances,
        quality=quality_request(quality, quality_invalid, many=inputs_many),
        dem=dem,
        dem_radius=dem_radius,
    )
    with progress() as bar:
        def make(desc, total):
            task = bar.add_task(desc, total=total, unit="chips")
            return lambda k: bar.advance(task, k)

        result = run(opts, progress=make)

    m = result.manifest
    table = Table(title=f"dataset {out} ({m['mode']}): images / instances per site and split")
    table.add_column("site")
    for s in SPLITS:
        table.add_column(s, justify="right")
    table.add_column("negatives", justify="right")
    for site_name, c in m["counts"]["per_site"].items():
        table.add_row(site_name, *[f"{c[s]['images']} / {c[s]['instances']}" for s in SPLITS],
                      str(sum(c[s]["negatives"] for s in SPLITS)))
    tot = m["counts"]["total"]
    table.add_row("[bold]total", *[f"{tot[s]['images']} / {tot[s]['instances']}" for s in SPLITS],
                  str(sum(tot[s]["negatives"] for s in SPLITS)))
    console.print(table)
    d = m["dropped"]
    notes = []
    if d["specks_below_min_area"]:
        notes.append(f"{d['specks_below_min_area']} mask specks < {min_pixels} px dropped")
    if d.get("labels_below_min_pixels"):
        notes.append(f"{d['labels_below_min_pixels']} label(s) smaller than --min-pixels {min_pixels} px dropped "
                     "(each lies whole in a chip; a lower --min-pixels keeps them)")
    if d["labels_clipped_below_min_area"]:
        notes.append(f"{d['labels_clipped_below_min_area']} label piece(s) cut by chip edges and smaller than "
                     f"--min-pixels {min_pixels} px dropped")
    if d["nodata_chips_skipped"]:
        notes.append(f"{d['nodata_chips_skipped']} all-nodata chips skipped")
    if d["empty_chips_dropped"]:
        notes.append(f"{d['empty_chips_dropped']} empty chips dropped")
    if d.get("quality_chips_dropped"):
        notes.append(f"{d['quality_chips_dropped']} chips more than half under cloud, shadow, haze or snow (quality "
                     "mask) left out")
    lab = m.get("labels") or {}
    if lab.get("repaired_invalid"):
        notes.append(f"{lab['repaired_invalid']} invalid polygons repaired")
    if lab.get("duplicates"):
        notes.append(f"{lab['duplicates']} duplicate label polygons" + (" dropped (the first of each kept)"
                                                                      if lab.get("duplicates_dropped") else " kept"))
    if m["split"].get("left_out_overlapping_other_file"):
        notes.append(f"{m['split']['left_out_overlapping_other_file']} items left out: they overlap an item of another "
                     "file in another split")
    if (m.get("coco") or {}).get("crowd_regions_kept"):
        notes.append(f"{m['coco']['crowd_regions_kept']} crowd regions kept as crowd (ignored by AP, not trained on; "
                     "--crowd-as-instances trains on them)")
    if m.get("pixel_grid_images"):
        notes.append(f"{m['pixel_grid_images']} images without georeference: pixel grid, no CRS")
    if lab.get("dropped_not_polygon") or lab.get("dropped_empty"):
        notes.append(f"{lab.get('dropped_not_polygon', 0) + lab.get('dropped_empty', 0)} non-polygon/empty features ignored")
    for n in notes:
        console.print(f"  note: {n}")
    console.print(f"modalities: {', '.join(m['modalities'])}; bands: {', '.join(m['band_map'])}; "
                  f"normalization from {m['normalization_method']['sampled_pixels']} "
                  f"{'training ' if m['normalization_method']['split'] == 'train' else ''}pixels")
    console.print(f"wrote {out}/manifest.yaml, {', '.join(f'{s}.json' for s in SPLITS)} and chips/")
