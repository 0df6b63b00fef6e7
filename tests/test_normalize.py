"""Blockwise normalization: exact percentiles, mask exclusion, scopes, z-score, output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from snakescope.io import ngff
from snakescope.errors import InputError
from snakescope.ingest.convert import ingest
from snakescope.ingest.normalize import normalize
from snakescope.settings import defaults


def make_image(tmp_path, data, axes, **kw):
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, data, photometric="minisblack")
    out = tmp_path / "image.ome.zarr"
    chunks = kw.pop("chunks", {"z": 2, "y": 16, "x": 16})
    ingest(tif, axes, out, name="s", settings=defaults().ingest.replace(chunks=chunks, **kw))
    return out


def run(tmp_path, image, **kw):
    out, stats = tmp_path / "norm.ome.zarr", tmp_path / "normalization.json"
    result = normalize(image, out, stats, settings=defaults().normalize.replace(**kw))
    return ngff.read_image(out), result, json.loads(stats.read_text())


def test_uint16_percentiles_exact_and_mask_excluded(tmp_path, rng):
    data = rng.integers(1, 5000, size=(6, 50, 70), dtype=np.uint16)
    data[:, :10, :] = 0  # blanked by the microscope
    image = make_image(tmp_path, data, "ZYX")
    out, stats, saved = run(tmp_path, image, low=1.0, high=99.8, scope="image", mask_value=0)
    valid = data[data != 0]
    lo, hi = np.percentile(valid, [1.0, 99.8])
    g = stats["groups"][0]
    assert g["low_value"] == pytest.approx(lo, abs=1e-9)
    assert g["high_value"] == pytest.approx(hi, abs=1e-9)
    assert g["n_masked"] == int((data == 0).sum())
    assert saved == json.loads(json.dumps(stats))
    expected = ((data.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo))
    expected[data == 0] = 0
    np.testing.assert_allclose(out.data[...], expected, rtol=1e-6, atol=1e-6)
    assert out.data.dtype == np.float32
    assert out.axes == "zyx"


def test_mask_none_includes_zeros(tmp_path, rng):
    data = rng.integers(0, 100, size=(40, 40), dtype=np.uint8)
    image = make_image(tmp_path, data, "YX")
    _, stats, _ = run(tmp_path, image, low=5, high=95, scope="image", mask_value=None)
    assert stats["groups"][0]["low_value"] == pytest.approx(np.percentile(data, 5))


def test_float_percentiles_within_one_bin(tmp_path, rng):
    data = rng.gamma(2.0, 50.0, size=(4, 64, 64)).astype(np.float32) + 1
    image = make_image(tmp_path, data, "ZYX")
    _, stats, _ = run(tmp_path, image, low=1, high=99.8, scope="image")
    g = stats["groups"][0]
    lo, hi = np.percentile(data, [1, 99.8])
    assert g["percentile_error_bound"] > 0
    assert abs(g["low_value"] - lo) <= g["percentile_error_bound"]
    assert abs(g["high_value"] - hi) <= g["percentile_error_bound"]


def test_scope_channel_and_timepoint(tmp_path, rng):
    data = np.stack([rng.integers(10, 100, (2, 30, 30)), rng.integers(1000, 9000, (2, 30, 30))], axis=1).astype(np.uint16)
    tif = tmp_path / "tc.tif"
    tifffile.imwrite(tif, data, imagej=True, metadata={"axes": "TCYX"})
    image = tmp_path / "i.ome.zarr"
    ingest(tif, "TCYX", image, name="s")
    _, per_channel, _ = run(tmp_path, image, scope="channel", low=2, high=98)
    assert [g["group"] for g in per_channel["groups"]] == [{"c": 0}, {"c": 1}]
    for c, g in enumerate(per_channel["groups"]):
        assert g["low_value"] == pytest.approx(np.percentile(data[:, c][data[:, c] != 0], 2))
    out, per_time, _ = run(tmp_path, image, scope="timepoint", low=2, high=98)
    assert len(per_time["groups"]) == 4
    for g in per_time["groups"]:
        t, c = g["group"]["t"], g["group"]["c"]
        assert g["high_value"] == pytest.approx(np.percentile(data[t, c], 98))
        lo, hi = np.percentile(data[t, c], [2, 98])
        np.testing.assert_allclose(out.data[t, c], (data[t, c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    _, whole, _ = run(tmp_path, image, scope="image")
    assert len(whole["groups"]) == 1


def test_zscore(tmp_path, rng):
    data = rng.normal(300, 40, size=(3, 40, 40)).clip(1).astype(np.uint16)
    image = make_image(tmp_path, data, "ZYX")
    out, stats, _ = run(tmp_path, image, method="zscore", scope="image")
    values = out.data[...]
    assert values.mean() == pytest.approx(0, abs=1e-3)
    assert values.std() == pytest.approx(1, abs=1e-3)


def test_blockwise_equals_whole_for_every_chunking(tmp_path, rng):
    data = rng.integers(1, 3000, size=(5, 45, 61), dtype=np.uint16)
    results = []
    for i, chunks in enumerate([{"z": 1, "y": 16, "x": 16}, {"z": 5, "y": 64, "x": 64}]):
        sub = tmp_path / f"c{i}"
        sub.mkdir()
        image = make_image(sub, data, "ZYX", chunks=chunks)
        results.append(run(sub, image, scope="image")[0].data[...])
    np.testing.assert_array_equal(results[0], results[1])


def test_constant_after_masking_is_an_error(tmp_path):
    data = np.zeros((20, 20), np.uint16)
    data[:5] = 9
    data[5:] = 0
    data[0, 0] = 10
    image = make_image(tmp_path, data, "YX")
    with pytest.raises(InputError, match="nearly constant"):
        normalize(image, tmp_path / "n.ome.zarr", tmp_path / "n.json",
                  settings=defaults().normalize.replace(low=1, high=98, scope="image"))
    assert not (tmp_path / "n.ome.zarr").exists()


def test_bad_percentiles(tmp_path, rng):
    image = make_image(tmp_path, rng.integers(1, 50, (20, 20), dtype=np.uint16), "YX")
    with pytest.raises(InputError, match="low < high"):
        normalize(image, tmp_path / "n.ome.zarr", tmp_path / "n.json", settings=defaults().normalize.replace(low=90, high=10))
