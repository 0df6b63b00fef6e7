"""Bounding boxes in and out: YOLO text files, napari shapes CSV, a plain CSV, and the boxes
of any instance segmentation (:func:`boxes_from_labels`), so that detectors can be trained
here or elsewhere from what the workflow segments.

Coordinates: :class:`Boxes` hold ``(y0, x0, y1, x1)`` in pixels on pixel *edges*: pixel
``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, so the box of an object whose pixels span
rows 3..7 has ``y0 = 3, y1 = 8``. The formats map to that as follows:

* YOLO (one ``.txt`` per image, one line per object): ``class x_center y_center width
  height``, normalized by the image width / height, with an optional sixth column, the
  score (as detectors save predictions); class is the index into the class names.
* napari shapes CSV (what napari's Shapes layer saves for rectangles): columns ``index,
  shape-type, vertex-index, axis-0, axis-1`` (``axis-0`` is the time point and ``axis-1,
  axis-2`` are y, x for a time-lapse), four vertices per rectangle in napari's order
  (y0, x0), (y1, x0), (y1, x1), (y0, x1). napari puts pixel *centres* on integer
  coordinates, so vertices are the box edges minus 0.5: the rectangle drawn in napari lies
  on the object's outer pixel borders. Two extra columns, ``class`` and ``score``, ride
  along (napari's reader ignores columns other than these).
* plain CSV: ``[t,] class, score, y0, x0, y1, x1`` (pixels, edges as above); ``class`` is
  the class name where names are known, else the index.

:func:`export_label_boxes` writes the boxes of a segmentation (an NGFF labels group) in
both exchange formats. Only numpy, scipy and pandas are imported at module level.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path

__all__ = ["BOX_COLUMNS", "NAPARI_COLUMNS", "Boxes", "boxes_from_labels", "export_label_boxes", "object_classes",
           "read_boxes_csv", "read_boxes_file", "read_napari_shapes", "read_yolo", "write_boxes_csv",
           "write_napari_shapes", "write_yolo", "yolo_name"]

#: The plain CSV's columns (after ``t`` for a time-lapse).
BOX_COLUMNS = ("class", "score", "y0", "x0", "y1", "x1")
#: The columns napari's Shapes layer writes before its coordinate columns ``axis-0, ...``.
NAPARI_COLUMNS = ("index", "shape-type", "vertex-index")


@dataclass(frozen=True)
class Boxes:
    """Axis-aligned boxes of one image or a time-lapse: ``yxyx`` (n, 4) float64 pixel edges,
    ``classes`` (n,) int64 class indices, ``scores`` (n,) float64 (1 for ground truth),
    ``frames`` (n,) int64 time points (0 for a single image)."""

    yxyx: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    frames: np.ndarray

    @classmethod
    def make(cls, yxyx=(), classes=None, scores=None, frames=None) -> "Boxes":
        """Boxes from array-likes; ``classes`` default 0, ``scores`` 1, ``frames`` 0."""
        yxyx = np.asarray(yxyx, dtype=np.float64).reshape(-1, 4)
        n = len(yxyx)

        def column(values, dtype, default):
            out = np.full(n, default, dtype) if values is None else np.asarray(values, dtype=dtype).reshape(-1)
            if len(out) != n:
                raise ValueError(f"{len(out)} values for {n} boxes")
            return out

        return cls(yxyx, column(classes, np.int64, 0), column(scores, np.float64, 1.0), column(frames, np.int64, 0))

    def __len__(self) -> int:
        return len(self.yxyx)

    def take(self, index) -> "Boxes":
        """The boxes selected by an index array or boolean mask."""
        return Boxes(self.yxyx[index], self.classes[index], self.scores[index], self.frames[index])

    def frame(self, t: int) -> "Boxes":
        return self.take(self.frames == int(t))

    @staticmethod
    def concat(parts: Sequence["Boxes"]) -> "Boxes":
        parts = list(parts)
        if not parts:
            return Boxes.make()
        return Boxes(*(np.concatenate([getattr(p, name) for p in parts])
                       for name in ("yxyx", "classes", "scores", "frames")))

    def areas(self) -> np.ndarray:
        return np.clip(self.yxyx[:, 2] - self.yxyx[:, 0], 0, None) * np.clip(self.yxyx[:, 3] - self.yxyx[:, 1], 0, None)


def boxes_from_labels(labels, classes: Mapping[int, int] | None = None,
                      scores: Mapping[int, float] | None = None) -> Boxes:
    """The box of every object of an instance segmentation: ``labels`` (y, x) for one image
    or (t, y, x) for a 2D time-lapse (one box per object and frame, ``frames`` = t), integer
    ids with 0 as background. ``classes``: label id -> class index (default 0 for all);
    ``scores``: label id -> score (e.g. a segmenter's object probability; default 1).
    Boxes come ordered by frame, then label id."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError("labels", f"dtype {labels.dtype}: expected integer instance labels (0 = background)")
    if labels.ndim not in (2, 3):
        raise InputError("labels", f"shape {labels.shape}: expected (y, x) or a time-lapse (t, y, x) of 2D frames")
    stack = labels[None] if labels.ndim == 2 else labels
    rows = []
    for t, frame in enumerate(stack):
        for label, found in enumerate(ndimage.find_objects(frame), start=1):
            if found is not None:
                ys, xs = found
                rows.append((t, label, ys.start, xs.start, ys.stop, xs.stop))
    table = np.array(rows, dtype=np.int64).reshape(-1, 6)
    class_of, score_of = classes or {}, scores or {}
    return Boxes.make(table[:, 2:6], [int(class_of.get(int(i), 0)) for i in table[:, 1]],
                      [float(score_of.get(int(i), 1.0)) for i in table[:, 1]], table[:, 0])


def yolo_name(t: int) -> str:
    """The YOLO file of time point ``t`` in a folder of per-frame files (``t0000.txt``)."""
    return f"t{int(t):04d}.txt"


def object_classes(objects: pd.DataFrame | None, type_names: Sequence[str] = ()) -> tuple[list[str] | None, dict]:
    """The class and score of each object of a measurements table (``objects.parquet``):
    the classifier's ``class_name`` with its probability ``p_<class>``, else a typed U-Net's
    ``type`` with its ``type_fraction`` (class names ``type_names``, plus ``untyped`` for
    objects without one); else none. Returns (class names or None, {(t, label): (class
    index, score)})."""
    if objects is None or not len(objects):
        return None, {}
    frames = objects["t"] if "t" in objects else pd.Series(0, index=objects.index)
    keys = list(zip(frames.astype(int), objects["label"].astype(int)))
    if "class_name" in objects:
        names = [c[2:] for c in objects.columns if c.startswith("p_")]
        classes = [names.index(str(c)) for c in objects["class_name"]]
        scores = objects[[f"p_{n}" for n in names]].to_numpy(dtype=float)[np.arange(len(objects)), classes]
        return names, dict(zip(keys, zip(classes, scores.tolist())))
    if "type" in objects and objects["type"].notna().any():
        names = list(type_names) + (["untyped"] if objects["type"].isna().any() else [])
        classes = [names.index("untyped" if pd.isna(t) else str(t)) for t in objects["type"]]
        return names, dict(zip(keys, zip(classes, objects["type_fraction"].astype(float))))
    return None, {}


def export_label_boxes(labels_path: str | Path, napari_path: str | Path, yolo_folder: str | Path, *,
                       objects: pd.DataFrame | None = None, type_names: Sequence[str] = ()) -> dict:
    """The box of every object of a 2D (or 2D + t) segmentation, an NGFF labels group
    (:func:`snakescope.io.labels.read_labels_image`), frame by frame: all of them in one
    napari shapes CSV (``axis-0`` = t for a time-lapse) and one YOLO file per frame in
    ``yolo_folder`` (:func:`yolo_name`), with ``classes.txt`` (one class name per line, in
    index order). Class and score come from the objects' measurements
    (:func:`object_classes`; the napari file then names the class); without a class, class
    0 (``object``) and score 1. Returns the boxes per frame."""
    from snakescope.io.labels import read_labels_image

    image = read_labels_image(labels_path)
    if image.axes not in ("yx", "tyx"):
        raise InputError(labels_path, f"labels of axes {image.axes}: boxes are exported for 2D images and 2D time-lapses")
    time_lapse = image.axes == "tyx"
    n_frames = image.shape[0] if time_lapse else 1
    names, known = object_classes(objects, type_names)
    by_frame: dict[int, dict] = {}
    for (t, label), value in known.items():
        by_frame.setdefault(t, {})[label] = value
    parts = []
    for t in range(n_frames):
        frame = np.asarray(image.data[t] if time_lapse else image.data[...])
        found = by_frame.get(t, {})
        boxes = boxes_from_labels(frame, classes={i: c for i, (c, _) in found.items()},
                                  scores={i: p for i, (_, p) in found.items()})
        parts.append(Boxes(boxes.yxyx, boxes.classes, boxes.scores, np.full(len(boxes), t, np.int64)))
    with atomic_path(yolo_folder) as tmp:
        tmp.mkdir(parents=True)
        for t, frame in enumerate(parts):
            write_yolo(tmp / yolo_name(t), frame, image.shape[-2:])
        (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in names or ["object"]))
    write_napari_shapes(napari_path, Boxes.concat(parts), class_names=names, time_lapse=time_lapse)
    return {str(t): len(frame) for t, frame in enumerate(parts)}


