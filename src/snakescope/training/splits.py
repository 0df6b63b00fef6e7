"""Splits of training data made once and saved, so reruns never mix the sets.

:func:`make_or_load_split`: train / validation by a seeded hash of each item's key (the
training images and time points of StarDist and the U-Net); a new item never moves an old one.
:func:`make_or_load_stratified_split`: the classifier's stratified train / validation /
test split of labelled items, reused as saved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path, write_json

__all__ = ["STRATIFIED_PARTS", "make_or_load_split", "make_or_load_stratified_split", "stratified_split",
           "write_stratified_split"]


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def make_or_load_split(keys, path: str | Path, validation_fraction: float = 0.15, seed: int = 0) -> dict:
    """{'train': [...], 'validation': [...]} over ``keys`` (e.g. 'sample:t3').

    A saved split is reused: known keys keep their set. New keys (a sample added later) are
    placed by a seeded hash of their name, which never depends on the other keys, so adding
    data never moves an existing item between the sets.
    """
    path = Path(path)
    keys = sorted(set(keys))
    saved = json.loads(path.read_text()) if path.exists() else {"train": [], "validation": []}
    known = {k: "train" for k in saved.get("train", [])} | {k: "validation" for k in saved.get("validation", [])}
    assignment = {k: known.get(k) or ("validation" if _unit_hash(k, seed) < validation_fraction else "train") for k in keys}
    if len(keys) > 1 and "validation" not in assignment.values():
        # too few items for the fraction: the lowest hash goes to validation (deterministic)
        assignment[min(keys, key=lambda k: _unit_hash(k, seed))] = "validation"
    if len(keys) > 1 and "train" not in assignment.values():
        assignment[max(keys, key=lambda k: _unit_hash(k, seed))] = "train"
    split = {
        "train": sorted(k for k, s in assignment.items() if s == "train"),
        "validation": sorted(k for k, s in assignment.items() if s == "validation"),
        "seed": seed,
        "validation_fraction": validation_fraction,
    }
    if split != saved:
        write_json(path, split)
    return split


# ---------------------------------------------------------------------------------------
# The classifier's stratified train / validation / test split

STRATIFIED_PARTS = ("train", "val", "test")


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise InputError("split fractions", f"need (train, validation, test) >= 0 summing to 1 with train > 0, got {fractions}")
    return fractions


def _split_ids(labels: Sequence[str], ids: Sequence[str] | None) -> list[str]:
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(labels))]
    if len(ids) != len(labels):
        raise InputError("split", f"{len(ids)} ids for {len(labels)} labels")
    if len(set(ids)) != len(ids):
        duplicate = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise InputError("split", f"duplicate id {duplicate!r}")
    return ids


def stratified_split(labels: Sequence[str], fractions: Sequence[float], seed: int, *,
                     sources: Sequence[str] | None = None) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per label: each class shuffled with ``seed`` and cut
    into ``round(n * fraction)`` items (at least one per part with a non-zero fraction, the
    rest for training). ``sources`` (one per label, e.g. the annotation file) names the
    file of a class that has too few examples."""
    labels = [str(c) for c in labels]
    fractions = _check_fractions(fractions)
    needed = sum(1 for f in fractions if f > 0)
    labels_arr = np.asarray(labels, dtype=object)
    split = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for name in sorted(set(labels)):
        members = np.flatnonzero(labels_arr == name)
        n = len(members)
        if n < needed:
            where = ", ".join(sorted({str(sources[i]) for i in members})) if sources is not None else "labels"
            raise InputError(
                where,
                f"class {name!r} has {n} example(s): a train/validation/test split with fractions {fractions} "
                f"needs at least {needed} per class; annotate at least {needed - n} more",
            )
        n_val = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
        n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
        while n - n_val - n_test < 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        order = members[rng.permutation(n)]
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
        split[order[n_test + n_val:]] = "train"
    return split.astype(str)


def write_stratified_split(path: str | Path, labels: Sequence[str], split: Sequence[str], fractions: Sequence[float],
                           seed: int, *, ids: Sequence[str] | None = None) -> None:
    """Save a split atomically: CSV with columns ``id, class_name, split``, or JSON (with
    the seed and fractions) for a ``.json`` path."""
    path = Path(path)
    table = pd.DataFrame({"id": _split_ids(labels, ids), "class_name": [str(c) for c in labels],
                          "split": np.asarray(split).astype(str)})
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            data = {"seed": int(seed), "fractions": [float(f) for f in fractions], "items": table.to_dict("records")}
            tmp.write_text(json.dumps(data, indent=1) + "\n")
        else:
            table.to_csv(tmp, index=False)


def make_or_load_stratified_split(labels: Sequence[str], path: str | Path, fractions: Sequence[float], seed: int, *,
                                  ids: Sequence[str] | None = None,
                                  sources: Sequence[str] | None = None) -> np.ndarray:
    """One stratified train / validation / test split (:func:`stratified_split`), made once
    and saved (:func:`write_stratified_split`), then reused.

    When ``path`` exists it is read back and returned as it is (``fractions`` and ``seed``
    are then ignored: re-splitting on every run leaks test data into training; delete the
    file to make a new split): items are matched by ``ids`` (default their position), and
    an item missing from the saved split, or saved with another class, is an error.
    Returns an array of ``"train"``/``"val"``/``"test"`` per label.
    """
    labels = [str(c) for c in labels]
    path = Path(path)
    ids = _split_ids(labels, ids)
    if path.exists():
        return _load_stratified_split(path, labels, ids)
    split = stratified_split(labels, fractions, seed, sources=sources)
    write_stratified_split(path, labels, split, _check_fractions(fractions), seed, ids=ids)
    return split


def _load_stratified_split(path: Path, labels: list[str], ids: list[str]) -> np.ndarray:
    try:
        if path.suffix.lower() == ".json":
            table = pd.DataFrame(json.loads(path.read_text())["items"], dtype=str)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, KeyError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read the saved split ({exc}); delete it to make a new one") from None
    missing = {"id", "class_name", "split"} - set(table.columns)
    if missing:
        raise InputError(path, f"saved split lacks column(s) {', '.join(sorted(missing))}; delete it to make a new one")
    bad = np.flatnonzero(~table["split"].isin(STRATIFIED_PARTS).to_numpy())
    if bad.size:
        raise InputError(path, f"row {bad[0] + 1}: split {table['split'].iloc[bad[0]]!r} is not one of {', '.join(STRATIFIED_PARTS)}")
    saved = dict(zip(table["id"], zip(table["class_name"], table["split"])))
    out = np.empty(len(ids), dtype=object)
    for i, (item, label) in enumerate(zip(ids, labels)):
        if item not in saved:
            raise InputError(
                path,
                f"item {item!r} (class {label!r}) is not in the saved split: the annotations changed since the split "
                "was made; delete the split file to make a new one (earlier test items may then end up in training)",
            )
        saved_label, part = saved[item]
        if saved_label != label:
            raise InputError(path, f"item {item!r} was saved as class {saved_label!r} but is now {label!r}; delete the split file to re-split")
        out[i] = part
    return out.astype(str)
