"""The options of ``rts prepare`` (:class:`PrepareOptions`) and the kinds of input it reads (:data:`MODES`).

A module of its own so that every step of the run (:mod:`rtscli.data.prepare`, :mod:`rtscli.data.discovery`,
:mod:`rtscli.data.inputs`, :mod:`rtscli.data.split_plan`) and the command line (:mod:`rtscli.cli.prepare`) can
import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtscli.data.bands import BandMap

MODES = ("auto", "paper", "masks", "vectors", "coco")


@dataclass
class PrepareOptions:
    inputs: list[Path]
    out: Path
    bands: BandMap | None = None
    mode: str = "auto"
    masks: Path | None = None
    labels: list[Path] | None = None  # one or several label files (e.g. one per site), any CRS each
    labels_layer: str | None = None
    labels_crs: Any = None
    aux: dict[str, Path] = field(default_factory=dict)
    modalities: list[str] | None = None
    chip_size: int | None = None  # scenes: 256 when None; per-sample images: cut only when given
    overlap: float = 0.25
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: Path | None = None
    split_block: int = 512
    seed: int = 0
    min_area: int = 16
    segmentation: str = "auto"
    site: str | None = None
    assume_crs: Any = None
    scale: float | None = None  # reflectance bands: physical = stored * scale + offset (else GDAL metadata)
    offset: float | None = None
    keep_empty: bool = True
    repeat_to: int = 3
    dedupe_labels: bool = True
    overwrite: bool = False
    mask_kind: str = "auto"  # masks and mask bands: auto, binary or instances (ids)
    coco: list[Path] | None = None  # COCO instance files
    coco_split: dict[Path, str] | None = None  # {file: split}; default: from the file names
    images: Path | None = None  # where the COCO files' images are
    category: str | None = None  # the COCO category of the slumps
    crowd_as_instances: bool = False  # COCO crowd annotations (iscrowd=1, CVAT's brush masks) are slumps to learn
    quality: Any = None  # rtscli.data.quality.QualityRequest (--quality): clouds, shadow, haze, snow are nodata
    dem: Path | None = None  # --dem: slope, relief and hillshade become chip bands (rtscli.data.terrain)
    dem_radius: float = 100.0  # --dem-radius: the relief's radius, metres
