"""Bring your own dataset: COCO instance datasets, plain image chips, JPEG and instance-id masks, any tile size."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import rasterio.errors
import yaml
from pycocotools import mask as mask_utils

from conftest import write_tif

RUN = ["--preset", "nano", "--workers", "0", "--batch-size", "2", "--lr", "0.004", "--warmup-steps", "1"]


def _disk(shape, cx, cy, r):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (int(cx), int(cy)), int(r), 1, -1)
    return m


def write_coco(root: Path, n: int = 12, size: int = 300, seed: int = 0) -> dict:
    """A COCO dataset as labelling tools export it: JPEG and PNG images without georeference, one polygon and
    one RLE annotation per image, a crowd region on image 1, train and test files, category id 7 'rts'."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    docs = {s: {"images": [], "annotations": [], "categories": [{"id": 7, "name": "rts"}]} for s in ("train", "test")}
    aid = 0
    for i in range(n):
        split = "test" if i % 4 == 0 else "train"
        name = f"im{i}.{'jpg' if i % 2 else 'png'}"
        img = (rng.random((size, size, 3)) * 60 + 80).astype(np.uint8)
        for k in range(2):
            m = _disk((size, size), *rng.integers(40, size - 40, 2), rng.integers(10, 30))
            img[m > 0] = (200, 90, 40)
            aid += 1
            if k == 0:
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                seg = [c.reshape(-1).astype(float).tolist() for c in contours]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, size, size))
            else:
                rle = mask_utils.encode(np.asfortranarray(m))
                seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            docs[split]["annotations"].append({"id": aid, "image_id": i, "category_id": 7, "segmentation": seg,
                                               "area": float(mask_utils.area(rle)),
                                               "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        if i == 1:
            m = np.zeros((size, size), np.uint8)
            m[:20, :50] = 1
            aid += 1
            rle = mask_utils.encode(np.asfortranarray(m))
            docs[split]["annotations"].append({"id": aid, "image_id": i, "category_id": 7, "iscrowd": 1,
                                               "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
                                               "area": 1000.0, "bbox": [0, 0, 50, 20]})
        cv2.imwrite(str(root / "images" / name), img[:, :, ::-1])
        docs[split]["images"].append({"id": i, "file_name": name, "width": size, "height": size})
    for s, d in docs.items():
        (root / f"instances_{s}.json").write_text(json.dumps(d))
    return docs


def _anns(ds: Path) -> dict[str, list[dict]]:
    return {s: json.loads((ds / f"{s}.json").read_text()) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    docs = write_coco(root)
    return root, docs


def test_a_coco_dataset_comes_in_with_its_instances_areas_boxes_crowd_and_splits(coco_set, rts, tmp_path):
    root, docs = coco_set
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", root / "instances_train.json", "--coco", root / "instances_test.json",
            "--images", root / "images", "-o", out)
    assert r.code == 0, r.err
    assert "12 image(s) have no georeference" in r.err and "pixel grid" in r.err
    assert "colour interpretation: red=1,green=2,blue=3" in r.err  # RGB JPEG/PNG need no --bands
    assert "NotGeoreferenced" not in r.err
    got = _anns(out)
    src = {f"instances_{s}.json#{a['id']}": (s, a) for s, d in docs.items() for a in d["annotations"]}
    mine = [(s, a) for s, d in got.items() for a in d["annotations"]]
    assert len(mine) == len(src) == 25  # every annotation, once
    for s, a in mine:
        split, b = src[a["source_id"]]
        assert (a["area"], a["bbox"], a["iscrowd"], a["segmentation"]) == (b["area"], b["bbox"], b["iscrowd"],
                                                                          b["segmentation"])
        assert (s == "test") == (split == "test")  # the test file's images are the test split; val is drawn from train
    assert len(got["val"]["images"]) >= 1 and len(got["test"]["images"]) == 3
    assert sum(a["iscrowd"] for _, a in mine) == 1
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["mode"] == "coco" and m["coco"]["crowd_regions_kept"] == 1 and m["pixel_grid_images"] == 12
    assert m["counts"]["total"]["test"]["instances"] == 6  # crowd regions are not counted as slumps
    image = got["test"]["images"][0]
    assert image["crs"] is None and image["transform"] == [1, 0, 0, 0, 1, 0]
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(out / image["file_name"]) as chip:
        assert chip.crs is None and chip.count == 3 and chip.dtypes[0] == "uint8"

    # training and evaluation run on it: the 300 px images fit a 320 px tile whole
    run = tmp_path / "run"
    r = rts("pretrain", "--modality", "rgb", "--data", out, "-o", run, "--max-steps", 2, "--tile-size", 320, *RUN)
    assert r.code == 0, r.err
    assert "NotGeoreferenced" not in r.err  # pixel grids are expected: no library warning about them
    r = rts("evaluate", run, "--data", out)
    assert r.code == 0, r.err
    assert "NotGeoreferenced" not in r.err
    rep = json.loads((run / "eval_test.json").read_text())
    assert rep["images"] == 3 and rep["instances"] == 6
    r = rts("evaluate", run, "--data", out, "--errors", tmp_path / "e.gpkg")  # map layers need map coordinates
    assert r.code == 2 and "no georeference" in r.err and not (tmp_path / "e.gpkg").exists()


def test_the_training_set_skips_crowd_regions(coco_set, rts, tmp_path):
    from rtscli.data.dataset import ChipDataset, DatasetInfo
    from rtscli.data.modalities import Modality

    root, _ = coco_set
    out = tmp_path / "ds"
    assert rts("prepare", root, "-o", out, "--split", "1,0,0").code == 0  # COCO files found in the folder
    info = DatasetInfo.open(out)
    ds = ChipDataset(info, "train", [Modality("rgb", ("red", "green", "blue"))], 320)
    crowd_image = next(im["id"] for im in ds.coco.dataset["images"] if im["source_image_id"] == 1)
    _, target, _ = ds[ds.ids.index(crowd_image)]
    assert len(target["masks"]) == 2  # the two slumps, not the crowd region


def test_images_larger_than_the_chip_are_cut_and_their_annotations_clipped(coco_set, rts, tmp_path):
    root, docs = coco_set
    out = tmp_path / "ds"
    r = rts("prepare", root, "-o", out, "--chip-size", 150, "--overlap", 0, "--min-pixels", 1)
    assert r.code == 0, r.err
    got = _anns(out)
    assert sum(len(d["images"]) for d in got.values()) == 12 * 4  # 300 px -> 2 x 2 chips of 150
    pieces: dict[str, float] = {}
    for d in got.values():
        for a in d["annotations"]:
            assert max(a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) <= 150
            pieces[a["source_id"]] = pieces.get(a["source_id"], 0) + mask_utils.area(_rle(a, 150))
    for s, d in docs.items():
        for a in d["annotations"]:
            whole = mask_utils.area(_rle(a, 300))
            assert pieces[f"instances_{s}.json#{a['id']}"] == whole  # the pieces add up to the slump, pixel for pixel


def _rle(a, size):
    seg = a["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, size, size))
    return {"size": seg["size"], "counts": seg["counts"].encode()}


@pytest.mark.parametrize("case", ["missing image", "two categories", "split unknown", "wrong size", "not coco"])
def test_bad_coco_input_gives_one_line_and_no_output(coco_set, rts, tmp_path, case):
    root, docs = coco_set
    train = json.loads(json.dumps(docs["train"]))
    name = "instances_train.json"
    if case == "missing image":
        train["images"][0]["file_name"] = "nowhere.jpg"
        needles = ["not found", "nowhere.jpg", "--images"]
    elif case == "two categories":
        train["categories"] = [{"id": 7, "name": "slump"}, {"id": 8, "name": "gully"}]
        needles = ["no category 'rts'", "slump, gully", "--category"]
    elif case == "split unknown":
        name = "labels.json"
        needles = ["cannot tell the split", "--coco-split"]
    elif case == "wrong size":
        train["images"][0]["width"] = 299
        needles = ["300 x 300", "299 x 300"]
    else:
        train = {"type": "FeatureCollection", "features": []}
        needles = ["not a COCO instances file"]
    (tmp_path / name).write_text(json.dumps(train))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", tmp_path / name, "--coco", root / "instances_test.json", "--images",
            root / "images", "-o", out)
    assert r.code == 2, (r.out, r.err)
    msg = r.err.strip().splitlines()[-1]  # notes on the images may come first
    assert msg.startswith("rts: error: ") and "Traceback" not in r.err
    for n in needles:
        assert n in msg, msg
    assert not out.exists()


def test_category_and_explicit_splits(coco_set, rts, tmp_path):
    root, docs = coco_set
    two = json.loads(json.dumps(docs["train"]))
    two["categories"].append({"id": 9, "name": "gully"})
    two["annotations"].append({**two["annotations"][0], "id": 999, "category_id": 9})
    (tmp_path / "a.json").write_text(json.dumps(two))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco-split", f"train={tmp_path / 'a.json'},val={root / 'instances_test.json'}",
            "--images", root / "images", "--category", "RTS", "-o", out)
    assert r.code == 0, r.err
    got = _anns(out)
    assert len(got["val"]["images"]) == 3 and not got["test"]["images"]  # the split from --coco-split, none drawn
    assert all(a["source_id"] != "a.json#999" for d in got.values() for a in d["annotations"])  # gully left out


def _synth_dataset(tmp_path, rts, *, size: int, chip: int, block: int = 512) -> tuple[Path, Path]:
    """One `rts synth` scene of ``size`` px and the dataset `rts prepare` cuts from it with its labels."""
    r = rts("synth", tmp_path / "syn", "--chips", 0, "--scenes", 1, "--scene-size", size)
    assert r.code == 0, r.err
    scene = next((tmp_path / "syn" / "scenes").glob("*.tif"))
    ds = tmp_path / "ds"
    assert rts("prepare", scene, "--labels", scene.with_suffix(".gpkg"), "--bands", "planetscope4",
               "--chip-size", chip, "--split-block", block, "-o", ds).code == 0
    return scene, ds


def test_rts_dataset_round_trips_through_coco(tmp_path, rts):
    """rts synth -> rts prepare -> rts export-coco -> rts prepare: the same chips, georeference and instances."""
    scene, first = _synth_dataset(tmp_path, rts, size=600, chip=128)
    exported = tmp_path / "exp"
    r = rts("export-coco", first, "-o", exported)
    assert r.code == 0, r.err
    assert sorted(p.name for p in (exported / "annotations").iterdir()) == [
        "instances_test.json", "instances_train.json", "instances_val.json"]
    again = tmp_path / "again"
    r = rts("prepare", exported, "-o", again)
    assert r.code == 0, r.err

    def instances(ds):
        out = {}
        for s, d in _anns(ds).items():
            ims = {im["id"]: im for im in d["images"]}
            for im in d["images"]:
                out[(s, Path(im["file_name"]).stem)] = [im["crs"], im["transform"]]
            for a in d["annotations"]:
                im = ims[a["image_id"]]
                out[(s, Path(im["file_name"]).stem)].append(
                    (a["bbox"], mask_utils.decode(_rle(a, im["width"])).tobytes()))
        return out

    a, b = instances(first), instances(again)
    assert a == b and sum(len(v) - 2 for v in a.values()) > 5
    r = rts("export-coco", first, "-o", exported)  # never overwritten without --overwrite
    assert r.code == 2 and "--overwrite" in r.err
    r = rts("export-coco", first, "-o", tmp_path / "png", "--image-format", "png")
    assert r.code == 0, r.err
    pngs = list((tmp_path / "png" / "images").rglob("*.png"))
    with rasterio.open(pngs[0]) as src:
        assert src.count == 3 and src.dtypes[0] == "uint8" and src.crs is not None  # georeference kept (.aux.xml)


# ---------------------------------------------------------------------------------------------
# masks: JPEG noise, instance ids
# ---------------------------------------------------------------------------------------------
def _jpeg(path: Path, array: np.ndarray, quality: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def _image(path: Path, size=96, seed=0):
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 60 + 80).astype(np.uint8)
    cv2.imwrite(str(path), img)


def test_jpeg_masks_with_compression_noise_are_thresholded(tmp_path, rts):
    (tmp_path / "img").mkdir()
    truth = {}
    for i in range(4):
        _image(tmp_path / "img" / f"c{i}.jpg", seed=i)
        m = np.maximum(_disk((96, 96), 30, 30, 12), _disk((96, 96), 70, 60 + i, 10)) * 255
        _jpeg(tmp_path / "msk" / f"c{i}.jpg", m)
        truth[f"c{i}"] = m > 0
    noisy = cv2.imread(str(tmp_path / "msk" / "c0.jpg"), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(noisy)) > 2  # the noise is there
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "4 mask file(s) held values near 0 and near 255" in r.err
    d = _anns(out)["train"]
    assert len(d["annotations"]) == 8
    for im in d["images"]:
        got = np.zeros((96, 96), bool)
        for a in d["annotations"]:
            if a["image_id"] == im["id"]:
                got |= mask_utils.decode(_rle(a, 96)).astype(bool)
        assert (got != truth[Path(im["file_name"]).stem]).sum() <= 4  # the disks, within JPEG's edge pixels

    grey = (np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8)  # not a mask at all
    _jpeg(tmp_path / "msk" / "c0.jpg", grey)
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", tmp_path / "ds2")
    assert r.code == 2 and "c0.jpg" in r.err and "not binary" in r.err and "PNG" in r.err
    assert not (tmp_path / "ds2").exists()


def test_instance_id_masks_keep_touching_slumps_apart(tmp_path, rts):
    write_tif(tmp_path / "img" / "s.tif", np.full((4, 64, 64), 500, np.uint16))
    ids = np.zeros((64, 64), np.uint8)
    ids[10:30, 10:30] = 1
    ids[10:30, 30:50] = 2  # touches slump 1 along a whole edge
    ids[40:60, 5:15] = 3
    write_tif(tmp_path / "msk" / "s.tif", ids)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out, "--bands", "planetscope4",
            "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "hold instance ids" in r.err
    anns = _anns(out)["train"]["annotations"]
    assert sorted(a["area"] for a in anns) == [200, 400, 400] and len(anns) == 3
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "-o", out, "--bands", "planetscope4",
            "--split", "1,0,0", "--mask-kind", "binary", "--overwrite")
    assert r.code == 0, r.err
    assert sorted(a["area"] for a in _anns(out)["train"]["annotations"]) == [200, 800]  # the touching two merge

    _jpeg(tmp_path / "jmsk" / "s.jpg", ids)
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "jmsk", "-o", tmp_path / "ds3", "--bands",
            "planetscope4", "--mask-kind", "instances")
    assert r.code == 2 and "do not survive" in r.err


