"""Training targets of the detector from boxes: heatmaps, box numbers, random patches.

For each box, the output cell holding its centre gets heatmap value 1 in the box's class,
and a Gaussian (sigma: a sixth of the box's geometric mean size, at least half a cell)
falls off around it, the classes' maps taking the maximum where objects meet (CenterNet's
targets). Every cell where an object's Gaussian reaches :data:`REGRESSION_LEVEL` and
beats the other objects' regresses that object's box: the centre's offset from the cell
centre (in cells) and the log height and width (pixels). Regressing around the centre and
not only at it means a peak one cell off still gives the right box.

The target array of a patch is (cells y, cells x, n_classes + 5): the heatmaps, the four
box numbers and the regression weight (1 where a box is regressed). Only numpy here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snakescope.io.boxes import Boxes

__all__ = ["MIN_SIGMA", "REGRESSION_LEVEL", "SIGMA_PER_SIZE", "augment_patch", "box_sigma", "patch_batches",
           "render_targets", "validation_patches"]

#: Gaussian sigma per unit of the box's geometric mean size (the box spans about six sigmas).
SIGMA_PER_SIZE = 1 / 6
#: The smallest sigma, in output cells.
MIN_SIGMA = 0.5
#: Cells whose Gaussian of an object reaches this regress the object's box.
REGRESSION_LEVEL = 0.5


def box_sigma(height, width, grid: int) -> np.ndarray:
    """The heatmap Gaussian's sigma (output cells) of boxes of these sizes (pixels)."""
    size = np.sqrt(np.clip(height, 1, None) * np.clip(width, 1, None))
    return np.maximum(MIN_SIGMA, SIGMA_PER_SIZE * size / grid)


def render_targets(boxes: Boxes, shape: Sequence[int], n_classes: int, grid: int) -> np.ndarray:
    """The target array (see the module docstring) of an image of ``shape`` (pixels, a
    multiple of ``grid``) for ``boxes`` in its pixel coordinates; boxes may reach beyond it."""
    ny, nx = int(shape[0]) // grid, int(shape[1]) // grid
    target = np.zeros((ny, nx, n_classes + 5), np.float32)
    heat, box, weight = target[..., :n_classes], target[..., n_classes:n_classes + 4], target[..., n_classes + 4]
    owner = np.zeros((ny, nx), np.float32)  # the strongest object's Gaussian so far, per cell
    y0, x0, y1, x1 = boxes.yxyx.T
    h, w = y1 - y0, x1 - x0
    cy, cx = (y0 + y1) / 2 / grid, (x0 + x1) / 2 / grid  # centres in cell units
    sigmas = box_sigma(h, w, grid)
    for i in range(len(boxes)):
        if h[i] <= 0 or w[i] <= 0:
            continue
        py, px = int(np.floor(cy[i])), int(np.floor(cx[i]))  # the centre's cell
        r = int(np.ceil(3 * sigmas[i]))
        ys, xs = np.arange(max(py - r, 0), min(py + r + 1, ny)), np.arange(max(px - r, 0), min(px + r + 1, nx))
        if not len(ys) or not len(xs):
            continue
        g = np.exp(-((ys[:, None] - py) ** 2 + (xs[None, :] - px) ** 2) / (2 * sigmas[i] ** 2)).astype(np.float32)
        window = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        c = int(boxes.classes[i])
        heat[window + (c,)] = np.maximum(heat[window + (c,)], g)
        mine = (g >= REGRESSION_LEVEL) & (g > owner[window])
        if mine.any():
            owner[window] = np.where(mine, g, owner[window])
            cells = box[window]
            cells[..., 0] = np.where(mine, cy[i] - (ys[:, None] + 0.5), cells[..., 0])
            cells[..., 1] = np.where(mine, cx[i] - (xs[None, :] + 0.5), cells[..., 1])
            cells[..., 2] = np.where(mine, np.log(h[i]), cells[..., 2])
            cells[..., 3] = np.where(mine, np.log(w[i]), cells[..., 3])
            weight[window] = np.where(mine, 1.0, weight[window])
    return target


