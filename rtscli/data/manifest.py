"""The manifest of an ``rts prepare`` dataset: what was read, how, and what came out."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import DTypeLike

from rtscli.data.bands import BandMap
from rtscli.data.inputs import Item, sha256
from rtscli.data.modalities import BandStats, Modality
from rtscli.data.options import PrepareOptions
from rtscli.data.stac_vrt import vrt_item
from rtscli.data.split_files import SPLITS
from rtscli.data.stats import StatsSampler
from rtscli.data.values import Conversion
from rtscli.io.raster import RasterInfo


def source_bands(info: RasterInfo) -> dict:
    """Band count and band descriptions (GDAL, empty strings where unnamed) of a training raster."""
    return {"count": info.count, "descriptions": list(info.descriptions), "dtype": str(info.dtype)}


def values_record(conversions: Mapping[Path, Conversion], infos: Sequence[tuple[RasterInfo, Path]]) -> dict:
    """How the chips' values were made from the stored ones (the manifest's ``values``; bundles copy it so
    that ``rts predict`` can check a scene and convert it the same way)."""
    first = conversions[infos[0][0].path]
    rec = first.record(str(infos[0][0].dtype))
    kinds = {(conversions[i.path].source, conversions[i.path].describe()) for i, _ in infos}
    if len(kinds) > 1:
        rec["mixed"] = True
        rec["per_source"] = {i.path.name: conversions[i.path].describe() for i, _ in infos}
    return rec


def build_manifest(
    opts: PrepareOptions,
    mode: str,
    band_map: BandMap,
    chip_bands: BandMap,
    chip_dtype: DTypeLike,
    nodata: float | None,
    modalities: Sequence[Modality],
    stats: Mapping[str, BandStats],
    sampler: StatsSampler,
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    dropped: Mapping[str, int],
    label_meta: Mapping[str, Any] | None,
    items: Sequence[Item],
    instance_sizes: tuple[Sequence[float], Sequence[float], Sequence[float]],
    splits: Mapping[str, str],
    split_map: Mapping[str, str] | None,
    infos: Sequence[tuple[RasterInfo, Path]],
    split_report: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of a dataset (``manifest.yaml``): what was read, how, and what came out.

    Every source file (images, masks, ``--aux`` rasters, label files with a shapefile's sidecars) is
    listed with its size and SHA-256, so reading them again costs one pass over each.

    Args:
        opts: the run's options (inputs, chip size in pixels, overlap, split settings, aux rasters ...).
        mode: the kind of input: ``paper``, ``masks``, ``vectors`` or ``coco``.
        band_map: the source rasters' band map (band name -> 1-based band number).
        chip_bands: the chips' band map: the image bands then the ``--aux`` rasters, numbered 1..C.
        chip_dtype: the data type of the chips' values.
        nodata: the chips' nodata value, or None.
        modalities: the modalities recorded (each a name and the chip channels it takes).
        stats: normalization statistics per channel (band or ``ndvi``), physical values.
        sampler: the sampler the statistics came from (its clip percentiles and pixel count are recorded).
        counts: ``{site: {split: {"images", "instances", "negatives": count}}}`` of the chips written.
        dropped: what was left out, by reason (chips, specks, clipped labels, overlapping items).
        label_meta: vectors: what was read from the label files; None or empty otherwise.
        items: the items that got a split (their masks and ``--aux`` rasters are sources too).
        instance_sizes: ``(box sides, aspect ratios, true areas)`` of the training slumps: box side
            sqrt(w x h) in pixels, box height / width, and area in m2 (none for images without
            georeference).
        splits: ``{item key: split}`` (not recorded itself: ``counts`` says what each split holds).
        split_map: the split file's ``{name: split}``, or None when the splits were drawn.
        infos: ``(raster, input root)`` of every source image; the first one's band layout is recorded.
        split_report: details of the split (overlaps across files, items left out ...), merged into the
            manifest's ``split`` record.

    Returns:
        The manifest as a plain dict (YAML-ready); ``values``, ``warnings``, ``masks``, ``coco`` and
        ``pixel_grid_images`` are added by :func:`rtscli.data.prepare.prepare`.

    Raises:
        OSError: a source file that cannot be read for its checksum.
    """
    from rtscli import __version__

    sources: list[dict[str, Any]] = []
    seen = set()
    paths = [i.path for i, _ in infos] + [it.mask.path for it in items if it.mask is not None]
    paths += [a.path for it in items for a in it.aux.values()]
    for lab in opts.labels or []:
        paths.append(lab)
        if lab.suffix.lower() == ".shp":
            sidecars = [lab.with_suffix(s) for s in (".dbf", ".shx", ".prj")]
            paths += [p for p in sidecars if p.exists()]
    for p in paths:
        if p in seen:
            continue
        seen.add(p)
        item = vrt_item(p)
        if item is not None:  # a STAC item read as an in-memory VRT: the item's file, and each asset it read
            ref, its = item
            sources.append({"path": str(ref), "stac_item": its.item_id, "sha256": sha256(ref)
                            if ref.exists() else None, "assets": [str(a.path) for a in its.sources]})
            continue
        sources.append({"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)})
    totals = {s: {"images": 0, "instances": 0, "negatives": 0} for s in SPLITS}
    for site_counts in counts.values():
        for s in SPLITS:
            for k in totals[s]:
                totals[s][k] += site_counts[s][k]
    sizes, ratios, areas_m2 = instance_sizes
    size_stats = {}
    if sizes:
        def pct(values: Sequence[float], ps: list[int], digits: int) -> dict[str, float]:
            return {f"p{p}": round(float(v), digits) for p, v in zip(ps, np.percentile(values, ps), strict=True)}

        size_stats = {
            "box_side_px_percentiles": pct(sizes, [5, 25, 50, 75, 95], 2),
            "box_aspect_h_over_w_percentiles": pct(ratios, [5, 50, 95], 3),
            # true areas, on the ellipsoid (none for images without georeference)
            **({"area_m2_percentiles": pct(areas_m2, [5, 25, 50, 75, 95], 1)} if areas_m2 else {}),
            "instances": len(sizes),
        }
    m: dict[str, Any] = {
        "kind": "rts-dataset",
        "format_version": 1,
        "rts_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "inputs": [str(p) for p in opts.inputs],
        "source_band_map": band_map.as_dict(),
        "source_band_preset": band_map.preset,
        # the layout of the rasters the chips were cut from: models keep it, so rts predict reads scenes alike
        "source_bands": source_bands(infos[0][0]),
        "band_map": chip_bands.as_dict(),
        "aux": {k: str(v) for k, v in opts.aux.items()},
        "dtype": str(chip_dtype),
        "nodata": None if nodata is None else float(nodata),
        "modalities": {m.name: list(m.channels) for m in modalities},
        "repeat_to": opts.repeat_to,
        "normalization": {k: {kk: round(vv, 6) for kk, vv in v.as_dict().items()} for k, v in stats.items()},
        "normalization_method": {
            "split": "train", "clip_percentiles": [sampler.p_low, sampler.p_high],
            "sampled_pixels": sampler.count, "formula": "(clip(x, low, high) - mean) / std",
        },
        "chips": {"size": opts.chip_size,
                  "overlap": opts.overlap if opts.chip_size else None,
                  "min_area_px": opts.min_area, "segmentation": opts.segmentation,
                  "keep_empty": opts.keep_empty},
        "split": {
            "method": "file" if split_map else "within-site",
            "file": str(opts.split_file) if opts.split_file else None,
            "fractions": dict(zip(SPLITS, [round(f, 6) for f in opts.fractions], strict=True)),
            "seed": opts.seed,
            "unit": "spatial block of chips" if opts.chip_size else "image",
            "block_px": max(opts.split_block, 2 * opts.chip_size) if opts.chip_size else None,
            "grouping": "by footprint on the map, across all input files",
            **split_report,
        },
        "counts": {"per_site": {k: v for k, v in sorted(counts.items())}, "total": totals},
        "dropped": dropped,
        "instance_sizes": size_stats,
        "labels": label_meta or None,
        "sources": sources,
    }
    return m
