"""The manifest of an ``rts prepare`` dataset: what was read, how, and what came out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from rtscli.data.inputs import sha256
from rtscli.data.split import SPLITS
from rtscli.io.raster import RasterInfo


def source_bands(info: RasterInfo) -> dict:
    """Band count and band descriptions (GDAL, empty strings where unnamed) of a training raster."""
    return {"count": info.count, "descriptions": list(info.descriptions), "dtype": str(info.dtype)}


def values_record(conversions: dict, infos) -> dict:
    """How the chips' values were made from the stored ones (the manifest's ``values``; bundles copy it so
    that ``rts predict`` can check a scene and convert it the same way)."""
    first = conversions[infos[0][0].path]
    rec = first.record(str(infos[0][0].dtype))
    kinds = {(conversions[i.path].source, conversions[i.path].describe()) for i, _ in infos}
    if len(kinds) > 1:
        rec["mixed"] = True
        rec["per_source"] = {i.path.name: conversions[i.path].describe() for i, _ in infos}
    return rec


def build_manifest(opts, mode, band_map, chip_bands, chip_dtype, nodata, modalities, stats, sampler, counts, dropped,
              label_meta, items, instance_sizes, splits, split_map, infos, split_report) -> dict:
    from rtscli import __version__

    sources = []
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
        sources.append({"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)})
    totals = {s: {"images": 0, "instances": 0, "negatives": 0} for s in SPLITS}
    for site_counts in counts.values():
        for s in SPLITS:
            for k in totals[s]:
                totals[s][k] += site_counts[s][k]
    sizes, ratios, areas_m2 = instance_sizes
    size_stats = {}
    if sizes:
        def pct(values, ps, digits):
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
