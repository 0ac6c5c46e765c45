"""A small file that asks for a huge allocation: nothing sized by a file header (or a COCO entry) is allocated before
it is checked (issue 20, point 2).

The files here are a few KB and claim 60000 x 60000 px (3.6 G pixels). Runs that could allocate that much go to a
child process whose address space may grow by 2 GiB at most (``resource.setrlimit``), so that a regression fails
the test with a MemoryError (exit 1) or a crash instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from pycocotools import mask as mask_utils
from rasterio.transform import Affine

from test_coco_import import write_coco

HUGE = 60000
HEADROOM = 2 << 30  # bytes of address space the child may add: far less than one 60000 x 60000 band (3.4 GiB)


def _limited(code: str, *args, preload: tuple[str, ...] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    """Python ``code`` in a child process, ``args`` as sys.argv[1:], under a memory limit: the address space in use
    once ``preload`` (and rasterio, pycocotools, OpenCV) are imported, plus 2 GiB (``resource.setrlimit``; torch
    alone maps 3 GiB of address space when imported, so it is imported before the limit when the code needs it)."""
    child = (
        "import re, resource, sys\n"
        f"import rasterio, pycocotools.mask, cv2{''.join(', ' + m for m in preload)}\n"
        "used = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        f"resource.setrlimit(resource.RLIMIT_AS, (used + {HEADROOM}, used + {HEADROOM}))\n"
    )
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", child + code, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=full)


def _rts_limited(*args, preload: tuple[str, ...] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    """``rts ARGS`` in a child process under the memory limit."""
    return _limited("from rtscli.cli import main\nsys.exit(main(sys.argv[1:]))\n", *args, preload=preload, env=env)


def _one_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """The run's one ``rts: error:`` line, checked to exist alone, with exit code 2 and each of ``words``."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("rts: error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def jpeg_claiming(path: Path, width: int = HUGE, height: int = HUGE) -> Path:
    """A 16 x 16 px JPEG whose header (SOF0) says ``width`` x ``height``: under 1 KB."""
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")  # baseline frame header: marker, length (2), precision (1), height (2), width (2)
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 1024
    return path


def tif_claiming(path: Path, count: int = 3, descriptions: tuple[str, ...] = ("red", "green", "blue"),
                 side: int = HUGE, block: int = 4096) -> Path:
    """A georeferenced GeoTIFF of ``side`` x ``side`` px and no pixel written (sparse, deflate): a few KB with
    4096 px tiles (the tile index grows with smaller ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=count, dtype="uint8",
                       crs="EPSG:32608", transform=Affine(1.0, 0.0, 470000.0, 0.0, -1.0, 7550000.0), nodata=0,
                       compress="deflate", tiled=True, blockxsize=block, blockysize=block, sparse_ok=True) as dst:
        if descriptions:
            dst.descriptions = descriptions
    assert path.stat().st_size < (side // block + 1) ** 2 * 16 + 16 * 1024
    return path


def coco_of(root: Path, image: Path, width: int, height: int, annotations: list[dict] | None = None) -> Path:
    """``root/instances_train.json`` listing ``image`` (id 1) at ``width`` x ``height`` with one square slump."""
    anns = annotations if annotations is not None else [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
         "area": 100.0, "bbox": [2, 2, 10, 10]}]
    doc = {"images": [{"id": 1, "file_name": image.name, "width": width, "height": height}],
           "annotations": anns, "categories": [{"id": 1, "name": "rts"}]}
    path = root / "instances_train.json"
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------------------------------------------
# rts prepare: whole images, COCO entries, masks
# ---------------------------------------------------------------------------------------------------------------
def test_a_1kb_jpeg_claiming_60000_px_in_a_coco_file_is_refused_in_one_line(tmp_path):
    img = jpeg_claiming(tmp_path / "coco" / "images" / "big.jpg")
    js = coco_of(tmp_path / "coco", img, HUGE, HUGE)
    out = tmp_path / "ds"
    r = _rts_limited("prepare", "--coco", js, "-o", out)
    _one_error(r, str(img), "60000 x 60000 px", "image 1", "--chip-size", "RTS_MAX_WHOLE_READ_PIXELS")
    assert not out.exists()
    assert not list(tmp_path.glob(".ds*"))  # no temporary folder left either


def test_a_coco_entry_whose_size_disagrees_with_the_file_header_is_refused_first(tmp_path):
    img = jpeg_claiming(tmp_path / "coco" / "images" / "big.jpg")
    js = coco_of(tmp_path / "coco", img, 300, 300)  # the entry says 300 x 300, the file's header 60000 x 60000
    out = tmp_path / "ds"
    r = _rts_limited("prepare", "--coco", js, "-o", out, "--chip-size", "256")
    _one_error(r, str(img), "image 1", "60000 x 60000", "300 x 300", "instances_train.json")
    assert not out.exists()


def test_a_huge_claiming_image_and_mask_read_whole_are_refused(tmp_path):
    img = tif_claiming(tmp_path / "img" / "s1.tif")
    tif_claiming(tmp_path / "msk" / "s1.tif", count=1, descriptions=())
    out = tmp_path / "ds"
    r = _rts_limited("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out)
    _one_error(r, str(img), "60000 x 60000 px")
    assert not out.exists()


def test_a_huge_claiming_image_with_a_mask_band_is_refused(tmp_path):
    img = tif_claiming(tmp_path / "img" / "s1.tif", count=4, descriptions=("red", "green", "blue", "mask"))
    out = tmp_path / "ds"
    r = _rts_limited("prepare", tmp_path / "img", "-o", out)
    _one_error(r, str(img), "60000 x 60000 px")
    assert not out.exists()


def test_annotations_that_claim_more_than_their_image_are_left_out_not_allocated(tmp_path):
    """An RLE whose size says 60000 x 60000 on a 64 px image, and a polygon with coordinates of 1e9 (pycocotools
    allocates a point per fifth of a pixel along its edges, or crashes), are left out and named; the rest stays."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(root / "images" / "a.png"), img)
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": square},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [HUGE, HUGE], "counts": [0, HUGE * HUGE]}},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 1e9, 0, 1e9, 1e9]]},
        {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [64, 64], "counts": "PeQ3"}},  # counts that do not add up to 64 x 64
    ]
    js = coco_of(root, root / "images" / "a.png", 64, 64, anns)
    out = tmp_path / "ds"
    r = _rts_limited("prepare", "--coco", js, "-o", out, "--split", "1,0,0")
    assert r.returncode == 0, r.stderr[-2000:]
    warning = next(line for line in r.stderr.splitlines() if "were left out" in line)
    assert "3 annotation(s)" in warning and "id 2" in warning and "id 3" in warning and "id 4" in warning
    kept = json.loads((out / "train.json").read_text())["annotations"]
    assert [a["area"] for a in kept] == [400.0]


