"""``rts models list`` and ``rts models use BUNDLE``: presets, known bundles, the default model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Model presets and bundles; the default model of `rts predict`.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Show the default model, the bundles used before and the presets."""
    import os

    from rtscli.cli import userconfig
    from rtscli.console import console
    from rtscli.modeling.config import list_presets, load_preset

    data = userconfig.load()
    env = os.environ.get("RTS_MODEL")
    default = env or data.get("default_model")
    console.print(f"default model: {default or 'none (rts models use BUNDLE)'}"
                  + (" (from RTS_MODEL)" if env else "") + f"   settings: {userconfig.config_path()}")
    models = data.get("models", [])
    if models:
        console.print("bundles:")
        for m in models:
            mark = "*" if m == default else " "
            console.print(f" {mark} {m}" + ("" if Path(m, "config.yaml").exists() else "  (missing)"))
    console.print("presets (rts pretrain --preset NAME):")
    for name in list_presets():
        cfg = load_preset(name)
        console.print(f"   {name:<24} tile {cfg.tile_size:>4}  {cfg.description}")


@app.command("use")
def use(bundle: Annotated[Path, typer.Argument(help="Model bundle directory to use by default.")]) -> None:
    """Make BUNDLE the default model of `rts predict` (RTS_MODEL still overrides it)."""
    from rtscli.cli import userconfig
    from rtscli.console import console

    path = userconfig.set_default_model(bundle)
    console.print(f"default model: {bundle.resolve()} (saved in {path})")
