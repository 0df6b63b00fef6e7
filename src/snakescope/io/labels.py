"""The NGFF labels store every stage reads segmentations through, and ground-truth label files.

A sample's segmentation is the NGFF 0.4 ``labels`` group of its image,
``results/<sample>/image.ome.zarr/labels``: its attributes list the label images, the
instance labels ``segmentation`` and, from the U-Net, its pixel-class map ``classes``;
each is a multiscale image with ``image-label`` metadata whose source is the image two
levels up. So napari (napari-ome-zarr) shows the labels over the image when the image is
opened, and ome-zarr-models, bioio and napari read each part (tests/test_interop.py).
Writing goes frame by frame into the Zarr arrays (:func:`write_label_image`), so memory is
bounded by a frame's block, not the volume; the group appears complete or not at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.io.frames import FrameView, frames

log = logging.getLogger(__name__)


def read_labels(path: str, expected_shape, where: str) -> np.ndarray:
    """Ground-truth labels (TIFF or glob of TIFFs), checked against the image's shape."""
    import tifffile

    from snakescope.io.tiff import expand_image_path

    files = expand_image_path(path)
    if not files or not all(f.exists() for f in files):
        raise InputError(path, "labels file not found")
    try:
        labels = tifffile.imread([str(f) for f in files]) if len(files) > 1 else tifffile.imread(str(files[0]))
    except Exception as exc:
        raise InputError(path, f"cannot read labels ({type(exc).__name__}: {exc})") from None
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError(path, f"labels must be an integer image (got {labels.dtype}); is this an intensity image?")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(path, f"negative label values (down to {labels.min()}): labels are 0 for background and "
                               "positive object ids")
    if tuple(labels.shape) != tuple(expected_shape):
        squeezed = np.squeeze(labels)
        if squeezed.shape == tuple(expected_shape):
            labels = squeezed
        else:
            raise InputError(path, f"labels shape {tuple(labels.shape)} differs from the image shape {tuple(expected_shape)} of {where}")
    return labels


#: Column names a types table may give the type under (``class_name``: the synthetic
#: generator's classes.csv and the classifier's tables).
TYPE_COLUMNS = ("type", "class_name", "class")


def read_types(path: str, expected_shape, type_names, where: str):
    """A sample's object types for a typed U-Net: from a CSV (columns ``label`` and ``type``;
    a type is a name of ``type_names`` or its id 1, 2, ...) {label: type id}, else from a
    type image (TIFF or glob, read and checked as :func:`read_labels`) the array of type ids.
    Problems raise InputError naming ``path``."""
    if not str(path).lower().endswith(".csv"):
        return read_labels(path, expected_shape, where)
    import pandas as pd

    if not Path(path).is_file():
        raise InputError(path, "types file not found")
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - name the file that cannot be read
        raise InputError(path, f"cannot read the types table ({type(exc).__name__}: {exc})") from None
    column = next((c for c in TYPE_COLUMNS if c in table.columns), None)
    if "label" not in table.columns or column is None:
        raise InputError(path, f"needs the columns label and type (got {', '.join(map(str, table.columns))})")
    ids = {str(name): k for k, name in enumerate(type_names, start=1)} | {str(k): k for k in range(1, len(type_names) + 1)}
    table = table.dropna(subset=["label"])
    labels = pd.to_numeric(table["label"], errors="coerce")
    if labels.isna().any() or (labels < 1).any() or (labels % 1 != 0).any():
        raise InputError(path, "column label must hold object ids (whole numbers from 1)")
    unknown = sorted(set(table[column].astype(str).str.strip()) - set(ids))
    if unknown:
        raise InputError(path, f"unknown type(s) {unknown[:5]}: use the names {list(type_names)} "
                               "(segmentation.unet.types) or their ids 1, 2, ...")
    types = {}
    for label, value in zip(labels.astype(int), table[column].astype(str).str.strip()):
        if types.setdefault(int(label), ids[value]) != ids[value]:
            raise InputError(path, f"label {label} is given two types")
    return types


#: The labels image of a labels.ome.zarr that holds the U-Net's pixel classes.
CLASS_MAP = "classes"


#: NGFF label colours of the class map (background transparent).
CLASS_COLORS = ([0, 0, 0, 0], [255, 200, 0, 255], [0, 120, 255, 255])
#: Colours of the cell types of a typed U-Net's class map (cycled): each type's body, and
#: its contour a lighter shade.
TYPE_COLORS = ([0, 120, 255], [255, 90, 60], [40, 180, 80], [170, 80, 220], [240, 180, 0], [0, 190, 200])


