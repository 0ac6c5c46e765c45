"""Many scenes, one output per scene: ``rts predict scenes/ -o maps/``, resumable and shared out by rank.

The folder keeps a ``manifest.json`` with one record per scene and output layer: what was made, in how
long, and its provenance (the model's weights' SHA-256 and the options that decide the polygons), or, for a
scene that failed, ``"status": "failed"`` and the reason. A re-run skips scenes whose output exists and was
made the same way, retries the failed and missing ones, and refuses (with the fix) to mix maps made by
another model or other options.

A scene that fails for a reason in its own data (it does not open, lacks a band, its pixels cannot be read)
is recorded and skipped, and the others are mapped; a fault of the run itself (every scene fails the checks,
an output cannot be written) stops it. Under torchrun each rank takes every N-th scene still to do and keeps
its own part of the records (``.manifest-rank<R>.json``), written after every scene, so an interrupted run
keeps the record of what it made; the manifest is merged from the parts (under its lock) as scenes finish
and when each rank ends, and the last rank to end finds every failure of the run and removes the parts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rtscli.data.bands import BandMap
from rtscli.data.scenes import Scene
from rtscli.engine.devices import distributed
from rtscli.engine.mapping import SceneDataError, SceneReport, run_scene, scene_key
from rtscli.engine.predict import PredictOptions
from rtscli.engine.scene_checks import open_checked
from rtscli.errors import RtsError
from rtscli.io.atomic import output_lock, run_lock, write_text_atomic
from rtscli.modeling.bundle import Bundle

log = logging.getLogger("rtscli")

#: the file every scene's output takes in the output folder
EXT = ".gpkg"
MANIFEST = "manifest.json"
#: the manifest is merged and rewritten after a scene finishes (and always when a rank ends) unless that would take
#: more than this share of the run's time: a manifest of 50,000 scenes that takes a second to rewrite is rewritten
#: every 20 s, a small one after every scene (the ranks' parts always are)
MANIFEST_SHARE = 0.05
PARTS = ".manifest-rank*.json"


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
        Records by :func:`record_key` (a failed scene's has ``"status": "failed"``); a damaged file is logged and
        its scenes count as unrecorded.
    """
    records: dict[str, dict[str, Any]] = {}
    files = [out / MANIFEST] + sorted(out.glob(PARTS), key=lambda f: f.stat().st_mtime_ns)
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


def failure_reason(exc: BaseException, scene: Path) -> str:
    """Why a scene failed, in one line: the error's message without the scene's own path in front (the record
    and the summary name the scene)."""
    from rtscli.logs import one_line

    text = one_line(str(exc))
    for p in (str(Path(scene).resolve()), str(scene)):
        if text.startswith(p + ": "):
            return text[len(p) + 2:]
    return text


@dataclass(frozen=True)
class Engine:
    """Where the scenes of a many-scene run are mapped (``--engine``).

    Attributes:
        name: ``local`` (this process; under torchrun, each rank its share) or ``ray`` (Ray workers:
            :mod:`rtscli.engine.ray_engine`).
        address: the Ray cluster to join (``auto``, ``HOST:PORT``); None: a Ray instance of this machine's own.
        workers: Ray workers to start (None: one per GPU, else one per CPU over ``threads``).
        threads: CPU threads of torch per Ray worker (None: 1 without GPUs, else the CPUs shared among the GPUs'
            workers). A local run sets its own with :func:`rtscli.machine.use_threads`.
    """

    name: str = "local"
    address: str | None = None
    workers: int | None = None
    threads: int | None = None


