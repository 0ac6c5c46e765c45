"""How long `rts prepare --coco` takes on a COCO set, and its peak memory.

Writes a COCO instance dataset as labelling tools export it: N JPEG images of S x S pixels without
georeference and two polygon annotations per image (a train and a test file, 80/20), then runs
`rts prepare --coco` on it in a fresh process and reads that process's peak RSS (``ru_maxrss`` of the
child). Two runs: the images kept whole, and cut into chips of half their side (annotations clipped).

    python benchmarks/coco_import.py [--images 1000] [--size 300] [--out bench_out/coco_import]

Prints a Markdown table and writes ``results.json`` beside the data.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from common import RTS, measured
from common import meta as run_meta

import numpy as np


def write_coco(root: Path, n: int, size: int, seed: int = 0) -> int:
    """N JPEG images with two polygon slumps each; returns the number of annotations written."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    docs = {s: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "rts"}]} for s in ("train", "test")}
    aid = 0
    for i in range(n):
        split = "test" if i % 5 == 0 else "train"
        img = (rng.random((size, size, 3)) * 60 + 80).astype(np.uint8)
        for _ in range(2):
            cx, cy = (int(v) for v in rng.integers(size // 6, size - size // 6, 2))
            axes = tuple(int(v) for v in rng.integers(size // 30, size // 8, 2))
            pts = cv2.ellipse2Poly((cx, cy), axes, int(rng.integers(0, 180)), 0, 360, 12)
            cv2.fillPoly(img, [pts], (200, 90, 40))
            poly = pts.astype(float).ravel().tolist()
            x, y = pts.min(0)
            w, h = pts.max(0) - pts.min(0)
            aid += 1
            docs[split]["annotations"].append({"id": aid, "image_id": i, "category_id": 1, "iscrowd": 0,
                                               "segmentation": [poly], "bbox": [float(x), float(y), float(w), float(h)],
                                               "area": float(cv2.contourArea(pts))})
        cv2.imwrite(str(root / "images" / f"img{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        docs[split]["images"].append({"id": i, "file_name": f"img{i:05d}.jpg", "width": size, "height": size})
    for s, d in docs.items():
        (root / f"instances_{s}.json").write_text(json.dumps(d))
    return aid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--out", default="bench_out/coco_import")
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "coco"
    if data.exists():
        shutil.rmtree(data)
    n_ann = write_coco(data, args.images, args.size)
    rows = []
    for label, extra in (("whole images", []), (f"cut into {args.size // 2} px chips", ["--chip-size",
                                                                                        str(args.size // 2)])):
        ds = out / ("ds_whole" if not extra else "ds_cut")
        cmd = [*RTS, "prepare", "--coco", str(data / "instances_train.json"), "--coco",
               str(data / "instances_test.json"), "--images", str(data / "images"), "-o", str(ds), "--overwrite",
               *extra]
        res = measured(cmd)
        anns = sum(len(json.loads((ds / f"{s}.json").read_text())["annotations"]) for s in ("train", "val", "test"))
        chips = sum(len(json.loads((ds / f"{s}.json").read_text())["images"]) for s in ("train", "val", "test"))
        rows.append({"run": label, "images": args.images, "annotations_in": n_ann, "chips_out": chips,
                     "annotations_out": anns, "wall_s": round(res["wall"], 1),
                     "images_per_s": round(args.images / res["wall"], 1), "peak_rss_mb": round(res["rss_mb"])})
    meta = run_meta(image_side_px=args.size)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"rts prepare --coco, {args.images} JPEG images of {args.size} px, {n_ann} polygons "
          f"({meta['date']}, {meta['cpus']} CPUs)\n")
    print("| run | chips out | annotations out | wall (s) | images/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['chips_out']} | {r['annotations_out']} | {r['wall_s']} | {r['images_per_s']} | "
              f"{r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
