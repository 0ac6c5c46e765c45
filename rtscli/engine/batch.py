"""Many scenes, one output per scene: ``rts predict scenes/ -o maps/``, resumable and shared out by rank.

The folder keeps a ``manifest.json`` with one record per scene and output layer: what was made, in how
long, and its provenance (the model's weights' SHA-256 and the options that decide the polygons). A re-run
skips scenes whose output exists and was made the same way, and refuses (with the fix) to mix maps made
by another model or other options. Under torchrun each rank takes every N-th scene still to do and keeps
its own part of the records (``.manifest-rank<R>.json``), written after every scene, so an interrupted run
keeps the record of what it made; the manifest is rebuilt from the parts at the end.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtscli.data.bands import BandMap
from rtscli.data.scenes import Scene, open_scene
from rtscli.engine.devices import distributed
from rtscli.engine.mapping import SceneReport, run_scene, scene_key
from rtscli.engine.predict import PredictOptions
from rtscli.engine.scene_checks import check_band_layout, check_modalities, scene_sources
from rtscli.errors import RtsError
from rtscli.io.atomic import write_text_atomic
from rtscli.modeling.bundle import Bundle

log = logging.getLogger("rtscli")

#: the file every scene's output takes in the output folder
EXT = ".gpkg"
MANIFEST = "manifest.json"


def provenance(model: Path, opts: PredictOptions, *, band_map: BandMap | None, **given: Any) -> dict[str, Any]:
    """What decides an output's polygons: the model (path and SHA-256 of its weights) and the options.

    Args:
        model: the bundle's folder.
        opts: the prediction options.
        band_map: the scenes' band map (None: the model's).
        **given: further options that decide the output (``scale``, ``offset``, ``nodata``, ``layer``).

    Returns:
        A JSON-ready dict (NaN nodata as ``"nan"``).
    """
    from rtscli.engine.predict import weights_sha256
    from rtscli.modeling.bundle import WEIGHTS

    nd = given.get("nodata")
    if nd is not None:
        given["nodata"] = "nan" if nd != nd else float(nd)  # NaN never equals itself, and is not JSON
    return {"model": scene_key(Path(model)), "model_sha256": weights_sha256(Path(model) / WEIGHTS),
            "bands": band_map.as_dict() if band_map is not None else None, "overlap_px": opts.overlap,
            "min_score": opts.min_score, "min_area": opts.min_area, "simplify": opts.simplify, "merge": opts.merge,
            "match": opts.match_metric, "match_threshold": opts.match_threshold, "to_crs": opts.to_crs, **given}


def same_provenance(before: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """The same model (by its weights' hash, wherever the bundle now lies) and the same options."""
    if not before:
        return False
    return {k: v for k, v in before.items() if k != "model"} == {k: v for k, v in now.items() if k != "model"}


def difference(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """The first way ``before`` (an earlier run's provenance) differs from ``now``, in words."""
    if not before:
        return "by a run that left no record of its model and options"
    if before.get("model_sha256") != now.get("model_sha256"):
        return f"with another model ({before.get('model')}; now {now.get('model')})"
    for k, v in now.items():
        if k != "model" and before.get(k) != v:
            return f"with other options (--{k.replace('_', '-')} {before.get(k)}; now {v})"
    return "with other options"


def record_key(scene: Path, layer: str) -> str:
    """Records are per scene and output layer (one GeoPackage can hold the maps of several runs)."""
    return f"{scene_key(scene)}::{layer}"


def earlier_records(out: Path) -> dict[str, dict[str, Any]]:
    """Per-scene records of earlier runs into ``out``: manifest.json, then the ranks' parts (newer win).

    Args:
        out: the output folder.

    Returns:
        Records by :func:`record_key`; a damaged file is logged and its scenes count as unrecorded.
    """
    records: dict[str, dict[str, Any]] = {}
    files = [out / MANIFEST] + sorted(out.glob(".manifest-rank*.json"), key=lambda f: f.stat().st_mtime_ns)
    for f in files:
        if not f.exists():
            continue
        try:
            data = json.loads(f.read_text())
        except (ValueError, OSError):  # a damaged record: its scenes count as unrecorded
            log.warning("cannot read %s: the scenes it recorded will count as made by an unknown run", f)
            continue
        for r in data.get("scenes", []) if isinstance(data, dict) else data:
            if isinstance(r, dict) and "scene" in r:
                layer = (r.get("provenance") or {}).get("layer", "rts")
                records[record_key(Path(r["scene"]), layer)] = r
    return records


@dataclass
class BatchResult:
    """What a many-scene run did on this process."""

    run_here: int  # scenes mapped by this process
    done_before: int  # scenes skipped: mapped before, the same way
    todo: int  # scenes to do over all processes
    world: int  # processes (torchrun ranks)
    manifest: Path


def predict_many(scenes: list[Path], out: Path, *, model: Path, bundle: Bundle, band_map: BandMap,
                 bands_given: bool, opts: PredictOptions, overwrite: bool, layer: str,
                 units: dict[str, Any], nodata: float | None, scale: float | None, offset: float | None,
                 on_scene: Callable[[Path, Path, SceneReport], None] | None = None) -> BatchResult:
    """Map ``scenes`` into ``out`` (one ``<stem>.gpkg`` each), resumably, shared out by rank under torchrun.

    Every scene is checked (metadata only) before the first is run; scenes mapped before the same way are
    skipped, and scenes mapped another way are refused (the fix: ``--overwrite``, delete them, or another
    folder).

    Args:
        scenes: the scene files (:func:`rtscli.data.scenes.scene_paths`); their stems must be unique.
        out: the output folder (created).
        model: the bundle's folder (for provenance and loading).
        bundle: the bundle, read.
        band_map: the scenes' band map.
        bands_given: whether the user gave ``--bands`` (else each scene's layout is checked against the model's).
        opts: prediction options (``device`` is resolved here).
        overwrite: map every scene again.
        layer: the GeoPackage layer of each output.
        units: ``scale``/``offset``/``training`` for :func:`rtscli.data.scenes.open_scene`.
        nodata, scale, offset: as given by the user (recorded in the provenance).
        on_scene: called with (scene, output, report) after each scene this process maps (for printing).

    Returns:
        A :class:`BatchResult`.

    Raises:
        RtsError: scenes with clashing names, scenes mapped another way, a scene that does not fit the model.
    """
    from rtscli.io.vector import gpkg_layers
    from rtscli.modeling.bundle import load_model

    stems = [s.stem for s in scenes]
    if len(set(stems)) != len(stems):
        raise RtsError("two scenes have the same file name; their outputs would collide",
                       fix="predict them into different folders")
    # what made each output: a re-run with another model or other options must not keep the old maps silently
    prov = provenance(model, opts, band_map=band_map, scale=scale, offset=offset, nodata=nodata, layer=layer)
    old = earlier_records(out)
    done = [s for s in scenes if not overwrite and (out / f"{s.stem}{EXT}").exists()
            and layer in gpkg_layers(out / f"{s.stem}{EXT}")]
    stale = [s for s in done if not same_provenance((old.get(record_key(s, layer)) or {}).get("provenance"), prov)]
    if stale:
        why = difference((old.get(record_key(stale[0], layer)) or {}).get("provenance"), prov)
        names = ", ".join(f"{s.stem}{EXT}" for s in stale[:3]) + (", ..." if len(stale) > 3 else "")
        raise RtsError(f"{len(stale)} scene(s) already mapped in this folder ({names}) were made {why}", path=out,
                       fix="pass --overwrite to map every scene again with this model and these options, delete those "
                       "outputs to redo only them, or choose another -o")
    opened: dict[Path, Scene] = {}
    for s in scenes:  # check every scene (metadata only) before the first is run
        srcs = scene_sources(s, band_map=band_map)
        if not bands_given:
            check_band_layout(bundle, s)
        check_modalities(bundle, srcs, str(s))
        opened[s] = open_scene(srcs, nodata=nodata, **units)
    rank, world, opts.device = distributed(opts.device)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in scenes if s not in done]
    # every rank carries the records of the scenes done before, and writes them before any work: a rank that
    # replaces its old part can never lose a record, however the run ends
    reports = [old[record_key(s, layer)] | {"skipped": "done before"} for s in done]
    mine = todo[rank::world]  # shared out after the finished scenes are set aside
    net = None
    part = out / f".manifest-rank{rank}.json"
    write_text_atomic(part, json.dumps(reports))
    for k, s in enumerate(mine):
        target = out / f"{s.stem}{EXT}"
        if net is None:
            net, _ = load_model(model)
        rep = run_scene(net, bundle, opened[s], target, opts, overwrite=True, label=f"[{k + 1}/{len(mine)}] ",
                        layer=layer)
        reports.append(rep.as_record() | {"provenance": prov})
        write_text_atomic(part, json.dumps(reports))  # after every scene: an interrupted run keeps its record
        if on_scene is not None:
            on_scene(s, target, rep)
    # every rank rebuilds the manifest from the parts it sees; the last to finish sees them all
    files = sorted(out.glob(".manifest-rank*.json"), key=lambda f: f.stat().st_mtime_ns)
    parts = [r for f in files for r in json.loads(f.read_text())]
    by_scene = dict(old)  # earlier records (other layers, other scenes) stay; this run's replace theirs
    by_scene.update({record_key(Path(r["scene"]), (r.get("provenance") or {}).get("layer", "rts")): r for r in parts})
    manifest = {"model": str(Path(model).resolve()), "provenance": prov,
                "scenes": [by_scene[k] for k in sorted(by_scene)],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return BatchResult(run_here=len(mine), done_before=len(scenes) - len(todo), todo=len(todo), world=world,
                       manifest=out / MANIFEST)
