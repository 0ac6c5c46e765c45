"""Model bundles: a directory with ``model.safetensors`` + ``config.yaml``. Nothing is unpickled.

``config.yaml`` holds everything needed to use the weights on new imagery: the architecture
(:class:`ModelConfig`), the modalities and their channels, the band map and the per-channel
normalization statistics from the training data, nodata, classes, tile size, training settings
and provenance (dataset path and checksum), and metrics.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rtscli.data.bands import BandMap
from rtscli.data.modalities import BandStats, Modality
from rtscli.errors import RtsError, user_error
from rtscli.io.readers import check_safetensors, load_safetensors, read_yaml
from rtscli.modeling.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from rtscli.modeling.detector import Detector

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
#: the fix of a bundle whose weights file is damaged
WEIGHTS_FIX = "the file is damaged or not safetensors: copy the bundle again"


#: 1-channel modalities are repeated to this many channels unless the bundle says otherwise (the paper's
#: 3-channel stems; bundles made before rts recorded it)
DEFAULT_REPEAT_TO = 3


@dataclass
class Bundle:
    """A model bundle read from disk: its folder, its ``config.yaml`` and the architecture in it.

    Read the config through the typed properties below (they hold the defaults for keys older bundles lack),
    not through ``config.get(...)``.
    """

    path: Path
    config: dict[str, Any]
    model_config: ModelConfig

    @property
    def repeat_to(self) -> int | None:
        """Channels a 1-channel modality is repeated to (None: not repeated)."""
        return self.config.get("repeat_to", DEFAULT_REPEAT_TO)

    @property
    def fusion(self) -> dict[str, Any] | None:
        """The fusion module's spec (strategy, modalities ...), or None for a one-modality model."""
        return self.config.get("fusion") or None

    @property
    def fusion_strategy(self) -> str:
        """The fusion strategy's name, ``none`` for a one-modality model."""
        return (self.fusion or {}).get("strategy", "none")

    @property
    def values(self) -> dict[str, Any] | None:
        """How the training rasters' stored values became the model's units (:mod:`rtscli.data.values`), or None."""
        return self.config.get("values")

    @property
    def source_bands(self) -> dict[str, Any] | None:
        """The band layout (count, GDAL descriptions) of the training rasters, or None for older bundles."""
        return self.config.get("source_bands") or None

    @property
    def source_mask_band(self) -> int | None:
        """The label band of the training rasters' layout (the paper's layout has one), or None."""
        return (self.config.get("source_band_map") or {}).get("mask")

    @property
    def terrain(self) -> dict[str, Any] | None:
        """How the terrain channels were made from a DEM (``--dem``: radius, sun, units), or None for a model trained
        without terrain (:class:`rtscli.data.terrain.TerrainSettings`)."""
        return self.config.get("terrain") or None

    @property
    def needs_terrain(self) -> bool:
        """Whether a modality of the model reads terrain channels (slope, relief, hillshade)."""
        from rtscli.data.modalities import TERRAIN

        return any(c in TERRAIN for m in self.modalities for c in m.channels)

    @property
    def instance_sizes(self) -> dict[str, Any]:
        """Statistics of the training slumps' sizes (``box_side_px_percentiles``), empty when not recorded."""
        return self.config.get("instance_sizes") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The training run's metrics (best AP50, epoch ...), empty when not recorded."""
        return self.config.get("metrics") or {}

    @property
    def dataset_checksum(self) -> str | None:
        """The checksum of the dataset the bundle was trained on, or None."""
        return (self.config.get("dataset") or {}).get("checksum")

    @property
    def modalities(self) -> list[Modality]:
        return [Modality(m["name"], tuple(m["channels"])) for m in self.config["modalities"]]

    @property
    def band_map(self) -> BandMap:
        return BandMap.from_mapping(self.config["band_map"])

    @property
    def source_band_map(self) -> BandMap | None:
        """The band layout of the rasters the training chips were cut from (without the mask band), or None
        for bundles made before rts recorded it. ``band_map`` is the chips' own layout."""
        src = self.config.get("source_band_map")
        if not src:
            return None
        return BandMap.from_mapping({k: v for k, v in src.items() if k != "mask"})

    @property
    def stats(self) -> dict[str, BandStats]:
        return {k: BandStats.from_dict(v) for k, v in self.config["normalization"].items()}

    @property
    def tile_size(self) -> int:
        return int(self.model_config.tile_size)


def save_bundle(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write a bundle directory atomically (temporary sibling, then rename; an old one is replaced)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.bundle-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "rts-model"})
        os.chmod(tmp / WEIGHTS, 0o666 & ~_umask())  # safetensors writes owner-only; a bundle is shared like any file
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        if path.is_dir():  # a run directory (checkpoints, metrics) that becomes a bundle
            os.replace(tmp / WEIGHTS, path / WEIGHTS)
            os.replace(tmp / CONFIG, path / CONFIG)  # last: a bundle looks complete only when it is
        else:
            os.replace(tmp, path)
    except Exception as exc:  # disk full, no permission (safetensors says so in its message): one line
        err = user_error(exc, path=path)
        if err is not None:
            raise err from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    if not path.exists():
        raise RtsError("model bundle not found", path=path,
                       fix="pass a folder made by `rts pretrain` or `rts finetune`")
    if not (path / CONFIG).exists() or not (path / WEIGHTS).exists():
        raise RtsError(f"not a model bundle (needs {WEIGHTS} and {CONFIG})", path=path,
                       fix="pass a folder made by `rts pretrain` or `rts finetune`")
    cfg = read_yaml(path / CONFIG, what="model config")  # not plain YAML (a !!python tag): refused, never run
    if isinstance(cfg, dict) and cfg.get("kind") == "rts-ssl-backbone":
        raise RtsError("this is a backbone bundle of `rts ssl`, not a model", path=path,
                       fix="train a model from it: rts pretrain --backbone-weights " + str(path))
    if not isinstance(cfg, dict) or cfg.get("kind") != "rts-model":
        raise RtsError("config.yaml is not an rts model config", path=path / CONFIG, fix="use a bundle made by rts")
    check_safetensors(path / WEIGHTS, what="weights", fix=WEIGHTS_FIX)  # its header: a damaged file is told now
    return Bundle(path, cfg, ModelConfig.from_dict(cfg["model"], source=str(path / CONFIG)))


def load_model(path: str | Path, device: str = "cpu") -> tuple[Detector, Bundle]:
    """Build the detector of a bundle and load its weights (safetensors only). Returns (model, bundle)."""
    from rtscli.modeling.multimodal import build_model

    bundle = read_bundle(path)
    model = build_model(bundle.model_config, bundle.fusion)
    state = load_safetensors(bundle.path / WEIGHTS, device=device, what="weights", fix=WEIGHTS_FIX)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with another shape (e.g. {wrong[0]})")
        raise RtsError(f"the weights do not match config.yaml: {'; '.join(parts)} tensors", path=bundle.path,
                       fix="config.yaml and model.safetensors must come from the same run")
    model.load_state_dict(state)
    return model.to(device), bundle
