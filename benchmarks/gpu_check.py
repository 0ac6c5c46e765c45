"""Everything rts does on a GPU, checked and measured in one command, for a GPU lent for a few minutes.

    python benchmarks/gpu_check.py --out DIR [--train-data DS] [--learn-seconds 60] [--deadline 480] [--dry-run]

Phases, in this order, each with its own time budget and each guarded (a phase that fails or runs out of time is
recorded with its reason, and the others still run; a global ``--deadline`` stops early and still writes the
results):

1. setup: an `rts synth` scene (3 m, PlanetScope bands) and a dataset prepared from it with its truth polygons;
2. pytest: ``pytest -m gpu`` (tests/test_gpu.py: bf16 vs fp32 losses, GPU-trained bundle on the CPU, predict on
   cuda vs cpu, GPU memory over 20 scenes);
3. training: step time and peak GPU memory of ``cascade-mvitv2-b`` at 1024 px and of the fused 3-modality
   residual-cross model (frozen backbones and not), batch 1 and the largest batch that fits, fp32 and bf16; the
   paper's Table 2 (one sample, forward + backward) beside the paper's figures;
4. ddp: ``rts pretrain --devices 1`` under ``torchrun --nproc-per-node 1``: which backend was initialised
   (NCCL on a GPU), 5 steps;
5. inference: `rts predict` on a mosaic of the synthetic scene sized to take about ``--infer-seconds`` for nano,
   ``cascade-mvitv2-b`` RGB and the fused 3-modality model (random weights): tiles/s, km² per GPU-hour at 3 m and
   the share of the time spent outside the model (reading, merging, writing);
6. learning: nano and ``--learn-preset`` trained for a wall-clock budget each from random weights and from an
   `rts ssl` backbone made here, on ``--train-data`` (else the synthetic dataset of phase 1): val/test mask AP50
   and steps done. It takes what time is left, at most ``--learn-seconds`` per run.

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (after every phase), ``DIR/gpu_check.log`` and, at the end,
``DIR/gpu_check_logs.tar.gz`` (every child's log); everything else goes to ``--work`` (default: a temporary
folder, removed at the end), so DIR holds four files. The goals of issue 22 are
reported with their ratios: inference >= 100,000 km²/GPU-hour for the 3-modality model (aim 250,000 on an H200),
frozen fine-tuning memory <= 0.55 x full training for 3 modalities (paper 0.52).

``--dry-run`` runs the same phases at tiny sizes (nano, 128 px tiles, a 512 px scene) on whatever device there
is, in about a minute on 2 CPU cores: `make test` runs it (tests/test_gpu_check.py) so this script cannot rot
before a GPU comes. How to run it on a lent GPU: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common import RTS
from common import meta as run_meta

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEASURE = HERE / "gpu_measure.py"
sys.path.insert(1, str(ROOT))  # rtscli from this working tree, installed or not
PHASES = ("setup", "pytest", "training", "ddp", "inference", "learning")
#: seconds each phase may take on a GPU (each also capped by what is left of --deadline); learning takes the rest
GPU_BUDGETS = {"setup": 45, "pytest": 75, "training": 130, "ddp": 40, "inference": 170, "learning": 10_000}
DRY_BUDGETS = {"setup": 90, "pytest": 90, "training": 120, "ddp": 90, "inference": 150, "learning": 120}
GOAL_KM2_H, AIM_KM2_H = 100_000.0, 250_000.0  # issue 22: 3-modality model, default overlap, end to end
GOAL_FROZEN_RATIO, PAPER_FROZEN_RATIO = 0.55, round(1754 / 3361, 3)


def skipped(reason: str) -> str:
    return f"skipped: {reason}"


@dataclass
class Check:
    """The run's settings, its clock and what it found so far (written out after every phase)."""

    args: argparse.Namespace
    out: Path
    work: Path
    device: str
    start: float = field(default_factory=time.monotonic)
    result: dict[str, Any] = field(default_factory=dict)
    ctx: dict[str, Any] = field(default_factory=dict)  # what later phases need from earlier ones

    @property
    def dry(self) -> bool:
        return bool(self.args.dry_run)

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.start)

    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {text}"
        print(line, file=sys.stderr, flush=True)
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.start, 1)
        self.result["goals"] = goals(self.result)
        tmp = self.out / "gpu_check.json.partial"
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.result))


# ---------------------------------------------------------------- running children


