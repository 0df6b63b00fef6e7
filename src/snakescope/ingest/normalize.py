"""Percentile (or z-score) normalization computed blockwise, for volumes of any size.

Statistics exclude pixels equal to the mask value (the exact zeros a microscope writes where
it blanked or did not image). Percentiles come from histograms accumulated slab by slab:
exact for 8- and 16-bit integer data (one bin per value), and within one bin width
(range / 65536) for float or wider integer data, which takes a first pass for the range.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from snakescope.io import ngff
from snakescope.settings import Ingest, Normalize, defaults
from snakescope.io.atomic import atomic_path, write_json
from snakescope.errors import InputError

log = logging.getLogger(__name__)

FLOAT_BINS = 65536
SCOPES = {"image": "", "channel": "c", "timepoint": "tc"}


def _group_key(axes: str, region, scope: str) -> tuple:
    """Which statistics group a slab belongs to (slabs are one time point, one channel deep)."""
    return tuple((a, region[axes.index(a)].start) for a in SCOPES[scope] if a in axes)


def _valid(block: np.ndarray, mask_value) -> np.ndarray:
    values = block.ravel()
    if block.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if mask_value is not None:
        values = values[values != mask_value]
    return values


class _Accumulator:
    """Thread-safe per-group counts, sums and histograms."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = defaultdict(int)
        self.masked = defaultdict(int)
        self.sum = defaultdict(float)
        self.sumsq = defaultdict(float)
        self.min = defaultdict(lambda: np.inf)
        self.max = defaultdict(lambda: -np.inf)
        self.hist = {}

    def add_moments(self, key, block, values):
        s = float(values.sum(dtype=np.float64))
        ss = float(np.square(values, dtype=np.float64).sum())
        lo = float(values.min()) if values.size else np.inf
        hi = float(values.max()) if values.size else -np.inf
        with self.lock:
            self.count[key] += values.size
            self.masked[key] += block.size - values.size
            self.sum[key] += s
            self.sumsq[key] += ss
            self.min[key] = min(self.min[key], lo)
            self.max[key] = max(self.max[key], hi)

    def add_hist(self, key, hist):
        with self.lock:
            if key in self.hist:
                self.hist[key] += hist
            else:
                self.hist[key] = hist


def _integer_offset(dtype: np.dtype) -> tuple[int, int] | None:
    """(offset, n_bins) for exact one-bin-per-value histograms of 8/16-bit integers."""
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        return -int(info.min), int(info.max) - int(info.min) + 1
    return None


def order_statistic_from_hist(counts: np.ndarray, k: float, lo: float, width: float, exact: bool) -> float:
    """The value of rank ``k`` (0-based, fractional ranks interpolate) from a histogram."""
    cum = np.cumsum(counts)

    def at(rank: int) -> float:
        i = int(np.searchsorted(cum, rank, side="right"))
        if exact:
            return lo + i
        before = cum[i - 1] if i else 0
        return lo + width * (i + (rank - before + 0.5) / counts[i])

    k0 = int(np.floor(k))
    v0 = at(k0)
    if k == k0 or k0 + 1 >= cum[-1]:
        return v0
    return v0 + (k - k0) * (at(k0 + 1) - v0)


def compute_statistics(image: ngff.NgffImage, *, method: str = "percentile", low: float = 1.0,
                       high: float = 99.8, scope: str = "channel", mask_value=0, threads: int = 2) -> dict:
    """Per-group normalization statistics of an NGFF image's full-resolution level."""
    data = image.data
    axes = image.axes
    dtype = np.dtype(data.dtype)
    regions = list(ngff.slabs(axes, data.shape, data.chunks, dtype.itemsize))
    acc = _Accumulator()
    exact = _integer_offset(dtype)

    def first_pass(region):
        block = data[region]
        key = _group_key(axes, region, scope)
        values = _valid(block, mask_value)
        acc.add_moments(key, block, values)
        if exact and method == "percentile":
            offset, n_bins = exact
            acc.add_hist(key, np.bincount((values.astype(np.int64) + offset), minlength=n_bins))

    for _ in ngff.map_blocks_bounded(first_pass, regions, threads):
        pass

    empty = [k for k, n in acc.count.items() if n == 0]
    if empty:
        raise InputError(image.path, f"no pixels left to normalize in {_describe(empty[0])} after excluding the mask value {mask_value!r}")

    if method == "percentile" and not exact:
        def second_pass(region):
            key = _group_key(axes, region, scope)
            values = _valid(data[region], mask_value)
            hist, _ = np.histogram(values, bins=FLOAT_BINS, range=(acc.min[key], acc.max[key]))
            acc.add_hist(key, hist)

        for _ in ngff.map_blocks_bounded(second_pass, regions, threads):
            pass

    groups = []
    for key in sorted(acc.count):
        n = acc.count[key]
        entry = {
            "group": dict(key),
            "n_pixels": n,
            "n_masked": acc.masked[key],
            "min": acc.min[key],
            "max": acc.max[key],
            "mean": acc.sum[key] / n,
            "std": float(np.sqrt(max(acc.sumsq[key] / n - (acc.sum[key] / n) ** 2, 0.0))),
        }
        if method == "percentile":
            if exact:
                lo_value, width = -exact[0], 1.0
            else:
                lo_value = acc.min[key]
                width = (acc.max[key] - acc.min[key]) / FLOAT_BINS or 1.0
            counts = acc.hist[key]
            entry["low_value"] = order_statistic_from_hist(counts, low / 100 * (n - 1), lo_value, width, bool(exact))
            entry["high_value"] = order_statistic_from_hist(counts, high / 100 * (n - 1), lo_value, width, bool(exact))
            entry["percentile_error_bound"] = 0.0 if exact else width
            entry["offset"], entry["divisor"] = entry["low_value"], entry["high_value"] - entry["low_value"]
        else:
            entry["offset"], entry["divisor"] = entry["mean"], entry["std"]
        if not entry["divisor"] > 0:
            raise InputError(image.path, f"{_describe(key)} is nearly constant: the normalization divisor is {entry['divisor']:g} ({method})")
        groups.append(entry)
    return {
        "method": method,
        "low": low,
        "high": high,
        "scope": scope,
        "mask_value": mask_value,
        "dtype": str(dtype),
        "histogram": "exact (one bin per value)" if exact else f"{FLOAT_BINS} bins between min and max",
        "groups": groups,
    }


