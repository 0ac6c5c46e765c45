"""``rts export-coco``: an rts dataset as a standard COCO instance dataset that other tools open.

Layout (detectron2's ``register_coco_instances(name, {}, json, image_root)``, CVAT, Label Studio and
Roboflow import it as "COCO 1.0")::

    OUT/annotations/instances_train.json   (and _val, _test: one per split, named so that
                                            ``rts prepare OUT/`` reads the splits back)
    OUT/images/train/<chip>.tif            (``file_name`` is relative to OUT/images)

Images are the dataset's chips: ``tif`` copies them (every band, the values as prepared, the
georeference); ``png`` and ``jpg`` write 8-bit RGB from the red, green and blue bands stretched
between the dataset's normalization clip values (what a viewer or labelling tool shows; the
georeference goes into a GDAL ``.aux.xml`` beside each image). Annotations keep their
segmentation (polygons or RLE), area, bbox and ``iscrowd``; images keep rts's extra fields (``crs``,
``transform``, ``site``), which COCO readers ignore. The whole folder is written under a temporary
name and renamed when complete. An image's ``file_name`` (the split files are data: they may have been
edited) must lead to a file inside the dataset, and what is written stays inside ``OUT``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from rtscli.data.split_files import SPLITS
from rtscli.errors import RtsError, unknown_choice
from rtscli.io.paths import inside, safe_component

if TYPE_CHECKING:
    from rtscli.data.modalities import BandStats

log = logging.getLogger("rtscli")

IMAGE_FORMATS = {"tif": ("GTiff", ".tif"), "png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg")}


def export_coco(data: Path, out: Path, *, image_format: str = "tif", overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, int]]:
    """Write dataset ``data`` (made by ``rts prepare``) as COCO + images under ``out``.

    Returns ``{split: {"images": n, "annotations": n}}``. Raises :class:`RtsError` for a folder that is
    not a dataset, an existing ``out`` without ``overwrite``, an unknown ``image_format``, ``png``/``jpg``
    from a dataset without red, green and blue bands, or an image whose ``file_name`` leads outside the dataset.
    """
    from rtscli.data.dataset import DatasetInfo
    from rtscli.io.atomic import atomic_dir, check_output

    if image_format not in IMAGE_FORMATS:
        raise unknown_choice("image format", image_format, IMAGE_FORMATS)
    info = DatasetInfo.open(data)
    check_output(out, overwrite)
    if Path(out).resolve() == Path(data).resolve() or Path(data).resolve() in Path(out).resolve().parents:
        raise RtsError("the export folder is the dataset or inside it", path=out, fix="choose a folder elsewhere")
    rgb = None
    if image_format != "tif":
        missing = [b for b in ("red", "green", "blue") if b not in info.band_map]
        if missing:
            raise RtsError(f"--image-format {image_format} needs red, green and blue bands; the dataset has "
                           f"{', '.join(info.band_map.names)}", path=data, fix="use --image-format tif (every band)")
        rgb = [info.band_map[b] for b in ("red", "green", "blue")]
    docs = {}
    for s in SPLITS:
        p = Path(data) / f"{s}.json"
        docs[s] = json.loads(p.read_text()) if p.exists() else {"images": [], "annotations": []}
    driver, ext = IMAGE_FORMATS[image_format]
    places = {s: [_place(Path(data), s, im, ext) for im in doc["images"]]
              for s, doc in docs.items()}  # every path checked before anything is written
    total = sum(len(d["images"]) for d in docs.values())
    done = 0
    counts = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "annotations").mkdir()
        for s, doc in docs.items():
            images = []
            for im, (src, rel) in zip(doc["images"], places[s], strict=True):
                dst = inside(tmp / "images", rel, f"image {im['id']} of {s}.json", path=Path(data) / f"{s}.json")
                dst.parent.mkdir(parents=True, exist_ok=True)
                if rgb is None:
                    shutil.copyfile(src, dst)
                else:
                    _write_rgb(src, dst, driver, rgb, [info.stats.get(b) for b in ("red", "green", "blue")],
                               info.nodata)
                images.append({**im, "file_name": rel.as_posix()})
                done += 1
                if progress:
                    progress(done, total)
            anns = [{k: v for k, v in a.items()} for a in doc["annotations"]]
            coco_doc = {
                "info": {**(doc.get("info") or {}), "description": f"rts dataset {Path(data).name}, split {s}, "
                         "exported by rts export-coco"},
                "licenses": doc.get("licenses", []),
                "categories": doc.get("categories") or [{"id": 1, "name": "rts", "supercategory": "landform"}],
                "images": images,
                "annotations": anns,
            }
            (tmp / "annotations" / f"instances_{s}.json").write_text(json.dumps(coco_doc))
            counts[s] = {"images": len(images), "annotations": len(anns)}
    return counts


def _place(data: Path, split: str, im: dict, ext: str) -> tuple[Path, Path]:
    """``(the chip's file, its path under OUT/images)`` of one image entry of ``data``/``split``.json: the chip
    must lie inside the dataset (resolved, symlinks too); its place keeps the folders under ``chips/`` (the
    site), each one safe path component, else its base name. Raises :class:`RtsError` naming the image."""
    what = f"image {im.get('id')} of {split}.json"
    where = data / f"{split}.json"
    fix = "fix its file_name (chips/SITE/NAME.tif, relative to the dataset), or prepare the dataset again"
    src = inside(data, str(im["file_name"]), what, path=where, fix=fix)
    if not src.is_file():
        raise RtsError(f"{what}: its chip {im['file_name']} is not found", path=where, fix=fix)
    parts = src.relative_to(data.resolve()).parts
    if parts and parts[0] == "chips" and len(parts) > 1:
        rel = Path(split, *(safe_component(x, what, path=where) for x in parts[1:])).with_suffix(ext)
    else:
        rel = Path(split, safe_component(parts[-1] if parts else "", what, path=where))
    return src, rel


def _write_rgb(src: Path, dst: Path, driver: str, bands: list[int], stats: list[BandStats | None],
               nodata: float | None) -> None:
    """An 8-bit RGB copy of a chip: each band stretched from its clip low..high to 0..255 (nodata black).

    ``stats`` holds the red, green and blue bands' statistics (their clip range), None where a band has none (it
    is stretched from its own minimum to maximum); ``bands`` their 1-based band numbers in ``src``.
    """
    import warnings

    from rtscli.io.raster import check_whole_read, open_raster

    with open_raster(src) as s:
        # read whole: the chip's header is checked before anything that size is allocated
        check_whole_read(src, s.width, s.height, len(bands), "chip",
                         fix="export a dataset made by rts prepare (its chips are at most --chip-size px)")
        data = s.read(bands).astype(np.float64)
        crs, transform = s.crs, s.transform
    out = np.zeros(data.shape, np.uint8)
    for i, st in enumerate(stats):
        x = data[i]
        lo, hi = (st.low, st.high) if st is not None else (np.nanmin(x), np.nanmax(x))
        y = (np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-12) * 255
        if nodata is not None:
            y[(x == nodata) | ~np.isfinite(x)] = 0
        out[i] = np.nan_to_num(y).round().astype(np.uint8)
    profile = {"driver": driver, "width": out.shape[2], "height": out.shape[1], "count": 3, "dtype": "uint8"}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if driver == "JPEG":
        profile["quality"] = 95
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # GDAL's "driver does not support creation" goes via a copy
        with open_raster(dst, "w", **profile) as d:
            d.write(out)
