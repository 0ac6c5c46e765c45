"""Training, bundles and evaluation with the nano preset on tiny datasets (CPU, offline)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import apart, paper_sample, write_tif, prepared_samples
from rtscli.errors import RtsError

RUN = ["--preset", "nano", "--workers", "0", "--batch-size", "2", "--lr", "0.004", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 small samples in the paper's layout (one site), prepared 4/2/2."""

    return prepared_samples(tmp_path_factory.mktemp("train"), 8)


def _gt_results(gt: dict) -> list[dict]:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    out = []
    for a in gt["annotations"]:
        rle = coco.annToRLE(a)
        rle["counts"] = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        out.append({"image_id": a["image_id"], "category_id": 1, "segmentation": rle, "bbox": a["bbox"], "score": 1.0})
    return out


def test_evaluate_ground_truth_is_perfect_and_nothing_is_zero(dataset):
    from rtscli.engine.evaluate import coco_metrics, per_site_ap50

    gt = json.loads((dataset / "test.json").read_text())
    assert gt["annotations"]
    m = coco_metrics(gt, _gt_results(gt))
    assert m["segm"]["AP50"] == pytest.approx(1.0) and m["bbox"]["AP50"] == pytest.approx(1.0)
    assert per_site_ap50(gt, _gt_results(gt)) == {"site": pytest.approx(1.0)}
    m = coco_metrics(gt, [])
    assert m["segm"]["AP50"] == 0.0 and m["bbox"]["AP"] == 0.0
    # half the slumps found: AP50 drops accordingly
    some = _gt_results(gt)[::2]
    assert 0.2 < coco_metrics(gt, some)["segm"]["AP50"] < 0.8


def test_pretrain_evaluate_info_from_the_command_line(dataset, tmp_path, rts):
    run = tmp_path / "rgb"
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", run, "--max-steps", 3, *RUN)
    assert r.code == 0, r.err
    assert (run / "model.safetensors").exists() and (run / "config.yaml").exists()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["kind"] == "rts-model" and cfg["modalities"] == [{"name": "rgb", "channels": ["red", "green", "blue"]}]
    assert set(cfg["normalization"]) == {"red", "green", "blue"} and cfg["tile_size"] == 256
    assert cfg["dataset"]["checksum"] and cfg["training"]["lr"] == pytest.approx(0.004 * 2 / 16)
    assert (run / "metrics.csv").exists() and (run / "curves.png").exists()
    # the bundle is its weights and config: checkpoints pruned once complete, weights readable by others too
    assert not (run / "checkpoints").exists()
    assert (run / "model.safetensors").stat().st_mode & 0o044 == 0o044 & ~_umask()
    r = rts("evaluate", run, "--data", dataset, "--split", "test", "--errors", tmp_path / "errors.gpkg",
            "--min-score", 0.0)
    assert r.code == 0, r.err
    import pyogrio

    assert [name for name, _ in pyogrio.list_layers(tmp_path / "errors.gpkg")] == \
        ["true_positives", "false_positives", "missed"]
    r = rts("evaluate", run, "--data", dataset, "--errors", tmp_path / "errors.gpkg")
    assert r.code == 2 and "--overwrite" in r.err  # never overwritten silently
    rep = json.loads((run / "eval_test.json").read_text())
    assert set(rep["metrics"]) == {"segm", "bbox"} and "site" in rep["per_site_mask_ap50"]
    r = rts("info", run)
    assert r.code == 0 and "nano" in r.out and "rgb" in r.out
    assert "test mask AP" in " ".join(r.out.split()) and f"{rep['metrics']['segm']['AP50']:.3f}" in r.out
    r = rts("info", "--preset", "cascade-mvitv2-b")
    assert r.code == 0 and "102.9" in r.out
    # an existing run is not overwritten by accident
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", run, "--max-steps", 1, *RUN)
    assert r.code == 2 and "--overwrite" in r.err and "--resume" not in r.err  # no checkpoint: nothing to resume
    kept = tmp_path / "kept"
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", kept, "--max-steps", 1, "--keep-checkpoints",
            *RUN)
    assert r.code == 0 and (kept / "checkpoints" / "last.ckpt").exists()
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", kept, "--max-steps", 1, *RUN)
    assert r.code == 2 and "--resume" in r.err


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_detection_only_variant(dataset, tmp_path, rts):
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "det", "--max-steps", 1,
            "--detection-only", *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((tmp_path / "det" / "config.yaml").read_text())
    assert cfg["model"]["roi_heads"]["mask"] is False and "val_box_ap50_best" in cfg["metrics"]
    r = rts("evaluate", tmp_path / "det", "--data", dataset)
    assert r.code == 0, r.err


