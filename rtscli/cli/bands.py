"""``rts bands``: list band presets and the modalities they support."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def bands(
    spec: Annotated[Optional[str], typer.Argument(help="A preset name or a band map to explain.")] = None,
) -> None:
    """List band presets, or explain one band map (which modalities it can build)."""
    from rich.table import Table

    from rtscli.console import console
    from rtscli.data.bands import PRESET_NOTES, PRESETS, BandMap
    from rtscli.data.modalities import resolve
    from rtscli.errors import RtsError

    def modalities_of(bm: BandMap) -> str:
        known = ("red", "green", "blue", "nir", "ndvi", "mask")
        names = ["rgb", "nir", "ndvi"] + [n for n in bm.names if n not in known]
        ok = []
        for n in names:
            try:
                resolve(n, bm)
                ok.append(n)
            except RtsError:
                pass
        return ",".join(ok)

    if spec:
        bm = BandMap.parse(spec)
        console.print(f"band map: {bm}")
        console.print(f"modalities: {modalities_of(bm)}")
        if "mask" in bm:
            console.print(f"label band: {bm['mask']} (mask)")
        return
    table = Table(title="band presets (--bands NAME)")
    table.add_column("preset", no_wrap=True)
    table.add_column("sensor / layout")
    table.add_column("bands", overflow="fold")
    table.add_column("modalities", overflow="fold")
    for name, bm in PRESETS.items():
        table.add_row(name, PRESET_NOTES.get(name, ""), str(bm), modalities_of(bm))
    console.print(table)
    console.print("Or name bands yourself: --bands blue=1,green=2,red=3,nir=4[,dem=5]")
