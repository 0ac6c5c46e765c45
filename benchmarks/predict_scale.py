"""`rts predict` at scale: speed, time split, peak memory, and seams, on synthetic scenes.

    python benchmarks/predict_scale.py --model BUNDLE [--sizes 2048,16384] [--out bench_out/predict_scale]

BUNDLE: a nano bundle (e.g. from `rts demo` or benchmarks/fusion_synth.py; they are trained on chips in
reflectance 0-1, and the scenes store reflectance x 10000 with a GDAL band scale of 0.0001, which rts
applies; older scenes without it need --scale 0.0001). For each size an
`rts synth` scene (3 m pixels, PlanetScope band order, truth polygons beside it) is made once, then
predicted in a fresh process (so its peak RSS is its own), with the real tiler and the default
options; the run reports tiles/s, km^2/h, the time split read / model / merge+polygonize / write,
and peak RSS. Seams: ground-truth slumps that cross a tile border are counted, and for each the
number of output polygons covering it; a slump "in more than one piece" has two or more. The same
per-tile detections are merged both ways in the same run: union (ours) and box-NMS (what SAHI-like
tilers do).
Goals (issue 5): RSS(16k) <= 1.3 x RSS(2k); read + merge + write < 15% of the total; 0 slumps in pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from common import meta as run_meta
from common import run


def one(scene: Path, model: Path, workers: int, batch: int, scale: float | None) -> dict:
    import geopandas as gpd
    from shapely.geometry import LineString

    from rtscli.data.bands import BandMap
    from rtscli.data.scenes import Source, open_scene
    from rtscli.data.tiling import tile_grid
    from rtscli.engine.predict import PredictOptions, default_overlap, predict_scene
    from rtscli.geometry.footprint import window_footprint
    from rtscli.geometry.measure import geodesic_area
    from rtscli.geometry.seams import Detection, box_nms
    from rtscli.geometry.affine import apply
    from rtscli.io.vector import write_vector
    from rtscli.modeling.bundle import load_model

    net, bundle = load_model(model)
    bands = BandMap.parse("planetscope4").as_dict()
    sc = open_scene([Source(scene, bands)], scale=scale, training=bundle.config.get("values"))
    sc_footprint = window_footprint(sc.transform, 0, 0, sc.width, sc.height)
    opts = PredictOptions(workers=workers, batch_size=batch)
    # every tile's raw instances go to a file (not memory), for the box-NMS comparison afterwards
    raw_path = scene.with_name(scene.stem + "_raw.jsonl")
    sink = raw_path.open("w")

    def keep(items: list) -> None:
        for it in items:
            sink.write(json.dumps([it.geometry.wkb_hex, it.score, it.tile, it.touches_nodata, it.touches_edge,
                                   list(it.bbox), it.cut]) + "\n")

    # resident size sampled 5x a second: the peak while tiles run, at their end, and after (merge, write)
    rss = {"tiles_peak": 0.0, "tiles_end": 0.0, "after_peak": 0.0}
    phase = ["tiles"]
    stop = threading.Event()

    def resident_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def sample() -> None:
        while not stop.wait(0.2):
            key = "tiles_peak" if phase[0] == "tiles" else "after_peak"
            rss[key] = max(rss[key], resident_mb())

    done = [0]

    def progress(k: int, n: int) -> None:
        done[0] += k
        if done[0] >= n:
            rss["tiles_end"] = resident_mb()
            phase[0] = "after"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    gdf, timing = predict_scene(net, bundle, sc, opts, on_tile=keep, progress=progress)
    sink.close()
    t = time.perf_counter()
    write_vector(gdf, scene.with_name(scene.stem + "_pred.gpkg"), overwrite=True)
    timing.write += time.perf_counter() - t
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stop.set()

    # seams: truth slumps crossing a tile border; output polygons covering each (union vs box-NMS)
    tile = bundle.tile_size
    overlap = default_overlap(tile, bundle.instance_sizes)
    origins = tile_grid(sc.width, sc.height, tile, overlap)
    cols = sorted({c for c, _ in origins} | {c + tile for c, _ in origins})
    rows = sorted({r for _, r in origins} | {r + tile for _, r in origins})
    T = sc.transform
    lines = [LineString([apply(T, c, 0), apply(T, c, sc.height)]) for c in cols] + \
            [LineString([apply(T, 0, r), apply(T, sc.width, r)]) for r in rows]
    truth = gpd.read_file(scene.with_suffix(".gpkg"))
    border = gpd.GeoSeries(lines, crs=truth.crs).union_all()
    straddling = truth[truth.intersects(border)]
    from shapely import from_wkb

    raw = [Detection(from_wkb(bytes.fromhex(r[0])), *r[1:5], tuple(r[5]), r[6])
           for r in map(json.loads, raw_path.read_text().splitlines())]
    raw_path.unlink()
    nms = box_nms(raw, threshold=0.5)
    pieces = {}
    for name, polys in (("union", list(gdf.geometry)),
                        ("box-nms", [m.geometry for m in nms if m.score >= opts.min_score])):
        s = gpd.GeoSeries(polys, crs=truth.crs)
        idx = s.sindex
        split = found = overlapping = 0
        for g in straddling.geometry:
            hits = [i for i in idx.query(g) if s.iloc[i].intersection(g).area >= 0.2 * min(s.iloc[i].area, g.area)]
            found += bool(hits)
            split += len(hits) > 1
            # pieces that overlap each other are a merging failure; disjoint pieces are the model's
            overlapping += any(s.iloc[a].intersection(s.iloc[b]).area > 0 for a in hits for b in hits if a < b)
        # precision: output polygons that cover (the same way) some truth slump
        tidx = truth.sindex
        hit = sum(any(p.intersection(truth.geometry.iloc[j]).area >= 0.2 * min(p.area, truth.geometry.iloc[j].area)
                      for j in tidx.query(p)) for p in polys)
        pieces[name] = {"detected": found, "in_pieces": split, "in_overlapping_pieces": overlapping,
                        "polygons": len(polys), "polygons_on_a_slump": round(hit / max(len(polys), 1), 3)}
    km2 = geodesic_area(sc_footprint, sc.crs) / 1e6  # the scene's true area on the ellipsoid
    tm = timing.as_dict()
    return {"size": f"{sc.width}x{sc.height}", "tiles": tm.tiles, "skipped": tm["skipped_nodata_tiles"],
            "seconds": round(total, 1), "tiles_per_s": round(tm.tiles / total, 2),
            "km2_per_h": round(km2 / total * 3600, 1), "read_s": tm["read"], "model_s": tm["model"],
            "merge_s": tm["merge"], "write_s": tm["write"],
            "read_in_workers_s": round(tm.get("read_in_workers_s", 0), 1),
            "peak_rss_mb": round(peak, 1), "rss_sampled_mb": {k: round(v, 1) for k, v in rss.items()},
            "polygons": len(gdf), "truth": len(truth),
            "straddling": len(straddling), "seams": pieces, "overlap_px": overlap,
            "fragments_dropped": tm.get("fragments_dropped", 0), "raw_instances": len(raw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--sizes", default="2048,16384")
    ap.add_argument("--out", default="bench_out/predict_scale")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--scale", type=float, default=None,
                    help="rts predict --scale (default: the scene's own band scale; `rts synth` scenes carry 0.0001)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one), Path(args.model), args.workers, args.batch_size, args.scale)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        d = out / f"synth_{size}"
        if not (d / "synth.yaml").exists():
            run("synth", d, "--chips", 0, "--scenes", 1, "--scene-size", size, "--seed", 3, "--site", "herschel",
                "--overwrite")
        scene = next((d / "scenes").glob("*.tif"))
        r = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", str(scene), "--workers",
                            str(args.workers), "--batch-size", str(args.batch_size),
                            *(["--scale", str(args.scale)] if args.scale is not None else [])],
                           check=True, capture_output=True,
                           text=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = run_meta(model=args.model)
    (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\n`rts predict` on synthetic scenes (3 m), {args.model}, {meta['cpus']} CPUs, {meta['date']}\n")
    print("| scene | tiles | s | tiles/s | km²/h | read | model | merge+polygons | write | non-model share | "
          "peak RSS MB | straddling slumps | in pieces: union / box-NMS | of which overlapping: union / box-NMS | "
          "polygons on a slump: union / box-NMS | fragments dropped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        non = (r["read_s"] + r["merge_s"] + r["write_s"]) / max(r["seconds"], 1e-9)
        print(f"| {r['size']} | {r['tiles']} | {r['seconds']} | {r['tiles_per_s']} | {r['km2_per_h']} | "
              f"{r['read_s']:.1f} | {r['model_s']:.1f} | {r['merge_s']:.1f} | {r['write_s']:.1f} | {non:.1%} | "
              f"{r['peak_rss_mb']} | {r['straddling']} (found: {r['seams']['union']['detected']} / "
              f"{r['seams']['box-nms']['detected']}) | "
              f"{r['seams']['union']['in_pieces']} / {r['seams']['box-nms']['in_pieces']} | "
              f"{r['seams']['union'].get('in_overlapping_pieces', '-')} / "
              f"{r['seams']['box-nms'].get('in_overlapping_pieces', '-')} | "
              f"{r['seams']['union']['polygons_on_a_slump']:.1%} / "
              f"{r['seams']['box-nms']['polygons_on_a_slump']:.1%} | "
              f"{r['fragments_dropped']} of {r['raw_instances']} |")
    if len(rows) >= 2:
        print(f"\npeak RSS ratio {rows[-1]['size']} / {rows[0]['size']}: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
