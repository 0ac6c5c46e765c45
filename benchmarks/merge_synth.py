"""Does `rts merge` give each slump once, with better outlines and a useful detection rate? (CPU, synthetic)

1. A labelled set and a model, as `benchmarks/track_synth.py` makes them: three `rts synth` scenes (seed 7),
   `rts prepare` with their truth, `rts pretrain --preset nano` (one modality) for ``--steps`` steps.
2. One truth: an `rts synth` scene of 2048 x 2048 px at 3 m (seed 21, another place), cut into five
   overlapping windows of 1280 px ("scenes" of one date each, named with their July 2021 dates); the fifth
   has a 256 px square of nodata (a cloud) in its middle. Every place of the central part lies in several
   windows; slumps along window edges are seen cut in some and whole in others. With ``--vary`` each window
   also gets its own gain and noise, as another acquisition of the same ground would (the model then errs
   differently per window; without it the five windows hold the same pixels).
3. `rts predict` of the five windows into one folder (a map and a footprint layer each), then
   `rts merge` of the folder.
4. Against the truth: a polygon *hits* a truth slump when half of the smaller lies in the other (intersection
   over the smaller >= 0.5); a merged slump hitting no truth slump is a false positive.

   * duplicates: truth slumps hit by more than one merged slump (goal 0), for the merged map and, for
     reference, for the five maps pooled;
   * outlines: IoU of each truth slump with the merged slump that hits it, beside the same slumps' IoU in
     the best single scene (the scene whose outlines fit best on the slumps it saw), the best of the five
     views per slump (an oracle), and a consensus outline (where most of the views that detected it agree);
   * ``detection_rate`` of the merged slumps that are true vs false positives: both distributions.

    python benchmarks/merge_synth.py [--steps 800] [--modality rgb] [--min-score 0.3] [--vary]

Prints Markdown tables and writes ``results.json`` beside the runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from common import meta as run_meta
from common import run

SIZE, OFFSETS = 1280, [(0, 0), (768, 0), (0, 768), (768, 768), (384, 384)]
CLOUD = (512, 768)  # the nodata square of the fifth window: rows and columns 512..768 of it


def cut_windows(scene: Path, folder: Path, vary: bool = False) -> list[Path]:
    """The five windows of ``scene`` as GeoTIFFs named ``PS_2021070K_wK.tif``. With ``vary``, each window is
    another acquisition of the same ground: its own gain (0.92 to 1.08) and Gaussian noise (2 % of the median)."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(5)
    with rasterio.open(scene) as src:
        for k, (c, r) in enumerate(OFFSETS, 1):
            win = Window(c, r, SIZE, SIZE)
            data = src.read(window=win)
            if vary:
                valid = data != src.nodata
                gain = 1 + 0.04 * (k - 3)
                noisy = data * gain + rng.normal(0, 0.02 * float(np.median(data[valid])), data.shape)
                data = np.where(valid, np.clip(noisy, 1, np.iinfo(data.dtype).max), data).astype(data.dtype)
            if k == 5:
                data[:, CLOUD[0]:CLOUD[1], CLOUD[0]:CLOUD[1]] = src.nodata
            prof = src.profile | {"width": SIZE, "height": SIZE, "transform": src.window_transform(win)}
            p = folder / f"PS_2021070{k}_w{k}.tif"
            with rasterio.open(p, "w", **prof) as dst:
                dst.write(data)
                for i, d in enumerate(src.descriptions, 1):
                    dst.set_band_description(i, d or "")
            paths.append(p)
    return paths


def ios(a, b) -> float:
    inter = a.intersection(b).area
    return inter / max(min(a.area, b.area), 1e-9)


def iou(a, b) -> float:
    inter = a.intersection(b).area
    return inter / max(a.area + b.area - inter, 1e-9)


def hits(preds, truth) -> list[list[int]]:
    """For each truth slump, the predictions that hit it (intersection over the smaller >= 0.5)."""
    import shapely

    preds = list(preds)
    tree = shapely.STRtree(preds) if preds else None
    out = []
    for t in truth:
        near = tree.query(t, predicate="intersects").tolist() if tree is not None else []
        out.append([j for j in near if ios(preds[j], t) >= 0.5])
    return out


def consensus(views: list) -> object:
    """Where at least half (rounded up) of ``views`` agree."""
    from shapely import union_all

    k = (len(views) + 1) // 2
    if k <= 1:
        return union_all(views)
    parts = []
    for combo in itertools.combinations(views, k):
        g = combo[0]
        for h in combo[1:]:
            g = g.intersection(h)
        if not g.is_empty:
            parts.append(g)
    return union_all(parts) if parts else union_all(views)


def describe(values) -> dict:
    v = np.asarray([x for x in values if x == x], float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": round(float(v.mean()), 3), "median": round(float(np.median(v)), 3),
            "min": round(float(v.min()), 3), "max": round(float(v.max()), 3)}


