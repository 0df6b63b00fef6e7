"""Stage planning (snakescope.pipeline.plan): batches, who goes through which stage, digests."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from snakescope.pipeline.plan import Plan
from snakescope.settings import Config, load

HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"


def project(tmp_path, rows: list[str], sizes=None, **config) -> Plan:
    """A sheet of rows ``id`` (2D image with labels) and a Plan for ``config``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    lines = []
    for i, sid in enumerate(rows):
        shape = (sizes or {}).get(sid, (32, 32))
        image = data / f"{sid}.tif"
        if not image.exists():
            tifffile.imwrite(image, np.random.default_rng(i).integers(0, 200, shape, dtype=np.uint8))
            tifffile.imwrite(data / f"{sid}_labels.tif", np.ones(shape, np.uint16))
        lines.append(f"{sid}\t{image}\tYX\t0.5\t\t\t{data / f'{sid}_labels.tif'}\t\t\t")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(HEADER + "\n".join(lines) + "\n")
    validated, samples, _ = load({"samples": str(sheet), **config})
    return Plan(Config.from_dict(validated), samples)


def test_batches_follow_the_sheet_and_appending_keeps_them(tmp_path):
    ids = [f"s{i:02d}" for i in range(23)]
    plan = project(tmp_path, ids, batching={"max_samples": 10})
    assert [b.samples for b in plan.batches] == [tuple(ids[:10]), tuple(ids[10:20]), tuple(ids[20:])]
    more = project(tmp_path, ids + ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"],
                   batching={"max_samples": 10})
    assert [b.samples for b in more.batches[:2]] == [b.samples for b in plan.batches[:2]]
    assert more.batches[2].samples[:3] == tuple(ids[20:]) and len(more.batches) == 4
    # the full batches' jobs are unchanged, so Snakemake reruns none of them
    for stage in ("prepare", "segment", "finish"):
        for b in ("b0000", "b0001"):
            assert plan.job(f"{stage}-{b}").digest == more.job(f"{stage}-{b}").digest


def test_a_large_image_goes_alone(tmp_path):
    sizes = {"big": (600, 600)}  # 360 kB of uint8
    plan = project(tmp_path, ["a", "b", "big", "c"], sizes=sizes, batching={"max_gb": 0.0002})
    assert [b.samples for b in plan.batches] == [("a", "b"), ("big",), ("c",)]


def test_stages_plan_only_samples_they_process(tmp_path):
    plan = project(tmp_path, ["a", "b"], segmentation={"method": "none"})
    assert plan.stage_samples("segment") == [] and plan.stage_batches("segment") == []
    assert not [j for j in plan.jobs if j.startswith(("segment", "train_"))]
    work = plan.job("finish-b0000").task["samples"][0]["steps"]
    assert [s["step"] for s in work] == ["provenance"]
    plan = project(tmp_path, ["a", "b"], classification={"enabled": False}, tracking={"enabled": False})
    segment = plan.job("segment-b0000").task["samples"][0]["steps"]
    assert [s["step"] for s in segment] == ["segment", "measure"] and "classifier" not in segment[1]["inputs"]
    assert ["qc_segmentation", "export_boxes", "evaluate_segmentation", "provenance"] == [
        s["step"] for s in plan.job("finish-b0000").task["samples"][0]["steps"]]


def test_segmented_2d_samples_export_their_boxes(tmp_path):
    plan = project(tmp_path, ["a"])
    steps = {s["step"]: s for s in plan.job("finish-b0000").task["samples"][0]["steps"]}
    assert steps["export_boxes"]["inputs"] == {"labels": "results/a/image.ome.zarr/labels",
                                               "objects": "results/a/objects.parquet"}
    assert steps["export_boxes"]["outputs"] == {"napari": "results/a/boxes.csv",
                                                "yolo": "results/a/boxes_yolo"}
    plan = project(tmp_path, ["a"], detection={"export_boxes": False})
    assert "export_boxes" not in [s["step"] for s in plan.job("finish-b0000").task["samples"][0]["steps"]]


PREDICTION_ONLY = [("segmentation", "prob_thresh", 0.6), ("segmentation", "nms_thresh", 0.2),
                   ("segmentation", "block_size", 1024), ("segmentation", "min_overlap", 32),
                   ("segmentation", "context", 16), ("segmentation", "scatter", {"a": 2}),
                   ("restoration", "block_shape", {"y": 256, "x": 256}), ("restoration", "samples", ["a"])]


@pytest.mark.parametrize("section,key,value", PREDICTION_ONLY, ids=[k for _, k, _ in PREDICTION_ONLY])
def test_prediction_settings_never_retrain(tmp_path, section, key, value):
    base = {"restoration": {"method": "care"}}
    before = project(tmp_path, ["a", "b"], **base)
    changed = {**base, section: {**base.get(section, {}), key: value}}
    after = project(tmp_path, ["a", "b"], **changed)
    trainings = [j for j in before.jobs if j.startswith("train_")]
    assert "train_segmentation-stardist_2d" in trainings
    for name in trainings:
        assert before.job(name).digest == after.job(name).digest, name