def read_boxes_file(path: str | Path, image_shape: Sequence[int], *, class_names: Sequence[str] | None = None,
                    n_frames: int = 1) -> Boxes:
    """A sample's boxes (the sheet's ``boxes`` column) in any of the three formats: ``.txt``
    YOLO (one 2D image of ``image_shape``), ``.csv`` napari shapes (it has a ``shape-type``
    column) or plain CSV. Every box must lie on the image (``image_shape`` (y, x), frames
    ``0 .. n_frames - 1``) and its class within ``class_names``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the boxes file does not exist")
    if path.suffix.lower() == ".txt":
        boxes = read_yolo(path, image_shape)
    elif path.suffix.lower() == ".csv":
        header = pd.read_csv(path, nrows=0).columns
        boxes = (read_napari_shapes if "shape-type" in header else read_boxes_csv)(path, class_names=class_names)
    else:
        raise InputError(path, "unknown boxes format: YOLO .txt, or a napari shapes or plain boxes .csv")
    height, width = _image_shape(image_shape, path)
    tolerance = 1.0  # napari vertices drawn by hand may stick out by a fraction of a pixel
    outside = ((boxes.yxyx[:, :2] < -tolerance).any(axis=1) | (boxes.yxyx[:, 2] > height + tolerance)
               | (boxes.yxyx[:, 3] > width + tolerance) | (boxes.frames < 0) | (boxes.frames >= n_frames))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(path, f"{int(outside.sum())} box(es) lie off the image of {n_frames} frame(s) of "
                               f"{height} x {width} pixels, e.g. box {i}: frame {int(boxes.frames[i])}, (y0, x0, y1, x1) "
                               f"{tuple(round(float(v), 1) for v in boxes.yxyx[i])}")
    if class_names is not None and len(boxes) and boxes.classes.max() >= len(class_names):
        raise InputError(path, f"class index {int(boxes.classes.max())} is beyond the {len(class_names)} class "
                               f"name(s) of detection.class_names {list(class_names)}")
    clipped = np.clip(boxes.yxyx, 0, [height, width, height, width])
    return Boxes(clipped, boxes.classes, boxes.scores, boxes.frames)


def _frame_only(boxes: Boxes, where) -> None:
    if len(boxes) and np.any(boxes.frames != boxes.frames[0]):
        raise InputError(where, "boxes of several time points: write one file per frame (Boxes.frame(t))")


def _image_shape(image_shape, where) -> tuple[int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(where, f"image shape {shape}: YOLO coordinates need the (height, width) of the image")
    return shape


# ---------------------------------------------------------------------------------------
# YOLO


def write_yolo(path: str | Path, boxes: Boxes, image_shape: Sequence[int], *, with_scores: bool = False) -> None:
    """One image's boxes as a YOLO text file (``class xc yc w h`` normalized, plus the score
    as a sixth column with ``with_scores``); an empty file when there are none."""
    height, width = _image_shape(image_shape, path)
    _frame_only(boxes, path)
    y0, x0, y1, x1 = boxes.yxyx.T
    lines = []
    for i in range(len(boxes)):
        values = [(x0[i] + x1[i]) / 2 / width, (y0[i] + y1[i]) / 2 / height, (x1[i] - x0[i]) / width,
                  (y1[i] - y0[i]) / height] + ([boxes.scores[i]] if with_scores else [])
        lines.append(" ".join([str(int(boxes.classes[i]))] + [f"{v:.6f}" for v in values]))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def read_yolo(path: str | Path, image_shape: Sequence[int], *, frame: int = 0) -> Boxes:
    """The boxes of a YOLO text file for an image of ``image_shape`` (height, width): five
    columns per line, or six with a score; blank lines are skipped. InputError names the
    file and line of anything else (e.g. a YOLO segmentation polygon)."""
    height, width = _image_shape(image_shape, path)
    rows, scores, classes = [], [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (5, 6):
            raise InputError(f"{path} line {number}", f"{len(parts)} values; a YOLO box line has 5 "
                                                      "(class x_center y_center width height) or 6 (with a score)")
        try:
            cls = int(parts[0])
            xc, yc, w, h, *score = (float(v) for v in parts[1:])
        except ValueError:
            raise InputError(f"{path} line {number}", f"{line.strip()!r} is not numbers (class index, then "
                                                      "normalized x_center y_center width height)") from None
        if cls < 0 or w < 0 or h < 0 or not all(-1e-6 <= v <= 1 + 1e-6 for v in (xc, yc, w, h)):
            raise InputError(f"{path} line {number}", f"{line.strip()!r}: YOLO coordinates are normalized to "
                                                      "[0, 1] and the class index is >= 0")
        classes.append(cls)
        rows.append(((yc - h / 2) * height, (xc - w / 2) * width, (yc + h / 2) * height, (xc + w / 2) * width))
        scores.append(score[0] if score else 1.0)
    return Boxes.make(rows, classes, scores, [int(frame)] * len(rows))


# ---------------------------------------------------------------------------------------
# napari shapes CSV


def write_napari_shapes(path: str | Path, boxes: Boxes, *, class_names: Sequence[str] | None = None,
                        time_lapse: bool = False) -> None:
    """Boxes as rectangles in napari's shapes CSV (see the module docstring); ``time_lapse``
    adds the time point as ``axis-0``. ``class`` holds names where ``class_names`` are given."""
    if not time_lapse:
        _frame_only(boxes, path)
    axes = ["axis-0", "axis-1"] + (["axis-2"] if time_lapse else [])
    y0, x0, y1, x1 = (boxes.yxyx - 0.5).T
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*NAPARI_COLUMNS, *axes, "class", "score"])
        for i in range(len(boxes)):
            name = _class_name(int(boxes.classes[i]), class_names)
            for vertex, (y, x) in enumerate(((y0[i], x0[i]), (y1[i], x0[i]), (y1[i], x1[i]), (y0[i], x1[i]))):
                coords = ([int(boxes.frames[i])] if time_lapse else []) + [_number(y), _number(x)]
                writer.writerow([i, "rectangle", vertex, *coords, name, _number(boxes.scores[i])])


def read_napari_shapes(path: str | Path, *, class_names: Sequence[str] | None = None) -> Boxes:
    """Rectangles of a napari shapes CSV as boxes (the box around each rectangle's vertices,
    plus 0.5 back to pixel edges); 3 coordinate columns are (t, y, x). ``class`` and
    ``score`` columns are read when present (else class 0, score 1). Other shape types, or
    rotated rectangles, are an InputError naming the file and shape."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    axes = sorted((c for c in table.columns if c.startswith("axis-")), key=lambda c: int(c.split("-")[1]))
    missing = [c for c in NAPARI_COLUMNS if c not in table.columns]
    if missing or len(axes) not in (2, 3):
        raise InputError(path, f"not a napari shapes CSV of 2D or 2D+t rectangles (columns {list(table.columns)}; "
                               f"expected {', '.join(NAPARI_COLUMNS)}, axis-0, axis-1[, axis-2])")
    rows, classes, scores, frames = [], [], [], []
    for index, shape in table.groupby("index", sort=False):
        kind = shape["shape-type"].iloc[0]
        coords = shape[axes].to_numpy(dtype=np.float64)
        where = f"{path} shape {index}"
        if kind != "rectangle":
            raise InputError(where, f"is a {kind}; only rectangles are boxes")
        t = 0
        if len(axes) == 3:
            if np.ptp(coords[:, 0]) > 0:
                raise InputError(where, "spans several time points")
            t, coords = int(round(coords[0, 0])), coords[:, 1:]
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        corners = np.isclose(coords[:, :, None], np.stack([lo, hi], axis=-1)).any(axis=-1).all()
        if len(coords) != 4 or not corners:
            raise InputError(where, "is not an axis-aligned rectangle (rotated rectangles are not boxes)")
        rows.append((lo[0] + 0.5, lo[1] + 0.5, hi[0] + 0.5, hi[1] + 0.5))
        frames.append(t)
        first = shape.iloc[0]
        classes.append(_class_index(first["class"], class_names, where) if "class" in table.columns else 0)
        scores.append(float(first["score"]) if "score" in table.columns and first["score"] != "" else 1.0)
    return Boxes.make(rows, classes, scores, frames)


