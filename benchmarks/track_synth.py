"""Does `rts track` recover how slumps change when it reads *predicted* maps? (CPU, synthetic data)

1. A labelled set: `rts synth` scenes (their own seed), `rts prepare` with their truth, `rts pretrain` of a
   nano model (one modality) for ``--steps`` steps.
2. A series: one `rts synth --years N` scene (another seed): slumps grow along their headwalls, two merge, one
   appears and one stabilizes each year, with the truth of every date.
3. `rts predict` of every date, `rts track` of the predicted maps (``--gone stabilized``: maps of active
   slumps), and, for reference, `rts track` of the truth maps.
4. The share of the truth relations recovered (:func:`rtscli.synth.series.relation_recovery`), per relation, and
   the share of truth slumps found at each date (a predicted polygon over at least half of it).

    python benchmarks/track_synth.py [--steps 800] [--years 3] [--modality rgb]

Prints a Markdown table and writes ``results.json``, the growth plot and the quicklook beside the runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import meta as run_meta
from common import run


def found(truth: Path, pred: Path) -> tuple[int, int]:
    """(truth slumps with a predicted polygon over at least half of them, truth slumps) at one date."""
    import geopandas as gpd

    from rtscli.geometry.polygons import overlap

    t = gpd.read_file(truth, layer="rts")
    p = gpd.read_file(pred, layer="rts").to_crs(t.crs)
    hit = sum(any(overlap(g, q, "ios") >= 0.5 for q in p.geometry if q.intersects(g)) for g in t.geometry)
    return hit, len(t)


def main() -> None:
    import geopandas as gpd

    from rtscli.synth.series import relation_recovery

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/track_synth")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--modality", default="rgb")
    ap.add_argument("--years", type=int, default=3)
    ap.add_argument("--site", default="tuktoyaktuk")
    ap.add_argument("--min-score", type=float, default=0.5)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab, ds, model, series = out / "labelled", out / "ds", out / "model", out / "series"
    times = {}
    if not lab.exists():
        run("synth", lab, "--chips", 0, "--scenes", 3, "--scene-size", 1536, "--site", args.site, "--seed", 7)
    if not ds.exists():
        scenes = sorted((lab / "scenes").glob("*.tif"))
        labels = [a for s in scenes for a in ("--labels", s.with_suffix(".gpkg"))]
        run("prepare", *scenes, *labels, "--bands", "planetscope4", "--chip-size", 256, "-o", ds)
    if not (model / "model.safetensors").exists():
        times["pretrain_s"] = round(run("pretrain", "--modality", args.modality, "--data", ds, "--preset", "nano",
                                        "--max-steps", args.steps, "--batch-size", args.batch_size, "--workers", 2,
                                        "--val-every", 4, "-o", model, "--overwrite"))
        run("evaluate", model, "--data", ds, "--split", "test", "--report", out / "eval_test.json")
    ap50 = json.loads((out / "eval_test.json").read_text())["metrics"]["segm"]["AP50"]
    if not series.exists():
        run("synth", series, "--chips", 0, "--scenes", 1, "--scene-size", "1280x1024", "--years", args.years,
            "--site", args.site, "--seed", 21)
    tifs = sorted((series / "scenes").glob("*.tif"))
    truth = [t.with_suffix(".gpkg") for t in tifs]
    maps = out / "maps"
    t = time.perf_counter()
    run("predict", *tifs, "-o", maps, "--model", model, "--bands", "planetscope4", "--min-score", args.min_score,
        "--overwrite")
    times["predict_s"] = round(time.perf_counter() - t)
    pred = [maps / f"{t.stem}.gpkg" for t in tifs]
    run("track", *pred, "-o", out / "changes.gpkg", "--gone", "stabilized", "--plot", out / "growth.png",
        "--quicklook", out / "tracks.png", "--overwrite")
    run("track", *truth, "-o", out / "changes_truth.gpkg", "--gone", "stabilized", "--overwrite")
    score = relation_recovery(truth[1:], gpd.read_file(out / "changes.gpkg", layer="observations"))
    ref = relation_recovery(truth[1:], gpd.read_file(out / "changes_truth.gpkg", layer="observations"))
    detected = [found(a, b) for a, b in zip(truth, pred, strict=True)]
    meta = run_meta(args=vars(args), mask_ap50_test=ap50, **times)
    (out / "results.json").write_text(json.dumps({"meta": meta, "predicted": score, "truth_maps": ref,
                                                  "detected": detected}, indent=2))
    print(f"\nrts track on predicted maps: nano {args.modality} model, {args.steps} steps (test mask AP50 {ap50:.3f}),"
          f" one {args.years}-date series 1280 x 1024 px ({meta['date']}, {meta['cpus']} CPUs)\n")
    print("| relation | recovered from predicted maps | from the truth maps |")
    print("|---|---:|---:|")
    for rel in ("continued", "merged", "new", "stabilized"):
        a, b = score.get(rel, [0, 0]), ref.get(rel, [0, 0])
        print(f"| {rel} | {a[0]}/{a[1]} | {b[0]}/{b[1]} |")
    print(f"| **all** | **{score['share']:.0%}** | **{ref['share']:.0%}** |")
    print("\ntruth slumps found per date: " + ", ".join(f"{h}/{n}" for h, n in detected))


if __name__ == "__main__":
    main()
