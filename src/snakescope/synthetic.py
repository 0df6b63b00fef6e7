"""Seeded synthetic fluorescence time-lapses of nuclei with full ground truth.

The demo and the tests of the workflow (ingest, segmentation, classification, tracking) need
data whose answer is known. :func:`make_timelapse` simulates nuclei that move, rotate and
divide, renders them through a simple camera model and returns the image together with
instance labels, a Cell Tracking Challenge (CTC) lineage table, per-track classes and
per-object centroids. :func:`write_timelapse` stores all of it in the file formats the
workflow ingests (ImageJ hyperstack TIFF, CTC ``TRA`` folder, napari points CSV).

Model, in short
---------------
* Positions live in pixel coordinates, sizes in micrometres, so that 3D nuclei (voxel
  ``(2.0, 0.5, 0.5)`` by default) come out flatter in pixel units like in a real stack.
* Every track has one class; each class has its own morphology (see :data:`CLASS_STYLES`):
  the first class name gets the "round" style (small, round, bright, smooth), the second the
  "elongated" one (larger, elongated, dimmer, textured with nucleoli), further classes get
  further styles. Daughters inherit the class of their mother (documented choice: a lineage
  keeps its phenotype) but draw a fresh shape, 15 % smaller.
* Objects keep a gap of one voxel plus :data:`MIN_GAP_UM` between their bounding spheres, so
  label masks never overlap nor touch (not even diagonally); a move that would break this is
  retried and finally skipped.
* Camera: counts = ``CAMERA_OFFSET + Poisson(illumination * (signal + background)) +
  Normal(0, read_noise)``, rounded and clipped to ``[1, 65535]``; 0 is reserved for the
  blanked band, which the microscope leaves at exactly 0 in every frame and channel.

Only numpy, scipy and pandas are imported at module level; tifffile is imported on write.

The module is longer than the project's usual 600 lines on purpose: the simulation, its
rendering and the writing of its ground truth share one model of a cell (`_Cell`) and one
seeded random stream, and read best in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "CAMERA_OFFSET",
    "CLASS_STYLES",
    "SyntheticTimelapse",
    "camera_noise",
    "make_timelapse",
    "write_timelapse",
]

#: Constant camera offset (counts) added before noise; it carries no shot noise.
CAMERA_OFFSET = 100.0
#: Background fluorescence, as a fraction of ``photons``, under the illumination gradient.
BACKGROUND_FRACTION = 0.2
#: Peak-to-peak relative amplitude of the linear illumination gradient across the field.
ILLUMINATION_GRADIENT = 0.3
#: Minimal gap (um) between the bounding spheres of two nuclei, on top of one voxel per axis
#: (so that even in coarse z no voxel of one nucleus touches a voxel of another).
MIN_GAP_UM = 0.5
#: Width (um) of the soft nuclear edge; the label boundary sits at half maximum.
EDGE_UM = 0.35
#: Linear size factor of daughters relative to a fresh cell of their class.
DAUGHTER_SCALE = 0.85
#: A cell may divide only once it has been seen in this many frames.
MIN_FRAMES_BEFORE_DIVISION = 3

DEFAULT_SHAPE_2D = (128, 128)
DEFAULT_SHAPE_3D = (16, 96, 96)
VOXEL_SIZE_2D = (0.5, 0.5)
VOXEL_SIZE_3D = (2.0, 0.5, 0.5)


@dataclass(frozen=True)
class ClassStyle:
    """Morphology and appearance of one object class (sizes in micrometres)."""

    radius_um: float  # equivalent radius sqrt(a*b)
    aspect: tuple[float, float]  # range of major/minor axis ratio
    brightness: float  # relative nuclear intensity
    texture: float  # relative amplitude of the smooth internal texture
    nucleoli: tuple[int, int]  # range (inclusive) of bright nucleoli spots


#: Styles given to the class names in order; cycled (and dimmed) beyond the end.
CLASS_STYLES: tuple[ClassStyle, ...] = (
    ClassStyle(radius_um=3.0, aspect=(1.0, 1.15), brightness=1.0, texture=0.06, nucleoli=(0, 0)),
    ClassStyle(radius_um=3.8, aspect=(1.8, 2.3), brightness=0.55, texture=0.3, nucleoli=(1, 3)),
    ClassStyle(radius_um=4.4, aspect=(1.0, 1.2), brightness=0.4, texture=0.2, nucleoli=(2, 4)),
    ClassStyle(radius_um=2.6, aspect=(1.6, 2.0), brightness=1.3, texture=0.1, nucleoli=(0, 1)),
)

_Z_RATIO = 0.9  # z semi-axis / equivalent xy radius (physical): nuclei are a bit flat
_N_WAVES = 6  # plane waves summed into the internal texture
_NUCLEOLUS_SIGMA_UM = 0.5
_RING_INNER, _RING_OUTER = 1.15, 1.9  # cytoplasmic ring, in units of the nuclear semi-axes
_RING_BRIGHTNESS = 0.35


@dataclass
class SyntheticTimelapse:
    """A synthetic time-lapse and its ground truth.

    ``labels`` carry the track id as label value (CTC convention), ``tracks`` is the CTC
    ``man_track`` table, ``points`` has one row per object per frame with the centroid of its
    label mask (pixel units, axes ``t, (z,) y, x``).
    """

    image: np.ndarray
    axes: str
    labels: np.ndarray
    tracks: pd.DataFrame
    classes: pd.DataFrame
    points: pd.DataFrame
    voxel_size: tuple
    class_names: tuple
    seed: int = 0  # the generator seed; also seeds the sparse annotation subset on write
    blank_mask: np.ndarray | None = field(default=None, repr=False)  # (Y, X) True = blanked

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.labels.ndim - 1

    @property
    def n_frames(self) -> int:
        return self.labels.shape[0]


@dataclass
class _Cell:
    """State of one simulated nucleus (one track)."""

    label: int
    class_index: int
    begin: int
    parent: int
    semi_axes_um: np.ndarray  # (a, b, c): major, minor in the xy plane, and along z
    theta: float  # orientation of the major axis in the xy plane (radians from x towards y)
    center: np.ndarray  # pixel coordinates, (z,) y, x
    velocity: np.ndarray  # pixels per frame
    brightness: float
    texture_amplitude: float
    wave_vectors: np.ndarray  # (_N_WAVES, 3) in rad/um, local (u, v, w) frame
    wave_phases: np.ndarray
    nucleoli_um: np.ndarray  # (n, 3) local positions
    nucleoli_amplitude: np.ndarray
    end: int = -1

    @property
    def bound_radius_um(self) -> float:
        return float(self.semi_axes_um.max())


def make_timelapse(
    *,
    ndim: int = 2,
    n_frames: int = 10,
    shape: tuple[int, ...] | None = None,
    n_cells: int = 12,
    n_channels: int = 1,
    class_names: tuple[str, ...] = ("round", "elongated"),
    division_probability: float = 0.03,
    photons: float = 60.0,
    read_noise: float = 3.0,
    blank_fraction: float = 0.1,
    seed: int = 0,
) -> SyntheticTimelapse:
    """Simulate a fluorescence time-lapse of nuclei with ground truth.

    Parameters
    ----------
    ndim : 2 or 3 spatial dimensions.
    n_frames : number of time points.
    shape : spatial shape, default ``(128, 128)`` in 2D and ``(16, 96, 96)`` in 3D.
    n_cells : number of nuclei in the first frame (classes assigned in equal shares).
    n_channels : 1 (nuclear stain) or 2 (channel 1: dimmer cytoplasmic ring around nuclei).
    class_names : one name per morphological class, see :data:`CLASS_STYLES`.
    division_probability : per cell and frame, for cells seen in at least 3 frames.
    photons : mean expected photon count inside nuclei (channel 0).
    read_noise : sigma of the Gaussian read noise, in counts.
    blank_fraction : fraction of the field covered by a band of exact zeros at one image
        edge (chosen by the seed), identical in all frames and channels; 0 disables it.
    seed : seed of the only random generator used; same arguments give identical output.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if n_channels not in (1, 2):
        raise ValueError(f"n_channels must be 1 or 2, got {n_channels}")
    if n_frames < 1 or n_cells < 1:
        raise ValueError("n_frames and n_cells must be >= 1")
    class_names = tuple(str(name) for name in class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {class_names}")
    if not 0.0 <= blank_fraction < 0.5:
        raise ValueError(f"blank_fraction must be in [0, 0.5), got {blank_fraction}")
    if shape is None:
        shape = DEFAULT_SHAPE_2D if ndim == 2 else DEFAULT_SHAPE_3D
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise ValueError(f"shape {shape} does not have {ndim} dimensions")
    voxel_size = VOXEL_SIZE_2D if ndim == 2 else VOXEL_SIZE_3D

    rng = np.random.default_rng(seed)
    blank_mask, blank_box = _blank_band(shape[-2:], blank_fraction, rng)
    sim = _Simulation(shape, np.asarray(voxel_size, float), blank_box, len(class_names), rng)
    frames = sim.run(n_cells, n_frames, division_probability)

    labels, signal = _render(frames, sim.cells, shape, voxel_size, n_channels)
    image = _camera(signal, labels, blank_mask, photons, read_noise, rng)

    spatial_axes = "YX" if ndim == 2 else "ZYX"
    if n_channels == 1:
        image = image[:, 0]
        axes = "T" + spatial_axes
    else:
        axes = "TC" + spatial_axes

    cells = sorted(sim.cells.values(), key=lambda cell: cell.label)
    tracks = pd.DataFrame(
        {
            "label": [c.label for c in cells],
            "begin": [c.begin for c in cells],
            "end": [c.end for c in cells],
            "parent": [c.parent for c in cells],
        },
        dtype=np.int64,
    )
    classes = pd.DataFrame(
        {
            "label": np.array([c.label for c in cells], dtype=np.int64),
            "class_name": [class_names[c.class_index] for c in cells],
        }
    )
    points = _label_centroids(labels, dict(zip(classes["label"], classes["class_name"])))
    return SyntheticTimelapse(
        image=image,
        axes=axes,
        labels=labels,
        tracks=tracks,
        classes=classes,
        points=points,
        voxel_size=tuple(voxel_size),
        class_names=class_names,
        seed=seed,
        blank_mask=blank_mask,
    )


def _blank_band(yx_shape, fraction, rng):
    """A band of ``fraction`` of the field along one (seeded) image edge.

    Returns the (Y, X) mask and, for the simulation, the blanked extent per spatial axis as
    ``{axis: (low_px, high_px)}`` pixels excluded at the low/high end of y (0) or x (1).
    """
    edge = int(rng.integers(4))  # 0: top, 1: bottom, 2: left, 3: right
    mask = np.zeros(yx_shape, dtype=bool)
    axis = 0 if edge < 2 else 1
    width = int(round(fraction * yx_shape[axis]))
    excluded = {0: (0, 0), 1: (0, 0)}
    if width > 0:
        index = [slice(None), slice(None)]
        if edge % 2 == 0:
            index[axis] = slice(0, width)
            excluded[axis] = (width, 0)
        else:
            index[axis] = slice(yx_shape[axis] - width, None)
            excluded[axis] = (0, width)
        mask[tuple(index)] = True
    return mask, excluded


class _Simulation:
    """Placement, motion and divisions of the nuclei; rendering happens afterwards."""

    def __init__(self, shape, voxel, blank_box, n_classes, rng):
        self.shape = np.asarray(shape, float)
        self.ndim = len(shape)
        self.voxel = voxel
        self.blank_box = blank_box
        self.n_classes = n_classes
        self.rng = rng
        self.cells: dict[int, _Cell] = {}
        self.alive: list[int] = []
        self._next_label = 1

    # -- cells -------------------------------------------------------------------------
    def _new_cell(self, class_index, begin, parent, scale=1.0) -> _Cell:
        rng = self.rng
        n_styles = len(CLASS_STYLES)
        style = CLASS_STYLES[class_index % n_styles]
        dimming = 0.8 ** (class_index // n_styles)  # beyond the table: same shapes, dimmer
        radius = style.radius_um * scale * float(np.clip(1 + 0.07 * rng.standard_normal(), 0.85, 1.15))
        aspect = rng.uniform(*style.aspect)
        semi_axes = np.array([radius * math.sqrt(aspect), radius / math.sqrt(aspect), radius * _Z_RATIO])
        # Random directions (3D, or in the uv plane for 2D) and wavelengths of 1.5-3 um.
        directions = rng.standard_normal((_N_WAVES, 3))
        if self.ndim == 2:
            directions[:, 2] = 0.0
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wave_vectors = directions * (2 * np.pi / rng.uniform(1.5, 3.0, _N_WAVES))[:, None]
        n_nucleoli = int(rng.integers(style.nucleoli[0], style.nucleoli[1] + 1))
        # Nucleoli within half the semi-axes, i.e. well inside the nucleus.
        spots = rng.uniform(-0.5, 0.5, (n_nucleoli, 3)) * semi_axes
        if self.ndim == 2:
            spots[:, 2] = 0.0
        cell = _Cell(
            label=self._next_label,
            class_index=class_index,
            begin=begin,
            parent=parent,
            semi_axes_um=semi_axes,
            theta=float(rng.uniform(0, np.pi)),
            center=np.zeros(self.ndim),
            velocity=np.zeros(self.ndim),
            brightness=style.brightness * dimming * float(np.clip(1 + 0.1 * rng.standard_normal(), 0.7, 1.3)),
            texture_amplitude=style.texture,
            wave_vectors=wave_vectors,
            wave_phases=rng.uniform(0, 2 * np.pi, _N_WAVES),
            nucleoli_um=spots,
            nucleoli_amplitude=rng.uniform(0.6, 1.0, n_nucleoli),
        )
        return cell

    def _register(self, cell: _Cell) -> None:
        self._next_label += 1
        self.cells[cell.label] = cell
        self.alive.append(cell.label)

    def _bounds(self, cell: _Cell):
        """Allowed range of the centre (pixels): whole object inside the image, off the blank."""
        xy_margin = cell.bound_radius_um / self.voxel[-1] + 2.0
        low = np.full(self.ndim, xy_margin)
        high = self.shape - 1 - xy_margin
        if self.ndim == 3:
            z_margin = cell.semi_axes_um[2] / self.voxel[0] + 0.5
            low[0], high[0] = z_margin, self.shape[0] - 1 - z_margin
        for axis, (blank_low, blank_high) in self.blank_box.items():
            low[self.ndim - 2 + axis] += blank_low
            high[self.ndim - 2 + axis] -= blank_high
        return low, high

    def _fits(self, cell: _Cell, center, ignore=()) -> bool:
        """Whether ``cell`` at ``center`` keeps its distance to all other living cells."""
        low, high = self._bounds(cell)
        if np.any(center < low) or np.any(center > high):
            return False
        for label in self.alive:
            if label == cell.label or label in ignore:
                continue
            other = self.cells[label]
            if not self._apart(cell, center, other, other.center):
                return False
        return True

    def _apart(self, cell, center, other, other_center) -> bool:
        """Bounding spheres separated by MIN_GAP_UM after shrinking the offset by one voxel.

        Voxels of two masks can only touch (26-connectivity) when the centres of the spheres
        are within one voxel per axis of overlapping, hence the per-axis shrink.
        """
        offset_um = np.abs(center - other_center) * self.voxel
        separation = np.linalg.norm(np.maximum(offset_um - self.voxel, 0.0))
        return separation >= cell.bound_radius_um + other.bound_radius_um + MIN_GAP_UM

    def _max_step(self, cell: _Cell) -> np.ndarray:
        """Per-axis speed limit: under 0.4 of the minor radius so linking stays unambiguous."""
        minor_px = cell.semi_axes_um[1] / self.voxel[-1]
        limit = np.full(self.ndim, min(2.0, 0.4 * minor_px))
        if self.ndim == 3:
            limit[0] = 0.3 * cell.semi_axes_um[2] / self.voxel[0]
        return limit

    # -- dynamics ----------------------------------------------------------------------
    def run(self, n_cells, n_frames, division_probability):
        """Simulate and return, per frame, the snapshots ``(label, center, theta)``."""
        rng = self.rng
        self._place_initial(n_cells)
        frames = [self._snapshot()]
        for t in range(n_frames - 1):
            for label in list(self.alive):
                cell = self.cells[label]
                eligible = t - cell.begin + 1 >= MIN_FRAMES_BEFORE_DIVISION
                if eligible and rng.random() < division_probability and self._divide(cell, t):
                    continue
                self._move(cell)
            frames.append(self._snapshot())
        for label in self.alive:
            self.cells[label].end = n_frames - 1
        return frames

    def _place_initial(self, n_cells, attempts=2000):
        """Random non-overlapping positions; classes in equal shares, labels in raster order."""
        rng = self.rng
        class_indices = rng.permutation(np.arange(n_cells) % self.n_classes)
        cells = [self._new_cell(int(class_index), begin=0, parent=0) for class_index in class_indices]
        # Largest first: random sequential packing jams early when big objects come last.
        for cell in sorted(cells, key=lambda c: -c.bound_radius_um):
            cell.label = self._next_label  # provisional, see below
            low, high = self._bounds(cell)
            if np.any(low > high):
                raise ValueError(f"image {tuple(int(s) for s in self.shape)} too small for the nuclei")
            for _ in range(attempts):
                center = rng.uniform(low, high)
                if self._fits(cell, center):
                    break
            else:
                raise ValueError(
                    f"placed only {len(self.alive)} of {n_cells} nuclei without overlap in"
                    f" {tuple(int(s) for s in self.shape)}; reduce n_cells or enlarge shape"
                )
            cell.center = center
            cell.velocity = rng.standard_normal(self.ndim) * 0.5 * self._max_step(cell)
            self._register(cell)
        # Number the first frame in raster order, as connected-component labelling would, so
        # that label ids carry no hint of class or size.
        self.cells.clear()
        self.alive.clear()
        for label, cell in enumerate(sorted(cells, key=lambda c: tuple(c.center)), start=1):
            cell.label = label
            self.cells[label] = cell
            self.alive.append(label)

    def _move(self, cell: _Cell, attempts=5) -> None:
        """Correlated random walk, reflected at the bounds; stays put if every try collides."""
        rng = self.rng
        limit = self._max_step(cell)
        low, high = self._bounds(cell)
        velocity = cell.velocity
        for attempt in range(attempts):
            kick = rng.standard_normal(self.ndim) * 0.5 * limit
            velocity = (0.6 * velocity + kick) if attempt == 0 else kick / attempt
            velocity = np.clip(velocity, -limit, limit)
            center = cell.center + velocity
            # Reflect at the borders of the allowed box.
            below, above = center < low, center > high
            center = np.where(below, 2 * low - center, np.where(above, 2 * high - center, center))
            velocity = np.where(below | above, -velocity, velocity)
            center = np.clip(center, low, high)
            if self._fits(cell, center):
                cell.center, cell.velocity = center, velocity
                break
        else:
            cell.velocity = np.zeros(self.ndim)
        cell.theta = float(cell.theta + 0.05 * rng.standard_normal())

    def _divide(self, mother: _Cell, t: int, attempts=6) -> bool:
        """Replace ``mother`` (last frame ``t``) by two daughters starting at ``t + 1``."""
        rng = self.rng
        daughters = [
            self._new_cell(mother.class_index, begin=t + 1, parent=mother.label, scale=DAUGHTER_SCALE)
            for _ in range(2)
        ]
        daughters[1].label = daughters[0].label + 1
        for attempt in range(attempts):
            # Cells divide along their long axis; later tries pick random directions.
            angle = mother.theta if attempt == 0 else rng.uniform(0, 2 * np.pi)
            direction = np.zeros(self.ndim)
            direction[-1], direction[-2] = math.cos(angle), math.sin(angle)
            centers = []
            for sign, daughter in zip((1, -1), daughters):
                offset_um = daughter.bound_radius_um + (MIN_GAP_UM + np.linalg.norm(self.voxel[-2:])) / 2 + 0.1
                centers.append(mother.center + sign * offset_um * direction / self.voxel)
            ignore = (mother.label,)
            if all(self._fits(d, c, ignore) for d, c in zip(daughters, centers)) and self._apart(
                daughters[0], centers[0], daughters[1], centers[1]
            ):
                break
        else:
            return False
        mother.end = t
        self.alive.remove(mother.label)
        for daughter, center in zip(daughters, centers):
            daughter.center = center
            daughter.theta = float(angle + np.pi / 2 + 0.3 * rng.standard_normal())
            self._register(daughter)
        return True

    def _snapshot(self):
        return [(label, self.cells[label].center.copy(), self.cells[label].theta) for label in self.alive]


def _render(frames, cells, shape, voxel_size, n_channels):
    """Noise-free signal (T, C, *shape) in relative units and the label image."""
    n_frames = len(frames)
    labels = np.zeros((n_frames, *shape), dtype=np.uint16)
    signal = np.zeros((n_frames, n_channels, *shape), dtype=np.float32)
    voxel = np.asarray(voxel_size, float)
    ndim = len(shape)
    reach = _RING_OUTER + 0.4 if n_channels > 1 else 1.6  # box size in semi-axes
    for t, snapshot in enumerate(frames):
        for label, center, theta in snapshot:
            cell = cells[label]
            radius_px = np.full(ndim, cell.bound_radius_um / voxel[-1])
            if ndim == 3:
                radius_px[0] = cell.semi_axes_um[2] / voxel[0]
            low = np.maximum(np.floor(center - reach * radius_px).astype(int), 0)
            high = np.minimum(np.ceil(center + reach * radius_px).astype(int) + 1, shape)
            box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
            grid = np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij", sparse=True)
            offsets = [(g - c) * v for g, c, v in zip(grid, center, voxel)]  # um
            dy, dx = offsets[-2], offsets[-1]
            dz = offsets[0] if ndim == 3 else 0.0
            cos, sin = math.cos(theta), math.sin(theta)
            u = cos * dx + sin * dy  # along the major axis
            v = -sin * dx + cos * dy
            w = dz + np.zeros_like(u)
            a, b, c = cell.semi_axes_um
            norm = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
            edge = EDGE_UM / min(a, b, c if ndim == 3 else b)

            texture = np.zeros(norm.shape)
            for k, phase in zip(cell.wave_vectors, cell.wave_phases):
                texture += np.cos(k[0] * u + k[1] * v + k[2] * w + phase)
            texture *= math.sqrt(2.0 / len(cell.wave_phases))  # ~unit variance
            spots = np.zeros(norm.shape)
            for (su, sv, sw), amplitude in zip(cell.nucleoli_um, cell.nucleoli_amplitude):
                d2 = (u - su) ** 2 + (v - sv) ** 2 + (w - sw) ** 2
                spots += amplitude * np.exp(-d2 / (2 * _NUCLEOLUS_SIGMA_UM**2))
            inside = _soft_step(norm, 1.0, edge)
            modulation = np.clip(1.0 + cell.texture_amplitude * texture + spots, 0.0, None)
            signal[(t, 0, *box)] += (cell.brightness * inside * modulation).astype(np.float32)

            # The label is the half-maximum contour of the soft edge; gaps guarantee no overlap.
            label_box = labels[(t, *box)]
            label_box[norm <= 1.0] = label

            if n_channels > 1:
                ring = _soft_step(norm, _RING_OUTER, edge) - _soft_step(norm, _RING_INNER, edge)
                ring_signal = _RING_BRIGHTNESS * ring * np.clip(1.0 + 0.15 * texture, 0.0, None)
                signal[(t, 1, *box)] += ring_signal.astype(np.float32)
    return labels, signal


def _soft_step(norm, radius, width):
    """1 inside ``radius`` (in units of the semi-axes), 0 outside, with a tanh edge."""
    return 0.5 * (1.0 - np.tanh((norm - radius) / width))


def _camera(signal, labels, blank_mask, photons, read_noise, rng):
    """Scale to photons, add background and illumination gradient, shot and read noise."""
    n_frames, n_channels = signal.shape[:2]
    spatial = signal.shape[2:]
    yy, xx = np.meshgrid(
        np.linspace(-0.5, 0.5, spatial[-2]), np.linspace(-0.5, 0.5, spatial[-1]), indexing="ij"
    )
    angle = rng.uniform(0, 2 * np.pi)
    illumination = 1.0 + ILLUMINATION_GRADIENT * (math.cos(angle) * xx + math.sin(angle) * yy)
    # Scale such that the mean expected photon count inside the nuclei equals ``photons``.
    lit = signal[:, 0] * illumination
    inside = labels > 0
    mean_inside = float(lit[inside].mean()) if inside.any() else 1.0
    scale = photons / mean_inside
    expected = (signal * scale + BACKGROUND_FRACTION * photons) * illumination
    counts = rng.poisson(expected).astype(np.float64)
    counts += CAMERA_OFFSET + rng.normal(0.0, read_noise, counts.shape)
    image = np.clip(np.rint(counts), 1, np.iinfo(np.uint16).max).astype(np.uint16)
    image[..., blank_mask] = 0
    return image


def camera_noise(clean: np.ndarray, peak: float, read_noise: float, rng) -> np.ndarray:
    """A Poisson-Gaussian camera applied to a clean image scaled to [0, 1]:
    ``(Poisson(peak * clean) + Normal(0, read_noise)) / peak`` (photons at the brightest
    pixel, read noise in photons rms), float32 on the clean image's scale."""
    clean = np.asarray(clean, dtype=np.float64)
    if clean.min() < 0:
        raise ValueError("camera_noise expects a clean image scaled to [0, 1] (found negative values)")
    photons = rng.poisson(peak * clean) + rng.normal(0.0, read_noise, clean.shape)
    return (photons / peak).astype(np.float32)


def _label_centroids(labels, class_of):
    """One row per object per frame: t, (z,) y, x (label centroid), label, class_name."""
    spatial_names = ["y", "x"] if labels.ndim == 3 else ["z", "y", "x"]
    rows = []
    for t, frame in enumerate(labels):
        present = np.unique(frame)
        present = present[present > 0]
        centroids = ndimage.center_of_mass(np.ones(frame.shape), frame, present)
        for label, centroid in zip(present, centroids):
            rows.append((t, *centroid, int(label), class_of[int(label)]))
    points = pd.DataFrame(rows, columns=["t", *spatial_names, "label", "class_name"])
    return points.astype({"t": np.int64, "label": np.int64, **{n: np.float64 for n in spatial_names}})


# -- writing ------------------------------------------------------------------------------


def write_timelapse(sample: SyntheticTimelapse, folder, *, sparse_fraction: float = 0.3) -> dict:
    """Write ``sample`` into ``folder`` (created) in the formats the workflow ingests.

    Files: ``image.tif`` and ``labels.tif`` (ImageJ hyperstacks with spacing in um),
    ``tracks/TRA/man_track.txt`` plus ``man_trackNNN.tif`` (CTC ground truth),
    ``classes.csv`` (label,class_name), ``points_<class>.csv`` (napari points layer, every
    object in every frame) and ``points_sparse_<class>.csv`` (a seeded ~``sparse_fraction``
    subset mimicking sparse human annotation).

    Returns the paths under keys ``image``, ``labels``, ``tracks_dir`` (the ``TRA`` folder),
    ``man_track``, ``classes``, ``points`` and ``points_sparse`` (dicts class -> path), and
    ``image_axes``: the axes string of ``image.tif`` as tifffile reads it back (ImageJ
    order, e.g. ``TZCYX``).
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    voxel = sample.voxel_size
    imagej_kwargs = {"resolution": (1.0 / voxel[-1], 1.0 / voxel[-2])}
    spacing = {"spacing": float(voxel[0])} if len(voxel) == 3 else {}

    # ImageJ hyperstacks are ordered TZCYX: move the channel axis behind Z.
    image, axes = sample.image, sample.axes
    if "C" in axes and "Z" in axes:
        order = [axes.index(a) for a in "TZCYX"]
        image, axes = image.transpose(order), "TZCYX"
    paths: dict = {"image": folder / "image.tif", "labels": folder / "labels.tif"}
    tifffile.imwrite(
        paths["image"], image, imagej=True, metadata={"axes": axes, "unit": "um", **spacing}, **imagej_kwargs
    )
    label_axes = "TYX" if sample.labels.ndim == 3 else "TZYX"
    tifffile.imwrite(
        paths["labels"],
        sample.labels,
        imagej=True,
        metadata={"axes": label_axes, "unit": "um", **spacing},
        **imagej_kwargs,
    )
    with tifffile.TiffFile(paths["image"]) as tif:
        paths["image_axes"] = tif.series[0].axes

    tra = folder / "tracks" / "TRA"
    tra.mkdir(parents=True, exist_ok=True)
    paths["tracks_dir"] = tra
    paths["man_track"] = tra / "man_track.txt"
    lines = [f"{r.label} {r.begin} {r.end} {r.parent}" for r in sample.tracks.itertuples(index=False)]
    paths["man_track"].write_text("\n".join(lines) + "\n")
    digits = max(3, len(str(sample.n_frames - 1)))
    for t, frame in enumerate(sample.labels):
        tifffile.imwrite(tra / f"man_track{t:0{digits}d}.tif", frame)

    paths["classes"] = folder / "classes.csv"
    sample.classes.to_csv(paths["classes"], index=False)

    rng = np.random.default_rng([sample.seed, 7])  # independent of the generator's stream
    coordinate_names = ["t", "y", "x"] if sample.labels.ndim == 3 else ["t", "z", "y", "x"]
    paths["points"], paths["points_sparse"] = {}, {}
    for class_name in sample.class_names:
        rows = sample.points[sample.points["class_name"] == class_name]
        coordinates = rows[coordinate_names].to_numpy(dtype=float)
        paths["points"][class_name] = folder / f"points_{class_name}.csv"
        _write_napari_points(paths["points"][class_name], coordinates)
        n = len(coordinates)
        keep = min(n - 1, max(1, round(sparse_fraction * n))) if n > 1 else n
        subset = np.sort(rng.choice(n, size=keep, replace=False)) if n else np.array([], int)
        paths["points_sparse"][class_name] = folder / f"points_sparse_{class_name}.csv"
        _write_napari_points(paths["points_sparse"][class_name], coordinates[subset])
    return paths


def _write_napari_points(path: Path, coordinates: np.ndarray) -> None:
    """CSV as napari's points writer makes it: ``index,axis-0,...``, index from 0."""
    n_axes = coordinates.shape[1]
    header = ",".join(["index"] + [f"axis-{i}" for i in range(n_axes)])
    lines = [header]
    for index, row in enumerate(coordinates):
        lines.append(",".join([str(index)] + [repr(float(value)) for value in row]))
    path.write_text("\n".join(lines) + "\n")