@dataclass
class RunPace:
    """The progress of a many-scene run as scenes end, whichever worker mapped them: scenes done and failed of all,
    tiles/s, km²/h and the time left (from the pixels still to map: scenes differ in size a hundredfold)."""

    total: int  # scenes to map in this run (on this process)
    pixels: int  # their pixels
    started: float = field(default_factory=time.monotonic)
    mapped: int = 0
    failed: int = 0
    tiles: int = 0
    km2: float = 0.0
    pixels_done: int = 0

    def add(self, scene: Scene, rep: SceneReport | None) -> None:
        """Count ``scene``: mapped (``rep``) or failed (None)."""
        self.pixels_done += scene.width * scene.height
        if rep is None:
            self.failed += 1
            return
        from rtscli.geometry.footprint import window_footprint
        from rtscli.geometry.measure import geodesic_area

        self.mapped += 1
        self.tiles += int(rep.timing.get("tiles", 0))
        self.km2 += geodesic_area(window_footprint(scene.transform, 0, 0, scene.width, scene.height), scene.crs) / 1e6

    def line(self) -> str:
        """``12/200 scenes (1 failed), 41.2 tiles/s, 12,300 km²/h, ETA 10 min 05 s``."""
        from rtscli.progress import duration

        el = max(time.monotonic() - self.started, 1e-9)
        parts = [f"{self.mapped + self.failed}/{self.total} scenes" + (f" ({self.failed} failed)" if self.failed
                                                                        else "")]
        if self.tiles:
            parts += [f"{self.tiles / el:.3g} tiles/s", f"{self.km2 / el * 3600:,.0f} km²/h"]
        left = self.pixels - self.pixels_done
        if left > 0 and self.pixels_done:
            parts.append(f"ETA {duration(left * el / self.pixels_done)}")
        elif left <= 0:
            parts.append(f"done in {duration(el)}")
        return ", ".join(parts)


@dataclass
class BatchResult:
    """What a many-scene run did on this process."""

    run_here: int  # scenes mapped by this process
    done_before: int  # scenes skipped: mapped before, the same way
    todo: int  # scenes to do over all processes (failed and missing ones)
    world: int  # processes (torchrun ranks)
    manifest: Path
    failed_here: int = 0  # scenes this process recorded as failed
    #: (scene, reason) of the failed scenes: of the whole run when ``complete``, else of this process
    failed: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True  # every process has finished (this one finished last)


@dataclass
class _Records:
    """This process's records of a run and where they go: its part of the manifest, and the manifest."""

    out: Path
    model: Path
    prov: dict[str, Any]
    token: str  # the run's id, the same on every rank
    rank: int
    world: int
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # this run's records made here
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)  # scenes done before (marked skipped)

    @property
    def part(self) -> Path:
        return self.out / f".manifest-rank{self.rank}.json"

    def write_part(self, finished: bool = False) -> None:
        """This rank's records of this run (after every scene: an interrupted run keeps the record of its work)."""
        write_text_atomic(self.part, json.dumps({"run": self.token, "rank": self.rank, "world": self.world,
                                                 "finished": finished, "scenes": list(self.own.values())}))

    def write_manifest(self) -> None:
        """Merge the manifest, every rank's part and this rank's records into ``manifest.json``; the caller holds
        the manifest's lock (other ranks and runs merge theirs in turn, so no record is lost)."""
        by_scene = earlier_records(self.out)  # earlier records (other layers, other scenes) stay
        by_scene.update(self.carried)
        by_scene.update(self.own)  # this run's replace theirs
        manifest = {"model": str(Path(self.model).resolve()), "provenance": self.prov,
                    "scenes": [by_scene[k] for k in sorted(by_scene)],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2))

    def save(self) -> None:
        """Write this rank's part and merge the manifest (under its lock)."""
        with output_lock(self.out / MANIFEST):
            self.write_part()
            self.write_manifest()

    def finish(self) -> tuple[bool, list[tuple[str, str]]]:
        """This rank is done: its part says so, the manifest is merged. The rank that finishes last (every rank's
        part of this run says finished) also gathers the run's failures and removes the parts.

        Returns:
            ``(complete, failures)``: whether every rank has finished, and the (scene, reason) of the failed scenes
            (the whole run's when complete, else this rank's).
        """
        with output_lock(self.out / MANIFEST):
            self.write_part(finished=True)
            parts = [d for d in (_read_json(f) for f in self.out.glob(PARTS)) if isinstance(d, dict)]
            ours = [d for d in parts if d.get("run") == self.token]
            finished = {d.get("rank") for d in ours if d.get("finished")}
            complete = finished >= set(range(self.world))
            self.write_manifest()
            records = [r for d in ours for r in d.get("scenes", [])] if complete else list(self.own.values())
            if complete:  # every record is in the manifest now
                for f in self.out.glob(PARTS):
                    f.unlink(missing_ok=True)
        failed = sorted((str(r["scene"]), str(r.get("reason", ""))) for r in records
                        if isinstance(r, dict) and r.get("status") == "failed")
        return complete, failed


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it cannot be read (removed meanwhile, or damaged)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError):
        return None