# ---------------------------------------------------------------------------------------
# plain CSV


def write_boxes_csv(path: str | Path, boxes: Boxes, *, class_names: Sequence[str] | None = None,
                    time_lapse: bool = False) -> None:
    """Boxes as a plain CSV: ``[t,] class, score, y0, x0, y1, x1`` (see the module docstring)."""
    if not time_lapse:
        _frame_only(boxes, path)
    table = pd.DataFrame({"class": [_class_name(int(c), class_names) for c in boxes.classes],
                          "score": boxes.scores, **{k: boxes.yxyx[:, i] for i, k in enumerate(BOX_COLUMNS[2:])}})
    if time_lapse:
        table.insert(0, "t", boxes.frames)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def read_boxes_csv(path: str | Path, *, class_names: Sequence[str] | None = None) -> Boxes:
    """Boxes of a plain CSV (:func:`write_boxes_csv`'s columns; ``t`` and ``score``
    optional). ``class`` holds names from ``class_names`` or indices."""
    table = pd.read_csv(path, dtype={"class": str}, keep_default_na=False)
    missing = [c for c in ("class", "y0", "x0", "y1", "x1") if c not in table.columns]
    if missing:
        raise InputError(path, f"columns {', '.join(missing)} missing (a boxes CSV has [t,] class, score, y0, x0, y1, x1)")
    classes = [_class_index(c, class_names, f"{path} row {i + 1}") for i, c in enumerate(table["class"])]
    try:
        coords = table[["y0", "x0", "y1", "x1"]].to_numpy(dtype=np.float64)
    except ValueError:
        raise InputError(path, "y0, x0, y1, x1 must be numbers (pixels)") from None
    if np.any(coords[:, 2:] < coords[:, :2]):
        row = int(np.flatnonzero(np.any(coords[:, 2:] < coords[:, :2], axis=1))[0]) + 1
        raise InputError(f"{path} row {row}", "y1 < y0 or x1 < x0 (a box runs from its top-left to its bottom-right edge)")
    return Boxes.make(coords, classes, table["score"] if "score" in table else None,
                      table["t"] if "t" in table else None)


def _number(value) -> str:
    return f"{float(value):.6g}"


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[index]) if class_names is not None else str(index)


def _class_index(value, class_names: Sequence[str] | None, where) -> int:
    """A class given by name (one of ``class_names``) or by index."""
    value = str(value).strip()
    if class_names is not None and value in class_names:
        return list(class_names).index(value)
    if value.lstrip("-").isdigit() and int(value) >= 0 and (class_names is None or int(value) < len(class_names)):
        return int(value)
    known = f"one of {', '.join(map(str, class_names))} or their index" if class_names is not None else "a class index"
    raise InputError(where, f"class {value!r} is not {known}")
