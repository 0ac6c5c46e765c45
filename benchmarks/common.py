"""What the benchmark scripts share: running rts, measuring a run's wall time and peak memory, and the
metadata (date, machine) every result file carries. The scripts run as ``python benchmarks/NAME.py``, so
this folder is on their import path."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

RTS = [sys.executable, "-m", "rtscli"]

# one interpreter per measurement, so that ru_maxrss (the largest child) belongs to that run alone
_PROBE = (
    "import resource, subprocess, sys, time, json;"
    "t=time.perf_counter();"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
    "print(json.dumps({'wall': time.perf_counter()-t,"
    " 'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
)


def run(*args, env: dict | None = None) -> float:
    """Run ``rts ARGS`` (echoed to stderr; ``env``: its environment, default this one's); returns its wall time in
    seconds. Stops the benchmark with rts's last words on failure."""
    print("+ rts " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    t = time.perf_counter()
    res = subprocess.run([*RTS, *map(str, args)], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"failed: rts {' '.join(map(str, args))}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def measured(cmd: list[str]) -> dict:
    """Run ``cmd`` (a full command line) in a fresh interpreter: ``{"wall": seconds, "rss_mb": peak RSS}``."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, cmd)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def meta(**extra) -> dict:
    """When and where a benchmark ran (UTC date, host, platform, Python, CPUs), with ``extra``."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), **extra}


def subset(ds, out, fraction: float, seed: int = 0) -> int:
    """A copy of prepared dataset ``ds`` (a Path) at ``out`` whose train split keeps ``fraction`` of its chips, drawn
    by ``seed`` (val and test as they are; the chips shared as hard links). Kept when it exists. Returns the
    training chips kept."""
    import shutil
    from pathlib import Path

    import numpy as np

    ds, out = Path(ds), Path(out)
    if (out / "train.json").exists():
        return len(json.loads((out / "train.json").read_text())["images"])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.yaml", "val.json", "test.json"):
        if (ds / name).exists():
            shutil.copy(ds / name, out / name)
    if not (out / "chips").exists():  # hard links: rts refuses chips reached through a link leading outside
        shutil.copytree(ds / "chips", out / "chips", copy_function=os.link)
    doc = json.loads((ds / "train.json").read_text())
    rng = np.random.default_rng(seed)
    ids = sorted(im["id"] for im in doc["images"])
    keep = set(rng.permutation(ids)[: max(2, int(round(fraction * len(ids))))].tolist())
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    (out / "train.json").write_text(json.dumps(doc))
    return len(keep)
