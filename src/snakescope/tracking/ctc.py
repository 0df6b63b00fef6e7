"""Cell Tracking Challenge (CTC) format: write and read results, compute TRA/DET/SEG and divisions.

Formats
-------
* Result folder (what :func:`write_ctc_result` writes): ``res_track.txt`` with one line
  ``L B E P`` per track (label, first frame, last frame, parent label or 0; space
  separated) and ``maskTTT.tif`` per frame (uint16, 0 = background, value = track label;
  ``TTTT`` with 4 digits once there are 1000 frames or more, as the CTC tools expect).
* Ground truth folder: ``TRA/man_track.txt`` and ``TRA/man_trackTTT.tif`` (the folder given
  may be the ``TRA`` folder itself or its parent), optionally ``SEG/man_segTTT.tif`` for some
  frames (whole-frame files; per-slice 3D ``man_seg_TTT_ZZZ.tif`` files are not supported).

Metrics
-------
Matching follows the CTC rule (a result object matches a reference object when it covers
more than half of it) and is done here frame by frame, so only two frames are in memory; the
counting of graph operations (AOGM, Matula et al. 2015), TRA, DET, SEG and the division
matching come from py-ctcmetrics (``ctc_metrics``). Divisions: a reference division is found
when a result division matches it by CTC's branching-correctness rule (``BC(i)``, Ulman et al.
2017): the mother tracks and both daughters are matched to each other, with the mothers'
last frames and the daughters' first frames at most ``division_tolerance`` frames apart
(default 0: exactly the same frames). Precision = TP / result divisions, recall = TP /
reference divisions, F1 their harmonic mean (= BC(i)).

:func:`evaluate_detections` computes the same numbers when the result and the reference are
the same detections with two labellings (point tracking, benchmarks): every detection is
matched to itself, no masks are needed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path

__all__ = [
    "CTCData",
    "LINEAGE_COLUMNS",
    "evaluate_ctc",
    "evaluate_detections",
    "evaluate_matched",
    "mask_name",
    "match_frame",
    "read_ctc",
    "read_lineage",
    "summarize_metrics",
    "write_ctc_result",
]

LINEAGE_COLUMNS = ["label", "begin", "end", "parent"]
_MAX_LABEL = 65535  # CTC masks are 16-bit

# AOGM weights of the CTC (Matula et al. 2015), the same as ctc_metrics uses.
_W_NS, _W_FN, _W_FP = 5.0, 10.0, 1.0
_W_ED, _W_EA, _W_EC = 1.0, 1.5, 1.0


def mask_name(t: int, n_frames: int, prefix: str = "mask") -> str:
    """``mask007.tif``; 4 digits (``mask0007.tif``) once there are >= 1000 frames."""
    digits = 4 if n_frames >= 1000 else 3
    return f"{prefix}{t:0{digits}d}.tif"


# -- writing ------------------------------------------------------------------------------


def write_ctc_result(labels, tracks, folder: str | Path, *, source: str = "labels") -> Path:
    """Write a CTC result folder: masks relabelled to track ids and ``res_track.txt``.

    Parameters
    ----------
    labels : the segmentation the detections came from: an array ``(T, [Z,] Y, X)`` (indexed
        one frame at a time, e.g. zarr), a list of frames or any iterable of frames (read
        once, one frame in memory at a time). Objects without a detection in ``tracks``
        become background.
    tracks : :class:`snakescope.tracking.linking.Tracks` whose table has a ``label`` column
        (made by :func:`snakescope.tracking.linking.track_labels`).
    folder : the result folder; written into a temporary sibling and renamed when complete,
        so it appears whole or not at all.

    Returns the folder path.
    """
    import tifffile

    folder = Path(folder)
    table = tracks.table
    if "label" not in table.columns:
        raise InputError(
            source,
            "tracks have no 'label' column: they were not made from a label image, so there are no masks to relabel",
        )
    lineage = tracks.lineage
    if len(lineage) and int(lineage["label"].max()) > _MAX_LABEL:
        raise InputError(
            source, f"{int(lineage['label'].max())} tracks do not fit the 16-bit CTC masks (at most {_MAX_LABEL})"
        )
    n_known = _frame_count(labels)  # None for an iterator: counted while writing
    frames = (labels[t] for t in range(n_known)) if n_known is not None else iter(labels)
    frame_of_row = table["t"].to_numpy(dtype=np.int64)
    last_frame = int(frame_of_row.max()) if len(table) else -1
    if n_known is not None and last_frame >= n_known:
        raise InputError(source, f"tracks reach frame {last_frame} but the labels have {n_known} frames")
    order = np.argsort(frame_of_row, kind="stable")
    sorted_frames = frame_of_row[order]
    seg_labels = table["label"].to_numpy(dtype=np.int64)
    track_ids = table["track_id"].to_numpy(dtype=np.int64)

    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        first_shape = None
        n_written = 0
        for t, frame in enumerate(frames):
            frame = np.asarray(frame)
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                raise InputError(source, f"frame {t} has shape {frame.shape} but frame 0 has shape {first_shape}")
            rows = order[np.searchsorted(sorted_frames, t) : np.searchsorted(sorted_frames, t, side="right")]
            top = int(frame.max()) if frame.size else 0
            if rows.size:
                top = max(top, int(seg_labels[rows].max()))
            lut = np.zeros(top + 1, dtype=np.uint16)
            lut[seg_labels[rows]] = track_ids[rows]
            # Unknown count: 4 digits for now, renamed below if there are fewer than 1000.
            name = mask_name(t, n_known if n_known is not None else 1000)
            tifffile.imwrite(tmp / name, lut[frame], compression="zlib")
            n_written += 1
        if last_frame >= n_written:
            raise InputError(source, f"tracks reach frame {last_frame} but the labels have {n_written} frames")
        if n_known is None and n_written < 1000:
            for t in range(n_written):
                (tmp / mask_name(t, 1000)).rename(tmp / mask_name(t, n_written))
        lines = [f"{r.label} {r.begin} {r.end} {r.parent}" for r in lineage[LINEAGE_COLUMNS].itertuples(index=False)]
        (tmp / "res_track.txt").write_text("".join(line + "\n" for line in lines))
    return folder


def _frame_count(stack) -> int | None:
    if hasattr(stack, "shape"):
        return int(stack.shape[0])
    if isinstance(stack, Sequence):
        return len(stack)
    return None


def _rows_by_frame(t: np.ndarray, n_frames: int) -> list[np.ndarray]:
    order = np.argsort(t, kind="stable")
    bounds = np.searchsorted(t[order], np.arange(n_frames + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(n_frames)]


# -- reading ------------------------------------------------------------------------------


@dataclass
class CTCData:
    """A CTC folder's contents: the lineage table, mask paths (by frame) and the masks."""

    folder: Path
    tracks: pd.DataFrame  # label, begin, end, parent
    mask_paths: list[Path]
    masks: np.ndarray | None = None  # (T, [Z,] Y, X) uint16, when read


