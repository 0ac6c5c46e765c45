"""rts ssl: masked image modelling of one modality's backbone on unlabeled scenes (nano, CPU, offline)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import write_tif

FAST = ["--preset", "nano", "--workers", "0", "--batch-size", "2", "--stats-windows", "4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One synthetic scene (no labels used by rts ssl), a dataset prepared from it, and a 4-step SSL bundle."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("ssl")
    assert main(["synth", str(root / "syn"), "--chips", "0", "--scenes", "1", "--scene-size", "600"]) == 0
    scene = next((root / "syn" / "scenes").glob("*.tif"))
    labels = [p for p in scene.parent.glob("*.gpkg") if "distractors" not in p.name][0]
    assert main(["prepare", str(scene), "--labels", str(labels), "--bands", "planetscope4", "--chip-size", "256",
                 "--split-block", "256", "-o", str(root / "ds")]) == 0
    assert main(["ssl", str(scene), "--modality", "nir", "--bands", "planetscope4", "-o", str(root / "ssl_nir"),
                 "--windows", "4", "--epochs", "2", *FAST]) == 0
    return {"root": root, "scene": scene, "ds": root / "ds", "ssl": root / "ssl_nir"}


def test_ssl_writes_a_backbone_bundle_with_its_record_and_pictures(world, rts):
    out = world["ssl"]
    for name in ("model.safetensors", "config.yaml", "metrics.csv", "curves.png", "reconstructions.png"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert c["kind"] == "rts-ssl-backbone" and c["modality"] == {"name": "nir", "channels": ["nir"]}
    assert c["preset"] == "nano" and c["tile_size"] == 256 and set(c["normalization"]) == {"nir"}
    assert c["scenes"][0]["sha256"] and c["metrics"]["steps_run"] == 4 and c["values"]["source"] == "gdal-metadata"
    r = rts("info", out)
    assert r.code == 0 and "backbone bundle (rts ssl" in r.out and "modality nir" in r.out
    r = rts("evaluate", out, "--data", world["ds"])  # not a model: says what it is
    assert r.code == 2 and "backbone bundle of `rts ssl`" in r.err


def _windows(world, tile=256, **kw):
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import resolve
    from rtscli.data.windows import RandomWindows, sample_stats
    from rtscli.engine.ssl_inputs import open_scenes

    bm = BandMap.parse("planetscope4")
    scenes = open_scenes([str(world["scene"])], bm, aux=[], scale=None, offset=None, nodata=None)
    mod = resolve("nir", bm)
    probe = RandomWindows(scenes, tile=tile, modality=mod, stats=None, repeat_to=3, n=4, **kw)
    stats, _ = sample_stats(probe, 4, 0)
    return RandomWindows(scenes, tile=tile, modality=mod, stats=stats, repeat_to=3, n=8, **kw)


def _mim(tile=256):
    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.mim import MaskedImageModel

    cfg = load_preset("nano")
    torch.manual_seed(0)
    return MaskedImageModel(build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=tile), 3)


def test_a_few_steps_lower_the_reconstruction_loss(world):
    data = _windows(world)
    batch = [data[(i, 0)] for i in range(4)]
    x, valid, mask = (torch.stack(t) for t in zip(*batch, strict=True))
    model = _mim()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = model(x, valid, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_only_hidden_valid_pixels_enter_the_loss(world):
    data = _windows(world)
    x, valid, mask = data[(0, 0)]
    x, valid, mask = x[None], valid[None].clone(), mask[None]
    model = _mim().eval()
    hidden = mask.repeat_interleave(32, 1).repeat_interleave(32, 2)
    with torch.no_grad():
        base, _ = model(x, valid, mask, target=x)
        seen = x.clone()
        seen[:, :, ~hidden[0]] += 5.0  # change the target where the model sees the input: no effect
        same, _ = model(x, valid, mask, target=seen)
        hid = x.clone()
        hid[:, :, hidden[0]] += 5.0  # change it where it is hidden: the loss changes
        other, _ = model(x, valid, mask, target=hid)
        valid[:, :, :128] = False  # nodata pixels never count, hidden or not
        hid_nodata = x.clone()
        hid_nodata[:, :, :, :128] += 5.0
        a, _ = model(x, valid, mask, target=x)
        b, _ = model(x, valid, mask, target=hid_nodata)
    assert torch.equal(base, same) and not torch.allclose(base, other)
    assert torch.allclose(a, b)


def test_mostly_nodata_windows_are_redrawn(tmp_path):
    from rtscli.data.bands import BandMap
    from rtscli.data.modalities import resolve
    from rtscli.data.windows import RandomWindows
    from rtscli.engine.ssl_inputs import open_scenes

    data = np.full((4, 512, 512), 0, np.uint16)
    data[:, :, 128:] = np.random.default_rng(0).integers(100, 3000, (4, 512, 384))  # the left quarter is nodata
    scene = write_tif(tmp_path / "s.tif", data, nodata=0)
    bm = BandMap.parse("planetscope4")
    scenes = open_scenes([str(scene)], bm, aux=[], scale=None, offset=None, nodata=None)
    w = RandomWindows(scenes, tile=128, modality=resolve("nir", bm), stats=None, repeat_to=3, n=16, seed=1)
    shares = [w[(i, 0)][1].float().mean().item() for i in range(16)]
    assert min(shares) >= 0.5 and w.redrawn > 0


def test_an_ssl_bundle_starts_rts_pretrain_with_every_backbone_tensor(world, rts, tmp_path):
    from rtscli.modeling.backbone import load_backbone_weights
    from rtscli.modeling.config import load_preset
    from rtscli.modeling.detector import Detector

    saved = load_file(str(world["ssl"] / "model.safetensors"))
    cfg = load_preset("nano")
    model = Detector(cfg=cfg)
    note = load_backbone_weights(model.backbone, str(world["ssl"]), timm_name=None)
    body = model.backbone.body.state_dict()
    assert set(saved) == set(body) and all(torch.equal(saved[k], body[k]) for k in saved), note
    run = tmp_path / "run"
    r = rts("pretrain", "--modality", "nir", "--data", world["ds"], "-o", run, "--preset", "nano",
            "--backbone-weights", world["ssl"], "--max-steps", 1, "--workers", 0, "--batch-size", 2)
    assert r.code == 0, r.err
    c = yaml.safe_load((run / "config.yaml").read_text())
    ssl_stats = yaml.safe_load((world["ssl"] / "config.yaml").read_text())["normalization"]["nir"]
    assert c["normalization"]["nir"] == ssl_stats  # the backbone's own normalization travels into the model
    assert f"{len(saved)}/{len(saved)} tensors" in c["training"]["backbone_weights"]


@pytest.mark.parametrize("case", ["modality", "tile", "units"])
def test_a_backbone_bundle_that_does_not_fit_exits_2_naming_the_mismatch(world, rts, tmp_path, case):
    args = ["pretrain", "--modality", "nir", "--data", world["ds"], "-o", tmp_path / "run", "--preset", "nano",
            "--backbone-weights", world["ssl"], "--max-steps", 1, "--workers", 0]
    if case == "modality":
        args[2] = "rgb"
        needles = ["modality nir", "trains rgb"]
    elif case == "tile":
        args += ["--tile-size", 320]
        needles = ["256 px tiles", "--tile-size 256"]
    else:  # the same scene prepared as stored integers: reflectance x 10000
        ds = tmp_path / "dn"
        scene = world["scene"]
        labels = [p for p in scene.parent.glob("*.gpkg") if "distractors" not in p.name][0]
        assert rts("prepare", scene, "--labels", labels, "--bands", "planetscope4", "--chip-size", 256,
                   "--scale", 1, "-o", ds).code == 0
        args[4] = ds
        needles = ["channel nir", "other units"]
    r = rts(*args)
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()[-1:]) == 1 and "Traceback" not in r.err
    for n in needles:
        assert n in r.err, r.err
    assert not (tmp_path / "run").exists()


def test_ssl_resume_is_exact(world, rts, tmp_path, monkeypatch):
    import lightning as L

    args = ["ssl", world["scene"], "--modality", "nir", "--bands", "planetscope4", "--windows", 4, "--epochs", 2,
            "--seed", 5, "--keep-checkpoints", *FAST]
    assert rts(*args, "-o", tmp_path / "a").code == 0

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    init = L.Trainer.__init__
    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "__init__", lambda self, *a, **k: init(
            self, *a, **{**k, "callbacks": list(k.get("callbacks") or []) + [StopAfterFirstEpoch()]}))
        assert rts(*args, "-o", tmp_path / "b").code == 0
    half = load_file(str(tmp_path / "b" / "model.safetensors"))
    r = rts(*args, "-o", tmp_path / "b", "--resume")
    assert r.code == 0, r.err
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert not all(torch.equal(a[k], half[k]) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # interrupted + resumed == uninterrupted


def test_timm_and_torchvision_state_dicts_load_by_their_own_names(tmp_path):
    """--backbone-weights FILE: a timm MViTv2 or torchvision ResNet50 state dict (e.g. ImageNet or remote-sensing
    weights downloaded elsewhere), also behind a framework prefix."""
    import timm
    from torchvision.models import resnet50

    from rtscli.modeling.backbone import build_backbone, load_backbone_weights
    from rtscli.modeling.config import load_preset

    cfg = load_preset("cascade-mvitv2-t")
    ref = timm.create_model("mvitv2_tiny", pretrained=False, num_classes=0)
    path = tmp_path / "timm.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    bb = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    note = load_backbone_weights(bb, str(path), timm_name=None)
    own = bb.body.state_dict()
    for k, v in ref.state_dict().items():
        if k in own and own[k].shape == v.shape:
            assert torch.equal(own[k], v), k
    rel = [k for k in own if k.endswith("rel_pos_h")]
    assert rel and all(own[k].shape[0] != ref.state_dict()[k].shape[0] for k in rel)  # 224 px -> 1024 px tables
    n = len(own)
    assert note.endswith(f"({n}/{n} tensors)"), note

    cfg = load_preset("maskrcnn-resnet50-fpn")
    tv = resnet50(weights=None)
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    bb = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=cfg.tile_size)
    load_backbone_weights(bb, str(path), timm_name=None)
    own = bb.body.state_dict()
    assert all(torch.equal(own[k], v) for k, v in tv.state_dict().items() if k in own and "fc." not in k)
    bad = tmp_path / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(bad))
    from rtscli.errors import RtsError

    with pytest.raises(RtsError, match="none of the 1 tensors"):
        load_backbone_weights(bb, str(bad), timm_name=None)


def test_the_resnet50_baseline_is_pretrained_the_same_way():
    from rtscli.modeling.backbone import build_backbone
    from rtscli.modeling.config import load_preset
    from rtscli.data.windows import block_mask
    from rtscli.modeling.mim import MaskedImageModel

    cfg = load_preset("maskrcnn-resnet50-fpn")
    torch.manual_seed(0)
    model = MaskedImageModel(build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=128), 3)
    x = torch.randn(2, 3, 128, 128)
    valid = torch.ones(2, 128, 128, dtype=torch.bool)
    mask = torch.from_numpy(np.stack([block_mask(128, np.random.default_rng(i)) for i in range(2)]))
    loss, recon = model(x, valid, mask)
    loss.backward()
    assert recon.shape == x.shape and torch.isfinite(loss)
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0  # the token is learned


def test_finetune_takes_one_ssl_bundle_per_modality(world, rts, tmp_path):
    out = tmp_path / "fused"
    r = rts("finetune", "--data", world["ds"], "-o", out, "--fusion", "residual-cross", "--modalities", "rgb,nir",
            "--preset", "nano", "--backbone-weights", f"nir={world['ssl']}", "--max-steps", 1, "--workers", 0,
            "--batch-size", 2)
    assert r.code == 0, r.err
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert "rgb: random" in c["training"]["backbone_weights"] and "nir: " + str(world["ssl"]) in \
        c["training"]["backbone_weights"]
    ssl_stats = yaml.safe_load((world["ssl"] / "config.yaml").read_text())["normalization"]["nir"]
    assert c["normalization"]["nir"] == ssl_stats
    r = rts("finetune", "--data", world["ds"], "-o", tmp_path / "bad", "--fusion", "residual-cross", "--modalities",
            "rgb,nir", "--preset", "nano", "--backbone-weights", f"rgb={world['ssl']}", "--max-steps", 1)
    assert r.code == 2 and "modality nir" in r.err and not (tmp_path / "bad").exists()


# --- what rts ssl says: its time on a CPU, its loss, its curve, GDAL's messages ---------------------------------


def test_the_default_preset_on_a_small_scene_on_a_cpu_is_refused_and_the_tile_pointed_out(tmp_path, rts, monkeypatch):
    """The issue's run: `rts ssl` with its default preset (cascade-mvitv2-b, 1024 px) on a 251 px scene on a machine
    without a GPU: the scene fills 6% of the tile (--tile-size 256 holds it), and the run, minutes per step, is
    refused with its estimated time and --preset nano before anything is read or written."""
    from rtscli.engine import devices

    monkeypatch.setattr(devices, "has_cuda", lambda: False)
    monkeypatch.setattr(devices, "has_mps", lambda: False)
    monkeypatch.setenv("RTS_SKIP_MEMORY_CHECK", "1")
    scene = write_tif(tmp_path / "s2.tif", np.random.default_rng(0).integers(0, 4000, (4, 251, 251)).astype(np.uint16))
    out = tmp_path / "ssl"
    r = rts("ssl", scene, "--modality", "rgb", "--bands", "blue=1,green=2,red=3,nir=4", "-o", out, "--workers", 0)
    err = " ".join(r.err.split())
    assert "the scenes (the largest 251 x 251 px) fill 6% of the 1024 px tile" in err and "--tile-size 256" in err
    errors = [ln for ln in r.err.splitlines() if ln.startswith("rts: error:")]
    assert r.code == 2 and len(errors) == 1 and not out.exists(), r.err
    # seconds or minutes: the estimate comes from this CPU's measured speed
    assert "cascade-mvitv2-b at 1024 px, batch 1: about" in errors[0] and " per step on this CPU" in errors[0]
    assert "--preset nano" in errors[0] and "--accelerator cpu" in errors[0]
    r = rts("ssl", scene, "--modality", "rgb", "--bands", "blue=1,green=2,red=3,nir=4", "-o", out, "--workers", 0,
            "--preset", "nano", "--max-steps", 1, "--stats-windows", 2, "--batch-size", 1)
    assert r.code == 0 and "fill" not in r.err, r.err  # 251 px in nano's 256 px tile: nothing to say
    assert "estimated time of rts ssl: nano at 256 px, batch 1: about" in " ".join(r.err.split())


def test_a_one_epoch_run_says_one_epoch_and_its_curve_shows_only_the_loss(world, rts, tmp_path, monkeypatch):
    """One epoch: "one epoch: reconstruction loss 0.74", not "0.74337 -> 0.74337"; progress says the epoch is the
    only one (not "epoch 0/0"); curves.png has the reconstruction loss and no AP50 axis (SSL has no AP)."""
    from PIL import Image

    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")
    out = tmp_path / "one"
    r = rts("ssl", world["scene"], "--modality", "nir", "--bands", "planetscope4", "-o", out, "--windows", 4,
            "--epochs", 1, *FAST)
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert "2 steps, one epoch: reconstruction loss 0." in text and "->" not in text, text
    assert "epoch 0 done (the only epoch), step 2/2" in r.err and "0/0" not in r.err, r.err
    with Image.open(out / "curves.png") as im:
        assert im.text["Axes"] == "epoch | reconstruction loss"
    from rtscli.engine.curves import axes_names, curves_figure

    fig = curves_figure([{"epoch": 0, "train_loss": 0.7}], title="t", score=None, loss_label="reconstruction loss")
    assert len(fig.axes) == 1 and axes_names(fig) == "epoch | reconstruction loss"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["reconstruction loss"]
    # two epochs (the module's own run): the epoch means, first -> last
    from rtscli.cli.ssl import loss_summary

    assert loss_summary({"loss_first": 0.96351, "loss_last": 0.81234, "loss_epochs": 2}) == \
        "reconstruction loss 0.964 -> 0.812 (epoch means, 2 epochs)"


def _tiff_without_extra_samples(path) -> None:
    """A 4-band RGB-photometric GeoTIFF with overviews whose ExtraSamples tag is gone (as some tools write them):
    libtiff warns "TIFFReadDirectory: Sum of Photometric type-related color channels and ExtraSamples doesn't
    match SamplesPerPixel" at every directory it reads."""
    import struct

    import rasterio
    from rasterio.transform import Affine

    data = np.random.default_rng(1).integers(0, 4000, (4, 600, 600)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=4, dtype="uint16", crs="EPSG:32608",
                       transform=Affine(10, 0, 470000, 0, -10, 7550000), photometric="RGB", tiled=True,
                       blockxsize=256, blockysize=256) as dst:
        dst.write(data)
        dst.build_overviews([2, 4])
    raw = bytearray(path.read_bytes())
    assert raw[:2] == b"II"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    while ifd:
        n = struct.unpack_from("<H", raw, ifd)[0]
        for i in range(n):
            entry = ifd + 2 + 12 * i
            if struct.unpack_from("<H", raw, entry)[0] == 338:  # ExtraSamples -> TargetPrinter: the order holds
                struct.pack_into("<H", raw, entry, 337)
        ifd = struct.unpack_from("<I", raw, ifd + 2 + 12 * n)[0]
    path.write_bytes(bytes(raw))


