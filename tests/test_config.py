"""Config and samples-sheet validation: every problem reported at once, defaults filled."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from snakescope.settings import ConfigError, load, validate_config
from snakescope.demo import SHEET_HEADER

REPO = Path(__file__).resolve().parents[1]


def write_sheet(path: Path, rows: list[dict]) -> Path:
    lines = ["\t".join(SHEET_HEADER)] + ["\t".join(r.get(c, "") for c in SHEET_HEADER) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_repository_config_is_valid_and_defaults_fill(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    filled, problems = validate_config(config)
    assert problems == []
    minimal, problems = validate_config({})
    assert problems == []
    assert minimal["normalize"] == {"method": "percentile", "low": 1.0, "high": 99.8, "scope": "channel", "mask_value": 0, "clip": False}
    assert minimal["ingest"]["chunks"] == {"z": 16, "y": 512, "x": 512}


def test_every_config_problem_reported_at_once():
    _, problems = validate_config({
        "normalize": {"low": 120, "scope": "galaxy", "hgih": 3},
        "ingest": {"compression": "rar"},
        "seed": -1,
    })
    text = "\n".join(problems)
    assert "normalize.low" in text and "120" in text
    assert "normalize.scope" in text and "galaxy" in text
    assert "hgih" in text
    assert "ingest.compression" in text
    assert "'seed'" in text
    assert len(problems) >= 5


def test_care_settings_reject_n2v_only_keys():
    _, problems = validate_config({"restoration": {"method": "care", "care": {"manipulator": "median", "epochs": 3}}})
    assert problems == ["config: key 'restoration.care': manipulator only apply to N2V (the n2v section)"]
    config, problems = validate_config({"restoration": {"method": "n2v", "n2v": {"manipulator": "median"}}})
    assert problems == [] and config["restoration"]["train_samples"] == "all"
    _, problems = validate_config({"restoration": {"method": "noise2noise"}})
    assert any("restoration.method" in p for p in problems)


def test_restoration_defaults_are_the_ones_chosen_on_real_noise():
    from snakescope.settings import defaults

    r = defaults().restoration  # bench/restore_real.py measured these (W2S)
    assert r.tta is True
    assert (r.n2v.blurpool, r.n2v.skip_skipone, r.n2v.manipulator, r.n2v.struct_mask) == (True, True, "median", None)
    assert (r.care.loss, r.care.unet_n_first, r.care.learning_rate) == ("mse", 16, 0.002)
    config, problems = validate_config({"restoration": {"method": "n2v", "tta": False,
                                                        "n2v": {"struct_mask": [[1, 1, 1, 1, 1]]}}})
    assert problems == [] and config["restoration"]["n2v"]["struct_mask"] == [[1, 1, 1, 1, 1]]
    assert config["restoration"]["tta"] is False
    _, problems = validate_config({"restoration": {"n2v": {"struct_mask": "row"}}})
    assert any("restoration.n2v.struct_mask" in p for p in problems)
    _, problems = validate_config({"restoration": {"method": "care", "care": {"struct_mask": [[1, 1, 1]]}}})
    assert problems == ["config: key 'restoration.care': struct_mask only apply to N2V (the n2v section)"]


def test_low_must_be_below_high():
    _, problems = validate_config({"normalize": {"low": 50, "high": 40}})
    assert any("must be below" in p for p in problems)


def test_sheet_rows_all_reported(tmp_path):
    img = tmp_path / "a.tif"
    img.write_bytes(b"")
    sheet = write_sheet(tmp_path / "s.tsv", [
        {"sample_id": "good", "image": str(img), "axes": "ZYX", "voxel_size": "2,0.5,0.5"},
        {"sample_id": "bad axes", "image": str(img), "axes": "ZYQ"},
        {"sample_id": "vox", "image": str(img), "axes": "TZYX", "voxel_size": "1,2"},
        {"sample_id": "good", "image": str(img), "axes": "YX"},
        {"sample_id": "ch", "image": str(img), "axes": "YX", "channel": "2"},
        {"sample_id": "noimage", "axes": "YX"},
        {"sample_id": "models", "image": str(img), "axes": "YX"},
    ])
    with pytest.raises(ConfigError) as err:
        load({"samples": str(sheet), "normalize": {"low": -1}})
    problems = err.value.problems
    text = str(err.value)
    assert "nothing was run" in text
    assert any("row 2" in p and "sample_id" in p for p in problems)  # space in the id
    assert any("row 2" in p and "axes" in p for p in problems)
    assert any("row 3 (sample 'vox')" in p and "2 values for the 3 spatial axes" in p for p in problems)
    assert any("row 4" in p and "used twice" in p for p in problems)
    assert any("row 5" in p and "no C" in p for p in problems)
    assert any("row 6" in p and "'image' is a required property" in p for p in problems)
    assert any("row 7" in p and "sample_id" in p for p in problems)  # reserved: results/models
    assert any("normalize.low" in p for p in problems)


def test_missing_image_is_a_warning_not_an_error(tmp_path):
    sheet = write_sheet(tmp_path / "s.tsv", [{"sample_id": "gone", "image": str(tmp_path / "gone.tif"), "axes": "YX"}])
    _, samples, warnings = load({"samples": str(sheet)})
    assert "gone" in samples
    assert any("gone.tif not found" in w for w in warnings)


def test_voxel_size_and_time_interval_parsed(tmp_path):
    sheet = write_sheet(tmp_path / "s.tsv", [
        {"sample_id": "a", "image": "x.tif", "axes": "TZYX", "voxel_size": "2,0.5,0.25", "time_interval": "30"},
        {"sample_id": "b", "image": "x.tif", "axes": "YX", "voxel_size": "0.3"},
    ])
    _, samples, _ = load({"samples": str(sheet)})
    assert samples["a"].voxel_size == {"z": 2.0, "y": 0.5, "x": 0.25, "t": 30.0}
    assert samples["b"].voxel_size == {"y": 0.3, "x": 0.3}


def test_unknown_sheet_column(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample_id\timage\tcolour\na\tx.tif\tred\n")
    with pytest.raises(ConfigError, match="unknown column"):
        load({"samples": str(sheet)})


def test_committed_demo_sheet_matches_the_generator(tmp_path):
    """config/samples.tsv is what make_demo_data writes (nobody edits one and forgets the other)."""
    from snakescope.demo import make_demo_data, write_sheet as demo_sheet

    rows = make_demo_data(tmp_path / "resources" / "demo")
    for row in rows:
        for key, value in row.items():
            row[key] = str(value).replace(str(tmp_path) + "/", "")
    demo_sheet(rows, tmp_path / "sheet.tsv")
    assert (tmp_path / "sheet.tsv").read_text() == (REPO / "config" / "samples.tsv").read_text()


def test_fast_row_check_agrees_with_jsonschema():
    from snakescope.settings import RowCheck, _validator, load_schema

    schema = load_schema("samples")
    quick, full = RowCheck(schema), _validator(schema)
    rows = [{"sample_id": "a", "image": "x.tif"}, {"sample_id": "a b", "image": "x.tif"},
            {"sample_id": "models", "image": "x.tif"}, {"sample_id": "jobs", "image": "x.tif"},
            {"sample_id": "a", "image": ""}, {"sample_id": "a"}, {"sample_id": "a", "image": "x", "colour": "red"},
            {"sample_id": "a", "image": "x", "axes": "TCZYX", "voxel_size": "2,0.5,0.5", "channel": "1"},
            {"sample_id": "a", "image": "x", "axes": "ZYQ"}, {"sample_id": "a", "image": "x", "voxel_size": "0.5um"},
            {"sample_id": "a", "image": "x", "time_interval": "1e3"}, {"sample_id": "a", "image": "x", "channel": "-1"},
            {"sample_id": "_a", "image": "x"}, {"sample_id": "a.b-c_1", "image": "x", "labels": "l*.tif"}]
    for row in rows:
        assert quick(row) == full.is_valid(row), row


def test_sheet_problems_read_as_words_and_zero_sizes_are_refused(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_bytes("\ufeffsample_id\timage\taxes\tvoxel_size\ttime_interval\n".encode()
                      + b"a\tx.tif\tYX\t0.5um\t\nb\tx.tif\tYX\t0\t\nc\tx.tif\tTYX\t0.5\t0\nd\tx.tif\tYX\t0.5\t\n")
    with pytest.raises(ConfigError) as err:
        load({"samples": str(sheet)})
    problems = err.value.problems
    assert any("row 1" in p and "'0.5um' is not valid here (micrometres per pixel" in p for p in problems)
    assert not any("^" in p for p in problems)  # no raw regular expressions
    assert any("row 2" in p and "every size must be above 0" in p for p in problems)
    assert any("row 3" in p and "time_interval '0': must be above 0 seconds" in p for p in problems)
    assert not any("row 4" in p for p in problems)  # Excel's byte-order mark is not part of the header


def test_model_folders_are_checked_with_the_config(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _, problems = validate_config({})
    from snakescope.settings import _folder_problems

    config, _ = validate_config({"segmentation": {"model_2d": str(tmp_path / "absent"), "model_3d": str(empty)},
                                 "classification": {"patch_folder_2d": str(tmp_path / "nope")}})
    problems = _folder_problems(config, "config")
    assert any("segmentation.model_2d" in p and "does not exist" in p for p in problems)
    assert any("segmentation.model_3d" in p and "is empty" in p for p in problems)
    assert any("classification.patch_folder_2d" in p for p in problems)


def test_typed_settings_mirror_the_schema_and_every_key_has_a_default():
    """Each settings dataclass has exactly its schema section's keys, and every key of a
    section has a default in the schema (the one place defaults live); override sections
    (stardist_3d, unet_3d) are the exception: they hold what differs."""
    import dataclasses
    import typing

    from snakescope import settings

    schema = settings.load_schema("config")

    def check(cls, section: dict, path: str):
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == set(section["properties"]), f"{path}: {names ^ set(section['properties'])}"
        for name, prop in section["properties"].items():
            where = f"{path}.{name}" if path else name
            if name in ("stardist_3d", "unet_3d"):
                continue
            assert "default" in prop, f"{where} has no default in the schema"
            kind = hints[name]
            if isinstance(kind, type) and issubclass(kind, settings.Section):
                check(kind, prop, where)

    check(settings.Config, schema, "")
    assert settings.defaults().segmentation.stardist_for(3).patch_size == [32, 96, 96]
