"""Typed model configuration. A preset YAML in ``models/`` maps 1:1 onto :class:`ModelConfig`.

Every model part is built from keyword-only constructors that take these objects; there is no
global config and no registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtscli.errors import RtsError


@dataclass
class BackboneConfig:
    kind: str = "mvitv2"  # mvitv2 | resnet50
    # MViTv2 (timm MultiScaleVitCfg): depths per stage, first-stage width (doubles per stage), heads
    depths: tuple[int, ...] = (2, 3, 16, 3)
    embed_dim: int = 96
    num_heads: int = 1
    drop_path_rate: float = 0.0
    # timm model name whose ImageNet weights match this shape (for --backbone-weights imagenet)
    timm_name: str | None = "mvitv2_base"
    in_channels: int = 3


@dataclass
class FPNConfig:
    out_channels: int = 256
    norm: str = "ln"  # ln | none


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
    norm: str = "ln"
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

    def __post_init__(self) -> None:
        r = self.roi_heads
        if len(r.bbox_reg_weights) != r.num_stages:
            raise RtsError(f"model {self.name}: {r.num_stages} stages but {len(r.bbox_reg_weights)} box-coder weights",
                           fix="give one bbox_reg_weights entry per iou_thresholds entry")
        if len(self.rpn.anchor_sizes) != 5:
            raise RtsError(f"model {self.name}: anchor_sizes needs 5 entries (P2..P6)", fix="fix the preset")
        if self.tile_size % 32:
            raise RtsError(f"model {self.name}: tile_size {self.tile_size} is not a multiple of 32",
                           fix="use e.g. 256, 512 or 1024")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ModelConfig":
        return _build(cls, d, source)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls, d: dict[str, Any], source: str):
    if not isinstance(d, dict):
        raise RtsError(f"{source}: expected a mapping for {cls.__name__}", fix="check the YAML")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise RtsError(f"{source}: unknown key(s) {', '.join(unknown)} in {cls.__name__}",
                       fix=f"allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = {"BackboneConfig": BackboneConfig, "FPNConfig": FPNConfig, "RPNConfig": RPNConfig,
               "ROIHeadsConfig": ROIHeadsConfig}.get(str(ftype))
        if sub is not None:
            kwargs[name] = _build(sub, value, source)
        elif isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
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
    import yaml

    presets = list_presets()
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        src = path
    elif name in presets:
        src = presets[name]
    else:
        raise RtsError(f"unknown model preset {name!r}", fix=f"use one of {', '.join(presets) or '(none found)'}")
    data = yaml.safe_load(src.read_text()) or {}
    return ModelConfig.from_dict(data, source=str(src))
