"""Time and peak memory of `rts merge` as the number of per-scene maps grows (CPU, synthetic maps).

    python benchmarks/merge_scale.py [--maps 200,2000] [--per-map 500] [--out bench_out/merge_scale]

Each size is a region of slumps ("truth": random ellipses 20-150 m across, 5.6 per km²) seen by scenes of
10 x 10 km laid on a grid with a 5 km stride, so that every place lies in four scenes and the region grows with
the number of maps (the density of polygons stays the same). Each scene's map is an `rts predict`-like
GeoPackage (layer `rts`: score, scene, model, touches_edge, touches_nodata; layer `rts_footprint`): every truth
slump in the scene is detected with probability 0.9 (outline jittered by up to 2 m, a score), slumps cut by the
scene edge are clipped and flagged, and each scene adds false positives until it holds ``--per-map`` polygons.
The maps are made with shapely, not with a model (thousands of maps in minutes).

`rts merge DIR -o region.parquet` runs in a fresh interpreter per size (its wall time, CPU time and peak RSS, the
largest child's ``ru_maxrss``). Then the merged map is checked against the truth: truth slumps that come out more than
once (goal 0) and truth slumps detected by some scene but missing. Prints JSON (and writes ``results.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from common import meta as run_meta
from common import RTS

# one interpreter per measurement: wall time, CPU time (user + system: less sensitive than wall time to other
# work on a shared machine) and peak RSS of that run alone (the largest child's ru_maxrss)
_PROBE = (
    "import resource, subprocess, sys, time, json;"
    "t=time.perf_counter();"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
    "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(json.dumps({'wall': time.perf_counter()-t, 'cpu': r.ru_utime + r.ru_stime, 'rss_mb': r.ru_maxrss/1024}))"
)


def measured(cmd: list) -> dict:
    """Run ``cmd`` in a fresh interpreter: ``{"wall": s, "cpu": s, "rss_mb": peak RSS}``."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _PROBE, *map(str, cmd)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)

CRS = "EPSG:32608"
X0, Y0 = 400_000.0, 7_400_000.0
SCENE, STRIDE = 10_000.0, 5_000.0
DENSITY = 5.6  # truth slumps per km²
P_DETECT = 0.9


def grid(n: int) -> tuple[int, int]:
    """Columns and rows of ``n`` scenes, about twice as wide as high."""
    rows = max(1, round(math.sqrt(n / 2)))
    return math.ceil(n / rows), rows


def make(folder: Path, n_maps: int, per_map: int, seed: int = 0) -> dict:
    """Write ``n_maps`` per-scene maps into ``folder`` (see the module docstring) and the truth beside it."""
    import geopandas as gpd
    import pyogrio
    import shapely

    rng = np.random.default_rng(seed)
    cols, rows = grid(n_maps)
    width, height = (cols - 1) * STRIDE + SCENE, (rows - 1) * STRIDE + SCENE
    n_truth = rng.poisson(DENSITY * width * height / 1e6)
    cx, cy = rng.uniform(0, width, n_truth) + X0, rng.uniform(0, height, n_truth) + Y0
    rx, ry = rng.uniform(10, 75, n_truth), rng.uniform(10, 75, n_truth)
    angle = rng.uniform(0, 180, n_truth)
    truth = _ellipses(cx, cy, rx, ry, angle)
    keep = _apart(truth)  # truth slumps do not overlap one another
    truth, cx, cy, rx, ry, angle = truth[keep], cx[keep], cy[keep], rx[keep], ry[keep], angle[keep]
    tree = shapely.STRtree(truth)
    folder.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame({"truth_id": np.arange(len(truth))}, geometry=truth, crs=CRS).to_parquet(
        folder.parent / f"{folder.name}_truth.parquet")
    polygons = 0
    k = 0
    for r in range(rows):
        for c in range(cols):
            if k == n_maps:
                break
            x, y = X0 + c * STRIDE, Y0 + r * STRIDE
            fp = shapely.box(x, y, x + SCENE, y + SCENE)
            inside = tree.query(fp, predicate="intersects")
            seen = inside[rng.random(len(inside)) < P_DETECT]
            jitter = rng.uniform(-2, 2, (len(seen), 2))
            geoms = _ellipses(cx[seen] + jitter[:, 0], cy[seen] + jitter[:, 1], rx[seen] * rng.uniform(0.95, 1.05),
                              ry[seen] * rng.uniform(0.95, 1.05), angle[seen])
            cut = ~shapely.contains(fp, geoms)
            geoms[cut] = shapely.intersection(geoms[cut], fp)
            want = max(0, per_map - len(geoms))
            m = 2 * want + 10  # candidates: those over the scene's own detections are dropped (a scene's map never
            fx, fy = rng.uniform(x + 100, x + SCENE - 100, m), rng.uniform(y + 100, y + SCENE - 100, m)  # overlaps
            false = _ellipses(fx, fy, rng.uniform(8, 40, m), rng.uniform(8, 40, m), rng.uniform(0, 180, m))  # itself)
            alone = _apart(np.concatenate([geoms, false]))
            clear = alone[len(geoms):] & ~np.isin(np.arange(m), shapely.STRtree(geoms).query(false)[0]) \
                if len(geoms) else alone
            false = false[clear][:want]
            n_fp = len(false)
            geoms = np.concatenate([geoms, false])
            n = len(geoms)
            scene = f"PS_2021{7 + (k % 3):02d}{1 + k % 28:02d}_{k:05d}"
            score = np.concatenate([rng.uniform(0.6, 0.99, len(seen)), rng.uniform(0.5, 0.8, n_fp)])
            g = gpd.GeoDataFrame({"id": np.arange(1, n + 1), "score": score.round(4), "scene": scene,
                                  "model": "nano@bench", "touches_edge": np.concatenate([cut, np.zeros(n_fp, bool)]),
                                  "touches_nodata": np.zeros(n, bool)}, geometry=geoms, crs=CRS)
            path = folder / f"{scene}.gpkg"
            pyogrio.write_dataframe(g, path, layer="rts")
            pyogrio.write_dataframe(gpd.GeoDataFrame({"scene": [scene]}, geometry=[fp], crs=CRS), path,
                                    layer="rts_footprint")
            polygons += n
            k += 1
    return {"maps": k, "polygons": polygons, "truth": len(truth), "region_km": [width / 1e3, height / 1e3]}


