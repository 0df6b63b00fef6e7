"""Restoration: patch sampling and N2V masking, N2V (n2v env) and CARE (main env) training and
blockwise prediction, prediction blocks, metrics.

The N2V checks need the n2v environment (n2v 0.3.3 works only with TF 2.15 / numpy 1.26):
one subprocess runs all of them (TensorFlow takes seconds to start). It is started just
before the CARE training, so both train at the same time; the N2V tests at the end of the
file read its results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from snakescope.blockwise.dense import receptive_halo
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.restoration import check_model, load_model, predict, restoration_metrics, train_care, train_n2v
from snakescope.restoration.models import default_block_shape, dihedral_mean
from snakescope.restoration.patches import MANIPULATORS, as_source, augment, intensity_fit, n2v_mask, sample_patches
from snakescope.settings import defaults

# Keras 3 converts tensors with np.array(x) inside fit (its own deprecation, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = Path(__file__).resolve().parents[1]
N2V_PYTHON = REPO / ".venv" / "n2v" / "bin" / "python"
N2V_SETTINGS = defaults().restoration.n2v
CARE_SETTINGS = defaults().restoration.care
INGEST = defaults().ingest


def write_ngff(path: Path, data: np.ndarray, axes: str, chunks) -> Path:
    group = ngff.open_group(path, "w")
    shapes = ngff.pyramid_shapes(axes, data.shape, "auto")
    levels = ngff.create_levels(group, shapes, chunks, np.float32, "lz4")
    levels[0][...] = data.astype(np.float32)
    ngff.write_pyramid(group, axes, shapes, chunks, np.float32, "lz4", 1, "mean", first=1)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, [1.0] * len(axes), len(shapes), path.stem)]
    return path


def smooth_image(rng, shape, sigma=3.0) -> np.ndarray:
    img = ndimage.gaussian_filter(rng.random(shape), [0] * (len(shape) - 2) + [sigma, sigma])
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def no_partials(path: Path) -> bool:
    return not path.exists() and not list(path.parent.glob(path.name + ".partial-*"))


# ---------------------------------------------------------------------------------------
# The N2V subprocess (n2v environment), started early and read at the end.

N2V_SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
import numpy as np
from snakescope.io import ngff
from snakescope.restoration import check_model, load_model, predict, train_n2v
from snakescope.settings import Ingest, N2VTraining
from snakescope.errors import InputError

root = Path(sys.argv[1])
given = json.loads((root / "settings.json").read_text())  # the schema's defaults (no jsonschema here)
n2v, ingest = N2VTraining.from_dict(given["n2v"]), Ingest.from_dict(given["ingest"])
out = {}
def write(path, data, axes, chunks):
    g = ngff.open_group(path, "w")
    shapes = ngff.pyramid_shapes(axes, data.shape, "auto")
    levels = ngff.create_levels(g, shapes, chunks, np.float32, "lz4")
    levels[0][...] = data
    ngff.write_pyramid(g, axes, shapes, chunks, np.float32, "lz4", 1, "mean", first=1)
    g.attrs["multiscales"] = [ngff.multiscales_metadata(axes, [1.0] * len(axes), len(shapes), path.stem)]
    return str(path)

rng = np.random.default_rng(0)
clean = np.load(root / "clean_tyx.npy")
noisy = (clean + 0.25 * rng.standard_normal(clean.shape)).astype(np.float32)
a = write(root / "a.ome.zarr", noisy[:2], "tyx", (1, 32, 32))
b = write(root / "b.ome.zarr", noisy[2:], "tyx", (1, 32, 32))
# the defaults are N2V2's (max-blur pooling, no top skip connection, median replacement)
tiny = n2v.replace(patch_shape=[32, 32], epochs=2, steps_per_epoch=6, batch_size=8, unet_depth=2, unet_n_first=8,
                   n_patches=64, patience=5)
out["train"] = train_n2v([a, b], root / "n2v2d", tiny, seed=3)
config = json.loads((root / "n2v2d" / "config.json").read_text())
out["config2d"] = {k: config[k] for k in ("blurpool", "skip_skipone", "n2v_manipulator", "structN2Vmask")}
# One loaded model restores several images.
model = load_model(root / "n2v2d", "n2v")
out["predict"] = predict(model, a, root / "pred.ome.zarr", storage=ingest, block_shape={"y": 48, "x": 40})
predict(model, b, root / "pred_b.ome.zarr", storage=ingest)
whole = np.stack([model.model.predict(noisy[i], "YX") for i in range(4)])  # n2v's own whole-image predict
blockwise = np.concatenate([ngff.read_image(root / name).data[...] for name in ("pred.ome.zarr", "pred_b.ome.zarr")])
out["max_abs_diff"] = float(np.abs(blockwise - whole).max())
out["max_abs"] = float(np.abs(whole).max())
out["pred_shape"] = list(blockwise.shape)
out["pred_dtype"] = str(blockwise.dtype)
# Test-time augmentation, block by block, equals n2v's own whole-image one (same 8 transforms).
out["predict_tta"] = predict(model, a, root / "pred_tta.ome.zarr", storage=ingest, block_shape={"y": 48, "x": 40},
                             tta=True)
whole_tta = np.stack([model.model.predict(noisy[i], "YX", tta=True) for i in range(2)])
blockwise_tta = ngff.read_image(root / "pred_tta.ome.zarr").data[...]
out["max_abs_diff_tta"] = float(np.abs(blockwise_tta - whole_tta).max())
out["tta_differs"] = float(np.abs(whole_tta - whole[:2]).max())
# and the average, written out by hand, of the 8 flips/rotations each turned back
def by_hand(predict_one, image, turns):
    total = 0
    for k in turns:
        for flip in (False, True):
            x = np.rot90(image, k)
            x = x[:, ::-1] if flip else x
            y = predict_one(np.ascontiguousarray(x))
            total = total + np.rot90(y[:, ::-1] if flip else y, -k)
    return total / (2 * len(turns))
manual = np.stack([by_hand(lambda x: model.model.predict(x, "YX"), noisy[i], range(4)) for i in range(2)])
out["max_abs_diff_tta_manual"] = float(np.abs(blockwise_tta - manual).max())

# 3D: a z stack gives 3D patches and a 3D model.
vol = (np.load(root / "clean_zyx.npy") + 0.25 * rng.standard_normal((16, 48, 48))).astype(np.float32)
v = write(root / "v.ome.zarr", vol, "zyx", (8, 32, 32))
# structN2V along x, from the config (restoration.n2v.struct_mask)
tiny3 = N2VTraining.from_dict({**tiny.to_dict(), "patch_shape": [16, 16], "patch_depth": 8, "epochs": 1,
                               "steps_per_epoch": 4, "batch_size": 4, "unet_depth": 1, "n_patches": 32,
                               "struct_mask": [[[1, 1, 1]]]})
out["train3d"] = train_n2v([v], root / "n2v3d", tiny3, seed=1)
out["struct3d"] = json.loads((root / "n2v3d" / "config.json").read_text())["structN2Vmask"]
predict(root / "n2v3d", v, root / "pred3d.ome.zarr", storage=ingest, block_shape={"z": 8, "y": 24, "x": 24})
model3 = load_model(root / "n2v3d", "n2v")
whole3 = model3.model.predict(vol, "ZYX")
out["max_abs_diff_3d"] = float(np.abs(ngff.read_image(root / "pred3d.ome.zarr").data[...] - whole3).max())
# a structN2V model's test-time augmentation: the 4 mirror images only (its noise keeps its direction)
out["predict3d_tta"] = predict(model3, v, root / "pred3d_tta.ome.zarr", storage=ingest,
                               block_shape={"z": 8, "y": 24, "x": 24}, tta=True)
yxz = vol.transpose(1, 2, 0)  # by_hand turns the first two axes
mirrors = by_hand(lambda x: model3.model.predict(x.transpose(2, 0, 1), "ZYX").transpose(1, 2, 0), yxz, (0, 2))
out["max_abs_diff_3d_tta"] = float(np.abs(ngff.read_image(root / "pred3d_tta.ome.zarr").data[...]
                                          - mirrors.transpose(2, 0, 1)).max())

# Fine-tuning: the 2D model trained further on one image, at a learning rate too small to
# move its kernels (batch norm statistics still move), into a folder that names its parent.
out["finetune"] = train_n2v([a], root / "n2v_child", tiny.replace(epochs=1, steps_per_epoch=1, learning_rate=1e-12),
                            seed=3, parent=root / "n2v2d")

# A pretrained model from a local folder (a copy) gives the same restoration.
shutil.copytree(root / "n2v2d", root / "copied_model")
predict(root / "copied_model", a, root / "pred_copy.ome.zarr", storage=ingest)
out["pretrained_same"] = bool(np.allclose(ngff.read_image(root / "pred_copy.ome.zarr").data[...], whole[:2], atol=1e-5))

# Bad input, in the n2v environment too.
def error(fn):
    try:
        fn()
    except InputError as exc:
        return str(exc)
    return None
broken = root / "broken_model"
broken.mkdir()
(broken / "config.json").write_text(json.dumps(dict(json.loads((root / "n2v2d" / "config.json").read_text()))))
(broken / "weights_best.h5").write_bytes(b"not hdf5")
out["broken_error"] = error(lambda: predict(broken, a, root / "never.ome.zarr", storage=ingest))
out["broken_no_output"] = not (root / "never.ome.zarr").exists() and not list(root.glob("never.ome.zarr.partial-*"))
out["missing_error"] = error(lambda: predict(root / "nope", a, root / "never2.ome.zarr", storage=ingest))
out["care_as_n2v_error"] = error(lambda: check_model(root / "n2v2d", "care"))
# a struct_mask of the wrong dimensionality (or even sizes) is named before any patch is drawn
out["bad_struct_error"] = error(lambda: train_n2v([v], root / "n2v_bad", tiny3.replace(struct_mask=[[1, 1]]), seed=1))
out["bad_struct_no_output"] = not (root / "n2v_bad").exists() and not list(root.glob("n2v_bad.partial-*"))
(root / "result.json").write_text(json.dumps(out))
"""


