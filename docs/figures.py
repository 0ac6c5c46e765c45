"""Make docs/img/synth_vs_real.png: synthetic thaw-slump data next to the real Sentinel-2 scenes.

    python docs/figures.py [--shared ../shared/data/rts-digitization]

Top rows: the two real scenes of the RTS digitization experiment (Sentinel-2, 10 m, 2.5 km across;
expert 01's slump polygons in red) and two synthetic scenes rendered on the same 10 m grid, in true
colour and NDVI. Bottom row: synthetic 3 m chips (PlanetScope-like) with their truth outlines; a
"weak" slump is one whose RGB contrast is low but whose NDVI shows it. Real scenes get a 2-98%
stretch per channel (their Sentinel-2 DN carry an offset); synthetic panels share one fixed stretch
so that their contrasts compare with each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402

from rtscli.data.modalities import ndvi  # noqa: E402
from rtscli.io.raster import apply  # noqa: E402
from rtscli.synth.plan import make_plan  # noqa: E402
from rtscli.synth.render import render  # noqa: E402
from rtscli.synth.sites import SITES  # noqa: E402


def stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98% stretch per channel (the usual GIS display; removes offsets and colour casts alike)."""
    out = np.zeros_like(rgb, dtype=np.float32)
    for c in range(3):
        lo, hi = np.percentile(rgb[..., c][valid], [2, 98])
        out[..., c] = np.clip((rgb[..., c] - lo) / (hi - lo + 1e-9), 0, 1)
    out[~valid] = 1.0
    return out


def fixed(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One fixed stretch for all synthetic panels (reflectance x 10000), so contrasts compare."""
    out = np.clip(rgb / np.array([1100.0, 1200.0, 1100.0], np.float32), 0, 1) ** 0.8
    out[~valid] = 1.0
    return out


def outline(ax, geoms, transform, color="red"):
    inv = ~transform
    for g in geoms:
        for p in getattr(g, "geoms", [g]):
            xy = np.array(p.exterior.coords)
            cr = np.array([apply(inv, x, y) for x, y in xy])
            ax.plot(cr[:, 0] - 0.5, cr[:, 1] - 0.5, color=color, lw=0.8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data/rts-digitization")
    ap.add_argument("--out", default="docs/img/synth_vs_real.png")
    args = ap.parse_args()
    shared = Path(args.shared)

    fig, axes = plt.subplots(3, 4, figsize=(16, 12.4))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])

    for k, site in enumerate(["Peel", "Bykovsky"]):
        tif = next((shared / site).glob("S2_*.tif"))
        with rasterio.open(tif) as src:
            img = src.read([3, 2, 1, 7]).astype(np.float32)  # red, green, blue, nir
            t = src.transform
        valid = img[0] > 0
        rgb = stretch(np.moveaxis(img[:3], 0, -1), valid)
        polys = gpd.read_file(next((shared / site / "experts").glob("expert01_*.shp"))).geometry
        axes[0, k].imshow(rgb)
        outline(axes[0, k], polys, t)
        axes[0, k].set_title(f"real: {site}, Sentinel-2 10 m (expert 01)")
        axes[1, k].imshow(np.ma.masked_where(~valid, ndvi(img[3], img[0], valid)), cmap="RdYlGn", vmin=-0.2, vmax=0.8)
        axes[1, k].set_title(f"real: {site}, NDVI")

    from rasterio.transform import Affine

    for k, (site, seed) in enumerate([("herschel", 6), ("yamal_gydan", 9)]):
        plan = make_plan(251, 251, SITES[site], seed=seed, resolution=10.0)
        img, valid, mask = render(plan, 0, 0, 251, 251)
        blue, green, red, nir = img
        rgb = fixed(np.stack([red, green, blue], -1), valid)
        ax = axes[0, 2 + k]
        ax.imshow(rgb)
        outline(ax, [s.geometry for s in plan.slumps], Affine.identity())
        ax.set_title(f"synthetic: {site}, 10 m grid (truth)")
        axes[1, 2 + k].imshow(np.ma.masked_where(~valid, ndvi(nir, red, valid)), cmap="RdYlGn", vmin=-0.2, vmax=0.8)
        axes[1, 2 + k].set_title(f"synthetic: {site}, NDVI")

    shown = 0
    tries = [(s, 100 + i) for i, s in enumerate(["tuktoyaktuk", "banks", "lena"])]
    tries += [("herschel", 200 + k) for k in range(20)]  # find a weak-RGB slump for the last panel
    for site, seed in tries:
        plan = make_plan(768, 768, SITES[site], seed=seed, slump_density=4)
        central = [s for s in plan.slumps if 250 < s.geometry.centroid.x < 520 and 250 < s.geometry.centroid.y < 520]
        want_weak = shown == 3
        pick = [s for s in central if s.weak == want_weak]
        if not pick:
            continue
        c = pick[0].geometry.centroid
        r0, c0 = int(c.y) - 128, int(c.x) - 128
        img, valid, mask = render(plan, r0, c0, 256, 256)
        blue, green, red, nir = img
        ax = axes[2, shown]
        ax.imshow(fixed(np.stack([red, green, blue], -1), valid))
        ax.contour(mask, [0.5], colors="red", linewidths=0.8)
        ax.set_title(f"synthetic chip: {site}, 3 m" + (" (weak-RGB slump)" if want_weak else ""))
        shown += 1
        if shown == 4:
            break
    fig.suptitle("Real Sentinel-2 scenes (Nitze et al. 2024, MIT) vs `rts synth` (red: slump outlines)", fontsize=14)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
