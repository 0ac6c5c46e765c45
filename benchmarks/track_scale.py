"""How long `rts track` takes for many slumps: N slumps at each of three dates, each growing 10 m a year.

    python benchmarks/track_scale.py [--slumps 2000,10000,30000]

Slumps are 60 x 60 m boxes spread over 200 x 200 km (Lambert equal-area at 70 N); the matching, relations,
areas, advance and tables are timed in-process (reading and writing files are not). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import date
from pathlib import Path
from common import meta as run_meta

import numpy as np

SITE = "+proj=laea +lat_0=70 +lon_0=-130 +datum=WGS84 +units=m"


def one(n: int) -> dict:
    import geopandas as gpd
    from shapely.geometry import box

    from rtscli.track.change import Tracker, TrackOptions
    from rtscli.track.maps import SlumpMap, load_maps
    from rtscli.track.tables import layers

    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, 200_000, n), rng.uniform(0, 200_000, n)
    maps = []
    for k in range(3):
        d = date(2019 + k, 7, 15)
        gdf = gpd.GeoDataFrame({"date": [d] * n, "date_given": d.isoformat(), "touches_edge": False,
                                "touches_nodata": False, "source": "x"},
                               geometry=[box(x, y, x + 60, y + 60 + 10 * k) for x, y in zip(xs, ys, strict=True)],
                               crs=SITE)
        maps.append(SlumpMap(Path(f"{k}.gpkg"), None, gdf, None, "--dates", 0, d))
    t0 = time.perf_counter()
    frames, crs, _ = load_maps(maps)
    t1 = time.perf_counter()
    tracker = Tracker(crs, TrackOptions())
    tracker.run(frames)
    t2 = time.perf_counter()
    out = layers(tracker)
    t3 = time.perf_counter()
    continued = int((out["observations"]["relation"] == "continued").sum())  # random boxes may overlap: a few merge
    return {"slumps": n, "load_s": round(t1 - t0, 1), "track_s": round(t2 - t1, 1), "tables_s": round(t3 - t2, 1),
            "ms_per_observation": round(1000 * (t3 - t0) / (3 * n), 2),
            "continued_share": round(continued / (2 * n), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slumps", default="2000,10000,30000")
    args = ap.parse_args()
    rows = [one(int(n)) for n in args.slumps.split(",")]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = run_meta()
    print(f"\nrts track, 3 dates ({m['date']}, {m['machine']}, {m['cpus']} CPUs; peak RSS {rss:.0f} MB)\n")
    print("| slumps per date | reproject (s) | track (s) | tables (s) | ms per observation | continued |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['slumps']:,} | {r['load_s']} | {r['track_s']} | {r['tables_s']} | {r['ms_per_observation']} | "
              f"{r['continued_share']:.2%} |")


if __name__ == "__main__":
    main()