def test_the_budget_is_one_setting_with_a_clear_refusal(tmp_path, rts, monkeypatch):
    """RTS_MAX_WHOLE_READ_PIXELS lowers (or raises) the budget; a bad value is named."""
    from rtscli.errors import RtsError
    from rtscli.io.raster import MAX_WHOLE_READ_PIXELS, check_whole_read, whole_read_budget

    f = tmp_path / "x.tif"
    f.write_bytes(b"0" * 10)
    assert whole_read_budget() == MAX_WHOLE_READ_PIXELS
    check_whole_read(f, 16384, 16384, 1)  # exactly the default budget
    with pytest.raises(RtsError, match=r"x.tif: chip claims 16384 x 16385 px \(268 M values, in a file of 10 bytes\)"):
        check_whole_read(f, 16384, 16385, 1, "chip")
    monkeypatch.setenv("RTS_MAX_WHOLE_READ_PIXELS", "1000")
    with pytest.raises(RtsError, match="image claims 32 x 16 px x 2 bands"):
        check_whole_read(f, 32, 16, 2)
    monkeypatch.setenv("RTS_MAX_WHOLE_READ_PIXELS", "lots")
    with pytest.raises(RtsError, match="cannot read RTS_MAX_WHOLE_READ_PIXELS='lots'"):
        whole_read_budget()