def _describe(key) -> str:
    return "the whole image" if not key else ", ".join(f"{a}={i}" for a, i in key)


def _display(image: ngff.NgffImage, stats: dict, name: str) -> dict:
    """omero display metadata of the normalized image: per channel the input's name and its
    range mapped through that channel's normalization; the window shown is the percentile
    range (0 to 1), or 3 standard deviations either side for z-scores."""
    channels = image.attrs.get("omero", {}).get("channels", [])
    n = image.shape[image.axes.index("c")] if "c" in image.axes else 1
    windows, labels = [], []
    for c in range(n):
        group = next((g for g in stats["groups"] if g["group"].get("c", c) == c), stats["groups"][0])
        raw = channels[c]["window"] if c < len(channels) else {"min": group["offset"], "max": group["offset"]}
        lo, hi = ((raw[k] - group["offset"]) / group["divisor"] for k in ("min", "max"))
        shown = (0.0, 1.0) if stats["method"] == "percentile" else (-3.0, 3.0)
        windows.append((lo, hi, *shown))
        labels.append(channels[c]["label"] if c < len(channels) else f"channel {c}")
    return ngff.omero_metadata(name, windows, labels)


def normalize(in_path: str | Path, out_path: str | Path, stats_path: str | Path, *,
              settings: Normalize | None = None, storage: Ingest | None = None, threads: int = 2) -> dict:
    """Write a float32 normalized copy of an NGFF image and the statistics used (JSON).

    ``settings``: the config's ``normalize`` section, ``storage``: its ``ingest`` section
    (compression, pyramid); None: the schema's defaults."""
    settings, storage = settings or defaults().normalize, storage or defaults().ingest
    method, low, high, scope = settings.method, settings.low, settings.high, settings.scope
    mask_value, clip = settings.mask_value, settings.clip
    compression, pyramid_levels, pyramid_method = storage.compression, storage.pyramid_levels, storage.pyramid_method
    if scope not in SCOPES:
        raise InputError("normalize.scope", f"{scope!r} is not one of {sorted(SCOPES)}")
    if method == "percentile" and not 0 <= low < high <= 100:
        raise InputError("normalize", f"percentiles must satisfy 0 <= low < high <= 100 (got {low}, {high})")
    image = ngff.read_image(in_path)
    stats = compute_statistics(image, method=method, low=low, high=high, scope=scope,
                               mask_value=mask_value, threads=threads)
    axes = image.axes
    by_key = {tuple(sorted(g["group"].items(), key=lambda kv: SCOPES["timepoint"].index(kv[0]))): g for g in stats["groups"]}
    data = image.data

    def write(region):
        key = _group_key(axes, region, scope)
        g = by_key[key]
        block = data[region]
        out = (block.astype(np.float32) - np.float32(g["offset"])) / np.float32(g["divisor"])
        if clip:
            np.clip(out, 0.0, 1.0, out=out)
        if mask_value is not None:
            out[block == mask_value] = 0.0
        ngff.write_block(levels, axes, region, out, pyramid_method)

    with atomic_path(out_path) as tmp:
        group = ngff.open_group(tmp, "w")
        shapes = ngff.pyramid_shapes(axes, data.shape, pyramid_levels)
        levels = ngff.create_levels(group, shapes, data.chunks, np.float32, compression)
        regions = ngff.pyramid_slabs(axes, data.shape, levels[min(1, len(levels) - 1)].chunks, 4)
        for _ in ngff.map_blocks_bounded(write, regions, threads):
            pass
        ngff.write_pyramid(group, axes, shapes, data.chunks, np.float32, compression, threads, pyramid_method, first=2)
        ms = ngff.multiscales_metadata(axes, image.scale, len(shapes), image.attrs["multiscales"][0].get("name", ""), method=pyramid_method)
        group.attrs["multiscales"] = [ms]
        group.attrs["omero"] = _display(image, stats, ms["name"])
        group.attrs["snakescope"] = {"normalize": stats}
    write_json(stats_path, stats)
    log.info("normalized %s -> %s (%s, %d groups)", in_path, out_path, method, len(stats["groups"]))
    return stats
