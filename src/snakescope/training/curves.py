"""Training curves: the per-epoch CSV every training writes, and its PNG plot.

Users judge over- and underfitting from exactly this plot (training vs validation loss), so
every learning stage (N2V, CARE, StarDist, U-Net, classifier) writes the same two files.
The marked "best epoch" is the one whose weights are kept: the lowest validation loss
(the checkpoint's criterion), in every panel, whatever the metric's direction.
Works with Keras 2 and Keras 3 histories (only pandas and matplotlib are needed).
"""

from __future__ import annotations

import math
from pathlib import Path

from snakescope.io.atomic import atomic_path

#: Columns that are not a metric of the model.
NOT_METRICS = ("epoch", "lr", "learning_rate")
MAX_COLUMNS = 3


def best_epoch(history) -> int | None:
    """Row index of the lowest finite validation loss (the weights kept), or None."""
    if "val_loss" not in history or not history["val_loss"].notna().any():
        return None
    return int(history["val_loss"].idxmin())


def plot_curves(csv_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Plot every metric of a Keras CSVLogger file, training and validation in one panel
    each, the loss first, at most three panels a row (readable in a report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(csv_path)
    metrics = [c for c in history.columns if c not in NOT_METRICS and not c.startswith("val_")]
    metrics.sort(key=lambda name: name != "loss")
    n = max(1, len(metrics))
    cols = min(MAX_COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False)
    epochs = list(history["epoch"] + 1 if "epoch" in history else range(1, len(history) + 1))
    best = best_epoch(history)
    for ax, name in zip(axes.ravel(), metrics):
        ax.plot(epochs, history[name], label="training")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
        if best is not None:
            ax.axvline(epochs[best], color="grey", ls=":", lw=1, label=f"kept (epoch {epochs[best]})")
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=11)
        if "loss" in name and (history[name] > 0).all():
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