def _ellipses(cx, cy, rx, ry, angle) -> np.ndarray:
    """Ellipses (16 vertices) as a shapely array."""
    import shapely

    t = np.linspace(0, 2 * np.pi, 17)[:-1]
    a = np.radians(angle)[:, None]
    ex, ey = rx[:, None] * np.cos(t), ry[:, None] * np.sin(t)
    x = cx[:, None] + ex * np.cos(a) - ey * np.sin(a)
    y = cy[:, None] + ex * np.sin(a) + ey * np.cos(a)
    ring = np.stack([x, y], axis=-1)
    ring = np.concatenate([ring, ring[:, :1]], axis=1)
    return shapely.polygons(ring)


def _apart(geoms) -> np.ndarray:
    """Which of ``geoms`` to keep so that none overlaps an earlier kept one."""
    import shapely

    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = np.ones(len(geoms), bool)
    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        if a < b and keep[a]:
            keep[b] = False
    return keep


def check(out: Path, truth_path: Path) -> dict:
    """Truth slumps that more than one merged slump hits, and those none hits (a merged slump hits a truth slump
    when half of the smaller lies in the other: intersection over the smaller >= 0.5)."""
    import geopandas as gpd
    import shapely

    merged = gpd.read_parquet(out)
    truth = gpd.read_parquet(truth_path).to_crs(merged.crs)
    t, m = truth.geometry.values, merged.geometry.values
    left, right = shapely.STRtree(m).query(t, predicate="intersects")
    inter = shapely.area(shapely.intersection(t[left], m[right]))
    ios = inter / np.maximum(np.minimum(shapely.area(t[left]), shapely.area(m[right])), 1e-9)
    per_truth = np.bincount(left[ios >= 0.5], minlength=len(truth))
    return {"slumps": len(merged), "truth_more_than_once": int((per_truth > 1).sum()),
            "truth_not_in_the_map": int((per_truth == 0).sum()),
            "n_observed_max": int(merged["n_observed"].max()) if len(merged) else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", default="200,2000")
    ap.add_argument("--per-map", type=int, default=500)
    ap.add_argument("--block-km", type=float, default=50.0)
    ap.add_argument("--out", default="bench_out/merge_scale")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for n in [int(v) for v in args.maps.split(",")]:
        folder = out / f"maps_{n}"
        info_file = out / f"maps_{n}.json"
        if not info_file.exists():
            t = time.perf_counter()
            info = make(folder, n, args.per_map)
            info["make_s"] = round(time.perf_counter() - t, 1)
            info_file.write_text(json.dumps(info))
        info = json.loads(info_file.read_text())
        merged = out / f"region_{n}.parquet"
        m = measured([*RTS, "-q", "merge", folder, "-o", merged, "--overwrite", "--block-km", args.block_km])
        row = {**info, "wall_s": round(m["wall"], 1), "cpu_s": round(m["cpu"], 1), "rss_mb": round(m["rss_mb"]),
               **check(merged, out / f"maps_{n}_truth.parquet")}
        row["us_per_polygon"] = round(1e6 * m["wall"] / info["polygons"], 1)
        row["cpu_us_per_polygon"] = round(1e6 * m["cpu"] / info["polygons"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"meta": run_meta(args=vars(args)), "rows": rows}
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        res["ratio"] = {"polygons": round(b["polygons"] / a["polygons"], 2),
                        "time": round(b["wall_s"] / a["wall_s"], 2), "cpu_time": round(b["cpu_s"] / a["cpu_s"], 2),
                        "memory": round(b["rss_mb"] / a["rss_mb"], 2)}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
