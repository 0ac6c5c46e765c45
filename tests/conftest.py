"""Shared fixtures: small georeferenced rasters built in temporary directories, and a CLI runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

DATA = Path(__file__).parent / "data"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def rts(capsys):
    """Run ``rts ARGS`` in-process; returns exit code, stdout and stderr."""
    from rtscli.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def write_tif(path: Path, data: np.ndarray, *, crs="EPSG:32608", transform=None, nodata=None,
              descriptions=None) -> Path:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform if transform is not None else Affine(10.0, 0.0, 470000.0, 0.0, -10.0, 7550000.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
    return path


def paper_sample(shape=(64, 64), rects=(), value=1000.0, seed=0) -> np.ndarray:
    """A sample in the paper's layout (R, G, B, NDVI, NIR, mask) with slumps at ``rects``.

    ``rects`` are (row0, row1, col0, col1), end-exclusive.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.empty((6, h, w), np.float32)
    img[:3] = value + rng.normal(0, 10, (3, h, w))
    img[4] = 3 * value + rng.normal(0, 10, (h, w))
    mask = np.zeros((h, w), np.float32)
    for r0, r1, c0, c1 in rects:
        mask[r0:r1, c0:c1] = 1
    img[:3] += mask * value
    img[4] -= mask * value
    img[3] = (img[4] - img[0]) / (img[4] + img[0])
    img[5] = mask
    return img


def apart(k: int, res: float = 10.0) -> Affine:
    """The transform of sample ``k`` of a test set: samples 5 km apart, so that none overlaps another on the
    map (`rts prepare` keeps overlapping images in one split)."""
    return Affine(res, 0.0, 470000.0 + 5000.0 * k, 0.0, -res, 7550000.0)


def write_training_samples(folder: Path, n: int) -> None:
    """``n`` 96 x 96 paper-layout samples of one site in ``folder``/site, each with two slumps."""
    for k in range(n):
        r0, c0 = 8 + 3 * k, 10 + 2 * k
        write_tif(folder / "site" / f"x{k}.tif",
                  paper_sample(shape=(96, 96), rects=[(r0, r0 + 30, c0, c0 + 25), (60, 80, 60, 90)], seed=k),
                  transform=apart(k))


def prepared_samples(root: Path, n: int, folder: str = "in") -> Path:
    """``n`` samples of :func:`write_training_samples` in ``root/folder``, prepared 50/25/25 into ``root/ds``
    (``rts prepare --bands paper``); returns the dataset folder."""
    from rtscli.cli import main

    write_training_samples(root / folder, n)
    args = ["prepare", str(root / folder), "-o", str(root / "ds"), "--bands", "paper", "--split", "0.5,0.25,0.25"]
    assert main(args) == 0
    return root / "ds"


@pytest.fixture
def data_dir():
    return DATA
