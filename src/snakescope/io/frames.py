"""Views of one time point / channel of an NGFF array, read and written lazily.

Segmentation and restoration work per frame (a 2D plane or a 3D stack) while the Zarr
array holds t and c too; these views let libraries such as StarDist's
``predict_instances_big`` read and write blocks without loading the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class FrameView:
    """``array[index + region]`` for a fixed leading ``index`` (e.g. (t,) or (t, c))."""

    array: object
    index: tuple

    @property
    def shape(self):
        return tuple(self.array.shape[len(self.index):])

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def dtype(self):
        return np.dtype(self.array.dtype)

    def _full(self, region):
        if not isinstance(region, tuple):
            region = (region,)
        return self.index + region

    def __getitem__(self, region):
        return np.asarray(self.array[self._full(region)])

    def __setitem__(self, region, value):
        self.array[self._full(region)] = value

    def __array__(self, dtype=None, copy=None):
        data = self[tuple(slice(None) for _ in self.shape)]
        return data if dtype is None else data.astype(dtype)


def frames(axes: str, shape, channel: int | None = 0) -> Iterator[tuple[int | None, tuple]]:
    """(time point or None, leading index) for each frame; the channel axis is fixed."""
    n_t = shape[axes.index("t")] if "t" in axes else 1
    for t in range(n_t):
        index = []
        if "t" in axes:
            index.append(t)
        if "c" in axes:
            index.append(channel or 0)
        yield (t if "t" in axes else None), tuple(index)


def spatial_axes(axes: str) -> str:
    return "".join(a for a in axes if a in "zyx")


@dataclass
class ChannelStack:
    """An NGFF array seen without its channel axis: ``stack[t]`` is one frame of ``channel``."""

    array: object
    axes: str
    channel: int = 0

    @property
    def shape(self):
        return tuple(s for a, s in zip(self.axes, self.array.shape) if a != "c")

    def __getitem__(self, t):
        index = tuple(self.channel if a == "c" else (t if a == "t" else slice(None)) for a in self.axes)
        return np.asarray(self.array[index])
