"""Quality-control figures for the report: segmentation outlines, restoration before/after, tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.io.frames import frames

__all__ = ["restoration_before_after", "segmentation_overlay", "track_plot"]


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
    """First, middle and last time point: the image (1-99.8 percentile contrast) with outlines;
    from a typed U-Net each outline has its object's cell type's colour (legend below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from snakescope.io.labels import class_map_names, read_class_map, read_labels_image

    image = ngff.read_image(image_path)
    labels = read_labels_image(labels_path)
    type_names = class_map_names(labels_path)[1]
    class_map = read_class_map(labels_path) if type_names else None
    spatial_ndim = sum(a in "zyx" for a in image.axes)
    all_frames = list(frames(image.axes, image.shape, channel))
    picks = sorted({0, len(all_frames) // 2, len(all_frames) - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4), squeeze=False)
    for ax, i in zip(axes[0], picks):
        t, index = all_frames[i]
        plane = _middle_plane(image.data, index, spatial_ndim).astype(np.float32)
        lab = _middle_plane(labels.data, (t,) if t is not None else (), spatial_ndim)
        _show_gray(ax, plane)
        if class_map is None:
            edges = np.ma.masked_where(~find_boundaries(lab, mode="inner"), np.ones(lab.shape))
            ax.imshow(edges, cmap="autumn", alpha=0.9, interpolation="nearest")
        else:
            classes = _middle_plane(class_map.data, (t,) if t is not None else (), spatial_ndim)
            ax.imshow(_type_outlines(lab, classes, len(type_names)), interpolation="nearest")
        n = len(np.unique(lab)) - (1 if 0 in lab else 0)
        where = f"t={t}" if t is not None else "image"
        ax.set_title(f"{where}{', middle z' if spatial_ndim == 3 else ''}: {n} objects", fontsize=9)
        ax.axis("off")
    if class_map is not None:
        from matplotlib.patches import Patch

        axes[0][-1].legend(handles=[Patch(color=np.array(_type_color(k)[:3]) / 255, label=name)
                                    for k, name in enumerate(type_names, start=1)],
                           loc="lower right", fontsize=8, framealpha=0.7)
    _save(fig, out_png, title)


def _type_color(type_id: int) -> list[int]:
    """RGBA of a cell type's outlines: its body colour in the class map (0: untyped, white)."""
    from snakescope.io.labels import class_colors

    return class_colors(2 * type_id + 1)[2 * type_id] if type_id else [255, 255, 255, 255]


def _type_outlines(labels: np.ndarray, class_map: np.ndarray, n_types: int) -> np.ndarray:
    """An RGBA image (uint8) of the objects' inner outlines, each in its type's colour."""
    from skimage.segmentation import find_boundaries

    from snakescope.segmentation.unet.types import object_types

    found = object_types(labels, class_map, n_types)
    type_of = np.zeros(int(labels.max()) + 1, np.int64)
    for label, (type_id, _) in found.items():
        type_of[label] = type_id
    palette = np.array([_type_color(k) for k in range(n_types + 1)], np.uint8)
    rgba = palette[type_of[labels]]
    rgba[~find_boundaries(labels, mode="inner")] = 0
    return rgba


def track_plot(tracks, out_png, *, title: str = "", summary: dict | None = None, frame_shape=None) -> None:
    """The tracks' y-x projection for the report, in micrometres (pixels when the tracks have
    no voxel size): one line per track coloured by track, divisions starred where the mother
    ends; 3D tracks are projected along z. ``frame_shape`` is the spatial shape of a frame
    (``([z,] y, x)`` pixels): given, the axes span the field of view, so sparse tracks are
    seen in place and an empty result still has real axes. Without tracks the figure says so.
    ``summary`` (e.g. :func:`snakescope.tracking.statistics.summarize_tracks`) is printed
    under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, lineage = tracks.table, tracks.lineage
    scale = tracks.voxel_size[-2:] if tracks.voxel_size is not None else (1.0, 1.0)
    unit = "µm" if tracks.voxel_size is not None else "px"
    y, x = table["y"].to_numpy() * scale[0], table["x"].to_numpy() * scale[1]
    fig, ax = plt.subplots(figsize=(6, 6.4))
    cmap = plt.get_cmap("tab20")
    ids = table["track_id"].to_numpy()
    cut = np.flatnonzero(np.diff(ids)) + 1  # the table is sorted by track_id, t
    for rows in np.split(np.arange(len(ids)), cut) if len(ids) else []:
        ax.plot(x[rows], y[rows], "-", lw=1, color=cmap(int(ids[rows[0]]) % 20))
    children = lineage.loc[lineage["parent"] > 0, "parent"].value_counts()
    dividing = np.isin(ids, children[children >= 2].index.to_numpy())
    last_row = np.append(ids[1:] != ids[:-1], True) if len(ids) else np.zeros(0, bool)
    mothers = dividing & last_row
    if len(ids):
        ax.plot(x[mothers], y[mothers], "k*", ms=8, label=f"divisions ({int(mothers.sum())})")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no tracks: no objects in any frame", transform=ax.transAxes, ha="center", va="center",
                fontsize=12)
    if frame_shape is not None:
        height, width = frame_shape[-2] * scale[0], frame_shape[-1] * scale[1]
        pixel_y, pixel_x = scale
        ax.set_xlim(-pixel_x / 2, width - pixel_x / 2)
        ax.set_ylim(-pixel_y / 2, height - pixel_y / 2)
    elif not len(ids):
        ax.set_xticks([])
        ax.set_yticks([])
    ax.invert_yaxis()  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    lines = [title] if title else []
    if "z" in tracks.spatial:
        lines.append("3D tracks projected along z")
    if summary:
        items = [f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in list(summary.items())[:6]]
        lines += [", ".join(items[i:i + 3]) for i in range(0, len(items), 3)]
    ax.set_title("\n".join(lines), fontsize=8)
    _save(fig, out_png)


def restoration_before_after(image_path, restored_path, out_png, *, target_path=None, channel: int = 0,
                             title: str = "", crop: int = 256) -> dict:
    """The restoration QC page of a sample: the middle frame's input, restored image, clean
    target (when there is one) and residual (input minus restored), whole and as a centre
    crop of ``crop`` pixels, with the frame's metrics in the title; returns those metrics.

    Each image panel has its own 1-99.8 percentile contrast. The residual is the input minus
    the restored image brought to the input's intensity scale (a least-squares affine fit:
    CARE's output has the target's scale), on a diverging scale around 0: where restoration
    removed only noise it is featureless grain (denser where the signal is bright, as shot
    noise is); edges or objects in it are structure that was removed. With a target, the
    title gives PSNR and SSIM of input and output after an affine fit to the target, for the
    shown frame (:func:`snakescope.restoration.metrics.restoration_metrics`; the whole-image
    figures are in ``restoration_metrics.csv``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [("input", image_path), ("restored", restored_path)] + ([("target", target_path)] if target_path else [])
    planes = {}
    for name, path in paths:
        image = ngff.read_image(path)
        spatial_ndim = sum(a in "zyx" for a in image.axes)
        # the target may lack the channel axis of a multi-channel image
        use = channel if "c" in image.axes else 0
        all_frames = list(frames(image.axes, image.shape, use))
        t, index = all_frames[len(all_frames) // 2]
        planes[name] = _middle_plane(image.data, index, spatial_ndim).astype(np.float32)
    where = (f"t={t}" if t is not None else "image") + (", middle z" if spatial_ndim == 3 else "")
    residual = planes["input"] - _fit_to(planes["restored"], planes["input"])
    metrics = {}
    lines = [f"{title}: {where}" if title else where]
    if "target" in planes:
        from snakescope.restoration.metrics import restoration_metrics

        m = restoration_metrics(planes["input"], planes["restored"], planes["target"])
        metrics.update({k: m[k] for k in ("psnr_input_affine", "psnr_restored_affine", "ssim_input_affine",
                                          "ssim_restored_affine")})
        lines.append(f"against the target (affine fit): PSNR {m['psnr_input_affine']:.2f} -> "
                     f"{m['psnr_restored_affine']:.2f} dB, SSIM {m['ssim_input_affine']:.3f} -> "
                     f"{m['ssim_restored_affine']:.3f}")
    panels = list(planes.items()) + [("residual (input - restored)", residual)]
    n_rows = 2 if max(residual.shape) > crop else 1  # a crop of a small image would repeat it
    fig, axes = plt.subplots(n_rows, len(panels), figsize=(3.8 * len(panels), 4.0 * n_rows + 0.3 * len(lines)),
                             squeeze=False)
    h, w = residual.shape
    cy, cx = max(0, h // 2 - crop // 2), max(0, w // 2 - crop // 2)
    for col, (name, plane) in enumerate(panels):
        for row, view in enumerate((plane, plane[cy:cy + crop, cx:cx + crop])[:n_rows]):
            ax = axes[row][col]
            if plane is residual:
                bound = float(np.percentile(np.abs(residual), 99.5)) or 1.0
                ax.imshow(view, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
            else:
                _show_gray(ax, view, interpolation="nearest")
            ax.set_title(name if row == 0 else f"{name.split(' ')[0]}, centre crop", fontsize=9)
            ax.axis("off")
    _save(fig, out_png, "\n".join(lines))
    return metrics


def _fit_to(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``a * image + b`` with a, b the least-squares fit to ``reference``."""
    x, y = image.astype(np.float64), reference.astype(np.float64)
    var = float(x.var())
    slope = float(np.mean((x - x.mean()) * (y - y.mean()))) / var if var > 0 else 0.0
    return (slope * (x - x.mean()) + y.mean()).astype(np.float32)