def test_single_channel_modality_and_missing_modality(dataset, tmp_path, rts):
    r = rts("pretrain", "--modality", "ndvi", "--data", dataset, "-o", tmp_path / "ndvi", "--max-steps", 1, *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((tmp_path / "ndvi" / "config.yaml").read_text())
    assert cfg["model"]["backbone"]["in_channels"] == 3 and cfg["repeat_to"] == 3  # NDVI repeated to 3 channels
    r = rts("pretrain", "--modality", "dem", "--data", dataset, "-o", tmp_path / "dem", "--max-steps", 1, *RUN)
    assert r.code == 2 and "dem" in r.err and not (tmp_path / "dem").exists()


def test_bundle_round_trip_gives_identical_outputs_and_checks_tensors(tmp_path):
    from rtscli.modeling.bundle import load_model, save_bundle
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import Detector

    torch.manual_seed(0)
    cfg = load_preset("nano")
    model = Detector(cfg=cfg).eval()
    meta = {"kind": "rts-model", "model": cfg.to_dict(), "modalities": [{"name": "rgb", "channels": ["red"]}]}
    save_bundle(tmp_path / "b", model.state_dict(), meta)
    loaded, bundle = load_model(tmp_path / "b")
    x = torch.randn(1, 3, 256, 256)
    a, b = model.predict(x)[0], loaded.eval().predict(x)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = {k: v for k, v in model.state_dict().items() if "mask_head" not in k}
    save_bundle(tmp_path / "bad", state, meta)
    with pytest.raises(RtsError, match="missing"):
        load_model(tmp_path / "bad")
    with pytest.raises(RtsError, match="not a model bundle"):
        (tmp_path / "empty").mkdir()
        load_model(tmp_path / "empty")
    raw = (tmp_path / "b" / "model.safetensors").read_bytes()
    (tmp_path / "b" / "model.safetensors").write_bytes(raw[: len(raw) // 2])  # truncated copy
    with pytest.raises(RtsError, match="cannot read the weights"):
        load_model(tmp_path / "b")


class Killed(Exception):
    """A job killed from outside (SLURM time limit, OOM killer): no hook of the run gets to save anything."""


def _with_callbacks(monkeypatch, *extra):
    """Add Lightning callbacks to every Trainer built inside the ``with`` block of ``monkeypatch.context()``."""
    import lightning as L

    init = L.Trainer.__init__

    def patched(self, *a, **k):
        init(self, *a, **{**k, "callbacks": list(k.get("callbacks") or []) + list(extra)})

    monkeypatch.setattr(L.Trainer, "__init__", patched)


def _ckpt(run: Path, name: str = "last") -> dict:
    return torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)


def _last_state(run: Path) -> dict:
    return _ckpt(run)["state_dict"]


def test_deterministic_and_resume_continues_exactly(dataset, tmp_path, rts, monkeypatch):
    import lightning as L

    # interrupted after epoch 0, which does not validate (--val-every 2): its last.ckpt must still exist and be exact
    args = ["--modality", "rgb", "--data", dataset, "--seed", "3", "--epochs", "2", "--val-every", "2",
            "--keep-checkpoints", *RUN]
    for name in ("a", "b"):
        assert rts("pretrain", *args, "-o", tmp_path / name).code == 0
    a, b = _last_state(tmp_path / "a"), _last_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights (CPU)

    class StopAfterFirstEpoch(L.Callback):  # the job is stopped after epoch 0 (e.g. a SLURM time limit)
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    with monkeypatch.context() as m:
        _with_callbacks(m, StopAfterFirstEpoch())
        assert rts("pretrain", *args, "-o", tmp_path / "c").code == 0
    partial = _last_state(tmp_path / "c")
    assert not all(torch.equal(a[k], partial[k]) for k in a)
    r = rts("pretrain", *args, "-o", tmp_path / "c", "--resume")
    assert r.code == 0, r.err
    c = _last_state(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)  # interrupted + resumed == uninterrupted
    # --resume with nothing to resume starts the run: tests/test_interrupt.py


def test_last_checkpoint_is_the_latest_epoch_whatever_val_every(dataset, tmp_path, rts, monkeypatch):
    """--val-every 3: a run killed as epoch 5 starts resumes at epoch 5, not at epoch 3 (the last validated + 1)."""
    import lightning as L

    args = ["pretrain", "--modality", "rgb", "--data", dataset, "--seed", "1", "--epochs", "6", "--val-every", "3",
            "--keep-checkpoints", *RUN]

    class KillAtEpoch5(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 5:
                raise Killed("killed as epoch 5 started")

    class Started(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_train_epoch_start(self, trainer, module):
            self.epochs.append(trainer.current_epoch)

    run = tmp_path / "killed"
    with monkeypatch.context() as m:
        _with_callbacks(m, KillAtEpoch5())
        r = rts(*args, "-o", run)
    assert r.code == 1 and "killed as epoch 5 started" in r.err
    last = _ckpt(run)
    assert (last["epoch"], last["global_step"]) == (4, 10)  # epochs 0-4 done, 2 steps each; Lightning kept epoch 2
    assert last["rts"]["best_epoch"] == 2  # the state of the validation at epoch 2 travels on
    assert _ckpt(run, "best")["epoch"] == 2
    assert not (run / "model.safetensors").exists()

    started = Started()
    with monkeypatch.context() as m:
        _with_callbacks(m, started)
        r = rts(*args, "-o", run, "--resume")
    assert r.code == 0, r.err
    assert started.epochs == [5]
    assert (_ckpt(run)["epoch"], _ckpt(run)["global_step"]) == (5, 12)
    # that a resume from an epoch without validation is exact: test_deterministic_and_resume_continues_exactly


def _constant_ap50(monkeypatch, value: float) -> None:
    """Every validation scores ``value`` (mask and box AP50)."""
    import rtscli.engine.evaluate as evaluate

    scores = {"AP": value, "AP50": value, "AP75": value}
    monkeypatch.setattr(evaluate, "coco_metrics", lambda *a, **k: {"segm": dict(scores), "bbox": dict(scores)})


def _bundle_state(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _same_weights(bundle: dict, ckpt: dict) -> bool:
    return all(torch.equal(v, ckpt["state_dict"][f"model.{k}"]) for k, v in bundle.items())


def test_ties_in_validation_ap_go_to_the_latest_epoch(dataset, tmp_path, rts, monkeypatch):
    args = ["pretrain", "--modality", "rgb", "--data", dataset, "--keep-checkpoints", *RUN]
    _constant_ap50(monkeypatch, 0.25)
    run = tmp_path / "tie"
    r = rts(*args, "-o", run, "--epochs", "2")
    assert r.code == 0, r.err
    m = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
    assert (m["best_epoch"], m["bundle_epoch"], m["val_mask_ap50_best"]) == (1, 1, 0.25)
    assert m["bundle_weights"] == "best validation mask AP50 0.250 at epoch 1 (ties go to the latest epoch)"
    assert m["bundle_weights"] in r.out
    assert _ckpt(run, "best")["epoch"] == 1 and _same_weights(_bundle_state(run), _ckpt(run, "best"))


def test_validation_that_never_scores_keeps_the_last_epoch(dataset, tmp_path, rts, monkeypatch):
    """AP50 0 at every validation: the bundle holds the last epoch (2), not the last validated one (1)."""
    _constant_ap50(monkeypatch, 0.0)
    run = tmp_path / "zero"
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, *RUN, "-o", run, "--epochs", "3", "--val-every", "2",
            "--keep-checkpoints")
    assert r.code == 0, r.err
    m = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
    assert (m["best_epoch"], m["bundle_epoch"], m["val_mask_ap50_best"]) == (1, 2, 0.0)
    assert m["bundle_weights"] == ("last epoch 2: validation mask AP50 was 0.000 at every validation, so it could "
                                   "not pick a best epoch")
    assert "weights of last epoch 2: validation mask AP50 was 0.000 at every validation" in r.out
    bundle = _bundle_state(run)
    assert _ckpt(run)["epoch"] == 2 and _same_weights(bundle, _ckpt(run))
    assert not _same_weights(bundle, _ckpt(run, "best"))


def test_progress_lines_when_stderr_is_not_a_terminal(dataset, tmp_path, rts, monkeypatch):
    """Under SLURM, nohup or a pipe (the test captures stderr) training logs progress lines instead of a bar."""
    import re

    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")  # a line after every step
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "p", "--max-steps", 3, *RUN)
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if "training: epoch" in ln]
    assert all(ln.startswith("rts: ") for ln in r.err.splitlines()), r.err  # no raw library output ...
    assert "GPU available" not in r.err and "Tip" not in r.err  # ... nor Lightning's banners and tips
    step = re.compile(r"rts: training: epoch 0/1, step 1/3 \(33%\), loss \d[\d.]*, [\d.]+ steps/s, ETA \d+ s$")
    assert step.match(lines[0]), lines
    assert re.search(r"epoch 0/1 done, step 2/3 \(67%\), mean loss \d[\d.]*, RPN pos/img [\d.]+, top fg [\d.]+, "
                     r"val mask AP50 0\.\d{3} \(best 0\.\d{3} at epoch 0\), [\d.]+ steps/s, ETA", r.err)
    assert re.search(r"epoch 1/1 done, step 3/3 \(100%\), mean loss \d[\d.]*, RPN pos/img [\d.]+, top fg [\d.]+, "
                     r"[\d.]+ steps/s, done in \d+ s", lines[-1])
    assert len([ln for ln in lines if "done," not in ln]) == 3  # one line per step


def test_nan_loss_stops_with_a_clear_message(dataset, tmp_path, rts, monkeypatch):
    from rtscli.modeling.detector import Detector

    real = Detector.losses
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] >= 2:
            out["loss_cls_s0"] = out["loss_cls_s0"] * float("nan")
        return out

    monkeypatch.setattr(Detector, "losses", poisoned)
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "nan", "--max-steps", 4, *RUN)
    assert r.code == 2 and "loss became nan" in r.err and "loss_cls_s0" in r.err
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_ddp_with_two_cpu_processes(dataset, tmp_path):
    """Lightning DDP (gloo) on two CPU processes completes a few steps and writes one bundle."""
    run = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "rtscli", "pretrain", "--modality", "rgb", "--data", str(dataset),
                        "-o", str(run), "--max-steps", "2", "--devices", "2", "--accelerator", "cpu", *RUN],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["training"]["world_size"] == 2
    assert cfg["training"]["lr"] == pytest.approx(0.004 * 2 * 2 / 16)  # scaled with the total batch
    assert np.isfinite(cfg["metrics"]["val_mask_ap50_best"])
    # one progress line per epoch (stderr is a pipe), from the first process only
    assert r.stderr.count("training: epoch 0/1 done") == 1 and r.stderr.count("training: epoch 1/1 done") == 1