def test_mask_reader_decisions():
    from rtscli.data.chips import MaskReader
    from rtscli.errors import RtsError

    reader = MaskReader()
    p = Path("m.png")
    labels, ids = reader.labels(np.array([[0, 255], [255, 0]], np.uint8), p)
    assert not ids and labels.tolist() == [[0, 1], [1, 0]]
    noisy = np.array([[0, 3, 6, 250], [248, 255, 1, 0]], np.uint8)
    labels, ids = reader.labels(noisy, p, lossy=True)
    assert not ids and labels.tolist() == [[0, 0, 0, 1], [1, 1, 0, 0]]
    labels, ids = reader.labels(np.array([[0, 1, 2, 2]], np.uint16), p)
    assert ids and labels.tolist() == [[0, 1, 2, 2]]
    with pytest.raises(RtsError, match="neither"):
        reader.labels(np.array([[0.0, 0.5]], np.float32), p)
    with pytest.raises(RtsError, match="unknown mask kind"):
        MaskReader("ids")


def test_plain_jpeg_chips_with_png_masks_as_a_new_user_tries_them(tmp_path, rts):
    """The issue's command: `rts prepare images/ --masks masks/ --bands red=1,green=2,blue=3` on JPEG chips."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        _image(tmp_path / "images" / f"chip{i}.jpg", seed=i)
        cv2.imwrite(str(tmp_path / "masks" / f"chip{i}.png"), _disk((96, 96), 40 + i, 50, 15) * 255)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "images", "--masks", tmp_path / "masks", "--bands", "red=1,green=2,blue=3",
            "-o", out)
    assert r.code == 0, r.err
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert sum(v["images"] for v in m["counts"]["total"].values()) == 6
    assert sum(v["instances"] for v in m["counts"]["total"].values()) == 6
    # whole images, each its own place: the six images are spread over the three splits
    assert all(m["counts"]["total"][s]["images"] >= 1 for s in ("train", "val", "test"))


def test_predict_refuses_an_image_without_georeference_with_the_fix(tmp_path, rts, coco_set):
    from rtscli.io.raster import inspect
    from rtscli.errors import RtsError

    root, _ = coco_set
    with pytest.raises(RtsError) as err:
        inspect(root / "images" / "im1.jpg")
    msg = str(err.value)
    assert "no georeference" in msg and "rio edit-info --crs" in msg and "rts evaluate" in msg


# ---------------------------------------------------------------------------------------------
# any tile size
# ---------------------------------------------------------------------------------------------
def test_a_320_px_tile_trains_saves_evaluates_and_predicts(tmp_path, rts):
    scene, ds = _synth_dataset(tmp_path, rts, size=700, chip=320, block=320)
    run = tmp_path / "run"
    r = rts("pretrain", "--modality", "rgb", "--data", ds, "-o", run, "--max-steps", 2, "--tile-size", 320, *RUN)
    assert r.code == 0, r.err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["tile_size"] == 320
    assert rts("evaluate", run, "--data", ds, "--split", "train").code == 0
    out = tmp_path / "p.gpkg"
    r = rts("predict", scene, "-o", out, "--model", run, "--workers", 0)
    assert r.code == 0, r.err
    assert out.exists()
    r = rts("pretrain", "--modality", "rgb", "--data", ds, "-o", tmp_path / "bad", "--tile-size", 300, *RUN)
    assert r.code == 2 and "multiple of" in r.err and "288 or 320" in r.err and not (tmp_path / "bad").exists()


def test_mvitv2_weights_move_to_another_tile_size():
    """A backbone trained at one tile size loads into a model of another: the relative-position tables are
    interpolated (detectron2's MViTv2 does the same), nothing is dropped."""
    from rtscli.modeling.backbone import build_backbone, load_backbone_weights
    from rtscli.modeling.config import load_preset

    cfg = load_preset("nano")
    small = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=256)
    big = build_backbone(cfg=cfg.backbone, fpn=cfg.fpn, tile_size=320)
    rel = [k for k in small.body.state_dict() if k.endswith("rel_pos_h")]
    assert rel and small.body.state_dict()[rel[0]].shape != big.body.state_dict()[rel[0]].shape
    from safetensors.torch import save_file
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in small.body.state_dict().items()}, str(path))
        note = load_backbone_weights(big, str(path), timm_name=None)
    n = len(big.body.state_dict())
    assert note.endswith(f"({n}/{n} tensors)")


