"""Hyperparameter sweeps: combinations become training jobs, the selection job picks the best
candidate on the validation split, and the real workflow trains, selects and reruns nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from snakescope.errors import InputError
from snakescope.settings import ConfigError
from snakescope.training.sweep import (apply_combination, combination_name, combinations, fit_flags, select_model,
                                       sweep_table)
from test_plan import project

GRID = {"stardist_2d": {"unet_n_depth": [2, 3], "learning_rate": [0.0003, 0.001]}}


# ---- planning (no TensorFlow) --------------------------------------------------------------


def test_combinations_become_candidate_jobs_and_a_selection(tmp_path):
    plan = project(tmp_path, ["a", "b"], restoration={"method": "n2v"}, sweep={"models": GRID})
    names = ["learning_rate=0.0003,unet_n_depth=2", "learning_rate=0.0003,unet_n_depth=3",
             "learning_rate=0.001,unet_n_depth=2", "learning_rate=0.001,unet_n_depth=3"]
    candidates = [plan.job(f"train_candidate-stardist_2d-{n}") for n in names]
    assert [j.outputs for j in candidates] == [[f"results/models/sweeps/stardist_2d/{n}"] for n in names]
    assert "train_segmentation-stardist_2d" not in plan.jobs
    for job, combination in zip(candidates, combinations(GRID["stardist_2d"])):
        settings = job.task["config"]["segmentation"]["stardist"]
        assert {k: settings[k] for k in combination} == combination and job.rule == "train_candidate"
        # the same data, split and seed for every candidate
        assert (job.task["split"], job.task["seed"], job.task["sources"]) == (
            candidates[0].task["split"], candidates[0].task["seed"], candidates[0].task["sources"])
    select = plan.job("select_model-stardist_2d")
    assert select.inputs == [j.outputs[0] for j in candidates]
    assert select.outputs == ["results/models/stardist_2d", "results/models/stardist_2d_training.png",
                              "results/models/stardist_2d_sweep.csv", "results/models/stardist_2d_sweep.png"]
    # everything downstream reads the chosen copy, as without a sweep
    assert "results/models/stardist_2d" in plan.job("segment-b0000").inputs
    assert plan.job("export-stardist_2d").task["model"] == "results/models/stardist_2d"
    assert plan.models() == ["results/models/n2v_2d", "results/models/stardist_2d"]
    assert plan.job("summary-all").task["sweeps"] == [{"model": "results/models/stardist_2d",
                                                       "table": "results/models/stardist_2d_sweep.csv",
                                                       "figure": "results/models/stardist_2d_sweep.png"}]
    # a model left out of the sweep plans exactly as before
    plain = project(tmp_path, ["a", "b"], restoration={"method": "n2v"})
    assert plan.job("train_restoration-n2v_2d").digest == plain.job("train_restoration-n2v_2d").digest
    assert plan.swept_models() == ["stardist_2d"] and plain.swept_models() == []


def test_any_learner_is_swept(tmp_path):
    """Restoration and classification models sweep as segmentation does: their own section's
    keys, their candidates without the model's curve (and confusion) outputs."""
    plan = project(tmp_path, ["a", "b"], restoration={"method": "n2v"},
                   sweep={"models": {"n2v_2d": {"learning_rate": [0.0001, 0.0004]}}})
    jobs = [plan.job(f"train_candidate-n2v_2d-learning_rate={v}") for v in ("0.0001", "0.0004")]
    assert [j.task["config"]["restoration"]["n2v"]["learning_rate"] for j in jobs] == [0.0001, 0.0004]
    assert [j.task["outputs"] for j in jobs] == [{"model": f"results/models/sweeps/n2v_2d/learning_rate={v}"}
                                                 for v in ("0.0001", "0.0004")]
    assert plan.job("select_model-n2v_2d").task["learner"] == "n2v" and plan.swept_models() == ["n2v_2d"]
    assert "train_segmentation-stardist_2d" in plan.jobs  # not swept: trained as before


def test_names_are_readable_and_stable(tmp_path):
    assert combination_name({"unet_n_depth": 2, "learning_rate": 0.001}) == "learning_rate=0.001,unet_n_depth=2"
    assert combination_name({"patch_size": [128, 96], "augment": False, "time_limit": None}) == \
        "augment=false,patch_size=128x96,time_limit=null"
    assert combination_name({"architecture.n_depth": 3}) == "architecture.n_depth=3"
    reordered = {"stardist_2d": dict(reversed(list(GRID["stardist_2d"].items())))}
    one = project(tmp_path, ["a", "b"], sweep={"models": GRID})
    two = project(tmp_path, ["a", "b"], sweep={"models": reordered})
    assert {n: j.digest for n, j in one.jobs.items()} == {n: j.digest for n, j in two.jobs.items()}
    # a value added later: the finished candidates keep their jobs (nothing retrains)
    more = project(tmp_path, ["a", "b"], sweep={"models": {"stardist_2d": {**GRID["stardist_2d"],
                                                                           "learning_rate": [0.0003, 0.001, 0.003]}}})
    for name, job in one.jobs.items():
        if name.startswith("train_candidate"):
            assert more.job(name).digest == job.digest, name
    assert len([n for n in more.jobs if n.startswith("train_candidate")]) == 6


