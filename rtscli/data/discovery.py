"""The first steps of ``rts prepare``, before any pixel is read: clear errors before any work.

:func:`check_options` refuses an existing output and options out of range; :func:`with_coco` finds COCO files
in the input folders; :func:`find_sources` finds the rasters; :func:`chip_layout` decides the kind of input
(:func:`detect_mode`), the band map and the chips' bands and modalities; :func:`inspect_sources` inspects every
raster once (band count, nodata).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtscli.data import coco
from rtscli.data.bands import BandMap, check_fits
from rtscli.data.inputs import MASK_SUFFIXES, aux_lookup, band_map_from_descriptions
from rtscli.data.modalities import Modality, resolve, resolve_all
from rtscli.data.options import PrepareOptions
from rtscli.data.scenes import find_rasters
from rtscli.errors import RtsError, set_raster_nodata, unknown_choice
from rtscli.io.raster import RasterInfo, inspect

log = logging.getLogger("rtscli")


def check_options(opts: PrepareOptions) -> None:
    """Refuse an existing output folder (unless ``opts.overwrite``) and options out of range."""
    from rtscli.io.atomic import check_output

    check_output(opts.out, opts.overwrite)
    if opts.scale is not None and not opts.scale > 0:
        raise RtsError("--scale must be positive", fix="e.g. --scale 0.0001 for reflectance x 10000")
    if opts.segmentation not in coco.SEGMENTATION_FORMATS:
        raise unknown_choice("segmentation format", opts.segmentation, coco.SEGMENTATION_FORMATS)
    if not 0 <= opts.overlap < 1:
        raise RtsError("--overlap must be in [0, 1)", fix="use e.g. 0.25")
    if opts.chip_size is not None and opts.chip_size < 16:
        raise RtsError("--chip-size must be at least 16 pixels", fix="use e.g. 256")


def with_coco(opts: PrepareOptions) -> PrepareOptions:
    """``opts`` with ``coco`` set to the COCO files found in the input folders, when no other labels are given
    (auto-detection); the files found are logged with the split each stands for."""
    from rtscli.data.coco_import import find_coco_files, splits_of

    if opts.coco is not None or opts.mode not in ("auto", "coco") or opts.labels or opts.masks:
        return opts
    if opts.bands is not None and "mask" in opts.bands and opts.mode == "auto":
        return opts  # the paper's layout: masks in the images
    found = find_coco_files(opts.inputs)
    if not found:
        return opts
    splits = splits_of(found, opts.coco_split)  # --coco-split names them by path or by base name
    log.info("COCO instances found: %s", ", ".join(f"{p.name} ({splits[p] or 'split by --split'})" for p in found))
    return dataclasses.replace(opts, coco=found)


# ---------------------------------------------------------------------------------------------
# the rasters
# ---------------------------------------------------------------------------------------------
@dataclass
class Sources:
    """The rasters to read and, for COCO input, what the COCO files say about them."""

    rasters: list[tuple[Path, Path]]  # (file, the input root it was found under)
    pixel_ok: bool  # images without georeference may come (per-sample images, not scenes with vector labels)
    coco_records: dict = field(default_factory=dict)  # {image path: rtscli.data.coco_import.CocoImage}
    coco_meta: dict = field(default_factory=dict)  # the manifest's ``coco`` record
    coco_reader: Any = None  # rtscli.data.coco_masks.CocoReader, for COCO input


def find_sources(opts: PrepareOptions) -> Sources:
    """The rasters under ``opts.inputs`` (or those the COCO files name), without the output folder, a mask folder
    inside an input folder, mask files beside the images and (for vector labels) JPEG/PNG previews without
    georeference. Raises :class:`RtsError` for a missing input, an empty folder or a missing mask folder."""
    exclude = [opts.out]  # an output folder inside the input folder is not input
    if opts.masks is not None and all(opts.masks.resolve() != i.resolve() for i in opts.inputs if i.is_dir()):
        exclude.append(opts.masks)
    # per-sample images (not scenes with vector labels) may come without georeference: they get a pixel grid
    pixel_ok = opts.mode != "vectors" and opts.labels is None
    if opts.coco is not None:
        from rtscli.data.coco_import import read_sources
        from rtscli.data.coco_masks import CocoReader

        rasters, records, meta = read_sources(opts.coco, split_map=opts.coco_split, images=opts.images,
                                              inputs=opts.inputs, category=opts.category, site=opts.site,
                                              crowd_as_instances=opts.crowd_as_instances)
        found = Sources(rasters, pixel_ok, records, meta, CocoReader())
    else:
        found = Sources(_rasters_and_items(opts, exclude), pixel_ok)
    if not pixel_ok:
        found.rasters = _georeferenced(found.rasters, opts)
    if opts.masks is not None:
        if not opts.masks.is_dir():
            raise RtsError("mask folder not found", path=opts.masks, fix="pass the folder that holds the masks")
        # when images and masks share a folder, the masks are not images
        found.rasters = [(p, r) for p, r in found.rasters
                         if not any(p.stem.endswith(s) for s in MASK_SUFFIXES if s)]
    return found


#: the channels a STAC item gives ``rts prepare`` without ``--bands``: the four of every optical product
STAC_CHANNELS = ("blue", "green", "red", "nir")


def _rasters_and_items(opts: PrepareOptions, exclude: list[Path]) -> list[tuple[Path, Path]]:
    """The rasters under each input (:func:`rtscli.data.scenes.find_rasters`) and the STAC items it names, each item
    as an in-memory VRT of its bands (:func:`rtscli.data.stac.item_vrt`: ``--bands``' names, else
    :data:`STAC_CHANNELS`, in band order), found under the VRT folder of its input (site folders stay sites)."""
    from rtscli.data.stac import stac_refs
    from rtscli.data.stac_vrt import item_vrt, vrt_root

    names = [n for n, _ in sorted(opts.bands.as_dict().items(), key=lambda kv: kv[1]) if n != "mask"] \
        if opts.bands is not None else list(STAC_CHANNELS)
    out: list[tuple[Path, Path]] = []
    for entry in opts.inputs:
        refs = stac_refs(entry)
        if refs is None:
            out.extend(find_rasters([entry], exclude=exclude))
        else:
            out.extend((item_vrt(ref, names), vrt_root(root)) for ref, root in refs)
    return out


def _georeferenced(rasters: list[tuple[Path, Path]], opts: PrepareOptions) -> list[tuple[Path, Path]]:
    """Scenes for vector labels: JPEG/PNG files found in a scene folder without any georeference (a preview, a
    quicklook) are left out with a note; any other file is kept (and refused by ``inspect`` if it has none)."""
    keep, skipped = [], []
    given = {p.resolve() for p in opts.inputs}
    for path, root in rasters:
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.resolve() not in given and \
                inspect(path, assume_crs=opts.assume_crs, pixel_grid_ok=True).pixel_grid:
            skipped.append(path)
        else:
            keep.append((path, root))
    if skipped:
        log.info("%d JPEG/PNG file(s) without georeference in the scene folder(s) left out (e.g. %s)", len(skipped),
                 skipped[0].name)
    if not keep:
        raise RtsError("no georeferenced image found for the vector labels", path=rasters[0][1],
                       fix="point to the folder of the scenes (GeoTIFF), or georeference the images")
    return keep


# ---------------------------------------------------------------------------------------------
# the kind of input and the chips' bands
# ---------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """The kind of input and the bands: those of the rasters and those of the chips written."""

    mode: str  # paper, masks, vectors or coco
    band_map: BandMap  # the rasters' bands (a paper sample's mask band too)
    image_bands: BandMap  # the rasters' bands that go into the chips (no mask), by their raster band numbers
    chip_bands: BandMap  # the chips' bands: image bands then --aux rasters, numbered 1..N
    modalities: list[Modality]


def detect_mode(opts: PrepareOptions, band_map: BandMap) -> str:
    """``opts.mode``, or for ``auto`` the kind of input the options and the band map point to. Raises
    :class:`RtsError` when no labels are given."""
    if opts.mode != "auto":
        return opts.mode
    if opts.labels is not None:
        return "vectors"
    if opts.masks is not None:
        return "masks"
    if opts.coco is not None:
        return "coco"
    if "mask" in band_map:
        return "paper"
    raise RtsError(
        "no labels given",
        fix="pass --labels FILE (vector labels), --masks DIR (mask images), --coco FILE (COCO instances), or a "
        "band map with a mask band (e.g. --bands paper)",
    )


def chip_layout(opts: PrepareOptions, sources: Sources) -> tuple[PrepareOptions, Layout]:
    """The mode and bands, from the options and the first raster; ``opts`` comes back with the chip size that
    scenes are cut to (256 pixels unless given). Raises :class:`RtsError` when the band map is missing or the
    options do not fit the mode."""
    first = inspect(sources.rasters[0][0], assume_crs=opts.assume_crs,
                    pixel_grid_ok=sources.pixel_ok)  # a clear error if not a raster
    band_map = opts.bands or band_map_from_descriptions(first)
    if opts.bands is None and band_map is not None and not any(first.descriptions):
        log.info("band map from the images' colour interpretation: %s", band_map)
    if band_map is None:
        raise RtsError("no band map given and the raster's bands are not named", path=sources.rasters[0][0],
                       fix="pass --bands (e.g. planetscope4, sentinel2-10, paper or blue=1,green=2,red=3,nir=4)")
    mode = detect_mode(opts, band_map)
    if mode == "paper" and "mask" not in band_map:
        raise RtsError(f"mode 'paper' needs a mask band in the band map ({band_map})",
                       fix="name it, e.g. --bands paper or ...,mask=6")
    if mode == "vectors" and opts.chip_size is None:
        opts = dataclasses.replace(opts, chip_size=256)  # scenes are always cut; the caller's opts stay
    if mode == "vectors" and opts.labels is None:
        raise RtsError("mode 'vectors' needs --labels FILE", fix="pass the label GeoPackage/shapefile/GeoJSON")
    if mode == "masks" and opts.masks is None:
        raise RtsError("mode 'masks' needs --masks DIR", fix="pass the folder of mask images")
    if mode == "coco" and opts.coco is None:
        raise RtsError("mode 'coco' needs --coco FILE (or COCO JSON files in the input folder)",
                       fix="pass the COCO instances JSON of each split with --coco")
    if mode == "coco" and opts.split_file is not None:
        raise RtsError("--split-file and --coco both give the splits", path=opts.split_file,
                       fix="drop --split-file (the COCO files give the splits), or use --coco-split")

    image_bands = band_map.without(["mask"])
    aux_names = list(opts.aux)
    for name in aux_names:
        if name in image_bands:
            raise RtsError(f"aux raster name {name!r} is already a band", fix="choose another --aux name")
    from rtscli.data.modalities import TERRAIN
    from rtscli.data.terrain import DEM_BAND

    # made from --dem, or from a band named dem (of the raster or --aux dem=), after the rasters' bands
    terrain = list(TERRAIN) if opts.dem is not None or DEM_BAND in image_bands.names + aux_names else []
    chip_bands = BandMap(tuple((n, i + 1) for i, n in enumerate(image_bands.names + aux_names + terrain)))
    modalities = resolve_all(opts.modalities or default_modalities(chip_bands), chip_bands)
    return opts, Layout(mode, band_map, image_bands, chip_bands, modalities)


def default_modalities(chip_bands: BandMap) -> list[str]:
    """Those of rgb, ndvi, nir and terrain that the chips' bands give. Raises :class:`RtsError` when none."""
    out = []
    for name in ["rgb", "ndvi", "nir", "terrain"]:
        try:
            resolve(name, chip_bands)
            out.append(name)
        except RtsError:
            pass
    if not out:
        raise RtsError(f"the band map ({chip_bands}) gives none of the modalities rgb, ndvi, nir",
                       fix="name red, green, blue and nir in --bands, or pass --modalities")
    return out


