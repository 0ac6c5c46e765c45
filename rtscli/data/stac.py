"""STAC items as scenes: ``rts predict item.json``, a folder or ``.txt`` list of items, a static catalog or an item
collection (``rts ssl`` too).

A STAC item (SpatioTemporal Asset Catalog, https://stacspec.org, read with ``pystac``) describes one acquisition: its
id, its ``datetime`` and its assets, one file per band (Sentinel-2 and Landsat in the COG layouts of Element84's
Earth Search and Microsoft's Planetary Computer) or several bands in one file (PlanetScope's ``ortho_analytic_4b_sr``).
A scene is made of the item's assets:

* **bands** by their names: an asset band whose ``eo:bands`` ``common_name`` (STAC 1.0) or ``bands``
  ``eo:common_name`` (STAC 1.1) is the channel (``red``, ``green``, ``blue``, ``nir``, ...; ``nir08`` stands for
  ``nir`` when no band is ``nir``, as in Landsat items), else a one-band asset whose key is the channel's name.
  Visual products (roles ``visual``, ``overview``, ``thumbnail``; keys such as ``visual``, ``tci``) are never taken
  for bands: they are 8-bit renderings, not reflectance. Among several candidates the asset with more of the wanted
  channels wins (one 4-band file over four files), then the finer pixels, then GeoTIFF over JPEG 2000 (Earth Search
  gives both), then the item's order.
* **values**: ``raster:bands`` ``scale``/``offset`` (STAC 1.1: ``raster:scale``/``raster:offset``) convert stored
  values to physical ones, as a raster's own GDAL scale/offset would; ``nodata`` is the band's nodata when the file
  tags none.
* **grid**: the finest asset's; assets at other resolutions (Sentinel-2's 20 m bands beside its 10 m ones) are read
  onto it by window, bilinear (as ``--resample`` reads separate rasters), never whole and with no mosaic written.
* **quality mask** (``--quality auto``): the asset keyed ``scl``, ``udm2``/``ortho_udm2`` or ``qa_pixel`` (any case),
  else one whose file is named as its provider names masks (:func:`rtscli.data.quality.product_by_name`); read onto
  the scene's grid by :mod:`rtscli.data.quality`.
* **name and date**: the scene is named by the item's id (the ``scene`` field of the map, the manifest's
  ``stac_item``), and its date is the item's ``datetime`` (else ``start_datetime``), written as the map's ``acquired``
  field, which ``rts track`` and ``rts merge`` read.

Asset hrefs may be local files or URLs: ``http(s)://`` is read through GDAL's ``/vsicurl/``, ``s3://`` through
``/vsis3/``, ``gs://`` through ``/vsigs/`` (credentials as GDAL takes them). A local href is data from elsewhere: it
must lie inside the folder the user named (the item's folder, the catalog's, or the folder given;
:func:`rtscli.io.paths.inside`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlparse

from rtscli.data.values import Conversion
from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: roles and keys of assets that are renderings or metadata, never bands to map
_NOT_BANDS_ROLES = frozenset({"visual", "overview", "thumbnail", "metadata", "snow-ice", "water-mask", "cloud",
                              "cloud-shadow", "data-mask", "saturation"})
_NOT_BANDS_KEYS = frozenset({"visual", "tci", "rendered_preview", "preview", "thumbnail", "overview"})
#: quality-mask assets by key (any case) and the product each holds (:data:`rtscli.data.quality.PRODUCTS`)
MASK_KEYS = {"scl": "scl", "udm2": "udm2", "ortho_udm2": "udm2", "qa_pixel": "qa_pixel"}
#: common names taken for a channel when no band has its own (Landsat's near infrared is ``nir08``, 0.85-0.88 um,
#: where Sentinel-2 has both ``nir`` (B08) and ``nir08`` (B8A))
ALIASES = {"nir": ("nir08",)}
#: media types of rasters GDAL reads (an asset without a type is judged by its file name)
_RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2", "application/x-hdf", "application/x-vrt")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
#: the STAC object types rts reads
_TYPES = {"Feature": "item", "FeatureCollection": "item collection", "Catalog": "catalog", "Collection": "collection"}

#: what finding the items learned, by the item's path (resolved): the item when it has no file of its own (an item
#: of an item collection stands as ``<collection folder>/<item id>.json``), and the folder its local assets must lie in
_FOUND: dict[Path, tuple[Any, Path]] = {}


@dataclass(frozen=True)
class ItemBand:
    """One channel of a scene as an item's asset gives it."""

    channel: str  # rts's name (``red``, ``nir``)
    asset: str  # the asset's key
    index: int  # 1-based band in the asset's file
    scale: float | None = None  # raster:bands scale (physical = stored * scale + offset)
    offset: float | None = None
    nodata: float | None = None