_MASK_PATTERNS = (re.compile(r"^mask(\d+)\.tif$"), re.compile(r"^man_track(\d+)\.tif$"))


def _resolve(folder: str | Path) -> tuple[Path, Path, re.Pattern]:
    """(folder, track file, mask pattern) for a result folder or a GT (TRA) folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    if (folder / "res_track.txt").exists():
        return folder, folder / "res_track.txt", _MASK_PATTERNS[0]
    if (folder / "man_track.txt").exists():
        return folder, folder / "man_track.txt", _MASK_PATTERNS[1]
    if (folder / "TRA" / "man_track.txt").exists():
        return folder / "TRA", folder / "TRA" / "man_track.txt", _MASK_PATTERNS[1]
    raise InputError(
        folder, "no res_track.txt, man_track.txt or TRA/man_track.txt: not a CTC result or ground-truth folder"
    )


def read_lineage(path: str | Path) -> pd.DataFrame:
    """A CTC track file (``L B E P`` per line, spaces or tabs) as a DataFrame."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not all(re.fullmatch(r"-?\d+", f) for f in fields):
            raise InputError(path, f"line {number} is not four integers 'L B E P': {line!r}")
        rows.append([int(f) for f in fields])
    return pd.DataFrame(np.asarray(rows, dtype=np.int64).reshape(-1, 4), columns=LINEAGE_COLUMNS)


