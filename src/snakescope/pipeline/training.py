"""Training jobs: gather the training data a plan names, check every pair first, train.

Every training sample is checked before anything trains: a bad label file (wrong shape,
not integer, no object, unreadable), a sample that failed an earlier stage, or a missing
file is reported with its own line, and the model trains on the good ones (all reported
problems are recorded in the model's ``snakescope.json``). Only when no good sample is
left does the job fail.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from snakescope.errors import InputError

log = logging.getLogger("snakescope.training")

__all__ = ["train_model"]


def _failed_upstream(task: dict) -> dict[str, str]:
    failed = {}
    for path in task.get("upstream_manifests", []):
        if Path(path).is_file():
            for sid, entry in json.loads(Path(path).read_text())["samples"].items():
                if entry["status"] != "ok":
                    failed[sid] = entry.get("error") or entry.get("reason", entry["status"])
    return failed


def usable_sources(task: dict, load) -> tuple[list, list[str]]:
    """(loaded data of each usable source, problems): ``load(source)`` reads one training
    source and raises InputError on a bad one; every source is tried."""
    failed = _failed_upstream(task)
    loaded, problems = [], []
    for source in task["sources"]:
        if source["sample"] in failed:
            problems.append(f"sample {source['sample']}: left out of training, it failed earlier "
                            f"({failed[source['sample']]})")
            continue
        try:
            loaded.append(load(source))
        except InputError as exc:
            problems.append(str(exc))
    for problem in problems:
        log.error("training data problem: %s", problem)
    if not loaded:
        raise InputError(task["outputs"]["model"], f"no usable training data ({len(problems)} problem(s)): "
                                                   + "; ".join(problems))
    return loaded, problems


def train_model(task: dict, ctx) -> None:
    learner = task["learner"]
    trainer = {"stardist": _train_segmentation, "unet": _train_segmentation, "n2v": _train_restoration,
               "care": _train_restoration, "classifier": _train_classifier}[learner]
    trainer(task, ctx)
    curve = Path(task["outputs"]["model"]) / "training.png"
    from snakescope.io.atomic import atomic_path

    with atomic_path(task["outputs"]["curve"]) as tmp:
        shutil.copyfile(curve, tmp)


def _train_segmentation(task: dict, ctx) -> None:
    raise NotImplementedError


def _train_restoration(task: dict, ctx) -> None:
    raise NotImplementedError


def _train_classifier(task: dict, ctx) -> None:
    raise NotImplementedError