def test_a_preview_png_beside_the_scenes_is_left_out_for_vector_labels(tmp_path, rts):
    r = rts("synth", tmp_path / "syn", "--chips", 0, "--scenes", 1, "--scene-size", 400)
    assert r.code == 0, r.err
    scenes = tmp_path / "syn" / "scenes"
    _image(scenes / "a_preview.png")  # sorts before the scene
    labels = [p for p in scenes.glob("*.gpkg") if "distractors" not in p.name][0]
    r = rts("prepare", scenes, "--labels", labels, "--bands", "planetscope4", "--chip-size", 128, "-o", tmp_path / "d")
    assert r.code == 0, r.err
    assert "1 JPEG/PNG file(s) without georeference in the scene folder(s) left out (e.g. a_preview.png)" in r.err


def test_a_roboflow_export_keeps_its_three_splits_and_every_image(tmp_path, rts):
    """Roboflow: train/, valid/, test/ each with _annotations.coco.json and images of the same names."""
    root = tmp_path / "rf"
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        sub = root / split
        docs = write_coco(tmp_path / f"tmp_{split}", n=n, size=96, seed=n + len(split))
        sub.mkdir(parents=True)
        merged = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "rts-objects"},
                                                                  {"id": 7, "name": "rts"}]}
        for d in docs.values():
            merged["images"] += d["images"]
            merged["annotations"] += d["annotations"]
        (sub / "_annotations.coco.json").write_text(json.dumps(merged))
        for f in (tmp_path / f"tmp_{split}" / "images").iterdir():
            f.rename(sub / f.name)
    bad = json.loads((root / "test" / "_annotations.coco.json").read_text())
    bad["annotations"].append({"id": 900, "image_id": 0, "category_id": 7, "segmentation": [[1, 1, 5, 5]],
                               "bbox": [1, 1, 4, 4], "area": 0, "iscrowd": 0})  # a two-point "polygon"
    (root / "test" / "_annotations.coco.json").write_text(json.dumps(bad))
    out = tmp_path / "ds"
    r = rts("prepare", root, "-o", out)
    assert r.code == 0, r.err
    assert "1 annotation(s) with an unreadable or empty segmentation were left out" in r.err and "id 900" in r.err
    got = _anns(out)
    assert [len(got[s]["images"]) for s in ("train", "val", "test")] == [6, 3, 3]  # no image lost or merged
    names = [im["file_name"] for d in got.values() for im in d["images"]]
    assert len(set(names)) == 12
    for d in got.values():
        per_image = {}
        for a in d["annotations"]:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert all(per_image.get(im["id"], 0) in (2, 3) for im in d["images"])  # its own annotations only


