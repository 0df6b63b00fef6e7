"""Tracking benchmark: our LAP linker against laptrack and trackpy on the same detections.

Run from the repository root: ``.venv/main/bin/python bench/track.py``. Prints progress to
stderr and ONE JSON object as the last line of stdout.

Data (seeded, :func:`simulate`): 2D+t, 100 frames, a 1 mm x 1 mm field at 0.5 um per pixel,
800 cells at the start moving as persistent random walks (about 2.4 um per frame) with a
short-range repulsion (cells do not overlap), 500 divisions (daughters placed 3 um either
side of the mother, along a random axis), then every detection is dropped with probability
2 % and the kept ones get 0.3 um of Gaussian positional noise: 102,180 detections.

Linkers, all with the same parameters (max 10 um between frames, gaps of up to 2 missing
frames closed within 12 um, mother-daughter distance up to 10 um):

* ours: :func:`snakescope.tracking.linking.link` (divisions on, default alternative costs: a gap
  within its distance is always admissible, see the tracking module docstring; with
  ``laptrack_compatible=True`` it reproduces laptrack's links exactly: keys with the
  suffix ``_ours_laptrack_compatible``);
* laptrack 0.17 with its default alternative costs: ``LapTrack(cutoff=10**2,
  gap_closing_cutoff=12**2, gap_closing_max_frame_count=3, splitting_cutoff=10**2,
  merging_cutoff=False).predict(coords)`` on per-frame coordinate arrays (um); its graph
  edges are then turned into our Tracks (~10 ms, timed). We time ``predict``, not
  ``predict_dataframe``, whose networkx -> DataFrame conversion alone takes longer than the
  linking (the issue measured 86 % of 31 s), so laptrack's time here is its best case;
* trackpy 0.7: ``trackpy.link(df, search_range=10, memory=2)`` (um coordinates). trackpy
  has no divisions: a mother continues as one daughter and the other starts a new track.
  Its search range is the same 10 um; gap closing uses the same radius (trackpy has no
  separate one).

Each linker runs once on the first 5 frames before timing (imports, numba compilation of
trackpy, first-call costs), then once timed on everything (``time.perf_counter``, wall, one
process, the three in the same run on the same detections). The machine is shared: wall
times vary run to run (we saw 2x for all three), compare them within one run.

Scoring (:func:`snakescope.tracking.ctc.evaluate_detections`): no masks are rasterised. Result and
ground truth label the same detections, so every detection is matched to itself and
py-ctcmetrics counts the AOGM graph operations (Matula et al. 2015) exactly as for a CTC
folder: TRA = 1 - AOGM / AOGM_0 with the CTC weights. The ground-truth graph is the true
lineage restricted to the detections that were kept: a track that lost a detection
continues across the gap as a new CTC track whose parent is the interrupted one, which is
also how every linker's result is written (so a correctly closed gap scores as a correct
edge, and a missed one as a missing edge). Divisions: CTC branching correctness with
tolerance 0 frames (mother and both daughters matched, same frames): precision, recall,
F1. Because the simulated detections are all true, DET is 1 for everybody; TRA differences
are purely linking errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from snakescope.settings import defaults  # noqa: E402
from snakescope.tracking.ctc import evaluate_detections  # noqa: E402
from snakescope.tracking.linking import Tracks, link, tracks_from_links  # noqa: E402

PIXEL_UM = 0.5
MAX_DISTANCE_UM = 10.0
GAP_DISTANCE_UM = 12.0
DIVISION_DISTANCE_UM = 10.0
MAX_GAP = 2
SETTINGS = defaults().tracking.replace(
    max_distance=MAX_DISTANCE_UM,
    max_gap=MAX_GAP,
    gap_max_distance=GAP_DISTANCE_UM,
    divisions=True,
    division_max_distance=DIVISION_DISTANCE_UM,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def simulate(
    *,
    n_frames: int = 100,
    n_cells: int = 800,
    n_divisions: int = 500,
    field_um: float = 1000.0,
    drop: float = 0.02,
    noise_um: float = 0.3,
    seed: int = 0,
):
    """Point detections with known lineage.

    Returns ``(detections, truth_rows, lineage)``: detections ``t, y, x`` in pixels (kept
    ones only, sorted by t), the true cell id per detection, and the true CTC table of the
    cells (label, begin, end, parent) over all frames, dropped detections included.
    """
    rng = np.random.default_rng(seed)
    from scipy.spatial import cKDTree

    # Initial positions at least 10 um apart.
    pos = np.empty((0, 2))
    while len(pos) < n_cells:
        candidate = rng.uniform(0, field_um, 2)
        if len(pos) == 0 or np.min(np.hypot(*(pos - candidate).T)) >= 10.0:
            pos = np.vstack([pos, candidate])
    vel = rng.normal(0, 1.0, pos.shape)
    cell = np.arange(1, n_cells + 1)
    age = np.full(n_cells, 3)
    lineage = {int(c): [int(c), 0, -1, 0] for c in cell}
    next_label = n_cells + 1
    records = []
    remaining = n_divisions
    for t in range(n_frames):
        records.append(np.column_stack([np.full(len(cell), t), pos, cell]))
        if t == n_frames - 1:
            break
        # Divisions at transition t -> t+1, spread evenly over the remaining transitions.
        eligible = np.flatnonzero(age >= 3)
        k = min(
            len(eligible),
            rng.binomial(len(eligible), min(1.0, remaining / max(1, (n_frames - 1 - t)) / max(1, len(eligible)))),
        )
        dividing = rng.choice(eligible, size=k, replace=False) if k else np.array([], int)
        remaining -= k
        # Move everybody: persistent random walk plus repulsion within 8 um.
        vel = 0.7 * vel + rng.normal(0, 1.2, vel.shape)
        new = pos + vel
        pairs = cKDTree(new).query_pairs(8.0, output_type="ndarray")
        if len(pairs):
            delta = new[pairs[:, 0]] - new[pairs[:, 1]]
            dist = np.maximum(np.linalg.norm(delta, axis=1, keepdims=True), 1e-6)
            push = 0.5 * (8.0 - dist) * delta / dist
            np.add.at(new, pairs[:, 0], push)
            np.add.at(new, pairs[:, 1], -push)
        low, high = new < 0, new > field_um
        new = np.where(low, -new, np.where(high, 2 * field_um - new, new))
        vel = np.where(low | high, -vel, vel)
        keep = np.ones(len(cell), bool)
        keep[dividing] = False
        daughters_pos, daughters_cell, daughters_vel = [], [], []
        for index in dividing:
            mother = int(cell[index])
            lineage[mother][2] = t
            angle = rng.uniform(0, 2 * np.pi)
            axis = np.array([np.cos(angle), np.sin(angle)])
            for sign in (1, -1):
                daughters_pos.append(np.clip(pos[index] + sign * 3.0 * axis, 0, field_um))
                daughters_vel.append(sign * 0.5 * axis)
                daughters_cell.append(next_label)
                lineage[next_label] = [next_label, t + 1, -1, mother]
                next_label += 1
        pos = np.concatenate([new[keep], np.array(daughters_pos).reshape(-1, 2)])
        vel = np.concatenate([vel[keep], np.array(daughters_vel).reshape(-1, 2)])
        cell = np.concatenate([cell[keep], np.array(daughters_cell, dtype=int)])
        age = np.concatenate([age[keep] + 1, np.zeros(len(daughters_cell), int)])
    for c in cell:
        lineage[int(c)][2] = n_frames - 1
    everything = np.concatenate(records)
    kept = everything[rng.random(len(everything)) >= drop]
    noisy = kept[:, 1:3] + rng.normal(0, noise_um, (len(kept), 2))
    detections = pd.DataFrame(
        {"t": kept[:, 0].astype(np.int64), "y": noisy[:, 0] / PIXEL_UM, "x": noisy[:, 1] / PIXEL_UM}
    )
    truth = kept[:, 3].astype(np.int64)
    table = pd.DataFrame(sorted(lineage.values()), columns=["label", "begin", "end", "parent"])
    return detections, truth, table


def truth_links(detections: pd.DataFrame, truth: np.ndarray, lineage: pd.DataFrame):
    """True links between kept detections: same cell in its next kept frame, or mother -> daughter."""
    t = detections["t"].to_numpy()
    order = np.lexsort((t, truth))
    same = truth[order][1:] == truth[order][:-1]
    children = [order[1:][same]]
    parents = [order[:-1][same]]
    first = np.ones(len(order), bool)
    first[1:] = ~same
    last = np.ones(len(order), bool)
    last[:-1] = ~same
    last_row = dict(zip(truth[order][last], order[last]))
    parent_of = dict(zip(lineage["label"], lineage["parent"]))
    extra_c, extra_p = [], []
    for row in order[first]:
        mother = parent_of[int(truth[row])]
        if mother and mother in last_row:
            extra_c.append(row)
            extra_p.append(last_row[mother])
    children.append(np.array(extra_c, dtype=np.int64))
    parents.append(np.array(extra_p, dtype=np.int64))
    return np.concatenate(children), np.concatenate(parents)


def run_ours(detections: pd.DataFrame) -> Tracks:
    return link(detections, SETTINGS, voxel_size=(PIXEL_UM, PIXEL_UM))


def run_ours_compatible(detections: pd.DataFrame) -> Tracks:
    """Ours with laptrack's alternative costs: the same links as laptrack, our speed."""
    return link(detections, SETTINGS, voxel_size=(PIXEL_UM, PIXEL_UM), laptrack_compatible=True)