class N2VRun:
    """The n2v-environment subprocess: started once, waited for by the N2V tests."""

    proc = None
    root: Path | None = None

    @classmethod
    def start(cls, root: Path) -> None:
        if cls.proc is not None or not N2V_PYTHON.exists():
            return
        cls.root = root
        rng = np.random.default_rng(5)
        np.save(root / "clean_tyx.npy", smooth_image(rng, (4, 96, 112), 3.0))
        np.save(root / "clean_zyx.npy", smooth_image(rng, (16, 48, 48), 2.0))
        (root / "settings.json").write_text(json.dumps({"n2v": N2V_SETTINGS.to_dict(), "ingest": INGEST.to_dict()}))
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        cls.log = open(root / "n2v.log", "w")
        cls.proc = subprocess.Popen([str(N2V_PYTHON), "-c", N2V_SCRIPT, str(root)], stdout=cls.log,
                                    stderr=subprocess.STDOUT, env=env, cwd=REPO)

    @classmethod
    def result(cls) -> dict:
        if not N2V_PYTHON.exists():
            pytest.skip(f"{N2V_PYTHON} is absent: the n2v environment is not built (make setup)")
        if cls.proc is None:
            raise AssertionError("the N2V subprocess was not started")
        rc = cls.proc.wait(timeout=600)
        cls.log.close()
        text = (cls.root / "n2v.log").read_text()
        if rc != 0 or not (cls.root / "result.json").exists():
            raise AssertionError(f"N2V subprocess failed ({rc}):\n{text[-6000:]}")
        return json.loads((cls.root / "result.json").read_text())