def test_min_pixels_applies_to_coco_annotations_kept_whole(coco_set, rts, tmp_path):
    root, docs = coco_set
    out = tmp_path / "ds"
    r = rts("prepare", root, "-o", out, "--min-pixels", 1000)
    assert r.code == 0, r.err
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    small = sum(1 for d in docs.values() for a in d["annotations"] if not a["iscrowd"] and a["area"] < 1000)
    assert small and m["dropped"]["specks_below_min_area"] == small
    assert sum(len(d["annotations"]) for d in _anns(out).values()) == 25 - small


def test_a_world_file_georeferences_a_jpeg(tmp_path, rts):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for i in range(3):
        _image(tmp_path / "img" / f"c{i}.jpg", seed=i)
        (tmp_path / "img" / f"c{i}.jgw").write_text(f"3\n0\n0\n-3\n{500001.5 + 1000 * i}\n6999998.5\n")
        cv2.imwrite(str(tmp_path / "msk" / f"c{i}.png"), _disk((96, 96), 40, 50, 15) * 255)
    out = tmp_path / "ds"
    r = rts("prepare", tmp_path / "img", "--masks", tmp_path / "msk", "--assume-crs", "EPSG:32606", "-o", out)
    assert r.code == 0, r.err
    ims = {Path(im["file_name"]).stem: im for d in _anns(out).values() for im in d["images"]}
    assert ims["c1"]["crs"] == "EPSG:32606" and ims["c1"]["transform"] == [3, 0, 501000, 0, -3, 7000000]


