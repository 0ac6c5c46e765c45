"""One scene mapped end to end: predict its slumps, then write the map products a user asked for.

The polygons (any vector format; a GeoPackage also gets a ``<layer>_footprint`` layer of where the map
looked, for ``rts track``), an instance-id GeoTIFF and a quicklook PNG. Used for one scene and, per
scene, by many-scene runs (:mod:`rtscli.engine.batch`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.data.scenes import Scene
from rtscli.engine.predict import PredictOptions, dropped_note, predict_scene
from rtscli.errors import RtsError
from rtscli.geometry.footprint import CRSLike
from rtscli.modeling.bundle import Bundle
from rtscli.render.quicklook import QuicklookRequest, stretch_text

log = logging.getLogger("rtscli")


class SceneDataError(RtsError):
    """A scene failed for a reason in its own data: its pixels cannot be read (a truncated or damaged file).

    :func:`run_scene` raises it instead of the reader's :class:`RtsError` (same message), so that a many-scene run
    can record the scene as failed and go on, while a fault of the run itself (an output that cannot be written)
    still stops it.
    """


def scene_key(path: Path) -> str:
    """How a scene is named in reports and manifests: the absolute path of its first raster."""
    return str(Path(path).resolve())


@dataclass
class SceneReport:
    """What mapping one scene made: the record a many-scene manifest keeps per scene (:meth:`as_record`)."""

    scene: str  # :func:`scene_key` of the scene
    output: str  # the polygons' file
    polygons: int  # slumps written
    seconds: float  # wall time, reading to writing
    timing: dict[str, float]  # seconds per stage and tile counts (:class:`rtscli.engine.predict.Timing`)
    dropped: str | None  # what --min-score and --min-area dropped, in words (None: nothing)
    stretch: str | None = None  # the quicklook's colour stretch as a --stretch value (None: no quicklook)

    def as_record(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (the manifest's per-scene record)."""
        return asdict(self)


def run_scene(model: Any, bundle: Bundle, scene: Scene, out: Path, opts: PredictOptions, *, overwrite: bool,
              raster: Path | None = None, quicklook: QuicklookRequest | None = None, label: str = "",
              layer: str = "rts") -> SceneReport:
    """Predict one scene and write its outputs, with a progress bar (tiles/s, km²/h, time left).

    Args:
        model: the detector (:func:`rtscli.modeling.bundle.load_model`).
        bundle: its bundle (modalities, normalization, tile size).
        scene: the scene, opened and checked (:func:`rtscli.data.scenes.open_scene`).
        out: the polygons' file (.gpkg, .shp, .geojson, .parquet); a .gpkg also gets ``<layer>_footprint``.
        opts: prediction options.
        overwrite: replace existing outputs (a .gpkg: only ``layer`` and its footprint layer).
        raster: also write an instance-id GeoTIFF here.
        quicklook: also write a PNG of the slumps over the scene (with reference outlines, in a colour stretch).
        label: text before the scene's name in the progress bar (``[3/10] ``).
        layer: the GeoPackage layer.

    Returns:
        The scene's :class:`SceneReport`.

    Raises:
        SceneDataError: the scene's pixels cannot be read (a truncated or damaged file; the reader's message).
        RtsError: an output cannot be written.
    """
    from rtscli.geometry.footprint import window_footprint
    from rtscli.geometry.measure import geodesic_area
    from rtscli.io.schema import SHP_NAMES, footprint_layer
    from rtscli.io.vector import write_layers, write_vector
    from rtscli.progress import tile_progress
    from rtscli.render.quicklook import write_quicklook

    stretch = None

    area_km2 = geodesic_area(window_footprint(scene.transform, 0, 0, scene.width, scene.height), scene.crs) / 1e6
    t0 = time.perf_counter()
    try:  # everything that reads the scene's pixels: a failure here is the scene's own
        with tile_progress() as bar:
            task = bar.add_task(f"{label}{scene.name}", total=None, area_km2=area_km2, unit="tiles")
            gdf, timing = predict_scene(model, bundle, scene, opts,
                                        progress=lambda k, n: bar.update(task, advance=k, total=n))
        t = time.perf_counter()
        # a GeoPackage also gets where the map looked, for rts track (a slump outside is not gone)
        footprint = footprint_frame(scene, gdf.crs) if out.suffix.lower() == ".gpkg" else None
    except SceneDataError:
        raise
    except RtsError as exc:
        raise SceneDataError(str(exc)) from exc
    if out.suffix.lower() == ".shp":  # Shapefile field names are at most 10 characters
        gdf = gdf.rename(columns=SHP_NAMES)
        log.info("Shapefile: fields renamed %s", ", ".join(f"{k}->{v}" for k, v in SHP_NAMES.items()))
    if footprint is not None:
        write_layers({layer: gdf, footprint_layer(layer): footprint}, out, overwrite=overwrite)
        from rtscli.io.styles import write_layer_style

        write_layer_style(out, layer, "slumps")  # opens styled in QGIS, plugin or not (its layer_styles table)
    else:
        write_vector(gdf, out, layer=layer, overwrite=overwrite)
    if raster is not None:
        write_instance_raster(gdf, scene, raster, overwrite=overwrite)
    if quicklook is not None:
        stretch = write_quicklook(gdf, scene, quicklook.path, overwrite=overwrite, truth=quicklook.truth,
                                  truth_layer=quicklook.truth_layer, stretch=quicklook.stretch)
    timing.write += time.perf_counter() - t
    return SceneReport(scene=scene_key(scene.sources[0].path), output=str(out), polygons=len(gdf),
                       seconds=round(time.perf_counter() - t0, 2), timing=timing.as_dict(),
                       dropped=dropped_note(timing, opts), stretch=stretch_text(stretch) if stretch else None)


