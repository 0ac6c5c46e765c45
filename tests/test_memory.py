"""Memory of one training step (estimate, what is available, the check) and the presets' training defaults.

Fast and offline: models are only built on the meta device.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rtscli import machine
from rtscli.engine import memory_check
from rtscli.errors import RtsError
from rtscli.modeling import memory
from rtscli.modeling.config import ModelConfig, TrainingDefaults, list_presets, load_preset, training_defaults

GIB = 2**30
MIB = 2**20

#: Peak RSS of one whole training step of nano at 256 px, batch 4 (its default), fp32, above the RSS before the
#: model was built (weights + gradients + AdamW moments + activations), in a fresh process:
#: `python benchmarks/memory_estimate.py measure --configs nano-256-b4`, 2026-11-30, 2-core CPU, torch 2.14.1.
NANO_256_B4_STEP_MIB = 588.3
#: the same for cascade-mvitv2-b at 1024 px, batch 1, forward + backward only (gradients + activations, the
#: weights excluded): benchmarks/RESULTS.md, "At 1024 px one RGB sample alone took 17.8 GB" (rtscli.modeling.cost)
B_1024_FWD_BWD_MIB = 17.8 * 1024


def test_nano_estimate_is_close_to_its_measured_step():
    m = memory.estimate_step_memory(load_preset("nano"), batch_size=4, device="cpu", precision="32-true")
    est = (m.total - m.best_copy) / MIB  # the measurement makes no copy of the best weights
    assert 0.75 < est / NANO_256_B4_STEP_MIB < 1.33, est
    assert m.total == memory.estimate_step_bytes(load_preset("nano"), batch_size=4, device="cpu")


def test_paper_model_estimate_is_close_to_the_known_figure_and_grows_with_the_batch():
    cfg = load_preset("cascade-mvitv2-b")
    one = memory.estimate_step_memory(cfg, batch_size=1, device="cpu")
    est = (one.gradients + one.activations + one.reserve) / MIB
    assert 0.8 < est / B_1024_FWD_BWD_MIB < 1.25, est
    two = memory.estimate_step_memory(cfg, batch_size=2, device="cpu")
    assert two.activations == pytest.approx(2 * one.activations, rel=0.01)
    assert two.weights == one.weights == 4 * one.total_params
    assert one.optimizer == 2 * one.gradients == 8 * one.trainable_params
    assert abs(one.total_params - 103e6) / 103e6 < 0.05
    # mixed precision on a GPU: no CPU copy of the best weights; the attention matrices cost more, the rest less
    gpu = memory.estimate_step_memory(cfg, batch_size=1, device="cuda", precision="bf16-mixed")
    assert gpu.best_copy == 0 and gpu.reserve == memory.CUDA_RESERVE
    assert memory.estimate_step_memory(cfg, batch_size=1, device="cuda", precision="auto") == gpu


def test_frozen_backbones_need_less_than_trained_ones():
    from rtscli.modeling.multimodal import fusion_spec

    cfg = load_preset("nano")
    trained = memory.estimate_step_memory(cfg, batch_size=4, device="cpu",
                                          fusion=fusion_spec("residual-cross", ["rgb", "ndvi", "nir"], [3, 3, 3]))
    frozen = memory.estimate_step_memory(cfg, batch_size=4, device="cpu", fusion=fusion_spec(
        "residual-cross", ["rgb", "ndvi", "nir"], [3, 3, 3], frozen=True))
    single = memory.estimate_step_memory(cfg, batch_size=4, device="cpu")
    assert frozen.total < trained.total and single.total < trained.total
    assert frozen.trainable_params < frozen.total_params == trained.total_params
    # the model's own counts win over the meta count
    mine = memory.estimate_step_memory(cfg, batch_size=4, device="cpu", trainable_params=10, total_params=20)
    assert (mine.weights, mine.gradients, mine.optimizer) == (80, 40, 80)


def test_check_refuses_the_paper_model_on_a_24_gb_cpu_and_names_the_fix(monkeypatch):
    monkeypatch.delenv(memory_check.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: 24 * GIB)
    with pytest.raises(RtsError) as exc:
        memory_check.check_fits(load_preset("cascade-mvitv2-b"), batch_size=2, device="cpu", precision="32-true")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "cascade-mvitv2-b at 1024 px, batch 2 needs about" in msg and "24.0 GiB are available" in msg
    assert "--preset nano" in msg and "--accelerator gpu" in msg and memory_check.SKIP_ENV in msg
    # nano fits, and so does anything when the check is skipped or the memory cannot be known
    memory_check.check_fits(load_preset("nano"), batch_size=4, device="cpu", precision="32-true")
    monkeypatch.setenv(memory_check.SKIP_ENV, "1")
    memory_check.check_fits(load_preset("cascade-mvitv2-b"), batch_size=2, device="cpu")
    monkeypatch.delenv(memory_check.SKIP_ENV)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: None)
    memory_check.check_fits(load_preset("cascade-mvitv2-b"), batch_size=2, device="cpu")


def test_check_suggests_a_batch_that_fits(monkeypatch):
    monkeypatch.delenv(memory_check.SKIP_ENV, raising=False)
    cfg = load_preset("nano")
    one = memory.estimate_step_bytes(cfg, batch_size=1, device="cpu")
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: int(one * memory_check.MARGIN["cpu"] * 1.05))
    with pytest.raises(RtsError, match="--batch-size 1"):
        memory_check.check_fits(cfg, batch_size=8, device="cpu", what="rts finetune")
    # memory the process already holds (the built model) counts as part of the need that is already met
    memory_check.check_fits(cfg, batch_size=1, device="cpu", resident_bytes=one // 10)


def test_cgroup_v2_and_v1_files_are_read(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("8589934592\n")
    (v2 / "memory.current").write_text(str(3 * GIB) + "\n")
    (v2 / "memory.stat").write_text(f"anon 123\nfile 456\ninactive_file {GIB}\nactive_file 7\n")
    assert machine.cgroup_headroom(v2) == 8 * GIB - (3 * GIB - GIB)
    (v2 / "memory.max").write_text("max\n")
    assert machine.cgroup_headroom(v2) is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (v1 / "memory.usage_in_bytes").write_text(str(GIB))
    assert machine.cgroup_headroom(v1) is None
    (v1 / "memory.limit_in_bytes").write_text(str(4 * GIB))
    (v1 / "memory.stat").write_text(f"cache 1\ninactive_file 5\ntotal_inactive_file {GIB // 2}\n")
    assert machine.cgroup_headroom(v1) == 4 * GIB - GIB // 2
    assert machine.cgroup_headroom(tmp_path / "none") is None


def _fake_proc(tmp_path, cgroup: str, mountinfo: str, available_kb: int):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "meminfo").write_text(f"MemTotal: 24683652 kB\nMemFree: 1000 kB\nMemAvailable: {available_kb} kB\n")
    return proc


def test_available_memory_is_the_smallest_of_meminfo_and_every_cgroup_level(tmp_path):
    # a SLURM job under cgroup v2: the job's limit is below the machine's free memory, the step's limit is unset
    proc = _fake_proc(tmp_path, "0::/system.slice/slurmstepd.scope/job_42/step_0\n",
                      "31 23 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n", 20 * 2**20)
    job = tmp_path / "sys/fs/cgroup/system.slice/slurmstepd.scope/job_42"
    (job / "step_0").mkdir(parents=True)
    (job / "step_0" / "memory.max").write_text("max\n")
    (job / "memory.max").write_text(str(6 * GIB))
    (job / "memory.current").write_text(str(GIB))
    assert machine.available_bytes("cpu", proc=proc, root=tmp_path) == 5 * GIB
    (job / "memory.max").write_text(str(100 * GIB))
    assert machine.available_bytes("cpu", proc=proc, root=tmp_path) == 20 * GIB  # MemAvailable is smaller
    # cgroup v1, memory controller mounted with others
    proc = _fake_proc(tmp_path / "b", "4:cpu,memory:/slurm/uid_1/job_7\n3:pids:/\n",
                      "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n", 20 * 2**20)
    job = tmp_path / "b/sys/fs/cgroup/memory/slurm/uid_1/job_7"
    job.mkdir(parents=True)
    (job / "memory.limit_in_bytes").write_text(str(2 * GIB))
    (job / "memory.usage_in_bytes").write_text("0")
    assert machine.available_bytes("cpu", proc=proc, root=tmp_path / "b") == 2 * GIB
    # no /proc (another OS): unknown
    assert machine.available_bytes("cpu", proc=tmp_path / "nothing", root=tmp_path / "nothing") is None
    assert machine.available_bytes("mps") is None
    if not torch.cuda.is_available():
        assert machine.available_bytes("cuda") is None


def test_this_machine_reports_some_available_memory():
    avail = machine.available_bytes("cpu")
    assert avail is None or avail > 0


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_has_training_defaults(name):
    t = load_preset(name).training
    assert isinstance(t, TrainingDefaults)
    assert t.lr > 0 and t.warmup_steps >= 0 and t.batch_size >= 1 and t.schedule in ("cosine", "step") and t.source
    assert training_defaults(name) == t
    # the defaults fit the machine they are meant for: nano on a 24 GB CPU
    if name.startswith("nano"):
        assert memory.estimate_step_bytes(load_preset(name), batch_size=t.batch_size, device="cpu") < 4 * GIB


def test_nano_defaults_are_the_measured_ones():
    t = training_defaults("nano")
    assert (t.lr, t.warmup_steps, t.batch_size, t.schedule) == (0.008, 20, 4, "cosine")
    assert training_defaults("cascade-mvitv2-b").lr == pytest.approx(1.6e-4 * 16 / 64)  # detectron2: 1.6e-4 at 64


def test_bundles_written_before_training_defaults_still_load():
    cfg = load_preset("nano")
    old = cfg.to_dict()
    old.pop("training")
    again = ModelConfig.from_dict(old)
    assert again.training is None
    assert dataclasses.replace(again, training=cfg.training) == cfg
    assert training_defaults(again) == cfg.training  # found through the preset of the same name
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # and the block round-trips
    stray = dict(old, name="my-own-model")
    assert training_defaults(ModelConfig.from_dict(stray)).lr == TrainingDefaults().lr  # the paper's recipe


def test_a_bad_training_block_is_one_line_naming_the_file(tmp_path):
    import yaml

    d = load_preset("nano").to_dict()
    d["training"] = {"lr": 0.01, "schedule": "linear"}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(RtsError, match=r"mine\.yaml: .*unknown schedule 'linear'"):
        load_preset(str(path))
    d["training"] = {"lr": "4e-5x"}
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(RtsError, match="cannot read"):
        load_preset(str(path))
    d["training"] = {"lr": 0.001, "momentum": 0.9}
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(RtsError, match="unknown key"):
        load_preset(str(path))