def test_a_refused_training_run_leaves_no_folder_behind(coco_set, rts, tmp_path):
    root, _ = coco_set
    ds = tmp_path / "ds"
    assert rts("prepare", root, "-o", ds).code == 0
    run = tmp_path / "run"
    r = rts("pretrain", "--modality", "rgb", "--data", ds, "-o", run, "--max-steps", 1, *RUN)  # 300 px > 256
    assert r.code == 2 and "--tile-size 320" in r.err and not run.exists()


# ---------------------------------------------------------------------------------------------
# rts prepare (vectors) -> rts export-coco -> rts prepare (COCO): one --min-pixels rule both ways
# ---------------------------------------------------------------------------------------------
_T = rasterio.transform.Affine(10.0, 0.0, 470000.0, 0.0, -10.0, 7550000.0)


def _vector_dataset(tmp_path, rts, geoms_px, *, size=128, chip=64, overlap=0.0, extra=()) -> Path:
    """A 4-band scene of ``size`` px under ``_T`` with label polygons given in scene pixels, prepared with
    ``--chip-size chip --overlap overlap --split 1,0,0`` (every chip in train)."""
    import geopandas as gpd
    from shapely.affinity import affine_transform

    rng = np.random.default_rng(1)
    scene = write_tif(tmp_path / "scene.tif", rng.integers(300, 3000, (4, size, size)).astype(np.uint16),
                      crs="EPSG:32608", transform=_T, nodata=0)
    to_map = [_T.a, _T.b, _T.d, _T.e, _T.c, _T.f]
    gpd.GeoDataFrame(geometry=[affine_transform(g, to_map) for g in geoms_px], crs="EPSG:32608").to_file(
        tmp_path / "labels.gpkg")
    ds = tmp_path / "ds"
    r = rts("prepare", scene, "--labels", tmp_path / "labels.gpkg", "-o", ds, "--bands", "planetscope4",
            "--chip-size", chip, "--overlap", overlap, "--split", "1,0,0", *extra)
    assert r.code == 0, r.err
    return ds