def test_unet_architecture_keys_are_swept(tmp_path):
    plan = project(tmp_path, ["a", "b"], segmentation={"method": "unet"},
                   sweep={"models": {"unet_2d": {"architecture.n_depth": [1, 2]}}})
    job = plan.job("train_candidate-unet_2d-architecture.n_depth=1")
    architecture = job.task["config"]["segmentation"]["unet"]["architecture"]
    assert architecture["n_depth"] == 1 and architecture["n_filter_base"] == 16
    assert apply_combination({"a": {"x": 1, "y": 2}, "b": 3}, {"a.x": 5, "b": 4}) == {"a": {"x": 5, "y": 2}, "b": 4}


def test_unknown_keys_and_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as error:
        project(tmp_path, ["a"], sweep={"metric": "val_f1", "models": {
            "stardist_2d": {"n_depth": [2, 3], "learning_rate": [0.001, -1]},
            "care_2d": {"epochs": [2]}}})
    text = str(error.value)
    assert "sweep.models.stardist_2d.n_depth': not a training setting of stardist" in text
    assert "unet_n_depth" in text  # the known keys are listed
    assert "sweep.models.stardist_2d.learning_rate': value -1" in text
    assert "val_f1 is scored for stardist and unet only, not care_2d" in text


def test_prediction_changes_never_retrain_and_the_metric_only_reselects(tmp_path):
    before = project(tmp_path, ["a", "b"], sweep={"models": GRID})
    after = project(tmp_path, ["a", "b"], sweep={"models": GRID}, segmentation={"prob_thresh": 0.6, "block_size": 512})
    metric = project(tmp_path, ["a", "b"], sweep={"models": GRID, "metric": "val_f1"})
    sweep_jobs = [n for n in before.jobs if n.startswith(("train_candidate", "select_model"))]
    assert len(sweep_jobs) == 5
    for name in sweep_jobs:
        assert before.job(name).digest == after.job(name).digest, name
        same = before.job(name).digest == metric.job(name).digest
        assert same == name.startswith("train_candidate"), name


def test_a_sweep_of_a_model_not_trained_here_is_said(tmp_path):
    plan = project(tmp_path, ["a"], sweep={"models": {"care_2d": {"epochs": [1, 2]}}})
    assert any(w.startswith("sweep.models.care_2d: no care_2d model is trained") for w in plan.warnings())


# ---- selection and fit flags (no TensorFlow) -------------------------------------------------


def fake_candidate(folder: Path, loss, val_loss, f1=None) -> dict:
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": range(len(loss)), "loss": loss, "val_loss": val_loss}).to_csv(folder / "training.csv",
                                                                                         index=False)
    meta = {"kind": "stardist", "ndim": 2, "training": {}, **({"validation": {"f1@0.5": f1}} if f1 is not None else {})}
    (folder / "snakescope.json").write_text(json.dumps(meta))
    (folder / "weights_best.h5").write_bytes(folder.name.encode())
    (folder / "training.png").write_bytes(b"png")
    return {"name": folder.name, "settings": {"learning_rate": float(folder.name)}, "folder": str(folder)}


def test_the_best_candidate_is_chosen_copied_and_flagged(tmp_path):
    sweeps = tmp_path / "sweeps"
    candidates = [
        fake_candidate(sweeps / "0.1", [1.0, 0.6, 0.4, 0.2], [1.0, 0.5, 0.7, 0.9], f1=0.8),  # overfits
        fake_candidate(sweeps / "0.01", [1.0, 0.8, 0.6, 0.5], [1.0, 0.8, 0.6, 0.45], f1=0.7),  # best loss
        fake_candidate(sweeps / "0.001", [1.0, 0.95, 0.9, 0.9], [1.0, 0.97, 0.95, 0.93], f1=0.2),  # underfits
    ]
    table = sweep_table(candidates, "val_loss")
    assert list(table["chosen"]) == [False, True, False]
    assert list(table["fit"]) == ["overfitting", "ok", "underfitting"]
    assert table.loc[0, "best_epoch"] == 2 and table.loc[0, "val_loss"] == 0.5 and table.loc[0, "train_loss"] == 0.6
    assert list(sweep_table(candidates, "val_f1")["chosen"]) == [True, False, False]
    assert fit_flags([]) == []

    out = tmp_path / "models" / "stardist_2d"
    task = {"learner": "stardist", "metric": "val_loss", "candidates": candidates,
            "outputs": {"model": str(out), "curve": f"{out}_training.png", "table": f"{out}_sweep.csv",
                        "figure": f"{out}_sweep.png"}}
    chosen = select_model(task)
    assert chosen["combination"] == "0.01"
    assert (out / "weights_best.h5").read_bytes() == b"0.01"
    assert json.loads((out / "snakescope.json").read_text())["sweep"]["chosen"] == "0.01"
    written = pd.read_csv(f"{out}_sweep.csv")
    assert list(written["combination"].astype(str)) == ["0.1", "0.01", "0.001"]
    assert Path(f"{out}_sweep.png").stat().st_size > 1000 and Path(f"{out}_training.png").read_bytes() == b"png"


