"""Simple Copy-Paste (Ghiasi et al., CVPR 2021) for training chips: rtscli.data.copy_paste and ChipDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import apart, paper_sample, write_tif
from rtscli.data import copy_paste as cp
from rtscli.errors import RtsError

TILE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 paper-layout 64 px chips with 0-3 slumps each, every other one with a nodata margin (all bands at the
    file's nodata value), prepared with --bands paper (12 train chips)."""
    from rtscli.cli import main

    root = tmp_path_factory.mktemp("copy_paste")
    rng = np.random.default_rng(1)
    for k in range(16):
        rects = []
        for _ in range(int(rng.integers(0, 4)) if k % 5 else 0):
            r0, c0 = rng.integers(0, 48, 2)
            rects.append((int(r0), int(r0 + rng.integers(6, 16)), int(c0), int(c0 + rng.integers(6, 16))))
        img = paper_sample(shape=(64, 64), rects=rects, seed=k)
        if k % 2:
            img[:, :, :int(rng.integers(6, 20))] = -9999.0
        write_tif(root / "in" / "site" / f"c{k}.tif", img, transform=apart(k), nodata=-9999.0)
    (root / "split.csv").write_text("".join(f"c{k},{'train' if k < 12 else 'val'}\n" for k in range(16)))
    assert main(["prepare", str(root / "in"), "-o", str(root / "ds"), "--bands", "paper",
                 "--split-file", str(root / "split.csv")]) == 0
    return root / "ds"


def _chips(dataset, **kw):
    from rtscli.data.dataset import ChipDataset, DatasetInfo

    info = DatasetInfo.open(dataset)
    mods = [info.modality("rgb"), info.modality("ndvi")]
    return ChipDataset(info, "train", mods, TILE, augment=kw.pop("augment", True), seed=kw.pop("seed", 0), **kw)


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    out = []
    for m in masks.numpy():
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