# ---------------------------------------------------------------------------------------------------------------
# a large but real image still works: read by window, its annotations decoded within their own box
# ---------------------------------------------------------------------------------------------------------------
def test_an_image_over_the_budget_is_cut_by_window_with_the_same_instances(tmp_path, rts, monkeypatch):
    """With the budget below a 300 x 300 image (and above a 128 px chip), ``--chip-size 128`` reads it by window
    and decodes each annotation within its own box only: the same chips and instances as without the limit; kept
    whole it is refused."""
    root = tmp_path / "coco"
    write_coco(root, n=4)
    runs = {}
    for name, budget in (("free", None), ("tight", "60000")):
        if budget is None:
            monkeypatch.delenv("RTS_MAX_WHOLE_READ_PIXELS", raising=False)
        else:
            monkeypatch.setenv("RTS_MAX_WHOLE_READ_PIXELS", budget)
        r = rts("prepare", root, "-o", tmp_path / name, "--chip-size", "128", "--seed", "3")
        assert r.code == 0, r.err
        runs[name] = {s: json.loads((tmp_path / name / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        assert runs["free"][s]["annotations"] == runs["tight"][s]["annotations"]
        assert [im["file_name"] for im in runs["free"][s]["images"]] == \
            [im["file_name"] for im in runs["tight"][s]["images"]]
    assert sum(len(d["annotations"]) for d in runs["tight"].values()) > 0
    r = rts("prepare", root, "-o", tmp_path / "whole")
    assert r.code == 2 and "300 x 300 px x 3 bands" in r.err and "--chip-size" in r.err
    assert not (tmp_path / "whole").exists()


def test_rle_counts_read_coco_strings_as_pycocotools_does():
    from rtscli.data.coco_masks import rle_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        m = np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8))
        rle = mask_utils.encode(m)
        runs = rle_counts(rle["counts"])
        assert runs.sum() == h * w
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
        assert (flat.reshape(w, h).T == m).all()


def test_a_header_that_would_make_billions_of_windows_is_refused_before_they_are_planned(tmp_path):
    from rtscli.data.inputs import MAX_WINDOWS, chip_positions, grid_windows, position_count
    from rtscli.data.options import PrepareOptions
    from rtscli.errors import RtsError
    from rtscli.io.raster import RasterInfo

    for length in range(1, 40):
        for size in range(1, 12):
            for stride in range(1, 12):
                assert position_count(length, size, stride) == len(chip_positions(length, size, stride))
    side = 2**31 - 1
    info = RasterInfo(path=tmp_path / "x.tif", width=side, height=side, count=1, dtype="uint8", crs=None,
                      transform=Affine.identity(), nodata=None)
    opts = PrepareOptions(inputs=[tmp_path], out=tmp_path / "ds", chip_size=256)
    with pytest.raises(RtsError, match=f"more than rts cuts one raster into \\({MAX_WINDOWS}\\)"):
        next(grid_windows(info, opts))


# ---------------------------------------------------------------------------------------------------------------
# datasets: chips read whole by training, rts evaluate and rts export-coco
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_dataset(tmp_path, rts) -> Path:
    root = tmp_path / "coco"
    write_coco(root, n=4, size=96)
    out = tmp_path / "ds"
    r = rts("prepare", root, "-o", out)
    assert r.code == 0, r.err
    return out


TORCH = ("torch", "torchvision")
#: a child's code: load the first training sample of the dataset sys.argv[1]; a refusal prints it and exits 2
FIRST_TRAINING_SAMPLE = (
    "from rtscli.data.dataset import ChipDataset, DatasetInfo\n"
    "from rtscli.errors import RtsError\n"
    "info = DatasetInfo.open(sys.argv[1])\n"
    "ds = ChipDataset(info, 'train', [info.modality('rgb')], 96)\n"
    "try:\n"
    "    ds[0]\n"
    "except RtsError as exc:\n"
    "    print(exc)\n"
    "    sys.exit(2)\n"
)


def _swap_first_chip(ds: Path) -> Path:
    """Replace the first training chip with a GeoTIFF claiming 60000 x 60000 px; return its path."""
    doc = json.loads((ds / "train.json").read_text())
    chip = ds / doc["images"][0]["file_name"]
    chip.unlink()
    return tif_claiming(chip)


def test_export_coco_refuses_a_chip_whose_header_claims_60000_px(small_dataset, tmp_path):
    chip = _swap_first_chip(small_dataset)
    out = tmp_path / "export"
    r = _rts_limited("export-coco", small_dataset, "-o", out, "--image-format", "png", preload=TORCH)
    _one_error(r, str(chip), "60000 x 60000 px")
    assert not out.exists()


def test_training_samples_refuse_a_chip_whose_header_disagrees_with_its_entry(small_dataset):
    chip = _swap_first_chip(small_dataset)
    r = _limited(FIRST_TRAINING_SAMPLE, small_dataset, preload=TORCH)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert str(chip) in r.stdout and "60000 x 60000 px" in r.stdout and "96 x 96" in r.stdout


def test_training_samples_refuse_an_annotation_larger_than_its_chip(small_dataset):
    doc = json.loads((small_dataset / "train.json").read_text())
    first = doc["images"][0]["id"]
    ann = next(a for a in doc["annotations"] if a["image_id"] == first)
    ann["segmentation"] = {"size": [HUGE, HUGE], "counts": [0, HUGE * HUGE]}
    (small_dataset / "train.json").write_text(json.dumps(doc))
    r = _limited(FIRST_TRAINING_SAMPLE, small_dataset, preload=TORCH)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert f"annotation {ann['id']} of train.json" in r.stdout and "60000 x 60000" in r.stdout


# ---------------------------------------------------------------------------------------------------------------
# the quicklook of rts predict reads a scene decimated (bounded by construction; a guard against regressions)
# ---------------------------------------------------------------------------------------------------------------
def test_the_quicklook_of_a_huge_claiming_scene_stays_within_the_memory_limit(tmp_path):
    scene = tif_claiming(tmp_path / "scene.tif", block=512)  # a scene's usual tiles: decimated reads stay quick
    code = (
        "import geopandas as gpd\n"
        "from pathlib import Path\n"
        "from rtscli.data.scenes import Source, open_scene\n"
        "from rtscli.render.quicklook import write_quicklook\n"
        "scene = open_scene([Source(Path(sys.argv[1]), {'red': 1, 'green': 2, 'blue': 3})])\n"
        "gdf = gpd.GeoDataFrame({'id': []}, geometry=[], crs=scene.crs)\n"
        "write_quicklook(gdf, scene, Path(sys.argv[2]), overwrite=True, max_side=512)\n"
    )
    r = _limited(code, scene, tmp_path / "q.png", preload=("geopandas", "matplotlib.figure"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "q.png").stat().st_size > 0
