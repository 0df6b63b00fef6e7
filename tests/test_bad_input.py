"""Bad input, case by case: each gets one clear line naming the file (or key, or row) and the
problem, and the other samples go on.

Every case runs the real code a run would: the config and sheet checks (snakescope.settings)
or the batch runner on a real stage (snakescope.pipeline.runner) with a good sample beside
the bad one. ``python tests/test_bad_input.py`` prints the README's table of the cases and
the line each one gets.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from snakescope.pipeline.plan import Plan, plan_path  # noqa: E402
from snakescope.pipeline.runner import run_task  # noqa: E402
from snakescope.settings import Config, ConfigError, load  # noqa: E402

HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\tclass_truth\n"


@dataclass
class Case:
    name: str
    expect: str  # a fragment of the one line the problem must get
    sheet: str = ""  # the bad sample's row (after the id), tab-separated
    config: dict = field(default_factory=dict)
    files: Callable[[Path], None] | None = None  # writes the bad files into the folder
    stage: str = "prepare"  # where the problem shows: config, or a stage of the run


def rows(*cells: str) -> str:
    return "\t".join(cells)


def _write(name, array, **kw):
    return lambda d: tifffile.imwrite(d / name, array, **kw)


def _bytes(name, data: bytes):
    return lambda d: (d / name).write_bytes(data)


def _truncated(d: Path):
    tifffile.imwrite(d / "trunc.tif", np.ones((8, 64, 64), np.uint16), metadata={"axes": "ZYX"})
    (d / "trunc.tif").write_bytes((d / "trunc.tif").read_bytes()[:20000])


def _corrupt(d: Path):
    tifffile.imwrite(d / "corrupt.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), compression="zlib")
    data = bytearray((d / "corrupt.tif").read_bytes())
    data[300:700] = b"\x00" * 400
    (d / "corrupt.tif").write_bytes(bytes(data))


GOOD = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) % 977 + 1
FLOAT = GOOD.astype(np.float32)

CASES = [
    # the config and the sheet: every problem at once, nothing runs
    Case("unknown config key", "config: key '(top level)': Additional properties are not allowed ('segmentaton'",
         config={"segmentaton": {}}, stage="config"),
    Case("config value of the wrong type", "key 'seed': 'many' is not of type 'integer'", config={"seed": "many"},
         stage="config"),
    Case("normalize.low above high", "key 'normalize.low' (90) must be below 'normalize.high' (10)",
         config={"normalize": {"low": 90, "high": 10}}, stage="config"),
    Case("missing model folder", "key 'segmentation.model_2d': folder nowhere/model does not exist",
         config={"segmentation": {"model_2d": "nowhere/model"}}, stage="config"),
    Case("empty model folder", "key 'segmentation.model_2d': folder empty_model is empty",
         config={"segmentation": {"model_2d": "empty_model"}}, files=lambda d: (d / "empty_model").mkdir(),
         stage="config"),
    Case("scatter of an unknown sample", "key 'segmentation.scatter': no sample 'ghost'",
         config={"segmentation": {"scatter": {"ghost": 2}}}, stage="config"),
    Case("training samples that are not in the sheet", "key 'segmentation.train_samples': no sample 'ghost'",
         config={"segmentation": {"train_samples": ["good", "ghost"]}}, stage="config"),
    Case("N2V-only key in the CARE section", "manipulator only apply to N2V",
         config={"restoration": {"method": "care", "care": {"manipulator": "median"}}}, stage="config"),
    Case("sample id with a space", "column 'sample_id': 'bad id' is not valid here", sheet="bad id\tgood.tif",
         stage="config"),
    Case("sample id taken by the workflow", "'models' is taken by the workflow's own results folder",
         sheet="models\tgood.tif", stage="config"),
    Case("sample id used twice", "sample_id 'good' is used twice", sheet="good\tgood.tif", stage="config"),
    Case("axes with a foreign letter", "column 'axes': 'ZYQ' is not valid here", sheet=rows("bad", "good.tif", "ZYQ"),
         stage="config"),
    Case("axes letter twice", "axes 'YYX': a letter appears twice", sheet=rows("bad", "good.tif", "YYX"),
         stage="config"),
    Case("axes without X", "axes 'TY': Y and X are required", sheet=rows("bad", "good.tif", "TY"), stage="config"),
    Case("voxel size with units", "'0.5um' is not valid here (micrometres per pixel",
         sheet=rows("bad", "good.tif", "YX", "0.5um"), stage="config"),
    Case("voxel size of zero", "every size must be above 0 micrometres", sheet=rows("bad", "good.tif", "YX", "0"),
         stage="config"),
    Case("voxel sizes for the wrong number of axes", "2 values for the 3 spatial axes ZYX",
         sheet=rows("bad", "good.tif", "ZYX", "1,2"), stage="config"),
    Case("time interval of zero", "time_interval '0': must be above 0 seconds",
         sheet=rows("bad", "good.tif", "TYX", "0.5", "0"), stage="config"),
    Case("channel without a C axis", "channel 2: the axes 'YX' have no C",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "2"), stage="config"),
    Case("negative channel", "column 'channel': '-1' is not valid here",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "-1"), stage="config"),
    Case("unknown sheet column", "unknown column(s) colour", stage="config"),
    # the image data: that sample fails, the good one completes
    Case("missing image file", "absent.tif: file not found", sheet=rows("bad", "absent.tif", "YX")),
    Case("glob matching nothing", "nothing*.tif: no file matches", sheet=rows("bad", "nothing*.tif", "TYX")),
    Case("empty file", "empty.tif: file is empty (0 bytes)", sheet=rows("bad", "empty.tif", "YX"), files=_bytes("empty.tif", b"")),
    Case("not a TIFF", "text.tif: not a readable TIFF file", sheet=rows("bad", "text.tif", "YX"),
         files=_bytes("text.tif", b"sample,value\n1,2\n" * 50)),
    Case("truncated TIFF", "trunc.tif: truncated TIFF", sheet=rows("bad", "trunc.tif", "ZYX"), files=_truncated),
    Case("corrupt compressed data", "corrupt.tif: cannot read pixel data", sheet=rows("bad", "corrupt.tif", "YX"),
         files=_corrupt),
    Case("axes that do not fit the data", "axes 'ZYX'", sheet=rows("bad", "flat.tif", "ZYX"),
         files=_write("flat.tif", GOOD)),
    Case("constant image", "constant image: every pixel is 7", sheet=rows("bad", "const.tif", "YX"),
         files=_write("const.tif", np.full((20, 20), 7, np.uint16))),
    Case("NaN values", "NaN values in the float image data", sheet=rows("bad", "nan.tif", "YX"),
         files=_write("nan.tif", np.where(GOOD > 500, np.nan, FLOAT).astype(np.float32))),
    Case("infinite values", "infinite values in the float image data", sheet=rows("bad", "inf.tif", "YX"),
         files=_write("inf.tif", np.where(GOOD > 900, np.inf, FLOAT).astype(np.float32))),
    Case("channel beyond the data", "channel 3 of sample bad does not exist: the image has 2 channel(s)",
         sheet=rows("bad", "two.tif", "CYX", "0.5", "", "3"), files=_write("two.tif", np.stack([GOOD, GOOD + 1]))),
    Case("clean target of another shape", "the clean target of sample bad has shape",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "", "", "", "small.tif"),
         files=_write("small.tif", GOOD[:20])),
    # ground truth: the evaluation of that sample fails, naming the user's file
    Case("labels of another shape", "small_labels.tif: labels shape (20, 50) differs from the image shape (40, 50)",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "small_labels.tif"),
         files=_write("small_labels.tif", np.ones((20, 50), np.uint16)), stage="finish"),
    Case("labels that are an intensity image", "float_labels.tif: labels must be an integer image",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "float_labels.tif"),
         files=_write("float_labels.tif", FLOAT), stage="finish"),
    Case("negative labels", "neg_labels.tif: negative label values (down to -3)",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "neg_labels.tif"),
         files=_write("neg_labels.tif", np.full((40, 50), -3, np.int16)), stage="finish"),
    Case("labels file missing", "no_labels.tif: labels file not found",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "no_labels.tif"), stage="finish"),
    Case("labels glob matching nothing", "lab*.tif: labels file not found",
         sheet=rows("bad", "good.tif", "YX", "0.5", "", "", "lab*.tif"), stage="finish"),
]


def _project(folder: Path, case: Case) -> dict:
    data = folder
    tifffile.imwrite(data / "good.tif", GOOD)
    if case.files:
        case.files(data)
    cells = case.sheet.split("\t") if case.sheet else []
    good = rows("good", "good.tif", "YX", "0.5")
    lines = [good] + (["\t".join(cells)] if cells else [])
    header = HEADER if case.name != "unknown sheet column" else HEADER.strip() + "\tcolour\n"
    text = header + "\n".join(line + "\t" * (header.count("\t") - line.count("\t")) for line in lines) + "\n"
    (data / "samples.tsv").write_text(text)
    config = {"samples": "samples.tsv", **case.config}
    if case.stage != "finish":
        config.setdefault("segmentation", {"method": "none"})
    return config


def outcome(case: Case, folder: Path) -> str:
    """The line the case gets (from the config check or the failed sample's manifest entry)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        config = _project(folder, case)
        try:
            validated, samples, _ = load(config)
        except ConfigError as err:
            return next((p for p in err.problems if case.expect in p), "\n".join(err.problems))
        plan = Plan(Config.from_dict(validated), samples)
        if case.stage == "finish":
            plan.segmented = lambda sid: True  # evaluate every sample with labels (segmented below)
        plan.write_tasks()
        status = {}
        for stage in ("prepare", "finish"):
            if stage == "finish" and case.stage == "finish":
                _segment_by_threshold(plan)
            for job in plan.stage_jobs(stage):
                run_task(plan_path(job.name))
                status.update({(stage, s): e for s, e in json.loads(Path(job.outputs[0]).read_text())["samples"].items()})
        good = [e["status"] for (stage, s), e in status.items() if s == "good"]
        assert good and set(good) == {"ok"}, f"the good sample did not complete: {status}"
        bad = [e for (stage, s), e in status.items() if s == "bad" and e["status"] == "failed"]
        return bad[0]["error"] if bad else "(no error)"
    finally:
        os.chdir(old)


def _segment_by_threshold(plan: Plan) -> None:
    """Ground-truth cases: labels from a threshold (and their measurements) stand in for a
    network's, so the finish stage evaluates against the user's labels without training one."""
    from snakescope.io.labels import write_label_image

    def threshold(frame, out):
        out[...] = (np.asarray(frame[...]) > 500).astype(np.uint32)
        return 1

    from snakescope.segmentation.measure import measure_objects

    for sid in plan.samples:
        write_label_image(f"results/{sid}/image.ome.zarr", f"results/{sid}/image.ome.zarr/labels", threshold)
        measure_objects(f"results/{sid}/image.ome.zarr/labels", f"results/{sid}/image.ome.zarr").to_parquet(
            f"results/{sid}/objects.parquet")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_line(case, tmp_path):
    line = outcome(case, tmp_path)
    assert case.expect in line, line
    assert "\n" not in line and "Traceback" not in line


def table() -> str:
    import tempfile

    lines = ["| bad input | where | the line it gets |", "|---|---|---|"]
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            line = outcome(case, Path(tmp))
        ok = "yes" if case.expect in line and "\n" not in line else "NO"
        where = {"config": "config/sheet check, nothing runs", "prepare": "that sample's prepare step",
                 "finish": "that sample's evaluation"}[case.stage]
        lines.append(f"| {case.name} | {where} | `{line.replace('|', '/')}` ({ok}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