def _mask_paths(folder: Path, pattern: re.Pattern) -> list[Path]:
    found = {}
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = folder / name
    if not found:
        return []
    n = max(found) + 1
    missing = [t for t in range(n) if t not in found]
    if missing:
        raise InputError(folder, f"mask file(s) for frame(s) {missing[:5]} missing (frames must be 0..{n - 1})")
    return [found[t] for t in range(n)]


def read_ctc(folder: str | Path, *, masks: bool = True) -> CTCData:
    """Read a CTC result folder or ground-truth folder (``TRA`` or its parent).

    Returns :class:`CTCData` with the lineage table and, if ``masks``, the masks stacked to
    ``(T, [Z,] Y, X)`` uint16.
    """
    import tifffile

    folder, track_file, pattern = _resolve(folder)
    lineage = read_lineage(track_file)
    paths = _mask_paths(folder, pattern)
    stack = None
    if masks:
        frames = [tifffile.imread(p) for p in paths]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise InputError(folder, f"masks have differing shapes {sorted(shapes)}")
        stack = np.stack(frames).astype(np.uint16) if frames else np.zeros((0,), np.uint16)
    return CTCData(folder=folder, tracks=lineage, mask_paths=paths, masks=stack)


# -- matching and metrics -----------------------------------------------------------------


def match_frame(reference: np.ndarray, result: np.ndarray):
    """CTC matching of one frame: ``(labels_ref, labels_comp, mapped_ref, mapped_comp, ious)``.

    Same output as ``ctc_metrics.utils.representations.match``: the labels present, then
    the matched pairs (a result object covering more than half of a reference object) and
    their intersection over union. Computed with 64-bit pair codes, so any labels work.
    """
    if reference.shape != result.shape:
        raise InputError("masks", f"reference frame shape {reference.shape} differs from result {result.shape}")
    ref = reference.ravel().astype(np.int64)
    comp = result.ravel().astype(np.int64)
    ref_ids, ref_sizes = np.unique(ref, return_counts=True)
    comp_ids, comp_sizes = np.unique(comp, return_counts=True)
    both = (ref > 0) & (comp > 0)
    scale = int(comp_ids.max()) + 1 if comp_ids.size else 1
    pairs, overlap = np.unique(ref[both] * scale + comp[both], return_counts=True)
    pair_ref, pair_comp = pairs // scale, pairs % scale
    size_ref = ref_sizes[np.searchsorted(ref_ids, pair_ref)]
    size_comp = comp_sizes[np.searchsorted(comp_ids, pair_comp)]
    good = overlap / size_ref > 0.5
    iou = overlap / (size_ref + size_comp - overlap)
    labels_ref = [int(v) for v in ref_ids if v != 0]
    labels_comp = [int(v) for v in comp_ids if v != 0]
    return labels_ref, labels_comp, pair_ref[good].tolist(), pair_comp[good].tolist(), iou[good].tolist()


