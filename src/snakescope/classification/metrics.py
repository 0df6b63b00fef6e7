"""How well a classifier does: on held-out labelled patches or points, and on segmented
objects against class-truth points.

* :func:`evaluate`: confusion matrix (CSV + PNG), per-class precision / recall / F1,
  balanced accuracy and macro F1 of predicted vs true classes (the training's test part);
  :func:`evaluate_annotations` does it for any labelled point set of an image.
* Objects: :func:`match_points_to_objects` finds the object under each class-truth point in
  the label image and its predicted class; :func:`object_class_metrics` counts per class
  (matched points only; points on background are counted apart);
  :func:`evaluate_sample` does both from a sample's files; :func:`pool_classification_metrics`
  sums the counts over samples (:func:`read_metrics_table` reads a sample's back) and
  recomputes the ratios; :func:`plot_object_confusion` draws the matrix.
* :func:`write_training_confusion` copies a trained model's held-out confusion PNG for the
  report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.classification.model import classifier_class_names
from snakescope.classification.patches import unwrap_image
from snakescope.classification.predict import LoadedClassifier, classify_objects
from snakescope.errors import InputError
from snakescope.io.annotations import point_coordinates, read_point_annotations, rounded_inside
from snakescope.io.atomic import atomic_path, write_json

__all__ = ["COUNT_COLUMNS", "METRIC_COLUMNS", "OVERALL", "confusion_counts", "evaluate", "evaluate_annotations",
           "evaluate_sample", "match_points_to_objects", "metrics_from_counts", "object_class_metrics",
           "plot_object_confusion", "pool_classification_metrics", "read_metrics_table", "write_training_confusion"]

COUNT_COLUMNS = ("n_points", "n_matched", "n_unmatched", "tp", "fp", "fn")
METRIC_COLUMNS = ("class_name", *COUNT_COLUMNS, "precision", "recall", "f1", "accuracy", "balanced_accuracy", "macro_f1")
OVERALL = "ALL"


# ---------------------------------------------------------------------------------------
# Predicted vs true classes


def _check_known(values: Sequence[str], class_names: Sequence[str], what: str, where) -> None:
    known = set(class_names)
    for i, value in enumerate(values):
        if value not in known:
            raise InputError(where, f"row {i + 1}: {what} class {value!r} is not one of the model's classes ({', '.join(class_names)})")


def evaluate(y_true: Sequence[str], y_pred: Sequence[str], class_names: Sequence[str], out_dir=None, *,
             where: str = "labels") -> dict:
    """Confusion matrix and per-class / overall metrics of predicted vs true classes.

    ``class_names`` fixes the order of the confusion matrix (rows: true class, columns:
    predicted). Balanced accuracy is the mean recall over the classes present in
    ``y_true``; macro F1 averages F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's conventions). With ``out_dir``: ``confusion_matrix.csv``,
    ``confusion_matrix.png`` (row-normalized colours, counts written), ``per_class.csv`` and
    ``metrics.json``. A class outside ``class_names`` is an :class:`InputError` naming the
    row (``where`` names the table).
    """
    from sklearn import metrics as skm

    class_names = [str(c) for c in class_names]
    y_true = [str(c) for c in y_true]
    y_pred = [str(c) for c in y_pred]
    if len(y_true) != len(y_pred):
        raise InputError(where, f"{len(y_true)} true classes but {len(y_pred)} predictions")
    _check_known(y_true, class_names, "true", where)
    _check_known(y_pred, class_names, "predicted", where)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=class_names) if y_true else np.zeros((len(class_names),) * 2, int)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=class_names, zero_division=0) if y_true else ([0.0] * len(class_names),) * 3 + ([0] * len(class_names),)
    present = [i for i, c in enumerate(class_names) if c in set(y_true) or c in set(y_pred)]
    in_truth = [i for i, c in enumerate(class_names) if c in set(y_true)]
    result = {
        "class_names": class_names,
        "n": len(y_true),
        "accuracy": float(np.mean(np.array(y_true) == np.array(y_pred))) if y_true else float("nan"),
        "balanced_accuracy": float(np.mean([recall[i] for i in in_truth])) if in_truth else float("nan"),
        "macro_f1": float(np.mean([f1[i] for i in present])) if present else float("nan"),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": np.asarray(matrix).astype(int).tolist(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(matrix, index=pd.Index(class_names, name="true \\ predicted"), columns=class_names)
        with atomic_path(out_dir / "confusion_matrix.csv") as tmp:
            frame.to_csv(tmp)
        per_class = pd.DataFrame(result["per_class"]).T.rename_axis("class_name").reset_index()
        with atomic_path(out_dir / "per_class.csv") as tmp:
            per_class.to_csv(tmp, index=False)
        write_json(out_dir / "metrics.json", result)
        _plot_confusion(np.asarray(matrix), class_names, out_dir / "confusion_matrix.png",
                        f"balanced accuracy {result['balanced_accuracy']:.3f}, macro F1 {result['macro_f1']:.3f}")
    return result


def _plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    """One panel, colours row-normalized, non-zero counts written (readable up to a few
    dozen classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if fraction[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def evaluate_annotations(classifier: LoadedClassifier, image, axes, annotations, out_dir=None, *, tta: bool = False,
                         class_column: str | None = None, batch_size: int = 512) -> dict:
    """Evaluate a loaded classifier on any labelled point set (annotation files as for
    :func:`snakescope.io.annotations.read_point_annotations`, or such a table). A class the
    model does not know is an :class:`InputError` naming the file and the row."""
    array, axes = unwrap_image(image, axes)
    if isinstance(annotations, pd.DataFrame):
        table = annotations
        known = set(classifier.class_names)
        for i, value in enumerate(table["class_name"].astype(str)):
            if value not in known:
                where = table["source"].iloc[i] if "source" in table.columns else "annotations"
                row = table["row"].iloc[i] if "row" in table.columns else i + 1
                raise InputError(where, f"row {row}: unknown class {value!r}; the model's classes are {', '.join(classifier.class_names)}")
    else:
        table = read_point_annotations(annotations, axes, class_names=classifier.class_names,
                                       image_shape=array.shape, class_column=class_column)
    predicted = classify_objects(classifier, array, axes, table, tta=tta, batch_size=batch_size)
    return evaluate(table["class_name"].astype(str).tolist(), predicted["class_name"].tolist(),
                    classifier.class_names, out_dir, where="annotations")


# ---------------------------------------------------------------------------------------
# Segmented objects against class-truth points (the workflow's class_truth column)


def match_points_to_objects(points: pd.DataFrame, labels, axes: str | None, objects: pd.DataFrame) -> pd.DataFrame:
    """Match each truth point to the segmented object containing it.

    ``points``: a table as :func:`snakescope.io.annotations.read_point_annotations`
    returns (``class_name``, the label image's axes ``t, (z,) y, x``, optional
    ``source``/``row`` naming the annotation in errors). ``labels``: the label image (numpy
    or zarr array, or an NGFF image), axes without channel (``yx``, ``zyx``, ``tyx``,
    ``tzyx``); only the pixels under the points are read. ``objects``: the classified
    objects table (``label``, ``t`` and the predicted ``class_name``; one row per object
    and time point, as ``objects.parquet``).

    Coordinates are rounded to the nearest pixel; a point outside the image is an
    :class:`InputError` naming its file and row. Returns a copy of ``points`` with
    ``object_label`` (0: the point lies on background) and ``predicted`` (the object's
    class; missing (None / NaN) where unmatched).
    """
    array, axes = unwrap_image(labels, axes)
    if "c" in axes:
        raise InputError("labels", f"a label image has no channel axis (axes {axes!r})")
    if "class_name" not in objects.columns:
        raise InputError("objects", "no class_name column: the objects were not classified")
    coordinates, sources, rows = point_coordinates(points, axes)
    rounded = rounded_inside(coordinates, tuple(int(s) for s in array.shape), axes, sources, rows)
    if len(rounded):
        index = tuple(rounded[:, j] for j in range(len(axes)))
        values = np.asarray(array.vindex[index] if hasattr(array, "vindex") else np.asarray(array)[index])
    else:
        values = np.zeros(0, np.int64)
    times = rounded[:, axes.index("t")] if "t" in axes else np.zeros(len(rounded), np.int64)
    frame = objects["t"].astype(np.int64) if "t" in objects.columns else pd.Series(0, index=objects.index)
    lookup = dict(zip(zip(frame.tolist(), objects["label"].astype(np.int64).tolist()), objects["class_name"].astype(str)))
    result = points.copy()
    result["object_label"] = values.astype(np.int64)
    result["predicted"] = [lookup.get((int(t), int(v))) if v else None for t, v in zip(times, values)]
    return result


def confusion_counts(truth: Sequence[str], predicted: Sequence[str | None], class_names: Sequence[str]):
    """Confusion matrix ``(K, K)`` of the matched points (rows: true class, columns:
    predicted) and the number of unmatched points (``predicted`` missing) per true class."""
    class_names = [str(c) for c in class_names]
    index = {c: i for i, c in enumerate(class_names)}
    matrix = np.zeros((len(class_names),) * 2, np.int64)
    unmatched = np.zeros(len(class_names), np.int64)
    for row, (t, p) in enumerate(zip(truth, predicted), start=1):
        if str(t) not in index:
            raise InputError("class truth", f"row {row}: class {t!r} is not one of {', '.join(class_names)}")
        if p is None or pd.isna(p):
            unmatched[index[str(t)]] += 1
        elif str(p) not in index:
            raise InputError("objects", f"predicted class {p!r} is not one of {', '.join(class_names)}")
        else:
            matrix[index[str(t)], index[str(p)]] += 1
    return matrix, unmatched


def metrics_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """Per-class precision, recall and F1 and the overall row from per-class counts.

    ``counts``: ``class_name, n_unmatched, tp, fp, fn`` per class (other columns are
    recomputed). Returns the columns of :data:`METRIC_COLUMNS`: one row per class, then the
    row ``ALL`` with the counts summed, ``accuracy`` (correct / matched points),
    ``balanced_accuracy`` (mean recall over the classes with matched truth points) and
    ``macro_f1`` (mean F1 over the classes in the truth or the predictions), scikit-learn's
    conventions; a ratio with a zero denominator is 0 per class and NaN overall.
    """
    table = pd.DataFrame({"class_name": counts["class_name"].astype(str).to_numpy()})
    for column in ("n_unmatched", "tp", "fp", "fn"):
        table[column] = counts[column].astype(np.int64).to_numpy()
    table["n_matched"] = table["tp"] + table["fn"]
    table["n_points"] = table["n_matched"] + table["n_unmatched"]

    def ratio(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return np.divide(a, b, out=np.zeros(a.shape), where=b > 0)

    table["precision"] = ratio(table["tp"], table["tp"] + table["fp"])
    table["recall"] = ratio(table["tp"], table["tp"] + table["fn"])
    table["f1"] = ratio(2 * table["tp"], 2 * table["tp"] + table["fp"] + table["fn"])
    in_truth = table["n_matched"] > 0
    present = (table["tp"] + table["fp"] + table["fn"]) > 0
    matched = int(table["n_matched"].sum())
    overall = {"class_name": OVERALL, **{c: int(table[c].sum()) for c in COUNT_COLUMNS},
               "precision": np.nan, "recall": np.nan, "f1": np.nan,
               "accuracy": table["tp"].sum() / matched if matched else np.nan,
               "balanced_accuracy": float(table.loc[in_truth, "recall"].mean()) if in_truth.any() else np.nan,
               "macro_f1": float(table.loc[present, "f1"].mean()) if present.any() else np.nan}
    for column in ("accuracy", "balanced_accuracy", "macro_f1"):
        table[column] = np.nan
    table = pd.concat([table, pd.DataFrame([overall])], ignore_index=True)
    return table[list(METRIC_COLUMNS)]


def object_class_metrics(matched: pd.DataFrame, class_names: Sequence[str]):
    """Metrics table (see :func:`metrics_from_counts`) and confusion matrix of points
    matched by :func:`match_points_to_objects` (columns ``class_name`` and ``predicted``)."""
    class_names = [str(c) for c in class_names]
    matrix, unmatched = confusion_counts(matched["class_name"].astype(str).tolist(), matched["predicted"].tolist(), class_names)
    tp = np.diag(matrix)
    counts = pd.DataFrame({"class_name": class_names, "n_unmatched": unmatched, "tp": tp,
                           "fp": matrix.sum(axis=0) - tp, "fn": matrix.sum(axis=1) - tp})
    return metrics_from_counts(counts), matrix


def evaluate_sample(truth, labels, objects, model) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """A sample's class-truth points against its segmented, classified objects:
    ``(table, matrix, class_names)`` of :func:`object_class_metrics` of
    :func:`match_points_to_objects`.

    ``truth``: napari point CSV file(s) (a file, glob or list, as
    :func:`snakescope.io.annotations.read_point_annotations` reads them). ``labels``: the
    labels.ome.zarr (or its label image, read). ``objects``: ``objects.parquet`` (or the
    table). ``model``: the classifier folder (its class names). A class outside the model's
    or a point outside the image is an :class:`InputError` naming the file and the row.
    """
    from snakescope.io.labels import read_labels_image

    class_names = classifier_class_names(model)
    image = read_labels_image(labels) if isinstance(labels, (str, Path)) else labels
    if not isinstance(objects, pd.DataFrame):
        objects = pd.read_parquet(objects)
    points = read_point_annotations(truth, image.axes, class_names=class_names, image_shape=image.shape)
    table, matrix = object_class_metrics(match_points_to_objects(points, image.data, image.axes, objects), class_names)
    return table, matrix, class_names


def read_metrics_table(path) -> pd.DataFrame:
    """A per-sample metrics CSV written from :func:`evaluate_sample`'s table, class names
    read as text ("NA" is a class name here, not a missing value)."""
    ratios = ("precision", "recall", "f1", "accuracy", "balanced_accuracy", "macro_f1")
    return pd.read_csv(path, dtype={"sample": str, "class_name": str}, keep_default_na=False,
                       na_values={c: [""] for c in ratios})


def plot_object_confusion(matrix: np.ndarray, class_names: Sequence[str], table: pd.DataFrame, path, title: str = "") -> None:
    """The confusion matrix PNG of :func:`object_class_metrics` (counts written, colours
    row-normalized), its title giving matched points and balanced accuracy."""
    overall = table[table["class_name"] == OVERALL].iloc[0]
    text = (f"{title}: " if title else "") + (
        f"{int(overall['n_matched'])} of {int(overall['n_points'])} points on an object; "
        f"balanced accuracy {overall['balanced_accuracy']:.3f}, macro F1 {overall['macro_f1']:.3f}")
    _plot_confusion(np.asarray(matrix), [str(c) for c in class_names], Path(path), text)


def pool_classification_metrics(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-sample metrics tables (with a ``sample`` column) and their pooled rows (sample
    ``ALL``: counts summed per class over samples, ratios recomputed)."""
    per_sample = []
    for sample, table in tables.items():
        table = table.copy()
        if "sample" not in table.columns:
            table.insert(0, "sample", sample)
        per_sample.append(table)
    if not per_sample:
        return pd.DataFrame(columns=["sample", *METRIC_COLUMNS])
    joined = pd.concat(per_sample, ignore_index=True)
    classes = joined[joined["class_name"].astype(str) != OVERALL]
    order = list(dict.fromkeys(classes["class_name"].astype(str)))
    summed = classes.groupby(classes["class_name"].astype(str), sort=False)[["n_unmatched", "tp", "fp", "fn"]].sum()
    pooled = metrics_from_counts(summed.loc[order].reset_index())
    pooled.insert(0, "sample", OVERALL)
    return pd.concat([joined[["sample", *METRIC_COLUMNS]], pooled], ignore_index=True)


def write_training_confusion(model_dir, path) -> None:
    """Copy the held-out confusion matrix PNG of a trained classifier (``test/`` in its
    folder) to ``path`` atomically, for the report; without a test part, a figure saying so."""
    source = Path(model_dir) / "test" / "confusion_matrix.png"
    if source.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(source.read_bytes())
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, "no held-out test set\n(classification.split_fractions gives the test part 0)",
            ha="center", va="center", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