def test_gdal_warnings_never_reach_the_terminal_raw(tmp_path):
    """GDAL/libtiff messages of the scenes, read in rts ssl's main process and its data-loading workers, go through
    rts's log (this harmless one silenced), never as raw "Warning 1: TIFFReadDirectory..." lines."""
    import os
    import subprocess
    import sys

    scene = tmp_path / "odd.tif"
    _tiff_without_extra_samples(scene)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "rtscli", "ssl", str(scene), "--modality", "rgb", "--bands",
                        "blue=1,green=2,red=3,nir=4", "-o", str(tmp_path / "ssl"), "--windows", "4", "--epochs", "1",
                        "--preset", "nano", "--workers", "1", "--batch-size", "2", "--stats-windows", "4"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning 1" not in r.stderr and "TIFFReadDirectory" not in r.stderr, r.stderr
    assert all(ln.startswith(("rts: ", "  ")) for ln in r.stderr.splitlines() if ln.strip()), r.stderr


# --- rts ssl on a dataset's own images, its learning rate, and its check that the loss fell ------------------------


def test_ssl_on_a_prepared_dataset_reads_its_train_chips_with_its_own_normalization(world, rts, tmp_path, monkeypatch):
    """`rts ssl DS`: only the train split's chips are read (never val or test ones), built with the dataset's band
    map, statistics and repeat-to; the bundle records them and starts `rts pretrain` on that dataset."""
    import json

    from rtscli.engine import ssl as engine_ssl

    ds = world["ds"]
    read: list = []
    original = engine_ssl.ImageWindows.read

    def spy(self, k, col, row):
        read.append(self.images[k].path.resolve())
        return original(self, k, col, row)

    monkeypatch.setattr(engine_ssl.ImageWindows, "read", spy)
    out = tmp_path / "ssl_ds"
    r = rts("ssl", ds, "--modality", "nir", "-o", out, "--windows", 4, "--epochs", 1, *FAST)
    assert r.code == 0, r.err
    assert "test chips are never read" in r.err
    manifest = yaml.safe_load((ds / "manifest.yaml").read_text())
    names = {s: {(ds / im["file_name"]).resolve() for im in json.loads((ds / f"{s}.json").read_text())["images"]}
             for s in ("train", "val", "test")}
    assert read and set(read) <= names["train"] and not set(read) & (names["val"] | names["test"])
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert c["normalization"] == {"nir": manifest["normalization"]["nir"]}  # the dataset's, not sampled
    assert c["band_map"] == manifest["band_map"] and c["values"] == manifest["values"]
    assert c["repeat_to"] == manifest["repeat_to"] == 3 and c["scenes"] == []
    assert c["data"]["kind"] == "dataset" and c["data"]["splits"] == ["train"]
    assert c["data"]["chips"] == len(names["train"])
    m = c["metrics"]
    assert m["steps_run"] == 2 and m["loss_steps_compared"] == 1 and "loss_fall" in m  # every step's loss kept
    info = rts("info", out)
    assert info.code == 0 and "pretrained on the dataset" in info.out and "reconstruction loss over the run" in info.out
    r = rts("pretrain", "--modality", "nir", "--data", ds, "-o", tmp_path / "run", "--preset", "nano",
            "--backbone-weights", out, "--max-steps", 1, "--workers", 0, "--batch-size", 2)
    assert r.code == 0, r.err