def run_laptrack(detections: pd.DataFrame) -> Tracks:
    from laptrack import LapTrack

    t = detections["t"].to_numpy()
    order = np.argsort(t, kind="stable")
    n_frames = int(t.max()) + 1
    bounds = np.searchsorted(t[order], np.arange(n_frames + 1))
    um = detections[["y", "x"]].to_numpy() * PIXEL_UM
    coords = [um[order[bounds[k] : bounds[k + 1]]] for k in range(n_frames)]
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=MAX_DISTANCE_UM**2,
        gap_closing_metric="sqeuclidean",
        gap_closing_cutoff=GAP_DISTANCE_UM**2,
        gap_closing_max_frame_count=MAX_GAP + 1,
        splitting_metric="sqeuclidean",
        splitting_cutoff=DIVISION_DISTANCE_UM**2,
        merging_cutoff=False,
    )
    graph = tracker.predict(coords)
    edges = np.array([(a[0], a[1], b[0], b[1]) for a, b in graph.edges()], dtype=np.int64).reshape(-1, 4)
    parents = order[bounds[edges[:, 0]] + edges[:, 1]]
    children = order[bounds[edges[:, 2]] + edges[:, 3]]
    return tracks_from_links(detections, children, parents, voxel_size=(PIXEL_UM, PIXEL_UM))