@pytest.fixture(scope="module")
def n2v_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("n2v")
    N2VRun.start(root)
    yield root
    if N2VRun.proc is not None and N2VRun.proc.poll() is None:  # a failing run (-x): do not leave it behind
        N2VRun.proc.kill()
        N2VRun.proc.wait()


# ---------------------------------------------------------------------------------------
# Prediction blocks.


def test_default_blocks_bound_memory_not_volume():
    for axes, shape, nd in [("tyx", (65, 4096, 4096), 2), ("tyx", (500, 256, 256), 2), ("zyx", (200, 4096, 4096), 3),
                            ("tczyx"[:1] + "zyx", (3, 40, 2048, 2048), 3)]:
        block = default_block_shape(axes, shape, nd, halo=24, n_first=16, chunks=tuple(min(512, s) for s in shape))
        outer = 1
        for a, n in zip(axes, shape):
            b = block[a]
            assert 1 <= b <= n
            outer *= min(n + 8, b + 48) if a in "zyx"[3 - nd:] else b
        assert outer <= (2**25 if nd == 2 else 2**26) // 16  # 2-4 M voxels per block, whatever the volume
    assert default_block_shape("tyx", (500, 256, 256), 2, halo=24)["t"] > 1  # small frames are batched


# ---------------------------------------------------------------------------------------
# Patch sampling and N2V masking (no TensorFlow).


class RecordingArray:
    """An array that records every region read from it."""

    def __init__(self, data):
        self.data, self.reads = data, []

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_patch_sampling_reads_only_patch_regions_and_is_seeded(tmp_path, rng):
    data = rng.random((4, 2, 80, 96)).astype(np.float32)
    path = write_ngff(tmp_path / "img.ome.zarr", data, "tcyx", (1, 1, 32, 32))
    arrays = [RecordingArray(ngff.read_image(path).data) for _ in range(3)]
    p1 = sample_patches([(arrays[0], "tcyx")], 20, (16, 24), channel=1, seed=7)
    p2 = sample_patches([(arrays[1], "tcyx")], 20, (16, 24), channel=1, seed=7)
    p3 = sample_patches([(arrays[2], "tcyx")], 20, (16, 24), channel=1, seed=8)
    assert p1.shape == (20, 16, 24) and p1.dtype == np.float32
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    assert len(arrays[0].reads) == 20
    for key in arrays[0].reads:
        t, c, y, x = key
        assert (t.stop - t.start, c.start, c.stop - c.start, y.stop - y.start, x.stop - x.start) == (1, 1, 1, 16, 24)
        np.testing.assert_array_equal(data[key][0, 0], p1[arrays[0].reads.index(key)])
    # 20 patches of one frame and channel: a fraction of the data, not the volume
    assert sum(np.prod([s.stop - s.start for s in k]) for k in arrays[0].reads) == 20 * 16 * 24


def test_patch_sampling_3d_pairs_and_frames(rng):
    vol = rng.random((2, 20, 40, 40)).astype(np.float32)
    X, Y = sample_patches([(vol, "tzyx")], 10, (8, 16, 16), targets=[(vol * 2, "tzyx")], seed=0)
    assert X.shape == (10, 8, 16, 16)
    np.testing.assert_allclose(Y, 2 * X)
    flat = sample_patches([(vol, "tzyx")], 6, (16, 16), ndim=2, seed=0)  # z planes as frames
    assert flat.shape == (6, 16, 16)


def test_too_few_patches_is_an_input_error(tmp_path, rng):
    small = write_ngff(tmp_path / "small.ome.zarr", rng.random((40, 50)), "yx", (32, 32))
    with pytest.raises(InputError, match=r"too few patches.*only 1 non-overlapping.*at least 8 are needed") as exc:
        train_n2v([str(small)], tmp_path / "model", N2V_SETTINGS.replace(patch_shape=[32, 32]), seed=0)
    assert "small.ome.zarr" in str(exc.value)
    assert no_partials(tmp_path / "model")
    with pytest.raises(InputError, match="too few patches"):
        train_care(str(small), str(small), tmp_path / "care", CARE_SETTINGS.replace(patch_shape=[32, 32]), seed=0)
    assert no_partials(tmp_path / "care")


@pytest.mark.parametrize("manipulator", MANIPULATORS)
def test_n2v_mask_blind_spots(manipulator):
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32)).astype(np.float32)
    inputs, targets = n2v_mask(x, 2.0, manipulator, 2, rng)
    assert inputs.shape == (4, 32, 32, 1) and targets.shape == (4, 32, 32, 2)
    mask = targets[..., 1] == 1
    assert 0.01 < mask.mean() < 0.03  # 2 % of the pixels are blind spots
    np.testing.assert_array_equal(targets[..., 0][mask], x[mask])
    assert (targets[..., 0][~mask] == 0).all()
    np.testing.assert_array_equal(inputs[..., 0][~mask], x[~mask])  # only blind spots change
    changed = (inputs[..., 0] != x)[mask].mean()
    if manipulator in ("uniform_withoutCP", "normal_withoutCP", "mean", "median", "normal_additive", "normal_fitted"):
        assert changed > 0.95
    if manipulator == "identity":
        assert changed == 0


