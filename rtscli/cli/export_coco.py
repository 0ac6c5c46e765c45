"""``rts export-coco DATASET -o DIR``: a dataset as standard COCO JSON + images, for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_coco(
    data: Annotated[Path, typer.Argument(help="Dataset directory made by `rts prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create: annotations/instances_SPLIT.json and images/SPLIT/.")],
    image_format: Annotated[str, typer.Option(help="tif (the chips as they are: every band, georeference), png or jpg (8-bit RGB for viewers and labelling tools).")] = "tif",
    overwrite: Annotated[bool, typer.Option(help="Replace the folder if it exists.")] = False,
) -> None:
    """Write a dataset as a standard COCO instance dataset (detectron2, CVAT, Label Studio, Roboflow).

    `rts prepare DIR -o DS` reads such a folder back (the splits from the file names).
    """
    from rtscli.console import console
    from rtscli.progress import progress
    from rtscli.data.coco_export import export_coco as run

    with progress() as bar:
        task = bar.add_task("exporting", total=None, unit="images")
        counts = run(data, out, image_format=image_format, overwrite=overwrite,
                     progress=lambda k, n: bar.update(task, completed=k, total=n))
    parts = ", ".join(f"{s} {c['images']} images / {c['annotations']} annotations" for s, c in counts.items())
    console.print(f"wrote {out}/annotations/instances_{{train,val,test}}.json and {out}/images/ ({parts})")