def footprint_frame(scene: Scene, crs: CRSLike | None) -> Any:
    """Where the map looked, as a one-row GeoDataFrame in ``crs`` (None: the scene's): the scene's valid pixels
    (not nodata, and not cloud, shadow, haze or snow in its quality mask: ``rts track`` does not call a slump under a
    cloud gone) within its true footprint (all four corners: rotated grids too;
    :func:`rtscli.data.scenes.valid_footprint`). Its edges are densified before reprojection, so that they follow
    the target's curves."""
    import geopandas as gpd

    from rtscli.data.scenes import valid_footprint
    from rtscli.geometry.footprint import to_crs

    fp = valid_footprint(scene)
    geom = to_crs([fp], scene.crs, crs)[0] if crs is not None and not scene.crs == crs else fp
    fields = {"scene": [scene.name], **({"acquired": [scene.date]} if scene.date else {}),
              "width_px": [scene.width], "height_px": [scene.height]}
    return gpd.GeoDataFrame(fields, geometry=[geom], crs=crs or scene.crs)


def write_instance_raster(gdf: Any, scene: Scene, path: Path, *, overwrite: bool, block: int = 1024) -> None:
    """An instance-id GeoTIFF (uint32, 0 = background) on the scene's grid, written by ``block`` x ``block``
    pixel windows (bounded memory), each filled from the polygons that reach its true footprint (any affine grid).

    Args:
        gdf: the slumps (column ``id``), in any CRS (reprojected to the scene's).
        scene: the scene whose grid the raster takes.
        path: the GeoTIFF to write (atomically).
        overwrite: replace an existing file.
        block: window side, pixels.

    Raises:
        RtsError: ``path`` exists and ``overwrite`` is false.
    """
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from shapely import STRtree

    from rtscli.geometry.footprint import window_footprint
    from rtscli.geometry.affine import window_transform
    from rtscli.io.atomic import atomic_file

    geoms = list(gdf.to_crs(scene.crs).geometry) if len(gdf) else []
    ids = list(gdf["id"]) if len(gdf) else []
    tree = STRtree(geoms) if geoms else None
    profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint32", crs=scene.crs,
                   transform=scene.transform, nodata=0, compress="deflate", tiled=True, blockxsize=256,
                   blockysize=256, BIGTIFF="IF_SAFER")
    with atomic_file(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, scene.height, block):
            for c in range(0, scene.width, block):
                h, w = min(block, scene.height - r), min(block, scene.width - c)
                t = window_transform(scene.transform, c, r)
                arr = np.zeros((h, w), np.uint32)
                if tree is not None:  # the block's true footprint (all four corners: rotated grids too)
                    hits = tree.query(window_footprint(scene.transform, c, r, w, h), predicate="intersects")
                    if len(hits):
                        arr = rasterize(((geoms[i], int(ids[i])) for i in hits), out_shape=(h, w), transform=t,
                                        fill=0, dtype="uint32")
                dst.write(arr, 1, window=Window(c, r, w, h))