def test_error_layers_land_on_the_map(dataset, tmp_path):
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    from rtscli.engine.evaluate import error_layers, write_error_layers

    gt = json.loads((dataset / "test.json").read_text())
    perfect = error_layers(gt, _gt_results(gt))
    assert len(perfect["true_positives"]) == len(gt["annotations"])
    assert len(perfect["false_positives"]) == 0 and len(perfect["missed"]) == 0
    # each true positive polygon burns back onto exactly its slump's pixels in the chip
    im = gt["images"][0]
    tp = perfect["true_positives"]
    with rasterio.open(dataset / im["file_name"]) as chip:
        burned = rasterize([(g, 1) for g in tp[tp.file == im["file_name"]].geometry], out_shape=chip.shape,
                           transform=chip.transform)
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "test.json"))
    truth = np.any([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))], axis=0)
    assert np.array_equal(burned.astype(bool), truth)
    nothing = error_layers(gt, [])
    assert len(nothing["missed"]) == len(gt["annotations"]) and len(nothing["true_positives"]) == 0
    path = write_error_layers(nothing, tmp_path / "errors.gpkg")
    for layer in ("true_positives", "false_positives", "missed"):
        g = gpd.read_file(path, layer=layer)
        assert g.crs.to_epsg() == 32608
    assert len(gpd.read_file(path, layer="missed")) == len(gt["annotations"])


