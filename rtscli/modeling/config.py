"""Typed model configuration. A preset YAML in ``models/`` maps 1:1 onto :class:`ModelConfig`.

Every model part is built from keyword-only constructors that take these objects; there is no
global config and no registry. A preset's ``training:`` block (:class:`TrainingDefaults`) holds the
settings the preset is meant to be trained with; :func:`training_defaults` finds them for a preset
name, a YAML file or a config (a bundle's included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtscli.data.tiling import check_tile_size
from rtscli.errors import RtsError, unknown_choice


@dataclass
class BackboneConfig:
    kind: str = "mvitv2"  # mvitv2 | resnet18 | resnet34 | resnet50
    # MViTv2 (timm MultiScaleVitCfg): depths per stage, first-stage width (doubles per stage), heads
    depths: tuple[int, ...] = (2, 3, 16, 3)
    embed_dim: int = 96
    num_heads: int = 1
    drop_path_rate: float = 0.0
    # timm model name whose ImageNet weights match this shape (for --backbone-weights imagenet)
    timm_name: str | None = "mvitv2_base"
    in_channels: int = 3
    # ResNets' normalisation: frozen_bn (ImageNet's batch statistics kept, torchvision's detection default) or gn
    # (GroupNorm, which trains from random weights with small batches: He et al., "Rethinking ImageNet
    # Pre-training", 2019); MViTv2 has its own LayerNorms
    norm: str = "frozen_bn"


@dataclass
class FPNConfig:
    out_channels: int = 256
    norm: str = "ln"  # ln | gn | none


@dataclass
class RPNConfig:
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7


@dataclass
class ROIHeadsConfig:
    # one entry per stage: 3 stages = Cascade R-CNN, 1 stage = Mask R-CNN
    iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    bbox_reg_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
    conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    fc_dims: tuple[int, ...] = (1024,)
    norm: str = "ln"  # the box and mask heads' convs: ln | gn | none (the mask head's only with gn, as He et al.)
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    mask: bool = True  # False: detection only (the paper's GeoImageNet experiment)
    mask_conv_dims: tuple[int, ...] = (256, 256, 256, 256)

    @property
    def num_stages(self) -> int:
        return len(self.iou_thresholds)


#: the backbones a preset may name (``backbone.kind``)
BACKBONES = ("mvitv2", "resnet18", "resnet34", "resnet50")
#: the normalisation layers of the FPN and the heads: LayerNorm, GroupNorm (32 groups) or none
NORMS = ("ln", "gn", "none")

#: the training schedules the engine knows (``--schedule``)
SCHEDULES = ("cosine", "step")


@dataclass
class TrainingDefaults:
    """The training settings a preset is meant to be trained with: the ``training:`` block of ``models/*.yaml``.

    The training commands use them wherever the command line gives no value. The class defaults are the
    paper's recipe as detectron2's MViTv2 configurations state it (the paper trained with detectron2 and
    says only "AdamW, 36 epochs, learning rate scaled linearly with the batch"): AdamW at 1.6e-4 for 64
    images per step, i.e. 4e-5 at 16, weight decay 0.1, 250 warmup iterations, step decay, 36 epochs.

    * ``lr``: AdamW learning rate at 16 tiles per step (``--lr``); the engine scales it linearly with the
      total batch (tiles per step per device x devices x nodes).
    * ``warmup_steps``: linear warmup, in optimizer steps (the engine caps it at a fifth of the run).
    * ``batch_size``: tiles per step per device (``--batch-size``).
    * ``weight_decay``: AdamW weight decay (``--weight-decay``).
    * ``schedule``: ``cosine`` or ``step`` decay after warmup (``--schedule``).
    * ``epochs``: epochs (``--epochs``); None leaves it to the command's default.
    * ``source``: where the values come from and whether they were measured (one line, for people).
    * ``copy_paste``: copy-paste augmentation, the chance per training chip (``--copy-paste``; 0: off).

    Raises :class:`RtsError` for values that cannot work (a learning rate <= 0, a batch < 1, ...).
    """

    lr: float = 4.0e-5
    warmup_steps: int = 250
    batch_size: int = 2
    weight_decay: float = 0.1
    schedule: str = "step"
    epochs: int | None = 36
    source: str = "the paper's recipe (detectron2's MViTv2 configs); not measured here"
    copy_paste: float = 0.0  # copy-paste augmentation: the chance per training chip (Ghiasi et al. 2021)

    def __post_init__(self) -> None:
        def whole(v: Any) -> int:
            if isinstance(v, bool) or float(v) != int(float(v)):
                raise ValueError(v)
            return int(float(v))

        try:
            self.lr = float(self.lr)  # YAML reads 4e-5 (no dot) as a string
            self.weight_decay = float(self.weight_decay)
            self.copy_paste = float(self.copy_paste)
            self.warmup_steps = whole(self.warmup_steps)
            self.batch_size = whole(self.batch_size)
            self.epochs = None if self.epochs is None else whole(self.epochs)
        except (TypeError, ValueError):
            raise RtsError(f"training defaults: cannot read lr {self.lr!r}, weight_decay {self.weight_decay!r}, "
                           f"warmup_steps {self.warmup_steps!r}, batch_size {self.batch_size!r}, "
                           f"epochs {self.epochs!r}",
                           fix="lr and weight_decay are numbers; warmup_steps, batch_size and epochs whole numbers"
                           ) from None
        if not self.lr > 0 or self.weight_decay < 0:
            raise RtsError(f"training defaults: lr {self.lr} must be > 0 and weight_decay {self.weight_decay} >= 0",
                           fix="fix the preset's training block")
        if self.warmup_steps < 0 or self.batch_size < 1 or (self.epochs is not None and self.epochs < 1):
            raise RtsError("training defaults: warmup_steps must be >= 0, batch_size and epochs >= 1",
                           fix="fix the preset's training block")
        if self.schedule not in SCHEDULES:
            raise unknown_choice("schedule", self.schedule, SCHEDULES, also="in the preset's training block")


@dataclass
class ModelConfig:
    name: str = "cascade-mvitv2-b"
    description: str = ""
    tile_size: int = 1024
    num_classes: int = 1
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    # the preset's training defaults; None in bundles written before presets had them (see training_defaults)
    training: TrainingDefaults | None = None

    def __post_init__(self) -> None:
        r = self.roi_heads
        if len(r.bbox_reg_weights) != r.num_stages:
            raise RtsError(f"model {self.name}: {r.num_stages} stages but {len(r.bbox_reg_weights)} box-coder weights",
                           fix="give one bbox_reg_weights entry per iou_thresholds entry")
        if len(self.rpn.anchor_sizes) != 5:
            raise RtsError(f"model {self.name}: anchor_sizes needs 5 entries (P2..P6)", fix="fix the preset")
        check_tile_size(self.tile_size, f"model {self.name}: tile_size")
        if self.backbone.kind not in BACKBONES:
            raise unknown_choice(f"model {self.name}: backbone kind", self.backbone.kind, BACKBONES)
        if self.backbone.norm not in ("frozen_bn", "gn"):
            raise unknown_choice(f"model {self.name}: backbone norm", self.backbone.norm, ("frozen_bn", "gn"))
        for part, norm in (("fpn", self.fpn.norm), ("roi_heads", self.roi_heads.norm)):
            if norm not in NORMS:
                raise unknown_choice(f"model {self.name}: {part} norm", norm, NORMS)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ModelConfig":
        return _build(cls, d, source)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type[Any], d: dict[str, Any], source: str) -> Any:
    if not isinstance(d, dict):
        raise RtsError(f"{source}: expected a mapping for {cls.__name__}", fix="check the YAML")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise RtsError(f"{source}: unknown key(s) {', '.join(unknown)} in {cls.__name__}",
                       fix=f"allowed: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = {"BackboneConfig": BackboneConfig, "FPNConfig": FPNConfig, "RPNConfig": RPNConfig,
               "ROIHeadsConfig": ROIHeadsConfig, "TrainingDefaults | None": TrainingDefaults}.get(str(ftype))
        if sub is not None and value is None and str(ftype).endswith("| None"):
            kwargs[name] = None
        elif sub is not None:
            kwargs[name] = _build(sub, value, source)
        elif isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    if cls is TrainingDefaults:
        try:
            return cls(**kwargs)
        except RtsError as exc:
            raise RtsError(f"{source}: {exc}") from None
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# presets: models/*.yaml (also shipped in the wheel as rtscli/presets/*.yaml)
# ---------------------------------------------------------------------------------------------
def preset_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    return [here / "presets", here.parent / "models"]


def list_presets() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for d in preset_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                out.setdefault(p.stem, p)
    return out


def load_preset(name: str) -> ModelConfig:
    from rtscli.io.readers import read_yaml

    presets = list_presets()
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        src = path
    elif name in presets:
        src = presets[name]
    else:
        raise unknown_choice("model preset", name, presets, also="or a preset YAML file (see `rts models`)")
    data = read_yaml(src, what="model preset", fix="write the preset as plain YAML (see rtscli/presets)") or {}
    return ModelConfig.from_dict(data, source=str(src))


def training_defaults(preset: "str | Path | ModelConfig") -> TrainingDefaults:
    """The training settings for a preset name, a preset YAML file, or a config (a bundle's ``model_config``).

    A config's own ``training`` block wins; a config without one (a bundle written before presets had
    training blocks) gets the block of the shipped preset of the same name; anything else (a custom YAML
    without a ``training:`` block, an unknown name in a bundle) gets :class:`TrainingDefaults`'s defaults,
    the paper's recipe. Raises :class:`RtsError` for an unknown preset name given as a string.
    """
    if isinstance(preset, ModelConfig):
        if preset.training is not None:
            return preset.training
        if preset.name in list_presets():
            preset = preset.name
        else:
            return TrainingDefaults(source=f"no training block for model {preset.name!r}: the paper's recipe")
    cfg = load_preset(str(preset))
    if cfg.training is not None:
        return cfg.training
    return TrainingDefaults(source=f"no training block in preset {preset}: the paper's recipe")
