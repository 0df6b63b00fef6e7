"""The run's report (``results/report.html``): one self-contained page a facility can read.

Its first screen says what was run (stages, methods, models, how many samples, how many
failed) and the key figures; then the failures, the time each stage took, every model with
its training curve and what it learnt from, the metrics as tables, and the first samples
one by one with their QC figures, object counts and provenance. A stage that found nothing
says so in words ("no objects found"), not with an empty figure. Figures are embedded
(base64 PNG), so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import pandas as pd

from snakescope.io.atomic import write_text

__all__ = ["write_report"]

MAX_SAMPLES = 50
MAX_TABLE_ROWS = 60
FIGURES = (("qc/restoration.png", "restoration: input, output, target, residual"),
           ("qc/segmentation.png", "segmentation outlines"), ("qc/tracks.png", "tracks"),
           ("qc/class_confusion.png", "U-Net pixel classes"), ("qc/confusion.png", "object classes"))
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.lead{font-size:1.1em} .bad{color:#a00} .note{color:#666} img{max-width:100%;border:1px solid #ddd}
.figs{display:flex;flex-wrap:wrap;gap:1em} .figs figure{margin:0;max-width:540px} .wide figure{max-width:100%}
figcaption{font-size:.85em;color:#555}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)} (<code>{_esc(path)}</code>)</figcaption></figure>")


def _table(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    shown = frame.head(max_rows)
    head = "".join(f"<th>{_esc(c)}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f'<td class="num">{value:.4g}</td>')
            else:
                cells.append(f"<td>{_esc(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{len(frame) - max_rows} more rows in the CSV.</p>' if len(frame) > max_rows else ""
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"


def _key_table(metrics: dict[str, pd.DataFrame]) -> str:
    """One row per evaluated stage: the pooled figure over all samples, and per sample."""
    rows = []
    picks = {"segmentation": (lambda t: t[t["threshold"] == 0.5], ["f1", "precision", "recall", "accuracy"],
                              "instances at IoU 0.5"),
             "tracking": (lambda t: t, ["TRA", "DET", "SEG"], "Cell Tracking Challenge measures"),
             "restoration": (lambda t: t, ["psnr_input_affine", "psnr_restored_affine", "ssim_restored"],
                             "PSNR (dB, after an affine fit) and SSIM against the clean target"),
             "classification": (lambda t: t[t["class_name"].astype(str) == "ALL"], ["balanced_accuracy", "macro_f1"],
                                "objects against class-truth points"),
             "detection": (lambda t: t, ["map50", "map50_95", "precision", "recall", "f1"],
                           "detector boxes against the true boxes (IoU 0.5; mAP of the boxes written)")}
    for kind, table in metrics.items():
        if kind not in picks or "sample" not in table:
            continue
        select, columns, what = picks[kind]
        columns = [c for c in columns if c in table]
        chosen = select(table)
        for _, row in chosen.iterrows():
            values = ", ".join(f"{c} {row[c]:.3f}" for c in columns if pd.notna(row[c]))
            rows.append(f"<tr><td>{_esc(kind)}</td><td>{_esc(row['sample'])}</td><td>{values}</td>"
                        f"<td>{_esc(what)}</td></tr>")
    if not rows:
        return '<p class="note">No sample has ground truth, so there are no accuracy figures.</p>'
    return "<table><tr><th>stage</th><th>sample</th><th>figures</th><th>measured as</th></tr>" + "".join(rows) + "</table>"


def _what_was_run(config: dict, manifests: list[dict], models: list[dict]) -> str:
    samples = {s for m in manifests for s in m["samples"]}
    stages = []
    stages.append(f"ingest and {config['normalize']['method']} normalization")
    restoration = config["restoration"]["method"]
    if restoration != "none":
        stages.append(f"restoration with {restoration.upper()}")
    segmentation = config["segmentation"]["method"]
    if segmentation != "none":
        typed = len(config["segmentation"]["unet"]["types"]) > 1
        unet = f"a U-Net with {len(config['segmentation']['unet']['types'])} cell types" if typed else "a 3-class U-Net"
        stages.append(f"segmentation with {'StarDist' if segmentation == 'stardist' else unet} "
                      "and per-object measurements")
    if any(m.get("kind") == "classifier" for m in models) or config["classification"]["model_2d"] or \
            config["classification"]["model_3d"]:
        stages.append("object classification")
    if any("track" in e["steps"] for m in manifests for e in m["samples"].values()):
        stages.append("tracking with divisions")
    if any("detect" in e["steps"] for m in manifests for e in m["samples"].values()):
        stages.append("the box detector")
    trained = [f"{m['kind']} {m['ndim']}D" + (f" (fine-tuned from {m['parent']})" if m.get("parent") else "")
               for m in models]
    given = [f"{section} {nd}D model {config[section][f'model_{nd}d']}"
             for section in ("restoration", "segmentation", "classification", "detection") for nd in (2, 3)
             if config[section].get(f"model_{nd}d")]
    text = f"{len(samples)} samples went through " + ", ".join(stages) + "."
    if trained:
        text += " Models trained in this run: " + ", ".join(trained) + "."
    if given:
        text += " Pretrained: " + "; ".join(given) + "."
    return text


def _found_nothing(manifests: list[dict]) -> list[str]:
    """Plain sentences for stages that ran but found nothing."""
    from snakescope.io import ngff

    notes = []
    for m in manifests:
        for sample, entry in m["samples"].items():
            labels = entry["steps"].get("segment", {}).get("outputs", {}).get("labels")
            if labels and Path(labels).is_dir():
                counts = ngff.open_group(labels, "r").attrs.get("snakescope", {}).get("segmentation", {}).get(
                    "objects_per_frame", {})
                if counts and sum(counts.values()) == 0:
                    notes.append(f"Segmentation found no objects in sample {sample}.")
            table = entry["steps"].get("track", {}).get("outputs", {}).get("table")
            if table and Path(table).is_file() and len(pd.read_csv(table)) == 0:
                notes.append(f"Tracking found no tracks in sample {sample} (no objects to link).")
    return notes


def _model_section(folder: str, meta: dict) -> str:
    t = meta.get("training", {})
    rows = {"kind": f"{meta.get('kind')} {meta.get('ndim')}D", "trained on": ", ".join(meta.get("training_samples", [])),
            "epochs run / steps": f"{t.get('epochs_run')} / {t.get('steps_run')}",
            "kept epoch (lowest validation loss)": t.get("best_epoch"), "stopped by": t.get("stopped_by"),
            "training seconds": t.get("train_seconds"), "fine-tuned from": meta.get("parent") or "",
            "seed": meta.get("seed")}
    if meta.get("sweep"):
        rows["chosen by the sweep"] = f"{meta['sweep']['chosen']} (by {meta['sweep']['metric']})"
    problems = meta.get("data_problems") or []
    body = "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows.items()) + "</table>"
    if problems:
        body += '<p class="bad">Left out of training: ' + "; ".join(_esc(p) for p in problems) + "</p>"
    curve = Path(folder) / "training.png"
    figures = [_image(curve, "training curves")] if curve.is_file() else []
    confusion = Path(f"{folder}_confusion.png")
    if confusion.is_file():
        figures.append(_image(confusion, "held-out confusion matrix"))
    return f"<h3><code>{_esc(folder)}</code></h3>{body}<div class='figs wide'>{''.join(figures)}</div>"


def _sample_section(sample: str, status: str, outputs: dict, reason: str | None) -> str:
    from snakescope.report.summary import describe

    parts = [f"<h3>{_esc(sample)} <span class='{'bad' if status != 'ok' else 'note'}'>({_esc(status)})</span></h3>"]
    if reason:
        parts.append(f"<p class='bad'>{_esc(reason)}</p>")
    items = [f"<li><code>{_esc(p)}</code> {_esc(describe(Path(p)))}</li>" for p in outputs.values() if Path(p).exists()]
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    folder = Path("results") / sample
    figures = [_image(folder / name, caption) for name, caption in FIGURES if (folder / name).is_file()]
    if figures:
        parts.append("<div class='figs'>" + "".join(figures) + "</div>")
    record = folder / "provenance.json"
    if record.is_file():
        prov = json.loads(record.read_text())
        software = prov.get("software", {}).get("main", {})
        inputs = prov.get("inputs", {})
        parts.append("<details><summary>provenance</summary><p>workflow commit "
                     f"<code>{_esc(prov.get('workflow', {}).get('commit'))}</code>; "
                     + ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in sorted(software.items())) + "</p>"
                     + _table(pd.DataFrame([{"file": f, "sha256": d["sha256"], "bytes": d["bytes"]}
                                            for f, d in inputs.items()])) + "</details>")
    return "".join(parts)


def _sweep_section(sweeps) -> list[str]:
    """Each sweep: its candidates' table and their overlaid curves."""
    from snakescope.report.summary import sweep_tables

    parts = []
    for sweep, table in sweep_tables(sweeps):
        figure = Path(sweep["figure"])
        parts += [f"<h3><code>{_esc(sweep['model'])}</code>: {len(table)} candidates</h3>", _table(table),
                  f"<div class='figs wide'>{_image(figure, 'training (dashed) and validation (solid) loss of every candidate') if figure.is_file() else ''}</div>"]
    if parts:
        parts.insert(0, "<h2>Sweeps</h2><p class='note'>Every candidate was scored on the validation split; "
                        "<i>fit</i> flags overfitting (the validation loss rose while the training loss fell) and "
                        "underfitting (both losses high against the best candidate).</p>")
    return parts