def test_augmentation_changes_with_the_epoch_in_worker_processes(dataset):
    from rtscli.data.dataset import ChipDataset, DatasetInfo, collate
    from rtscli.engine.train import EpochSampler

    info = DatasetInfo.open(dataset)
    ds = ChipDataset(info, "train", [info.modality("rgb")], 256, augment=True, seed=0)
    sampler = EpochSampler(len(ds), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), sampler=sampler, collate_fn=collate,
                                         num_workers=1, persistent_workers=True)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        images, _, metas = next(iter(loader))
        order = [m["image_id"] for m in metas]
        seen.append(images[torch.tensor(order).argsort()])
    assert not torch.equal(seen[0], seen[1])  # each epoch draws new flips, rotations, scales


def test_evaluating_chips_larger_than_the_tile_is_refused(tmp_path, rts):
    from rtscli.modeling.bundle import save_bundle
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import Detector

    for k in range(2):
        write_tif(tmp_path / "in" / f"big{k}.tif", paper_sample(shape=(300, 300), rects=[(10, 40, 10, 40)], seed=k),
                  transform=apart(k))
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "ds", "--bands", "paper", "--split", "0.5,0,0.5")
    assert r.code == 0, r.err
    cfg = load_preset("nano")
    meta = {"kind": "rts-model", "model": cfg.to_dict(),
            "modalities": [{"name": "rgb", "channels": ["red", "green", "blue"]}],
            "band_map": {"red": 1, "green": 2, "blue": 3}, "normalization": {}, "repeat_to": 3}
    save_bundle(tmp_path / "b", Detector(cfg=cfg).state_dict(), meta)
    r = rts("evaluate", tmp_path / "b", "--data", tmp_path / "ds")
    assert r.code == 2 and "larger than the model's 256 px tile" in r.err and "--chip-size 256" in r.err