def selection_task(out: Path, candidates, metric="val_loss") -> dict:
    return {"learner": "stardist", "metric": metric, "candidates": candidates,
            "outputs": {"model": str(out), "curve": f"{out}_training.png", "table": f"{out}_sweep.csv",
                        "figure": f"{out}_sweep.png"}}


def test_the_selection_is_deterministic_and_ties_go_to_the_first(tmp_path):
    sweeps = tmp_path / "sweeps"
    same = [1.0, 0.7, 0.6]
    candidates = [fake_candidate(sweeps / "0.3", same, same, f1=0.5), fake_candidate(sweeps / "0.2", same, same),
                  fake_candidate(sweeps / "0.1", same, same, f1=0.5)]
    table = sweep_table(candidates, "val_loss")
    assert list(table["chosen"]) == [True, False, False] and list(table["fit"]) == ["ok"] * 3
    # no val_f1 (never scored): never chosen while another candidate has one; a tie goes to the first
    assert list(sweep_table(candidates, "val_f1")["chosen"]) == [True, False, False]
    assert list(sweep_table(candidates[1:], "val_f1")["chosen"]) == [False, True]
    # the same candidates give the same table, byte for byte, and the same copy
    one, two = tmp_path / "one" / "stardist_2d", tmp_path / "two" / "stardist_2d"
    select_model(selection_task(one, candidates))
    select_model(selection_task(two, candidates))
    assert Path(f"{one}_sweep.csv").read_bytes().replace(str(tmp_path / "one").encode(), b"") == \
        Path(f"{two}_sweep.csv").read_bytes().replace(str(tmp_path / "two").encode(), b"")
    assert (one / "weights_best.h5").read_bytes() == (two / "weights_best.h5").read_bytes() == b"0.3"


def test_selection_errors_name_the_problem(tmp_path):
    sweeps = tmp_path / "sweeps"
    scored = fake_candidate(sweeps / "0.1", [1.0, 0.5], [1.0, 0.6])
    with pytest.raises(InputError, match="'val_f1' is not one of|no sweep candidate has a val_f1"):
        sweep_table([scored], "val_f1")
    with pytest.raises(InputError, match="'f1' is not one of val_loss, val_f1"):
        sweep_table([scored], "f1")
    unfinished = sweeps / "0.2"
    unfinished.mkdir()
    with pytest.raises(InputError, match="no snakescope.json"):
        sweep_table([scored, {"name": "0.2", "settings": {}, "folder": str(unfinished)}], "val_loss")


def test_a_candidate_with_the_default_settings_trains_as_the_model_would(tmp_path):
    """Same task as the unswept training but for settings, folder and the sweep's entry: a
    candidate equal to the defaults is the very training the model would have had."""
    plain = project(tmp_path, ["a", "b"]).job("train_segmentation-stardist_2d").task
    swept = project(tmp_path, ["a", "b"], sweep={"models": GRID})
    candidate = swept.job("train_candidate-stardist_2d-learning_rate=0.0003,unet_n_depth=3").task
    differ = {k for k in plain.keys() | candidate.keys() if plain.get(k) != candidate.get(k)}
    assert differ == {"kind", "job", "outputs", "sweep"}


def test_the_summary_and_report_show_the_table_curves_and_fit(tmp_path, monkeypatch):
    import dataclasses

    from snakescope.report.summary import write_summary
    from snakescope.settings import defaults

    monkeypatch.chdir(tmp_path)
    sweeps = tmp_path / "sweeps"
    candidates = [fake_candidate(sweeps / "0.1", [1.0, 0.6, 0.4, 0.2], [1.0, 0.5, 0.7, 0.9], f1=0.8),
                  fake_candidate(sweeps / "0.01", [1.0, 0.8, 0.6, 0.5], [1.0, 0.8, 0.6, 0.45], f1=0.7)]
    out = tmp_path / "models" / "stardist_2d"
    task = selection_task(out, candidates)
    select_model(task)
    sweep = {k: task["outputs"][k] for k in ("model", "table", "figure")}
    summary = {"config": dataclasses.asdict(defaults()), "manifests": [], "models": [str(out)], "metrics": [],
               "sweeps": [sweep], "outputs": {"summary": "summary.md", "failures": "failed.tsv",
                                              "report": "report.html"}}
    write_summary(summary)
    text = Path("summary.md").read_text()
    assert "## Sweeps" in text and "| 0.1 | 2 |" in text and "overfitting" in text
    html = Path("report.html").read_text()
    assert "<h2>Sweeps</h2>" in html and "overfitting" in html and "chosen by the sweep" in html
    assert html.count("<img") >= 2  # the chosen model's curves and the overlaid candidates'