# ---------------------------------------------------------------------------------------------
# every raster, inspected once
# ---------------------------------------------------------------------------------------------
@dataclass
class Scan:
    """Every raster inspected, and the ``--aux`` rasters named."""

    infos: list[tuple[RasterInfo, Path]]  # (raster, the input root it was found under)
    pixel_grids: list[Path]  # the images without georeference
    aux_paths: dict[str, Path]  # {aux name: file or folder}


def inspect_sources(opts: PrepareOptions, sources: Sources, layout: Layout) -> Scan:
    """Inspect every raster once, checking the band map against its band count and band descriptions
    (:func:`rtscli.data.bands.check_fits`: a preset made for another sensor is refused) and that all share one
    nodata value; the ``--aux`` paths are checked to exist. Raises :class:`RtsError` naming the first that does
    not fit."""
    infos: list[tuple[RasterInfo, Path]] = []
    for path, root in sources.rasters:
        info = inspect(path, assume_crs=opts.assume_crs, pixel_grid_ok=sources.pixel_ok)
        check_fits(layout.band_map, info.count, info.descriptions, path)  # band count, descriptions, sensor
        infos.append((info, root))
    pixel_grids = [i.path for i, _ in infos if i.pixel_grid]
    if pixel_grids:
        log.info("%d image(s) have no georeference (e.g. %s): they get a pixel grid, each image its own place in the "
                 "split; their chips carry no CRS, so rts predict cannot map them (rts evaluate scores them)",
                 len(pixel_grids), pixel_grids[0].name)
    check_one_nodata([i for i, _ in infos])
    return Scan(infos, pixel_grids, {name: aux_lookup(name, p) for name, p in opts.aux.items()})


