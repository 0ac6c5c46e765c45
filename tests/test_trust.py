"""Trust boundaries: paths and ids from inside files (COCO, rts datasets) never reach outside what the user named,
and never put labels on the wrong image without a word."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import rasterio.errors
import yaml

from rtscli.errors import RtsError
from rtscli.io.paths import contained, inside, safe_component

SIZE = 32


def _png(path: Path, value: int, seed: int = 0) -> Path:
    """An RGB PNG of ``SIZE`` px, all its values near ``value`` (so that whose pixels a chip has can be told)."""
    rng = np.random.default_rng(seed)
    img = np.clip(value + rng.integers(-5, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _square(aid: int, image_id, x: int, y: int, r: int = 6, *, crowd: int = 0, cat: int = 1) -> dict:
    seg = [[x - r, y - r, x + r, y - r, x + r, y + r, x - r, y + r]]
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": crowd,
            "area": float((2 * r) ** 2), "bbox": [x - r, y - r, 2 * r, 2 * r]}


def _doc(images: list[dict], anns: list[dict], cats: list[dict] | None = None) -> dict:
    return {"images": [{"width": SIZE, "height": SIZE, **im} for im in images], "annotations": anns,
            "categories": cats if cats is not None else [{"id": 1, "name": "rts"}]}


def _write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _plain(images: Path, names=("p.png", "q.png", "r.png"), first_id: int = 10) -> tuple[list[dict], list[dict]]:
    """Well-behaved images in ``images`` and one annotation each."""
    ims, anns = [], []
    for k, name in enumerate(names):
        _png(images / name, 100, seed=k)
        ims.append({"id": first_id + k, "file_name": name})
        anns.append(_square(first_id + k, first_id + k, 10 + 3 * k, 12))
    return ims, anns


def _refused(r, out: Path, *needles: str) -> str:
    """The run was refused with one ``rts: error:`` line holding ``needles``, and wrote no dataset."""
    assert r.code == 2, (r.out, r.err)
    msg = r.err.strip().splitlines()[-1]
    assert msg.startswith("rts: error: ") and "Traceback" not in r.err, r.err
    for n in needles:
        assert n in msg, msg
    assert not out.exists()
    return msg


def _anns(ds: Path) -> dict[str, dict]:
    return {s: json.loads((ds / f"{s}.json").read_text()) for s in ("train", "val", "test")}


def _images(ds: Path) -> list[dict]:
    return [im for d in _anns(ds).values() for im in d["images"]]


# ---------------------------------------------------------------------------------------------
# the helper
# ---------------------------------------------------------------------------------------------
def test_the_path_helper_keeps_paths_inside_and_names_to_one_component(tmp_path):
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    (tmp_path / "out.png").write_bytes(b"x")
    (base / "link.png").symlink_to(tmp_path / "out.png")
    assert inside(base, "sub/../sub/a.png", "x") == (base / "sub" / "a.png").resolve()
    assert contained(base, "..\\out.png") is None  # Windows separators are separators
    assert contained(base, tmp_path / "out.png") is None  # absolute, elsewhere
    assert contained(base, "link.png") is None  # a symlink out
    with pytest.raises(RtsError, match="image 7 of train.json: '../out.png' leads outside"):
        inside(base, "../out.png", "image 7 of train.json")
    assert safe_component("Peel Plateau", "site") == "Peel Plateau"  # a plain name stays as it is
    assert safe_component("north/east:2", "site") == "north_east_2"
    for bad in ("..", "../../w", "/abs/w", "a/../../b", "C:\\w", "..\\w", " . "):
        with pytest.raises(RtsError):
            safe_component(bad, "site")


# ---------------------------------------------------------------------------------------------
# 1. paths in COCO files
# ---------------------------------------------------------------------------------------------
def test_a_file_name_that_leaves_is_found_by_base_name_inside_images_not_outside(tmp_path, rts):
    """``../secret/a.png`` with an ``a.png`` of its own in --images: the chip has the inside pixels."""
    images = tmp_path / "images"
    _png(tmp_path / "secret" / "a.png", 250)  # what the file points at: must never become a chip
    _png(images / "a.png", 60)
    ims, anns = _plain(images)
    coco = _write(tmp_path / "lab" / "train.json",
                  _doc(ims + [{"id": 1, "file_name": "../secret/a.png"}], anns + [_square(1, 1, 16, 16)]))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    entry = next(im for im in _images(out) if im["source_image_id"] == 1)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(out / entry["file_name"]) as chip:
        assert chip.read().mean() < 100  # the pixels of images/a.png (60), not of secret/a.png (250)


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_a_file_name_that_leads_outside_is_refused_naming_the_image(tmp_path, rts, how):
    images = tmp_path / "images"
    secret = _png(tmp_path / "secret" / "a.png", 250)
    ims, anns = _plain(images)
    name = {"relative": "../secret/a.png", "absolute": str(secret), "symlink": "c.png"}[how]
    if how == "symlink":
        (images / "c.png").symlink_to(secret)
    coco = _write(tmp_path / "lab" / "train.json",
                  _doc(ims + [{"id": 7, "file_name": name}], anns + [_square(7, 7, 16, 16)]))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    _refused(r, out, "train.json", "image 7", repr(name), "leads outside", "--images")


def test_label_studio_paths_are_found_by_base_name_inside_images(tmp_path, rts):
    images = tmp_path / "images"
    ims, anns = _plain(images)
    _png(images / "x.png", 100, seed=5)
    _png(images / "abc-y.png", 100, seed=6)
    ims += [{"id": 1, "file_name": "..\\..\\label-studio\\media\\upload\\4\\x.png"},
            {"id": 2, "file_name": "/data/upload/1/abc-y.png"}]
    anns += [_square(1, 1, 16, 16), _square(2, 2, 16, 16)]
    coco = _write(tmp_path / "export" / "result.json", _doc(ims, anns))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert {im["source_image_id"] for im in _images(out)} == {1, 2, 10, 11, 12}


@pytest.mark.parametrize("site", ["../../w", "ABS"])
def test_a_site_that_is_a_path_is_refused_and_nothing_is_written_outside(tmp_path, rts, site):
    images = tmp_path / "images"
    ims, anns = _plain(images)
    site = str(tmp_path / "abs_w") if site == "ABS" else site
    ims[0]["site"] = site
    coco = _write(tmp_path / "train.json", _doc(ims, anns))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    _refused(r, out, "train.json", "image 10", "site", repr(site))
    assert not (tmp_path / "w").exists() and not (tmp_path / "abs_w").exists()


def test_a_site_with_separators_becomes_one_folder_inside_the_dataset(tmp_path, rts):
    images = tmp_path / "images"
    ims, anns = _plain(images)
    for im in ims:
        im["site"] = "north/east"
    coco = _write(tmp_path / "train.json", _doc(ims, anns))
    out = tmp_path / "ds"
    assert rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0").code == 0
    assert {im["file_name"].rsplit("/", 1)[0] for im in _images(out)} == {"chips/north_east"}
    assert sorted(p.name for p in (out / "chips").iterdir()) == ["north_east"]


def _dataset(tmp_path: Path, rts, where: Path) -> Path:
    images = tmp_path / "images"
    ims, anns = _plain(images)
    coco = _write(tmp_path / "train.json", _doc(ims, anns))
    assert rts("prepare", "--coco", coco, "--images", images, "-o", where, "--split", "1,0,0").code == 0
    return where


@pytest.mark.parametrize("name", ["../outside.tif", "chips/../../../x.tif", "ABS"])
def test_export_coco_of_an_edited_dataset_reads_and_writes_nothing_outside(tmp_path, rts, name):
    ds = _dataset(tmp_path, rts, tmp_path / "a" / "b" / "ds")
    doc = json.loads((ds / "train.json").read_text())
    chip = ds / doc["images"][0]["file_name"]
    shutil.copyfile(chip, tmp_path / "a" / "b" / "outside.tif")  # what ../outside.tif points at
    shutil.copyfile(chip, tmp_path / "a" / "x.tif")  # what chips/../../../x.tif points at
    name = str(tmp_path / "a" / "x.tif") if name == "ABS" else name
    doc["images"][1]["file_name"] = name
    (ds / "train.json").write_text(json.dumps(doc))
    out = tmp_path / "exp"
    r = rts("export-coco", ds, "-o", out)
    _refused(r, out, "train.json", f"image {doc['images'][1]['id']} of train.json", repr(name), "leads outside")
    assert not (tmp_path / "x.tif").exists()  # the old code wrote chips/../../../x.tif here, outside exp/
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")] == []


def test_export_coco_keeps_working_on_a_dataset_as_prepared(tmp_path, rts):
    ds = _dataset(tmp_path, rts, tmp_path / "ds")
    out = tmp_path / "exp"
    r = rts("export-coco", ds, "-o", out)
    assert r.code == 0, r.err
    doc = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert sorted(im["file_name"] for im in doc["images"]) == ["train/default/p.tif", "train/default/q.tif",
                                                               "train/default/r.tif"]


# ---------------------------------------------------------------------------------------------
# 4. repeated ids, crowd annotations
# ---------------------------------------------------------------------------------------------
def _two_exports(images: Path) -> tuple[dict, dict]:
    """Two exports numbered from 1 each: their images hold squares at different places."""
    docs = []
    for k, names in enumerate((("a.png", "b.png"), ("c.png", "d.png"))):
        ims, anns = [], []
        for i, name in enumerate(names, 1):
            _png(images / name, 100, seed=10 * k + i)
            ims.append({"id": i, "file_name": name})
            anns.append(_square(i, i, 8 + 8 * k, 8 + 6 * i))  # where the square is tells the image
        docs.append(_doc(ims, anns))
    return docs[0], docs[1]


def test_two_exports_joined_into_one_file_are_refused_naming_the_ids(tmp_path, rts):
    images = tmp_path / "images"
    a, b = _two_exports(images)
    joined = _write(tmp_path / "train.json", {**a, "images": a["images"] + b["images"],
                                              "annotations": a["annotations"] + b["annotations"]})
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", joined, "--images", images, "-o", out, "--split", "1,0,0")
    _refused(r, out, "train.json", "image id(s) 1, 2", "a.png, c.png", "own id")

    # given as two files, each image gets its own annotations
    r = rts("prepare", "--coco", _write(tmp_path / "one" / "train.json", a), "--coco",
            _write(tmp_path / "two" / "test.json", b), "--images", images, "-o", out)
    assert r.code == 0, r.err
    where = {"a.png": [2.0, 8.0], "b.png": [2.0, 14.0], "c.png": [10.0, 8.0], "d.png": [10.0, 14.0]}
    seen = {}
    for d in _anns(out).values():
        names = {im["id"]: Path(im["source"]).name for im in d["images"]}
        for ann in d["annotations"]:
            seen[names[ann["image_id"]]] = ann["bbox"][:2]
    assert seen == where


@pytest.mark.parametrize("case", ["annotation ids", "missing image"])
def test_repeated_annotation_ids_and_annotations_of_unlisted_images_are_refused(tmp_path, rts, case):
    images = tmp_path / "images"
    ims, anns = _plain(images)
    if case == "annotation ids":
        anns[2]["id"] = anns[0]["id"]
        needles = ["annotation id(s) 10 are used more than once"]
    else:
        anns.append(_square(99, 42, 16, 16))
        needles = ["1 annotation(s) refer to image ids that the file does not list", "99 -> image 42"]
    coco = _write(tmp_path / "train.json", _doc(ims, anns))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    _refused(r, out, "train.json", *needles)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """CVAT's brush masks: uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def test_cvat_brush_masks_exported_as_crowd_are_named_and_can_be_trained_on(tmp_path, rts):
    images = tmp_path / "images"
    ims, anns = [], []
    for i in range(3):
        _png(images / f"b{i}.png", 100, seed=i)
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[5 + i:20 + i, 6:22] = 1
        ims.append({"id": i + 1, "file_name": f"b{i}.png"})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 1,
                     "segmentation": _uncompressed_rle(m), "area": float(m.sum()), "bbox": [6, 5 + i, 16, 15]})
    coco = _write(tmp_path / "train.json", _doc(ims, anns))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "3 annotation(s) are crowd regions" in r.err and "--crowd-as-instances" in r.err
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["counts"]["total"]["train"]["instances"] == 0  # kept as crowd: nothing to learn, and it says so

    out2 = tmp_path / "ds2"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out2, "--split", "1,0,0", "--crowd-as-instances")
    assert r.code == 0, r.err
    assert "are crowd regions" not in r.err
    m = yaml.safe_load((out2 / "manifest.yaml").read_text())
    assert m["counts"]["total"]["train"]["instances"] == 3
    assert [a["iscrowd"] for a in _anns(out2)["train"]["annotations"]] == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# 10. --coco-split by base name, Roboflow's root category