def test_ssl_on_a_dataset_whose_chip_path_leads_outside_is_refused(world, rts, tmp_path):
    """A train.json entry whose file_name leads out of the dataset folder the user named is refused in one line
    (exit 2), before anything is read or written; so are options a dataset does not take."""
    import json
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(world["ds"], ds)
    doc = json.loads((ds / "train.json").read_text())
    stray = tmp_path / "elsewhere.tif"
    shutil.copy(ds / doc["images"][0]["file_name"], stray)  # a real file, just not inside the dataset
    doc["images"][0]["file_name"] = "../elsewhere.tif"
    (ds / "train.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    r = rts("ssl", ds, "--modality", "nir", "-o", out, "--windows", 4, "--epochs", 1, *FAST)
    errors = [ln for ln in r.err.splitlines() if ln.startswith("rts: error:")]
    assert r.code == 2 and len(errors) == 1 and "leads outside" in errors[0] and "train.json" in errors[0], r.err
    assert "Traceback" not in r.err and not out.exists()
    r = rts("ssl", world["ds"], "--modality", "nir", "--bands", "planetscope4", "-o", out, *FAST)
    assert r.code == 2 and "--bands" in r.err and "prepared dataset" in r.err and not out.exists(), r.err


def _coco_set(root, names=("a.png", "b.png")):
    """A COCO instances file with RGB PNG images (no georeference) and one annotation."""
    import json

    from PIL import Image

    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    images = []
    for i, name in enumerate(names, 1):
        base = np.zeros((192, 224, 3), np.uint8) + rng.integers(40, 200, 3).astype(np.uint8)
        base[40:120, 60:150] = rng.integers(0, 255, 3)  # a patch of another colour
        Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)).save(
            root / "images" / name)
        images.append({"id": i, "file_name": name, "width": 224, "height": 192})
    doc = {"images": images, "categories": [{"id": 1, "name": "rts"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
                            "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]}
    (root / "train.json").write_text(json.dumps(doc))
    return root / "train.json", doc


def test_ssl_on_a_coco_sets_images(rts, tmp_path):
    """`rts ssl train.json`: the COCO file's images (found beside it, in images/), their bands from the PNGs' colour
    interpretation; a COCO file named as a test split, or an image leading outside its folder, is refused."""
    import json

    coco, doc = _coco_set(tmp_path / "coco")
    out = tmp_path / "ssl_coco"
    r = rts("ssl", coco, "--modality", "rgb", "-o", out, "--windows", 4, "--epochs", 1, *FAST)
    assert r.code == 0, r.err
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert c["data"]["kind"] == "coco" and c["data"]["images"] == 2 and set(c["normalization"]) == {"red", "green",
                                                                                                     "blue"}
    assert c["band_map"] == {"red": 1, "green": 2, "blue": 3} and c["metrics"]["steps_run"] == 2
    test = coco.with_name("test.json")
    test.write_text(coco.read_text())
    r = rts("ssl", test, "--modality", "rgb", "-o", tmp_path / "t", *FAST)
    assert r.code == 2 and "test split" in r.err and not (tmp_path / "t").exists(), r.err
    (tmp_path / "secret.png").write_bytes((tmp_path / "coco" / "images" / "a.png").read_bytes())
    doc["images"][0]["file_name"] = "../../secret.png"
    coco.write_text(json.dumps(doc))
    r = rts("ssl", coco, "--modality", "rgb", "-o", tmp_path / "o", *FAST)
    assert r.code == 2 and "leads outside" in r.err and not (tmp_path / "o").exists(), r.err


def test_the_loss_check_warns_on_a_flat_loss_and_not_on_a_falling_one():
    from rtscli.engine.training_health import loss_fall

    rng = np.random.default_rng(0)
    flat = list(0.6 + rng.normal(0, 0.05, 200))
    falling = list(np.linspace(0.8, 0.4, 200) + rng.normal(0, 0.05, 200))
    f = loss_fall(flat)
    assert f is not None and f.compared == 20 and f.warning is not None
    assert "fell by only" in f.warning or "rose by" in f.warning
    assert "more steps" in f.warning and "--lr" in f.warning and "more images" in f.warning
    g = loss_fall(falling)
    assert g is not None and g.warning is None and g.fall > 0.4
    assert "loss_warning" not in g.record() and "loss_warning" in f.record()
    rising = loss_fall([0.5] * 10 + [0.6] * 10)
    assert rising is not None and rising.warning is not None and "rose by 20%" in rising.warning
    short = loss_fall([0.5] * 19)  # a smoke run of a few steps: compared, not warned about
    assert short is not None and short.fall == 0 and short.warning is None
    assert loss_fall([0.5]) is None and loss_fall([0.9, 0.5]).compared == 1  # type: ignore[union-attr]


def test_ssl_takes_its_own_learning_rate_not_the_presets_detector_rate(world):
    from rtscli.engine.ssl import SSL_LR, ssl_defaults
    from rtscli.modeling.config import training_defaults

    for preset in ("nano", "cascade-mvitv2-b"):
        d = ssl_defaults(preset)
        assert d.lr == SSL_LR != training_defaults(preset).lr and d.schedule == "cosine"
        assert d.batch_size == training_defaults(preset).batch_size
    c = yaml.safe_load((world["ssl"] / "config.yaml").read_text())
    assert c["training"]["settings"]["base_lr"] == SSL_LR


def test_block_normalized_targets_are_standardized_per_hidden_block(world):
    from rtscli.modeling.mim import block_normalized

    x = torch.randn(2, 3, 64, 64) * 3 + 5
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[0, :10] = False
    y = block_normalized(x, valid, 32)
    block = y[0, :, 32:, :32]
    assert abs(block.mean().item()) < 1e-4 and abs(block.std(unbiased=False).item() - 1) < 1e-3
    part = y[0, :, :32, :32][:, valid[0, :32, :32]]  # a block with invalid rows: over its valid pixels only
    assert abs(part.mean().item()) < 1e-4 and (y[0, :, :10] == 0).all()
    data = _windows(world)
    x, valid, mask = (t[None] for t in data[(0, 0)])
    model = _mim().eval()
    with torch.no_grad():
        plain, _ = model(x, valid, mask)
        model.norm_target = True
        a, _ = model(x, valid, mask)
        b, _ = model(x, valid, mask, target=x * 10 + 3)  # a target's scale and offset do not matter
    assert torch.isfinite(a) and torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, plain)
