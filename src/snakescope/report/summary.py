"""The run's summary (``results/summary.md``, and the HTML report beside it): what was
produced, the key figures, how long each stage took, and every sample that failed with its
reason.

It is built from the stage manifests (each sample's status and outputs), the models'
metadata and the gathered metrics, so it stays short for a run of 100,000 images: samples
are listed one by one only up to :data:`MAX_LISTED`. ``results/failed_samples.tsv`` lists
the failures; :func:`check_failures` turns a non-empty list into a failed run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import write_text

__all__ = ["MAX_LISTED", "SWEEP_COLUMNS", "check_failures", "describe", "sweep_tables", "write_summary"]

MAX_LISTED = 50
STAGE_ORDER = ("prepare", "restore", "segment", "finish")
#: The figure of each gathered metrics file shown in the summary: (column, row filter).
KEY_FIGURES = {
    "segmentation": ("f1", "threshold", 0.5, "F1 at IoU 0.5"),
    "restoration": (("psnr_input_affine", "psnr_restored_affine"), None, None,
                    "PSNR against the target after an affine fit, input -> restored (dB)"),
    "classification": ("balanced_accuracy", "class_name", "ALL", "balanced accuracy"),
    "tracking": ("TRA", None, None, "TRA"),
    "detection": ("map50", None, None, "box detector, mAP at IoU 0.5 of the boxes written"),
}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def describe(path: Path) -> str:
    """One line on a result: shape and axes of an image, objects of labels, rows of a table."""
    from snakescope.io import ngff

    try:
        if path.name.endswith(".ome.zarr"):
            root = ngff.open_group(path, "r")
            if "labels" in root.attrs and "multiscales" not in root.attrs:
                counts = root.attrs.get("snakescope", {}).get("segmentation", {}).get("objects_per_frame", {})
                return f"{sum(counts.values())} objects in {len(counts)} frame(s)"
            image = ngff.read_image(path)
            return f"{image.axes} {tuple(image.shape)} {image.data.dtype}"
        if path.suffix == ".parquet":
            return f"{len(pd.read_parquet(path))} rows"
    except Exception:  # noqa: BLE001 - a summary line is best effort
        return ""
    return ""


def _manifests(paths) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def _failures(manifests: list[dict]) -> list[dict]:
    rows = []
    for m in sorted(manifests, key=lambda m: (STAGE_ORDER.index(m["stage"]), m["batch"])):
        for sample, entry in m["samples"].items():
            if entry["status"] == "failed":
                rows.append({"sample": sample, "stage": m["stage"], "step": entry["step"], "reason": entry["error"]})
    return rows


def _stage_table(manifests: list[dict]) -> list[str]:
    jobs, ran, seconds, step_seconds = defaultdict(int), defaultdict(int), defaultdict(float), defaultdict(float)
    for m in manifests:
        jobs[m["stage"]] += 1
        seconds[m["stage"]] += m.get("seconds", 0.0)
        for entry in m["samples"].values():
            for name, step in entry["steps"].items():
                if step.get("ran"):
                    ran[(m["stage"], name)] += 1
                    step_seconds[(m["stage"], name)] += step.get("seconds", 0.0)
    lines = ["| stage | jobs | wall s | step: samples run, s |", "|---|---|---|---|"]
    for stage in STAGE_ORDER:
        if stage in jobs:
            steps = ", ".join(f"{name}: {ran[(s, name)]}, {step_seconds[(s, name)]:.1f}"
                              for (s, name) in sorted(ran) if s == stage)
            lines.append(f"| {stage} | {jobs[stage]} | {seconds[stage]:.1f} | {steps or 'all up to date'} |")
    return lines


def _model_lines(models) -> list[str]:
    lines = []
    for folder in models:
        meta = {}
        path = Path(folder) / "snakescope.json"
        if path.is_file():
            meta = json.loads(path.read_text())
        t = meta.get("training", {})
        data = meta.get("data", {})
        trained_on = len(meta.get("training_samples", [])) or data.get("n_train", "?")
        lines.append(f"| `{folder}` | {meta.get('kind', '?')} {meta.get('ndim', '?')}D | {trained_on} | "
                     f"{t.get('epochs_run', '?')} / {t.get('steps_run', '?')} | {t.get('best_epoch', '?')} | "
                     f"{t.get('train_seconds', 0) or 0:.0f} | {meta.get('parent') or ''} |")
    if lines:
        lines = ["| model | kind | samples | epochs / steps | kept epoch | seconds | fine-tuned from |",
                 "|---|---|---|---|---|---|---|", *lines]
    return lines


def _metric_lines(metrics) -> list[str]:
    lines = []
    for path in metrics:
        kind = Path(path).stem
        if kind not in KEY_FIGURES or not Path(path).is_file():
            continue
        column, key, value, label = KEY_FIGURES[kind]
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if key is not None and key in table:
            table = table[table[key].astype(str) == str(value)]
        columns = column if isinstance(column, tuple) else (column,)  # two: before -> after
        if not all(c in table for c in columns):
            continue
        per = ", ".join(f"{s} " + " -> ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
                        for s, *values in zip(table["sample"], *(table[c] for c in columns)))
        lines.append(f"- **{kind}** ({label}): {per}  (`{path}`)")
    return lines


#: The columns of a sweep's table shown in the summary and the report (the CSV has more).
SWEEP_COLUMNS = ("combination", "best_epoch", "train_loss", "val_loss", "val_f1", "score", "chosen", "fit")


def sweep_tables(sweeps) -> list[tuple[dict, pd.DataFrame]]:
    """Each sweep of the run (plan: model, table, figure) with its table's shown columns."""
    found = []
    for sweep in sweeps:
        if Path(sweep["table"]).is_file():
            table = pd.read_csv(sweep["table"])
            found.append((sweep, table[[c for c in SWEEP_COLUMNS if c in table]]))
    return found