def test_a_validation_split_without_slumps_keeps_the_last_weights_and_says_so(tmp_path, rts):
    root = tmp_path / "in"
    for k in range(5):
        write_tif(root / f"x{k}.tif", paper_sample(shape=(96, 96), rects=[(10, 40, 10, 40)] if k < 3 else [], seed=k),
                  transform=apart(k))
    (tmp_path / "split.csv").write_text("x0,train\nx1,train\nx2,train\nx3,val\nx4,val\n")
    assert rts("prepare", root, "-o", tmp_path / "ds", "--bands", "paper", "--split-file",
               tmp_path / "split.csv").code == 0
    r = rts("pretrain", "--modality", "rgb", "--data", tmp_path / "ds", "-o", tmp_path / "run", "--epochs", 2, *RUN)
    assert r.code == 0, r.err
    err, out = " ".join(r.err.split()), " ".join(r.out.split())
    assert "the val split (2 chips) has no slump" in err and "last epoch's weights" in err
    assert "weights of last epoch 1: the validation split has no slump" in out
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["metrics"]["bundle_epoch"] == 1


def test_datasets_work_with_spawned_workers(dataset, tmp_path):
    """macOS and Windows start DataLoader workers by spawning (pickling the dataset): training chips and
    prediction tiles must survive it."""
    from rtscli.data.dataset import ChipDataset, DatasetInfo, collate
    from rtscli.data.scenes import Source, open_scene
    from rtscli.data.tiles import TileDataset, collate_tiles
    from rtscli.data.tiling import tile_grid

    info = DatasetInfo.open(dataset)
    chips = ChipDataset(info, "train", [info.modality("rgb")], 256, augment=True, seed=0)
    loader = torch.utils.data.DataLoader(chips, batch_size=2, collate_fn=collate, num_workers=1,
                                         multiprocessing_context="spawn")
    images, targets, _ = next(iter(loader))
    assert images.shape == (2, 3, 256, 256) and len(targets) == 2
    scene = write_tif(tmp_path / "s.tif", paper_sample(shape=(100, 120), rects=[(10, 30, 10, 40)])[:5])
    sc = open_scene([Source(scene, {"red": 1, "green": 2, "blue": 3})])
    tiles = TileDataset(sc, tile_grid(120, 100, 64, 16), tile=64, modalities=[info.modality("rgb")],
                        stats=info.stats, repeat_to=3)
    batch = next(iter(torch.utils.data.DataLoader(tiles, batch_size=4, collate_fn=collate_tiles, num_workers=1,
                                                  multiprocessing_context="spawn")))
    assert len(batch) == 4 and all(b.error is None for b in batch) and batch[0].image.shape == (3, 64, 64)


