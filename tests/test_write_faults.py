"""Faults a user can cause end in one line, exit 2, and leave nothing (issue 20, point 3).

Every writing command is driven against a folder it may not write (read-only for root too: the command runs
without ``CAP_DAC_OVERRIDE``) and a full disk (a tiny tmpfs when this machine may mount one; a file system
reported full otherwise), and refuses before any work, naming the folder. Writes that fail midway (a disk that
fills up) are one line naming the output and leave no partial output. Bundles whose ``config.yaml`` is not plain
YAML, and weights whose safetensors header is damaged, are refused naming the file, by every command that reads
them; a refused training run leaves no run folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from shapely.geometry import box

from conftest import apart, paper_sample, write_tif, prepared_samples
from test_predict import blob, bundles  # noqa: F401  (fixtures: a nano bundle trained for one step, a fake model)

#: runs a command without the capabilities that let root write anywhere
DROP_CAPS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search"]
FAST = ["--workers", "0", "--batch-size", "2"]


def _listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden temporaries and lock files too)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error_line(err: str, *names: str | Path) -> str:
    """The single ``rts: error:`` line of ``err``: naming each of ``names``, no traceback, no internal error."""
    errors = [line for line in err.splitlines() if line.startswith("rts: error:")]
    assert len(errors) == 1, err
    for junk in ("Traceback", "internal error", "site-packages"):
        assert junk not in err, err
    for name in names:
        assert str(name) in errors[0], err
    return errors[0]


def _map(path: Path, grow: float = 0.0, layer: str = "rts") -> Path:
    """A slump map: one polygon in UTM 8N, in layer ``layer`` of a GeoPackage."""
    gdf = gpd.GeoDataFrame({"score": [0.9]}, geometry=[box(470000, 7549000, 470300 + grow, 7549300)],
                           crs="EPSG:32608")
    gdf.to_file(path, layer=layer, driver="GPKG")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, bundles):  # noqa: F811  (the fixture imported above)
    """Everything the writing commands read: samples, a dataset, scenes, maps, bundles."""

    root = tmp_path_factory.mktemp("faults")
    prepared_samples(root, 4, "samples")
    scene = write_tif(root / "scene.tif", paper_sample(shape=(64, 64), rects=[(8, 30, 10, 40)]), transform=apart(0))
    for k in range(2):
        write_tif(root / "scenes" / f"s{k}.tif", paper_sample(shape=(64, 64), seed=k), transform=apart(k))
    big = write_tif(root / "big.tif", np.random.default_rng(0).integers(100, 3000, (4, 256, 256)).astype(np.uint16))
    # the nano bundle with weights that do not fit its config: loading its model is refused, so a command that
    # fails on something else never loaded it
    wrong = root / "wrong"
    wrong.mkdir()
    shutil.copy(bundles["nano"] / "config.yaml", wrong / "config.yaml")
    save_file({"not.a.detector": torch.zeros(1)}, str(wrong / "model.safetensors"))
    return SimpleNamespace(root=root, ds=root / "ds", samples=root / "samples", scene=scene,
                           scenes=root / "scenes", big=big, nano=bundles["nano"], wrong=wrong,
                           map1=_map(root / "S2_20190715.gpkg"), map2=_map(root / "S2_20200715.gpkg", 30.0))


def writing_commands(w: SimpleNamespace, folder: Path) -> dict[str, list]:
    """Every writing command with its outputs in ``folder`` (``folder/project.gpkg`` and ``folder/bundle`` exist
    there: see :func:`_furnish`)."""
    predict = ["predict", w.scene, "--model", w.wrong, "--workers", 0]
    arts = ["--region", "Peel", "--creator", "Lab", "--basemap-source", "PlanetScope", "--basemap-resolution", 3]
    return {
        "predict .gpkg": [*predict, "-o", folder / "slumps.gpkg"],
        "predict .geojson": [*predict, "-o", folder / "slumps.geojson"],
        "predict into a project .gpkg": [*predict, "-o", folder / "project.gpkg"],
        "predict --quicklook": [*predict, "-o", w.root / "elsewhere" / "s.gpkg", "--quicklook", folder / "q.png"],
        "predict many scenes": ["predict", w.scenes, "--model", w.wrong, "--workers", 0, "-o", folder / "maps"],
        "prepare": ["prepare", w.samples, "-o", folder / "ds", "--bands", "paper"],
        "export-coco": ["export-coco", w.ds, "-o", folder / "coco"],
        "export": ["export", w.map1, "-o", folder / "arts.geojson", *arts],
        "track": ["track", w.map1, w.map2, "-o", folder / "changes.gpkg", "--dates", "2019-07-15,2020-07-15"],
        "pretrain": ["pretrain", "--modality", "rgb", "--data", w.ds, "-o", folder / "run", "--preset", "nano",
                     *FAST],
        "finetune": ["finetune", "--data", w.ds, "-o", folder / "fused", "--modalities", "rgb,ndvi",
                     "--preset", "nano", *FAST],
        "ssl": ["ssl", w.big, "--modality", "nir", "--bands", "planetscope4", "-o", folder / "ssl",
                "--preset", "nano", "--stats-windows", 2, *FAST],
        "ablate": ["ablate", "--data", w.ds, "-o", folder / "ablation", "--modalities", "rgb,ndvi",
                   "--preset", "nano", "--workers", 0],
        "synth": ["synth", folder / "synth", "--chips", 2, "--scenes", 0],
        "evaluate --errors": ["evaluate", w.nano, "--data", w.ds, "--errors", folder / "errors.gpkg",
                              "--report", w.root / "elsewhere" / "eval.json"],
        "evaluate --report": ["evaluate", w.nano, "--data", w.ds, "--report", folder / "eval.json"],
        "evaluate into the bundle": ["evaluate", folder / "bundle", "--data", w.ds],
        "demo": ["demo", folder / "demo"],
    }


def _furnish(folder: Path, w: SimpleNamespace) -> None:
    """What a user's folder already holds: a project GeoPackage (another layer) and a model bundle."""
    _map(folder / "project.gpkg", layer="aoi")
    shutil.copytree(w.nano, folder / "bundle", ignore=shutil.ignore_patterns("checkpoints", "logs"))