def _sweep_lines(sweeps) -> list[str]:
    lines = []
    for sweep, table in sweep_tables(sweeps):
        lines += [f"### `{sweep['model']}`: {len(table)} candidates (curves `{sweep['figure']}`)", "",
                  "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
                  for row in table.itertuples(index=False)]
        lines.append("")
    return lines


def write_summary(task: dict) -> str:
    """``results/summary.md``, ``results/failed_samples.tsv`` and ``results/report.html``
    from the summary task (snakescope.pipeline.plan): manifests, models, gathered metrics."""
    paths = task["outputs"]
    models, metrics = task["models"], task["metrics"]
    manifests = _manifests(task["manifests"])
    failures = _failures(manifests)
    status: dict[str, str] = {}
    outputs: dict[str, dict] = defaultdict(dict)
    for m in sorted(manifests, key=lambda m: STAGE_ORDER.index(m["stage"])):
        for sample, entry in m["samples"].items():
            if status.get(sample) in (None, "ok"):
                status[sample] = entry["status"]
            for step in entry["steps"].values():
                outputs[sample].update(step.get("outputs", {}))
    n_ok = sum(1 for s in status.values() if s == "ok")
    lines = ["# snakescope results", "",
             f"{len(status)} samples: {n_ok} complete, {len(failures)} failed"
             + (f", {len(status) - n_ok - len(failures)} not processed after a failure" if len(status) - n_ok - len(failures) else ""),
             ""]
    if failures:
        lines += ["## Failed samples", "", "| sample | stage | step | reason |", "|---|---|---|---|"]
        lines += [f"| {f['sample']} | {f['stage']} | {f['step']} | {f['reason']} |" for f in failures]
        lines += ["", "Fix the input and rerun the same command: only these samples are redone.", ""]
    metric_lines = _metric_lines(metrics)
    if metric_lines:
        lines += ["## Key figures", "", *metric_lines, ""]
    model_lines = _model_lines(models)
    if model_lines:
        lines += ["## Models", "", *model_lines, ""]
    sweep_lines = _sweep_lines(task["sweeps"])
    if sweep_lines:
        lines += ["## Sweeps", "", "Each candidate scored on the validation split; fit: overfitting (validation loss "
                  "rose while training loss fell) or underfitting (both losses high against the best candidate).", "",
                  *sweep_lines]
    lines += ["## Time per stage", "", *_stage_table(manifests), ""]
    lines += ["## Samples", ""]
    for sample in list(status)[:MAX_LISTED]:
        lines.append(f"### {sample} ({status[sample]})")
        for name, path in outputs[sample].items():
            p = Path(path)
            if p.exists():
                lines.append(f"- `{path}` {_human(_size(p))} {describe(p)}".rstrip())
        lines.append("")
    if len(status) > MAX_LISTED:
        lines.append(f"... and {len(status) - MAX_LISTED} more samples: see `results/jobs/*.done.json`.")
    text = "\n".join(lines) + "\n"
    write_text(paths["summary"], text)
    from snakescope.report.html import write_report

    write_report(paths["report"], config=task["config"], manifests=manifests, models=models, metrics=metrics,
                 failures=failures, stage_table=_stage_table(manifests), sweeps=task["sweeps"])
    table = pd.DataFrame(failures, columns=["sample", "stage", "step", "reason"])
    from snakescope.io.atomic import atomic_path

    with atomic_path(paths["failures"]) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    print(text)
    return text


def check_failures(failures_tsv: str) -> None:
    """Raise, listing every failed sample and why, when the run had failures."""
    table = pd.read_csv(failures_tsv, sep="\t", dtype=str, keep_default_na=False)
    if len(table):
        listed = "\n".join(f"  {r.sample} ({r.stage}/{r.step}): {r.reason}" for r in table.itertuples())
        raise InputError(failures_tsv, f"{len(table)} sample(s) failed; the others are complete:\n{listed}")
