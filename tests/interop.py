"""Open what the workflow writes with other projects' tools (.venv/check, `make test` builds
it): every OME-Zarr with ome-zarr-models' validator, napari-ome-zarr and bioio."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK_PYTHON = REPO / ".venv" / "check" / "bin" / "python"


def ngff_groups(root: Path) -> list[Path]:
    """Every OME-Zarr image under ``root``, its labels group and each label image."""
    found = []
    for image in sorted(root.rglob("*.ome.zarr")):
        if ".partial-" in str(image):
            continue
        found.append(image)
        labels = image / "labels"
        if labels.is_dir():
            found.append(labels)
            found += sorted(p for p in labels.iterdir() if p.is_dir())
    return found


def check_ngff(paths: list[Path]) -> dict[str, dict]:
    if not CHECK_PYTHON.exists():
        pytest.skip(f"{CHECK_PYTHON} is absent: `make test` builds the readers' environment")
    proc = subprocess.run([str(CHECK_PYTHON), str(REPO / "tests" / "interop_check.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("INTEROP-JSON ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[0].split(" ", 1)[1])


def assert_ngff_readable(root: Path) -> dict[str, dict]:
    """Every OME-Zarr under ``root`` validates and opens in napari and bioio; opening them
    writes nothing anywhere (napari-ome-zarr creates zarr.json where it takes a folder for a group)."""
    before = {p for p in root.rglob("*")}
    report = check_ngff(ngff_groups(root))
    assert report, f"no OME-Zarr under {root}"
    problems = []
    for path, result in report.items():
        if result["ome_zarr_models"] != "ok":
            problems.append(f"{path}: ome-zarr-models: {result['ome_zarr_models']}")
        if not isinstance(result["napari"], list) or not result["napari"]:
            problems.append(f"{path}: napari-ome-zarr: {result['napari']}")
        if "bioio" in result and not isinstance(result["bioio"], dict):
            problems.append(f"{path}: bioio: {result['bioio']}")
    assert not problems, "\n".join(problems)
    created = {p for p in root.rglob("*")} - before
    assert not created, f"reading created files: {sorted(created)[:5]}"
    return report