def evaluate_matched(
    ref_tracks: pd.DataFrame,
    comp_tracks: pd.DataFrame,
    labels_ref: list,
    labels_comp: list,
    mapped_ref: list,
    mapped_comp: list,
    *,
    division_tolerance: int = 0,
) -> dict:
    """TRA, DET, AOGM counts and division precision/recall/F1 from per-frame matches.

    The per-frame lists are those of :func:`match_frame` (one entry per frame, all frames).
    """
    from ctc_metrics.metrics import det, raw_division_metrics, tra
    from ctc_metrics.utils.representations import count_acyclic_graph_correction_operations

    ref = ref_tracks[LINEAGE_COLUMNS].to_numpy(dtype=np.int64).reshape(-1, 4)
    comp = comp_tracks[LINEAGE_COLUMNS].to_numpy(dtype=np.int64).reshape(-1, 4)
    # ctc_metrics indexes these per frame with numpy comparisons: arrays for labels, lists
    # (it calls .count/.index) for the mapped ones.
    # Labels sorted: ctc_metrics locates mapped labels with searchsorted(..., sorter=argsort)
    # and uses the result as a position in the unsorted list, which is right only if sorted.
    labels_ref = [np.sort(np.asarray(x, dtype=np.int64)) for x in labels_ref]
    labels_comp = [np.sort(np.asarray(x, dtype=np.int64)) for x in labels_comp]
    mapped_ref = [list(map(int, x)) for x in mapped_ref]
    mapped_comp = [list(map(int, x)) for x in mapped_comp]
    results: dict = {"n_frames": len(labels_ref)}
    n_ref_vertices = int(sum(len(x) for x in labels_ref))
    if n_ref_vertices == 0:
        raise InputError("ground truth", "has no objects in any frame; nothing to evaluate against")
    ops = count_acyclic_graph_correction_operations(ref, comp, labels_ref, labels_comp, mapped_ref, mapped_comp)
    tra_value, aogm, aogm0 = tra(**ops)
    results["TRA"] = float(tra_value)
    results["DET"] = float(det(**ops))
    results["AOGM"] = float(aogm)
    results["AOGM_0"] = float(aogm0)
    for key in ("NS", "FN", "FP", "ED", "EA", "EC"):
        results[f"AOGM_{key}"] = int(ops[key])
    results["num_vertices"] = int(ops["num_vertices"])
    results["num_edges"] = int(ops["num_edges"])
    tp, fp, fn = raw_division_metrics(comp, ref, mapped_ref, mapped_comp, i=int(division_tolerance))
    results.update(_division_scores(int(tp), int(fp), int(fn)))
    results["division_tolerance"] = int(division_tolerance)
    return results


def _division_scores(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    if tp + fp + fn == 0:
        f1 = math.nan
    else:
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        "division_tp": tp,
        "division_fp": fp,
        "division_fn": fn,
        "division_precision": precision,
        "division_recall": recall,
        "division_f1": f1,
    }


def evaluate_ctc(
    result: str | Path,
    ground_truth: str | Path,
    *,
    division_tolerance: int = 0,
    seg: str = "auto",
) -> dict:
    """Compare a CTC result folder with a ground-truth folder; returns a dict of metrics.

    Keys: ``TRA``, ``DET``, ``SEG`` (None when not computed), ``AOGM``, ``AOGM_0``,
    ``AOGM_{NS,FN,FP,ED,EA,EC}``, ``num_vertices``, ``num_edges``, ``division_{tp,fp,fn,
    precision,recall,f1}``, ``division_tolerance``, ``n_frames``, ``valid`` (the CTC
    validity check of the result: 1 or 0), ``seg_reference`` and, for pooling,
    ``seg_n_reference`` and ``seg_iou_sum``.

    ``seg``: ``"auto"`` uses ``SEG/man_seg*.tif`` beside ``TRA`` when present (else no
    SEG), ``"TRA"`` scores against the ``TRA`` masks (meaningful only when they are full
    segmentations, as in synthetic data), ``"none"`` skips it.
    """
    import tifffile

    res_folder, res_track_file, res_pattern = _resolve(result)
    gt_folder, gt_track_file, gt_pattern = _resolve(ground_truth)
    if res_track_file.name != "res_track.txt":
        raise InputError(result, "is not a result folder (no res_track.txt)")
    comp_tracks = read_lineage(res_track_file)
    ref_tracks = read_lineage(gt_track_file)
    res_paths = _mask_paths(res_folder, res_pattern)
    gt_paths = _mask_paths(gt_folder, gt_pattern)
    if not gt_paths:
        raise InputError(gt_folder, "has no man_trackTTT.tif masks")
    if len(res_paths) != len(gt_paths):
        raise InputError(
            res_folder,
            f"the result has {len(res_paths)} frames but the ground truth {gt_folder} has {len(gt_paths)};"
            " they must cover the same frames",
        )
    seg_paths: dict[int, Path] = {}
    seg_reference = None
    if seg == "TRA":
        seg_paths, seg_reference = dict(enumerate(gt_paths)), "TRA"
    elif seg == "auto":
        seg_folder = gt_folder.parent / "SEG"
        if seg_folder.is_dir():
            for name in os.listdir(seg_folder):
                m = re.match(r"^man_seg(\d+)\.tif$", name)
                if m:
                    seg_paths[int(m.group(1))] = seg_folder / name
            seg_reference = "SEG" if seg_paths else None
    elif seg != "none":
        raise InputError("seg", f"must be 'auto', 'TRA' or 'none', got {seg!r}")

    labels_ref, labels_comp, mapped_ref, mapped_comp = [], [], [], []
    seg_count, seg_sum = 0, 0.0
    for t, (gt_path, res_path) in enumerate(zip(gt_paths, res_paths)):
        reference, computed = tifffile.imread(gt_path), tifffile.imread(res_path)
        if reference.shape != computed.shape:
            raise InputError(
                res_path, f"has shape {computed.shape} but the ground truth {gt_path.name} has {reference.shape}"
            )
        lr, lc, mr, mc, _ = match_frame(reference, computed)
        labels_ref.append(lr)
        labels_comp.append(lc)
        mapped_ref.append(mr)
        mapped_comp.append(mc)
        if t in seg_paths:
            seg_mask = reference if seg_reference == "TRA" else tifffile.imread(seg_paths[t])
            slr, _, _, _, ious = match_frame(seg_mask, computed)
            seg_count += len(slr)
            seg_sum += float(np.sum(ious))
    results = evaluate_matched(
        ref_tracks, comp_tracks, labels_ref, labels_comp, mapped_ref, mapped_comp, division_tolerance=division_tolerance
    )
    results["valid"] = _valid(comp_tracks, labels_comp)
    results["seg_reference"] = seg_reference
    results["seg_n_reference"] = seg_count
    results["seg_iou_sum"] = seg_sum
    results["SEG"] = seg_sum / seg_count if seg_reference and seg_count else None
    return results


