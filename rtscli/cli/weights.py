"""``rts weights fetch``: ImageNet backbone weights as a .safetensors file, for machines without internet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Backbone weights for machines without internet (HPC compute nodes).", no_args_is_help=True)


@app.command("fetch")
def fetch(
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write, e.g. mvitv2_b_in1k.safetensors.")],
    preset: Annotated[str, typer.Option(help="Model preset whose backbone's ImageNet weights to fetch (see `rts models list`).")] = "cascade-mvitv2-b",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Download the ImageNet weights of a preset's backbone (timm MViTv2 or torchvision ResNet50) once, on a
    machine with internet, into a .safetensors file; then train anywhere with `--backbone-weights FILE`.

    The file holds the backbone's tensors under the names `--backbone-weights` reads. With HF_HUB_OFFLINE=1
    nothing is downloaded: the weights come from the timm/torchvision cache of this machine, or the command
    stops.
    """
    from rtscli.console import console
    from rtscli.errors import RtsError
    from rtscli.io.atomic import atomic_file, check_output
    from rtscli.modeling.backbone import OFFLINE_ENV, body_state, imagenet_source, imagenet_weights
    from rtscli.modeling.config import load_preset

    if out.suffix != ".safetensors":
        raise RtsError("rts weights fetch writes a .safetensors file", path=out, fix=f"use -o {out.stem}.safetensors")
    check_output(out, overwrite)  # before the download
    cfg = load_preset(preset)
    b = cfg.backbone
    state = imagenet_weights(b.kind, b.timm_name, preset=cfg.name, what="rts weights fetch", norm=b.norm,
                             fix=f"run it on a machine with internet (a login node), without {OFFLINE_ENV}=1, and "
                                 "copy the file to this one")
    kept = body_state(state, cfg=b, fpn=cfg.fpn, tile_size=cfg.tile_size)
    from safetensors.torch import save_file

    source = str(imagenet_source(b.kind, b.timm_name, b.norm))
    with atomic_file(out, overwrite=overwrite) as tmp:
        save_file(kept, str(tmp), metadata={"format": "pt", "source": source, "preset": cfg.name,
                                            "content": "backbone body, ImageNet-1k (rts weights fetch)"})
    n = sum(v.numel() for v in kept.values())
    console.print(f"{out}: ImageNet weights of {cfg.name}'s backbone ({source}, {len(kept)} tensors, "
                  f"{n / 1e6:.1f}M parameters); train with --backbone-weights {out}", markup=False, soft_wrap=True)