def evaluate(truth_path: Path, maps: Path, merged_path: Path) -> dict:
    import geopandas as gpd
    import shapely

    truth = gpd.read_file(truth_path, layer="rts")
    crs = truth.crs
    merged = gpd.read_parquet(merged_path).to_crs(crs)
    names = sorted(p.stem for p in maps.glob("*.gpkg"))
    scene = {n: gpd.read_file(maps / f"{n}.gpkg", layer="rts").to_crs(crs) for n in names}
    foot = {n: gpd.read_file(maps / f"{n}.gpkg", layer="rts_footprint").to_crs(crs).union_all() for n in names}
    coverage = shapely.union_all(list(foot.values()))
    tg = [t for t in truth.geometry if coverage.intersection(t).area >= 0.5 * t.area]  # in the windows
    # duplicates: merged vs the five maps pooled
    hm = hits(merged.geometry, tg)
    pooled = [g for n in names for g in scene[n].geometry]
    hp = hits(pooled, tg)
    dup = {"truth_slumps": len(tg), "found_once": sum(len(h) == 1 for h in hm),
           "found_more_than_once": sum(len(h) > 1 for h in hm), "missed": sum(not h for h in hm),
           "pooled_more_than_once": sum(len(h) > 1 for h in hp),
           "merged_slumps_over_two_truths": int(sum(
               sum(j in h for h in hm) > 1 for j in range(len(merged))))}
    # outlines
    per_scene = {}
    for n in names:
        fp = foot[n]
        own = [t for t in tg if fp.intersection(t).area >= 0.999 * t.area]  # slumps wholly in the scene
        h = hits(scene[n].geometry, own)
        ious = [max(iou(scene[n].geometry.iloc[j], t) for j in hj) for t, hj in zip(own, h, strict=True) if hj]
        per_scene[n] = {"whole_in_scene": len(own), "found": len(ious), "mean_iou": describe(ious).get("mean")}
    best = max(names, key=lambda n: per_scene[n]["mean_iou"] or 0)
    fp_best = foot[best]
    own_best = [t for t in tg if fp_best.intersection(t).area >= 0.999 * t.area]
    hb = hits(scene[best].geometry, own_best)
    same = [(t, max(hj, key=lambda j: iou(scene[best].geometry.iloc[j], t))) for t, hj in zip(own_best, hb, strict=True)
            if hj]
    merged_on_best = []
    for t, _ in same:
        hj = hits(merged.geometry, [t])[0]
        merged_on_best.append(max(iou(merged.geometry.iloc[j], t) for j in hj) if hj else 0.0)
    rows_iou = {"merged": [], "oracle_best_view": [], "mean_of_views": [], "consensus": []}
    for t, hj in zip(tg, hm, strict=True):
        if not hj:
            continue
        j = max(hj, key=lambda j: iou(merged.geometry.iloc[j], t))
        out = merged.geometry.iloc[j]
        rows_iou["merged"].append(iou(out, t))
        views = [g for n in names for g in scene[n].geometry if g.intersects(out) and ios(g, out) >= 0.3]
        if views:
            vi = [iou(g, t) for g in views]
            rows_iou["oracle_best_view"].append(max(vi))
            rows_iou["mean_of_views"].append(float(np.mean(vi)))
            rows_iou["consensus"].append(iou(consensus(views), t))
    outlines = {k: describe(v) for k, v in rows_iou.items()}
    outlines["best_single_scene"] = {"scene": best, **per_scene[best],
                                     "its_mean_iou_on_its_slumps": describe([iou(scene[best].geometry.iloc[j], t)
                                                                             for t, j in same]).get("mean"),
                                     "merged_mean_iou_on_those_slumps": describe(merged_on_best).get("mean")}
    outlines["per_scene"] = per_scene
    # detection rate: true vs false positives of the merged map
    is_tp = np.zeros(len(merged), bool)
    for h in hits(merged.geometry, list(truth.geometry)):  # against every truth slump (also outside the centre)
        is_tp[h] = True
    rate = merged["detection_rate"].to_numpy(float)
    nobs = merged["n_observed"].to_numpy()
    bins = [0, 0.25, 0.5, 0.75, 0.999, 1.001]
    dist = {}
    for name, mask in (("true", is_tp), ("false", ~is_tp)):
        r = rate[mask]
        dist[name] = {**describe(r), "histogram": dict(zip(["<0.25", "0.25-0.5", "0.5-0.75", "0.75-1", "1"],
                                                         np.histogram(r[np.isfinite(r)], bins)[0].tolist(),
                                                         strict=True)),
                      "values": sorted(round(float(x), 3) for x in r if x == x),
                      "n_observed": dict(sorted((int(k), int(v)) for k, v in zip(*np.unique(nobs[mask],
                                                                                          return_counts=True),
                                                                                   strict=True))),
                      "partial_only": int(merged["partial_only"].to_numpy()[mask].sum())}
    keep = rate >= 0.5
    dist["keep_rate_at_least_0.5"] = {"true_kept": int((keep & is_tp).sum()), "true": int(is_tp.sum()),
                                      "false_kept": int((keep & ~is_tp).sum()), "false": int((~is_tp).sum())}
    return {"duplicates": dup, "outlines": outlines, "detection_rate": dist, "merged_slumps": len(merged)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/merge_synth")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--modality", default="rgb")
    ap.add_argument("--site", default="tuktoyaktuk")
    ap.add_argument("--min-score", type=float, default=0.3)
    ap.add_argument("--vary", action="store_true", help="each window its own gain and noise (another acquisition)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab, ds, model, one = out / "labelled", out / "ds", out / "model", out / "truth"
    times = {}
    if not lab.exists():
        run("synth", lab, "--chips", 0, "--scenes", 3, "--scene-size", 1536, "--site", args.site, "--seed", 7)
    if not ds.exists():
        scenes = sorted((lab / "scenes").glob("*.tif"))
        scenes = [s for s in scenes if not s.stem.endswith(("_udm2", "_SCL_20m"))]
        labels = [a for s in scenes for a in ("--labels", s.with_suffix(".gpkg"))]
        run("prepare", *scenes, *labels, "--bands", "planetscope4", "--chip-size", 256, "-o", ds)
    if not (model / "model.safetensors").exists():
        times["pretrain_s"] = round(run("pretrain", "--modality", args.modality, "--data", ds, "--preset", "nano",
                                        "--max-steps", args.steps, "--batch-size", args.batch_size, "--workers", 2,
                                        "--val-every", 4, "-o", model, "--overwrite"))
        run("evaluate", model, "--data", ds, "--split", "test", "--report", out / "eval_test.json")
    ap50 = json.loads((out / "eval_test.json").read_text())["metrics"]["segm"]["AP50"]
    if not one.exists():
        run("synth", one, "--chips", 0, "--scenes", 1, "--scene-size", 2048, "--site", args.site, "--seed", 21)
    scene = next(p for p in sorted((one / "scenes").glob("*.tif")))
    tag = "_vary" if args.vary else ""
    wins = cut_windows(scene, out / f"windows{tag}", args.vary)
    maps = out / f"maps{tag}"
    t = time.perf_counter()
    run("predict", *wins, "-o", maps, "--model", model, "--bands", "planetscope4", "--min-score", args.min_score,
        "--overwrite")
    times["predict_s"] = round(time.perf_counter() - t)
    merged = out / f"region_2021{tag}.parquet"
    times["merge_s"] = round(run("merge", maps, "-o", merged, "--overwrite"), 1)
    res = evaluate(scene.with_suffix(".gpkg"), maps, merged)
    meta = run_meta(args=vars(args), mask_ap50_test=ap50, **times)
    (out / f"results{tag}.json").write_text(json.dumps({"meta": meta, **res}, indent=2))
    d, o, r = res["duplicates"], res["outlines"], res["detection_rate"]
    print(f"\nrts merge of 5 overlapping windows of one truth: nano {args.modality} model, {args.steps} steps "
          f"(test mask AP50 {ap50:.3f}), --min-score {args.min_score} ({meta['date']}, {meta['cpus']} CPUs)\n")
    print(f"truth slumps in the windows: {d['truth_slumps']}; found once {d['found_once']}, more than once "
          f"{d['found_more_than_once']} (the 5 maps pooled: {d['pooled_more_than_once']}), missed {d['missed']}; "
          f"merged slumps over two truth slumps: {d['merged_slumps_over_two_truths']}\n")
    b = o["best_single_scene"]
    print("| outline | mean IoU with the truth | slumps |\n|---|---:|---:|")
    for k in ("merged", "consensus", "mean_of_views", "oracle_best_view"):
        print(f"| {k} | {o[k].get('mean')} | {o[k].get('n')} |")
    print(f"| best single scene ({b['scene']}), its {b['found']} slumps | {b['its_mean_iou_on_its_slumps']} | "
          f"{b['found']} |")
    print(f"| merged, on those same slumps | {b['merged_mean_iou_on_those_slumps']} | {b['found']} |")
    print("\n| merged slumps | n | detection_rate mean | median | histogram (<0.25, 0.25-0.5, 0.5-0.75, 0.75-1, 1) |")
    print("|---|---:|---:|---:|---|")
    for k in ("true", "false"):
        x = r[k]
        print(f"| {k} positives | {x['n']} | {x.get('mean')} | {x.get('median')} | "
              f"{', '.join(map(str, x.get('histogram', {}).values()))} |")
    k = r["keep_rate_at_least_0.5"]
    print(f"\nkeeping detection_rate >= 0.5: {k['true_kept']}/{k['true']} true, {k['false_kept']}/{k['false']} false")


if __name__ == "__main__":
    main()
