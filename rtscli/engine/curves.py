"""Training curves: ``curves.png`` of a run (training loss and validation AP50 per epoch, the bundle's epoch).

A run without a validation split scores its training chips instead: the right axis then says "training-chip
AP50". ``rts ssl`` has no AP at all: its curve is the reconstruction loss alone. The PNG's ``Axes`` text chunk
names the axes (``epoch | training loss | validation AP50``), for tools that read figures without looking.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: what the right axis shows, by the ``score`` of :func:`curves_figure`: the row key and the words
SCORES = {"val": ("val_ap50", "validation AP50"), "train_chips": ("train_chips_ap50", "training-chip AP50")}

#: Okabe & Ito's colour-blind-safe palette: blue (training loss) and vermillion (validation AP50)
LOSS_COLOUR = "#0072B2"
AP_COLOUR = "#D55E00"
BUNDLE_COLOUR = "#444444"


def plot_curves(run_dir: Path, rows: list[dict[str, float]], *, title: str | None = None,
                bundle_epoch: int | None = None, score: str | None = "val",
                loss_label: str = "training loss") -> Path | None:
    """Write ``run_dir/curves.png``: training loss and validation AP50 per epoch; returns its path (None: no rows).

    ``rows``: one dict per epoch (0-based ``epoch``, ``train_loss``, ``val_ap50`` in [0, 1] on the epochs that
    validated; :func:`rtscli.engine.train.epoch_metrics`). Validation runs every ``--val-every`` epochs: its
    points are joined over the epochs that have one. ``title``: default the run folder's name, with the model
    preset when ``run_dir/config.yaml`` names one. ``bundle_epoch`` (0-based, as in ``config.yaml``'s
    ``metrics.bundle_epoch``): marked with a vertical line and a label. ``score``: what the right axis shows
    (:data:`SCORES`: "val", "train_chips" for the ``train_chips_ap50`` of a run without a validation split), None
    for no AP axis (``rts ssl``); ``loss_label`` names the loss ("reconstruction loss" for ``rts ssl``). The axes'
    names are also written in the PNG's ``Axes`` text chunk. Written atomically (replaces the old one).
    """
    if not rows:
        return None
    from rtscli.io.atomic import atomic_file

    fig = curves_figure(rows, title=title if title is not None else run_title(run_dir), bundle_epoch=bundle_epoch,
                        score=score, loss_label=loss_label)
    path = Path(run_dir) / "curves.png"
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Axes": axes_names(fig)})
    return path


def axes_names(fig: Figure) -> str:
    """The names of a curves figure's axes: ``epoch | training loss | validation AP50`` (x, left, right when
    there is one)."""
    names = [fig.axes[0].get_xlabel()] + [ax.get_ylabel() for ax in fig.axes]
    return " | ".join(n for n in names if n)


def run_title(run_dir: Path) -> str:
    """The run folder's name, with its model preset (``rgb (nano)``) when ``run_dir/config.yaml`` names one."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name or str(run_dir)
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        preset = cfg.get("model", {}).get("name") if isinstance(cfg, dict) else None
    except (OSError, yaml.YAMLError, AttributeError):  # no bundle written yet, or not one of ours: the name alone
        preset = None
    return f"{name} ({preset})" if preset else name


def curves_figure(rows: list[dict[str, float]], *, title: str, bundle_epoch: int | None = None,
                  score: str | None = "val", loss_label: str = "training loss") -> Figure:
    """The curves as a matplotlib ``Figure`` (no pyplot state), for :func:`plot_curves` and tests.

    Lines carry gids: ``train_loss`` (left axis), ``val_ap50`` or ``train_chips_ap50`` (right axis, 0-1, only the
    epochs that were scored, joined; ``score`` as for :func:`plot_curves`, None: no right axis) and ``bundle``
    (the vertical mark; its label is the Text with gid ``bundle-label``).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["epoch"], r[key]) for r in rows if _finite(r.get(key)) and _finite(r.get("epoch"))]
        return [e for e, _ in pts], [v for _, v in pts]

    if score is not None and score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)} or None, not {score!r}")
    key, name = SCORES[score] if score else ("", "")
    loss_ep, loss = series("train_loss")
    val_ep, val = series(key) if score else ([], [])
    many = max(len(loss_ep), len(val_ep)) > 60  # markers only where they can be told apart
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax1 = fig.add_subplot()
    ax1.plot(loss_ep, loss, "-" if many else "-o", color=LOSS_COLOUR, markersize=3.5, lw=1.6, gid="train_loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(loss_label, color=LOSS_COLOUR)
    if score:
        ax2 = ax1.twinx()
        ax2.plot(val_ep, val, "-" if many else "-s", color=AP_COLOUR, markersize=4.5, lw=1.6, gid=key)
        ax2.set_ylabel(name, color=AP_COLOUR)
        ax2.set_ylim(0, 1)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    span = [*loss_ep, *val_ep, *([bundle_epoch] if bundle_epoch is not None else [])]
    if span and max(span) - min(span) < 2:  # one or two epochs: whole-epoch ticks, not -0.045 ... 0.045
        ax1.set_xlim(min(span) - 0.5, max(span) + 0.5)
        ax1.set_xticks(sorted({round(e) for e in span}))
    ax1.grid(alpha=0.25)
    every = _spacing(val_ep)
    val_label = name + (f" (every {every} epochs)" if every and every > 1 else "")
    if not val_ep:
        val_label = f"{name} (none ran)"
    handles = [Line2D([], [], color=LOSS_COLOUR, marker=None if many else "o", markersize=3.5, label=loss_label)]
    if score:
        handles.append(Line2D([], [], color=AP_COLOUR, marker=None if many else "s", markersize=4.5, label=val_label))
    if bundle_epoch is not None:
        ap = dict(zip(val_ep, val, strict=True)).get(bundle_epoch)
        ax1.axvline(bundle_epoch, color=BUNDLE_COLOUR, ls="--", lw=1.2, gid="bundle")
        what = "training-chip AP50" if score == "train_chips" else "AP50"
        text = f"bundle: epoch {bundle_epoch}" + (f", {what} {ap:.3f}" if ap is not None else "")
        lo, hi = min([*loss_ep, *val_ep, bundle_epoch]), max([*loss_ep, *val_ep, bundle_epoch])
        left = hi > lo and (bundle_epoch - lo) / (hi - lo) > 0.7  # near the right end: the label goes to its left
        ax1.text(bundle_epoch, 0.98, f" {text} " if not left else f"{text} ", transform=ax1.get_xaxis_transform(),
                 ha="right" if left else "left", va="top", fontsize=8, color=BUNDLE_COLOUR, gid="bundle-label",
                 bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
        handles.append(Line2D([], [], color=BUNDLE_COLOUR, ls="--", label="epoch the bundle holds"))
    ax1.set_title(title, fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=8.5)
    return fig


def _finite(v: object) -> bool:
    return isinstance(v, numbers.Real) and math.isfinite(v)


def _spacing(epochs: list[float]) -> int | None:
    """The epochs between validations when they are evenly spaced (``--val-every``), else None."""
    gaps = {round(b - a) for a, b in zip(epochs, epochs[1:], strict=False)}
    return gaps.pop() if len(gaps) == 1 else None
