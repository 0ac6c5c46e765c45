"""Many scenes on Ray (``rts predict scenes/ -o out/ --engine ray``): the scenes of a run spread over workers on
this machine or on a cluster, with the rules of a local run.

One design for every size of run: :func:`rtscli.engine.batch.predict_many` plans the run (which scenes are done,
which fail their checks, the manifest) and writes every record; only the mapping itself moves. Here it moves to
Ray actors (:class:`SceneMapper`, Ray Core): each loads the model once and maps one scene at a time with
:func:`rtscli.engine.mapping.run_scene`, the function a local run calls, so the outputs are the same files and
polygons. The driver hands out the scenes **largest first, one at a time to whichever worker is free** (the
classic longest-processing-time-first rule): a 4096 px scene started last would keep one worker busy long after
the others are idle, and scenes differ in size a hundredfold. An actor whose process dies mid-scene (killed, out
of memory, a node lost) is restarted by Ray and the scene retried (``max_restarts`` / ``max_task_retries``) up to
:data:`TRIES` times; after that the scene is recorded as failed and the others go on. Outputs are written
atomically, so a retried scene is never written half or twice.

Ray is an optional extra (``pip install 'rts[ray]'``); nothing here imports it before a Ray run starts.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rtscli.data.scenes import Scene
from rtscli.engine.mapping import SceneDataError, SceneReport
from rtscli.engine.predict import PredictOptions
from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: how many times a scene is tried on Ray before it is recorded as failed (a worker that dies mid-scene)
TRIES = 3
#: seconds to wait for a Ray cluster named by --address before saying it cannot be reached
CONNECT_SECONDS = 20.0
INSTALL_FIX = "install the extra: pip install 'rts[ray]' (or pip install ray), or drop --engine ray"


@dataclass(frozen=True)
class MappingJob:
    """What every worker needs to map any scene of a run: picklable, sent once to each worker.

    Attributes:
        model: the bundle's folder (loaded once per worker).
        opts: the prediction options (``device`` as the worker should use it).
        layer: the GeoPackage layer of each output.
        threads: CPU threads each worker's torch uses.
    """

    model: Path
    opts: PredictOptions
    layer: str
    threads: int


class SceneMapper:
    """A worker that maps scenes: the model is loaded once, then :meth:`map` runs one scene at a time.

    A plain class, made a Ray actor by :func:`map_on_ray` (``ray.remote(...)(SceneMapper)``), and usable without
    Ray (tests).
    """

    def __init__(self, job: MappingJob) -> None:
        """Load the model of ``job`` with ``job.threads`` torch threads.

        Args:
            job: the run's model, options and layer.
        """
        from rtscli.machine import use_threads
        from rtscli.modeling.bundle import load_model

        use_threads(job.threads)
        self.job = job
        self.net, self.bundle = load_model(job.model)

    def map(self, scene: Scene, target: str) -> dict[str, Any]:
        """Map ``scene`` into ``target`` (written atomically, replacing an earlier attempt's output).

        Args:
            scene: the scene, opened and checked by the driver.
            target: the output GeoPackage.

        Returns:
            ``{"status": "mapped", "report": SceneReport as a dict}``, or ``{"status": "failed", "reason": ...}``
            when the scene's pixels cannot be read (its own fault: the run goes on).
        """
        from rtscli.engine.mapping import run_scene

        try:
            rep = run_scene(self.net, self.bundle, scene, Path(target), self.job.opts, overwrite=True,
                            layer=self.job.layer)
        except SceneDataError as exc:
            return {"status": "failed", "reason": str(exc)}
        return {"status": "mapped", "report": rep.as_record()}


def ray_module() -> Any:
    """Ray, imported; an :class:`RtsError` with the fix when it is not installed."""
    try:
        import ray
    except ImportError:
        raise RtsError("--engine ray needs Ray, which is not installed", fix=INSTALL_FIX) from None
    return ray


def check_address(address: str, *, seconds: float = CONNECT_SECONDS) -> None:
    """Refuse a Ray cluster address that cannot be reached, within ``seconds`` (``ray.init`` alone retries for
    minutes). ``auto`` (a cluster started on this node by ``ray start`` or a SLURM script) is checked by
    ``ray.init`` itself, which fails at once when none runs here.

    Args:
        address: ``auto``, ``HOST:PORT`` (the head's GCS port, 6379 by default) or ``ray://HOST:PORT`` (Ray Client).
        seconds: how long to try the TCP connection.

    Raises:
        RtsError: a malformed address, or nothing listening there.
    """
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RtsError(f"--address {address!r} is not HOST:PORT", fix="pass --address auto (a cluster started on this "
                                                                   "node) or the head's address, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            pass
    except OSError as exc:
        raise RtsError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc})",
                       fix="start it first (ray start --head on that node), check the host and port, or drop "
                           "--address to run on this machine alone") from None


def start_ray(address: str | None, *, cpus: int) -> bool:
    """Connect to the Ray cluster at ``address``, or start a private one on this machine (``address`` None).

    Args:
        address: ``auto``, ``HOST:PORT``, ``ray://HOST:PORT``, or None: a local instance started here (and stopped
            by :func:`stop_ray`).
        cpus: CPUs a local instance offers (ignored when joining a cluster).

    Returns:
        Whether this call started Ray (False: it was running in this process already).

    Raises:
        RtsError: Ray not installed, or the cluster cannot be reached.
    """
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address is not None:
        check_address(address)
    # workers log no tile progress (the driver reports the run's); their threads are set per actor
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": logging.WARNING,
                              "runtime_env": {"env_vars": {"RTS_PROGRESS_SECONDS": "86400"}}}
    try:
        if address is None:
            ray.init(num_cpus=cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise RtsError(f"cannot join the Ray cluster at {address or 'this machine'} ({why})",
                       fix="start it first (ray start --head), or drop --address to run on this machine alone"
                       ) from None
    return True


def stop_ray() -> None:
    """Stop the Ray instance this process started (a cluster it joined goes on running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def worker_plan(workers: int | None, threads: int | None, *, gpus: int, cpus: int) -> tuple[int, int]:
    """How many mapping workers to start and the CPU threads of each.

    With GPUs: one worker per GPU, the CPUs shared among them. Without: one single-threaded worker per CPU (scenes
    are independent, so processes scale better than threads). ``--ray-workers`` and ``--threads`` override either,
    within what the cluster holds: a worker Ray cannot place would wait for ever, so more are not started (logged).

    Args:
        workers: ``--ray-workers``, or None.
        threads: ``--threads``, or None.
        gpus: GPUs the workers may use (0: none).
        cpus: CPUs in the cluster.

    Returns:
        ``(workers, threads)``, each at least 1.
    """
    cpus = max(1, cpus)
    if threads is None:
        threads = max(1, cpus // gpus) if gpus else 1
    if threads > cpus:
        log.warning("--threads %d is more than the %d CPU(s) of the Ray cluster: %d thread(s) per worker", threads,
                    cpus, cpus)
        threads = cpus
    room = min(gpus, cpus // threads) if gpus else cpus // threads
    if workers is None:
        workers = room
    elif workers > room:
        log.warning("--ray-workers %d: the Ray cluster holds %d worker(s) of %d CPU thread(s)%s; %d started",
                    workers, room, threads, " and 1 GPU" if gpus else "", room)
        workers = room
    return max(1, workers), max(1, threads)


def map_on_ray(scenes: list[tuple[Path, Scene, Path]], *, model: Path, opts: PredictOptions, layer: str,
               workers: int | None = None, threads: int | None = None,
               tries: int = TRIES) -> Iterator[tuple[Path, SceneReport | RtsError]]:
    """Map scenes on the running Ray instance, largest first, each to the next free worker; yield each as it
    ends, in the order they end.

    Args:
        scenes: ``(scene file, opened scene, output file)`` of every scene to map.
        model: the bundle's folder.
        opts: the prediction options; ``device`` None or ``cuda...`` gives each worker one GPU when the cluster has
            GPUs.
        layer: the GeoPackage layer of each output.
        workers: how many workers, or None (:func:`worker_plan`).
        threads: CPU threads per worker, or None (:func:`worker_plan`).
        tries: attempts per scene before it is recorded as failed (a worker that dies mid-scene).

    Yields:
        ``(scene file, SceneReport)`` for a mapped scene, ``(scene file, SceneDataError)`` for one whose pixels
        cannot be read or whose worker died ``tries`` times.
    """
    if not scenes:
        return
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    use_gpu = gpus > 0 and (opts.device is None or opts.device.startswith("cuda"))
    n, threads = worker_plan(workers, threads, gpus=gpus if use_gpu else 0, cpus=cpus)
    n = min(len(scenes), n)
    job = MappingJob(Path(model), PredictOptions(**{**opts.__dict__, "device": "cuda" if use_gpu else "cpu"}),
                     layer, threads)
    actor = ray.remote(num_cpus=job.threads, num_gpus=1 if use_gpu else 0, max_restarts=tries - 1,
                       max_task_retries=tries - 1)(SceneMapper)
    pool: list[Any] = [actor.remote(job) for _ in range(n)]
    log.info("Ray: %d worker(s) of %d CPU thread(s)%s for %d scene(s), largest first", n, job.threads,
             " and 1 GPU each" if use_gpu else "", len(scenes))
    todo = sorted(scenes, key=lambda t: -(t[1].width * t[1].height))
    running: dict[Any, tuple[Any, Path]] = {}

    def submit(w: Any) -> None:
        path, scene, target = todo.pop(0)
        running[w.map.remote(scene, str(target))] = (w, path)

    for w in pool[:len(todo)]:
        submit(w)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        ref = done[0]
        w, path = running.pop(ref)
        try:
            out = ray.get(ref)
        except RayTaskError as exc:  # a fault of the run (an output that cannot be written, a bug): it stops the run
            raise exc.as_instanceof_cause() from None
        except RayActorError as exc:  # its worker died (killed, out of memory, node lost), and every retry too
            yield path, SceneDataError(f"its worker died {tries} time(s) while mapping it (killed, or out of memory: "
                                       f"{type(exc).__name__}); the other scenes went on", path=path)
            try:  # a worker past its restarts is gone: start another in its place
                ray.kill(w)
            except Exception:
                pass
            pool[pool.index(w)] = w = actor.remote(job)
        else:
            if out["status"] == "mapped":
                yield path, SceneReport(**out["report"])
            else:
                yield path, SceneDataError(out["reason"])
        if todo:
            submit(w)
    for w in pool:
        try:
            ray.kill(w)
        except Exception:
            pass
