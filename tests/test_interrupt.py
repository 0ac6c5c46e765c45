"""Training stopped by SIGTERM (SLURM's time limit, kill, scancel) and continued with --resume (nano preset, CPU)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import prepared_samples

RUN = ["--preset", "nano", "--batch-size", "2", "--lr", "0.004", "--warmup-steps", "2", "--tile-size", "96"]
STOPPED = "rts: stopped by SIGTERM"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 small samples in the paper's layout (one site), prepared 4/2/2: 2 training steps per epoch."""

    return prepared_samples(tmp_path_factory.mktemp("interrupt"), 8)


def _epochs(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def _rows(run: Path) -> dict[int, dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return {int(r["epoch"]): r for r in csv.DictReader(fh)}


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _sigterm_after_epoch_0(args: list[str], *, group: bool = False, times: int = 1) -> tuple[int, str]:
    """Run ``rts ARGS`` in a process, send it SIGTERM (``times`` times, 0.2 s apart) once epoch 0 is done (to its
    whole process group with ``group``: what SLURM does), and return its exit code and stderr."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RTS_PROGRESS_SECONDS": "0"}
    p = subprocess.Popen([sys.executable, "-m", "rtscli", *args], env=env, stderr=subprocess.PIPE, text=True,
                         start_new_session=group)
    assert p.stderr is not None
    err = []
    sent = False
    try:
        for line in p.stderr:
            err.append(line)
            if not sent and "training: epoch 0/" in line and " done" in line:
                for k in range(times):
                    if k:
                        time.sleep(0.2)
                    if group:
                        os.killpg(p.pid, signal.SIGTERM)
                    else:
                        p.send_signal(signal.SIGTERM)
                sent = True
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert sent, "".join(err)
    return p.returncode, "".join(err)


def _continue_command(err: str) -> list[str]:
    """The command of the ``continue with: rts ...`` line, to run with this Python."""
    line = next(x for x in err.splitlines() if x.startswith(STOPPED))
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[0] == "rts"
    return words[1:]


def test_sigterm_exits_143_says_how_to_continue_and_resume_keeps_every_epoch(dataset, tmp_path):
    """SIGTERM after epoch 0: exit 143, one line naming the run and --resume, a checkpoint; the resumed run
    finishes and metrics.csv holds every epoch once, the ones before the stop as they were."""
    run = tmp_path / "run"
    code, err = _sigterm_after_epoch_0(["pretrain", "--modality", "rgb", "--data", str(dataset), "-o", str(run),
                                        "--workers", "0", "--epochs", "200", "--overwrite", *RUN])
    assert code == 143, err
    line = [x for x in err.splitlines() if x.startswith(STOPPED)]
    assert len(line) == 1 and str(run) in line[0] and line[0].endswith("--resume"), err
    assert "--overwrite" not in line[0]  # it would start the run again
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "model.safetensors").exists()
    stopped = _ckpt(run)["epoch"]  # the last epoch the checkpoint completed (or is inside)
    before = _rows(run)
    assert sorted(before) == list(range(len(before))) and 0 in before  # metrics.csv so far, written on the stop

    args = _continue_command(err)
    assert args[args.index("-o") + 1] == str(run)
    args[args.index("--epochs") + 1] = str(stopped + 2)
    r = subprocess.run([sys.executable, "-m", "rtscli", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run / "model.safetensors").exists()
    assert _epochs(run) == list(range(stopped + 2))  # every epoch once: before and after the stop
    after = _rows(run)
    for e in before:
        if e < stopped:  # completed before the stop: kept as they were
            assert after[e]["train_loss"] == before[e]["train_loss"]


def test_sigterm_to_the_whole_job_with_loader_workers(dataset, tmp_path):
    """SLURM signals every process of the job, data-loading workers too: the run still stops cleanly (143)."""
    run = tmp_path / "run"
    code, err = _sigterm_after_epoch_0(["pretrain", "--modality", "rgb", "--data", str(dataset), "-o", str(run),
                                        "--workers", "1", "--epochs", "200", *RUN], group=True)
    assert code == 143, err
    assert STOPPED in err and "internal error" not in err
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_repeated_sigterms_to_the_whole_job_still_stop_cleanly(dataset, tmp_path):
    """`timeout`, SLURM and impatient people send SIGTERM more than once, to every process: the data-loading workers
    outlive them (the main process ends them), so the run stops with rts's one line and 143, never with PyTorch's
    "DataLoader worker ... killed by signal: Terminated" as an internal error."""
    run = tmp_path / "run"
    code, err = _sigterm_after_epoch_0(["pretrain", "--modality", "rgb", "--data", str(dataset), "-o", str(run),
                                        "--workers", "2", "--epochs", "200", *RUN], group=True, times=3)
    # 143, or -15 when a last SIGTERM lands once rts has said it stopped and is exiting (a shell shows 143 for both)
    assert code in (143, -signal.SIGTERM), err
    assert err.rstrip().splitlines()[-1].startswith(STOPPED) and (run / "checkpoints" / "last.ckpt").exists(), err
    assert STOPPED in err and "internal error" not in err and "Traceback" not in err and "killed by signal" not in err


def _worker_after_sigterms(count: int, queue) -> None:
    """A process set up as a training loader's worker (:func:`rtscli.engine.train.worker_init`) that sends itself
    ``count`` SIGTERMs, then reports that it lived through them."""
    from rtscli.engine.train import worker_init

    worker_init(0)
    for _ in range(count):
        os.kill(os.getpid(), signal.SIGTERM)
    queue.put("alive")


def test_a_loader_worker_outlives_every_sigterm():
    """Before, a worker ignored only its first SIGTERM and died of the second, which ended the run with PyTorch's
    "DataLoader worker ... killed by signal: Terminated"; now every SIGTERM is left to the main process."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_worker_after_sigterms, args=(3, queue))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 0 and queue.get(timeout=5) == "alive", p.exitcode


def test_sigterm_before_training_starts_exits_143_with_one_line(dataset, tmp_path):
    """SIGTERM while rts pretrain still checks its inputs (here: in the memory check, before the model or the run
    folder exists): before, the process ended without a word; now exit 143 and rts's one line with the command that
    continues (which then starts the run)."""
    run = tmp_path / "run"
    args = ["pretrain", "--modality", "rgb", "--data", str(dataset), "-o", str(run), "--epochs", "1",
            "--workers", "0", *RUN]
    code = ("import os, signal, sys\n"
            "import rtscli.engine.pretrain as p\n"
            "def check(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "p.check_memory = check\n"
            "from rtscli.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 143, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{STOPPED} before training started") and lines[-1].endswith("--resume"), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and not run.exists()
    r = subprocess.run([sys.executable, "-m", "rtscli", *_continue_command(r.stderr)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and (run / "model.safetensors").exists(), r.stderr


def _with_callbacks(monkeypatch, *extra):
    import lightning as L

    init = L.Trainer.__init__

    def patched(self, *a, **k):
        init(self, *a, **{**k, "callbacks": list(k.get("callbacks") or []) + list(extra)})

    monkeypatch.setattr(L.Trainer, "__init__", patched)


def test_sigterm_inside_an_epoch_saves_that_step_and_resumes_exactly(dataset, tmp_path, rts, monkeypatch):
    """SIGTERM during the first step of epoch 1: last.ckpt is written at that step, and the resumed run (the
    rest of epoch 1's batches, the same RNG) ends with the weights of an uninterrupted run."""
    import lightning as L

    args = ["pretrain", "--modality", "rgb", "--data", dataset, "--seed", "5", "--epochs", "2", "--val-every", "2",
            "--workers", "0", "--keep-checkpoints", *RUN]
    assert rts(*args, "-o", tmp_path / "whole").code == 0
    whole = _ckpt(tmp_path / "whole")

    class SigtermAtStep3(L.Callback):  # step 3 is the first of epoch 1's two
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "cut"
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _with_callbacks(m, SigtermAtStep3())
        r = rts(*args, "-o", run)
    assert r.code == 143, r.err
    assert f"{STOPPED} after step 3" in r.err and "saved" in r.err and r.err.rstrip().endswith("--resume")
    cut = _ckpt(run)
    assert (cut["epoch"], cut["global_step"]) == (1, 3)
    assert signal.getsignal(signal.SIGTERM) == handler  # rts's handler was in place for the run only

    r = rts(*args, "-o", run, "--resume")
    assert r.code == 0, r.err
    done = _ckpt(run)
    assert done["global_step"] == whole["global_step"] == 4
    assert all(torch.equal(whole["state_dict"][k], done["state_dict"][k]) for k in whole["state_dict"])
    assert _epochs(run) == [0, 1]


def test_sigterm_before_the_first_checkpoint_then_resume_starts(dataset, tmp_path, rts, monkeypatch):
    """SIGTERM before training starts (no checkpoint yet): 143 and the same advice; --resume then starts the
    run from the beginning (it says so) instead of refusing; a finished bundle is not started again."""
    import lightning as L

    class SigtermAtFitStart(L.Callback):
        def on_fit_start(self, trainer, module):
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    run.mkdir()  # a run folder with no checkpoint (e.g. a job stopped early, or a script that always resumes)
    args = ["pretrain", "--modality", "rgb", "--data", dataset, "-o", run, "--epochs", "2", "--workers", "0", *RUN]
    with monkeypatch.context() as m:
        _with_callbacks(m, SigtermAtFitStart())
        r = rts(*args, "--resume")
    assert r.code == 143, r.err
    assert f"{STOPPED} before training started" in r.err and "no checkpoint yet" in r.err
    assert r.err.rstrip().endswith("--resume") and not (run / "checkpoints" / "last.ckpt").exists()

    r = rts(*args, "--resume")
    assert r.code == 0, r.err
    assert "starting the run from the beginning" in r.err
    assert (run / "model.safetensors").exists() and _epochs(run) == [0, 1]

    r = rts(*args, "--resume")  # complete, its checkpoints pruned: not trained again over its bundle
    assert r.code == 2 and "--overwrite" in r.err


def test_the_command_that_continues_a_stopped_run():
    from rtscli.cli import _continue_with

    assert _continue_with(["pretrain", "-o", "my run", "--overwrite"]) == "rts pretrain -o 'my run' --resume"
    assert _continue_with(["--debug", "ssl", "x.tif", "--resume"]) == "rts --debug ssl x.tif --resume"
    assert _continue_with(["ablate", "--data", "ds", "-o", "out"]) == "rts ablate --data ds -o out"  # resumes itself