def test_n2v_mask_3d_and_neighbourhood():
    rng = np.random.default_rng(1)
    x = np.arange(8 * 16 * 16, dtype=np.float32).reshape(1, 8, 16, 16)
    inputs, targets = n2v_mask(x, 5.0, "uniform_withoutCP", 1, rng)
    mask = targets[0, ..., 1] == 1
    assert mask.sum() > 0
    # the replacement comes from the 3x3x3 neighbourhood: its index differs by at most 1 per axis
    for z, y, xx in zip(*np.nonzero(mask)):
        src = np.unravel_index(int(inputs[0, z, y, xx, 0]), (8, 16, 16))
        assert max(abs(src[0] - z), abs(src[1] - y), abs(src[2] - xx)) == 1


def test_intensity_fit_brings_a_target_to_its_image_scale(rng):
    target = smooth_image(rng, (3, 40, 48), 2.0)
    image = 0.4 * target + 0.1 + rng.normal(0, 0.05, target.shape).astype(np.float32)  # dimmer, offset, noisy
    src, tgt = as_source((image, "tyx")), as_source((target, "tyx"))
    slope, offset = intensity_fit(src, tgt)
    coef = np.polyfit(target.ravel().astype(float), image.ravel().astype(float), 1)  # image ~ a * target + b
    assert (slope, offset) == pytest.approx(tuple(coef), rel=1e-6)
    assert slope == pytest.approx(0.4, abs=0.01) and offset == pytest.approx(0.1, abs=0.01)
    fitted = dataclasses.replace(tgt, intensity=(slope, offset))
    region = (slice(1, 2), slice(0, 40), slice(0, 48))
    np.testing.assert_allclose(fitted.read(region), slope * target[1:2] + offset, rtol=1e-5)
    np.testing.assert_array_equal(tgt.read(region), target[1:2])  # the original source is unchanged


def test_structured_blind_spots_hide_the_marked_neighbours():
    rng = np.random.default_rng(2)
    x = np.full((3, 24, 24), 7.0, np.float32)  # far outside the struct noise's [-2, 2]
    row = [[1, 1, 1, 1, 1]]  # along x, two pixels each side
    inputs, targets = n2v_mask(x, 2.0, "uniform_withoutCP", 2, rng, struct_mask=row)
    spots = np.argwhere(targets[..., 1] == 1)
    hidden = np.abs(inputs[..., 0]) <= 2
    for b, y, xx in spots:
        for dx in (-2, -1, 1, 2):
            assert hidden[b, y, min(23, max(0, xx + dx))]
    assert hidden.sum() <= 4 * len(spots)  # nothing beyond the marked pixels (and their clipped copies)
    rows = {(b, y) for b, y, _ in spots}
    assert all((b, y) in rows for b, y, _ in np.argwhere(hidden))  # only along x, in the blind spots' rows
    plain_inputs, _ = n2v_mask(x, 2.0, "uniform_withoutCP", 2, np.random.default_rng(2))
    assert not (np.abs(plain_inputs) <= 2).any()  # without struct_mask nothing is hidden
    with pytest.raises(InputError, match="struct_mask"):
        n2v_mask(x, 2.0, "uniform_withoutCP", 2, rng, struct_mask=[[1, 1, 1, 1]])  # even size: no centre


# ---------------------------------------------------------------------------------------
# Metrics.


def test_restoration_metrics_on_known_arrays():
    target = np.zeros((2, 32, 32), np.float32)
    target[:, 8:24, 8:24] = 2.0  # data range 2
    source = target + 0.2  # MSE 0.04 -> PSNR 10 log10(4 / 0.04) = 20 dB
    restored = target.copy()
    restored[0, 0, 0] += 0.5
    m = restoration_metrics((source, "tyx"), (restored, "tyx"), (target, "tyx"))
    assert m["data_range"] == 2.0 and m["data_range_rule"] == "target max - min"
    assert m["psnr_input"] == pytest.approx(20.0, abs=1e-4)
    mse = 0.25 / target.size
    assert m["psnr_restored"] == pytest.approx(10 * np.log10(4 / mse), abs=1e-3)
    from skimage.metrics import structural_similarity

    expected = np.mean([structural_similarity(target[i].astype(float), source[i].astype(float), data_range=2.0) for i in range(2)])
    assert m["ssim_input"] == pytest.approx(expected, abs=1e-9)
    assert m["ssim_restored"] > m["ssim_input"]
    perfect = restoration_metrics((source, "tyx"), (target, "tyx"), (target, "tyx"))
    assert perfect["psnr_restored"] == float("inf") and perfect["ssim_restored"] == pytest.approx(1.0)
    fixed = restoration_metrics((source, "tyx"), (restored, "tyx"), (target, "tyx"), data_range=1.0)
    assert fixed["psnr_input"] == pytest.approx(10 * np.log10(1 / 0.04), abs=1e-4)