# ---------------------------------------------------------------------------------------------
def _paper_pair(root: Path, images: Path) -> tuple[Path, Path]:
    """The paper's file names, which say no split: coco_rts_train.json and coco_rts_valtest.json."""
    ims, anns = _plain(images)
    test_ims, test_anns = _plain(images, names=("t.png", "u.png"), first_id=20)
    return (_write(root / "coco_rts_train.json", _doc(ims, anns)),
            _write(root / "coco_rts_valtest.json", _doc(test_ims, test_anns)))


def test_coco_split_names_files_by_base_name(tmp_path, rts):
    root = tmp_path / "paper"
    train, valtest = _paper_pair(root, root / "images")
    split = "train=coco_rts_train.json,test=coco_rts_valtest.json"
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", train, "--coco", valtest, "--coco-split", split, "--images", root / "images",
            "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    got = _anns(out)
    assert len(got["train"]["images"]) == 3 and len(got["test"]["images"]) == 2

    out = tmp_path / "ds_folder"  # the folder, as the README shows
    r = rts("prepare", root, "--coco-split", split, "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert len(_anns(out)["test"]["images"]) == 2


def test_coco_split_refuses_a_base_name_that_several_files_have(tmp_path, rts):
    a, _ = _paper_pair(tmp_path / "a", tmp_path / "images")
    b = _write(tmp_path / "b" / "coco_rts_train.json", json.loads(a.read_text()))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", a, "--coco", b, "--coco-split", "train=coco_rts_train.json,test=x.json",
            "--images", tmp_path / "images", "-o", out)
    _refused(r, out, "coco_rts_train.json", "several COCO files", "give the file's path")