# ---------------------------------------------------------------- a folder nobody may write


@pytest.fixture(scope="module")
def read_only(world):
    """A folder (with a project GeoPackage and a bundle in it) that the commands run by :func:`as_user` may not
    write, and that runner."""
    folder = world.root / "read_only"
    folder.mkdir()
    _furnish(folder, world)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: run the commands without that power
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot drop CAP_DAC_OVERRIDE")
        prefix = DROP_CAPS
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"],
                           capture_output=True)
    if probe.returncode == 0:
        (folder / "x").unlink()
        pytest.skip("this machine lets the test's processes write a mode 0555 folder (no capability dropped)")
    settings = world.root / "settings"
    settings.mkdir(exist_ok=True)

    def as_user(args: list, **env: str) -> subprocess.CompletedProcess:
        environ = {**os.environ, "OMP_NUM_THREADS": "1", "RTS_CONFIG_DIR": str(settings), "HF_HUB_OFFLINE": "1",
                   **env}
        return subprocess.run([*prefix, sys.executable, "-m", "rtscli", *map(str, args)], capture_output=True,
                              text=True, env=environ, cwd=world.root, timeout=600)

    yield SimpleNamespace(folder=folder, run=as_user)
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_every_writing_command_refuses_a_read_only_folder_before_any_work(world, read_only):
    """One line naming the folder, exit 2, nothing written; predict stops before its model loads (the bundle's
    weights do not fit its config, so a model that loaded would have been refused with another message)."""
    before = _listing(read_only.folder)
    for name, args in writing_commands(world, read_only.folder).items():
        r = read_only.run(args)
        assert r.returncode == 2, (name, r.stderr)
        line = one_error_line(r.stderr, read_only.folder)
        assert "Permission denied" in line, (name, line)
        assert "do not match" not in r.stderr, name  # the model never loaded
        assert _listing(read_only.folder) == before, name
    assert not (world.root / "elsewhere").exists()  # nor was anything written beside


def test_the_settings_of_models_use_in_a_read_only_folder(world, read_only):
    r = read_only.run(["models", "use", world.nano], RTS_CONFIG_DIR=str(read_only.folder / "settings"))
    assert r.returncode == 2
    one_error_line(r.stderr, read_only.folder)


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 32 MiB tmpfs, filled to the last byte once furnished (skipped where this machine may not mount one)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def _no_model(monkeypatch) -> None:
    """Loading a model fails the test: a command must refuse its outputs before."""
    from rtscli.modeling import bundle as bmod

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(bmod, "load_model", refuse)


def _refuses_a_full_folder(world, folder: Path, rts, monkeypatch) -> None:
    _no_model(monkeypatch)
    monkeypatch.setenv("RTS_CONFIG_DIR", str(world.root / "settings"))
    before = _listing(folder)
    for name, args in writing_commands(world, folder).items():
        if name.startswith("predict"):  # the fake model would do as well: these stop before load_model
            args = [a if a != world.wrong else world.nano for a in args]
        r = rts(*args)
        assert r.code == 2, (name, r.err)
        line = one_error_line(r.err, folder)
        assert "No space left on device" in line and "free space" in line, (name, line)
        assert _listing(folder) == before, name