def _run_token(world: int) -> str:
    """An id of this run, the same on every rank (rank 0's, broadcast), to tell its parts from older runs'."""
    token = uuid.uuid4().hex
    if world > 1:
        import torch.distributed as dist

        box: list[Any] = [token]
        dist.broadcast_object_list(box, src=0)
        token = str(box[0])
    return token


def _mapped(runnable: list[Path], opened: dict[Path, Scene], out: Path, *, model: Path, bundle: Bundle,
            opts: PredictOptions, layer: str, engine: Engine) -> Iterator[tuple[Path, SceneReport | RtsError]]:
    """Map the scenes ``runnable`` (largest first) on ``engine``; yield ``(scene, report)``, or ``(scene, error)``
    for a scene whose pixels cannot be read, as each ends."""
    if engine.name == "ray":
        from rtscli.engine.ray_engine import map_on_ray

        yield from map_on_ray([(s, opened[s], out / f"{s.stem}{EXT}") for s in runnable], model=Path(model),
                              opts=opts, layer=layer, workers=engine.workers, threads=engine.threads)
        return
    from rtscli.modeling.bundle import load_model

    net = None
    for k, s in enumerate(runnable):
        if net is None:
            net, _ = load_model(model)
        try:
            yield s, run_scene(net, bundle, opened[s], out / f"{s.stem}{EXT}", opts, overwrite=True,
                               label=f"[{k + 1}/{len(runnable)}] ", layer=layer)
        except SceneDataError as exc:  # its pixels cannot be read: recorded, and the next scene runs
            yield s, exc