def class_colors(n_classes: int) -> list[list[int]]:
    """RGBA per class of a class map: :data:`CLASS_COLORS` for three classes, else per type
    (contour 2k - 1, body 2k) from :data:`TYPE_COLORS`."""
    if n_classes <= len(CLASS_COLORS):
        return [list(c) for c in CLASS_COLORS[:n_classes]]
    colors = [list(CLASS_COLORS[0])]
    for k in range((n_classes - 1) // 2):
        body = TYPE_COLORS[k % len(TYPE_COLORS)]
        colors += [[(c + 255) // 2 for c in body] + [255], list(body) + [255]]
    return colors


def write_label_image(image_path, out_path, segment_frame, *, channel: int = 0, name: str = "segmentation",
                      summary: dict | None = None, class_names=None) -> dict:
    """Segment every frame of an NGFF image with ``segment_frame`` into an NGFF labels group.

    ``segment_frame(frame, out)`` gets a lazy view of one frame (channel chosen) and a view of
    the output Zarr array to fill, and returns the number of objects. ``out_path`` is the
    NGFF labels group to write (an image's ``labels``): ``out_path/<name>`` holds uint32
    labels with a nearest-neighbour pyramid, the image's axes without c and its scale (NGFF
    ``image-label``), written atomically.

    With ``class_names``, a second label image ``out_path/classes`` (:data:`CLASS_MAP`:
    uint8 class ids, same axes, chunks and pyramid; the names are its NGFF label properties)
    is written in the same group, and ``segment_frame(frame, out, classes_out)`` gets a view
    of it to fill too. The instance labels stay first in the group's ``labels`` list.
    """
    image = ngff.read_image(image_path)
    label_axes, label_shape, label_chunks = label_layout(image)
    scale = [s for a, s in zip(image.axes, image.scale) if a != "c"]
    with atomic_path(out_path) as tmp:
        root = ngff.open_group(tmp, "w")
        root.attrs["labels"] = [name, CLASS_MAP] if class_names else [name]
        group = root.create_group(name)
        shapes = ngff.pyramid_shapes(label_axes, label_shape, "auto")
        levels = ngff.create_levels(group, shapes, label_chunks, np.uint32, "lz4")
        class_levels = []
        if class_names:
            class_group = root.create_group(CLASS_MAP)
            class_levels = ngff.create_levels(class_group, shapes, label_chunks, np.uint8, "lz4")
        counts = segment_frames(image, channel, segment_frame, levels[0], *class_levels[:1])
        ngff.write_pyramid(group, label_axes, shapes, label_chunks, np.uint32, "lz4", 2, "nearest")
        label_metadata(group, label_axes, scale, len(shapes), name)
        if class_levels:
            ngff.write_pyramid(class_group, label_axes, shapes, label_chunks, np.uint8, "lz4", 2, "nearest")
            label_metadata(class_group, label_axes, scale, len(shapes), CLASS_MAP,
                            colors=[{"label-value": i, "rgba": c} for i, c in enumerate(class_colors(len(class_names)))],
                            properties=[{"label-value": i, "class": str(n)} for i, n in enumerate(class_names)])
        result = {**(summary or {}), "objects_per_frame": counts}
        root.attrs["snakescope"] = {"segmentation": result}
    return result


def label_layout(image: ngff.NgffImage) -> tuple[str, tuple, tuple]:
    """Axes, shape and chunks of the labels of an NGFF image: the image's without c."""
    keep = [i for i, a in enumerate(image.axes) if a != "c"]
    return (image.axes.replace("c", ""), tuple(image.shape[i] for i in keep),
            tuple(image.data.chunks[i] for i in keep))


def segment_frames(image: ngff.NgffImage, channel: int, segment_frame, labels, *extra) -> dict:
    """``segment_frame(frame, out, *extra_out)`` for every frame of ``image`` (channel chosen),
    ``out`` being that time point's view of ``labels`` (and of each array in ``extra``);
    returns the object count per frame ({"t" or "0": n})."""
    counts = {}
    for t, index in frames(image.axes, image.shape, channel):
        leading = (t,) if t is not None else ()
        n = segment_frame(FrameView(image.data, index), FrameView(labels, leading),
                          *(FrameView(array, leading) for array in extra))
        counts[str(t) if t is not None else "0"] = int(n)
        log.info("frame %s: %d objects", t, n)
    return counts


def label_metadata(group, axes: str, scale, n_levels: int, name: str, **image_label) -> None:
    """NGFF multiscales and ``image-label`` attributes of one labels image."""
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, scale, n_levels, name, method="nearest")]
    group.attrs["image-label"] = {"version": ngff.NGFF_VERSION, "source": {"image": "../../"}, **image_label}


def read_labels_image(path: str | Path) -> ngff.NgffImage:
    """The instance labels of an NGFF labels group written by :func:`write_label_image`."""
    root = ngff.open_group(path, "r")
    name = root.attrs["labels"][0]
    return ngff.read_image(Path(path) / name)


def read_class_map(path: str | Path) -> ngff.NgffImage:
    """The U-Net's class map (uint8: 0 background, 1 contour, 2 body; a typed U-Net's per
    type, see :func:`class_map_names`) in an NGFF labels group."""
    root = ngff.open_group(path, "r")
    if CLASS_MAP not in list(root.attrs.get("labels", []))[1:]:
        raise InputError(path, "holds no U-Net class map (segmented by another method, or before class maps were "
                               "kept): delete it to segment again with segmentation.method unet")
    return ngff.read_image(Path(path) / CLASS_MAP)


def class_map_names(path: str | Path) -> tuple[list[str], list[str]]:
    """(class names, cell types) of the class map in an NGFF labels group: the three classes
    and no types, or a typed U-Net's (its segmentation summary names them)."""
    summary = ngff.open_group(path, "r").attrs.get("snakescope", {}).get("segmentation", {})
    return list(summary.get("classes", ["background", "contour", "body"])), list(summary.get("types", []))
