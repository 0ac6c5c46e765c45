"""What runs on a CUDA GPU: bf16 training, GPU-trained bundles on the CPU, predict on cuda vs cpu, memory over scenes.

Marked ``gpu`` and skipped without CUDA (`make test` deselects them); `pytest -m gpu` runs them, and so does
``benchmarks/gpu_check.py`` on a lent GPU. ``RTS_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (every
``cuda`` becomes ``cpu``, so the comparisons are trivial): a check of the tests' own code where there is no GPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from conftest import paper_sample, prepared_samples, write_tif

ON_CPU = os.environ.get("RTS_GPU_TESTS_ON_CPU") == "1"
GPU = "cpu" if ON_CPU else "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="no CUDA GPU")]

TILE = 96  # the training samples' size (a multiple of 32)
MIN_SCORE = 0.1
PIXEL = 10.0  # metres: conftest's rasters
TRAIN = ["--preset", "nano", "--tile-size", TILE, "--max-steps", 40, "--batch-size", 4, "--workers", 0]


def _train(root: Path, accelerator: str) -> Path:
    from rtscli.cli import main

    ds = prepared_samples(root, 8)
    run = root / f"nano_{accelerator}"
    args = ["pretrain", "--modality", "rgb", "--data", ds, "-o", run, "--accelerator", accelerator, *TRAIN]
    assert main([str(a) for a in args]) == 0
    return run


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory) -> Path:
    """nano trained 40 steps on the GPU (precision auto: bf16 mixed)."""
    return _train(tmp_path_factory.mktemp("gpu_trained"), "cpu" if ON_CPU else "gpu")


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    """nano trained 40 steps on the CPU (fp32)."""
    return _train(tmp_path_factory.mktemp("cpu_trained"), "cpu")


def _scene(path: Path, seed: int = 0) -> Path:
    """A 5-band scene (R, G, B, NDVI, NIR) of 2 x 2 tiles with slumps, three of them across tile borders."""
    rects = [(10, 40, 12, 50), (60, 95, 70, 110), (100, 140, 20, 60), (30, 60, 120, 150)]
    return write_tif(path, paper_sample(shape=(160, 170), rects=rects, seed=seed)[:5])


def same_polygons(a, b, *, margin: float = 0.03) -> int:
    """Every polygon of either map that scores clearly above MIN_SCORE has one in the other within a pixel
    (Hausdorff distance at most a pixel's diagonal; pixel-edge polygons from masks that differ by rounding). Polygons
    scoring within ``margin`` of the threshold may be in one map only. Returns how many were compared."""
    tol = math.sqrt(2) * PIXEL + 1e-6
    compared = 0
    for x, y, names in ((a, b, "first -> second"), (b, a, "second -> first")):
        for geom, score in zip(x.geometry, x["score"], strict=True):
            if score < MIN_SCORE + margin:
                continue
            compared += 1
            best = min((geom.hausdorff_distance(g) for g in y.geometry), default=math.inf)
            assert best <= tol, f"{names}: a polygon scoring {score:.3f} is {best:.1f} m from the nearest ({tol:.1f})"
    return compared


def _predict_here(scene: Path, bundle_path: Path, device: str):
    from rtscli.data.scenes import open_scene
    from rtscli.engine.predict import PredictOptions, predict_scene
    from rtscli.engine.scene_checks import scene_sources
    from rtscli.modeling.bundle import load_model, read_bundle

    bundle = read_bundle(bundle_path)
    srcs = scene_sources(scene, band_map=bundle.source_band_map or bundle.band_map)
    model, _ = load_model(bundle_path, device=device)
    gdf, _ = predict_scene(model, bundle, open_scene(srcs, training=bundle.values),
                           PredictOptions(workers=0, device=device, min_score=MIN_SCORE))
    return gdf


def _fixed_batch(device: str) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two normalized 256 px tiles with three square slumps each (24, 40 and 64 px: every anchor level has work)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 256, 256, generator=g)
    targets = []
    for i in range(2):
        boxes, masks = [], torch.zeros(3, 256, 256, dtype=torch.uint8)
        for k, (x, y, s) in enumerate(((20 + 10 * i, 30, 24), (100 + 10 * i, 60, 40), (150 + 10 * i, 150, 64))):
            boxes.append([x, y, x + s, y + s])
            masks[k, y:y + s, x:x + s] = 1
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).to(device),
                        "labels": torch.ones(3, dtype=torch.int64, device=device), "masks": masks.to(device)})
    return images.to(device), targets


def test_bf16_training_step_gives_the_losses_of_fp32():
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.multimodal import build_model

    cfg = load_preset("nano")
    cfg.tile_size = 256
    torch.manual_seed(0)
    model = build_model(cfg, None).to(GPU).train()
    images, targets = _fixed_batch(GPU)
    kind = "cuda" if GPU == "cuda" else "cpu"

    def losses(bf16: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the RPN's and the heads' samplers draw alike
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            return model.losses(images, targets)

    fp32 = {k: float(v.detach()) for k, v in losses(False).items()}
    mixed = losses(True)
    assert all(torch.isfinite(v).all() for v in mixed.values()), mixed
    half = {k: float(v.detach()) for k, v in mixed.items()}
    # the anchors' losses depend on the targets only: close; the heads' see proposals ranked by bf16 scores
    for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls_s0"):
        assert half[k] == pytest.approx(fp32[k], rel=0.05, abs=0.01), (k, half[k], fp32[k])
    assert sum(half.values()) == pytest.approx(sum(fp32.values()), rel=0.1, abs=0.05), (half, fp32)
    # and a whole step: backward through bf16 activations, the fp32 weights updated, everything finite
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = sum(losses(True).values())
    opt.zero_grad()
    loss.backward()  # type: ignore[union-attr]
    opt.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for v in losses(True).values())


def test_a_bundle_trained_on_the_gpu_predicts_the_same_on_the_cpu(tmp_path, gpu_bundle):
    from safetensors import safe_open

    with safe_open(str(gpu_bundle / "model.safetensors"), "pt") as f:  # mixed precision keeps fp32 weights
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes <= {"F32", "I64", "BOOL"}, dtypes
    scene = _scene(tmp_path / "scene.tif")
    on_cpu = _predict_here(scene, gpu_bundle, "cpu")
    on_gpu = _predict_here(scene, gpu_bundle, GPU)
    assert same_polygons(on_cpu, on_gpu) > 0, "no polygon scored above the threshold: the test compared nothing"


def test_predict_on_cuda_equals_predict_on_cpu(tmp_path, cpu_bundle, rts):
    import geopandas as gpd

    scene = _scene(tmp_path / "scene.tif", seed=1)
    maps = {}
    for device in ("cpu", GPU):
        out = tmp_path / f"{device}.gpkg"
        r = rts("predict", scene, "-o", out, "--model", cpu_bundle, "--device", device, "--min-score", MIN_SCORE,
                "--workers", 0, "--overwrite")
        assert r.code == 0, r.err
        maps[device] = gpd.read_file(out, layer="rts")
    assert same_polygons(maps["cpu"], maps[GPU]) > 0, "no polygon scored above the threshold: nothing compared"


def test_gpu_memory_is_released_between_scenes_of_a_many_scene_run(tmp_path, cpu_bundle):
    from rtscli.engine.batch import predict_many
    from rtscli.engine.predict import PredictOptions
    from rtscli.modeling.bundle import read_bundle

    scenes = [_scene(tmp_path / "scenes" / f"s{k:02d}.tif", seed=k) for k in range(20)]
    bundle = read_bundle(cpu_bundle)
    allocated: list[int] = []
    reserved: list[int] = []

    def seen(*_: object) -> None:
        if GPU == "cuda":
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
            reserved.append(torch.cuda.memory_reserved())
        else:
            allocated.append(0)
            reserved.append(0)

    result = predict_many(scenes, tmp_path / "out", model=cpu_bundle, bundle=bundle,
                          band_map=bundle.source_band_map or bundle.band_map, bands_given=False,
                          opts=PredictOptions(workers=0, device=GPU, min_score=MIN_SCORE), overwrite=False,
                          layer="rts", units={"scale": None, "offset": None, "training": bundle.values}, nodata=None,
                          scale=None, offset=None, on_scene=seen)
    assert result.run_here == 20 and not result.failed
    assert len(allocated) == 20
    mib = 2**20
    # the model stays loaded; what a scene allocates is freed before the next one
    assert max(allocated[2:]) <= allocated[1] + mib, [a // mib for a in allocated]
    assert max(reserved[5:]) <= reserved[4] * 1.1 + 64 * mib, [r // mib for r in reserved]