def test_a_preset_too_big_for_the_machine_stops_before_anything_is_written(dataset, tmp_path, rts, monkeypatch):
    """The README's first command on a 24 GB CPU: a one-line error naming --preset nano, no run folder left."""
    from rtscli.engine import memory_check

    monkeypatch.setattr(memory_check, "available_bytes", lambda *a, **k: 22 * 2**30)
    monkeypatch.delenv("RTS_SKIP_MEMORY_CHECK", raising=False)
    run = tmp_path / "b"
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", run, "--batch-size", 2)
    assert r.code == 2 and "cascade-mvitv2-b at 1024 px, batch 2" in r.err and "--preset nano" in r.err
    assert sum(line.startswith("rts: error:") for line in r.err.splitlines()) == 1 and not run.exists()
    r = rts("finetune", "--data", dataset, "--modalities", "rgb,nir", "-o", tmp_path / "f", "--batch-size", 2,
            "--max-steps", 1)
    assert r.code == 2 and "--preset nano" in r.err, r.err
    assert not (tmp_path / "f").exists()


def test_preset_training_defaults_fill_what_the_command_line_leaves_out(dataset, tmp_path, rts):
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "n", "--preset", "nano",
            "--max-steps", 1, "--workers", 0)
    assert r.code == 0, r.err
    s = yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())["training"]["settings"]
    assert (s["base_lr"], s["warmup_steps"], s["batch_size"], s["schedule"]) == (0.008, 20, 4, "cosine")