def test_restoration_samples_restores_only_those_and_trains_on_train_samples(tmp_path):
    plan = project(tmp_path, ["a", "b", "c"], restoration={"method": "n2v", "train_samples": ["a", "b"],
                                                           "samples": ["a"]})
    assert plan.stage_samples("restore") == ["a"]
    assert plan.analysis_image("a").endswith("restored.ome.zarr")
    assert plan.analysis_image("b").endswith("normalized.ome.zarr")
    assert plan.restoration_training_samples(2) == ("a", "b")
    assert not [n for n in plan.warnings() if "N2V" in n]  # left out on purpose, not for want of a model


def test_training_settings_retrain_and_resegment(tmp_path):
    before = project(tmp_path, ["a", "b"])
    after = project(tmp_path, ["a", "b"], segmentation={"stardist": {"epochs": 7}})
    assert before.job("train_segmentation-stardist_2d").digest != after.job("train_segmentation-stardist_2d").digest
    # the segment job reruns through its model folder (a Snakemake input), not its digest
    assert before.job("segment-b0000").digest == after.job("segment-b0000").digest
    assert "results/models/stardist_2d" in after.job("segment-b0000").inputs


def test_normalization_change_reaches_every_downstream_stage(tmp_path):
    before = project(tmp_path, ["a"])
    after = project(tmp_path, ["a"], normalize={"high": 99.0})
    for name in ("prepare-b0000", "segment-b0000", "finish-b0000", "train_segmentation-stardist_2d"):
        assert before.job(name).digest != after.job(name).digest, name


def test_few_jobs_for_many_samples(tmp_path):
    ids = [f"s{i:03d}" for i in range(200)]
    plan = project(tmp_path, ids, batching={"max_samples": 100}, classification={"enabled": False})
    rules = sorted(j.rule for j in plan.jobs.values())
    assert rules == ["export_model", "finish", "finish", "prepare", "prepare", "segment", "segment", "summary",
                     "train_segmentation"]


def test_a_given_model_is_fine_tuned_on_labels_or_used_as_it_is(tmp_path):
    model = tmp_path / "pretrained"
    model.mkdir()
    (model / "config.json").write_text("{}")
    plan = project(tmp_path, ["a", "b"], segmentation={"model_2d": str(model)})
    job = plan.job("train_segmentation-stardist_2d")
    assert job.task["parent"] == str(model) and str(model / "config.json") in job.inputs
    tuned = job.task["config"]["segmentation"]["stardist"]
    assert (tuned["epochs"], tuned["learning_rate"]) == (20, 0.0001)  # fine_tune's budget, not training's
    assert plan.segmentation_model(2) == "results/models/stardist_2d"
    plan = project(tmp_path, ["a", "b"], segmentation={"model_2d": str(model), "fine_tune": {"enabled": False}})
    assert not [j for j in plan.jobs if j.startswith("train_segmentation")]
    assert plan.segmentation_model(2) == str(model)


def test_the_box_detector_is_planned_from_the_boxes_column(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for sid in ("a", "b"):
        tifffile.imwrite(data / f"{sid}.tif", np.random.default_rng(0).integers(0, 200, (32, 32), dtype=np.uint8))
    (data / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample_id\timage\taxes\tboxes\na\t{data / 'a.tif'}\tYX\t{data / 'a.txt'}\n"
                     f"b\t{data / 'b.tif'}\tYX\t\n")

    def plan_for(**detection) -> Plan:
        validated, samples, _ = load({"samples": str(sheet), "segmentation": {"method": "none"},
                                      "detection": {"enabled": True, **detection}})
        return Plan(Config.from_dict(validated), samples)

    plan = plan_for()
    train = plan.job("train_detector-detector_2d")
    assert [s["sample"] for s in train.task["sources"]] == ["a"] and str(data / "a.txt") in train.inputs
    assert not [j for j in plan.jobs if j.startswith("export-")]  # bioimage.io has no box detector format
    segment = plan.job("segment-b0000")
    assert [[s["step"] for s in w["steps"]] for w in segment.task["samples"]] == [["detect"], ["detect"]]
    assert "results/models/detector_2d" in segment.inputs
    finish = {w["sample"]: [s["step"] for s in w["steps"]] for w in plan.job("finish-b0000").task["samples"]}
    assert finish == {"a": ["evaluate_detection", "provenance"], "b": ["provenance"]}
    assert plan.gathered_outputs() == ["results/metrics/detection.csv"]
    # a prediction key changes the detection jobs, never the training
    other = plan_for(score_thresh=0.7)
    assert other.job("train_detector-detector_2d").digest == train.digest
    assert other.job("segment-b0000").digest != segment.digest
    assert plan_for(epochs=3).job("train_detector-detector_2d").digest != train.digest
    # a given detector is used as it is
    given = tmp_path / "detector"
    given.mkdir()
    (given / "config.json").write_text("{}")
    plan = plan_for(model_2d=str(given))
    assert not [j for j in plan.jobs if j.startswith("train_")] and str(given) in plan.job("segment-b0000").inputs