# -- the pure functions --------------------------------------------------------------------------------------
def _scene(seed: int = 0, h: int = 32, w: int = 32):
    """A target (random image, two instances, invalid left margin) and a donor whose planes 0 and 1 are its own
    row and column numbers (so a pasted pixel says where it came from), with an invalid bottom margin."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(3, h, w)).astype(np.float32)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 4:10, 4:10] = 1
    masks[1, 20:30, 20:30] = 1
    valid = np.ones((h, w), bool)
    valid[:, :3] = False
    d_image = np.stack([*np.mgrid[0:h, 0:w].astype(np.float32), rng.normal(size=(h, w)).astype(np.float32)])
    d_masks = np.zeros((3, h, w), np.uint8)
    d_masks[0, 2:12, 14:24] = 1
    d_masks[1, 18:31, 3:13] = 1
    d_masks[2, 0:2, 0:2] = 1  # 4 px: never pasted
    d_valid = np.ones((h, w), bool)
    d_valid[28:, :] = False
    return image, masks, valid, d_image, d_masks, d_valid


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_paste_puts_the_donors_pixels_under_the_pasted_masks_and_nowhere_invalid(sigma):
    image, masks, valid, d_image, d_masks, d_valid = _scene()
    out, new, n = cp.paste(image, masks, valid, d_image, d_masks, d_valid, sigma=sigma)
    assert n == 2 and out.dtype == np.float32 and new.dtype == np.uint8 and len(new) == 2 + 2
    pasted, kept = new[-n:].astype(bool), new[:-n].astype(bool)
    union = pasted.any(0)
    assert np.array_equal(out[:, union], d_image[:, union])  # all channels together
    assert not (kept & union).any()  # target masks lose the covered pixels
    assert not (union & ~valid).any() and not (union & ~d_valid).any()
    assert np.array_equal(out[:, ~valid], image[:, ~valid]) and np.array_equal(out[:, ~d_valid], image[:, ~d_valid])
    assert np.array_equal(pasted[1], (d_masks[1] == 1) & valid & d_valid)  # cut by both invalid areas
    ring = ~union
    if sigma == 0:
        assert np.array_equal(out[:, ring], image[:, ring])  # hard: nothing else changes
    else:  # blended outwards only: a convex mix of target and donor on a thin ring, the target beyond it
        import cv2

        near = cv2.dilate(union.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert np.array_equal(out[:, ~near], image[:, ~near])
        changed = (out != image).any(0) & ring
        assert changed.any() and not (changed & ~near).any()
        lo, hi = np.minimum(image, d_image), np.maximum(image, d_image)
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()


def test_paste_drops_occluded_target_instances_and_tiny_pasted_ones():
    image, masks, valid, d_image, d_masks, d_valid = _scene()
    masks[1] = 0
    masks[1, 5:8, 16:19] = 1  # 9 px, all under the donor's first slump: fully occluded, dropped
    masks[0, 4:10, 4:16] = 1  # partly under it: keeps its uncovered part
    out, new, n = cp.paste(image, masks, valid, d_image, d_masks[[0, 2]], d_valid)
    assert n == 1 and len(new) == 2  # the 4 px donor slump is not pasted, the occluded target slump is gone
    assert np.array_equal(new[0], masks[0] & ~d_masks[0].astype(bool))
    untouched = np.zeros_like(masks[:1])
    untouched[0, 22:24, 22:24] = 1  # a tiny target instance nothing covers stays (as without copy-paste)
    _, new, n = cp.paste(image, untouched, valid, d_image, d_masks[[0]], d_valid)
    assert n == 1 and np.array_equal(new[0], untouched[0])
    _, same, n = cp.paste(image, masks, valid, d_image, d_masks[[2]], d_valid)
    assert n == 0 and same is masks


def test_copy_paste_moves_a_subset_of_the_donors_slumps_inside_the_chip():
    image, masks, valid, d_image, d_masks, d_valid = _scene(h=40, w=40)
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        region = (30, 36)  # the chip's part of the 40 px tile; the rest is padding
        tvalid = valid.copy()
        tvalid[30:, :] = False
        tvalid[:, 36:] = False
        out, new, n = cp.copy_paste(image, masks, tvalid, region, d_image, d_masks, d_valid, rng, sigma=0)
        assert 0 <= n <= 2 and len(new) <= 2 + n
        if not n:
            continue
        union = new[-n:].astype(bool).any(0)
        rows, cols = np.nonzero(union)
        assert rows.max() < 30 and cols.max() < 36 and not (union & ~tvalid).any()
        # every pasted pixel comes from one translation of the donor, from a donor slump's valid pixel
        dy, dx = rows - out[0][union], cols - out[1][union]
        assert len(set(dy.tolist())) == 1 and len(set(dx.tolist())) == 1
        src_r, src_c = out[0][union].astype(int), out[1][union].astype(int)
        assert np.array_equal(out[2][union], d_image[2][src_r, src_c])
        assert (d_masks[:2, src_r, src_c].any(0) & d_valid[src_r, src_c]).all()
        assert np.array_equal(out[:, ~union], image[:, ~union])
        seen.add((n, int(dy[0]), int(dx[0])))
    assert len({s[0] for s in seen}) == 2 and len(seen) > 10  # subsets of 1 and 2, many places
    rng = np.random.default_rng(0)
    nothing = cp.copy_paste(image, masks, valid, (40, 40), d_image, d_masks[:0], d_valid, rng)
    assert nothing[2] == 0 and nothing[0] is image and nothing[1] is masks


# -- the dataset ---------------------------------------------------------------------------------------------
def test_copy_paste_adds_slumps_to_most_training_chips(dataset):
    plain, pasting = _chips(dataset), _chips(dataset, copy_paste=1.0)
    more = total = 0
    for epoch in range(2):
        for i in range(len(plain)):
            _, t0, m0 = plain[(i, epoch)]
            _, t1, m1 = pasting[(i, epoch)]
            assert "pasted" not in m0 and m1["pasted"] <= len(t1["masks"]) <= len(t0["masks"]) + m1["pasted"]
            more += len(t1["masks"]) > len(t0["masks"])
            total += 1
    assert more > 0.7 * total


def test_pasted_slumps_are_the_donors_pixels_and_never_cover_nodata(dataset, monkeypatch):
    calls = []
    real = cp.paste

    def spy(image, masks, valid, d_image, d_masks, d_valid, **kw):
        out = real(image, masks, valid, d_image, d_masks, d_valid, **kw)
        calls.append(dict(image=image, masks=masks, valid=valid, d_image=d_image, d_valid=d_valid, out=out))
        return out

    monkeypatch.setattr(cp, "paste", spy)
    sizes = []
    real_cp = cp.copy_paste

    def spy_cp(*args, **kw):
        sizes.append(args[4].shape[1:])  # the donor image, jittered on its own (scale: 0.8-1.25)
        return real_cp(*args, **kw)

    monkeypatch.setattr(cp, "copy_paste", spy_cp)
    plain, pasting = _chips(dataset), _chips(dataset, copy_paste=1.0)
    checked = nodata = 0
    for epoch in range(3):
        for i in range(len(plain)):
            calls.clear()
            base, t0, _ = plain[(i, epoch)]
            img, t1, meta = pasting[(i, epoch)]
            assert torch.equal(t1["boxes"], _boxes(t1["masks"])) and t1["labels"].tolist() == [1] * len(t1["masks"])
            n = meta["pasted"]
            if not n:
                assert torch.equal(img, base)
                continue
            c = calls[-1]
            assert c["out"][2] == n and np.array_equal(img.numpy(), c["out"][0])
            assert np.array_equal(c["image"], base.numpy())  # the target chip is the one without copy-paste
            masks = t1["masks"].numpy().astype(bool)
            pasted, kept = masks[-n:], masks[:-n]
            union = pasted.any(0)
            assert np.array_equal(img.numpy()[:, union], c["d_image"][:, union])
            assert not (kept & union).any()
            for k in kept:  # each kept slump is one of the chip's own, less what is now covered
                assert any(not (k & ~b).any() for b in t0["masks"].numpy().astype(bool))
            invalid = ~c["valid"] | ~c["d_valid"]
            assert not (union & invalid).any()
            assert np.array_equal(img.numpy()[:, invalid], base.numpy()[:, invalid])
            nodata += int((~c["valid"][:meta["size"][0], :meta["size"][1]]).any())
            checked += 1
    assert checked > 10 and nodata > 0 and len(set(sizes)) > 3


def test_copy_paste_is_the_same_for_the_same_item_and_epoch(dataset):
    a, b = _chips(dataset, copy_paste=0.5, seed=7), _chips(dataset, copy_paste=0.5, seed=7)
    differs = False
    for i in range(len(a)):
        x, y, z = a[(i, 1)], b[(i, 1)], a[(i, 1)]
        for other in (y, z):
            assert torch.equal(x[0], other[0]) and x[2] == other[2]
            assert all(torch.equal(x[1][k], other[1][k]) for k in x[1])
        differs |= not torch.equal(x[0], a[(i, 2)][0])
    assert differs


def test_copy_paste_zero_gives_exactly_the_items_of_before(dataset):
    from rtscli.data.dataset import _target

    for augment in (True, False):
        ds = _chips(dataset, augment=augment, seed=3)
        assert ds.copy_paste == 0.0
        for i in range(len(ds)):
            image, valid, anns, entry = ds.load(i)
            masks = (np.stack([ds.coco.annToMask(a) for a in anns]) if anns
                     else np.zeros((0,) + image.shape[1:], np.uint8))
            rng = np.random.default_rng([3, 2, i]) if augment else None
            if rng is not None:
                image, masks = ds._augment(image, masks, rng)
            image, masks, size = ds._fit(image, masks, rng)
            want = _target(masks)
            img, got, meta = ds[(i, 2)]
            assert torch.equal(img, torch.from_numpy(np.ascontiguousarray(image)))
            assert all(torch.equal(got[k], want[k]) for k in want)
            assert meta == {"image_id": int(entry["id"]), "size": size, "file_name": entry["file_name"]}
    # without augmentation (validation, evaluation) nothing is pasted, whatever the probability
    ev, ev1 = _chips(dataset, augment=False), _chips(dataset, augment=False, copy_paste=1.0)
    for i in range(len(ev)):
        assert torch.equal(ev[i][0], ev1[i][0]) and ev[i][2] == ev1[i][2]


def test_a_chip_with_no_other_donor_is_left_alone_and_bad_probabilities_are_refused(dataset):
    ds = _chips(dataset, copy_paste=1.0)
    # donors are the chips with a slump
    assert ds.donors == [i for i in range(len(ds)) if ds.load(i)[2]] and 2 < len(ds.donors) < len(ds)
    only = ds.donors[0]
    ds.donors = [only]
    _, _, meta = ds[(only, 0)]
    assert meta["pasted"] == 0  # never its own donor
    others = [i for i in range(len(ds)) if i != only]
    assert sum(ds[(i, 0)][2]["pasted"] > 0 for i in others) > len(others) // 2
    for bad in (-0.1, 1.5):
        with pytest.raises(RtsError, match="copy-paste probability"):
            _chips(dataset, copy_paste=bad)