def test_without_a_validation_split_nothing_claims_a_validation_score(tmp_path, rts, monkeypatch):
    """No val split: AP50 on the training chips is a training-chip score everywhere it is kept (bundle metrics,
    metrics.csv, progress lines, curves.png, rts info, a fused bundle's record of its sources), and the bundle keeps
    the last epoch's weights, as the README says; bundles of the old naming still load and show."""
    import csv

    from PIL import Image

    from rtscli.engine.finetune import _source_ap50

    root = tmp_path / "in"
    for k in range(5):
        write_tif(root / f"x{k}.tif", paper_sample(shape=(96, 96), rects=[(10, 40, 10, 40)], seed=k),
                  transform=apart(k))
    (tmp_path / "split.csv").write_text("x0,train\nx1,train\nx2,train\nx3,train\nx4,test\n")
    assert rts("prepare", root, "-o", tmp_path / "ds", "--bands", "paper", "--split-file",
               tmp_path / "split.csv").code == 0
    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")
    run = tmp_path / "run"
    r = rts("pretrain", "--modality", "rgb", "--data", tmp_path / "ds", "-o", run, "--epochs", 3, *RUN)
    assert r.code == 0, r.err
    err, out = " ".join(r.err.split()), " ".join(r.out.split())
    assert "the validation split is empty" in err and "training-chip AP50" in err, err
    assert "training-chip mask AP50 0." in err and "val mask AP50" not in err and "(best" not in err
    assert "weights of last epoch 2: the dataset has no validation split" in out, out
    m = yaml.safe_load((run / "config.yaml").read_text())["metrics"]
    assert not [k for k in m if k.startswith("val") or k == "best_epoch"], m
    assert m["bundle_epoch"] == 2 and m["train_chips_ap50_epoch"] == 2 and 0 <= m["train_chips_mask_ap50"] <= 1
    with (run / "metrics.csv").open() as fh:
        header = next(csv.reader(fh))
    assert "train_chips_ap50" in header and not [c for c in header if c.startswith("val")], header
    with Image.open(run / "curves.png") as im:
        assert im.text["Axes"] == "epoch | training loss | training-chip AP50"
    r = rts("info", run)
    info = " ".join(r.out.split())
    assert r.code == 0 and "no validation split" in info and "training-chip mask ap50" in info, r.out
    assert "best validation" not in info and "val mask" not in info
    # rts finetune's record of this bundle as a source: a training-chip score, never a validation one
    assert _source_ap50(m) == {"train_chips_ap50": m["train_chips_mask_ap50"]}
    assert _source_ap50({"val_mask_ap50_best": 0.25, "best_epoch": 1}) == {"val_ap50": 0.25}

    # a bundle written before (val_mask_ap50_best, even of a run without a val split) loads and shows as it was
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["metrics"] = {"val_mask_ap50_best": 0.005, "best_epoch": 2, "bundle_epoch": 2,
                      "bundle_weights": "best validation mask AP50 0.005 at epoch 2 (ties go to the latest epoch)"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = rts("info", run)
    assert r.code == 0 and "val mask ap50 best" in r.out and "0.0050" in r.out, r.out
    r = rts("evaluate", run, "--data", tmp_path / "ds", "--split", "test")
    assert r.code == 0, r.err


def _no_gpu(monkeypatch) -> None:
    """A machine without a GPU, whose memory check is not what a test looks at."""
    from rtscli.engine import devices

    monkeypatch.setattr(devices, "has_cuda", lambda: False)
    monkeypatch.setattr(devices, "has_mps", lambda: False)
    monkeypatch.setenv("RTS_SKIP_MEMORY_CHECK", "1")


def _error(r) -> str:
    lines = [ln for ln in r.err.splitlines() if ln.startswith("rts: error:")]
    assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


def test_the_default_preset_on_a_cpu_is_refused_with_its_time_and_the_fix(dataset, tmp_path, rts, monkeypatch):
    """`rts pretrain` without --preset on a machine without a GPU: the paper's 1024 px model is refused before
    anything is written, with the estimated time per step and per run, how it was estimated, and the fixes; so are
    rts finetune and rts ablate. The 96 px chips in a 1024 px tile are pointed out, with the --tile-size that fits."""
    _no_gpu(monkeypatch)
    run = tmp_path / "b"
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", run)
    line = _error(r)
    assert "cascade-mvitv2-b at 1024 px, batch 1: about" in line and "per step on this CPU" in line, line
    assert "for the run's 144 steps" in line and "sized for a GPU and this machine has none" in line, line  # 36 x 4
    assert "TFLOP" in line and "measured on this CPU" in line and "--preset cpu-r18 or --preset nano" in line, line
    assert "--accelerator cpu runs it on this CPU anyway" in line and not run.exists(), line
    assert "the training chips (the largest 96 x 96 px) fill 1% of the 1024 px tile" in r.err
    assert "--tile-size 96 holds them" in r.err
    line = _error(rts("finetune", "--data", dataset, "--modalities", "rgb,nir", "-o", tmp_path / "f",
                      "--no-measure-memory"))
    assert "cascade-mvitv2-b at 1024 px" in line and "--preset nano" in line and not (tmp_path / "f").exists()
    line = _error(rts("ablate", "--data", dataset, "--modalities", "rgb,nir", "--fusions", "conv", "-o",
                      tmp_path / "ab"))
    assert "for the ablation (2 pretraining(s), 1 cell(s))'s 432 steps" in line and "--preset nano" in line, line
    assert not (tmp_path / "ab").exists()


def test_accelerator_cpu_asks_for_the_cpu_and_gets_the_estimate_first(dataset, tmp_path, rts, monkeypatch):
    """With a step limit below nano's, nano counts as GPU-sized: refused by default, run with --accelerator cpu,
    the estimated time per step and per run logged before training starts."""
    from rtscli.engine import step_time

    _no_gpu(monkeypatch)
    monkeypatch.setattr(step_time, "CPU_STEP_LIMIT_S", 1e-6)
    args = ["pretrain", "--modality", "rgb", "--data", dataset, "--max-steps", 2, *RUN]
    line = _error(rts(*args, "-o", tmp_path / "refused"))
    assert "nano at 256 px, batch 2: about" in line and "--accelerator cpu" in line and "a smaller --tile-size" in line
    r = rts(*args, "-o", tmp_path / "run", "--accelerator", "cpu")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "warning: estimated time of rts pretrain: nano at 256 px, batch 2: about" in err, err
    assert "per step on this CPU" in err and "for the run's 2 steps (estimate:" in err
    assert err.index("estimated time of rts pretrain") < err.index("training: epoch 0")


def test_the_step_time_estimate_is_made_of_counted_work_and_measured_rates(monkeypatch):
    """seconds = FLOP / (matmul rate x share) + bytes / (bandwidth x share); the paper's model at 1024 px is
    hundreds of times nano's work; and on this machine the estimate of a nano step is within 3x of a measured one."""
    import time

    from rtscli.engine import step_time
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import Detector

    nano, big = load_preset("nano"), load_preset("cascade-mvitv2-b")
    f_nano, b_nano = step_time.step_work(nano, batch_size=2)
    f_big, _ = step_time.step_work(big, batch_size=1)
    assert f_big > 100 * f_nano / 2 and step_time.step_work(nano, batch_size=4)[0] == pytest.approx(2 * f_nano)
    assert step_time.step_work(big, batch_size=1, task="ssl")[0] < f_big  # no detector heads in a SimMIM step
    with monkeypatch.context() as m:
        m.setattr(step_time, "cpu_rates", lambda threads: (1e11, 1e10))
        est = step_time.estimate_cpu_step(nano, batch_size=2)
        assert est.seconds == pytest.approx(f_nano / (1e11 * step_time.COMPUTE_SHARE)
                                            + b_nano / (1e10 * step_time.MEMORY_SHARE))
        assert "100 GFLOP/s and 10 GB/s measured on this CPU" in est.how()

    torch.manual_seed(0)
    model = Detector(cfg=nano).train()
    image = torch.randn(2, 3, 256, 256)
    boxes = torch.tensor([[40.0, 40.0, 120.0, 110.0], [150.0, 160.0, 220.0, 230.0]])
    masks = torch.zeros(2, 256, 256, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    targets = [{"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64), "masks": masks}] * 2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad()
        sum(model.losses(image, targets).values()).backward()
        opt.step()
        return time.perf_counter() - start

    step()  # warm-up
    measured = min(step() for _ in range(2))
    estimate = step_time.estimate_cpu_step(nano, batch_size=2).seconds
    assert measured / 3 < estimate < 3 * measured, (estimate, measured)
    assert step_time.duration(0.84) == "0.84 s" and step_time.duration(264) == "4.4 min"
    assert step_time.duration(30 * 86400) == "30 days"


def test_copy_paste_and_layer_decay_reach_the_run_and_bad_values_are_refused(dataset, tmp_path, rts):
    from safetensors.torch import save_file

    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import Detector

    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "cp", "--preset", "cpu-r18",
            "--max-steps", 2, "--workers", 0, "--batch-size", 2, "--copy-paste", 1.0)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((tmp_path / "cp" / "config.yaml").read_text())
    s = cfg["training"]["settings"]
    assert (s["copy_paste"], s["layer_decay"]) == (1.0, 1.0)  # from random weights: no decay
    rows = list(csv.DictReader((tmp_path / "cp" / "metrics.csv").open()))
    assert float(rows[-1]["steps"]) == 2 and float(rows[-1]["wall_s"]) > 0  # the learning curve's axes
    # pretrained backbone weights: layer-wise decay by default
    weights = tmp_path / "body.safetensors"
    save_file({k: v.contiguous() for k, v in Detector(cfg=load_preset("cpu-r18")).backbone.body.state_dict().items()},
              str(weights))
    r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "ld", "--preset", "cpu-r18",
            "--max-steps", 1, "--workers", 0, "--batch-size", 2, "--backbone-weights", weights)
    assert r.code == 0, r.err
    assert yaml.safe_load((tmp_path / "ld" / "config.yaml").read_text())["training"]["settings"]["layer_decay"] == 0.75
    for flag, value in (("--copy-paste", 1.5), ("--layer-decay", 0.0)):
        r = rts("pretrain", "--modality", "rgb", "--data", dataset, "-o", tmp_path / "bad", "--max-steps", 1,
                flag, value)
        assert r.code == 2 and flag in r.err and not (tmp_path / "bad").exists()