def child_env() -> dict[str, str]:
    """This environment, with the repository on the import path (`python -m rtscli` from any folder) and
    Python's output unbuffered (the logs are read while children run)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(check: Check, cmd: list[Any], *, timeout: float, name: str) -> dict[str, Any]:
    """Run ``cmd`` in its own process group with its output in ``work/logs/NAME.log``, stopped (SIGTERM, then
    SIGKILL) at ``timeout`` seconds. Returns exit code, wall time, whether it timed out and the end of its log."""
    logs = check.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    cmd = [str(c) for c in cmd]
    check.log(f"{name}: {' '.join(cmd)} (at most {timeout:.0f} s)")
    t = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(),
                             start_new_session=True)
        timed_out = False
        try:
            code = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            code = p.returncode
    wall = round(time.perf_counter() - t, 1)
    tail = log.read_text(errors="replace")[-1500:]
    check.log(f"{name}: exit {code} after {wall} s" + (" (stopped: time budget)" if timed_out else ""))
    return {"exit_code": code, "wall_s": wall, "timed_out": timed_out, "log_tail": tail}


def rts_cmd(*args: Any) -> list[Any]:
    return [*RTS, *args]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_file(check: Check, name: str, job: dict[str, Any]) -> tuple[Path, Path]:
    """Write a child's job (with its rows file, emptied) to ``work/NAME.job.json``."""
    rows = check.work / f"{name}.rows.jsonl"
    rows.unlink(missing_ok=True)
    path = check.work / f"{name}.job.json"
    path.write_text(json.dumps({**job, "rows": str(rows)}, default=str))
    return path, rows


def last_words(res: dict[str, Any]) -> str:
    """What a child said last: its last ``rts: error`` line if it has one (torchrun's report follows it), else its
    last line."""
    lines = [s.strip() for s in res.get("log_tail", "").splitlines() if s.strip().strip("=-")]
    errors = [s for s in lines if s.startswith("rts: ") and "error" in s or s.startswith(("SystemExit", "Error"))]
    return (errors or lines or [""])[-1][:300]


# ---------------------------------------------------------------- phases


def phase_setup(check: Check, budget: float) -> dict[str, Any]:
    """An `rts synth` scene and a dataset prepared from it with its truth polygons (the scene is also the tile of
    the inference mosaic, and its windows the SSL input); ``--train-data`` replaces the dataset for learning."""
    size, chip = (512, 128) if check.dry else (check.args.scene_size, 256)
    synth = check.work / "synth"
    t0 = time.monotonic()
    res = run_child(check, rts_cmd("synth", synth, "--chips", 0, "--scenes", 1, "--scene-size", size, "--site",
                                   "herschel", "--seed", 3, "--overwrite"), timeout=budget, name="synth")
    if res["exit_code"] != 0:
        return {"status": f"failed: rts synth: {last_words(res)}"}
    scene = next((synth / "scenes").glob("*.tif"))
    ds = check.work / "ds"
    res2 = run_child(check, rts_cmd("prepare", scene, "--labels", scene.with_suffix(".gpkg"), "--labels-layer", "rts",
                                    "--bands", "planetscope4", "--chip-size", chip, "--seed", 3, "-o", ds,
                                    "--overwrite", *(["--split-block", chip] if check.dry else [])),
                    timeout=budget - (time.monotonic() - t0), name="prepare")
    if res2["exit_code"] != 0:
        return {"status": f"failed: rts prepare: {last_words(res2)}"}
    import rasterio
    import yaml

    with rasterio.open(scene) as src:
        mask = src.dataset_mask(out_shape=(256, 256))
        info = {"scene": str(scene), "scene_px": [src.width, src.height], "pixel_m": abs(src.transform.a),
                "valid_fraction": round(float((mask > 0).mean()), 4)}
    counts = yaml.safe_load((ds / "manifest.yaml").read_text())["counts"]["total"]
    check.ctx.update(info)
    check.ctx.update(scene=scene, ds=ds, chip=chip)
    learn_ds = Path(check.args.train_data) if check.args.train_data else ds
    if check.args.train_data:
        man = learn_ds / "manifest.yaml"
        if not man.exists():
            return {"status": f"failed: --train-data {learn_ds} has no manifest.yaml (make it with rts prepare)",
                    **info}
        counts_learn = yaml.safe_load(man.read_text())["counts"]["total"]
    else:
        counts_learn = counts
    first = next((learn_ds / "chips").rglob("*.tif"), None)
    with rasterio.open(first) as src:
        learn_tile = int(math.ceil(max(src.width, src.height) / 32) * 32)
    check.ctx.update(learn_ds=learn_ds, learn_tile=learn_tile, learn_train=counts_learn["train"]["images"])
    return {"status": "ok", **info, "dataset": str(ds), "chip_px": chip,
            "chips": {k: counts[k]["images"] for k in ("train", "val", "test")},
            "learning_dataset": str(learn_ds) if check.args.train_data else "the synthetic dataset above",
            "learning_chips": {k: counts_learn[k]["images"] for k in ("train", "val", "test")},
            "learning_tile_px": learn_tile}


def junit_counts(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "")[:400]})
    skips = sorted({(s.get("message") or "")[:200] for s in root.iter("skipped")})
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"], "failures": failed, "skip_reasons": skips}


