"""Detector prediction: boxes with class and score from heatmap peaks, block by block
through the dense engine (:mod:`snakescope.blockwise.dense`), NMS, and the boxes of every
frame of an NGFF image written as CSV, napari shapes and YOLO files.

Blocks: each block's core is predicted with a halo (:func:`snakescope.detection.network.halo`)
that covers the network's receptive field plus the one cell around that the peak test
looks at, on the network's grid, with the same zero padding at the image's end as a
whole-image prediction. A peak is a cell whose heatmap is the maximum of its 3 x 3
neighbourhood and reaches the score threshold; the block whose core holds the peak's cell
owns the box, so every object is found once and the boxes equal those of a whole-image
prediction (up to float rounding). NMS then runs over the whole frame's boxes.
"""

from __future__ import annotations

import numpy as np

from snakescope.blockwise.dense import predict_blockwise
from snakescope.detection.metrics import nms
from snakescope.detection.network import Detector, as_detector, divisor, halo as network_halo
from snakescope.errors import InputError
from snakescope.io.boxes import Boxes
from snakescope.settings import Detection

__all__ = ["DETECTION_FILES", "decode_peaks", "detect", "predict_boxes"]

#: What :func:`detect` writes into its output folder.
DETECTION_FILES = {"csv": "boxes.csv", "napari": "shapes.csv", "yolo": "yolo"}
#: Values per class and peak in a block's sparse output: score, centre y, centre x, height, width.
_PEAK_VALUES = 5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode_peaks(output: np.ndarray, grid: int, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the network's output (cells y, cells x, n_classes + 4): a boolean array
    (cells y, cells x, n_classes) of the peaks, and (cells y, cells x, n_classes, 5) float32
    with each peak's score, box centre (y, x; pixels from the cell's top-left corner),
    height and width (pixels); zero elsewhere."""
    from scipy import ndimage

    n_classes = output.shape[-1] - 4
    heat = _sigmoid(output[..., :n_classes].astype(np.float32))
    neighbourhood = ndimage.maximum_filter(heat, size=(3, 3, 1), mode="constant", cval=-np.inf)
    peaks = (heat >= neighbourhood) & (heat >= score_thresh)
    values = np.zeros(heat.shape + (_PEAK_VALUES,), np.float32)
    if peaks.any():
        cy, cx, c = np.nonzero(peaks)
        box = output[cy, cx, n_classes:].astype(np.float64)
        values[cy, cx, c] = np.column_stack([heat[cy, cx, c], (0.5 + box[:, 0]) * grid, (0.5 + box[:, 1]) * grid,
                                             np.exp(np.clip(box[:, 2], -10, 20)), np.exp(np.clip(box[:, 3], -10, 20))])
    return peaks, values


def predict_boxes(model, image, *, score_thresh: float | None, nms_iou: float, block_shape="auto",
                  frame: int = 0, where="image") -> Boxes:
    """Boxes (class, score, frame ``frame``) of one 2D frame, by descending score.

    ``image``: a normalized 2D array, Zarr array or frame view (read block by block).
    ``score_thresh``: None for the model's. ``block_shape``: core size (int or (y, x)) of
    the blocks; ``"auto"``: 1024; None: the whole image at once. Boxes are clipped to the
    image; NMS at ``nms_iou`` across classes.
    """
    detector = as_detector(model)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 2:
        raise InputError(where, f"the detector takes 2D frames, got shape {shape}")
    thresh = detector.score_thresh if score_thresh is None else float(score_thresh)
    if not 0 < thresh < 1:
        raise InputError("detection.score_thresh", f"{thresh} is out of range: it lies strictly between 0 and 1")
    arch, grid = detector.architecture, detector.grid
    d = divisor(arch)
    if block_shape is None:
        block = tuple(-(-n // d) * d for n in shape)
    else:
        wanted = (1024, 1024) if isinstance(block_shape, str) and block_shape == "auto" else \
            tuple(np.broadcast_to(np.asarray(block_shape, int), (2,)))
        block = tuple(max(d, -(-min(int(b), n) // d) * d) for b, n in zip(wanted, shape))
    found: list[Boxes] = []

    def read(region):
        return np.asarray(image[region], dtype=np.float32)

    def predict(tile):
        _, values = decode_peaks(detector.predict(tile), grid, thresh)
        sparse = np.zeros(tile.shape + values.shape[2:], np.float32)  # each peak at its cell's top-left pixel
        sparse[::grid, ::grid] = values
        return sparse

    def write(core, sparse):
        py, px, c = np.nonzero(sparse[..., 0])
        if len(py):
            score, cy, cx, h, w = (sparse[py, px, c, k].astype(np.float64) for k in range(_PEAK_VALUES))
            cy, cx = cy + py + core[0].start, cx + px + core[1].start
            found.append(Boxes.make(np.column_stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]), c, score))

    predict_blockwise(read, write, shape, "yx", block, network_halo(arch), predict, align=d, pad="end",
                      pad_mode="constant")
    boxes = Boxes.concat(found)
    yxyx = np.clip(boxes.yxyx, 0, [shape[0], shape[1], shape[0], shape[1]])
    boxes = Boxes.make(yxyx, boxes.classes, boxes.scores, np.full(len(boxes), int(frame)))
    boxes = boxes.take((yxyx[:, 2] > yxyx[:, 0]) & (yxyx[:, 3] > yxyx[:, 1]))
    return boxes.take(nms(boxes, nms_iou))


def detect(model: Detector, image_path, out_dir, settings: Detection, *, channel: int) -> dict:
    """Boxes of every frame of an NGFF image into ``out_dir`` (:data:`DETECTION_FILES`):
    ``boxes.csv`` (plain CSV; a ``t`` column for time-lapses), ``shapes.csv`` (napari
    shapes, ``axis-0`` = t for time-lapses), and ``yolo/`` with one YOLO file per frame
    (``t0000.txt``, ...; with scores). ``settings``: ``detection`` (``score_thresh``,
    ``nms_iou``, ``block_size``). Frames are read block by block. Returns a summary (boxes
    per class and frame, threshold, model)."""
    from snakescope.io import ngff
    from snakescope.io.atomic import atomic_path, write_json
    from snakescope.io.boxes import write_boxes_csv, write_napari_shapes, write_yolo, yolo_name
    from snakescope.io.frames import FrameView, frames, spatial_axes

    image = ngff.read_image(image_path)
    spatial = spatial_axes(image.axes)
    if spatial != "yx":
        raise InputError(image_path, f"the detector takes 2D frames (axes ...yx), not axes {image.axes}")
    time_lapse = "t" in image.axes
    yx_shape = tuple(image.shape[image.axes.index(a)] for a in "yx")
    thresh = model.score_thresh if settings.score_thresh is None else settings.score_thresh
    parts = []
    for t, index in frames(image.axes, image.shape, channel):
        view = FrameView(image.data, index)
        parts.append(predict_boxes(model, view, score_thresh=thresh, nms_iou=settings.nms_iou,
                                   block_shape=int(settings.block_size),
                                   frame=t or 0, where=f"{image_path} (time point {t})" if time_lapse else str(image_path)))
    boxes = Boxes.concat(parts)
    names = model.class_names
    summary = {"method": "detector", "model": str(model.model_dir), "score_thresh": thresh, "nms_iou": settings.nms_iou,
               "class_names": names, "n_boxes": len(boxes),
               "per_class": {n: int(np.count_nonzero(boxes.classes == i)) for i, n in enumerate(names)},
               "per_frame": [len(p) for p in parts], "files": DETECTION_FILES}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_boxes_csv(tmp / DETECTION_FILES["csv"], boxes, class_names=names, time_lapse=time_lapse)
        write_napari_shapes(tmp / DETECTION_FILES["napari"], boxes, class_names=names, time_lapse=time_lapse)
        for frame_boxes, t in zip(parts, range(len(parts))):
            write_yolo(tmp / DETECTION_FILES["yolo"] / yolo_name(t), frame_boxes, yx_shape, with_scores=True)
        write_json(tmp / "summary.json", summary)
    return summary