def write_report(out: str, *, config: dict, manifests: list[dict], models: list[str], metrics: list[str],
                 failures: list[dict], stage_table: list[str], sweeps=()) -> None:
    model_meta = []
    for folder in models:
        path = Path(folder) / "snakescope.json"
        model_meta.append(json.loads(path.read_text()) if path.is_file() else {})
    tables = {}
    for path in metrics:
        if Path(path).suffix == ".csv" and Path(path).is_file():
            tables[Path(path).stem] = pd.read_csv(path, keep_default_na=False, na_values=[""])
    status, outputs, reasons = {}, {}, {}
    for m in manifests:
        for sample, entry in m["samples"].items():
            if status.get(sample, "ok") == "ok":
                status[sample] = entry["status"]
            if entry["status"] != "ok":
                reasons.setdefault(sample, entry.get("error") or entry.get("reason"))
            for step in entry["steps"].values():
                outputs.setdefault(sample, {}).update(step.get("outputs", {}))
    n_failed = len(failures)
    lead = _what_was_run(config, manifests, [m for m in model_meta if m])
    lead += (f" <span class='bad'>{n_failed} sample(s) failed</span> (listed below); the others are complete."
             if n_failed else " Every sample completed.")
    nothing = _found_nothing(manifests)
    sections = [f"<h1>snakescope report</h1><p class='note'>{datetime.date.today().isoformat()}</p>",
                f"<p class='lead'>{lead}</p>", "<h2>Key figures</h2>", _key_table(tables)]
    if nothing:
        sections.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in nothing) + "</ul>")
    if failures:
        sections += ["<h2>Failed samples</h2>", _table(pd.DataFrame(failures)),
                     "<p>Fix the input and rerun the same command: only these samples are redone.</p>"]
    sections += ["<h2>Time per stage</h2>", _markdown_table(stage_table)]
    if model_meta:
        sections.append("<h2>Models</h2>")
        sections += [_model_section(folder, meta) for folder, meta in zip(models, model_meta)]
    sections += _sweep_section(sweeps)
    if tables:
        sections.append("<h2>Metrics</h2>")
        for name, table in tables.items():
            sections += [f"<h3><code>results/metrics/{_esc(name)}.csv</code></h3>", _table(table)]
    sections.append("<h2>Samples</h2>")
    for sample in list(status)[:MAX_SAMPLES]:
        sections.append(_sample_section(sample, status[sample], outputs.get(sample, {}), reasons.get(sample)))
    if len(status) > MAX_SAMPLES:
        sections.append(f"<p class='note'>{len(status) - MAX_SAMPLES} more samples: results/&lt;sample&gt;/.</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>snakescope report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    write_text(out, page)


def _markdown_table(lines: list[str]) -> str:
    """The summary's Markdown table as HTML."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not set(line) <= set("|-")]
    if not rows:
        return ""
    return _table(pd.DataFrame(rows[1:], columns=rows[0]))