# ---- the real workflow ------------------------------------------------------------------------

TINY_STARDIST = {"epochs": 2, "steps_per_epoch": 3, "patch_size": [64, 64], "unet_n_depth": 1, "n_rays": 8,
                 "batch_size": 2, "patience": 0}
SWEPT_RATES = [0.0003, 0.003]


def sweep_workdir(tmp_path) -> tuple[Path, dict]:
    """A working directory with one synthetic 2D+t sample with labels and a sweep of two
    StarDist learning rates; returns it and the sample's files."""
    from snakescope.synthetic import make_timelapse, write_timelapse

    wd = tmp_path / "wd"
    cells = write_timelapse(make_timelapse(ndim=2, n_frames=4, shape=(64, 64), n_cells=5, seed=3),
                            wd / "data" / "cells")
    sheet = ("sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\n"
             f"cells\t{cells['image'].relative_to(wd)}\t{cells['image_axes']}\t0.5\t60\t0\t"
             f"{cells['labels'].relative_to(wd)}\n")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(sheet)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", segmentation={"stardist": TINY_STARDIST},
                  classification={"enabled": False}, tracking={"enabled": False},
                  sweep={"models": {"stardist_2d": {"learning_rate": SWEPT_RATES}}},
                  resources={"threads": 1, "retries": 0})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return wd, cells


def test_the_dag_trains_each_candidate_and_selects(tmp_path):
    """Snakemake's own DAG (a dry run): one train_candidate job per combination, select_model
    writing the model folder instead of train_segmentation, segmentation and export after it."""
    wd, _ = sweep_workdir(tmp_path)
    dry = run_snakemake(wd, "--cores", "2", "--dry-run").stdout
    rules = re.findall(r"^(?:local)?rule (\w+):", dry, flags=re.M)
    assert rules.count("train_candidate") == 2 and rules.count("select_model") == 1, rules
    assert "train_segmentation" not in rules and {"segment", "export_model", "summary"} <= set(rules), rules
    for rate in SWEPT_RATES:
        assert f"results/models/sweeps/stardist_2d/learning_rate={rate}" in dry
    assert "results/models/stardist_2d_sweep.png" in dry


@pytest.mark.slow
def test_a_sweep_through_the_workflow(tmp_path):
    """Two StarDist candidates on a synthetic 2D+t sample: the chosen one has the lowest
    validation loss, results/models/stardist_2d is it, and a second run has nothing to do."""
    wd, cells = sweep_workdir(tmp_path)
    run_snakemake(wd, "--cores", "2")

    models = wd / "results" / "models"
    table = pd.read_csv(models / "stardist_2d_sweep.csv")
    assert list(table["combination"]) == ["learning_rate=0.0003", "learning_rate=0.003"]
    lowest = [pd.read_csv(models / "sweeps" / "stardist_2d" / name / "training.csv")["val_loss"].min()
              for name in table["combination"]]
    assert table["score"].tolist() == pytest.approx(lowest)
    assert table["val_f1"].between(0, 1).all() and set(table["fit"]) <= {"ok", "overfitting", "underfitting"}
    chosen = table.loc[table["chosen"], "combination"].item()
    assert chosen == table["combination"][int(np.argmin(lowest))]
    folder = models / "sweeps" / "stardist_2d" / chosen
    for name in ("weights_best.h5", "weights_last.h5", "config.json", "thresholds.json", "training.csv"):
        assert (models / "stardist_2d" / name).read_bytes() == (folder / name).read_bytes(), name
    meta = json.loads((models / "stardist_2d" / "snakescope.json").read_text())
    assert meta["sweep"]["chosen"] == chosen and meta["sweep"]["settings"] == {"learning_rate": float(chosen[14:])}
    assert (models / "stardist_2d_sweep.png").stat().st_size > 0
    assert "## Sweeps" in (wd / "results" / "summary.md").read_text()
    assert "learning_rate=0.003" in (wd / "results" / "report.html").read_text()
    tifffile.imread(cells["labels"])  # the inputs are untouched
    dry = run_snakemake(wd, "--cores", "1", "--dry-run")
    assert "Nothing to be done" in dry.stdout + dry.stderr
