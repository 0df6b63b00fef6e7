"""Quality-control figures for the report: segmentation outlines, restoration before/after, tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.io.frames import frames


def _middle_plane(array, index, spatial_ndim: int) -> np.ndarray:
    """A 2D view of a frame: the middle z plane of a stack, the plane itself in 2D."""
    if spatial_ndim == 3:
        z = array.shape[len(index)] // 2
        return np.asarray(array[index + (z,)])
    return np.asarray(array[index])


def _show_gray(ax, plane, **kwargs) -> None:
    """A plane in grey with 1-99.8 percentile contrast."""
    lo, hi = np.percentile(plane, [1, 99.8])
    ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, **kwargs)


def _save(fig, out_png, title: str = "") -> None:
    """Lay out, write the PNG atomically (for the report) and close the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def segmentation_overlay(image_path, labels_path, out_png, *, channel: int = 0, title: str = "") -> None:
    """First, middle and last time point: the image (1-99.8 percentile contrast) with outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from snakescope.io.labels import read_labels_image

    image = ngff.read_image(image_path)
    labels = read_labels_image(labels_path)
    spatial_ndim = sum(a in "zyx" for a in image.axes)
    all_frames = list(frames(image.axes, image.shape, channel))
    picks = sorted({0, len(all_frames) // 2, len(all_frames) - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4), squeeze=False)
    for ax, i in zip(axes[0], picks):
        t, index = all_frames[i]
        plane = _middle_plane(image.data, index, spatial_ndim).astype(np.float32)
        lab = _middle_plane(labels.data, (t,) if t is not None else (), spatial_ndim)
        _show_gray(ax, plane)
        edges = np.ma.masked_where(~find_boundaries(lab, mode="inner"), np.ones(lab.shape))
        ax.imshow(edges, cmap="autumn", alpha=0.9, interpolation="nearest")
        n = len(np.unique(lab)) - (1 if 0 in lab else 0)
        where = f"t={t}" if t is not None else "image"
        ax.set_title(f"{where}{', middle z' if spatial_ndim == 3 else ''}: {n} objects", fontsize=9)
        ax.axis("off")
    _save(fig, out_png, title)


def track_plot(tracks, out_png, *, title: str = "", summary: dict | None = None) -> None:
    """Tracks drawn in the x-y plane (coloured by track, divisions marked), for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = tracks.table
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("tab20")
    for track_id, rows in table.groupby("track_id", sort=True):
        rows = rows.sort_values("t")
        ax.plot(rows["x"], rows["y"], "-", lw=1, color=cmap(int(track_id) % 20))
    lineage = tracks.lineage
    parents = lineage.loc[lineage["parent"] > 0, "parent"].value_counts()
    dividing = set(parents[parents >= 2].index)
    ends = table.sort_values("t").groupby("track_id").tail(1)
    div = ends[ends["track_id"].isin(dividing)]
    ax.plot(div["x"], div["y"], "k*", ms=8, label=f"divisions ({len(div)})")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    if summary:
        text = ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in list(summary.items())[:6])
        ax.set_title(f"{title}\n{text}", fontsize=8)
    elif title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out_png)


def restoration_before_after(image_path, restored_path, out_png, *, target_path=None, channel: int = 0,
                             title: str = "", crop: int = 256) -> None:
    """The middle frame before and after restoration (and the clean target when there is
    one): whole plane and a centre crop of ``crop`` pixels, each panel with its own 1-99.8
    percentile contrast, so the noise left and the detail kept can be judged by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [("before", image_path), ("restored", restored_path)] + ([("target", target_path)] if target_path else [])
    planes = []
    for name, path in paths:
        image = ngff.read_image(path)
        spatial_ndim = sum(a in "zyx" for a in image.axes)
        # the target may lack the channel axis of a multi-channel image
        use = channel if "c" in image.axes else 0
        all_frames = list(frames(image.axes, image.shape, use))
        t, index = all_frames[len(all_frames) // 2]
        planes.append((name, _middle_plane(image.data, index, spatial_ndim).astype(np.float32), t, spatial_ndim))
    n_rows = 2 if max(planes[0][1].shape) > crop else 1  # a crop of a small image would repeat it
    fig, axes = plt.subplots(n_rows, len(planes), figsize=(4.0 * len(planes), 4.1 * n_rows), squeeze=False)
    for col, (name, plane, t, spatial_ndim) in enumerate(planes):
        h, w = plane.shape
        cy, cx = max(0, h // 2 - crop // 2), max(0, w // 2 - crop // 2)
        for row, view in enumerate((plane, plane[cy:cy + crop, cx:cx + crop])[:n_rows]):
            ax = axes[row][col]
            _show_gray(ax, view, interpolation="nearest")
            where = f"t={t}" if t is not None else "image"
            ax.set_title(f"{name} ({where}{', middle z' if spatial_ndim == 3 else ''})" if row == 0 else f"{name}, centre crop",
                         fontsize=9)
            ax.axis("off")
    _save(fig, out_png, title)