@dataclass
class AssetSource:
    """One asset file of a scene and the channels it gives (1-based bands), as :class:`rtscli.data.scenes.Source`
    takes them."""

    path: Path  # local, or a GDAL /vsi path
    bands: dict[str, int]
    nodata: float | None = None  # raster:bands nodata (the file's own, when it tags one, wins)
    declared: Conversion | None = None  # raster:bands scale/offset


@dataclass
class ItemScene:
    """What a STAC item gives a scene: its sources (finest grid first), its mask and what names and dates it."""

    ref: Path  # the item's file (or its stand-in in an item collection)
    item_id: str
    date: str | None  # ISO 8601 (the item's datetime, else start_datetime), or None
    sources: list[AssetSource]
    missing: list[str]  # wanted channels no asset has
    assets: list[str]  # every asset as ``key (common names)``, for messages
    mask: tuple[Path, str, str] | None = None  # (file, product, asset key)
    bands: list[ItemBand] = field(default_factory=list)


def is_stac_json(path: Path) -> bool:
    """Whether ``path`` is a JSON file of a STAC item, item collection, catalog or collection (by its ``type``)."""
    return _stac_type(path) is not None


def _stac_type(path: Path) -> str | None:
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        return None
    if data["type"] == "FeatureCollection":  # a GeoJSON FeatureCollection is STAC only when its features are items
        feats = data.get("features")
        if not isinstance(feats, list) or not feats or not all(isinstance(f, dict) and "stac_version" in f
                                                                for f in feats):
            return None
        return _TYPES["FeatureCollection"]
    return _TYPES[data["type"]] if "stac_version" in data else None


def stac_refs(entry: str | Path) -> list[tuple[Path, Path]] | None:
    """The STAC items an input names, as ``(the item's file, the folder its local assets must lie in)``; None when the
    input is no STAC (rasters: :func:`rtscli.data.scenes.find_rasters`).

    Args:
        entry: an item, item collection, catalog or collection (``.json``); a folder holding item files (searched
            recursively, hidden folders left out); a ``.txt`` list whose lines are item files.

    Returns:
        ``(item file, asset root)`` pairs in order (a folder's sorted); items of an item collection stand as
        ``<its folder>/<item id>.json``.

    Raises:
        RtsError: a ``.json`` that is not STAC, a catalog without items, a ``.txt`` list mixing items and rasters or
            naming a missing item, a folder with items whose ids repeat.
    """
    p = Path(entry)
    if p.is_dir():
        found = sorted(f for f in p.rglob("*.json") if not any(part.startswith(".") for part in f.relative_to(p).parts))
        kinds = {f: _stac_type(f) for f in found}  # each file read once
        items = [f for f in found if kinds[f] == "item"]
        if not items:
            return None
        others = [f for f in found if kinds[f] in ("catalog", "collection")]
        log.info("%d STAC item(s) found in %s%s: their assets are the scenes' rasters", len(items), p,
                 f" (beside {len(others)} catalog file(s))" if others else "")
        return _found([(f, p) for f in items])
    if p.suffix.lower() == ".txt" and p.is_file():
        lines = [s.strip() for s in p.read_text().splitlines() if s.strip() and not s.strip().startswith("#")]
        json_lines = [s for s in lines if s.lower().endswith(".json")]
        if not json_lines:
            return None
        if len(json_lines) != len(lines):
            raise RtsError("the list mixes STAC items (.json) and rasters", path=p,
                           fix="list either STAC items or rasters, one kind per list")
        out: list[tuple[Path, Path]] = []
        for line in json_lines:
            f = Path(line) if Path(line).is_absolute() else p.parent / line
            if not f.is_file():
                raise RtsError(f"{line!r}, listed in this file, is not found", path=p, fix="check the list")
            out.extend(_refs_of_file(f))
        return _found(out)
    if p.suffix.lower() == ".json" and p.is_file():
        return _found(_refs_of_file(p))
    return None