def phase_pytest(check: Check, budget: float) -> dict[str, Any]:
    """``pytest -m gpu`` over the test suite (the dry run: tests/test_gpu.py alone, to keep it short)."""
    xml = check.work / "pytest_gpu.xml"
    xml.unlink(missing_ok=True)
    where = "tests/test_gpu.py" if check.dry else "tests"
    res = run_child(check, [sys.executable, "-m", "pytest", "-m", "gpu", where, "-q", "-p", "no:cacheprovider",
                            f"--junitxml={xml}", f"--basetemp={check.work / 'pytest_tmp'}"],
                    timeout=budget, name="pytest_gpu")
    out: dict[str, Any] = {"command": f"pytest -m gpu {where}", "exit_code": res["exit_code"], "wall_s": res["wall_s"]}
    if res["exit_code"] == 5:
        return {**out, "status": "failed: pytest -m gpu selected no test"}
    if not xml.exists():
        return {**out, "status": "failed: " + ("time budget spent" if res["timed_out"] else last_words(res))}
    out.update(junit_counts(xml))
    if out["failed"] or out["errors"]:
        out["status"] = f"failed: {out['failed']} failed, {out['errors']} errors"
    elif out["passed"] == 0:
        out["status"] = skipped(f"{out['skipped']} GPU tests skipped ({'; '.join(out['skip_reasons'])})")
    else:
        out["status"] = "ok"
    return out


def phase_training(check: Check, budget: float) -> dict[str, Any]:
    preset, tile = ("nano", 64) if check.dry else (check.args.preset, check.args.tile or preset_tile(check.args.preset))
    job, rows_path = job_file(check, "training", {
        "device": check.device, "preset": preset, "tile": tile, "precisions": ["fp32", "bf16"],
        "steps": 1 if check.dry else 3, "warmup": not check.dry,
        "max_batch_cap": 2 if check.dry else check.args.max_batch,
        "budget_s": budget - 15})
    res = run_child(check, [sys.executable, MEASURE, "train", job], timeout=budget, name="training")
    rows = read_rows(rows_path)
    steps = [r for r in rows if r.get("kind") == "step"]
    table2 = [r for r in rows if r.get("kind") == "table2"]
    missing = [r for r in rows if r.get("kind") in ("largest", "skipped", "error")]
    for r in table2:
        if isinstance(r.get("peak_mb"), (int, float)):
            r["ratio_to_paper"] = round(r["peak_mb"] / r["paper_mb"], 2)
    status = "ok" if res["exit_code"] == 0 and steps else \
        ("partial: time budget spent" if res["timed_out"] else f"failed: {last_words(res)}")
    if check.dry and status == "ok":
        status = f"ok (dry run: nano at {tile} px)"
    return {"status": status, "preset": preset, "tile_px": tile, "device": check.device, "wall_s": res["wall_s"],
            "rows": steps, "table2": table2, "not_measured": missing, "frozen_ratio": frozen_ratios(table2)}


def frozen_ratios(table2: list[dict[str, Any]]) -> dict[str, Any]:
    """Frozen / trained backbones, 3 modalities, one sample (Table 2), per precision."""
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        by = {(r["modalities"], r["frozen"]): r.get("peak_mb") for r in table2 if r["precision"] == precision}
        f, u = by.get((3, True)), by.get((3, False))
        if isinstance(f, (int, float)) and isinstance(u, (int, float)) and u:
            out[precision] = round(f / u, 3)
        else:
            why = f if isinstance(f, str) else u if isinstance(u, str) else skipped("not measured")
            out[precision] = why if why.startswith("skipped") else skipped(why)
    return out


def preset_tile(preset: str) -> int:
    from rtscli.modeling.config import load_preset

    return int(load_preset(preset).tile_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phase_ddp(check: Check, budget: float) -> dict[str, Any]:
    """``rts pretrain --devices 1`` under torchrun, recording the process group it set up."""
    run = check.work / "ddp_nano"
    report = check.work / "ddp_probe.json"
    report.unlink(missing_ok=True)
    extra = ["--accelerator", "cpu"] if not check.gpu else []
    if check.dry:
        extra += ["--tile-size", 128]  # the dry run's chips: a smaller tile is refused
    res = run_child(check, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", 1, "--master-port",
                            free_port(), MEASURE, "ddp-probe", report, "--", "pretrain", "--modality", "rgb",
                            "--data", check.ctx["ds"], "--preset", "nano", "--devices", 1, "--max-steps", 5,
                            "--batch-size", 2, "--workers", 2, "-o", run, "--overwrite", *extra],
                    timeout=budget, name="ddp")
    want = "nccl" if check.gpu else "gloo"
    out: dict[str, Any] = {"command": f"torchrun --nproc-per-node 1 -m rtscli pretrain --devices 1 --max-steps 5 "
                                      f"--preset nano{' --accelerator cpu' if not check.gpu else ''}",
                           "wall_s": res["wall_s"], "exit_code": res["exit_code"], "expected_backend": want}
    if report.exists():
        out.update(json.loads(report.read_text()))
    if (run / "config.yaml").exists():
        import yaml

        out["steps"] = yaml.safe_load((run / "config.yaml").read_text())["metrics"]["steps_run"]
        check.ctx["nano_bundle"] = run
    if res["exit_code"] != 0:
        out["status"] = f"failed: {'time budget spent' if res['timed_out'] else last_words(res)}"
    elif not out.get("init_process_group"):
        out["status"] = "failed: trained, but no process group was initialised (Lightning chose one device, not DDP)"
    elif out.get("backend") != want:
        out["status"] = f"failed: backend {out.get('backend')}, expected {want}"
    elif out.get("steps") != 5:
        out["status"] = f"failed: {out.get('steps')} steps, expected 5"
    else:
        out["status"] = "ok" if check.gpu else f"ok (CPU: {want}, not NCCL)"
    return out


