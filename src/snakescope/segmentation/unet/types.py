"""Cell types of the typed U-Net: its pixel classes, each object's type from the ground
truth (a type image or a ``label,type`` table; one label file per type is merged into
those by :func:`merge_type_labels`), and each predicted object's type.

A U-Net for K >= 2 types predicts 2K + 1 classes: background (0), then per type k
(1..K) its contour (2k - 1) and its body (2k), named ``<type>_contour`` and ``<type>_body``.
With fewer than two types it is the three-class U-Net (background, contour, body), the
K = 1 case of the same layout, so a pixel's type is always ``(class + 1) // 2``.

Only numpy and scipy are imported here (no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.segmentation.unet.targets import CLASS_NAMES, check_labels

__all__ = ["class_names_for", "class_types", "merge_type_labels", "object_type_image", "object_types"]


def class_names_for(types: Sequence[str]) -> tuple[str, ...]:
    """The pixel classes of a U-Net for cell ``types`` (see the module docstring)."""
    types = [str(t) for t in types]
    if len(set(types)) != len(types):
        raise InputError("segmentation.unet.types", f"{types}: type names must differ")
    if len(types) < 2:
        return CLASS_NAMES
    return ("background",) + tuple(f"{t}_{part}" for t in types for part in ("contour", "body"))


def class_types(class_map) -> np.ndarray:
    """The type id (uint8, 0 = background, 1..K) of every pixel of a class map."""
    class_map = np.asarray(class_map)
    return ((class_map.astype(np.uint16) + 1) // 2).astype(np.uint8)


def object_type_image(labels, types, n_types: int, *, where: str | Path = "types") -> np.ndarray:
    """Each object's type on all its pixels (uint8, 0 on background) from a type source.

    ``types``: a type image of ``labels``' shape (type id 1..``n_types`` per pixel, 0 =
    none; an object takes the type most of its typed pixels have, so a type mask drawn a
    pixel off still types every object once), or a mapping {label: type id}. An object left
    without a type, or a type id outside 1..``n_types``, raises InputError naming ``where``.
    """
    labels = check_labels(labels, where)
    n_labels = int(labels.max()) if labels.size else 0
    if isinstance(types, Mapping):
        type_of = np.zeros(n_labels + 1, np.int64)
        for label, type_id in types.items():
            if 0 < int(label) <= n_labels:
                type_of[int(label)] = int(type_id)
    else:
        types = np.asarray(types)
        if types.shape != labels.shape:
            raise InputError(where, f"type image shape {types.shape} differs from the labels' {labels.shape}")
        if types.dtype.kind not in "uib":
            raise InputError(where, f"type image has dtype {types.dtype}; expected integer type ids (0 = none)")
        type_of = _majority(labels, types, n_types, where)
    bad = sorted({int(t) for t in np.unique(type_of[1:]) if not 0 <= t <= n_types})
    if bad:
        raise InputError(where, f"type ids {bad} are outside 1..{n_types} (the types of segmentation.unet.types)")
    present = np.unique(labels[labels > 0])
    untyped = present[type_of[present] == 0]
    if untyped.size:
        shown = ", ".join(str(int(v)) for v in untyped[:10]) + (", ..." if untyped.size > 10 else "")
        raise InputError(where, f"{untyped.size} object(s) have no type (labels {shown}): every labelled object "
                                "needs one")
    return type_of[labels].astype(np.uint8)


def _majority(labels: np.ndarray, type_ids: np.ndarray, n_types: int, where) -> np.ndarray:
    """Per label (index), the most frequent nonzero value of ``type_ids`` over its pixels
    (0 where it has none; a tie goes to the lower id)."""
    n_labels = int(labels.max()) if labels.size else 0
    fg = labels > 0
    values = type_ids[fg].astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > n_types):
        raise InputError(where, f"type ids {sorted(set(np.unique(values).tolist()) - set(range(n_types + 1)))} are "
                                f"outside 0..{n_types} (0 = none, then the types of segmentation.unet.types)")
    counts = np.bincount(labels[fg].astype(np.int64) * (n_types + 1) + values,
                         minlength=(n_labels + 1) * (n_types + 1)).reshape(n_labels + 1, n_types + 1)
    counts[:, 0] = 0
    return np.where(counts.max(1) > 0, counts.argmax(1), 0)


def object_types(labels, class_map, n_types: int) -> dict[int, tuple[int, float]]:
    """{label: (type id, fraction)} of the objects of ``labels``: the type most of the
    object's pixels have in the predicted ``class_map`` and the fraction of its typed pixels
    that have it (type 0, fraction 0 where every pixel is background in the class map)."""
    labels = np.asarray(labels)
    if not labels.size or labels.max() == 0:
        return {}
    fg = labels > 0
    ids = labels[fg].astype(np.int64)
    pixel_types = class_types(np.asarray(class_map)[fg]).astype(np.int64)
    n_labels = int(ids.max())
    counts = np.bincount(ids * (n_types + 1) + pixel_types,
                         minlength=(n_labels + 1) * (n_types + 1)).reshape(n_labels + 1, n_types + 1)
    counts[:, 0] = 0
    typed = counts.sum(1)
    best = counts.argmax(1)
    present = np.unique(ids)
    return {int(i): (int(best[i]) if typed[i] else 0, float(counts[i, best[i]] / typed[i]) if typed[i] else 0.0)
            for i in present}



def merge_type_labels(files: Mapping[str, str | Path], labels_out: str | Path, types_out: str | Path) -> dict:
    """One label file per type (``files``: {type name: TIFF of that type's instance labels,
    all of one shape}) into what the samples sheet takes: one labels TIFF (``labels_out``;
    each file's ids moved past the previous files', 0 stays background) and its
    ``label,type`` CSV (``types_out``). Objects of two types may not share a pixel (an
    InputError names both files). Returns {type: number of objects}."""
    import pandas as pd
    import tifffile

    from snakescope.io.atomic import atomic_path

    if len(files) < 2:
        raise InputError(", ".join(map(str, files.values())) or "types", "one label file per type: give at least two")
    merged, rows, counts, owner, shape = None, [], {}, None, None
    for name, path in files.items():
        labels = np.asarray(tifffile.imread(path))
        if labels.dtype.kind not in "ui":
            raise InputError(path, f"labels must be an integer image, got {labels.dtype}")
        if shape is None:
            shape, merged, owner = labels.shape, np.zeros(labels.shape, np.uint32), np.full(labels.shape, -1, np.int64)
        elif labels.shape != shape:
            raise InputError(path, f"labels shape {labels.shape} differs from {shape} of {next(iter(files.values()))}")
        ids = np.unique(labels[labels > 0])
        taken = (labels > 0) & (owner >= 0)
        if taken.any():
            other = list(files.values())[int(owner[taken][0])]
            raise InputError(path, f"{int(taken.sum())} pixel(s) of its objects also belong to objects of {other}: "
                                   "an object has one type")
        offset = len(rows)
        lookup = np.zeros(int(labels.max()) + 1, np.uint32)
        lookup[ids] = np.arange(offset + 1, offset + len(ids) + 1, dtype=np.uint32)
        merged[labels > 0] = lookup[labels[labels > 0]]
        owner[labels > 0] = list(files).index(name)
        rows += [{"label": offset + k + 1, "type": name} for k in range(len(ids))]
        counts[name] = len(ids)
    with atomic_path(labels_out) as tmp:
        tifffile.imwrite(tmp, merged if len(rows) >= 2 ** 16 else merged.astype(np.uint16))
    with atomic_path(types_out) as tmp:
        pd.DataFrame(rows, columns=["label", "type"]).to_csv(tmp, index=False)
    return counts
