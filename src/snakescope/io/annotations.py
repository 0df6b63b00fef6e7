"""Class annotations as users make them: napari points layers saved as CSV, and folders of
ready patches.

**Points.** :func:`read_point_annotations` reads the CSV files napari's points layer saves:
one file per class (class from the file name, ``points_<class>.csv`` or ``<class>.csv``;
``points_sparse_<class>.csv`` also gives ``<class>``), or one file with a class column
(``class_name``, ``class`` or ``label``). Coordinates are in the image's axes without the
channel axis (``t, (z,) y, x`` for a time-lapse), pixel units, as napari writes them
(``index,axis-0,axis-1,...``; columns named ``t, z, y, x`` are accepted too). Only some
cells of each class need to be marked. Every problem is an :class:`InputError` naming the
file and the row.

**Patch folders.** :func:`load_patch_folder` reads one subfolder per class of PNG or TIFF
patches (:data:`PATCH_EXTENSIONS`).

Also the axes and point helpers the classifier shares with it: :func:`parse_axes`,
:func:`point_axes`, :func:`point_coordinates` and :func:`rounded_inside` (points rounded to
pixels, a point outside the image named by its file and row).
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.tiff import check_axes

log = logging.getLogger(__name__)

__all__ = ["CLASS_COLUMNS", "PATCH_EXTENSIONS", "load_patch_folder", "parse_axes", "point_axes", "point_coordinates",
           "read_point_annotations", "rounded_inside"]

CLASS_COLUMNS = ("class_name", "class", "label")
PATCH_EXTENSIONS = (".png", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------
# Axes and points


def parse_axes(axes, where="axes") -> str:
    """Lower-case axes string; an int is a number of axes without channel (2: yx, 3: tyx,
    4: tzyx)."""
    if isinstance(axes, (int, np.integer)):
        defaults = {2: "yx", 3: "tyx", 4: "tzyx"}
        if int(axes) not in defaults:
            raise InputError(where, f"{axes} axes: give 2 (yx), 3 (tyx), 4 (tzyx) or an axes string")
        return defaults[int(axes)]
    return check_axes(str(axes), where).lower()


def point_axes(axes: str) -> str:
    """The axes points carry: the image axes without the channel."""
    return axes.replace("c", "")


def _describe_point(names: str, values) -> str:
    return ", ".join(f"{a}={float(v):g}" for a, v in zip(names, values))


def _outside(rounded: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return np.any((rounded < 0) | (rounded > np.asarray(shape) - 1), axis=1)


def _outside_error(where, row, names, values, shape) -> InputError:
    extent = ", ".join(f"{a} 0..{n - 1}" for a, n in zip(names, shape))
    return InputError(where, f"row {row}: point ({_describe_point(names, values)}) lies outside the image ({extent})")


def rounded_inside(coordinates: np.ndarray, shape: Sequence[int], names: str, sources, rows) -> np.ndarray:
    """Coordinates ``(N, len(names))`` rounded to the nearest pixel (int64); the first point
    outside ``shape`` is an :class:`InputError` naming its source and row."""
    rounded = np.floor(coordinates + 0.5).astype(np.int64)
    outside = np.flatnonzero(_outside(rounded, shape)) if len(rounded) else np.array([], int)
    if outside.size:
        i = outside[0]
        raise _outside_error(sources[i], rows[i], names, coordinates[i], shape)
    return rounded


def point_coordinates(points, names: str) -> tuple[np.ndarray, list, list]:
    """(coordinates (N, len(names)), sources, rows) from a table as
    :func:`read_point_annotations` returns (or any with the axis columns) or an array."""
    if isinstance(points, pd.DataFrame):
        missing = [a for a in names if a not in points.columns]
        if missing:
            raise InputError("points", f"missing coordinate column(s) {', '.join(missing)} (axes {names!r}); found {', '.join(map(str, points.columns))}")
        coordinates = points[list(names)].to_numpy(dtype=np.float64)
        sources = points["source"].tolist() if "source" in points.columns else ["points"] * len(points)
        rows = points["row"].tolist() if "row" in points.columns else list(range(1, len(points) + 1))
    else:
        coordinates = np.asarray(points, dtype=np.float64).reshape(-1, len(names)) if np.size(points) else np.zeros((0, len(names)))
        sources, rows = ["points"] * len(coordinates), list(range(1, len(coordinates) + 1))
    return coordinates, sources, rows


# ---------------------------------------------------------------------------------------
# napari points CSV files


def _annotation_files(paths) -> list[tuple[Path, str | None]]:
    """[(file, class from a dict key or None)] from a glob, file, folder, list or dict."""
    if isinstance(paths, dict):
        return [(Path(p), str(k)) for k, p in paths.items()]
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[tuple[Path, str | None]] = []
    for item in paths:
        text = str(item)
        if any(ch in text for ch in "*?["):
            files.extend((Path(m), None) for m in sorted(glob.glob(text)))
        elif Path(text).is_dir():
            files.extend((p, None) for p in sorted(Path(text).glob("*.csv")))
        else:
            files.append((Path(text), None))
    return files


def _class_from_filename(path: Path) -> str:
    stem = path.stem
    for prefix in ("points_sparse_", "points_"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem


def read_point_annotations(
    paths,
    axes,
    *,
    class_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    class_column: str | None = None,
) -> pd.DataFrame:
    """Read napari points CSV files into one table of labelled points.

    Parameters
    ----------
    paths : a glob pattern, a file, a folder (all ``*.csv`` in it), a list of those, or a
        dict ``{class_name: file}``.
    axes : the image's axes (``"tyx"``, ``"tczyx"``, ...; the channel axis is dropped, as
        napari drops it from points) or the number of axes without channel (the
        ``ndim_without_channel``: 2 is ``yx``, 3 is ``tyx``, 4 is ``tzyx``).
    class_names : if given, a class outside it is an error (e.g. the model's classes).
    image_shape : if given (shape in ``axes``, channel included when ``axes`` has one),
        points outside the image are an error.
    class_column : name of the class column; default the first of ``class_name``,
        ``class``, ``label`` present. Files without one take the class from their name
        (``points_<class>.csv``, ``points_sparse_<class>.csv`` or ``<class>.csv``), or from
        the dict key, which takes precedence.

    Returns a DataFrame with columns ``class_name``, the point axes (``t``, ``z``, ``y``,
    ``x`` as present; float, pixel units), ``source`` (the file) and ``row`` (1-based data
    row in that file). Problems raise :class:`InputError` naming the file and the row.
    """
    full_axes = parse_axes(axes)
    names = point_axes(full_axes)
    shape = None
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) == len(full_axes):
            shape = tuple(n for a, n in zip(full_axes, image_shape) if a != "c")
        elif len(image_shape) == len(names):
            shape = image_shape
        else:
            raise InputError("image_shape", f"{image_shape} does not match the axes {full_axes!r}")
    files = _annotation_files(paths)
    if not files:
        raise InputError(str(paths), "no annotation CSV files found")
    allowed = None if class_names is None else [str(c) for c in class_names]
    tables = [_read_one_csv(path, key, names, class_column, allowed, shape) for path, key in files]
    return pd.concat(tables, ignore_index=True)


def _coordinate_columns(path: Path, raw: pd.DataFrame, lower: dict, names: str) -> list[str]:
    n = len(names)
    napari = [f"axis-{i}" for i in range(n)]
    axis_columns = sorted((c for c in lower if c.startswith("axis-")), key=lambda c: (len(c), c))
    if axis_columns:
        if axis_columns != napari:
            raise InputError(
                path,
                f"header: {len(axis_columns)} coordinate columns ({', '.join(axis_columns)}) but the image axes "
                f"{names!r} need {n} ({', '.join(napari)}, in the order {', '.join(names)})",
            )
        return [lower[c] for c in napari]
    if all(a in lower for a in names):
        return [lower[a] for a in names]
    raise InputError(
        path,
        f"header: expected the coordinate columns {', '.join(napari)} (napari points layer, axes "
        f"{', '.join(names)}) or {', '.join(names)}; found {', '.join(raw.columns) or 'none'}",
    )


def _read_one_csv(path: Path, key, names: str, class_column, allowed, shape) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file: expected a header such as 'index,axis-0,axis-1,...'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable CSV file ({exc})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    lower = {c.lower(): c for c in raw.columns}
    coordinate_columns = _coordinate_columns(path, raw, lower, names)
    if class_column is not None and class_column.lower() not in lower and key is None:
        raise InputError(path, f"header: no class column {class_column!r}; found {', '.join(raw.columns)}")
    column = None
    if key is None:
        candidates = [class_column] if class_column is not None else list(CLASS_COLUMNS)
        column = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
    rows = np.arange(1, len(raw) + 1)
    if column is not None:
        classes = raw[column].astype(str).str.strip()
        empty = np.flatnonzero(classes.to_numpy() == "")
        if empty.size:
            raise InputError(path, f"row {rows[empty[0]]}: empty class in column {column!r}")
    else:
        name = key if key is not None else _class_from_filename(path)
        classes = pd.Series([name] * len(raw), dtype=object)
    coordinates = np.empty((len(raw), len(names)), dtype=np.float64)
    for j, col in enumerate(coordinate_columns):
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(path, f"row {rows[bad[0]]}: coordinate {col} ({names[j]}) is not a number: {raw[col].iloc[bad[0]]!r}")
        coordinates[:, j] = values
    if allowed is not None:
        unknown = np.flatnonzero(~classes.isin(allowed).to_numpy())
        if unknown.size:
            i = unknown[0]
            raise InputError(path, f"row {rows[i]}: unknown class {classes.iloc[i]!r}; the known classes are {', '.join(allowed)}")
    if shape is not None and len(raw):
        rounded_inside(coordinates, shape, names, [path] * len(raw), rows)
    table = pd.DataFrame({"class_name": classes.to_numpy(dtype=object)})
    for j, a in enumerate(names):
        table[a] = coordinates[:, j]
    table["source"] = str(path)
    table["row"] = rows.astype(np.int64)
    return table


# ---------------------------------------------------------------------------------------
# Patch folders


def load_patch_folder(folder, *, extensions: Sequence[str] = PATCH_EXTENSIONS):
    """Read ready patches, one subfolder per class (PNG or TIFF files).

    2D files give ``(Y, X, 1)``; RGB(A) PNGs ``(Y, X, 3)`` (alpha dropped); TIFFs with 3
    dimensions are ``YXC`` when the last axis has at most 4 entries, ``CYX`` when the first
    has, else ``ZYX``. All patches must have one shape. Returns ``(patches, labels, paths)``
    with patches ``(N, ..., C)`` in the files' dtype. Empty class folders are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "patch folder not found")
    extensions = tuple(e.lower() for e in extensions)
    arrays, labels, paths = [], [], []
    reference = None
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            log.warning("%s: no %s files; class skipped", class_dir, "/".join(extensions))
            continue
        for path in files:
            array = _read_patch_file(path)
            if reference is None:
                reference = (array.shape, path)
            elif array.shape != reference[0]:
                raise InputError(path, f"patch shape {array.shape} differs from {reference[0]} of {reference[1]}")
            arrays.append(array)
            labels.append(class_dir.name)
            paths.append(str(path))
    if not arrays:
        raise InputError(folder, f"no patches: expected one subfolder per class with {'/'.join(extensions)} files")
    return np.stack(arrays), labels, paths


def _read_patch_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
            if array.ndim == 3:
                if array.shape[-1] <= 4:
                    pass
                elif array.shape[0] <= 4:
                    array = np.moveaxis(array, 0, -1)
                else:
                    array = array[..., None]
            elif array.ndim == 2:
                array = array[..., None]
        else:
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img)
            if array.ndim == 3 and array.shape[-1] == 4:
                array = array[..., :3]
            if array.ndim == 2:
                array = array[..., None]
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the image ({exc})") from None
    if array.ndim not in (3, 4):
        raise InputError(path, f"unsupported patch dimensions {array.shape}")
    return array