def run_trackpy(detections: pd.DataFrame) -> Tracks:
    import trackpy

    frame = pd.DataFrame(
        {
            "frame": detections["t"].to_numpy(),
            "y": detections["y"].to_numpy() * PIXEL_UM,
            "x": detections["x"].to_numpy() * PIXEL_UM,
        }
    )
    linked = trackpy.link(frame, search_range=MAX_DISTANCE_UM, memory=MAX_GAP, pos_columns=["y", "x"], t_column="frame")
    particle = linked["particle"].to_numpy()
    t = linked["frame"].to_numpy()
    rows = linked.index.to_numpy()  # trackpy keeps the input index (0..n-1 here)
    order = np.lexsort((t, particle))
    same = particle[order][1:] == particle[order][:-1]
    return tracks_from_links(detections, rows[order[1:][same]], rows[order[:-1][same]], voxel_size=(PIXEL_UM, PIXEL_UM))


def main() -> None:
    logging.getLogger("trackpy").setLevel(logging.WARNING)
    import trackpy

    trackpy.quiet()
    start = time.perf_counter()
    detections, truth, lineage = simulate()
    children, parents = truth_links(detections, truth, lineage)
    reference = tracks_from_links(detections, children, parents)
    n_frames = int(detections["t"].max()) + 1
    n_true = int((lineage["parent"] > 0).sum() // 2)
    log(f"simulated {len(detections)} detections, {n_true} divisions in {time.perf_counter() - start:.1f} s")

    result: dict = {"n_detections": int(len(detections)), "n_frames": n_frames, "n_divisions": reference.n_divisions}
    warmup = detections[detections["t"] < 5].reset_index(drop=True)
    runners = (
        ("", run_ours),
        ("_ours_laptrack_compatible", run_ours_compatible),
        ("_laptrack", run_laptrack),
        ("_trackpy", run_trackpy),
    )
    for suffix, runner in runners:
        runner(warmup)
        began = time.perf_counter()
        tracks = runner(detections)
        seconds = time.perf_counter() - began
        scores = evaluate_detections(
            detections["t"].to_numpy(),
            reference.detection_track,
            reference.lineage,
            tracks.detection_track,
            tracks.lineage,
            n_frames=n_frames,
        )
        log(
            f"linker{suffix or '_ours'}: {seconds:.3f} s, TRA {scores['TRA']:.5f}, divisions P/R "
            f"{scores['division_precision']:.3f}/{scores['division_recall']:.3f}, valid {scores['valid']}"
        )
        result[f"seconds{suffix}"] = round(seconds, 4)
        result[f"tra{suffix}"] = round(scores["TRA"], 6)
        for key in ("division_f1", "division_precision", "division_recall"):
            value = scores[key]
            result[f"{key}{suffix}"] = None if value != value else round(value, 4)
        result[f"n_tracks{suffix}"] = tracks.n_tracks
    print(json.dumps(result))


if __name__ == "__main__":
    main()