def augment_patch(image: np.ndarray, boxes: Boxes, rng, intensity: dict | None) -> tuple[np.ndarray, Boxes]:
    """A random 90-degree rotation (square patches) and flips of a patch and its boxes, then
    the intensity changes of ``intensity`` (the U-Net's: scale, shift, noise)."""
    yxyx = boxes.yxyx.copy()
    k = int(rng.integers(4)) if image.shape[0] == image.shape[1] else 2 * int(rng.integers(2))
    for _ in range(k):  # np.rot90: pixel (r, c) goes to (n_cols - 1 - c, r)
        n_cols = image.shape[1]
        image = np.rot90(image)
        yxyx = np.column_stack([n_cols - yxyx[:, 3], yxyx[:, 0], n_cols - yxyx[:, 1], yxyx[:, 2]])
    for axis in (0, 1):
        if rng.random() < 0.5:
            n = image.shape[axis]
            image = np.flip(image, axis)
            yxyx[:, [axis, axis + 2]] = n - yxyx[:, [axis + 2, axis]]
    if intensity:
        lo, hi = intensity.get("intensity_scale") or (1.0, 1.0)
        a, b = intensity.get("intensity_shift") or (0.0, 0.0)
        image = image * rng.uniform(lo, hi) + rng.uniform(a, b)
        noise = float(intensity.get("noise_std") or 0.0)
        if noise > 0:
            image = image + rng.normal(0.0, rng.uniform(0.0, noise), image.shape)
    return np.ascontiguousarray(image, dtype=np.float32), Boxes(yxyx, boxes.classes, boxes.scores, boxes.frames)


def _crop(image: np.ndarray, boxes: Boxes, start, patch) -> tuple[np.ndarray, Boxes]:
    """The patch at ``start`` and the boxes that reach into it, shifted to its coordinates."""
    sl = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, patch))
    shifted = boxes.yxyx - np.array([start[0], start[1], start[0], start[1]], dtype=np.float64)
    inside = (shifted[:, 2] > 0) & (shifted[:, 3] > 0) & (shifted[:, 0] < patch[0]) & (shifted[:, 1] < patch[1])
    kept = boxes.take(inside)
    return image[sl], Boxes(shifted[inside], kept.classes, kept.scores, kept.frames)


def _pad_to(image: np.ndarray, shape) -> np.ndarray:
    pad = [(0, max(0, s - n)) for n, s in zip(image.shape, shape)]
    return np.pad(image, pad) if any(p for _, p in pad) else image


def patch_batches(images: Sequence[np.ndarray], boxes: Sequence[Boxes], patch_shape, batch_size: int, n_classes: int,
                  grid: int, seed: int, *, object_fraction: float = 0.5, intensity: dict | None = None,
                  augment: bool = True):
    """Endless (X, Y) batches: X (B, *patch, 1) float32, Y (B, *patch / grid, n_classes + 5).

    Patches come from image i with probability proportional to its size; a fraction of
    them is centred on a random box so sparse images still teach objects. Deterministic
    for a given seed.
    """
    rng = np.random.default_rng(seed)
    patch = tuple(int(p) for p in patch_shape)
    images = [_pad_to(np.asarray(x, np.float32), patch) for x in images]
    sizes = np.array([x.size for x in images], dtype=np.float64)
    p = sizes / sizes.sum()
    half = np.array(patch) // 2
    while True:
        X = np.empty((batch_size,) + patch + (1,), np.float32)
        Y = np.empty((batch_size, patch[0] // grid, patch[1] // grid, n_classes + 5), np.float32)
        for b in range(batch_size):
            i = int(rng.choice(len(images), p=p))
            shape = np.array(images[i].shape)
            if len(boxes[i]) and rng.random() < object_fraction:
                j = int(rng.integers(len(boxes[i])))
                centre = (boxes[i].yxyx[j, :2] + boxes[i].yxyx[j, 2:]) / 2
                start = np.clip(np.floor(centre).astype(int) - half, 0, shape - patch)
            else:
                start = np.array([int(rng.integers(0, n - s + 1)) for n, s in zip(shape, patch)])
            x, bx = _crop(images[i], boxes[i], start, patch)
            if augment:
                x, bx = augment_patch(x, bx, rng, intensity)
            X[b, ..., 0] = x
            Y[b] = render_targets(bx, patch, n_classes, grid)
        yield X, Y


def validation_patches(images: Sequence[np.ndarray], boxes: Sequence[Boxes], patch_shape, n_classes: int, grid: int,
                       max_patches: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patches tiling the validation images (the last of each row and column flush with the
    image's end) and their targets; a seeded subset when there are more than ``max_patches``."""
    patch = tuple(int(p) for p in patch_shape)
    xs, ys = [], []
    for image, bx in zip(images, boxes):
        image = _pad_to(np.asarray(image, np.float32), patch)
        starts = [sorted(set(list(range(0, n - q + 1, q)) + [n - q])) for n, q in zip(image.shape, patch)]
        for sy in starts[0]:
            for sx in starts[1]:
                x, b = _crop(image, bx, (sy, sx), patch)
                xs.append(x)
                ys.append(render_targets(b, patch, n_classes, grid))
    if len(xs) > max_patches:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(xs), max_patches, replace=False))
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs)[..., None].astype(np.float32), np.stack(ys).astype(np.float32)