def _n_instances(ds: Path) -> int:
    return sum(len(d["annotations"]) for d in _anns(ds).values())


def test_min_pixels_keeps_the_same_instances_from_vectors_and_from_their_coco_export(tmp_path, rts):
    """A label that covers 16 pixels as drawn by rasterio but whose written COCO polygon decodes (pycocotools, as
    every COCO tool and rts's own re-import read it) to 14: both paths measure the decoded pixels, so the round
    trip keeps as many instances as the first prepare wrote (before: 2 -> 1)."""
    from shapely.geometry import Point, box

    small = Point(10.1, 10.5).buffer(2.15, quad_segs=4)  # rasterio: 16 px; its COCO polygon decodes to 14 px
    ds = _vector_dataset(tmp_path, rts, [small, box(30, 30, 50, 45)])
    first = _n_instances(ds)
    for d in _anns(ds).values():  # what was written holds --min-pixels as any COCO reader decodes it
        for a in d["annotations"]:
            assert mask_utils.decode(_rle(a, 64)).sum() >= 16
    assert rts("export-coco", ds, "-o", tmp_path / "exp").code == 0
    r = rts("prepare", tmp_path / "exp", "-o", tmp_path / "again")
    assert r.code == 0, r.err
    assert _n_instances(tmp_path / "again") == first == 1
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    dropped = m["dropped"]  # the 14 px label, counted where it was dropped (whole in its chip, or a piece)
    assert dropped.get("labels_below_min_pixels", 0) + dropped["labels_clipped_below_min_area"] == 1


