"""Per-sample metrics gathered over a run: one table per kind, per sample plus the sum.

The finish stage's manifests say which samples were evaluated and where their metrics
are; samples that failed are left out (the summary lists them). Sums add counts and
recompute ratios, never average ratios over samples (a large sample weighs more).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from snakescope.io.atomic import atomic_path

__all__ = ["evaluated_outputs", "gather_metrics"]

STEP_OF = {"restoration": "evaluate_restoration", "segmentation": "evaluate_segmentation",
           "classification": "evaluate_classification", "tracking": "evaluate_tracking",
           "detection": "evaluate_detection", "pixel_classes": "evaluate_segmentation"}


def evaluated_outputs(manifests, step: str) -> dict[str, dict]:
    """{sample: outputs of ``step``} for the samples whose finish stage succeeded, in order."""
    found = {}
    for path in manifests:
        for sample, entry in json.loads(Path(path).read_text())["samples"].items():
            if entry["status"] == "ok" and step in entry["steps"]:
                found[sample] = entry["steps"][step]["outputs"]
    return found


def gather_metrics(kind: str, manifests, out: str, *class_outputs: str) -> pd.DataFrame | None:
    """Write ``out`` (CSV): every evaluated sample's metrics and an ``ALL`` row (or rows).
    ``pixel_classes`` (U-Net): the confusion counts added up (``out``), then scored
    (``class_outputs``: the scores CSV, the plot and optionally the row percentages CSV);
    the classes are those of the samples' matrices (per cell type for a typed U-Net)."""
    outputs = evaluated_outputs(manifests, STEP_OF[kind])
    if kind == "pixel_classes":  # a typed U-Net scores only the samples with types
        outputs = {s: o for s, o in outputs.items() if "class_confusion" in o}
    if not outputs:  # every sample to evaluate failed (the summary says why): an empty table
        for path in (out, *class_outputs):
            with atomic_path(path) as tmp:
                Path(tmp).write_text("sample\n" if str(path).endswith(".csv") else "")
        return None
    if kind == "pixel_classes":
        from snakescope.evaluation.classes import read_confusion, write_class_scores

        first = next(iter(outputs.values()))["class_confusion"]
        names = [str(c) for c in pd.read_csv(first, index_col=0, nrows=0).columns]  # every sample's must match
        matrices = {s: read_confusion(o["class_confusion"], names) for s, o in outputs.items()}
        scores, plot, *percent = class_outputs
        write_class_scores(matrices, names, out, scores, plot, title=f"U-Net pixel classes: {len(matrices)} samples "
                           "summed", percent_csv=percent[0] if percent else None)
        return None
    if kind == "segmentation":
        from snakescope.evaluation.instances import summarize

        tables = {s: pd.read_csv(o["metrics"]) for s, o in outputs.items()}
        total = summarize({s: t.drop(columns=["sample"]) for s, t in tables.items()})
        total.insert(0, "sample", "ALL")
        result = pd.concat([*tables.values(), total], ignore_index=True)
    elif kind == "restoration":
        result = pd.concat([pd.read_csv(o["metrics"]) for o in outputs.values()], ignore_index=True)
        mean = result.drop(columns=["sample", "data_range_rule"]).mean(numeric_only=True)
        mean["n_voxels"] = result["n_voxels"].sum()
        result = pd.concat([result, pd.DataFrame([{"sample": "ALL", "data_range_rule": "mean over samples",
                                                   **mean.to_dict()}])], ignore_index=True)
    elif kind == "detection":
        from snakescope.evaluation.boxes import class_names_of, pool_detection_scores

        tables = [pd.read_csv(o["metrics"]) for o in outputs.values()]
        result = pool_detection_scores(tables, class_names_of(tables[0]["predicted_boxes"].iloc[0]))
    elif kind == "classification":
        from snakescope.classification import pool_classification_metrics, read_metrics_table

        result = pool_classification_metrics({s: read_metrics_table(o["metrics"]) for s, o in outputs.items()})
    else:
        from snakescope.tracking.ctc import summarize_metrics

        per_sample = {s: json.loads(Path(o["metrics"]).read_text()) for s, o in outputs.items()}
        pooled = summarize_metrics(per_sample)["pooled"]
        scalar = lambda d: {m: v for m, v in d.items() if not isinstance(v, (dict, list))}  # noqa: E731
        result = pd.DataFrame([{"sample": s, **scalar(d)} for s, d in per_sample.items()]
                              + [{"sample": "ALL", **scalar(pooled)}])
    with atomic_path(out) as tmp:
        result.to_csv(tmp, index=False)
    return result