def mosaic_vrt(base: Path, copies: int, path: Path, crop: int | None = None) -> dict[str, Any]:
    """A VRT of ``copies`` x ``copies`` copies of ``base`` (or of its top left ``crop`` x ``crop`` pixels) side by
    side on its grid (band names, nodata, scale and offset kept): a scene of any size at no cost in disk or time."""
    import rasterio

    with rasterio.open(base) as src:
        w, h, gt = min(src.width, crop or src.width), min(src.height, crop or src.height), src.transform.to_gdal()
        root = ET.Element("VRTDataset", rasterXSize=str(w * copies), rasterYSize=str(h * copies))
        srs = ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2")
        srs.text = src.crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in gt)
        gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                     "float32": "Float32", "float64": "Float64"}
        for b in range(1, src.count + 1):
            band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type[src.dtypes[b - 1]], band=str(b))
            if src.descriptions[b - 1]:
                ET.SubElement(band, "Description").text = src.descriptions[b - 1]
            if src.nodata is not None:
                ET.SubElement(band, "NoDataValue").text = repr(float(src.nodata))
            ET.SubElement(band, "Offset").text = repr(float(src.offsets[b - 1]))
            ET.SubElement(band, "Scale").text = repr(float(src.scales[b - 1]))
            for i in range(copies):
                for j in range(copies):
                    s = ET.SubElement(band, "SimpleSource")
                    ET.SubElement(s, "SourceFilename", relativeToVRT="0").text = str(base.resolve())
                    ET.SubElement(s, "SourceBand").text = str(b)
                    ET.SubElement(s, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
                    ET.SubElement(s, "DstRect", xOff=str(j * w), yOff=str(i * h), xSize=str(w), ySize=str(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)
    return {"scene_px": [w * copies, h * copies], "copies": copies}


def tiles_across(side: int, tile: int, overlap: int) -> int:
    return max(1, math.ceil((side - overlap) / (tile - overlap)))


def phase_inference(check: Check, budget: float) -> dict[str, Any]:
    """Bundles (nano, the preset's RGB and fused 3-modality models with random weights), then `rts predict` of a
    mosaic of the synthetic scene sized (from each model's measured speed) to take about --infer-seconds."""
    t0 = time.monotonic()
    preset = "nano" if check.dry else check.args.preset
    work = check.work / "infer"
    work.mkdir(parents=True, exist_ok=True)
    batch, workers = (2, 0) if check.dry else (check.args.infer_batch_size, check.args.infer_workers)
    train_args = ["--accelerator", "cpu"] if not check.gpu else []
    if check.dry:
        train_args += ["--tile-size", 128]
    job, rows_path = job_file(check, "bundles", {
        "work": work, "data": check.ctx["ds"], "nano": check.ctx.get("nano_bundle"), "preset": preset,
        "tile": 128 if check.dry else None, "models": ["fused3"] if check.dry else ["nano", "rgb", "fused3"],
        "calibrate": check.gpu,
        "device": check.device, "batch": batch, "train_args": train_args})
    res = run_child(check, [sys.executable, MEASURE, "bundles", job], timeout=min(budget, 120), name="bundles")
    made = read_rows(rows_path)
    if not made:
        return {"status": f"failed: making the bundles: {last_words(res)}", "rows": []}
    rows: list[dict[str, Any]] = []
    if check.dry:  # one rts predict is enough to keep the code path alive; each costs seconds of imports
        rows += [{"model": m, "status": skipped("dry run (the fused row runs the same code)")}
                 for m in ("nano", f"{check.args.preset} rgb")]
    base_px = check.ctx["scene_px"][0]
    pixel = check.ctx["pixel_m"]
    made.sort(key=lambda b: (not b["name"].endswith("fused3"), b["name"] == "nano"))  # the goal's row first
    for k, b in enumerate(made):
        name = b["name"]
        tile = int(b.get("tile") or (128 if check.dry else preset_tile("nano" if name == "nano" else preset)))
        overlap = round(0.25 * tile)  # rts predict's default (25%; larger only for large training slumps)
        if "error" in b:
            rows.append({"model": name, "status": f"failed: {b['error']}"})
            continue
        left = budget - (time.monotonic() - t0)
        # about --infer-seconds of mapping each, less when the budget left cannot hold that and 25 s for each row to
        # come (a process start, the model's loading and the output's writing take ~15 s more)
        target = min(check.args.infer_seconds, (left - 5 - 25 * (len(made) - k - 1)) / 1.3 - 15)
        rate = b.get("model_tiles_per_s")
        copies = 1
        if rate:
            want_tiles = min(check.args.infer_max_tiles, target * rate * 0.85)  # the rest: reading, merging, writing
            side_tiles = math.ceil(math.sqrt(want_tiles))
            copies = max(1, min(check.args.max_copies, math.ceil((side_tiles * (tile - overlap) + overlap) / base_px)))
        expect = (tiles_across(base_px * copies, tile, overlap) ** 2 / rate if rate else 10) + 15
        if target < 5 or left < expect:
            rows.append({"model": name, "status": skipped(f"time budget spent ({left:.0f} s left, about "
                                                          f"{expect:.0f} s needed)")})
            continue
        folder = work / f"scene_{name.replace(' ', '_')}"
        shutil.rmtree(folder, ignore_errors=True)
        info = mosaic_vrt(check.ctx["scene"], copies, folder / "mosaic.vrt", crop=224 if check.dry else None)
        out = work / f"pred_{name.replace(' ', '_')}"
        pr = run_child(check, rts_cmd("predict", folder, "-o", out, "--model", b["bundle"], "--bands", "planetscope4",
                                      "--batch-size", batch, "--workers", workers, "--device", check.device,
                                      "--min-score", check.args.infer_min_score, "--overwrite"),
                       timeout=min(left - 5, max(60.0, 3 * expect)), name=f"predict_{name.replace(' ', '_')}")
        rows.append(predict_row(name, b, pr, out, info, tile=tile, pixel=pixel, batch=batch, workers=workers,
                                valid=check.ctx["valid_fraction"]))
    ok = [r for r in rows if "km2_per_gpu_hour" in r]
    status = "ok" if ok and len(ok) == len([r for r in rows if not str(r.get("status", "")).startswith("skipped")]) \
        else ("partial" if ok else "failed")
    if status != "ok":
        status += ": " + "; ".join(f"{r['model']}: {r['status']}" for r in rows if "km2_per_gpu_hour" not in r)
    return {"status": status, "device": check.device, "batch_size": batch, "workers": workers,
            "min_score": check.args.infer_min_score, "overlap": "default (25% of the tile)",
            "weights": "random (untrained): scores sit near 0.5 everywhere, so --min-score "
                       f"{check.args.infer_min_score} keeps the merge step from polygonizing noise",
            "rows": rows}


def predict_row(name: str, b: dict[str, Any], pr: dict[str, Any], out: Path, info: dict[str, Any], *, tile: int,
                pixel: float, batch: int, workers: int, valid: float) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "bundle": b["bundle"], "tile_px": tile, **info,
                           "model_tiles_per_s_alone": b.get("model_tiles_per_s"), "process_wall_s": pr["wall_s"]}
    manifest = out / "manifest.json"
    if pr["exit_code"] != 0 or not manifest.exists():
        row["status"] = "failed: " + ("time budget spent" if pr["timed_out"] else last_words(pr))
        return row
    rec = json.loads(manifest.read_text())["scenes"][0]
    tm = rec["timing"]
    seconds = float(rec["seconds"])
    w, h = info["scene_px"]
    km2 = w * h * pixel * pixel / 1e6 * valid  # the valid part of the grid (the synthetic scene's nodata left out)
    non_model = max(0.0, seconds - tm["model"])
    row.update(status="ok", tiles=tm["tiles"], skipped_nodata_tiles=tm["skipped_nodata_tiles"], seconds=seconds,
               tiles_per_s=round(tm["tiles"] / seconds, 2), km2=round(km2, 1),
               km2_per_gpu_hour=round(km2 / seconds * 3600), km2_per_gpu_hour_process=round(km2 / pr["wall_s"] * 3600),
               read_s=tm["read"], model_s=tm["model"], merge_s=tm["merge"], write_s=tm["write"],
               non_model_share=round(non_model / seconds, 3), polygons=rec["polygons"])
    return row


def phase_learning(check: Check, budget: float) -> dict[str, Any]:
    presets = ["nano"] if check.dry else ["nano", check.args.learn_preset]
    runs = 2 * len(presets)
    tile = 128 if check.dry else check.ctx["learn_tile"]
    if check.dry:
        seconds, ssl_seconds = 60.0, 60.0  # the dry run's steps are fixed (max_steps), these only bound them
    else:  # what is left, shared out; each preset also needs its SSL run, a calibration and evaluations (~25 s)
        ssl_seconds = float(check.args.ssl_seconds)
        per_run = (budget - len(presets) * (ssl_seconds + 35)) / runs
        seconds = min(float(check.args.learn_seconds), per_run)
        if seconds < 15 and len(presets) > 1:
            presets = presets[:1]
            seconds = min(float(check.args.learn_seconds), (budget - ssl_seconds - 35) / 2)
        if seconds < 10:
            return {"status": skipped(f"time budget spent ({budget:.0f} s left)"), "rows": []}
    specs = []
    for p in presets:
        specs.append({"preset": p, "tile": tile, "batch": 2 if check.dry else check.args.learn_batch_size,
                      "seconds": round(seconds, 1), "ssl_seconds": ssl_seconds,
                      "ssl_max_steps": 2 if check.dry else 100_000, "calibrate_steps": 3 if check.dry else 12,
                      "max_steps": 3 if check.dry else None})
    train_args = ["--accelerator", "cpu"] if not check.gpu else []
    job, rows_path = job_file(check, "learning", {
        "work": check.work / "learn", "data": check.ctx["learn_ds"], "chips": Path(check.ctx["learn_ds"]) / "chips",
        "presets": specs, "workers": 0 if check.dry else 4, "train_chips": check.ctx["learn_train"],
        "budget_s": budget - 10, "train_args": train_args})
    (check.work / "learn").mkdir(exist_ok=True)
    res = run_child(check, [sys.executable, MEASURE, "learn", job], timeout=budget, name="learning")
    rows = read_rows(rows_path)
    if not check.dry and check.args.learn_preset not in presets:
        rows += [{"preset": check.args.learn_preset, "init": i, "skipped": "time budget spent"}
                 for i in ("random", "ssl")]
    if check.dry:
        rows += [{"preset": check.args.learn_preset, "init": i, "skipped": "dry run (nano only)"}
                 for i in ("random", "ssl")]
    done = [r for r in rows if "test_mask_ap50" in r]
    status = "ok" if done and res["exit_code"] == 0 else \
        ("partial: " if done else "failed: ") + ("time budget spent" if res["timed_out"] else last_words(res))
    return {"status": status, "dataset": str(check.ctx["learn_ds"]), "seconds_per_run": round(seconds, 1),
            "ssl_seconds": ssl_seconds, "learn_seconds_asked": check.args.learn_seconds, "wall_s": res["wall_s"],
            "rows": rows}


# ---------------------------------------------------------------- goals and the report


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 22's goals, with the ratio of what was measured to each."""
    out: list[dict[str, Any]] = []
    gpu = str(result.get("meta", {}).get("device", "")).startswith("cuda")
    rows = (result.get("inference") or {}).get("rows") or []
    fused = next((r for r in rows if str(r.get("model", "")).endswith("fused3") and "km2_per_gpu_hour" in r), None)
    g: dict[str, Any] = {"goal": "inference, 3-modality model, default overlap, end to end through rts predict",
                         "target": f">= {GOAL_KM2_H:,.0f} km²/GPU-hour (aim {AIM_KM2_H:,.0f} on an H200)"}
    if fused is None:
        g["status"] = skipped("no fused 3-modality inference row")
    else:
        v = fused["km2_per_gpu_hour"]
        g.update(value=v, unit="km²/GPU-hour", ratio_to_goal=round(v / GOAL_KM2_H, 3),
                 ratio_to_aim=round(v / AIM_KM2_H, 3), model=fused["model"])
        g["status"] = ("met" if v >= GOAL_KM2_H else "missed") if gpu else \
            skipped("not a GPU run (the CPU's figure is no GPU-hour)")
    out.append(g)
    ratios = (result.get("training") or {}).get("frozen_ratio") or {}
    for precision in ("fp32", "bf16"):
        r = ratios.get(precision)
        g = {"goal": f"frozen fine-tuning memory / full training, 3 modalities, one sample ({precision})",
             "target": f"<= {GOAL_FROZEN_RATIO} (paper {PAPER_FROZEN_RATIO})"}
        if isinstance(r, (int, float)):
            g.update(value=r, ratio_to_goal=round(r / GOAL_FROZEN_RATIO, 3), status="met" if r <= GOAL_FROZEN_RATIO
                     else "missed")
        else:
            g["status"] = r if isinstance(r, str) else skipped("not measured")
        out.append(g)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v).replace("|", "/")


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for _, k in cols) + " |" for r in rows]
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res.get("meta", {})
    md = [f"# GPU check ({'dry run, ' if m.get('dry_run') else ''}{m.get('device_name', m.get('device'))})", "",
          f"{m.get('date')}, {m.get('machine')}, torch {m.get('torch')}, CUDA {m.get('cuda')}, "
          f"{res.get('wall_s')} s of {m.get('deadline_s')} s", ""]
    md += ["## Phases", ""] + _table([{"phase": k, **v} for k, v in res.get("phases", {}).items()],
                                     [("phase", "phase"), ("status", "status"), ("budget s", "budget_s"),
                                      ("wall s", "wall_s")]) + [""]
    md += ["## Goals", ""] + _table(res.get("goals", []), [("goal", "goal"), ("target", "target"), ("value", "value"),
                                                           ("ratio to goal", "ratio_to_goal"), ("status", "status")])
    p = res.get("pytest_gpu") or {}
    md += ["", "## pytest -m gpu", "", f"{p.get('status')}: {p.get('passed')} passed, {p.get('failed')} failed, "
           f"{p.get('errors')} errors, {p.get('skipped')} skipped"]
    md += [f"- {f['test']}: {f['message']}" for f in p.get("failures", [])]
    t = res.get("training") or {}
    md += ["", f"## Training steps ({t.get('preset')}, {t.get('tile_px')} px, AdamW step)", "", str(t.get("status")),
           ""]
    md += _table(t.get("rows", []), [("modalities", "modalities"), ("frozen", "frozen"), ("precision", "precision"),
                                     ("batch", "batch"), ("largest", "largest"), ("s/step", "step_s"),
                                     ("tiles/s", "tiles_per_s"), ("peak MB", "peak_mb"), ("reserved MB", "reserved_mb"),
                                     ("finite", "finite"), ("error", "error")])
    md += ["", "Table 2 (one sample, forward + backward, `torch.cuda.max_memory_allocated`, weights included):", ""]
    md += _table(t.get("table2", []), [("modalities", "modalities"), ("frozen", "frozen"), ("precision", "precision"),
                                       ("peak MB", "peak_mb"), ("paper MB", "paper_mb"), ("ratio", "ratio_to_paper")])
    md += ["", f"frozen / trained, 3 modalities: {t.get('frozen_ratio')}"]
    for r in t.get("not_measured", []):
        md.append(f"- not measured: {json.dumps(r)}")
    i = res.get("inference") or {}
    md += ["", f"## Inference through `rts predict` ({i.get('device')}, batch {i.get('batch_size')}, "
           f"{i.get('workers')} workers, --min-score {i.get('min_score')})", "", str(i.get("status")), "",
           str(i.get("weights")), ""]
    md += _table(i.get("rows", []), [("model", "model"), ("scene px", "scene_px"), ("tiles", "tiles"),
                                     ("s", "seconds"), ("tiles/s", "tiles_per_s"), ("km²", "km2"),
                                     ("km²/GPU-h", "km2_per_gpu_hour"),
                                     ("km²/GPU-h (whole process)", "km2_per_gpu_hour_process"),
                                     ("non-model share", "non_model_share"), ("read s", "read_s"),
                                     ("model s", "model_s"), ("merge s", "merge_s"), ("write s", "write_s"),
                                     ("status", "status")])
    d = res.get("ddp") or {}
    md += ["", "## DDP under torchrun", "", f"{d.get('status')}: `{d.get('command')}`; backend {d.get('backend')}, "
           f"world size {d.get('world_size')}, {d.get('steps')} steps, {d.get('wall_s')} s"]
    n = res.get("learning") or {}
    md += ["", f"## Learning ({n.get('seconds_per_run')} s per run, SSL {n.get('ssl_seconds')} s; "
           f"{n.get('dataset')})", "", str(n.get("status")), ""]
    md += _table(n.get("rows", []), [("preset", "preset"), ("init", "init"), ("tile", "tile"), ("batch", "batch"),
                                     ("steps", "steps"), ("wall s", "wall_s"), ("val mask AP50", "val_mask_ap50"),
                                     ("test mask AP50", "test_mask_ap50"), ("test box AP50", "test_box_ap50"),
                                     ("skipped", "skipped"), ("error", "error")])
    return "\n".join(md) + "\n"