def _found(refs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Remember each item's asset root (and keep an item collection's items)."""
    for ref, root in refs:
        held = _FOUND.get(ref.resolve())
        _FOUND[ref.resolve()] = (held[0] if held else None, root)
    return refs


def _refs_of_file(f: Path) -> list[tuple[Path, Path]]:
    """The items one STAC JSON file holds or links to."""
    import pystac

    kind = _stac_type(f)
    if kind is None:
        raise RtsError("not a STAC item, item collection, catalog or collection (no STAC \"type\" and "
                       "\"stac_version\")", path=f, fix="pass STAC JSON, or the rasters themselves")
    if kind == "item":
        return [(f, f.parent)]
    root = f.parent
    if kind == "item collection":
        ic = _read(f, lambda: pystac.ItemCollection.from_file(str(f)))
        out = []
        for item in ic.items:
            stand_in = (root / f"{item.id}.json").resolve()
            _FOUND[stand_in] = (item, root)
            out.append((stand_in, root))
        return out
    cat = _read(f, lambda: pystac.read_file(str(f)))
    out = []
    for item in cat.get_items(recursive=True):
        href = item.get_self_href()
        if href is None or urlparse(href).scheme not in ("", "file"):
            raise RtsError(f"item {item.id} of the catalog is not a local file ({href})", path=f,
                           fix="download the catalog with its items (e.g. stac-asset or pystac's copy), then pass it")
        item_file = Path(urlparse(href).path if href.startswith("file:") else href)
        _inside(root, item_file, f"item {item.id}", f)
        out.append((item_file, root))
    if not out:
        raise RtsError(f"the {kind} links to no item", path=f, fix="pass a catalog with items, or the items")
    return out


def _read(f: Path, reader: Any) -> Any:
    """``reader()`` with pystac's and JSON's errors as one line naming ``f``."""
    try:
        return reader()
    except Exception as exc:  # pystac raises its own errors, KeyError and ValueError alike for a damaged file
        raise RtsError(f"cannot read this STAC file ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                       path=f, fix="check that it is valid STAC JSON (e.g. `stac-validator`)") from None


def _inside(root: Path, target: Path, what: str, where: Path) -> Path:
    from rtscli.io.paths import inside

    return inside(root, target, what, path=where,
                  fix=f"keep the item's files inside {root} (or pass the folder that holds them)")


def load_item(ref: Path) -> Any:
    """The ``pystac.Item`` an item file (or the stand-in of an item of an item collection) holds.

    Raises:
        RtsError: the file is not a readable STAC item.
    """
    import pystac

    held = _FOUND.get(Path(ref).resolve())
    if held is not None and held[0] is not None:
        return held[0]
    item = _read(ref, lambda: pystac.Item.from_file(str(ref)))
    return item


def gdal_path(href: str, root: Path, item_id: str, where: Path) -> Path:
    """The path GDAL opens for an asset's href: a local file (inside ``root``) or a ``/vsi`` path for a URL.

    Args:
        href: the asset's href, absolute (pystac makes relative hrefs absolute against the item's file).
        root: the folder a local file must lie in.
        item_id: the item's id, for messages.
        where: the item's file, for messages.

    Returns:
        The local path, or ``/vsicurl?url=...`` (its URL quoted whole, so that no ``/`` of it is folded by
        ``pathlib``), ``/vsis3/BUCKET/KEY``, ``/vsigs/BUCKET/KEY``, ``/vsiaz/CONTAINER/BLOB``.

    Raises:
        RtsError: a local file outside ``root``; a URL scheme GDAL does not read.
    """
    u = urlparse(href)
    if u.scheme in ("http", "https"):
        return Path("/vsicurl?url=" + quote(href, safe=""))
    vsi = {"s3": "vsis3", "gs": "vsigs", "az": "vsiaz"}.get(u.scheme)
    if vsi:
        return Path(f"/{vsi}/{u.netloc}{u.path}")
    if u.scheme not in ("", "file"):
        raise RtsError(f"item {item_id}: asset href {href!r} has a scheme GDAL does not read", path=where,
                       fix="use local files or http(s)://, s3://, gs:// URLs")
    local = Path(u.path) if u.scheme == "file" else Path(href)
    return _inside(root, local, f"item {item_id}: asset {href!r}", where)


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def asset_bands(asset: dict[str, Any]) -> list[dict[str, Any]]:
    """The bands of an asset as ``{name, common_name, scale, offset, nodata}`` dicts (band 1 first), from STAC 1.0's
    ``eo:bands`` and ``raster:bands`` or STAC 1.1's ``bands`` (with ``eo:common_name``, ``raster:scale``...);
    asset-level fields (a one-band asset's ``raster:scale``, ``nodata``) fill what the bands leave out. Empty when
    none is said."""
    eo = asset.get("eo:bands") or []
    raster = asset.get("raster:bands") or []
    v11 = asset.get("bands") or []
    n = max(len(eo), len(raster), len(v11))
    out = []
    for i in range(n):
        e = eo[i] if i < len(eo) and isinstance(eo[i], dict) else {}
        r = raster[i] if i < len(raster) and isinstance(raster[i], dict) else {}
        b = v11[i] if i < len(v11) and isinstance(v11[i], dict) else {}
        out.append({
            "name": e.get("name") or b.get("name"),
            "common_name": e.get("common_name") or b.get("eo:common_name") or b.get("common_name"),
            "scale": _float(r.get("scale", b.get("raster:scale", b.get("scale")))),
            "offset": _float(r.get("offset", b.get("raster:offset", b.get("offset")))),
            "nodata": _float(r.get("nodata", b.get("nodata"))),
        })
    if n == 1 or (n == 0 and asset.get("raster:scale") is not None):
        top = out[0] if out else {"name": None, "common_name": asset.get("eo:common_name")}
        for k, key in (("scale", "raster:scale"), ("offset", "raster:offset"), ("nodata", "nodata")):
            if top.get(k) is None:
                top[k] = _float(asset.get(key))
        out = [top]
    return out


def _is_raster(key: str, asset: dict[str, Any]) -> bool:
    media = str(asset.get("type") or "").lower()
    if media:
        return any(media.startswith(t) for t in _RASTER_TYPES)
    return Path(urlparse(str(asset.get("href", ""))).path).suffix.lower() in _RASTER_SUFFIXES


def _is_band_asset(key: str, asset: dict[str, Any]) -> bool:
    roles = {str(r).lower() for r in asset.get("roles") or []}
    return _is_raster(key, asset) and key.lower() not in _NOT_BANDS_KEYS and key.lower() not in MASK_KEYS \
        and not (roles & _NOT_BANDS_ROLES and "data" not in roles) and "visual" not in roles


def _gsd(asset: dict[str, Any], item_gsd: Any) -> float:
    """An asset's pixel size as the item says it (raster:bands spatial_resolution, gsd), for ordering candidates."""
    for b in asset.get("raster:bands") or asset.get("bands") or []:
        if isinstance(b, dict):
            v = _float(b.get("spatial_resolution", b.get("raster:spatial_resolution")))
            if v:
                return v
    v = _float(asset.get("gsd", asset.get("raster:spatial_resolution")))
    return v or _float(item_gsd) or 0.0


def choose_bands(item: Any, channels: Iterable[str]) -> tuple[list[ItemBand], list[str]]:
    """Which asset band gives each wanted channel (see the module docstring for the rules).

    Args:
        item: a ``pystac.Item``.
        channels: rts channel names (``red``, ``green``, ``blue``, ``nir``, ...).

    Returns:
        ``(the bands found, the channels no asset has)``.
    """
    assets = {k: a.to_dict() for k, a in item.assets.items()}
    order = {k: i for i, k in enumerate(assets)}
    cands: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for key, a in assets.items():
        if not _is_band_asset(key, a):
            continue
        bands = asset_bands(a)
        for i, b in enumerate(bands):
            name = str(b.get("common_name") or "").lower()
            if name:
                cands.setdefault(name, []).append((key, i + 1, b))
        if len(bands) <= 1 and not (bands and bands[0].get("common_name")):
            b = bands[0] if bands else {}
            cands.setdefault(key.lower(), []).append((key, 1, b))
    wanted = [c for c in dict.fromkeys(channels)]
    gives = {key: {c for c in wanted for k2, _, _ in cands.get(c, []) if k2 == key} for key in assets}
    found, missing = [], []
    for c in wanted:
        options = cands.get(c, []) or [o for alias in ALIASES.get(c, ()) for o in cands.get(alias, [])]
        if not options:
            missing.append(c)
            continue
        key, index, b = min(options, key=lambda o: (-len(gives[o[0]]), _gsd(assets[o[0]], item.properties.get("gsd")),
                                                    str(assets[o[0]].get("type") or "").startswith("image/jp2"),
                                                    order[o[0]]))
        found.append(ItemBand(c, key, index, b.get("scale"), b.get("offset"), b.get("nodata")))
    return found, missing


def mask_asset(item: Any) -> tuple[str, str] | None:
    """The item's quality-mask asset and its product: ``(asset key, product)``, or None."""
    from rtscli.data.quality import product_by_name

    for key in item.assets:
        if key.lower() in MASK_KEYS:
            return key, MASK_KEYS[key.lower()]
    for key, a in item.assets.items():
        prod = product_by_name(Path(urlparse(a.href).path))
        if prod is not None and _is_raster(key, a.to_dict()):
            return key, prod
    return None


def item_date(item: Any) -> str | None:
    """The item's acquisition date and time, ISO 8601 (``datetime``, else ``start_datetime``), or None."""
    dt = item.datetime or item.common_metadata.start_datetime
    return dt.isoformat() if dt is not None else None


def asset_root(ref: Path) -> Path:
    """The folder an item's local assets must lie in: the folder the user named when the item was found in it (a
    folder, a catalog's folder), else the item file's own folder."""
    held = _FOUND.get(Path(ref).resolve())
    return held[1] if held is not None else Path(ref).parent


def item_scene(ref: Path, channels: Iterable[str], root: Path | None = None) -> ItemScene:
    """The sources of the scene a STAC item describes: one per asset file, the finest grid first.

    Args:
        ref: the item's file (or its stand-in: :func:`stac_refs`).
        channels: the channels wanted (the model's or ``--bands``' names; ``mask`` is left out).
        root: the folder the item's local assets must lie in (default: :func:`asset_root`).

    Returns:
        The :class:`ItemScene`: sources with their bands, declared conversions (``raster:bands``) and nodata, the
        channels no asset has, the mask asset (when the item has one).

    Raises:
        RtsError: an unreadable item, an asset outside ``root`` or with a scheme GDAL does not read.
    """
    from rtscli.io.raster import inspect

    item = load_item(ref)
    root = root if root is not None else asset_root(ref)
    if item.get_self_href():
        item.make_asset_hrefs_absolute()
    wanted = [c for c in channels if c != "mask"]
    bands, missing = choose_bands(item, wanted)
    by_asset: dict[str, list[ItemBand]] = {}
    for b in bands:
        by_asset.setdefault(b.asset, []).append(b)
    sources = []
    for key, bs in by_asset.items():
        path = gdal_path(item.assets[key].get_absolute_href() or item.assets[key].href, root, item.id, ref)
        scale = {b.channel: b.scale for b in bs if b.scale is not None}
        offset = {b.channel: b.offset for b in bs if b.offset is not None}
        declared = Conversion(scale, offset, "stac-raster-bands") if scale or offset else None
        nd = next((b.nodata for b in bs if b.nodata is not None), None)
        sources.append(AssetSource(path, {b.channel: b.index for b in bs}, nodata=nd, declared=declared))
    if len(sources) > 1:  # the finest grid first: the scene takes its grid, the others are read onto it
        def pixel(s: AssetSource) -> float:
            t = inspect(s.path).transform
            return abs(t.a * t.e - t.b * t.d)

        sources.sort(key=pixel)
    mask = None
    found = mask_asset(item)
    if found is not None:
        key, product = found
        mask = (gdal_path(item.assets[key].get_absolute_href() or item.assets[key].href, root, item.id, ref),
                product, key)
    assets = [f"{k} ({', '.join(str(b.get('common_name')) for b in asset_bands(a.to_dict()) if b.get('common_name'))})"
              if any(b.get("common_name") for b in asset_bands(a.to_dict())) else k for k, a in item.assets.items()]
    return ItemScene(ref=ref, item_id=item.id, date=item_date(item), sources=sources, missing=missing, assets=assets,
                     mask=mask, bands=bands)
