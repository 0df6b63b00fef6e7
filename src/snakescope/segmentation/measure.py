"""Per-object measurements: one row per object and time point (with a typed U-Net's cell
type), written as Parquet."""

from __future__ import annotations

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.io.frames import frames, spatial_axes

__all__ = ["PROPS_2D", "PROPS_3D", "measure", "measure_frame", "measure_objects"]

PROPS_2D = ("label", "centroid", "area", "bbox", "intensity_mean", "intensity_max", "eccentricity",
            "solidity", "perimeter", "axis_major_length", "axis_minor_length", "orientation")
PROPS_3D = ("label", "centroid", "area", "bbox", "intensity_mean", "intensity_max", "solidity",
            "axis_major_length", "axis_minor_length")


def measure_frame(labels: np.ndarray, intensity: np.ndarray, spatial: str, voxel_size: dict):
    """regionprops of one frame, with centroids named by axis and physical sizes added."""
    import pandas as pd
    from skimage.measure import regionprops_table

    props = PROPS_2D if labels.ndim == 2 else PROPS_3D
    table = pd.DataFrame(regionprops_table(labels, intensity_image=intensity, properties=props))
    rename = {f"centroid-{i}": a for i, a in enumerate(spatial)}
    rename.update({f"bbox-{i}": f"bbox_min_{a}" for i, a in enumerate(spatial)})
    rename.update({f"bbox-{i + len(spatial)}": f"bbox_max_{a}" for i, a in enumerate(spatial)})
    table = table.rename(columns=rename)
    voxel_volume = float(np.prod([voxel_size.get(a, 1.0) for a in spatial]))
    table["size_um"] = table["area"] * voxel_volume  # area in 2D (um^2), volume in 3D (um^3)
    if labels.ndim == 3:
        table = table.rename(columns={"area": "volume"})
    return table


def measure_objects(labels_path, image_path, *, channel: int = 0):
    """One row per object and time point (``t``, ``label``, centroid per axis, size, shape
    and intensity) of a labels NGFF (from segmentation) on its raw intensity image.

    From a typed U-Net also ``type``, the cell type most of the object's pixels have in its
    class map, and ``type_fraction``, the share of its typed pixels that have it
    (:func:`snakescope.segmentation.unet.types.object_types`)."""
    import pandas as pd

    from snakescope.io.labels import class_map_names, read_class_map, read_labels_image

    labels_image = read_labels_image(labels_path)
    type_names = class_map_names(labels_path)[1]
    class_map = read_class_map(labels_path) if type_names else None
    image = ngff.read_image(image_path)
    spatial = spatial_axes(image.axes)
    voxel = image.voxel_size
    tables = []
    for t, index in frames(image.axes, image.shape, channel):
        labels = np.asarray(labels_image.data[(t,) if t is not None else ()])
        intensity = np.asarray(image.data[index])
        table = measure_frame(labels, intensity, spatial, voxel)
        table.insert(0, "t", 0 if t is None else t)
        if class_map is not None:
            _add_types(table, labels, class_map.data[(t,) if t is not None else ()], type_names)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _add_types(table, labels: np.ndarray, class_map, type_names) -> None:
    """The ``type`` (None where no pixel is typed) and ``type_fraction`` columns of a frame."""
    from snakescope.segmentation.unet.types import object_types

    found = object_types(labels, np.asarray(class_map), len(type_names))
    table["type"] = [type_names[found[int(i)][0] - 1] if found[int(i)][0] else None for i in table["label"]]
    table["type_fraction"] = [found[int(i)][1] for i in table["label"]]


def measure(labels_path, image_path, out_path, *, channel: int = 0) -> int:
    """objects.parquet (:func:`measure_objects`), written atomically; returns the row count."""
    result = measure_objects(labels_path, image_path, channel=channel)
    with atomic_path(out_path) as tmp:
        result.to_parquet(tmp, index=False)
    return len(result)
