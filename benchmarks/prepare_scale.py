"""How `rts prepare` (scenes + vector labels) scales: wall time, MB/s and peak RSS.

Writes synthetic scenes of 2k x 2k and 16k x 16k pixels (3 m, 4 bands uint16) with their truth
polygons, then times `rts prepare` on each in a fresh process and reads the peak RSS of that process
(``ru_maxrss`` of the child). Goal: the 16k scene's peak RSS within 1.5x of the 2k scene's, because
everything is read and written by window.

    python benchmarks/prepare_scale.py [--sizes 2048,16384] [--out bench_out/prepare_scale]

Prints a Markdown table and writes ``results.json`` beside the data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from common import RTS, measured
from common import meta as run_meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2048,16384")
    ap.add_argument("--out", default="bench_out/prepare_scale")
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = []
    for size in sizes:
        scene_dir = out / f"scene_{size}"
        tif = scene_dir / "scenes" / "scene_00_tuktoyaktuk.tif"
        synth = None
        if not tif.exists():
            synth = measured([*RTS, "synth", str(scene_dir), "--chips", "0", "--scenes", "1",
                              "--scene-size", str(size), "--site", "tuktoyaktuk", "--seed", "1", "--overwrite"])
            print(f"synth {size}: {synth['wall']:.1f} s, peak RSS {synth['rss_mb']:.0f} MB", file=sys.stderr)
        ds = out / f"dataset_{size}"
        cmd = [*RTS, "prepare", str(tif), "--labels", str(tif.with_suffix(".gpkg")),
               "-o", str(ds), "--bands", "planetscope4", "--chip-size", str(args.chip_size),
               "--overlap", str(args.overlap), "--overwrite"]
        res = measured(cmd)
        manifest = (ds / "manifest.yaml").read_text()
        import yaml

        m = yaml.safe_load(manifest)
        chips = sum(m["counts"]["total"][s]["images"] for s in ("train", "val", "test"))
        inst = sum(m["counts"]["total"][s]["instances"] for s in ("train", "val", "test"))
        mb = tif.stat().st_size / 1e6
        raw_mb = size * size * 4 * 2 / 1e6
        rows.append(dict(size=size, megapixels=size * size / 1e6, scene_mb_on_disk=round(mb, 1),
                         scene_mb_raw=round(raw_mb, 1), chips=chips, instances=inst,
                         wall_s=round(res["wall"], 2), mb_per_s_raw=round(raw_mb / res["wall"], 2),
                         peak_rss_mb=round(res["rss_mb"], 1),
                         synth_wall_s=round(synth["wall"], 1) if synth else None,
                         synth_peak_rss_mb=round(synth["rss_mb"], 1) if synth else None))
        print(f"prepare {size}: {res['wall']:.1f} s, peak RSS {res['rss_mb']:.0f} MB", file=sys.stderr)
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["rss_ratio_vs_smallest"] = round(r["peak_rss_mb"] / base, 3)
    meta = run_meta(chip_size=args.chip_size, overlap=args.overlap)
    (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\n`rts prepare` scenes + vector labels, chip {args.chip_size}, overlap {args.overlap}, "
          f"{meta['cpus']} CPUs, {meta['date']}\n")
    print("| scene | chips | slumps (instances) | wall s | MB/s (raw) | peak RSS MB | RSS vs 2k |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} x {r['size']} ({r['scene_mb_raw']:.0f} MB raw) | {r['chips']} | {r['instances']} | "
              f"{r['wall_s']} | {r['mb_per_s_raw']} | {r['peak_rss_mb']} | {r['rss_ratio_vs_smallest']}x |")
    if all(r["synth_wall_s"] is not None for r in rows):
        print("\n`rts synth` writing the same scenes (by window):\n")
        print("| scene | wall s | peak RSS MB |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['size']} x {r['size']} | {r['synth_wall_s']} | {r['synth_peak_rss_mb']} |")
    ok = rows[-1]["rss_ratio_vs_smallest"] <= 1.5
    print(f"\ngoal (largest within 1.5x of smallest peak RSS): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
