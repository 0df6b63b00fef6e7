"""Open a sample's image in any supported format: TIFF/OME-TIFF (io.tiff) or, through bioio
and its format plugins, Zeiss CZI, Nikon ND2 and Leica LIF.

A vendor file holds one or more scenes (positions, series); a sample reads one, the first
unless the sheet's ``scene`` column names another (its index from 0 or its name). Axes,
voxel size (µm), time interval (s) and channel names come from the file's metadata;
dimensions of length one are dropped unless the sheet's ``axes`` keep them. Pixels are read
lazily, plane by plane, through the plugins' dask arrays, as io.tiff does for TIFFs.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.io.tiff import AXES_LETTERS, TiffSource, check_axes, open_tiff

__all__ = ["VENDOR_FORMATS", "VendorSource", "is_vendor_file", "open_image", "open_vendor"]

log = logging.getLogger(__name__)

#: suffix -> (format name, bioio plugin module, reader options). One chunk per Y-X plane
#: where the plugin lets us choose (ND2's reader chunks by frame already). CZI names its
#: colour samples "A": without it among the chunk dims bioio-czi 3.0.1 repeats the first
#: sample of an RGB image in all three.
VENDOR_FORMATS = {
    ".czi": ("CZI", "bioio_czi", {"chunk_dims": ["Y", "X", "A"]}),
    ".nd2": ("ND2", "bioio_nd2", {}),
    ".lif": ("LIF", "bioio_lif", {"chunk_dims": ["Y", "X"]}),
}


def is_vendor_file(image: str | Path) -> bool:
    """Whether a sample's ``image`` entry names a CZI, ND2 or LIF file."""
    return Path(str(image)).suffix.lower() in VENDOR_FORMATS


def open_image(image: str | Path, axes: str | None, scene: str | None = None) -> TiffSource | VendorSource:
    """A sample's image, opened lazily by its extension (CZI, ND2, LIF; anything else as TIFF)."""
    if is_vendor_file(image):
        return open_vendor(image, axes, scene)
    if scene is not None:
        raise InputError(image, f"scene {scene!r}: only CZI, ND2 and LIF files have scenes (a TIFF's series 0 is read)")
    return open_tiff(image, axes)


@dataclass
class VendorSource(TiffSource):
    """One scene of a vendor file: a TiffSource (``array`` read-only, in the order of
    ``axes``; voxel size in µm per spatial axis, 't' in seconds) that names its scene."""

    scene: str = ""

    @property
    def where(self) -> str:
        return str(self.files[0])