def test_restoration_metrics_affine_fit_matches_least_squares(rng):
    target = rng.random((3, 24, 40)).astype(np.float32)
    scaled = (0.5 * target + 0.3).astype(np.float32)  # contrast and offset only
    noisy = (target + rng.normal(0, 0.1, target.shape)).astype(np.float32)
    m = restoration_metrics((scaled, "tyx"), (noisy, "tyx"), (target, "tyx"), data_range=1.0)
    assert m["psnr_input"] < 20 and m["psnr_input_affine"] > 60  # the fit undoes a pure affine change
    assert m["affine_slope_input"] == pytest.approx(2.0, rel=1e-4)
    a = np.stack([noisy.ravel().astype(float), np.ones(noisy.size)], 1)
    coef, *_ = np.linalg.lstsq(a, target.ravel().astype(float), rcond=None)
    mse = np.mean((a @ coef - target.ravel()) ** 2)
    assert m["psnr_restored_affine"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert m["affine_slope_restored"] == pytest.approx(coef[0], rel=1e-6)
    assert m["psnr_gain_affine"] == pytest.approx(m["psnr_restored_affine"] - m["psnr_input_affine"])
    assert m["ssim_input_affine"] == pytest.approx(1.0, abs=1e-6)  # SSIM after the fit: the pure affine change undone
    fitted = (a @ coef).reshape(target.shape)
    from skimage.metrics import structural_similarity

    expected = np.mean([structural_similarity(target[i].astype(float), fitted[i], data_range=1.0) for i in range(3)])
    assert m["ssim_restored_affine"] == pytest.approx(expected, abs=1e-6)


def test_affine_fitted_metrics_on_a_hand_computed_case():
    # target: 0 on the left half, 2 on the right (mean 1, variance 1); the estimate is
    # 3 * target - 1 plus +-d alternating by row, which is orthogonal to the target and to a
    # constant. The least-squares fit of the estimate to the target then has slope
    # cov / var = 3 / (9 + d^2) and leaves the error 1 - 9 / (9 + d^2) = d^2 / (9 + d^2).
    d = 0.3
    target = np.zeros((16, 16), np.float32)
    target[:, 8:] = 2.0
    error = np.where(np.arange(16)[:, None] % 2 == 0, d, -d) * np.ones((1, 16))
    estimate = (3 * target - 1 + error).astype(np.float32)
    m = restoration_metrics((target, "yx"), (estimate, "yx"), (target, "yx"), data_range=2.0)
    mse = d**2 / (9 + d**2)  # 0.0099
    assert m["affine_slope_restored"] == pytest.approx(3 / (9 + d**2), rel=1e-6)
    assert m["psnr_restored_affine"] == pytest.approx(10 * np.log10(4 / mse), abs=1e-4)  # 26.06 dB
    assert m["psnr_restored_affine"] == pytest.approx(26.0638, abs=1e-3)
    fitted = 3 / (9 + d**2) * (estimate.astype(np.float64) - 2.0) + 1.0  # the estimate's mean is 2, the target's 1
    from skimage.metrics import structural_similarity

    assert m["ssim_restored_affine"] == pytest.approx(
        structural_similarity(target.astype(np.float64), fitted, data_range=2.0), abs=1e-9)
    assert m["psnr_input_affine"] == float("inf") and m["ssim_input_affine"] == pytest.approx(1.0)


def test_dihedral_mean_averages_the_eight_flips_and_rotations(rng):
    x = rng.random((2, 8, 12)).astype(np.float32)  # a batch of non-square planes
    np.testing.assert_allclose(dihedral_mean(lambda b: 2 * b, x), 2 * x, rtol=1e-6)  # equivariant: unchanged
    # a network that shifts by one pixel along x: each transform shifts along another
    # direction once brought back, so the mean is the average of the 4 shifts
    shifted = dihedral_mean(lambda b: np.roll(b, 1, axis=-1), x)
    expected = sum(np.roll(x, k, axis=ax) for k in (1, -1) for ax in (-1, -2)) / 4
    np.testing.assert_allclose(shifted, expected, rtol=1e-6)
    # by hand: each of the 8 transforms of x through the network and back, averaged
    net = lambda b: np.cumsum(b, axis=-1)  # noqa: E731 (not equivariant: every transform differs)
    by_hand = np.zeros(x.shape)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(x, k, axes=(-2, -1))
            t = t[..., ::-1] if flip else t
            y = net(t)
            by_hand += np.rot90(y[..., ::-1] if flip else y, -k, axes=(-2, -1))
    np.testing.assert_allclose(dihedral_mean(net, x), by_hand / 8, rtol=1e-5)
    # the 4 mirror images only (a structN2V model): no quarter turn, so a shift along x
    # stays along x
    mirrored = dihedral_mean(lambda b: np.roll(b, 1, axis=-1), x, quarter_turns=False)
    np.testing.assert_allclose(mirrored, (np.roll(x, 1, axis=-1) + np.roll(x, -1, axis=-1)) / 2, rtol=1e-6)


def test_augment_without_quarter_turns_keeps_directions(rng):
    x = rng.random((64, 6, 6)).astype(np.float32)
    x[:, :, 0] = 10.0  # a column: a quarter turn would make it a row
    turned = augment(np.random.default_rng(0), x)
    assert any((p[0, :] == 10).all() or (p[-1, :] == 10).all() for p in turned)  # quarter turns by default
    mirrored = augment(np.random.default_rng(0), x, quarter_turns=False)
    assert all((p[:, 0] == 10).all() or (p[:, -1] == 10).all() for p in mirrored)
    assert {(p[:, 0] == 10).all() for p in mirrored} == {True, False}  # flipped along x in some


def test_restoration_qc_page_with_residual_and_metrics(tmp_path, rng):
    from snakescope.report.qc import restoration_before_after

    clean = smooth_image(rng, (3, 80, 96), 3.0)
    noisy = clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32)
    two = np.stack([noisy, np.zeros_like(noisy)], axis=1)  # channel 0 restored
    restored = 3 * ndimage.gaussian_filter(noisy, (0, 1.5, 1.5)) + 1  # another intensity scale (as CARE's output)
    src = write_ngff(tmp_path / "in.ome.zarr", two, "tcyx", (1, 1, 32, 32))
    out = write_ngff(tmp_path / "out.ome.zarr", np.stack([restored, np.zeros_like(noisy)], axis=1), "tcyx", (1, 1, 32, 32))
    tgt = write_ngff(tmp_path / "clean.ome.zarr", clean, "tyx", (1, 32, 32))
    metrics = restoration_before_after(src, out, tmp_path / "qc" / "restoration.png", target_path=tgt, channel=0,
                                       title="sampleA")
    assert (tmp_path / "qc" / "restoration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = restoration_metrics((noisy[1], "yx"), (restored[1], "yx"), (clean[1], "yx"))  # the middle frame
    for key in ("psnr_input_affine", "psnr_restored_affine", "ssim_input_affine", "ssim_restored_affine"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-5)
    assert metrics["psnr_restored_affine"] > metrics["psnr_input_affine"] + 3
    assert restoration_before_after(src, out, tmp_path / "no_target.png") == {}  # no target: the images only
    assert (tmp_path / "no_target.png").stat().st_size > 10_000


def test_qc_residual_is_scale_free():
    from snakescope.report.qc import _fit_to

    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_allclose(_fit_to(5 * image - 2, image), image, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input that needs no training.


def test_mismatched_target_shape_names_sample_and_shapes(tmp_path, rng):
    src = write_ngff(tmp_path / "s.ome.zarr", rng.random((64, 80)), "yx", (32, 32))
    tgt = write_ngff(tmp_path / "t.ome.zarr", rng.random((64, 72)), "yx", (32, 32))
    with pytest.raises(InputError, match=r"sample7.*\(64, 72\).*\(64, 80\)"):
        train_care(str(src), str(tgt), tmp_path / "care", CARE_SETTINGS, seed=0, name="sample7")
    assert no_partials(tmp_path / "care")
    with pytest.raises(InputError, match=r"\(64, 72\)"):
        restoration_metrics(str(src), str(src), str(tgt))


def test_missing_or_incompatible_model_folder(tmp_path, rng):
    img = write_ngff(tmp_path / "img.ome.zarr", rng.random((64, 64)), "yx", (32, 32))
    out = tmp_path / "restored.ome.zarr"
    with pytest.raises(InputError, match="nowhere.*does not exist"):
        predict(tmp_path / "nowhere", img, out, storage=INGEST)
    assert no_partials(out)
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    with pytest.raises(InputError, match="not_a_model.*no config.json"):
        predict(bad, img, out, storage=INGEST)
    (bad / "config.json").write_text(json.dumps({"n_dim": 2}))
    with pytest.raises(InputError, match="lacks"):
        check_model(bad, "care")
    (bad / "config.json").write_text(json.dumps({"n_dim": 2, "unet_n_depth": 2, "unet_kern_size": 3, "n_channel_in": 1,
                                                 "n_channel_out": 1, "axes": "YXC"}))
    with pytest.raises(InputError, match="no weights"):
        check_model(bad, "care")
    with pytest.raises(InputError, match="is a CARE model folder, not a N2V one"):
        load_model(bad, "n2v")
    assert no_partials(out)


# ---------------------------------------------------------------------------------------
# CARE (main environment): one short training shared by the tests below.


@pytest.fixture(scope="module")
def care(tmp_path_factory, n2v_root):
    """Trains CARE once; first starts the N2V subprocess, which then trains alongside."""
    root = tmp_path_factory.mktemp("care")
    rng = np.random.default_rng(2)
    clean = smooth_image(rng, (3, 96, 96), 3.0)
    noisy = clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32)
    # two channels: channel 0 is restored, channel 1 must come through unchanged
    two = np.stack([noisy, np.full_like(noisy, 0.25)], axis=1)
    src = write_ngff(root / "noisy.ome.zarr", two, "tcyx", (1, 1, 32, 32))
    tgt = write_ngff(root / "clean.ome.zarr", clean, "tyx", (1, 32, 32))
    settings = CARE_SETTINGS.replace(patch_shape=[32, 32], epochs=2, steps_per_epoch=25, batch_size=16, unet_depth=2,
                                     unet_n_first=16, n_patches=256, learning_rate=3e-3, patience=3)
    meta = train_care(str(src), str(tgt), root / "model", settings, seed=0, name="sampleA", channel=0)
    return {"root": root, "src": src, "tgt": tgt, "clean": clean, "noisy": noisy, "meta": meta, "settings": settings}


@pytest.mark.slow
def test_care_training_writes_model_folder_and_curves(care):
    model = care["root"] / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "weights_best.h5", "weights_last.h5", "training.csv", "training.png", "training.log",
            "snakescope.json"} <= names
    import pandas as pd

    curves = pd.read_csv(model / "training.csv")
    assert len(curves) == 2 and {"epoch", "loss", "val_loss"} <= set(curves.columns)
    assert np.isfinite(curves[["loss", "val_loss"]].to_numpy()).all()
    assert (model / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2" in (model / "training.log").read_text()
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta == care["meta"]
    assert meta["kind"] == "care" and meta["ndim"] == 2 and meta["seed"] == 0 and meta["parent"] is None
    assert meta["halo"] == receptive_halo(2, 3) and meta["align"] == 4 and meta["axes"] == "yx"
    assert meta["settings"] == care["settings"].to_dict()
    data = meta["data"]
    assert data["channel"] == 0 and data["images"] == ["sampleA"] and data["targets"] == ["sampleA (target)"]
    assert data["patch_shape"] == [32, 32] and data["n_train_patches"] + data["n_val_patches"] == 256
    (slope, offset), = data["target_fit"]  # noisy = clean + noise: the target is already on the image's scale
    assert slope == pytest.approx(1.0, abs=0.02) and offset == pytest.approx(0.0, abs=0.02)
    assert meta["training"]["epochs_run"] == 2 and meta["training"]["stopped_by"] == "epochs"
    assert "weights_now.h5" not in names
    assert check_model(model, "care")["kind"] == "care"
    assert not list(care["root"].glob("model.partial-*"))


@pytest.mark.slow
def test_care_blockwise_prediction_equals_whole_image(care):
    out = care["root"] / "restored.ome.zarr"
    summary = predict(care["root"] / "model", care["src"], out, storage=INGEST, channel=0, block_shape={"t": 1, "y": 40, "x": 48})
    assert summary["n_blocks"] == 3 * 3 * 2
    restored = ngff.read_image(out)
    source = ngff.read_image(care["src"])
    assert restored.axes == "tcyx" and restored.data.shape == source.data.shape
    assert restored.data.chunks == source.data.chunks and restored.scale == source.scale
    assert restored.data.dtype == np.float32
    assert len(restored.levels) == len(source.levels)
    assert restored.attrs["snakescope"]["restore"]["channel"] == 0
    np.testing.assert_array_equal(restored.data[:, 1], source.data[:, 1])  # other channel kept as is
    from csbdeep.models import CARE

    model = CARE(None, name="model", basedir=str(care["root"]))
    whole = np.stack([model.predict(care["noisy"][i], "YX", normalizer=None) for i in range(3)])
    np.testing.assert_allclose(restored.data[:, 0], whole, rtol=0, atol=1e-5)
    # test-time augmentation block by block = the mean of csbdeep's whole-image predictions
    # of the 8 flipped/rotated images, each turned back
    out_tta = care["root"] / "restored_tta.ome.zarr"
    summary = predict(care["root"] / "model", care["src"], out_tta, storage=INGEST, channel=0, tta=True,
                      block_shape={"t": 1, "y": 40, "x": 48})
    assert summary["tta"] is True
    whole_tta = np.stack([dihedral_mean(lambda b: np.stack([model.predict(p, "YX", normalizer=None) for p in b]),
                                        care["noisy"][i][None])[0] for i in range(3)])
    np.testing.assert_allclose(ngff.read_image(out_tta).data[:, 0], whole_tta, rtol=0, atol=1e-5)
    assert np.abs(whole_tta - whole).max() > 1e-4


@pytest.mark.slow
def test_care_reduces_error_and_metrics(care):
    out = care["root"] / "restored_loaded.ome.zarr"
    model = load_model(care["root"] / "model", "care")
    predict(model, care["src"], out, storage=INGEST, channel=0)
    m = restoration_metrics(str(care["src"]), str(out), str(care["tgt"]), channel=0)
    restored = ngff.read_image(out).data[:, 0]
    mse_in = np.mean((care["noisy"] - care["clean"]) ** 2)
    mse_out = np.mean((restored - care["clean"]) ** 2)
    assert m["psnr_input"] == pytest.approx(10 * np.log10(1.0 / mse_in), abs=1e-3)
    assert m["psnr_restored"] == pytest.approx(10 * np.log10(1.0 / mse_out), abs=1e-3)
    assert m["psnr_restored"] > m["psnr_input"] + 3  # a short training already removes most noise
    assert m["ssim_restored"] > m["ssim_input"]
    # The same loaded model restores another image (another shape, no channel axis), as a
    # model loaded for that image alone would.
    other = write_ngff(care["root"] / "other.ome.zarr", care["noisy"][:2, :80, :72], "tyx", (1, 32, 32))
    predict(model, other, care["root"] / "other_loaded.ome.zarr", storage=INGEST)
    predict(care["root"] / "model", other, care["root"] / "other_alone.ome.zarr", storage=INGEST)
    np.testing.assert_array_equal(ngff.read_image(care["root"] / "other_loaded.ome.zarr").data[...],
                                  ngff.read_image(care["root"] / "other_alone.ome.zarr").data[...])


def weights(path: Path) -> list[np.ndarray]:
    import h5py

    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_care_training_starts_from_a_parent_model(care):
    parent = care["root"] / "model"
    # a learning rate too small to move the weights: the result is the parent
    settings = care["settings"].replace(epochs=1, steps_per_epoch=1, n_patches=64, learning_rate=1e-12, patience=0)
    meta = train_care(str(care["src"]), str(care["tgt"]), care["root"] / "child", settings, seed=1, channel=0,
                      parent=parent)
    assert meta["parent"] == str(parent)
    for mine, theirs in zip(weights(care["root"] / "child" / "weights_last.h5"), weights(parent / "weights_best.h5"),
                            strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="model: its network differs from the configured one .unet_n_first 8 here, "
                                         "16 in the parent.: set restoration.care to the parent's values"):
        train_care(str(care["src"]), str(care["tgt"]), care["root"] / "wider", settings.replace(unet_n_first=8), seed=1,
                   channel=0, parent=parent)
    assert no_partials(care["root"] / "wider")
    # a parent of the other dimensionality (its config.json says 3D) is named, nothing trains
    flat = care["root"] / "parent3d"
    shutil.copytree(parent, flat)
    config = json.loads((flat / "config.json").read_text())
    (flat / "config.json").write_text(json.dumps({**config, "n_dim": 3, "axes": "ZYXC"}))
    with pytest.raises(InputError, match="parent3d: is a 3D CARE model; it cannot be fine-tuned on 2D images"):
        train_care(str(care["src"]), str(care["tgt"]), care["root"] / "never", settings, seed=1, channel=0, parent=flat)
    assert no_partials(care["root"] / "never")


# ---------------------------------------------------------------------------------------
# N2V (n2v environment): results of the subprocess started at the top of this module.


@pytest.fixture(scope="module")
def n2v(n2v_root):
    return N2VRun.result()


@pytest.mark.slow
def test_n2v_training_writes_model_folder_csv_and_png(n2v, n2v_root):
    model = n2v_root / "n2v2d"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "weights_best.h5", "weights_last.h5", "training.csv", "training.png", "training.log",
            "snakescope.json"} <= names
    import pandas as pd

    curves = pd.read_csv(model / "training.csv")
    assert list(curves["epoch"]) == [0, 1]
    assert np.isfinite(curves[["loss", "val_loss"]].to_numpy()).all()
    assert (model / "training.png").stat().st_size > 1000
    config = json.loads((model / "config.json").read_text())
    assert config["n2v_patch_shape"] == [32, 32] and config["train_tensorboard"] is False
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta == n2v["train"]
    assert meta["kind"] == "n2v" and meta["data"]["images"] == [str(n2v_root / "a.ome.zarr"), str(n2v_root / "b.ome.zarr")]
    assert meta["seed"] == 3 and meta["settings"]["unet_n_first"] == 8 and meta["versions"]["keras"].startswith("2.")
    assert meta["training"]["epochs_run"] == 2 and "weights_now.h5" not in names
    assert check_model(model, "n2v")["ndim"] == 2  # the main environment can validate N2V folders


