"""Training curves: the per-epoch CSV every training writes, and its PNG plot.

Users judge over- and underfitting from exactly this plot (training vs validation loss), so
every learning stage (N2V, CARE, StarDist, U-Net, classifier) writes the same two files.
Works with Keras 2 and Keras 3 histories (only pandas and matplotlib are needed).
"""

from __future__ import annotations

from pathlib import Path

from snakescope.io.atomic import atomic_path


def plot_curves(csv_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Plot every metric in a Keras CSVLogger file, training and validation side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(csv_path)
    metrics = [c for c in history.columns if c != "epoch" and not c.startswith("val_") and c not in ("lr", "learning_rate")]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.5), squeeze=False)
    epochs = history["epoch"] + 1 if "epoch" in history else range(1, len(history) + 1)
    for ax, name in zip(axes[0], metrics):
        ax.plot(epochs, history[name], label=f"training {name}")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label=f"validation {name}")
            best = history[f"val_{name}"].idxmin() if "loss" in name else history[f"val_{name}"].idxmax()
            ax.axvline(list(epochs)[best], color="grey", ls=":", lw=1, label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        if "loss" in name:
            ax.set_yscale("log" if (history[name] > 0).all() else "linear")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
