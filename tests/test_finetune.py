"""`rts finetune` and `rts ablate`: frozen backbones + fusion, checks, cost report (nano, CPU, offline)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from conftest import paper_sample, write_tif, prepared_samples

RUN = ["--workers", "0", "--batch-size", "2", "--lr", "0.004", "--warmup-steps", "1"]
MODS = ("rgb", "ndvi", "nir")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small paper-layout dataset and one nano bundle per modality (two training steps each)."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("fuse")
    ds = prepared_samples(root, 6)
    for m in MODS:
        assert main(["pretrain", "--modality", m, "--data", str(ds), "-o", str(root / m), "--preset", "nano",
                     "--max-steps", "1", *RUN]) == 0
    return {"root": root, "ds": ds, **{m: root / m for m in MODS}}


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_fused_and_channel_stack_models_keep_the_fpn_dict():
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.multimodal import build_model, fusion_spec

    cfg = load_preset("nano")
    x = torch.randn(1, 3, 256, 256)
    ref = build_model(cfg, None).eval().features(x)
    stack_cfg = load_preset("nano")
    stack_cfg.backbone.in_channels = 5
    stack = build_model(stack_cfg, fusion_spec("channel-stack", list(MODS), [3, 1, 1])).eval()
    fused = build_model(cfg, fusion_spec("residual-cross", list(MODS), [3, 3, 3], heads=8, frozen=True)).eval()
    for feats in (stack.features(torch.randn(1, 5, 256, 256)), fused.features(torch.randn(1, 9, 256, 256))):
        assert list(feats) == list(ref) and all(feats[k].shape == ref[k].shape for k in ref)
    # frozen backbones stay in eval mode and out of autograd whatever train() is called with
    fused.train()
    assert not any(m.training for m in fused.backbone.backbones.modules())
    assert fused.backbone.fusion.training and fused.rpn.training
    assert not any(p.requires_grad for p in fused.backbone.backbones.parameters())


def test_finetune_keeps_frozen_backbones_bit_identical(world, tmp_path, rts):
    out = tmp_path / "fused"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "residual-cross", "--modalities", "rgb,ndvi,nir",
            "--from", f"{world['nir']},{world['rgb']},{world['ndvi']}", "--init-heads-from", world["rgb"],
            "--max-steps", 2, *RUN)
    assert r.code == 0, r.err
    assert "cost" in r.err and "trainable" in r.err  # the report is printed before training
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    fused = _weights(out)
    for m in MODS:  # every frozen tensor is bit-identical to its source bundle
        src = _weights(world[m])
        keys = [k for k in src if k.startswith("backbone.")]
        assert keys
        for k in keys:
            assert torch.equal(fused[f"backbone.backbones.{m}.{k[len('backbone.'):]}"], src[k]), k
        assert cfg["fusion"]["sources"][m]["sha256"]
    # the decoder (started from the RGB bundle) did train
    heads = _weights(world["rgb"])
    assert any(not torch.equal(fused[k], heads[k]) for k in heads if k.startswith("roi_heads."))
    # the parameter counts of the report match the model
    from rtscli.modeling.bundle import load_model

    model, b = load_model(out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cfg["parameters"]["trainable"] == cfg["cost"]["parameters_trainable"] == trainable
    assert cfg["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert not any(p.requires_grad for p in model.backbone.backbones.parameters())
    assert cfg["cost"]["peak_train_mb"] > 0 and cfg["training"]["frozen_backbones"] is True
    assert [m.name for m in b.modalities] == list(MODS) and cfg["fusion"]["channels"] == [3, 3, 3]
    # rts info shows the fusion and the cost; rts evaluate takes the fused bundle
    r = rts("info", out)
    assert r.code == 0 and "residual-cross" in r.out and "peak training memory" in r.out
    r = rts("evaluate", out, "--data", world["ds"], "--split", "test")
    assert r.code == 0, r.err
    assert json.loads((out / "eval_test.json").read_text())["images"] >= 1
    # rts predict takes it too, on a scene in the dataset's band layout
    scene = write_tif(tmp_path / "scene.tif", paper_sample(shape=(300, 280), rects=[(40, 90, 50, 120)], seed=9)[:5])
    r = rts("predict", scene, "-o", tmp_path / "slumps.gpkg", "--model", out, "--min-score", 0.0, "--workers", 0)
    assert r.code == 0, r.err
    import geopandas as gpd

    gdf = gpd.read_file(tmp_path / "slumps.gpkg", layer="rts")
    assert set(gdf.fusion) <= {"residual-cross"} and set(gdf.modalities) <= {"rgb,ndvi,nir"}


def test_no_freeze_and_channel_stack_train_the_backbones(world, tmp_path, rts):
    out = tmp_path / "nofreeze"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "conv", "--modalities", "rgb,ndvi",
            "--from", f"{world['rgb']},{world['ndvi']}", "--no-freeze", "--max-steps", 2, "--no-measure-memory", *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["parameters"]["trainable"] == cfg["parameters"]["total"]
    src, fused = _weights(world["rgb"]), _weights(out)
    assert any(not torch.equal(fused[f"backbone.backbones.rgb.{k[9:]}"], v) for k, v in src.items()
               if k.startswith("backbone."))
    out = tmp_path / "stack"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "channel-stack", "--modalities", "rgb,ndvi,nir",
            "--from", world["rgb"], "--max-steps", 1, "--no-measure-memory", *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["backbone"]["in_channels"] == 5 and cfg["repeat_to"] == 1
    r = rts("evaluate", out, "--data", world["ds"], "--split", "test")
    assert r.code == 0, r.err


def test_without_from_backbones_start_fresh_and_train(world, tmp_path, rts):
    out = tmp_path / "scratch"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "residual-stacked", "--modalities", "rgb,nir",
            "--preset", "nano", "--max-steps", 1, "--no-measure-memory", *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["training"]["frozen_backbones"] is False and cfg["fusion"]["sources"] == {}
    assert cfg["parameters"]["trainable"] == cfg["parameters"]["total"]
    assert cfg["training"]["backbone_weights"] == "random"


def _copy_bundle(src, dst, edit):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    edit(cfg)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def test_mismatched_bundles_and_datasets_are_refused(world, tmp_path, rts):
    w = world
    every = f"{w['rgb']},{w['ndvi']},{w['nir']}"
    other_bands = _copy_bundle(w["ndvi"], tmp_path / "bands", lambda c: c["band_map"].update(red=3, blue=1))

    def tile(c):
        c["model"]["tile_size"] = 512
        c["tile_size"] = 512

    other_tile = _copy_bundle(w["nir"], tmp_path / "tile", tile)
    cases = [
        (["--modalities", "rgb,ndvi", "--from", every], "not in --modalities"),
        (["--modalities", "rgb,ndvi,nir", "--from", f"{w['rgb']},{w['ndvi']}"], "no --from bundle for modality nir"),
        (["--modalities", "rgb,ndvi,dem", "--from", every], "no modality 'dem'"),
        (["--modalities", "rgb,ndvi", "--from", f"{w['rgb']},{other_bands}"], "band map"),
        (["--modalities", "rgb,nir", "--from", f"{w['rgb']},{other_tile}"], "tile sizes differ"),
        (["--modalities", "rgb,ndvi", "--from", f"{w['rgb']},{w['rgb']}"], "both for modality 'rgb'"),
        (["--modalities", "ndvi,nir", "--from", f"{w['ndvi']},{w['nir']}"], "primary modality 'rgb'"),
        (["--modalities", "rgb,ndvi", "--fusion", "nonsense"], "unknown fusion"),
        (["--modalities", "rgb,ndvi", "--fusion", "channel-stack", "--freeze", "--from", w["rgb"]], "cannot be frozen"),
    ]
    for args, msg in cases:
        out = tmp_path / "never"
        r = rts("finetune", "--data", w["ds"], "-o", out, "--max-steps", 1, "--no-measure-memory", *RUN, *args)
        assert r.code == 2 and msg in r.err and "Traceback" not in r.err, (args, r.err)
        assert len(r.err.strip().splitlines()) <= 3, r.err
        assert not out.exists()


def test_evaluate_names_a_modality_the_data_lacks(world, tmp_path, rts):
    out = tmp_path / "fused"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "cross-attn", "--modalities", "rgb,nir",
            "--from", f"{world['rgb']},{world['nir']}", "--max-steps", 1, "--no-measure-memory", *RUN)
    assert r.code == 0, r.err
    ds = tmp_path / "ds_no_nir"
    shutil.copytree(world["ds"], ds)
    man = yaml.safe_load((ds / "manifest.yaml").read_text())
    man["band_map"].pop("nir")
    (ds / "manifest.yaml").write_text(yaml.safe_dump(man, sort_keys=False))
    r = rts("evaluate", out, "--data", ds, "--split", "test")
    assert r.code == 2 and "'nir'" in r.err and "modality nir" in r.err, r.err


def test_ablate_writes_the_table_and_resumes(world, tmp_path, rts):
    out = tmp_path / "abl"
    args = ["--data", world["ds"], "-o", out, "--modalities", "rgb,ndvi", "--fusions", "residual-cross,conv",
            "--from", f"{world['rgb']},{world['ndvi']}", "--max-steps", 1, *RUN]
    r = rts("ablate", *args)
    assert r.code == 0, r.err
    table = (out / "table.md").read_text()
    assert "RGB+NDVI" in table and "residual cross-modality attention (proposed)" in table
    assert "convolutional fusion" in table and "RGB alone" in table
    import csv

    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["strategy"], r["modalities"]) for r in rows] == [
        ("rgb alone", "rgb"), ("residual-cross", "rgb+ndvi"), ("conv", "rgb+ndvi")]
    assert (out / "ablation.png").stat().st_size > 0
    done = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/model.safetensors")}
    assert len(done) == 2
    r = rts("ablate", *args)  # nothing is re-run
    assert r.code == 0, r.err
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/model.safetensors")} == done
    assert "cost:" not in r.err


def test_finetune_moves_pretrained_backbones_to_another_tile_size(world, tmp_path, rts):
    """Backbones pretrained at 256 px fused at --tile-size 320: relative-position tables interpolated, every other
    backbone tensor as pretrained, and the bundle records the new tile."""
    out = tmp_path / "fused320"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "residual-cross", "--modalities", "rgb,ndvi",
            "--from", f"{world['rgb']},{world['ndvi']}", "--tile-size", 320, "--max-steps", 1, *RUN)
    assert r.code == 0, r.err
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["tile_size"] == 320
    fused, src = _weights(out), _weights(world["rgb"])
    resized = [k for k in src if k.endswith(("rel_pos_h", "rel_pos_w"))]
    assert resized
    for k in (k for k in src if k.startswith("backbone.")):
        mine = fused[f"backbone.backbones.rgb.{k[len('backbone.'):]}"]
        if k in resized:
            assert mine.shape[0] > src[k].shape[0] and mine.shape[1:] == src[k].shape[1:]
        else:
            assert torch.equal(mine, src[k]), k