# ---------------------------------------------------------------- main


def environment(device: str, dry: bool, deadline: float) -> dict[str, Any]:
    import importlib

    import torch

    info = run_meta(dry_run=dry, device=device, deadline_s=deadline, torch=torch.__version__,
                    cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, gpu_memory_mb=round(p.total_memory / 2**20), gpus=torch.cuda.device_count(),
                    bf16=torch.cuda.is_bf16_supported(), nccl=torch.distributed.is_nccl_available())
    for mod in ("lightning", "timm", "torchvision", "rasterio", "pyogrio", "shapely", "geopandas", "numpy"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception as exc:  # a missing package is a finding, not a crash
            info[mod] = f"missing: {exc}"
    return info


def pack_logs(work: Path, path: Path) -> None:
    """Every child's log, the rows the children wrote and pytest's report, as one small file beside the results
    (a lent machine sends back a few files only)."""
    import tarfile

    try:
        with tarfile.open(path, "w:gz") as tar:
            for f in sorted([*(work / "logs").glob("*.log"), *work.glob("*.jsonl"), *work.glob("*.xml")]):
                tar.add(f, arcname=f"{'logs/' if f.parent.name == 'logs' else ''}{f.name}")
    except OSError as exc:  # the results are written already; the logs are a help
        print(f"could not pack the logs: {exc}", file=sys.stderr)


PHASE_FUNCS: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "setup": phase_setup, "pytest": phase_pytest, "training": phase_training, "ddp": phase_ddp,
    "inference": phase_inference, "learning": phase_learning}