class LazyPlanes:
    """Read-only array over a dask array: a read computes just the chunks (planes) the region
    touches, in the calling thread (the converter runs its own workers)."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype = tuple(data.shape), np.dtype(data.dtype)

    def __getitem__(self, region):
        return np.asarray(self.data[region].compute(scheduler="synchronous"))


def _one_line(exc: Exception) -> str:
    """The library's own words on one line: bioio wraps a plugin's refusal in a paragraph
    naming the readers it tried, of which only the plugin's reason is news."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    reason = re.search(r".*does not support the image: '[^']*'\.? *(.+)$", text)
    return (reason.group(1) if reason else text)[:300]


def _pick_scene(scenes: tuple, scene: str | None, where: Path) -> int:
    if scene is None:
        return 0
    if scene in scenes:
        return scenes.index(scene)
    if scene.strip().isdigit() and int(scene) < len(scenes):
        return int(scene)
    listed = ", ".join(repr(s) for s in scenes[:10]) + (f" and {len(scenes) - 10} more" if len(scenes) > 10 else "")
    raise InputError(where, f"no scene {scene!r}: the file has {len(scenes)} scene(s), numbered from 0: {listed}")


def open_vendor(image: str | Path, axes: str | None, scene: str | None = None) -> VendorSource:
    """Open one scene of a CZI, ND2 or LIF file lazily and check it before any pixel is read.

    ``axes`` (the sheet's) may be None to take the file's dimensions without those of length
    one; given, it must name every dimension longer than one and may keep others (its order
    does not matter: the file's metadata names each dimension).
    """
    from bioio import BioImage

    path = Path(str(image))
    kind, module, options = VENDOR_FORMATS[path.suffix.lower()]
    if any(ch in str(image) for ch in "*?["):
        raise InputError(image, f"a {kind} sample is one file, not a pattern (globs are for TIFF sequences)")
    if not path.exists():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        bio = BioImage(path, reader=importlib.import_module(module).Reader, **options)
        scenes = tuple(str(s) for s in bio.scenes)
    except Exception as exc:  # each plugin and its library raise their own types
        raise InputError(path, f"not a readable {kind} file: {_one_line(exc)}") from None
    index = _pick_scene(scenes, scene, path)
    try:
        bio.set_scene(index)
        order, data = bio.dims.order, bio.dask_data
    except Exception as exc:
        raise InputError(path, f"cannot read scene {scenes[index]!r} of the {kind} file: {_one_line(exc)}") from None
    data, order = _as_tczyx(data, order, path)
    data, order = _select_axes(data, order, axes, path)
    if 0 in data.shape:
        raise InputError(path, f"empty image (shape {tuple(data.shape)}, axes {order})")
    if np.dtype(data.dtype).kind not in "uif":
        raise InputError(path, f"unsupported pixel type {data.dtype} (need integer or float)")
    channel_names = _channel_names(bio, data.shape[order.index("C")] if "C" in order else 1, path)
    log.info("%s: scene %r of %d, axes %s, shape %s, %s", path, scenes[index], len(scenes), order, data.shape, data.dtype)
    return VendorSource(files=[path], axes=order, array=LazyPlanes(data), scene=scenes[index],
                        channel_names=channel_names, voxel_size=_voxel_size(bio, order, path))


def _drop(data, order: str, letter: str):
    """``data`` without the axis ``letter`` (of length one: its only index)."""
    i = order.index(letter)
    return data[tuple(0 if k == i else slice(None) for k in range(data.ndim))], order.replace(letter, "")


def _as_tczyx(data, order: str, where: Path):
    """The data with axes among TCZYX in that order: colour samples (S) become the channels,
    in the order the file stores them (B, G, R for Zeiss's Bgr24)."""
    if "S" in order:
        s, c = order.index("S"), order.index("C")
        if data.shape[s] == 1:
            data, order = _drop(data, order, "S")
        elif data.shape[c] == 1:
            data, order = _drop(data, order, "C")
            target = [a for a in AXES_LETTERS if a in order or a == "C"]
            data = data.transpose([order.index("S" if a == "C" else a) for a in target])
            order = "".join(target)
        else:
            raise InputError(where, f"both channels ({data.shape[c]}) and colour samples ({data.shape[s]}) in one "
                                    "image: not supported")
    if set(order) - set(AXES_LETTERS) or len(order) != len(set(order)):
        raise InputError(where, f"dimensions {order} {tuple(data.shape)} are not supported (need letters of {AXES_LETTERS})")
    target = [a for a in AXES_LETTERS if a in order]
    return data.transpose([order.index(a) for a in target]), "".join(target)


def _select_axes(data, order: str, axes: str | None, where: Path):
    """Drop dimensions of length one unless the sheet's ``axes`` keep them; every longer one
    must be among those ``axes``."""
    keep = set(check_axes(axes, where)) if axes else set()
    for letter, size in zip(order, data.shape):
        if axes and size > 1 and letter not in keep:
            raise InputError(where, f"axes {axes!r} leave out {letter} of length {size}: the file's metadata says "
                                    f"{order} {tuple(data.shape)}; name every dimension longer than one")
    for letter, size in zip(order, tuple(data.shape)):
        if size == 1 and letter not in keep | {"Y", "X"}:
            data, order = _drop(data, order, letter)
    return data, order


def _channel_names(bio, n_channels: int, where: Path) -> list[str] | None:
    """The file's channel names, where there is one per channel read."""
    try:
        names = [str(n) for n in bio.channel_names or []]
    except Exception as exc:  # metadata a plugin cannot parse should not stop the pixels
        log.warning("%s: no channel names from the file's metadata (%s)", where, _one_line(exc))
        return None
    return names if len(names) == n_channels else None


def _voxel_size(bio, order: str, where: Path) -> dict:
    """µm per pixel of the spatial axes and seconds between time points, where the file says."""
    sizes = {}
    try:
        physical = bio.physical_pixel_sizes
        interval = bio.time_interval if "T" in order else None
    except Exception as exc:
        log.warning("%s: no physical sizes from the file's metadata (%s)", where, _one_line(exc))
        return sizes
    for letter, value in zip("ZYX", (physical.Z, physical.Y, physical.X)):
        if letter in order and value is not None and np.isfinite(value) and value > 0:
            sizes[letter.lower()] = float(value)
    if isinstance(interval, timedelta) and interval.total_seconds() > 0:
        sizes["t"] = interval.total_seconds()
    return sizes