def test_every_writing_command_refuses_a_full_disk_before_any_work(world, full_disk, rts, monkeypatch):
    _furnish(full_disk, world)
    _fill(full_disk)
    _refuses_a_full_folder(world, full_disk, rts, monkeypatch)


def test_every_writing_command_refuses_a_folder_reported_full(world, tmp_path, rts, monkeypatch):
    """Where no tmpfs can be mounted, the same with the file system reported full (``statvfs``: no block free)."""
    folder = tmp_path / "full"
    folder.mkdir()
    _furnish(folder, world)
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if Path(os.path.abspath(path)).is_relative_to(folder):
            return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *tuple(st)[5:]))
        return st

    monkeypatch.setattr(os, "statvfs", statvfs)
    _refuses_a_full_folder(world, folder, rts, monkeypatch)


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs: room for the checks, not for the outputs."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True,
                       text=True) if shutil.which("mount") else None
    if r is None or r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_disk_that_fills_up_midway_leaves_no_partial_output(world, small_disk, rts):
    """The checks pass, then the disk fills while chips, checkpoints or bundles are written: one line naming the
    output, exit 2, and nothing left on the disk (a refused run's folder is removed too)."""
    r = rts("prepare", world.samples, "-o", small_disk / "ds", "--bands", "paper")
    assert r.code == 2, r.err
    line = one_error_line(r.err, small_disk / "ds")
    assert "No space left on device" in line
    assert _listing(small_disk) == []
    r = rts("pretrain", "--modality", "rgb", "--data", world.ds, "-o", small_disk / "run", "--preset", "nano",
            "--max-steps", 1, *FAST)
    assert r.code == 2, r.err
    assert "No space left on device" in one_error_line(r.err, small_disk / "run")
    assert _listing(small_disk) == []


def test_a_write_that_fails_with_enospc_names_the_output(world, blob, tmp_path, rts, monkeypatch):  # noqa: F811
    """A patched write (GDAL's and Python's) raising ENOSPC: one line naming the output, no temporary left."""
    import geopandas

    from test_predict import OBJECTS, scene_with

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    scene = scene_with(tmp_path, OBJECTS)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(geopandas.GeoDataFrame, "to_file", full)
    for name in ("slumps.geojson", "slumps.gpkg"):
        r = rts("predict", scene, "-o", out / name, "--model", blob.path, "--workers", 0, "--overlap", 16)
        assert r.code == 2, r.err
        line = one_error_line(r.err, out / name)
        assert "No space left on device" in line and "free space" in line
        assert _listing(out) == []
    monkeypatch.setattr(Path, "write_text", full)  # the evaluation report
    r = rts("evaluate", world.nano, "--data", world.ds, "--report", out / "eval.json")
    assert r.code == 2 and "No space left on device" in one_error_line(r.err, out / "eval.json")
    assert _listing(out) == []


def test_os_errors_that_escape_become_one_line(rts, monkeypatch, tmp_path):
    """The last resort of main(): PermissionError, ENOSPC, EROFS, EDQUOT and MemoryError raised anywhere are one
    line with the fix (exit 2), not an internal error."""
    from rtscli.modeling import config

    cases = [
        (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "a.tif")), ["a.tif", "permission"]),
        (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b.gpkg")), ["b.gpkg", "free space"]),
        (OSError(errno.EROFS, "Read-only file system", str(tmp_path / "c")), ["read-only file system"]),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), ["quota"]),
        (MemoryError(), ["out of memory", "--batch-size"]),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), ["free space"]),
    ]
    for exc, words in cases:
        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(config, "load_preset", boom)  # rts info --preset imports it when it runs
        r = rts("info", "--preset", "nano")
        assert r.code == 2, r.err
        line = one_error_line(r.err)
        for word in words:
            assert word in line, line


# ---------------------------------------------------------------- bundles that are not what they should be


def _huge_header(path: Path) -> Path:
    """A safetensors file whose header length is 2**62 bytes."""
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64)
    return path


#: a config.yaml with a tag that would run a command if it were loaded with yaml.load
TAG = "!!python/object/apply:os.system ['touch {}']"


def _bad_config(folder: Path, marker: Path) -> Path:
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("format_version: 1", f"format_version: {TAG.format(marker)}", 1))
    return folder / "config.yaml"