RESULT_KEY = {"setup": "setup", "pytest": "pytest_gpu", "training": "training", "ddp": "ddp",
              "inference": "inference", "learning": "learning"}
NEEDS_SETUP = {"ddp", "inference", "learning"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, gpu_check.md and its log")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on any device (what `make test` runs)")
    ap.add_argument("--deadline", type=float, help="seconds for everything (default 480; dry run 400)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    ap.add_argument("--preset", default="cascade-mvitv2-b", help="the large model of the training and inference rows")
    ap.add_argument("--tile", type=int, default=0, help="the training rows' tile, px (default: the preset's)")
    ap.add_argument("--scene-size", type=int, default=3072, help="the synthetic scene's side, px (3 m pixels)")
    ap.add_argument("--max-batch", type=int, default=64, help="the largest batch tried in training")
    ap.add_argument("--infer-seconds", type=float, default=30.0, help="about how long each rts predict should map")
    ap.add_argument("--infer-batch-size", type=int, default=8)
    ap.add_argument("--infer-workers", type=int, default=max(2, min(8, (os.cpu_count() or 4) - 4)))
    ap.add_argument("--infer-min-score", type=float, default=0.9,
                    help="--min-score of the timed predictions (their weights are random)")
    ap.add_argument("--max-copies", type=int, default=24, help="the inference mosaic's side, in scenes, at most")
    ap.add_argument("--infer-max-tiles", type=int, default=6000,
                    help="tiles of an inference scene, at most (a fast model is not held up by reading a huge one)")
    ap.add_argument("--train-data", help="a dataset made by `rts prepare` to learn on (default: the synthetic one)")
    ap.add_argument("--learn-seconds", type=float, default=60.0,
                    help="training budget of each learning run, at most (cut to what is left of --deadline)")
    ap.add_argument("--ssl-seconds", type=float, default=20.0, help="rts ssl budget per preset")
    ap.add_argument("--learn-preset", default="cascade-mvitv2-b", help="the larger preset of the learning runs")
    ap.add_argument("--learn-batch-size", type=int, default=8)
    args = ap.parse_args()
    args.deadline = args.deadline or (400.0 if args.dry_run else 480.0)
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").unlink(missing_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="rts_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args=args, out=args.out, work=work, device=device)
    check.result = {"meta": environment(device, args.dry_run, args.deadline), "phases": {}}
    if not check.gpu and not args.dry_run:
        check.log("no CUDA GPU here: the figures below are the CPU's (use --dry-run for the quick check)")
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    budgets = DRY_BUDGETS if args.dry_run else GPU_BUDGETS
    try:
        for name in PHASES:
            key = RESULT_KEY[name]
            if name not in wanted and not (name == "setup" and NEEDS_SETUP & set(wanted)):
                check.result[key] = {"status": skipped("not in --phases")}
                check.result["phases"][name] = {"status": check.result[key]["status"]}
                continue
            budget = min(budgets[name], check.left() - 3)
            if budget < 10:
                check.result[key] = {"status": skipped(f"global deadline ({args.deadline:.0f} s) reached")}
            elif name in NEEDS_SETUP and "ds" not in check.ctx:
                check.result[key] = {"status": skipped("setup failed")}
            else:
                check.log(f"== {name} (budget {budget:.0f} s)")
                t = time.monotonic()
                try:
                    check.result[key] = PHASE_FUNCS[name](check, budget)
                except Exception as exc:  # a phase's bug must not cost the other phases' figures
                    check.result[key] = {"status": f"failed: {type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-2000:]}
                check.result["phases"][name] = {"status": check.result[key].get("status"), "budget_s": round(budget),
                                                "wall_s": round(time.monotonic() - t, 1)}
            check.result["phases"].setdefault(name, {"status": check.result[key]["status"]})
            check.save()
    finally:
        check.save()
        pack_logs(work, args.out / "gpu_check_logs.tar.gz")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(check.result))


if __name__ == "__main__":
    main()
