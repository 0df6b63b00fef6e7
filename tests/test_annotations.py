"""Class annotations: napari points CSVs (one file per class or a class column) and patch folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from snakescope.errors import InputError
from snakescope.io.annotations import load_patch_folder, read_point_annotations
from snakescope.synthetic import make_timelapse, write_timelapse


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sample():
    return make_timelapse(n_frames=10, n_cells=16, seed=1)


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory):
    return write_timelapse(sample, tmp_path_factory.mktemp("synthetic"))


def test_read_one_file_per_class(written, sample):
    files = [written["points_sparse"][c] for c in sample.class_names]
    table = read_point_annotations(files, "tyx", image_shape=sample.image.shape)
    assert list(table.columns) == ["class_name", "t", "y", "x", "source", "row"]
    assert set(table["class_name"]) == {"round", "elongated"}  # "points_sparse_<class>.csv"
    for name in sample.class_names:
        raw = pd.read_csv(written["points_sparse"][name])
        part = table[table["class_name"] == name]
        assert len(part) == len(raw) > 0
        np.testing.assert_allclose(part[["t", "y", "x"]].to_numpy(), raw[["axis-0", "axis-1", "axis-2"]].to_numpy())
        assert part["row"].tolist() == list(range(1, len(raw) + 1))
        assert set(part["source"]) == {str(written["points_sparse"][name])}
    # A glob over one folder, and the number of axes instead of an axes string.
    by_glob = read_point_annotations(str(Path(written["points"]["round"]).parent / "points_[re]*.csv"), 3)
    assert set(by_glob["class_name"]) == {"round", "elongated"}
    assert len(by_glob) == len(sample.points)


def test_read_class_column_layout_and_named_axes(tmp_path):
    f = write_csv(tmp_path / "annotations.csv",
                  "index,axis-0,axis-1,axis-2,class\n0,1,10.5,20,mitosis\n1,2,30,40.25,interphase\n")
    table = read_point_annotations(f, "tcyx")  # channel axis dropped like napari does
    assert table["class_name"].tolist() == ["mitosis", "interphase"]
    assert table[["t", "y", "x"]].to_numpy().tolist() == [[1, 10.5, 20], [2, 30, 40.25]]
    g = write_csv(tmp_path / "named.csv", "z,y,x,class_name\n1,2,3,a\n4,5,6,b\n")
    assert read_point_annotations(g, "zyx")["class_name"].tolist() == ["a", "b"]
    # A file named <class>.csv without class column; a dict key names the class.
    h = write_csv(tmp_path / "apoptosis.csv", "index,axis-0,axis-1\n0,5,6\n")
    assert read_point_annotations(h, "yx")["class_name"].tolist() == ["apoptosis"]
    assert read_point_annotations({"dead": h}, "yx")["class_name"].tolist() == ["dead"]


def test_read_wrong_columns_names_file(tmp_path):
    f = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1\n0,3,4\n")
    with pytest.raises(InputError) as info:
        read_point_annotations(f, "tyx")
    message = str(info.value)
    assert str(f) in message and "axis-2" in message and "header" in message
    g = write_csv(tmp_path / "points_x.csv", "index,row,col\n0,3,4\n")
    with pytest.raises(InputError, match="expected the coordinate columns"):
        read_point_annotations(g, "yx")
    h = write_csv(tmp_path / "points_y.csv", "index,axis-0,axis-1\n0,3,4\n1,abc,5\n")
    with pytest.raises(InputError, match=r"row 2: coordinate axis-0 \(y\) is not a number"):
        read_point_annotations(h, "yx")
    with pytest.raises(InputError, match="no annotation CSV files found"):
        read_point_annotations(str(tmp_path / "none_*.csv"), "yx")


def test_point_outside_image_names_file_and_row(tmp_path):
    f = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1,axis-2\n0,1,5,5\n1,2,6,6\n2,3,64.7,10\n")
    with pytest.raises(InputError) as info:
        read_point_annotations(f, "tyx", image_shape=(10, 64, 64))
    assert str(f) in str(info.value) and "row 3" in str(info.value) and "outside the image" in str(info.value)


def test_unknown_class_names_file_and_row(tmp_path):
    f = write_csv(tmp_path / "all.csv", "index,axis-0,axis-1,label\n0,1,1,round\n1,2,2,mitotic\n")
    with pytest.raises(InputError) as info:
        read_point_annotations(f, "yx", class_names=["round", "elongated"])
    assert str(f) in str(info.value) and "row 2" in str(info.value) and "'mitotic'" in str(info.value)


def test_load_patch_folder(tmp_path):
    import tifffile
    from PIL import Image

    for name, n in (("a", 3), ("b", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((12, 12), 10 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    tifffile.imwrite(tmp_path / "b" / "x.tif", np.ones((12, 12), np.uint8))
    (tmp_path / "empty").mkdir()  # skipped with a warning
    patches, labels, paths = load_patch_folder(tmp_path)
    assert patches.shape == (6, 12, 12, 1) and labels == ["a"] * 3 + ["b"] * 3
    assert paths[0] == str(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "b" / "odd.png")
    with pytest.raises(InputError, match="odd.png: patch shape"):
        load_patch_folder(tmp_path)
    with pytest.raises(InputError, match="patch folder not found"):
        load_patch_folder(tmp_path / "missing")