@pytest.fixture
def bad_bundles(world, tmp_path):
    """A model bundle and an `rts ssl` backbone bundle whose config.yaml holds a python tag, and a model bundle
    whose weights have a huge header length."""
    yaml_bad = tmp_path / "yaml_bad"
    shutil.copytree(world.nano, yaml_bad, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    marker = tmp_path / "PWNED"
    _bad_config(yaml_bad, marker)
    ssl_bad = tmp_path / "ssl_bad"
    ssl_bad.mkdir()
    save_file({"w": torch.zeros(1)}, str(ssl_bad / "model.safetensors"))
    (ssl_bad / "config.yaml").write_text(yaml.safe_dump({"kind": "rts-ssl-backbone", "format_version": 1}))
    _bad_config(ssl_bad, marker)
    weights_bad = tmp_path / "weights_bad"
    shutil.copytree(world.nano, weights_bad, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    _huge_header(weights_bad / "model.safetensors")
    return SimpleNamespace(yaml=yaml_bad, ssl=ssl_bad, weights=weights_bad, marker=marker)


def test_a_config_that_is_not_plain_yaml_is_refused_naming_it(world, bad_bundles, tmp_path, rts, monkeypatch):
    monkeypatch.setenv("RTS_CONFIG_DIR", str(tmp_path / "settings"))
    cfg = bad_bundles.yaml / "config.yaml"
    out = tmp_path / "out.gpkg"
    for args in (["info", bad_bundles.yaml], ["models", "use", bad_bundles.yaml],
                 ["predict", world.scene, "-o", out, "--model", bad_bundles.yaml, "--workers", 0],
                 ["evaluate", bad_bundles.yaml, "--data", world.ds]):
        r = rts(*args)
        assert r.code == 2, (args, r.err)
        assert "not a plain YAML model config" in one_error_line(r.err, cfg), args
    assert not out.exists() and not (tmp_path / "settings").exists()
    ssl_cfg = bad_bundles.ssl / "config.yaml"
    for args in (["info", bad_bundles.ssl],
                 ["pretrain", "--modality", "rgb", "--data", world.ds, "-o", tmp_path / "run", "--preset", "nano",
                  "--backbone-weights", bad_bundles.ssl, *FAST]):
        r = rts(*args)
        assert r.code == 2, (args, r.err)
        line = one_error_line(r.err, ssl_cfg)
        assert "not a plain YAML model config" in line and "safetensors" not in line, line
    assert not (tmp_path / "run").exists()
    assert not bad_bundles.marker.exists()  # nothing ran


def test_damaged_weights_are_refused_naming_the_file(world, bad_bundles, tmp_path, rts):
    weights = bad_bundles.weights / "model.safetensors"
    out = tmp_path / "out.gpkg"
    for args in (["info", bad_bundles.weights],
                 ["predict", world.scene, "-o", out, "--model", bad_bundles.weights, "--workers", 0]):
        r = rts(*args)
        assert r.code == 2, (args, r.err)
        assert "not a readable safetensors file (header too large)" in one_error_line(r.err, weights), args
    assert not out.exists()


def test_damaged_backbone_weights_refuse_the_run_and_leave_no_folder(world, tmp_path, rts):
    """A corrupt or huge header length, or a truncated file, through --backbone-weights of pretrain, finetune and
    ssl: one line naming the file, and no run folder (it is made only once every check passed)."""
    huge = _huge_header(tmp_path / "huge.safetensors")
    cut = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(1000)}, str(cut))
    cut.write_bytes(cut.read_bytes()[:-100])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    runs = {
        "pretrain": lambda out, w: ["pretrain", "--modality", "rgb", "--data", world.ds, "-o", out, "--preset",
                                    "nano", "--backbone-weights", w, *FAST],
        "finetune": lambda out, w: ["finetune", "--data", world.ds, "-o", out, "--modalities", "rgb,ndvi",
                                    "--preset", "nano", "--backbone-weights", w, *FAST],
        "ssl": lambda out, w: ["ssl", world.big, "--modality", "nir", "--bands", "planetscope4", "-o", out,
                               "--preset", "nano", "--stats-windows", 2, "--backbone-weights", w, *FAST],
    }
    for name, make in runs.items():
        for weights, words in ((huge, "header too large"), (cut, "not a readable safetensors file"),
                               (foreign, "none of the 1 tensors")):
            out = tmp_path / f"run_{name}"
            r = rts(*make(out, weights))
            assert r.code == 2, (name, weights, r.err)
            assert words in one_error_line(r.err, weights), (name, weights)
            assert not out.exists(), (name, weights)


def test_an_existing_run_folder_that_cannot_be_written_is_refused_before_training(world, tmp_path, rts):
    """--resume into a run folder that is a file, or --overwrite of one: told at once."""
    out = tmp_path / "run"
    out.write_text("not a folder")
    r = rts("pretrain", "--modality", "rgb", "--data", world.ds, "-o", out, "--preset", "nano", "--overwrite",
            *FAST)
    assert r.code == 2 and "not a folder" in one_error_line(r.err, out)
    r = rts("predict", world.scene, "-o", out / "slumps.gpkg", "--model", world.nano)
    assert r.code == 2 and "is a file" in one_error_line(r.err, out)
