"""What ``rts ssl`` reads, resolved before any model exists (:class:`Pool`): unlabeled scenes (:func:`open_scenes`),
a prepared dataset's chips or a COCO set's images (:mod:`rtscli.engine.ssl_images`); :func:`input_kind` tells
them apart. Used by :mod:`rtscli.engine.ssl`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtscli.engine.ssl_images import ImageRef, dataset_images
from rtscli.errors import RtsError

if TYPE_CHECKING:
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import BandStats, Modality
    from rtscli.data.scenes import Scene

log = logging.getLogger("rtscli")


def open_scenes(inputs: list[str], band_map: BandMap, *, aux: list[str], scale: float | None,
                offset: float | None, nodata: float | None, quality: Any = None, dem: Any = None,
                dems: bool = False, terrain: Any = None) -> list[Scene]:
    """The unlabeled scenes (files, folders, globs, .txt lists, VRT mosaics; folders with site subfolders too; STAC
    items, catalogs and item collections: :func:`rtscli.data.scenes.open_item`) as :class:`Scene` objects, each
    with its ``--aux`` rasters (NAME=PATH; only with one scene, on its grid). The band map is checked against
    every scene (:func:`rtscli.data.bands.check_fits`) before any is read. ``dem`` (a
    :class:`rtscli.data.terrain.Dem`) gives every scene the terrain channels; with ``dems`` each scene is a DEM and
    gives its own (made with ``terrain``, a :class:`rtscli.data.terrain.TerrainSettings`)."""
    from rtscli.data.bands import check_fits
    from rtscli.data.scenes import Source, is_item, open_item, open_scene, scene_paths
    from rtscli.io.raster import inspect

    from rtscli.data.inputs import parse_aux

    paths = scene_paths(inputs)
    items = [p for p in paths if is_item(p)]
    extra = parse_aux(aux)
    if extra and len(paths) > 1:
        raise RtsError(f"--aux rasters go with one scene, {len(paths)} were given",
                       fix="run rts ssl on one scene with its aux rasters, or build a VRT mosaic of each")
    bands = {k: v for k, v in band_map.as_dict().items() if k != "mask"}
    if extra and items:
        raise RtsError("--aux rasters go with a scene file, and a STAC item was given", path=items[0],
                       fix="add the raster to the item as an asset, or drop --aux")
    for p in paths:
        if not is_item(p):
            info = inspect(p)
            check_fits(band_map.without(["mask"]), info.count, info.descriptions, p)
    scenes = []
    for p in paths:
        if is_item(p):  # the bands by name from the item's assets (only the band map's names count)
            scene, missing, assets = open_item(p, list(bands), nodata=nodata, scale=scale, offset=offset,
                                               quality=quality, dem=dem)
            if missing:
                raise RtsError(f"STAC item {scene.item} has no asset with {', '.join(missing)} (its assets: "
                               f"{'; '.join(assets)})", path=p,
                               fix="pass --bands naming only the bands the modality needs (e.g. red=1,green=2,blue=3)")
            scenes.append(scene)
            continue
        sources = [Source(p, bands)] + [Source(q, {n: 1}) for n, q in extra.items()]
        # --quality (a rtscli.data.quality.QualityRequest): clouds, shadow, haze, snow are nodata in every window
        own = None
        if dems:  # a DEM itself: its terrain channels, by window
            from rtscli.data.terrain import Dem

            own = Dem(p, terrain)
        scenes.append(open_scene(sources, nodata=nodata, scale=scale, offset=offset, quality=quality,
                                 dem=own if dems else dem))
    return scenes


def input_kind(inputs: list[str]) -> str:
    """What ``rts ssl``'s inputs are: ``"dataset"`` (one folder with a ``manifest.yaml``: a dataset of ``rts
    prepare``), ``"coco"`` (COCO instances JSON files: :func:`rtscli.data.coco_import.is_coco`) or ``"scenes"``
    (anything else: scene files, folders, globs, lists, STAC items).

    Raises:
        RtsError: a dataset folder given with other inputs, or COCO files mixed with scenes.
    """
    from rtscli.data.coco_import import is_coco

    paths = [Path(i) for i in inputs]
    datasets = [p for p in paths if p.is_dir() and (p / "manifest.yaml").is_file()]
    if datasets:
        if len(paths) > 1:
            raise RtsError("rts ssl reads one prepared dataset, given alone; other inputs were given with it",
                           path=datasets[0], fix="run rts ssl on the dataset alone (or on scenes only)")
        return "dataset"
    coco = [p for p in paths if is_coco(p)]
    if coco and len(coco) < len(paths):
        raise RtsError("COCO files and scenes were given together", path=coco[0],
                       fix="run rts ssl on the COCO files alone, or on the scenes alone")
    return "coco" if coco else "scenes"


@dataclass
class Pool:
    """What the windows come from, resolved before any model exists."""

    kind: str  # scenes | dataset | coco
    modality: Modality
    band_map: BandMap  # channel name -> band of the windows' raw arrays
    repeat: int | None
    largest: tuple[int, int]  # (width, height) of the largest input, pixels
    record: dict[str, Any]  # the bundle's entries about the inputs
    values: dict[str, Any] | None  # how stored values were made physical
    stats: dict[str, BandStats] | None = None  # given (a dataset's); None: sampled
    scenes: list[Scene] | None = None
    images: list[ImageRef] | None = None
    terrain: dict[str, Any] | None = None  # the terrain channels' settings (TerrainSettings.record())


def scene_pool(inputs: list[str], modality: str, band_map: BandMap | None, *, aux: list[str] | None,
                scale: float | None, offset: float | None, nodata: float | None, repeat_to: int | None,
                quality: Any, dem: Path | None, dem_radius: float) -> Pool:
    """The pool of unlabeled scenes (:func:`open_scenes`)."""
    from rtscli.data.bands import BandMap
    from rtscli.data.inputs import sha256
    from rtscli.data.modalities import resolve
    from rtscli.io.raster import inspect

    if band_map is None:
        raise RtsError("no band map for the scenes", fix="pass --bands (e.g. planetscope4 or blue=1,green=2,red=3)")
    terrain = None
    if dem is not None or modality == "terrain":  # slope, relief, hillshade: from --dem, or the scenes are DEMs
        from rtscli.data.terrain import Dem, TerrainSettings

        if not dem_radius > 0:
            raise RtsError("--dem-radius must be positive (metres)", fix="e.g. --dem-radius 100")
        terrain = TerrainSettings(radius_m=dem_radius)
    scenes = open_scenes(inputs, band_map, aux=list(aux or []), scale=scale, offset=offset, nodata=nodata,
                         quality=quality, dem=Dem(dem, terrain) if dem is not None else None,
                         dems=modality == "terrain" and dem is None, terrain=terrain)
    names = dict.fromkeys(n for s in scenes[0].sources for n in s.bands)
    if scenes[0].dem is not None:
        from rtscli.data.modalities import TERRAIN

        names.update(dict.fromkeys(TERRAIN))
    chip_bands = BandMap(tuple((n, i + 1) for i, n in enumerate(names)))
    big = max(scenes, key=lambda sc: sc.width * sc.height)
    repeat = 3 if repeat_to is None else repeat_to
    src = scenes[0].sources[0]
    return Pool(kind="scenes", modality=resolve(modality, chip_bands), band_map=chip_bands,
                 repeat=repeat if repeat > 1 else None, largest=(big.width, big.height),
                 record={"scenes": [{"path": str(s.sources[0].path.resolve()), "width": s.width, "height": s.height,
                                     "sha256": sha256(s.sources[0].path)} for s in scenes]},
                 values=src.conversion.record(str(inspect(src.path).dtype)), scenes=scenes,
                 terrain=terrain.record() if terrain is not None else None)


def dataset_pool(root: Path, modality: str, *, repeat_to: int | None, include_val: bool) -> Pool:
    """The pool of a prepared dataset's train (and val) chips, with its band map, statistics and channels."""
    chip_info, chips, counts = dataset_images(root, include_val=include_val)
    mod = chip_info.modality(modality)
    missing = [c for c in mod.channels if c not in chip_info.stats]
    if missing:
        raise RtsError(f"the dataset has no normalization statistics for {', '.join(missing)} (modality "
                       f"{mod.name})", path=root / "manifest.yaml", fix="re-run rts prepare, or choose another "
                       f"--modality (the dataset has {', '.join(chip_info.manifest.get('modalities') or [])})")
    own = chip_info.manifest.get("repeat_to", 3)
    repeat = own if repeat_to is None else repeat_to
    if repeat_to is not None and repeat_to != own:
        log.warning("--repeat-to %d differs from the dataset's %s: fine-tuning on it will repeat channels "
                    "otherwise", repeat_to, own)
    big = max(chips, key=lambda c: c.width * c.height)
    splits = list(counts)
    log.info("rts ssl on the dataset %s: %s chips of its %s split%s (%s); its test chips are never read",
             root, len(chips), " and ".join(splits), "s" if len(splits) > 1 else "",
             "--include-val adds the val chips" if "val" not in splits else "--include-val")
    record = {"data": {"kind": "dataset", "path": str(root.resolve()), "checksum": chip_info.checksum(),
                       "splits": splits, "chips": len(chips)}, "scenes": []}
    return Pool(kind="dataset", modality=mod, band_map=chip_info.band_map.without(["mask"]),
                 repeat=repeat if repeat and repeat > 1 else None, largest=(big.width, big.height), record=record,
                 values=chip_info.manifest.get("values"), stats=dict(chip_info.stats), images=chips,
                 terrain=chip_info.manifest.get("terrain"))
