"""benchmarks/gpu_check.py's dry run: the one-command GPU check runs end to end at tiny sizes on the CPU (no gpu
marker: `make test` runs it), so it cannot rot before a GPU comes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _number_or_skipped(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or \
        isinstance(value, str) and value.startswith("skipped: ")


def test_the_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                        "--work", str(tmp_path / "work"), "--deadline", "600"],  # a slow CI machine: no phase cut
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md",
                                                        "gpu_check_logs.tar.gz"]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["meta"]["dry_run"] is True
    # every phase ran (the dry run has time for all of them) and none failed
    assert list(res["phases"]) == ["setup", "pytest", "training", "ddp", "inference", "learning"]
    bad = {k: v["status"] for k, v in res["phases"].items() if not str(v["status"]).startswith(("ok", "skipped: "))}
    assert not bad, (bad, {k: res[k].get("traceback") for k in res if isinstance(res[k], dict)})

    p = res["pytest_gpu"]  # pytest -m gpu selected the GPU tests, and they skip without CUDA
    assert p["passed"] + p["skipped"] >= 4 and p["failed"] == p["errors"] == 0
    assert p["status"] == "ok" or p["status"].startswith("skipped: ")

    t = res["training"]
    kinds = {(r["modalities"], r["frozen"], r["precision"]) for r in t["rows"]}
    assert kinds == {(n, f, p) for n, f in ((1, False), (3, False), (3, True)) for p in ("fp32", "bf16")}
    for r in t["rows"]:
        assert r["step_s"] > 0 and r["finite"] is True and _number_or_skipped(r["peak_mb"])
    assert {(r["modalities"], r["frozen"]) for r in t["table2"]} == {(1, False), (2, False), (3, False), (2, True),
                                                                      (3, True)}
    assert all(_number_or_skipped(r["peak_mb"]) for r in t["table2"])
    assert all(_number_or_skipped(v) for v in t["frozen_ratio"].values())

    rows = res["inference"]["rows"]
    assert len(rows) == 3
    timed = [r for r in rows if "km2_per_gpu_hour" in r]
    assert [r["model"] for r in timed] == ["nano fused3"]
    for r in timed:
        assert r["km2_per_gpu_hour"] > 0 and r["tiles"] > 0 and 0 <= r["non_model_share"] <= 1
    assert all(r["status"].startswith("skipped: ") for r in rows if r not in timed)

    d = res["ddp"]
    assert d["init_process_group"] is True and d["backend"] == "gloo" and d["steps"] == 5

    learned = [r for r in res["learning"]["rows"] if "test_mask_ap50" in r]
    assert {r["init"] for r in learned} == {"random", "ssl"}
    for r in learned:
        assert r["steps"] > 0 and 0 <= r["test_mask_ap50"] <= 1 and 0 <= r["val_mask_ap50"] <= 1
    assert all("skipped" in r for r in res["learning"]["rows"] if r not in learned)

    assert len(res["goals"]) == 3
    for g in res["goals"]:
        assert g["status"] in ("met", "missed") or g["status"].startswith("skipped: ")
    md = (out / "gpu_check.md").read_text()
    for heading in ("## Goals", "## pytest -m gpu", "## Training steps", "## Inference", "## DDP", "## Learning"):
        assert heading in md