def predict_many(scenes: list[Path], out: Path, *, model: Path, bundle: Bundle, band_map: BandMap,
                 bands_given: bool, opts: PredictOptions, overwrite: bool, layer: str,
                 units: dict[str, Any], nodata: float | None, scale: float | None, offset: float | None,
                 on_scene: Callable[[Path, Path, SceneReport, str], None] | None = None,
                 engine: Engine | None = None) -> BatchResult:
    """Map ``scenes`` into ``out`` (one ``<stem>.gpkg`` each), resumably, on this process (shared out by rank under
    torchrun) or on Ray workers (``engine``), largest scene first.

    Every scene still to do is checked (metadata only) before the first is run; scenes mapped before the same way
    are skipped, and scenes mapped another way are refused (the fix: ``--overwrite``, delete them, or another
    folder). A scene that fails the checks, or whose pixels cannot be read while it runs, is recorded as failed
    (``"status": "failed"`` and the reason) and the others are mapped; a re-run retries it. When every scene to do
    fails the checks (and none was mapped before), the fault is the run's (a model that fits none, wrong options)
    and nothing is run.

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
        units: ``scale``/``offset``/``training`` (and ``quality``, a :class:`rtscli.data.quality.QualityRequest`) for
            :func:`rtscli.data.scenes.open_scene`.
        nodata, scale, offset: as given by the user (recorded in the provenance).
        on_scene: called with (scene, output, report, the run's progress: :meth:`RunPace.line`) after each scene
            this process maps (for printing); a scene recorded as failed is logged (a warning with the reason and the
            run's progress).
        engine: where the scenes are mapped (:class:`Engine`; default: this process). Ray is started (or joined)
            after every check and before anything is written, and stopped at the end when rts started it.

    Returns:
        A :class:`BatchResult` (its ``failed`` lists the failed scenes; the caller decides the exit code).

    Raises:
        RtsError: scenes with clashing names, scenes mapped another way, an overlap the tiles cannot take, every
            scene failing the checks, an output that cannot be written, another run writing the same layer into
            ``out``, Ray not installed or its cluster out of reach.
    """
    from rtscli.io.vector import gpkg_layers

    engine = engine or Engine()

    stems = [s.stem for s in scenes]
    if len(set(stems)) != len(stems):
        raise RtsError("two scenes have the same file name; their outputs would collide",
                       fix="predict them into different folders")
    if opts.overlap is not None and not 0 <= opts.overlap < bundle.tile_size:
        raise RtsError(f"--overlap {opts.overlap} px must be below the model's tile size ({bundle.tile_size} px)",
                       fix="a fraction of the tile (e.g. --overlap 0.25) or fewer pixels")
    # what made each output: a re-run with another model or other options must not keep the old maps silently
    quality = units.get("quality")  # a quality mask decides polygons too (recorded only when given)
    dem = units.get("dem")  # so does a DEM (its derivatives' settings)
    prov = provenance(model, opts, band_map=band_map, scale=scale, offset=offset, nodata=nodata, layer=layer,
                      **({"quality": quality.record()} if quality is not None else {}),
                      **({"dem": dem.record()} if dem is not None else {}))
    old = earlier_records(out)

    def failed_before(s: Path) -> bool:
        return (old.get(record_key(s, layer)) or {}).get("status") == "failed"

    done = [s for s in scenes if not overwrite and (out / f"{s.stem}{EXT}").exists()
            and layer in gpkg_layers(out / f"{s.stem}{EXT}") and not failed_before(s)]
    stale = [s for s in done if not same_provenance((old.get(record_key(s, layer)) or {}).get("provenance"), prov)]
    if stale:
        why = difference((old.get(record_key(stale[0], layer)) or {}).get("provenance"), prov)
        names = ", ".join(f"{s.stem}{EXT}" for s in stale[:3]) + (", ..." if len(stale) > 3 else "")
        raise RtsError(f"{len(stale)} scene(s) already mapped in this folder ({names}) were made {why}", path=out,
                       fix="pass --overwrite to map every scene again with this model and these options, delete those "
                       "outputs to redo only them, or choose another -o")
    todo = [s for s in scenes if s not in done]
    opened: dict[Path, Scene] = {}
    unfit: dict[Path, RtsError] = {}
    for s in todo:  # check every scene to do (metadata only) before the first is run
        try:
            opened[s] = open_checked(s, bundle=bundle, band_map=band_map, bands_given=bands_given, nodata=nodata,
                                     units=units)
        except RtsError as exc:  # the scene's own fault, unless every scene has it (below)
            unfit[s] = exc
    if todo and not opened and not done:  # a model that fits none of the scenes, options that suit none
        first = next(iter(unfit.values()))
        if len(todo) == 1:
            raise first
        raise RtsError(f"none of the {len(todo)} scenes passes the checks before the run; the first: {first}")
    rank, world, opts.device = distributed(opts.device)
    if world > 1 and engine.name == "ray":
        raise RtsError("--engine ray runs its own workers, and this run is under torchrun",
                       fix="run rts predict ... --engine ray once, without torchrun")
    started = False
    if engine.name == "ray" and todo:
        from rtscli.engine.ray_engine import start_ray
        from rtscli.machine import cpu_cores

        started = start_ray(engine.address, cpus=cpu_cores()[0] if engine.address is None else 0)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if world > 1:  # the ranks of one torchrun run share the folder
            return _run(out, model=model, bundle=bundle, opts=opts, layer=layer, prov=prov, old=old,
                        done=done, todo=todo, opened=opened, unfit=unfit, rank=rank, world=world, engine=engine,
                        on_scene=on_scene)
        with run_lock(out, layer):
            return _run(out, model=model, bundle=bundle, opts=opts, layer=layer, prov=prov, old=old,
                        done=done, todo=todo, opened=opened, unfit=unfit, rank=rank, world=world, engine=engine,
                        on_scene=on_scene)
    finally:
        if started:
            from rtscli.engine.ray_engine import stop_ray

            stop_ray()


