"""STAC items as single rasters for ``rts prepare``: an in-memory GDAL VRT of each item's bands on its finest grid.

``rts prepare`` cuts chips from one raster per input; a STAC item (:mod:`rtscli.data.stac`) has one file per band
at several resolutions. :func:`item_vrt` describes the item as one multi-band raster (GDAL ``/vsimem/``, this
process only): the wanted channels in band order, described by their names, with the item's scale/offset and
nodata, the coarser assets resampled onto the finest grid by GDAL as it reads (bilinear). Nothing is written to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rtscli.data.stac import ItemScene, item_scene
from rtscli.errors import RtsError

#: the in-memory VRTs of items (``rts prepare``), by their GDAL path: (the item's file, its scene, the open
#: ``MemoryFile`` that holds the VRT for as long as the process runs)
_VRTS: dict[str, tuple[Path, ItemScene, Any]] = {}


def item_vrt(ref: Path, channels: Iterable[str]) -> Path:
    """A STAC item as one multi-band raster: an in-memory GDAL VRT (``/vsimem/rts_stac/...``) of the wanted channels
    on the finest asset's grid, the others resampled onto it (bilinear, by GDAL as it reads), each band described by
    its channel's name, with the item's scale/offset and nodata. ``rts prepare`` reads it as any raster, never whole.

    Args:
        ref: the item's file (or its stand-in: :func:`stac_refs`).
        channels: the channels wanted, in band order (those no asset has are left out).

    Returns:
        The VRT's GDAL path (a virtual file of this process), named ``<item id>.vrt`` in a folder that mirrors the
        item's path, so that site folders stay sites.

    Raises:
        RtsError: no asset with a wanted channel; assets in different CRSs; an unreadable asset.
    """
    from xml.sax.saxutils import escape

    from rasterio.io import MemoryFile

    from rtscli.io.raster import crs_name, inspect

    its = item_scene(ref, channels)
    if not its.sources:
        raise RtsError(f"STAC item {its.item_id} has no asset with the bands wanted ({', '.join(channels)}); its "
                       f"assets: {'; '.join(its.assets) or 'none'}", path=ref,
                       fix="pass --bands naming the item's bands (eo:bands common names or asset keys)")
    infos = [inspect(s.path) for s in its.sources]
    grid = infos[0]
    for s, info in zip(its.sources, infos, strict=True):
        if info.crs != grid.crs:
            raise RtsError(f"STAC item {its.item_id}: asset {s.path.name} is in {crs_name(info.crs)}, the others in "
                           f"{crs_name(grid.crs)}", path=ref, fix="rts predict reads such items; for rts prepare "
                           "reproject the asset onto the others' CRS first")
    dtypes = {info.dtype for info in infos}
    dtype = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
             "float32": "Float32", "float64": "Float64"}.get(dtypes.pop(), "Float32") if len(dtypes) == 1 \
        else "Float32"
    t = grid.transform
    bands = []
    order = [c for c in channels if any(c in s.bands for s in its.sources)]
    for k, channel in enumerate(order, start=1):
        s, info = next((s, i) for s, i in zip(its.sources, infos, strict=True) if channel in s.bands)
        st = info.transform
        dst = ((st.c - t.c) / t.a, (st.f - t.f) / t.e, info.width * st.a / t.a, info.height * st.e / t.e)
        nodata = info.nodata if info.nodata is not None else s.nodata
        conv = s.declared
        meta = "".join([f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else "",
                        f"<Offset>{conv.offset.get(channel, 0.0)!r}</Offset>" if conv else "",
                        f"<Scale>{conv.scale.get(channel, 1.0)!r}</Scale>" if conv else ""])
        src_nodata = f"<NODATA>{nodata!r}</NODATA>" if nodata is not None else ""
        bands.append(
            f'<VRTRasterBand dataType="{dtype}" band="{k}"><Description>{channel}</Description>{meta}'
            f'<ComplexSource resampling="bilinear"><SourceFilename relativeToVRT="0">{escape(str(s.path))}'
            f'</SourceFilename><SourceBand>{s.bands[channel]}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{info.width}" ySize="{info.height}"/>'
            f'<DstRect xOff="{dst[0]!r}" yOff="{dst[1]!r}" xSize="{dst[2]!r}" ySize="{dst[3]!r}"/>{src_nodata}'
            f'</ComplexSource></VRTRasterBand>')
    gt = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    xml = (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">'
           f'<SRS dataAxisToSRSAxisMapping="1,2">{escape(grid.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>'
           + "".join(bands) + "</VRTDataset>")
    folder = "rts_stac" + str(Path(ref).resolve().parent)
    mem = MemoryFile(xml.encode(), dirname=folder, filename=f"{its.item_id}.vrt")
    _VRTS[mem.name] = (Path(ref), its, mem)
    return Path(mem.name)


def vrt_root(root: Path) -> Path:
    """The folder under which :func:`item_vrt` puts the VRTs of items found under ``root`` (their site folders kept)."""
    return Path("/vsimem/rts_stac" + str(Path(root).resolve()))


def vrt_item(path: Path) -> tuple[Path, ItemScene] | None:
    """The item (its file and scene) an :func:`item_vrt` path stands for, or None for any other path."""
    held = _VRTS.get(str(path))
    return (held[0], held[1]) if held is not None else None
