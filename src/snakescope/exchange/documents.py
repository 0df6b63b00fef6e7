"""The descriptive parts of a bioimage.io package: tensor descriptions of the model spec
0.5, the documentation (README.md with its Validation section), the cover image, and the
authors, citations and metrics given by the configuration, checked.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.exchange.learners import Exportable

__all__ = ["authors_list", "citation_list", "collect_metrics", "input_tensor", "output_tensor", "package_name",
           "write_cover", "write_readme"]

NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_+\- ()]")
AUTHOR_KEYS = ("name", "affiliation", "email", "github_user", "orcid")


def package_name(name: str) -> str:
    """A model name the spec accepts: letters, digits, ``_+-()`` and spaces, 5 to 64 long."""
    cleaned = re.sub(r"\s+", " ", NAME_CHARACTERS.sub(" ", str(name))).strip()[:64].strip()
    return cleaned if len(cleaned) >= 5 else f"{cleaned} model".strip()


def authors_list(authors) -> list[dict]:
    """Authors as the spec's entries (a name, or a mapping with name, affiliation, email,
    github_user, orcid); InputError when there is none or one has no name."""
    if isinstance(authors, (str, dict)):
        authors = [authors]
    out = []
    for i, author in enumerate(authors or []):
        entry = {"name": author} if isinstance(author, str) else dict(author)
        unknown = set(entry) - set(AUTHOR_KEYS)
        if unknown or not str(entry.get("name", "")).strip():
            raise InputError(f"publication.authors[{i}]", f"needs a name and only {', '.join(AUTHOR_KEYS)} "
                                                           f"(got {sorted(entry)})")
        out.append({k: str(v) for k, v in entry.items() if v is not None})
    if not out:
        raise InputError("publication.authors", "a published model needs at least one author")
    return out


def citation_list(citation) -> list[dict]:
    """The citations given (``{text, doi}`` / ``{text, url}`` entries or a DOI string);
    InputError for an entry without a DOI or URL (the spec requires one)."""
    if citation is None:
        return []
    if isinstance(citation, (str, dict)):
        citation = [citation]
    out = []
    for i, entry in enumerate(citation):
        if isinstance(entry, str):
            entry = {"text": entry, "doi": entry} if entry.startswith("10.") else {"text": entry}
        entry = {k: str(v) for k, v in dict(entry).items() if v is not None}
        if "doi" in entry:
            entry["doi"] = re.sub(r"^(https?://(dx\.)?doi\.org/|doi:)", "", entry["doi"])
        if not entry.get("text") or not ({"doi", "url"} & set(entry)):
            raise InputError(f"publication.citation[{i}]", "needs a text and a doi or url")
        out.append(entry)
    return out


def _space_axes(item: Exportable) -> list[dict]:
    axes = []
    for axis, (low, step) in zip(item.spatial, item.sizes):
        axes.append({"type": "space", "id": axis, "size": {"min": low, "step": step} if step else low})
    return axes


def input_tensor(item: Exportable, preprocessing: list[dict], files: dict, description: str) -> dict:
    """The ``inputs`` entry: ``raw`` as ``(batch, *spatial, channel)`` float32."""
    return {"id": "raw", "description": description,
            "axes": [{"type": "batch"}] + _space_axes(item) + [{"type": "channel",
                                                               "channel_names": list(item.input_channels)}],
            "test_tensor": files["test_input.npy"], "sample_tensor": files["sample_input.tif"],
            "data": {"type": "float32"},
            "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}] + preprocessing}


def output_tensor(item: Exportable, files: dict) -> dict:
    """The ``outputs`` entry of the learner's output (sizes follow the input's)."""
    out = item.output
    if out["channels"] is None:  # one value per class, no spatial axes
        axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(out["classes"])}]
    else:
        axes = [{"type": "batch"}]
        for i, axis in enumerate(item.spatial):
            entry = {"type": "space", "id": axis, "size": {"tensor_id": "raw", "axis_id": axis}}
            if item.halo and item.halo[i]:
                entry["halo"] = int(item.halo[i])
            axes.append(entry)
        axes.append({"type": "channel", "channel_names": list(out["channels"])})
    data = {"type": out["dtype"]}
    if out.get("range"):
        data["range"] = list(out["range"])
    return {"id": out["id"], "description": out["description"], "axes": axes,
            "test_tensor": files["test_output.npy"], "sample_tensor": files["sample_output.tif"], "data": data,
            "postprocessing": list(out.get("postprocessing", []))}


def _scalars(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _scalars(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


def collect_metrics(meta: dict, metrics: dict | None) -> dict:
    """The numbers the workflow measured: the training's (best validation and final loss), the
    learner's validation/test scores in snakescope.json, and ``metrics`` given by the
    caller (nested mappings flattened to dotted names)."""
    out: dict = {}
    training = meta.get("training") or {}
    for key in ("best_val_loss", "final_loss"):
        _scalars(f"training.{key}", training.get(key), out)
    _scalars("validation", meta.get("validation"), out)
    test = meta.get("test")
    if isinstance(test, dict):
        _scalars("test", {k: v for k, v in test.items() if not isinstance(v, (list, dict)) or k == "per_class"}, out)
    _scalars("thresholds", meta.get("thresholds"), out)
    _scalars("", metrics or {}, out)
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    return "| | |\n| --- | --- |\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def write_readme(path: Path, item: Exportable, *, name: str, description: str, meta: dict, metrics: dict,
                 data: dict | None, normalization: str, cite: list[dict], reproduced: str) -> None:
    """README.md: usage (input normalization, output), training, the Validation section
    (the metrics the workflow measured) and citations."""
    training = meta.get("training") or {}
    settings = meta.get("settings") or {}
    lines = [f"# {name}", "", description, "", "## Usage", "",
             f"Input `raw`: a {item.ndim}D image, axes batch, {', '.join(item.spatial)}, channel "
             f"({len(item.input_channels)} channel(s)). {normalization}", "", item.usage, "",
             "Trained and exported by the snakescope workflow; `config.snakescope` records the model's metadata.",
             "", "## Training data", ""]
    trained_on = {**(meta.get("data") or {}), **(data or {})}
    if trained_on:
        lines.append(_table([(str(k), _short(v)) for k, v in trained_on.items()]))
    else:
        lines.append("Not recorded.")
    lines += ["", "## Training", ""]
    rows = [(k, _short(training.get(k))) for k in ("epochs_run", "steps_run", "best_epoch", "best_val_loss",
                                                   "stopped_by", "train_seconds") if training.get(k) is not None]
    rows += [(f"setting {k}", _short(v)) for k, v in settings.items()]
    lines.append(_table(rows) if rows else "Not recorded (the model was not trained by snakescope).")
    lines += ["", "## Validation", "",
              "Metrics the workflow measured (validation images held out of training unless named otherwise):", ""]
    lines.append(_table([(k, f"{v:.6g}") for k, v in metrics.items()]) if metrics else "None recorded.")
    lines += ["", reproduced, "", "## Citation", ""]
    lines += [f"- {c['text']} " + (f"doi:{c['doi']}" if "doi" in c else c.get("url", "")) for c in cite]
    path.write_text("\n".join(lines) + "\n")


def _short(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _middle(array: np.ndarray) -> np.ndarray:
    """A 2D view of a ``(1, *spatial, channel)`` tensor: the middle z plane, first channel."""
    a = np.asarray(array)[0]
    while a.ndim > 3:
        a = a[a.shape[0] // 2]
    return a[..., 0] if a.ndim == 3 else a


def write_cover(path: Path, item: Exportable, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """A 2:1 PNG: the test input and what the model makes of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3), dpi=100)
    left.imshow(_middle(test_input), cmap="gray")
    left.set_title("input", fontsize=9)
    output = np.asarray(test_output)
    if item.output["channels"] is None:
        classes = item.output["classes"]
        right.barh(range(len(classes)), output[0])
        right.set_yticks(range(len(classes)), classes, fontsize=8)
        right.set_xlim(0, 1)
        right.set_title("class probabilities", fontsize=9)
    elif item.output["id"] == "labels":
        labels = _middle(output)
        colours = np.random.default_rng(0).random((int(labels.max()) + 1, 3))
        colours[0] = 0
        right.imshow(colours[labels])
        right.set_title("instances", fontsize=9)
    elif item.output["id"] == "probabilities":
        frame = np.asarray(output)[0]
        while frame.ndim > 3:
            frame = frame[frame.shape[0] // 2]
        # contours (odd channels) and bodies (even ones): per cell type for a typed U-Net
        contour, body = frame[..., 1::2].sum(-1), frame[..., 2::2].sum(-1)
        right.imshow(np.clip(np.stack([contour, body, np.zeros_like(body)], -1).astype(np.float64), 0, 1))
        right.set_title("contour (red), body (green)", fontsize=9)
    else:
        right.imshow(_middle(output), cmap="gray")
        right.set_title(item.output["id"], fontsize=9)
    for ax in (left, right):
        if item.output["channels"] is not None or ax is left:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
