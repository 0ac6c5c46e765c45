"""What terrain costs `rts predict`: reading the DEM and making slope, relief and hillshade, against the model's time,
and peak memory against scene size.

    python benchmarks/terrain_cost.py --models bench_out/terrain/seed0 [--sizes 1024,4096]
                                      [--out bench_out/terrain_cost]

``--models`` is a folder of ``benchmarks/terrain_value.py`` (its ``rgb`` and ``rgb+terrain`` bundles: any weights do).
For each size one ``rts synth --dem`` scene is mapped by both, one scene per run in a folder (so that the manifest
records the timing: ``read`` includes the DEM's reading and derivatives, ``model`` the forward passes), with one torch
thread and ``--workers 0`` (reading in the main process, where it is timed). The terrain's share is
(read with terrain - read without) / model time (goal: < 15 %); peak RSS per size shows whether memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from common import RTS, measured
from common import meta as run_meta
from common import run as rts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--out", type=Path, default=Path("bench_out/terrain_cost"))
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        syn = a.out / f"syn_{size}"
        if not (syn / "synth.yaml").exists():
            rts("synth", syn, "--chips", 0, "--scenes", 1, "--scene-size", size, "--dem", "--overwrite")
        scene = next((syn / "scenes").glob("scene_00_*.tif"))
        folder = a.out / f"in_{size}"
        folder.mkdir(exist_ok=True)
        if not (folder / scene.name).exists():
            shutil.copy(scene, folder / scene.name)
        dem = syn / "dem" / f"{scene.stem}_dem.tif"
        row: dict = {"size": size}
        for name, extra in (("rgb", []), ("rgb+terrain", ["--dem", str(dem)])):
            out = a.out / f"maps_{size}_{name}"
            m = measured([*RTS, "predict", str(folder), "-o", str(out), "--model", str(a.models / name), "--workers",
                          "0", "--threads", "1", "--overwrite", *extra])
            rec = json.loads((out / "manifest.json").read_text())["scenes"][0]
            row[name] = {"wall_s": round(m["wall"], 2), "peak_rss_mb": round(m["rss_mb"]),
                         "read_s": rec["timing"]["read"], "model_s": rec["timing"]["model"],
                         "tiles": rec["timing"]["tiles"]}
        t, r = row["rgb+terrain"], row["rgb"]
        row["terrain_share_of_model_time"] = round((t["read_s"] - r["read_s"] * t["tiles"] / max(1, r["tiles"]))
                                                   / t["model_s"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"meta": run_meta(sizes=a.sizes, models=str(a.models)), "rows": rows}
    (a.out / "results.json").write_text(json.dumps(result, indent=2))
    print("\n| scene px | terrain read+derivatives / model time | peak RSS rgb+terrain (MB) | peak RSS rgb (MB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']} | {row['terrain_share_of_model_time']:.1%} | {row['rgb+terrain']['peak_rss_mb']} | "
              f"{row['rgb']['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
