"""What each rts algorithm asks for, as plain data: the QGIS parameter, the ``rts`` option it becomes, its
default and its help text.

This module imports nothing from QGIS (and nothing from rts): the algorithms build their QGIS parameters from it,
and rts's tests read it to check that every default, help text and choice here is the command line's own
(``tests/test_qgis_plugin.py``), so the dialogs never drift from ``rts COMMAND --help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

#: the kinds of parameter (each maps to one QGIS parameter class in :mod:`rts_qgis.algorithms`)
KINDS = ("raster", "vector", "vectors", "rasters", "file", "folder", "number", "int", "bool", "enum", "string",
         "crs", "vector_out", "file_out", "folder_out")


@dataclass(frozen=True)
class Param:
    """One parameter of an algorithm.

    Attributes:
        name: the QGIS parameter name (``MIN_SCORE``): what scripts, models and ``qgis_process`` pass.
        kind: one of :data:`KINDS`.
        label: the label in the dialog.
        flag: the rts option it becomes (``--min-score``); empty for a parameter the algorithm turns into arguments
            itself (input layers, outputs).
        help: the help text, the command line's own where there is a ``flag``.
        default: the default value (the command line's).
        optional: whether it may be left empty (nothing is passed then).
        choices: for enums, ``(label, value passed to rts)`` pairs; a value of None passes nothing (rts's default).
        minimum: the least number accepted.
        maximum: the largest number accepted.
        advanced: shown under "Advanced parameters".
        file_filter: for ``file_out``, the file dialog's filter (the first type is the default extension); for
            ``file``, the extension of the files it takes.
    """

    name: str
    kind: str
    label: str
    flag: str = ""
    help: str = ""
    default: Any = None
    optional: bool = False
    choices: Tuple[Tuple[str, Optional[str]], ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    advanced: bool = False
    file_filter: str = ""


@dataclass(frozen=True)
class Command:
    """One algorithm: an ``rts`` command and its parameters.

    Attributes:
        id: the algorithm's id within the provider (``rts:predict``).
        cli: the words after ``rts`` (``("export", "--schema", "arts")``).
        name: the name in the toolbox.
        group: the toolbox group.
        summary: the help shown beside the dialog (before the parameters' own).
        params: the parameters, in dialog order.
    """

    id: str
    cli: Tuple[str, ...]
    name: str
    group: str
    summary: str
    params: Tuple[Param, ...]

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (KeyError if there is none)."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


#: rts's band presets (``rts bands``), in its order; the test checks they are the command line's
BAND_PRESETS = ("planetscope4", "planetscope8", "sentinel2-10", "sentinel2-7", "landsat8-7", "paper", "paper-dem")

_BAND_HELP = ("Band map of the scene(s): a preset (planetscope4, sentinel2-10, ...) or red=3,green=2,...; default: "
              "that of the model's training rasters (`rts info BUNDLE`).")

PREDICT = Command(
    id="predict",
    cli=("predict",),
    name="Map slumps in a scene (predict)",
    group="Mapping",
    summary=("Map every thaw slump of a scene as its own polygon, in the scene's coordinates, with a model bundle. "
             "The scene is read by windows (never whole), the model runs tile by tile with overlap, and slumps cut "
             "by tile borders are merged into one polygon with its score, true area (area_m2) and flags. The "
             "output opens styled: outlines coloured by score, labelled with their id. rts runs as a separate "
             "program (set its path under Settings > Options > Processing > Providers > rts)."),
    params=(
        Param("INPUT", "raster", "Scene (GeoTIFF or any raster GDAL reads)",
              help="The scene to map: a raster layer of the project or a file. Its bands must be laid out as the "
                   "band map says."),
        Param("MODEL", "folder", "Model bundle (folder)", flag="--model", optional=True,
              help="Model bundle (default: `rts models use`, or $RTS_MODEL)."),
        Param("BANDS", "enum", "Band preset", flag="--bands", default=0,
              choices=(("as the model's training rasters", None),) + tuple((p, p) for p in BAND_PRESETS),
              help=_BAND_HELP),
        Param("BAND_MAP", "string", "Or a band map (overrides the preset)", flag="--bands", optional=True,
              help=_BAND_HELP),
        Param("DEM", "raster", "DEM (for a model trained with terrain)", flag="--dem", optional=True,
              help="DEM for a model trained with terrain (rts prepare --dem): a GeoTIFF, a VRT mosaic (e.g. of "
                   "ArcticDEM tiles) or a folder of tiles, in any CRS and resolution; slope, relief and hillshade are "
                   "made from it by window as in training."),
        Param("MIN_SCORE", "number", "Minimum score", flag="--min-score", default=0.5, minimum=0.0, maximum=1.0,
              help="Keep detections scoring at least this."),
        Param("MIN_AREA", "number", "Minimum area (m²)", flag="--min-area", default=0.0, minimum=0.0,
              help="Drop polygons smaller than this many m^2."),
        Param("SIMPLIFY", "number", "Simplify tolerance (map units)", flag="--simplify", default=0.0, minimum=0.0,
              advanced=True, help="Simplify polygons with this tolerance (map units; 0 = exact pixel edges)."),
        Param("OVERLAP", "number", "Tile overlap (fraction or pixels)", flag="--overlap", optional=True,
              minimum=0.0, advanced=True,
              help="Tile overlap: a fraction of the tile (<1) or pixels (default: 25% or the typical slump size)."),
        Param("TO_CRS", "crs", "Reproject the polygons to", flag="--to-crs", optional=True, advanced=True,
              help="Reproject the polygons, e.g. EPSG:4326 (default: the scene's CRS)."),
        Param("DEVICE", "enum", "Device", flag="--device", default=0, advanced=True,
              choices=(("auto", None), ("cpu", "cpu"), ("cuda", "cuda"), ("mps", "mps")),
              help="cpu, cuda, cuda:N or mps (default: a CUDA GPU when there is one, else Apple silicon's MPS, "
                   "else the CPU)."),
        Param("BATCH_SIZE", "int", "Tiles per forward pass", flag="--batch-size", default=4, minimum=1,
              advanced=True, help="Tiles per forward pass."),
        Param("WORKERS", "int", "Tile-reading worker processes", flag="--workers", default=2, minimum=0,
              advanced=True, help="Tile-reading worker processes."),
        Param("THREADS", "int", "CPU threads", flag="--threads", optional=True, minimum=1, advanced=True,
              help="CPU threads of torch (per Ray worker with --engine ray; default: the CPUs this job may use: "
                   "SLURM_CPUS_PER_TASK, cgroup quota, OMP_NUM_THREADS)."),
        Param("OUTPUT", "vector_out", "Slumps", flag="--out",
              help="Output .gpkg (layer rts), .shp, .geojson or .parquet; a folder for many scenes."),
        Param("QUICKLOOK", "file_out", "Quicklook PNG", flag="--quicklook", optional=True, advanced=True,
              file_filter="PNG files (*.png)",
              help="Also write a PNG of the polygons over the scene's RGB, one scene only."),
    ),
)

MERGE = Command(
    id="merge",
    cli=("merge",),
    name="Merge the maps of one period (merge)",
    group="Mapping",
    summary=("Join the per-scene maps of one period into one map of the region: each slump once, with n_observed "
             "(scenes that detected it), n_covered (scenes whose valid footprint covered it) and detection_rate, "
             "its first and last date, the scenes, the best score and the true area. Its outline is the "
             "best-viewed observation. Give the maps as layers, or a folder of rts predict outputs. The merged "
             "map opens styled like rts predict's."),
    params=(
        Param("MAPS", "vectors", "Per-scene maps (layers)", optional=True,
              help="Per-scene maps of one period: a folder of rts predict outputs (its manifest.json says which), a "
                   "glob ('maps/*.gpkg', quoted) or files; any CRS each."),
        Param("MAPS_FOLDER", "folder", "Or a folder of rts predict outputs", optional=True,
              help="Per-scene maps of one period: a folder of rts predict outputs (its manifest.json says which), a "
                   "glob ('maps/*.gpkg', quoted) or files; any CRS each."),
        Param("MATCH", "enum", "Overlap measure", flag="--match", default=0,
              choices=(("ios", "ios"), ("iou", "iou")),
              help="Overlap that makes two scenes' polygons one slump: ios (intersection over the smaller: a view "
                   "cut by a scene edge still joins) or iou."),
        Param("MATCH_THRESHOLD", "number", "Least overlap that joins two polygons", flag="--match-threshold",
              default=0.3, minimum=0.0, maximum=1.0,
              help="Least overlap that joins two polygons (touching slumps share no area and stay apart)."),
        Param("MIN_AREA", "number", "Minimum area (m²)", flag="--min-area", default=0.0, minimum=0.0,
              help="Leave out polygons smaller than this (true m²): slivers."),
        Param("BLOCK_KM", "number", "Block side (km)", flag="--block-km", default=50.0, minimum=0.0, advanced=True,
              help="Side of the square blocks the region is merged in (km): memory follows one block's polygons, "
                   "not the region's."),
        Param("TO_CRS", "crs", "CRS of the merged map", flag="--to-crs", optional=True, advanced=True,
              help="CRS of the merged map, e.g. EPSG:3413 for a region across UTM zones. Default: the maps' CRS (the "
                   "most common one when they differ; logged)."),
        Param("OUTPUT", "file_out", "Merged map", flag="--out",
              file_filter="GeoPackage (*.gpkg *.GPKG);;GeoParquet (*.parquet)",
              help="The merged map: .parquet (GeoParquet, written in row groups; its coverage beside it as "
                   "NAME_footprint.parquet) or .gpkg (layers rts and rts_footprint)."),
    ),
)

TRACK = Command(
    id="track",
    cli=("track",),
    name="Follow slumps through time (track)",
    group="Change",
    summary=("Follow every slump through maps of one area at several dates: new, continued, merged, split, "
             "disappeared or stabilized, with stable track ids, true areas, growth (m²/year) and boundary change "
             "(m/year). Each map's date comes from Dates, else from the map (a date field, the scene name of rts "
             "predict outputs, the file name). The layers open styled by growth rate."),
    params=(
        Param("MAPS", "vectors", "Slump maps (one per date)",
              help="Slump maps of one area at different dates (rts predict outputs, or any GeoPackage/Shapefile/"
                   "GeoJSON/GeoParquet; any CRS each), or folders of them."),
        Param("DATES", "string", "Dates of the maps, in order", flag="--dates", optional=True,
              help="The imagery date of each map (or folder of maps), in order: 2019-07-15,2020-07-20,... Default: a "
                   "date field, the scene name of rts predict outputs, the file name, or the folder name. Dates out "
                   "of time order, or in another year than a map's own date, are refused; another day of the same "
                   "year is a warning."),
        Param("DATE_FIELD", "string", "Date field", flag="--date-field", optional=True, advanced=True,
              help="Field holding each feature's imagery date (one file may then hold several dates). An ARTS "
                   "BaseMapDate field is read without it."),
        Param("MATCH", "enum", "Overlap measure", flag="--match", default=0,
              choices=(("ios", "ios"), ("iou", "iou")),
              help="Overlap that links a slump to its next date: ios (intersection over the smaller: robust to "
                   "growth) or iou."),
        Param("MATCH_THRESHOLD", "number", "Least overlap that links two polygons", flag="--match-threshold",
              default=0.3, minimum=0.0, maximum=1.0,
              help="Least overlap that links two polygons (touching slumps share no area and never link)."),
        Param("MIN_AREA", "number", "Minimum area (m²)", flag="--min-area", default=0.0, minimum=0.0,
              help="Leave out polygons smaller than this (true m²): slivers."),
        Param("GONE", "enum", "A slump gone from a map is", flag="--gone", default=0,
              choices=(("disappeared", "disappeared"), ("stabilized", "stabilized")),
              help="What a slump gone from a map that covers its place is: disappeared, or stabilized (maps of "
                   "active slumps no longer show a revegetated scar)."),
        Param("TO_CRS", "crs", "CRS of the output layers", flag="--to-crs", optional=True, advanced=True,
              help="CRS of the output layers. Default: the first map's."),
        Param("OUTPUT", "file_out", "Changes (GeoPackage)", flag="--out", file_filter="GeoPackage (*.gpkg *.GPKG)",
              help="GeoPackage to write: layers observations (a row per slump per date) and tracks (a row per "
                   "slump)."),
        Param("PLOT", "file_out", "Growth plot PNG", flag="--plot", optional=True, advanced=True,
              file_filter="PNG files (*.png)",
              help="PNG of area over time for the fastest-growing (or largest) slumps."),
    ),
)

EXPORT_ARTS = Command(
    id="exportarts",
    cli=("export", "--schema", "arts"),
    name="Export to ARTS (export --schema arts)",
    group="Change",
    summary=("Write slump polygons as features of the ARTS data set (Arctic Retrogressive Thaw Slumps): every ARTS "
             "field, the ARTS UID and EPSG:3413 geometry; from an rts track GeoPackage (either of its layers), the "
             "change relations too. Model predictions need a minimum score (or 'every prediction')."),
    params=(
        Param("INPUT", "vector", "Slump map or rts track output",
              help="A slump map (rts predict output, or any polygon layer), or the GeoPackage of rts track (then the "
                   "change relations are filled)."),
        Param("REGION", "string", "RegionName", flag="--region",
              help="ARTS RegionName: the geographical region (required)."),
        Param("CREATOR", "string", "CreatorLab", flag="--creator",
              help="ARTS CreatorLab: data creator and organization (required)."),
        Param("BASEMAP_SOURCE", "string", "BaseMapSource", flag="--basemap-source",
              help="ARTS BaseMapSource: the sensor of the imagery, e.g. PlanetScope, Sentinel-2 (required)."),
        Param("BASEMAP_RESOLUTION", "number", "BaseMapResolution (m)", flag="--basemap-resolution", minimum=0.0,
              help="ARTS BaseMapResolution: the imagery's resolution in metres (required)."),
        Param("BASEMAP_DATE", "string", "BaseMapDate", flag="--basemap-date", optional=True,
              help="ARTS BaseMapDate: YYYY-MM-DD or a range YYYY-MM-DD,YYYY-MM-DD. Default: the dates of rts track, "
                   "or the date in the scene or file name."),
        Param("BASEMAP_ID", "string", "BaseMapID", flag="--basemap-id", optional=True,
              help="ARTS BaseMapID: the image id. Default: the scene name of rts predict outputs."),
        Param("CONTRIBUTION_DATE", "string", "ContributionDate", flag="--contribution-date", optional=True,
              advanced=True, help="ARTS ContributionDate (YYYY-MM-DD). Default: today."),
        Param("NOTES", "string", "Notes", flag="--notes", optional=True, advanced=True,
              help="ARTS Notes for every feature."),
        Param("MIN_SCORE", "number", "Minimum score of predictions", flag="--min-score", optional=True,
              minimum=0.0, maximum=1.0,
              help="Export only the model predictions scoring this or more (0 to 1). ARTS is a curated data set: a "
                   "map of predictions (a score field) needs --min-score or --all. Each prediction's Notes record "
                   "its score and model."),
        Param("ALL", "bool", "Every prediction, whatever its score", flag="--all", default=False,
              help="Export every model prediction, whatever its score (their Notes say so)."),
        Param("OUTPUT", "file_out", "ARTS file", flag="--out",
              file_filter="GeoJSON (*.geojson);;GeoPackage (*.gpkg);;ESRI Shapefile (*.shp);;GeoParquet (*.parquet)",
              help="File to write: .geojson (as the ARTS main file), .gpkg, .shp (ARTS short field names) or "
                   ".parquet."),
    ),
)

PREPARE = Command(
    id="prepare",
    cli=("prepare",),
    name="Prepare a training dataset (prepare)",
    group="Training data",
    summary=("Turn imagery and labels into a training dataset: chips, COCO JSON per split and a manifest. Give "
             "scenes (layers) with vector labels (layers), which are cut into chips; or a folder of per-sample "
             "GeoTIFFs with a mask band (band preset 'paper'), of images with a masks folder, or of COCO files. "
             "Train on it with rts pretrain in a terminal."),
    params=(
        Param("INPUTS", "rasters", "Scenes or images (layers)", optional=True,
              help="Images (GeoTIFF, JPEG, PNG, JP2 ...) or folders of them (subfolders = sites); a folder holding "
                   "COCO JSON is read as a COCO dataset."),
        Param("INPUT_FOLDER", "folder", "Or a folder of them (subfolders = sites)", optional=True,
              help="Images (GeoTIFF, JPEG, PNG, JP2 ...) or folders of them (subfolders = sites); a folder holding "
                   "COCO JSON is read as a COCO dataset."),
        Param("LABELS", "vectors", "Vector labels", flag="--labels", optional=True,
              help="Vector labels (GeoPackage, shapefile, GeoJSON) for large scenes; repeat it for one file per "
                   "site (any CRS each)."),
        Param("MASKS", "folder", "Folder of mask images", flag="--masks", optional=True, advanced=True,
              help="Folder of mask images (any format the images may have) matched to images by name: binary "
                   "(0/1, 0/255) or instance ids (0 = background, 1..N = one slump each)."),
        Param("BANDS", "string", "Band map or preset", flag="--bands", optional=True,
              help="Band map or preset: planetscope4, sentinel2-10, paper, blue=1,green=2,red=3,nir=4 ... "
                   "(default: the rasters' band names)."),
        Param("MODE", "enum", "Kind of input", flag="--mode", default=0,
              choices=(("auto", "auto"), ("paper", "paper"), ("masks", "masks"), ("vectors", "vectors"),
                       ("coco", "coco")),
              help="auto, paper (mask band), masks, vectors or coco."),
        Param("CHIP_SIZE", "int", "Chip size (pixels)", flag="--chip-size", optional=True, minimum=1,
              help="Chip side in pixels. Scenes with vector labels: default 256. Per-sample and COCO images larger "
                   "than this are cut too, their annotations clipped (default: kept whole; smaller ones are padded "
                   "to the model's tile when trained)."),
        Param("OVERLAP", "number", "Chip overlap (fraction)", flag="--overlap", default=0.25, minimum=0.0,
              maximum=0.95, help="Chip overlap as a fraction of the chip side."),
        Param("SPLIT", "string", "Split fractions (train,val,test)", flag="--split", default="0.7,0.15,0.15",
              help="train,val,test fractions, applied within each site."),
        Param("SPLIT_BLOCK", "int", "Split block (pixels)", flag="--split-block", default=512, minimum=1,
              advanced=True, help="Scenes: chips within blocks of this many pixels share a split."),
        Param("SEED", "int", "Seed", flag="--seed", default=0, minimum=0, advanced=True,
              help="Seed of the split."),
        Param("MIN_PIXELS", "int", "Minimum instance size (pixels)", flag="--min-pixels", optional=True, minimum=0,
              advanced=True,
              help="Drop instances smaller than this many pixels (counted); default 16. (`rts predict --min-area` "
                   "is in m2.)"),
        Param("SITE", "string", "Site name", flag="--site", optional=True, advanced=True,
              help="Site name for all inputs (default: first subfolder name)."),
        Param("DEM", "raster", "DEM (terrain: slope, relief, hillshade)", flag="--dem", optional=True,
              help="A DEM (GeoTIFF, VRT mosaic of ArcticDEM tiles, or a folder of tiles; any CRS and resolution): "
                   "slope (degrees), relief (m) and hillshade become chip bands and the modality terrain."),
        Param("DEM_RADIUS", "number", "Relief radius (m)", flag="--dem-radius", default=100.0, minimum=0.0,
              advanced=True,
              help="With --dem: the radius of the relief (elevation minus the mean elevation within it), metres."),
        Param("DROP_EMPTY", "bool", "Drop chips without slumps", flag="--drop-empty", default=False, advanced=True,
              help="Drop chips without slumps (kept as negatives by default)."),
        Param("OUTPUT", "folder_out", "Dataset folder", flag="--out", help="Dataset directory to create."),
    ),
)

#: every algorithm of the provider, in toolbox order
COMMANDS = (PREDICT, MERGE, TRACK, EXPORT_ARTS, PREPARE)
