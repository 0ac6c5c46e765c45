"""What this machine has: the memory this process can still have, from the OS, its cgroups or the CUDA driver,
and the CPU cores it may use (its CPU affinity, cgroup CPU quota, SLURM's ``SLURM_CPUS_PER_TASK``,
``OMP_NUM_THREADS``, ``--threads``).

A base-layer module: it imports nothing of rtscli but :mod:`rtscli.errors`, and torch only inside
:func:`available_bytes`, when a CUDA device's free memory is asked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

#: cgroup v1 writes "no limit" as a huge number (9223372036854771712); anything this large means no limit
_UNLIMITED = 2**60


def device_type(device: str | torch.device) -> str:
    """The kind of device a name means: "cuda" for "cuda", "cuda:N" and "gpu"; else the name before any ":".

    Args:
        device: a device name ("cpu", "cuda:1", "gpu", "mps", ...) or a ``torch.device``.

    Returns:
        The lower-case device type, e.g. "cpu", "cuda" or "mps".
    """
    d = str(device).split(":")[0].lower()
    return "cuda" if d in ("cuda", "gpu") else d


def _read_int(path: Path) -> int | None:
    """The integer in a cgroup file; None when unreadable, "max" or at least :data:`_UNLIMITED`."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _stat(path: Path, key: str) -> int:
    """The value of ``key`` in a ``memory.stat`` file; 0 when the file or the key is missing."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_headroom(directory: Path) -> int | None:
    """Bytes the cgroup at ``directory`` still allows: its limit minus its working set.

    cgroup v2: ``memory.max`` - (``memory.current`` - ``inactive_file`` of ``memory.stat``); cgroup v1:
    ``memory.limit_in_bytes`` - (``memory.usage_in_bytes`` - ``total_inactive_file``). Inactive page cache
    is reclaimed before the kernel kills anything, so it does not count as used (as the kubelet does).

    Args:
        directory: a memory cgroup's directory (e.g. ``/sys/fs/cgroup/system.slice/job_42``).

    Returns:
        The headroom in bytes (0 or more); None when the directory has no memory limit or no cgroup files.
    """
    d = Path(directory)
    if (d / "memory.max").exists():
        limit, usage, stat, inactive = d / "memory.max", d / "memory.current", d / "memory.stat", "inactive_file"
    elif (d / "memory.limit_in_bytes").exists():
        limit, usage = d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"
        stat, inactive = d / "memory.stat", "total_inactive_file"
    else:
        return None
    lim = _read_int(limit)
    if lim is None:
        return None
    used = (_read_int(usage) or 0) - _stat(stat, inactive)
    return max(0, lim - max(0, used))


def _cgroup_dirs(proc: Path, root: Path, controller: str = "memory") -> list[Path]:
    """The ``controller`` (memory, cpu) cgroup directories of this process and of its ancestors (whose limits apply
    too).

    From ``proc``/self/cgroup (v2 "0::/path", v1 "N:...memory...:/path") and ``proc``/self/mountinfo (where
    the hierarchy is mounted; ``root`` prefixes mount points, for tests). Falls back to the usual places
    (``/sys/fs/cgroup`` and ``/sys/fs/cgroup/<controller>``) when these files cannot be read.
    """
    try:
        groups = (proc / "self" / "cgroup").read_text().splitlines()
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        groups, mounts = [], []
    out: list[Path] = []
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        v2 = controllers == ""
        if not v2 and controller not in controllers.split(","):
            continue
        for m in mounts:
            fields = m.split()
            if " - " not in m or len(fields) < 5:
                continue
            fstype = m.split(" - ", 1)[1].split()
            kind = fstype[0] if fstype else ""
            opts = fstype[2] if len(fstype) > 2 else ""
            if (v2 and kind != "cgroup2") or (not v2 and (kind != "cgroup" or controller not in opts.split(","))):
                continue
            mroot, mpoint = fields[3], fields[4]
            rel = path
            if mroot != "/" and (path == mroot or path.startswith(mroot.rstrip("/") + "/")):
                rel = path[len(mroot.rstrip("/")):]
            base = root / mpoint.lstrip("/")
            d = base / rel.strip("/") if rel.strip("/") else base
            chain = [d]
            while d != base and base in d.parents:
                d = d.parent
                chain.append(d)
            out += chain
            break
    if not out:
        out = [root / "sys/fs/cgroup", root / f"sys/fs/cgroup/{controller}"]
    return out


def _meminfo_available(proc: Path) -> int | None:
    """MemAvailable of ``proc``/meminfo in bytes; None when it cannot be read."""
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device: str | torch.device, *, proc: Path = Path("/proc"), root: Path = Path("/")) -> int | None:
    """Memory (bytes) this process can still have on ``device``; None where it cannot be known.

    CPU: the smaller of MemAvailable (``/proc/meminfo``) and the headroom of every memory cgroup this
    process is in (a SLURM job's, a container's: limit minus working set, cgroup v1 or v2; see
    :func:`cgroup_headroom`). CUDA: the free memory of the current CUDA device (``torch.cuda.mem_get_info``).
    Memory this process already holds is not available: it is in use.

    Args:
        device: "cpu", "cuda" ("cuda:N", "gpu" alike), "mps", or a ``torch.device``.
        proc: where ``/proc`` is (for tests).
        root: the prefix of the cgroup mount points (for tests).

    Returns:
        Available memory in bytes; None on systems without ``/proc`` (macOS, Windows), for CUDA without a CUDA
        device, and for other devices (mps).
    """
    kind = device_type(device)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        # "cuda:N" is read as "cuda" (as before the move to this module): the current device's free memory
        free, _total = torch.cuda.mem_get_info(torch.cuda.current_device())
        return int(free)
    if kind != "cpu":
        return None
    found = [v for v in [_meminfo_available(proc)] + [cgroup_headroom(d) for d in _cgroup_dirs(proc, root)]
             if v is not None]
    return min(found) if found else None


def cgroup_cpus(directory: Path) -> float | None:
    """CPU cores the cgroup at ``directory`` allows: its quota over its period (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota."""
    d = Path(directory)
    try:
        if (d / "cpu.max").exists():
            quota, period = (d / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, per = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
    except (OSError, ValueError):
        return None
    return q / per if q is not None and q > 0 and per else None


def cpu_cores(*, environ: Mapping[str, str] | None = None, proc: Path = Path("/proc"),
              root: Path = Path("/")) -> tuple[int, str]:
    """The CPU cores this job may use, and what set them: the fewest of SLURM's ``SLURM_CPUS_PER_TASK``, the CPU
    quota of every cgroup this process is in (rounded up) and the CPUs it may run on (``os.sched_getaffinity``).
    Unlike :func:`cpu_budget`, not ``OMP_NUM_THREADS`` (the threads of one process, not the cores of the job).

    Args:
        environ: the environment (for tests; default ``os.environ``).
        proc: where ``/proc`` is (for tests).
        root: the prefix of the cgroup mount points (for tests).

    Returns:
        ``(cores, source)``, at least 1.
    """
    env = os.environ if environ is None else environ
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    found: list[tuple[int, str]] = [(cores, "CPU affinity")]
    quotas = [q for q in (cgroup_cpus(d) for d in _cgroup_dirs(proc, root, "cpu")) if q is not None]
    if quotas:
        found.append((max(1, math.ceil(min(quotas))), "cgroup CPU quota"))
    value = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if value.isdigit() and int(value) > 0:
        found.append((int(value), "SLURM_CPUS_PER_TASK"))
    n, source = min(found, key=lambda t: t[0])
    return max(1, n), source


def cpu_budget(requested: int | None = None, *, environ: Mapping[str, str] | None = None,
               proc: Path = Path("/proc"), root: Path = Path("/")) -> tuple[int, str]:
    """The CPU threads this process's torch should use, and what set them.

    The fewest of: ``requested`` (``--threads``); ``OMP_NUM_THREADS``; the job's cores (:func:`cpu_cores`: SLURM's
    ``SLURM_CPUS_PER_TASK``, the CPU quota of its cgroups, the CPUs it may run on). torch alone counts the node's
    cores, so two processes on a 2-core machine each start 2 threads and run about 6x slower than one alone.

    Args:
        requested: ``--threads N``, or None.
        environ: the environment (for tests; default ``os.environ``).
        proc: where ``/proc`` is (for tests).
        root: the prefix of the cgroup mount points (for tests).

    Returns:
        ``(threads, source)``: at least 1, and what set it (``--threads``, ``OMP_NUM_THREADS``,
        ``SLURM_CPUS_PER_TASK``, ``cgroup CPU quota``, ``CPU affinity``).
    """
    env = os.environ if environ is None else environ
    found = [cpu_cores(environ=env, proc=proc, root=root)]
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        found.append((int(value), "OMP_NUM_THREADS"))
    if requested is not None:
        found.append((max(1, int(requested)), "--threads"))
    n, source = min(found, key=lambda t: t[0])
    return max(1, n), source


def use_threads(requested: int | None = None) -> int:
    """Set torch's CPU threads to :func:`cpu_budget` (``torch.set_num_threads``). Processes rts starts get theirs
    from it too (Ray workers through ``OMP_NUM_THREADS``; DataLoader workers run one thread each, as torch sets).

    Args:
        requested: ``--threads N``, or None (the budget's other limits).

    Returns:
        The number of threads set.
    """
    import torch

    n, _ = cpu_budget(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n