def test_coco_reimport_of_overlapping_chips_names_them_and_an_empty_val_file_truly(tmp_path, rts):
    """Chips that rts export-coco wrote from overlapping windows of one scene are chips of that scene (not copies,
    nor several dates), and an empty instances_val.json is named as empty (not "no val COCO file")."""
    from shapely.geometry import box

    ds = _vector_dataset(tmp_path, rts, [box(20, 20, 40, 40), box(70, 60, 95, 90)], size=128, chip=64,
                         overlap=0.25)
    assert rts("export-coco", ds, "-o", tmp_path / "exp").code == 0
    assert not json.loads((tmp_path / "exp" / "annotations" / "instances_val.json").read_text())["images"]
    r = rts("prepare", tmp_path / "exp", "-o", tmp_path / "again")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "instances_val.json (val)" in err  # listed among the files found
    assert "no val COCO file" not in err and "instances_val.json lists no images" in err
    assert "copies" not in err and "several dates" not in err
    assert "chips of 1 scene" in err and "scene.tif" in err
    m = yaml.safe_load((tmp_path / "again" / "manifest.yaml").read_text())
    assert m["split"]["overlapping_pairs_across_files"] == 0  # one scene's chips, not different files' items
    assert _n_instances(tmp_path / "again") == _n_instances(ds)