def test_a_roboflow_root_category_without_annotations_needs_no_category_option(tmp_path, rts):
    images = tmp_path / "images"
    ims, anns = _plain(images)
    cats = [{"id": 0, "name": "thaw-slumps", "supercategory": "none"},
            {"id": 1, "name": "slump", "supercategory": "thaw-slumps"}]
    coco = _write(tmp_path / "train" / "_annotations.coco.json", _doc(ims, anns, cats))
    out = tmp_path / "ds"
    r = rts("prepare", "--coco", coco, "--images", images, "-o", out, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "COCO category 'slump' chosen: the only one with annotations" in r.err
    assert sum(len(d["annotations"]) for d in _anns(out).values()) == 3


def test_training_reads_no_chip_outside_an_edited_dataset(tmp_path):
    """A dataset from elsewhere whose COCO file names ``../outside.tif``: training and evaluation refuse it in one
    line naming the image, instead of reading a raster outside the dataset."""
    import json

    from rtscli.data.dataset import ChipDataset, DatasetInfo
    from conftest import prepared_samples

    ds = prepared_samples(tmp_path, 4)
    doc = json.loads((ds / "train.json").read_text())
    first = doc["images"][0]
    (tmp_path / "outside.tif").write_bytes((ds / first["file_name"]).read_bytes())
    first["file_name"] = "../outside.tif"
    (ds / "train.json").write_text(json.dumps(doc))
    info = DatasetInfo.open(ds)
    chips = ChipDataset(info, "train", [info.modality("rgb")], 128)
    k = chips.ids.index(first["id"])
    with pytest.raises(RtsError, match=r"image \d+ of train.json: '../outside.tif' leads outside"):
        chips.load(k)
    chips.load((k + 1) % len(chips.ids))  # the dataset's own chips still load
