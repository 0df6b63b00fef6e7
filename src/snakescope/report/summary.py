"""A plain-text account of what a run produced and where, printed at the end of the demo."""

from __future__ import annotations

import json
from pathlib import Path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _describe(path: Path) -> str:
    """One line on a result: array shape and axes for OME-Zarr, key figures for JSON."""
    if path.suffix == ".zarr" or path.name.endswith(".ome.zarr"):
        attrs_file = path / ".zattrs"
        if attrs_file.exists():
            attrs = json.loads(attrs_file.read_text())
            if "labels" in attrs and "multiscales" not in attrs:
                inner = path / "labels" / attrs["labels"][0]
                counts = attrs.get("snakescope", {}).get("segmentation", {}).get("objects_per_frame", {})
                level0 = json.loads((inner / "0" / ".zarray").read_text())
                return f"labels {tuple(level0['shape'])}; {sum(counts.values())} objects in {len(counts)} frame(s)"
            ms = attrs.get("multiscales", [{}])[0]
            axes = "".join(a["name"] for a in ms.get("axes", []))
            level0 = json.loads((path / "0" / ".zarray").read_text())
            return f"{axes} {tuple(level0['shape'])} {level0['dtype'].lstrip('<>|')}, {len(ms.get('datasets', []))} levels"
    if path.suffix == ".parquet":
        import pandas as pd

        table = pd.read_parquet(path)
        return f"{len(table)} rows x {table.shape[1]} columns"
    if path.name == "normalization.json":
        stats = json.loads(path.read_text())
        g = stats["groups"][0]
        return f"{stats['method']} per {stats['scope']}: {len(stats['groups'])} group(s), first offset {g['offset']:.4g} divisor {g['divisor']:.4g}"
    return ""


def summarize(samples, results: Path) -> str:
    lines = ["# snakescope results", ""]
    models = sorted((results / "models").glob("*/training.json")) if (results / "models").exists() else []
    if models:
        lines.append(f"## models  ({results}/models/)")
        for info_file in models:
            info = json.loads(info_file.read_text())
            lines.append(f"  {info_file.parent.name:<28} trained on {info.get('n_train')} image(s) in {info.get('train_seconds', 0):.0f} s; "
                         f"thresholds {info.get('thresholds')}; curve: {info_file.parent.with_name(info_file.parent.name + '_training.png')}")
        lines.append("")
    for sample in samples:
        folder = results / sample
        lines.append(f"## {sample}  ({folder}/)")
        if not folder.exists():
            lines.append("  (no results: see logs/ for why)")
            continue
        for item in sorted(folder.iterdir()):
            if ".partial-" in item.name:
                continue
            desc = _describe(item)
            lines.append(f"  {item.name:<28} {_human(_size(item)):>10}  {desc}".rstrip())
        lines.append("")
    return "\n".join(lines) + "\n"
