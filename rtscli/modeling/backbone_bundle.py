"""Backbone bundles of ``rts ssl``: one modality's pretrained backbone, as safetensors + YAML.

A directory with ``model.safetensors`` (the backbone body's state dict, in timm's MViTv2 or
torchvision's ResNet50 key names, so it is also a plain ``--backbone-weights`` file) and
``config.yaml`` (``kind: rts-ssl-backbone``): the modality and its channels, the band map, the
normalization statistics, how stored values were converted, the preset's backbone and the tile size,
the scenes with their checksums, steps and loss. ``rts pretrain --backbone-weights DIR`` checks that
it fits the run (:func:`check_fits`) and normalizes the dataset with its statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtscli.data.modalities import BandStats, Modality
from rtscli.errors import RtsError
from rtscli.io.readers import check_safetensors, read_yaml

if TYPE_CHECKING:
    from rtscli.modeling.config import ModelConfig

KIND = "rts-ssl-backbone"
#: two value ranges (1st-99th percentile spans) further apart than this factor are other units or another band
RANGE_FACTOR = 10.0


@dataclass
class BackboneBundle:
    path: Path
    config: dict[str, Any]

    @property
    def modality(self) -> Modality:
        m = self.config["modality"]
        return Modality(m["name"], tuple(m["channels"]))

    @property
    def stats(self) -> dict[str, BandStats]:
        return {k: BandStats.from_dict(v) for k, v in self.config["normalization"].items()}

    @property
    def tile_size(self) -> int:
        return int(self.config["tile_size"])

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"


def is_backbone_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose ``config.yaml`` says it is a backbone bundle of ``rts ssl``.

    Raises:
        RtsError: the folder's ``config.yaml`` is not plain YAML (:func:`rtscli.io.readers.read_yaml`): a bundle's
            damaged config is told as such, not as some other kind of file.
    """
    p = Path(path)
    if not (p.is_dir() and (p / "config.yaml").is_file()):
        return False
    cfg = read_yaml(p / "config.yaml", what="model config")
    return isinstance(cfg, dict) and cfg.get("kind") == KIND


def read_backbone_bundle(path: str | Path) -> BackboneBundle:
    """Raises :class:`RtsError` when ``path`` is not a complete ``rts ssl`` bundle, its ``config.yaml`` is not plain
    YAML, or the header of its weights is damaged."""
    p = Path(path)
    if not is_backbone_bundle(p) or not (p / "model.safetensors").is_file():
        raise RtsError("not a backbone bundle of `rts ssl` (needs model.safetensors and config.yaml)", path=p,
                       fix="pass a folder made by `rts ssl`, or a .safetensors state dict")
    check_safetensors(p / "model.safetensors", what="backbone weights",
                      fix="the file is damaged or not safetensors: copy the bundle again")
    return BackboneBundle(p, read_yaml(p / "config.yaml", what="model config"))


def _architecture(backbone: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (list, tuple)) else v
            for k, v in ((k, backbone.get(k)) for k in ("kind", "depths", "embed_dim", "num_heads"))}


def check_fits(bb: BackboneBundle, *, model_config: ModelConfig, modality: Modality, stats: dict[str, BandStats],
               what: str) -> None:
    """Refuse, with one line naming the mismatch, a backbone bundle that does not fit a run: another
    modality (channels), another backbone architecture (preset), another tile size, or values in a grossly
    different range than the dataset's (other units, another band: their 1st-99th percentile spans differ
    more than :data:`RANGE_FACTOR` times, or do not overlap)."""
    if tuple(bb.modality.channels) != tuple(modality.channels):
        their_channels, my_channels = ",".join(bb.modality.channels), ",".join(modality.channels)
        raise RtsError(f"the backbone was pretrained on modality {bb.modality.name} ({their_channels}), {what} "
                       f"trains {modality.name} ({my_channels})", path=bb.path,
                       fix=f"use the `rts ssl --modality {modality.name}` bundle for this modality")
    mine, theirs = _architecture(model_config.backbone.__dict__), _architecture(bb.config["backbone"])
    if mine != theirs:
        raise RtsError(f"the backbone was pretrained with preset {bb.config.get('preset')} "
                       f"({theirs['kind']}, depths {theirs['depths']}), {what} builds {model_config.name} "
                       f"({mine['kind']}, depths {mine['depths']})", path=bb.path,
                       fix=f"use --preset {bb.config.get('preset')}, or run rts ssl with this preset")
    if bb.tile_size != model_config.tile_size:
        raise RtsError(f"the backbone was pretrained on {bb.tile_size} px tiles, {what} uses "
                       f"{model_config.tile_size} px", path=bb.path, fix=f"pass --tile-size {bb.tile_size}")
    for name in modality.channels:
        a, b = bb.stats.get(name), stats.get(name)
        if a is None or b is None:
            continue
        span_a, span_b = max(a.high - a.low, 1e-12), max(b.high - b.low, 1e-12)
        apart = a.high < b.low - span_b or b.high < a.low - span_a
        if max(span_a, span_b) / min(span_a, span_b) > RANGE_FACTOR or apart:
            raise RtsError(f"channel {name}: the dataset's values range {b.low:.4g}..{b.high:.4g}, the backbone's "
                           f"{a.low:.4g}..{a.high:.4g} (other units, or another band?)", path=bb.path,
                           fix="give both the same units (--scale/--offset of rts prepare and rts ssl) and band map")


def describe(bb: BackboneBundle) -> list[str]:
    """Lines for ``rts info`` about a backbone bundle."""
    c = bb.config
    m = c.get("metrics") or {}
    scenes = c.get("scenes") or []
    return [
        f"backbone bundle (rts ssl, {c.get('method', 'SimMIM')}): modality {bb.modality.name} "
        f"({', '.join(bb.modality.channels)}), preset {c.get('preset')}, tile {bb.tile_size} px",
        (f"  data: {c['data'].get('kind')} {c['data'].get('path') or ''}" if c.get("data") else
         f"  scenes: {len(scenes)} ({', '.join(Path(s['path']).name for s in scenes[:3])}"
         f"{', ...' if len(scenes) > 3 else ''})") + f"; windows seen: {m.get('windows_seen')}",
        f"  steps: {m.get('steps_run')}; reconstruction loss: first epoch {m.get('loss_first')}, "
        f"last {m.get('loss_last')}",
        "  normalization: " + ", ".join(f"{k} mean {v['mean']:.4g} std {v['std']:.4g}"
                                        for k, v in c["normalization"].items()),
    ]