def _run(out: Path, *, model: Path, bundle: Bundle, opts: PredictOptions, layer: str,
         prov: dict[str, Any], old: dict[str, dict[str, Any]], done: list[Path], todo: list[Path],
         opened: dict[Path, Scene], unfit: dict[Path, RtsError], rank: int, world: int, engine: Engine,
         on_scene: Callable[[Path, Path, SceneReport, str], None] | None) -> BatchResult:
    """The run of :func:`predict_many` once every check is passed: the records, the mapping, the manifest."""
    rec = _Records(out=out, model=Path(model), prov=prov, token=_run_token(world), rank=rank, world=world)
    rec.carried = {record_key(s, layer): old[record_key(s, layer)] | {"skipped": "done before"}
                   for s in done if record_key(s, layer) in old}
    # largest first (a large scene started last keeps one worker busy after the others are done), then shared out
    # by rank under torchrun after the finished scenes are set aside (Ray hands them out one at a time instead)
    ordered = sorted(todo, key=lambda s: -(opened[s].width * opened[s].height) if s in opened else 0)
    mine = ordered[rank::world]

    def fail(s: Path, exc: RtsError, stage: str) -> None:
        why = failure_reason(exc, s)
        rec.own[record_key(s, layer)] = {"scene": scene_key(s), "status": "failed", "stage": stage, "reason": why,
                                         "provenance": prov}
        log.warning("%s failed (%s), skipped: %s", s.name, stage, why)

    for s in mine:
        if s in unfit:
            fail(s, unfit[s], "checks")
    runnable = [s for s in mine if s in opened]
    pace = RunPace(total=len(runnable), pixels=sum(opened[s].width * opened[s].height for s in runnable))
    mapped = 0
    t = time.monotonic()
    rec.save()  # before any work: the records of earlier runs and the failed checks are in the manifest
    next_save = time.monotonic() + (time.monotonic() - t) / MANIFEST_SHARE
    ended = False
    try:
        for s, result in _mapped(runnable, opened, out, model=model, bundle=bundle, opts=opts, layer=layer,
                                 engine=engine):
            target = out / f"{s.stem}{EXT}"
            rep: SceneReport | None = None
            pace.add(opened[s], None if isinstance(result, RtsError) else result)
            if isinstance(result, RtsError):  # its pixels cannot be read: recorded, and the next scene runs
                fail(s, result, "run")
                log.warning("%s", pace.line())
            else:
                rep = result
                r = rep.as_record()
                r.pop("scene")  # its first raster: the record names the input (a STAC item's .json, not an asset)
                item = {"stac_item": opened[s].item, "acquired": opened[s].date} if opened[s].item else {}
                rec.own[record_key(s, layer)] = {"scene": scene_key(s), "status": "mapped", **item, **r,
                                                 "provenance": prov}
                mapped += 1
            if time.monotonic() >= next_save:  # the manifest as scenes finish
                t = time.monotonic()
                rec.save()
                next_save = time.monotonic() + (time.monotonic() - t) / MANIFEST_SHARE
            else:
                rec.write_part()  # after every scene: an interrupted run keeps its record
            if rep is not None and on_scene is not None:
                on_scene(s, target, rep, pace.line())
        ended = True
    finally:
        if not ended:  # interrupted, or a fault of the run: what was made so far goes into the manifest
            try:
                rec.save()
            except Exception as exc:  # never hide the error that ended the run
                log.warning("cannot update %s: %s", out / MANIFEST, exc)
    complete, failed = rec.finish()
    return BatchResult(run_here=mapped, done_before=len(done), todo=len(todo), world=world,
                       manifest=out / MANIFEST, failed_here=len(mine) - mapped, failed=failed, complete=complete)