def _pixel_size(info: RasterInfo) -> str:
    """A raster's pixel size as text: ``10 m`` (or ``0.0001 deg``, or ``1 px`` for an image without georeference)."""
    if info.pixel_grid:
        return "1 px"
    unit = "deg" if info.crs is not None and info.crs.is_geographic else "m"
    return f"{abs(info.transform.a):g} {unit}" if abs(info.transform.a) == abs(info.transform.e) else \
        f"{abs(info.transform.a):g} x {abs(info.transform.e):g} {unit}"


def check_one_nodata(infos: list[RasterInfo]) -> None:
    """Refuse rasters with different nodata values, naming the files of each value under the folder that holds them
    all, and the cause when their data types or pixel sizes differ too: rasters of different sensors or products
    (e.g. Landsat 15 m float32 beside Sentinel-2 10 m uint16) mixed in one folder.

    Args:
        infos: every input raster, inspected.

    Raises:
        RtsError: the rasters do not share one nodata value (NaN equals NaN; no nodata is a value of its own).
    """
    import os

    groups: dict[str, list[RasterInfo]] = {}
    for info in infos:
        v = info.nodata
        groups.setdefault("nan" if v is not None and v != v else "none" if v is None else f"{v:g}", []).append(info)
    if len(groups) < 2:
        return
    folder = Path(os.path.commonpath([str(i.path.parent) for i in infos]))
    kinds = {key: (sorted({i.dtype for i in g}), sorted({_pixel_size(i) for i in g})) for key, g in groups.items()}

    def files(g: list[RasterInfo]) -> str:
        names = [str(i.path.relative_to(folder)) for i in g]
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = [f"nodata {'none' if key == 'none' else key}: {len(g)} file(s), {'/'.join(kinds[key][0])}, "
             f"{'/'.join(kinds[key][1])} pixels ({files(g)})" for key, g in groups.items()]
    dtypes = {d for k in kinds.values() for d in k[0]}
    sizes = {s for k in kinds.values() for s in k[1]}
    mixed = [w for w, many in (("data types", len(dtypes) > 1), ("resolutions", len(sizes) > 1)) if many]
    if mixed:
        cause = (f": their {' and '.join(mixed)} differ too, as for different sensors or products (e.g. Landsat and "
                 "Sentinel-2) mixed in one folder")
        fix = ("prepare one sensor at a time: pass only its files, or a folder that holds only them; if they are one "
               "product, give them one nodata value: " + set_raster_nodata("FILE"))
    else:
        cause = ""
        smallest = min(groups.values(), key=len)
        fix = "give them one nodata value: " + set_raster_nodata(smallest[0].path) + \
            (f" (and the other {len(smallest) - 1} of that value)" if len(smallest) > 1 else "")
    raise RtsError(f"the inputs have different nodata values{cause} (" + "; ".join(parts) + ")", path=folder,
                   fix=fix)
