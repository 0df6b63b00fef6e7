"""Train/validation splits made once and saved, so reruns never mix the sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from snakescope.io.atomic import write_json


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
