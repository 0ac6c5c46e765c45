"""Training on Lightning: AdamW, warmup then cosine (or step) decay, LR scaled with batch size.

The loop Lightning runs gives DDP (``--devices``, ``--num-nodes``, torchrun/SLURM), mixed precision
on GPU, gradient clipping, checkpoints (``last`` and ``best`` by validation mask AP50) and exact
resume. Resume loads Lightning checkpoints with ``weights_only=True`` (no unpickling). The best
weights are also kept in memory and written as a safetensors bundle at the end.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rtscli.errors import RtsError

log = logging.getLogger("rtscli")

#: learning rates are given for this total batch size and scaled linearly (Goyal et al.; the paper)
REFERENCE_BATCH = 16


@dataclass
class TrainSettings:
    epochs: int = 36
    max_steps: int = -1
    batch_size: int = 2
    base_lr: float = 1e-4  # at REFERENCE_BATCH images per step
    weight_decay: float = 0.05
    warmup_steps: int = 250
    schedule: str = "cosine"  # cosine | step
    grad_clip: float = 1.0
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "auto"
    workers: int = 2
    seed: int = 0
    val_every: int = 1
    backbone_weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lr(self, world_size: int) -> float:
        return self.base_lr * self.batch_size * world_size / REFERENCE_BATCH


class NonFiniteLoss(RtsError):
    pass


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls ``set_epoch`` on samplers that have it (and wraps this one for DDP). It yields
    ``(index, epoch)`` pairs: data-loading workers keep their own copy of the dataset, so the epoch
    (which seeds the augmentation) must travel with the index.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter((i, self.epoch) for i in torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _lightning():
    import lightning as L

    return L


def make_module(model, *, settings: TrainSettings, val_gt: dict | None, tile: int, total_steps: int):
    L = _lightning()

    class DetectionModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.val_gt = val_gt
            self.tile = tile
            self._val_results: list[dict] = []
            self.best_ap50 = -1.0
            self.best_state: dict[str, torch.Tensor] | None = None
            self.best_epoch = -1
            self.total_steps = total_steps

        def training_step(self, batch, batch_idx):
            images, targets, _ = batch
            losses = self.model.losses(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"the training loss became {loss.item()} at step {self.global_step} "
                    f"({', '.join(k for k, v in losses.items() if not torch.isfinite(v))})",
                    fix="the last good checkpoint is kept in checkpoints/last.ckpt; lower --lr and --resume")
            bs = len(images)
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
            for k, v in losses.items():
                self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
            return loss

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            # tensors and numbers only: the checkpoint stays loadable with weights_only=True
            checkpoint["rts"] = {"torch_rng": torch.get_rng_state(), "best_ap50": float(self.best_ap50),
                                 "best_epoch": int(self.best_epoch)}

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            state = checkpoint.get("rts") or {}
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            self.best_ap50 = float(state.get("best_ap50", -1.0))
            self.best_epoch = int(state.get("best_epoch", -1))

        def on_train_epoch_start(self) -> None:
            ds = getattr(self.trainer.train_dataloader, "dataset", None)
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(self.current_epoch)

        def validation_step(self, batch, batch_idx):
            from rtscli.engine.evaluate import detections_to_coco

            images, _, metas = batch
            preds = self.model.predict(images)
            for p, m in zip(preds, metas, strict=True):
                self._val_results += detections_to_coco(p, m["image_id"], m["size"], self.tile)

        def on_validation_epoch_end(self) -> None:
            from rtscli.engine.evaluate import coco_metrics

            results = self._val_results
            self._val_results = []
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                gathered: list = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(gathered, results)
                # the distributed sampler pads the split so ranks divide it evenly: an image seen by
                # two ranks must count once, or its detections would count twice
                owner: dict[int, int] = {}
                for rank, part in enumerate(gathered):
                    for r in part:
                        owner.setdefault(r["image_id"], rank)
                results = [r for rank, part in enumerate(gathered) for r in part if owner[r["image_id"]] == rank]
            m = coco_metrics(self.val_gt, results) if self.val_gt else {"segm": {"AP50": 0.0}, "bbox": {"AP50": 0.0}}
            ap50 = m["segm"]["AP50"] if self.model.cfg.roi_heads.mask else m["bbox"]["AP50"]
            self.log("val_ap50", ap50, prog_bar=True, sync_dist=False)
            self.log("val_box_ap50", m["bbox"]["AP50"], sync_dist=False)
            if ap50 > self.best_ap50 and not self.trainer.sanity_checking:
                self.best_ap50, self.best_epoch = ap50, self.current_epoch
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            world = self.trainer.world_size if self.trainer else 1
            lr = settings.lr(world)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
            try:  # the steps each process really runs (DDP splits the data), or --max-steps
                steps = int(self.trainer.estimated_stepping_batches)
            except Exception:  # no trainer attached (unit use)
                steps = self.total_steps
            warm = max(1, min(settings.warmup_steps, steps // 5))
            total = max(steps, warm + 1)

            def factor(step: int) -> float:
                if step < warm:
                    return 0.001 + (1 - 0.001) * step / warm
                t = (step - warm) / max(1, total - warm)
                if settings.schedule == "step":
                    return 0.1 ** sum(t >= b for b in (0.75, 0.92))
                return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DetectionModule()


def choose_precision(settings: TrainSettings) -> str:
    if settings.precision != "auto":
        return settings.precision
    if torch.cuda.is_available() and settings.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fit(module, train_loader, val_loader, *, settings: TrainSettings, run_dir: Path, resume: bool,
        steps_per_epoch: int) -> Any:
    """Run Lightning's fit loop into ``run_dir``. Returns the trainer."""
    L = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from rtscli.console import err_console

    ckpt_dir = run_dir / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_ap50", mode="max",
                                 save_last=True, save_top_k=1, every_n_epochs=settings.val_every)]
    show = err_console.is_terminal
    if show:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    strategy = "auto"
    devices = settings.devices
    if (isinstance(devices, int) and devices > 1) or settings.num_nodes > 1:
        strategy = "ddp"
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=settings.epochs if settings.max_steps < 0 else -1,
        max_steps=settings.max_steps,
        accelerator=settings.accelerator,
        devices=devices,
        num_nodes=settings.num_nodes,
        strategy=strategy,
        precision=choose_precision(settings),
        gradient_clip_val=settings.grad_clip,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="", version="logs"),
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        check_val_every_n_epoch=settings.val_every,
        num_sanity_val_steps=0,
        enable_progress_bar=show,
        enable_model_summary=False,
        deterministic=not torch.cuda.is_available(),
        benchmark=False,
    )
    import warnings

    # frozen backbones are in eval mode on purpose (rts finetune); Lightning would warn about them
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    ckpt = ckpt_dir / "last.ckpt" if resume else None
    if resume and not ckpt.exists():
        raise RtsError("nothing to resume: no checkpoints/last.ckpt", path=run_dir, fix="start without --resume")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    if module.best_state is None and (ckpt_dir / "best.ckpt").exists():
        # resumed after the best epoch: take its weights from best.ckpt (tensors only, no unpickling)
        best = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)
        module.best_state = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    return trainer


def epoch_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch rows (epoch, train_loss, val_ap50, ...) from Lightning's CSV log."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if not r.get("epoch"):
                continue
            e = int(float(r["epoch"]))
            d = rows.setdefault(e, {"epoch": e})
            for k, v in r.items():
                if v not in ("", None) and k not in ("epoch", "step") and (k.endswith("_epoch") or k.startswith("val")):
                    d[k.replace("_epoch", "")] = float(v)
    return [rows[e] for e in sorted(rows)]


def write_epoch_csv(run_dir: Path, rows: list[dict[str, float]]) -> Path:
    keys = sorted({k for r in rows for k in r} - {"epoch"})
    path = run_dir / "metrics.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch"] + keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def plot_curves(run_dir: Path, rows: list[dict[str, float]]) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(ep, [r.get("train_loss", float("nan")) for r in rows], "b-o", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss", color="b")
    ax2 = ax1.twinx()
    ax2.plot(ep, [r.get("val_ap50", float("nan")) for r in rows], "r-s", label="val mask AP50")
    ax2.set_ylabel("val AP50", color="r")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    return {k: v for k, v in asdict(s).items() if k != "extra"} | dict(s.extra)
