"""STAC items of synthetic scenes, laid out as Earth Search's Sentinel-2 L2A items are (``rts synth --stac``).

Each scene becomes a folder ``stac/<scene>/`` with one Cloud-Optimized-GeoTIFF-like file per band and an item
``<scene>.json`` describing them, and ``stac/catalog.json`` links every item (a self-contained static catalog, relative
hrefs, written with ``pystac``). As Earth Search's ``sentinel-2-l2a`` collection (processing baseline 04.00 and later)
writes its assets:

* asset keys ``blue``, ``green``, ``red``, ``nir`` for files ``B02.tif``, ``B03.tif``, ``B04.tif``, ``B08.tif``, each
  one band, uint16, nodata 0, ``eo:bands`` with the band's name and common name, ``raster:bands`` with
  ``scale`` 0.0001 and ``offset`` -0.1: stored values are reflectance x 10000 + 1000 (ESA's ``BOA_ADD_OFFSET`` of
  -1000 since baseline 04.00), so the offset in the item is needed to read them right;
* ``scl`` (``SCL.tif``, uint8, nodata 0, 20 m beside the 10 m bands) when the scene has clouds or snow: the
  scene's ``<scene>_SCL_20m.tif``;
* unlike Sentinel-2, ``nir`` is written at **twice the pixel size** of the other bands (the mean of each 2 x 2
  block), so that every item has assets at two resolutions, as Sentinel-2's 10 m and 20 m bands (B8A, SWIR) are.

The values are the scene's own, so an item maps to the same slumps as the scene's bands stacked by hand (with the nir
band resampled onto the finer grid). Sources: Element84 Earth Search ``sentinel-2-l2a`` items
(https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a) and ESA's Sentinel-2 L2A product
specification (processing baseline 04.00: ``BOA_ADD_OFFSET``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

#: (asset key, file, Sentinel-2 band name, common name, band of the synth scene) in Earth Search's order
BANDS = (("blue", "B02.tif", "B02", "blue", 1), ("green", "B03.tif", "B03", "green", 2),
         ("red", "B04.tif", "B04", "red", 3), ("nir", "B08.tif", "B08", "nir", 4))
#: the item's stored values: reflectance x 10000 + 1000; physical = stored * SCALE + OFFSET
SCALE, OFFSET, ADD = 1e-4, -0.1, 1000
#: the band written at twice the pixel size
COARSE = "nir"


def write_item(scene: Path, folder: Path, when: datetime) -> Path:
    """Write one scene as a STAC item with its band files (see the module docstring).

    Args:
        scene: a synthetic scene GeoTIFF (4 bands blue, green, red, nir; reflectance x 10000, nodata 0); its
            ``<stem>_SCL_20m.tif`` beside it, when there, becomes the ``scl`` asset.
        folder: the item's folder (created); the item is ``<folder>/<scene stem>.json``.
        when: the acquisition's date and time (UTC).

    Returns:
        The item's file.
    """
    import pystac
    import rasterio
    from rasterio.enums import Resampling
    from shapely.geometry import box, mapping

    from rtscli.geometry.footprint import to_crs

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", dtype="uint16", count=1, crs=src.crs, nodata=0, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", predictor=2)
        bounds, crs, epsg = src.bounds, src.crs, src.crs.to_epsg()
        assets: dict[str, Any] = {}
        for key, fname, name, common, band in BANDS:
            coarse = key == COARSE
            h, w = (-(-src.height // 2), -(-src.width // 2)) if coarse else (src.height, src.width)
            data = src.read(band, out_shape=(h, w), resampling=Resampling.average, masked=True)
            stored = np.where(np.ma.getmaskarray(data), 0, np.clip(np.rint(data.filled(0) + ADD), 1, 65535))
            t = src.transform @ src.transform.scale(src.width / w, src.height / h)
            with rasterio.open(folder / fname, "w", width=w, height=h, transform=t, **profile) as dst:
                dst.write(stored.astype(np.uint16), 1)
                dst.set_band_description(1, name)
            assets[key] = pystac.Asset(
                href=f"./{fname}", media_type=pystac.MediaType.COG, roles=["data", "reflectance"],
                title=f"{common} ({name})",
                extra_fields={"eo:bands": [{"name": name, "common_name": common}],
                              "gsd": abs(t.a),
                              "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": abs(t.a),
                                                "scale": SCALE, "offset": OFFSET}]})
    scl = scene.with_name(f"{scene.stem}_SCL_20m.tif")
    if scl.exists():
        import shutil

        shutil.copyfile(scl, folder / "SCL.tif")
        assets["scl"] = pystac.Asset(href="./SCL.tif", media_type=pystac.MediaType.COG, roles=["data"],
                                     title="Scene classification map (SCL)",
                                     extra_fields={"raster:bands": [{"nodata": 0, "data_type": "uint8"}]})
    lonlat = to_crs([box(*bounds)], crs, "EPSG:4326")[0]
    item = pystac.Item(id=scene.stem, geometry=mapping(lonlat), bbox=list(lonlat.bounds),
                       datetime=when.astimezone(timezone.utc),
                       properties={"platform": "rts-synth", "constellation": "synthetic", "proj:epsg": epsg,
                                   "processing:software": {"rts synth": "--stac"}},
                       stac_extensions=["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                                        "https://stac-extensions.github.io/projection/v1.1.0/schema.json"])
    for key, asset in assets.items():
        item.add_asset(key, asset)
    path = folder / f"{scene.stem}.json"
    item.set_self_href(str(path))
    item.save_object(include_self_link=False, dest_href=str(path))
    return path


def write_catalog(root: Path, items: list[Path]) -> Path:
    """A self-contained static catalog ``<root>/catalog.json`` linking ``items`` (relative hrefs).

    Args:
        root: the catalog's folder (the items lie in its subfolders).
        items: the items' files.

    Returns:
        The catalog's file.
    """
    import pystac

    cat = pystac.Catalog(id="rts-synth", description="Synthetic scenes of rts synth as STAC items")
    for f in items:
        cat.add_item(pystac.Item.from_file(str(f)))
    cat.set_self_href(str(root / "catalog.json"))
    for item, f in zip(cat.get_items(), items, strict=True):
        item.set_self_href(str(f))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