def _valid(comp_tracks: pd.DataFrame, labels_comp: list) -> int:
    """CTC validity of a result (the rules of ``ctc_metrics.metrics.valid``), 1 or 0.

    Parents are >= 0 and exist, labels are unique, a track ends no earlier than it begins and
    after its parent ends, and each frame holds exactly the labels whose tracks span it.
    Vectorised: ctc_metrics' own check is quadratic in the objects per frame.
    """
    tracks = comp_tracks[LINEAGE_COLUMNS].to_numpy(dtype=np.int64).reshape(-1, 4)
    if len(tracks) == 0:
        return 0
    label, begin, end, parent = tracks.T
    if np.any(parent < 0) or np.unique(label).size != label.size or np.any(end < begin) or np.any(begin < 0):
        return 0
    end_of = dict(zip(label.tolist(), end.tolist()))
    for child_begin, p in zip(begin[parent > 0].tolist(), parent[parent > 0].tolist()):
        if p not in end_of or end_of[p] >= child_begin:
            return 0
    # Expected (frame, label) pairs from the table versus those present in the masks.
    spans = end - begin + 1
    expected_t = np.repeat(begin, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
    expected = np.sort(expected_t * (int(label.max()) + 1) + np.repeat(label, spans))
    present_t = np.concatenate(
        [np.full(len(x), t, dtype=np.int64) for t, x in enumerate(labels_comp)] or [np.zeros(0, np.int64)]
    )
    present_l = np.concatenate([np.asarray(x, dtype=np.int64) for x in labels_comp] or [np.zeros(0, np.int64)])
    if present_l.size and int(present_l.max()) > int(label.max()):
        return 0
    present = np.sort(present_t * (int(label.max()) + 1) + present_l)
    return int(np.array_equal(expected, present))


def evaluate_detections(
    t: np.ndarray,
    ref_track: np.ndarray,
    ref_lineage: pd.DataFrame,
    comp_track: np.ndarray,
    comp_lineage: pd.DataFrame,
    *,
    n_frames: int | None = None,
    division_tolerance: int = 0,
) -> dict:
    """Metrics when result and reference label the same detections (no masks needed).

    ``t``, ``ref_track``, ``comp_track``: per detection its frame, reference track label and
    result track label (e.g. ``Tracks.detection_track``). Every detection is matched to
    itself, then the CTC graph comparison runs as in :func:`evaluate_ctc` (reference
    vertices are the detections, reference edges its lineage's links).
    """
    t = np.asarray(t, dtype=np.int64)
    ref_track = np.asarray(ref_track, dtype=np.int64)
    comp_track = np.asarray(comp_track, dtype=np.int64)
    if not (t.shape == ref_track.shape == comp_track.shape):
        raise InputError("detections", "t, reference and result labels must have one entry per detection")
    n_frames = int(t.max()) + 1 if n_frames is None else int(n_frames)
    if t.size and int(t.max()) >= n_frames:
        raise InputError("detections", f"detections reach frame {int(t.max())} but n_frames is {n_frames}")
    labels_ref, labels_comp = [], []
    for rows in _rows_by_frame(t, n_frames):
        labels_ref.append(ref_track[rows].tolist())
        labels_comp.append(comp_track[rows].tolist())
    # labels_* keep the detection order of the frame, so mapped == labels pairs each
    # detection with itself.
    results = evaluate_matched(
        ref_lineage,
        comp_lineage,
        labels_ref,
        labels_comp,
        labels_ref,
        labels_comp,
        division_tolerance=division_tolerance,
    )
    results["valid"] = _valid(comp_lineage, labels_comp)
    return results


def summarize_metrics(results: Mapping[str, dict] | Iterable[dict]) -> dict:
    """Pool the metrics of several samples.

    Returns ``{"n_samples", "pooled": {...}, "mean": {...}, "per_sample": {...}}``:
    ``pooled`` sums the AOGM counts and division TP/FP/FN over samples and recomputes TRA,
    DET, SEG and the division scores from the sums (every vertex and division weighs the
    same); ``mean`` is the plain average of each sample's TRA, DET, SEG, division
    precision/recall/F1 (NaN and None ignored).
    """
    if isinstance(results, Mapping):
        named = dict(results)
    else:
        named = {str(k): v for k, v in enumerate(results)}
    if not named:
        raise InputError("metrics", "no samples to summarize")
    sums: dict[str, float] = {}
    for key in (
        "AOGM",
        "AOGM_0",
        "AOGM_NS",
        "AOGM_FN",
        "AOGM_FP",
        "AOGM_ED",
        "AOGM_EA",
        "AOGM_EC",
        "num_vertices",
        "num_edges",
        "division_tp",
        "division_fp",
        "division_fn",
        "seg_n_reference",
        "seg_iou_sum",
    ):
        sums[key] = float(sum(float(r.get(key) or 0) for r in named.values()))
    pooled: dict = {}
    pooled["TRA"] = 1 - min(sums["AOGM"], sums["AOGM_0"]) / sums["AOGM_0"] if sums["AOGM_0"] else math.nan
    det_cost = _W_NS * sums["AOGM_NS"] + _W_FN * sums["AOGM_FN"] + _W_FP * sums["AOGM_FP"]
    det_zero = _W_FN * sums["num_vertices"]
    pooled["DET"] = 1 - min(det_cost, det_zero) / det_zero if det_zero else math.nan
    pooled["SEG"] = sums["seg_iou_sum"] / sums["seg_n_reference"] if sums["seg_n_reference"] else None
    pooled.update(_division_scores(int(sums["division_tp"]), int(sums["division_fp"]), int(sums["division_fn"])))
    pooled.update(
        {
            k: (v if k in ("AOGM", "AOGM_0", "seg_iou_sum") else int(v))
            for k, v in sums.items()
            if not k.startswith("division_")
        }
    )
    mean: dict = {}
    for key in ("TRA", "DET", "SEG", "division_precision", "division_recall", "division_f1"):
        values = [float(r[key]) for r in named.values() if r.get(key) is not None and not _isnan(r[key])]
        mean[key] = float(np.mean(values)) if values else None
    return {"n_samples": len(named), "pooled": pooled, "mean": mean, "per_sample": named}


def _isnan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False