@pytest.mark.slow
def test_n2v_fine_tuning_starts_from_the_parent(n2v, n2v_root):
    assert n2v["finetune"]["parent"] == str(n2v_root / "n2v2d")
    assert json.loads((n2v_root / "n2v_child" / "snakescope.json").read_text())["parent"] == str(n2v_root / "n2v2d")
    kernels = [[w for w in weights(folder / name) if w.ndim == 4]
               for folder, name in ((n2v_root / "n2v_child", "weights_last.h5"), (n2v_root / "n2v2d", "weights_best.h5"))]
    assert kernels[0]
    for mine, theirs in zip(*kernels, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_n2v_blockwise_prediction_equals_whole_image(n2v):
    assert n2v["predict"]["kind"] == "n2v" and n2v["predict"]["n_blocks"] == 2 * 3  # t batched
    assert n2v["predict"]["halo"] == receptive_halo(2, 3, blurpool=True)  # the blur widens the receptive field
    assert n2v["pred_shape"] == [4, 96, 112] and n2v["pred_dtype"] == "float32"  # two images, one loaded model
    assert n2v["max_abs_diff"] <= 1e-5 * max(1.0, n2v["max_abs"])
    assert n2v["max_abs_diff_3d"] <= 1e-5 * 10
    assert n2v["predict_tta"]["tta"] is True and n2v["max_abs_diff_tta"] <= 1e-5 * max(1.0, n2v["max_abs"])
    assert n2v["tta_differs"] > 1e-4  # the averaged prediction is not the plain one
    assert n2v["max_abs_diff_tta_manual"] <= 1e-5 * max(1.0, n2v["max_abs"])  # = the 8 transforms averaged by hand


@pytest.mark.slow
def test_n2v_3d_model_from_z_stack(n2v):
    assert n2v["train3d"]["ndim"] == 3 and n2v["train3d"]["data"]["patch_shape"] == [8, 16, 16]
    assert n2v["train3d"]["training"]["epochs_run"] == 1 and n2v["train3d"]["axes"] == "zyx"
    assert n2v["struct3d"] == [[[1, 1, 1]]]  # the structured blind spot is recorded where n2v keeps it
    assert n2v["train3d"]["settings"]["struct_mask"] == [[[1, 1, 1]]]
    assert n2v["predict3d_tta"]["tta"] is True and n2v["max_abs_diff_3d_tta"] <= 1e-5 * 10  # its 4 mirror images
    assert "restoration.n2v.struct_mask" in n2v["bad_struct_error"] and "3D array" in n2v["bad_struct_error"]
    assert n2v["bad_struct_no_output"]


@pytest.mark.slow
def test_n2v_defaults_are_n2v2(n2v):
    # the config's defaults reach n2v's network and masking (recorded in the model's config.json)
    assert n2v["config2d"] == {"blurpool": True, "skip_skipone": True, "n2v_manipulator": "median",
                               "structN2Vmask": None}


@pytest.mark.slow
def test_n2v_pretrained_folder_and_bad_model_folders(n2v):
    assert n2v["pretrained_same"]
    assert "broken_model" in n2v["broken_error"] and "cannot be loaded" in n2v["broken_error"]
    assert n2v["broken_no_output"]
    assert "nope" in n2v["missing_error"] and "does not exist" in n2v["missing_error"]
    assert "is a N2V model folder, not a CARE one" in n2v["care_as_n2v_error"]
