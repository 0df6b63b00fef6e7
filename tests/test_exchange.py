"""Exchange with other tools: bioimage.io packages of every learner (validated by
bioimageio.spec, run by bioimageio.core, imported back), and tracks for napari and GEFF.

One tiny model of each learner is trained (a few steps: the packages, not the models, are
under test): StarDist, U-Net, CARE and the classifier here, N2V in a subprocess of the n2v
environment started first (:data:`N2V_SCRIPT`), which also imports N2V packages back and then
runs bioimageio.core on every package (tests/interop_core.py, where TensorFlow is loaded
already). bioimageio.spec validates all packages in .venv/check meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from interop import N2V_PYTHON, check_bioimageio, check_interop, core_environment
from interop_core import as_third_party_package
from snakescope.errors import InputError
from snakescope.exchange import (export_package, import_package, package_kind, read_napari_tracks, write_geff,
                                 write_napari_tracks)
from snakescope.settings import defaults

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# No github_user: bioimageio.spec checks one with GitHub's API (no network in the tests).
AUTHORS = [{"name": "Ada Lovelace", "affiliation": "Analytical Engine Lab"}, "Charles Babbage"]
#: The one warning left: a model uploaded to bioimage.io needs a maintainer's GitHub account.
NO_MAINTAINER = "Missing `maintainers` or any author in `authors` with a specified `github_user` name."
CITATION = [{"text": "A. Lovelace et al. Counting nuclei (2026).", "doi": "10.5281/zenodo.1234567"}]
NORMALIZE = defaults().normalize

N2V_SCRIPT = r"""
import io, json, sys, time, zipfile
from pathlib import Path
import numpy as np
from interop_core import as_third_party_package, check, install_tfsm_layer
from snakescope.exchange import export_package, import_package
from snakescope.io import ngff
from snakescope.restoration import load_model, train_n2v
from snakescope.settings import N2VTraining, Normalize

root = Path(sys.argv[1])
given = json.loads((root / "settings.json").read_text())
n2v, normalize = N2VTraining.from_dict(given["n2v"]), Normalize.from_dict(given["normalize"])
image = np.load(root / "image.npy")
g = ngff.open_group(root / "noisy.ome.zarr", "w")
shapes = ngff.pyramid_shapes("tyx", image.shape, 1)
levels = ngff.create_levels(g, shapes, (1, 32, 32), np.float32, "lz4")
levels[0][...] = image
g.attrs["multiscales"] = [ngff.multiscales_metadata("tyx", [1.0] * 3, len(shapes), "noisy")]
tiny = n2v.replace(patch_shape=[32, 32], epochs=1, steps_per_epoch=2, batch_size=4, unet_depth=2, unet_n_first=8,
                   n_patches=32, blurpool=True, skip_skipone=True)
train_n2v([str(root / "noisy.ome.zarr")], root / "n2v", tiny, seed=0)
raw = np.load(root / "raw.npy")
export_package(root / "n2v", root / "n2v.zip", authors=given["authors"], citation=given["citation"],
               normalize=normalize, test_input=raw, metrics={"psnr": 21.5})
install_tfsm_layer()
out = {"core": check(str(root / "n2v.zip"))}  # bioimageio.core, here where TensorFlow is loaded already
def predict(folder, x):
    return load_model(folder, "n2v").predict_fn()(x)
with zipfile.ZipFile(root / "n2v.zip") as z:
    x = np.load(io.BytesIO(z.read("test_input.npy")))
    y = np.load(io.BytesIO(z.read("test_output.npy")))
lo, hi = np.percentile(x.astype(np.float64), [normalize.low, normalize.high])
xn = ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)[..., 0]
original = predict(root / "n2v", xn)
out["test_output_is_workflow"] = float(np.abs(original - y[..., 0]).max())
import_package(root / "n2v.zip", root / "imported")
out["own_import_diff"] = float(np.abs(predict(root / "imported", xn) - original).max())
as_third_party_package(root / "n2v.zip", root / "n2v_third_party.zip", attachments=["config.json"])
import_package(root / "n2v_third_party.zip", root / "imported_tp")
out["third_party_diff"] = float(np.abs(predict(root / "imported_tp", xn) - original).max())
out["third_party_meta"] = json.loads((root / "imported_tp" / "snakescope.json").read_text())["imported"]
# bioimageio.core on the main environment's packages too, once they are written
listing = root / "packages.json"
deadline = time.time() + 900
while not listing.exists() and time.time() < deadline:
    time.sleep(0.5)
out["core_main"] = {p: check(p) for p in json.loads(listing.read_text())}
(root / "result.json").write_text(json.dumps(out))
"""


def _start_n2v(root: Path, raw: np.ndarray, image: np.ndarray):
    if not N2V_PYTHON.exists():
        return None
    np.save(root / "raw.npy", raw)
    np.save(root / "image.npy", image)
    (root / "settings.json").write_text(json.dumps({"n2v": defaults().restoration.n2v.to_dict(),
                                                    "normalize": NORMALIZE.to_dict(), "authors": AUTHORS,
                                                    "citation": CITATION}))
    log = open(root / "n2v.log", "w")
    return subprocess.Popen([str(N2V_PYTHON), "-c", N2V_SCRIPT, str(root)], stdout=log, stderr=subprocess.STDOUT,
                            env=core_environment(root), cwd=root)


def _n2v_result(proc, root: Path) -> dict | None:
    if proc is None:
        return None
    rc = proc.wait(timeout=600)
    if rc != 0 or not (root / "result.json").exists():
        raise AssertionError(f"N2V subprocess failed ({rc}):\n{(root / 'n2v.log').read_text()[-5000:]}")
    return json.loads((root / "result.json").read_text())


def _normalized(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x.astype(np.float64), [NORMALIZE.low, NORMALIZE.high])
    return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _tensor(package: Path, name: str) -> np.ndarray:
    import io

    with zipfile.ZipFile(package) as archive:
        return np.load(io.BytesIO(archive.read(name)))


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny models of every learner, their packages, and what bioimageio.spec and
    bioimageio.core make of the packages."""
    from snakescope.synthetic import make_timelapse

    root = tmp_path_factory.mktemp("exchange")
    sample = make_timelapse(ndim=2, n_frames=4, shape=(64, 64), n_cells=4, seed=3)
    raw = sample.image[0]
    (root / "n2v").mkdir()
    n2v_proc = _start_n2v(root / "n2v", raw.astype(np.float32), _normalized(sample.image))

    try:
        packages, patches = _train_and_export(root, sample, raw)
        (root / "n2v" / "packages.json").write_text(json.dumps([str(p) for p in packages.values()]))
        if n2v_proc is not None:  # N2V exports long before it has run core on the others
            packages["n2v"] = _wait_for(root / "n2v" / "n2v.zip", n2v_proc)
        spec = check_bioimageio(list(packages.values()))
        n2v = _n2v_result(n2v_proc, root / "n2v")
    except BaseException:
        if n2v_proc is not None:
            n2v_proc.kill()
        raise
    core = {str(packages["n2v"]): n2v["core"], **n2v["core_main"]} if n2v is not None else {}
    return {"root": root, "packages": packages, "spec": {k: spec[str(p)] for k, p in packages.items()},
            "core": {k: core[str(p)] for k, p in packages.items() if str(p) in core}, "n2v": n2v,
            "raw": raw, "patches": patches}


def _wait_for(path: Path, proc) -> Path:
    import time

    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the N2V subprocess ended ({proc.returncode}) without writing {path}")
        time.sleep(0.5)
    return path


def _train_and_export(root: Path, sample, raw: np.ndarray):
    """Tiny StarDist, U-Net, CARE and classifier models and their packages."""
    from snakescope import classification
    from snakescope.restoration import train_care
    from snakescope.segmentation.stardist import train_stardist
    from snakescope.segmentation.unet import normalize_percentile, train_unet
    from test_restore import write_ngff

    frames = [normalize_percentile(f) for f in sample.image]
    pairs = {f"f{i}": (frames[i], sample.labels[i]) for i in range(4)}
    split = {"train": ["f0", "f1", "f2"], "validation": ["f3"]}
    seg = defaults().segmentation
    train_stardist(pairs, root / "stardist", seg.stardist.replace(n_rays=8, grid=[2, 2], patch_size=[64, 64],
                                                                  unet_n_depth=1, epochs=1, steps_per_epoch=2,
                                                                  batch_size=2, patience=0), split=split, seed=0)
    arch = {**seg.unet.architecture, "n_depth": 1, "n_filter_base": 8}
    train_unet(pairs, root / "unet", seg.unet.replace(architecture=arch, patch_size=[32, 32], epochs=1,
                                                      steps_per_epoch=2, batch_size=2, patience=0),
               split=split, seed=0, optimize_thresholds=False)
    clean = np.stack(frames).astype(np.float32)
    noisy = clean + 0.2 * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    src = write_ngff(root / "noisy.ome.zarr", noisy, "tyx", (1, 32, 32))
    tgt = write_ngff(root / "clean.ome.zarr", clean, "tyx", (1, 32, 32))
    train_care(str(src), str(tgt), root / "care", defaults().restoration.care.replace(
        patch_shape=[32, 32], epochs=1, steps_per_epoch=2, batch_size=4, unet_depth=1, unet_n_first=8, n_patches=32),
        seed=0)
    rng = np.random.default_rng(1)
    patches = rng.normal(100, 10, (24, 16, 16, 1)).astype(np.float32)
    patches[::2, 4:12, 4:12] += 80
    classification.train_classifier(patches, ["bright", "dim"] * 12, root / "classifier",
                                    defaults().classification.replace(epochs=1, batch_size=8, patience=0),
                                    seed=0, filters=(4,), dense=(8,))

    packages = {}
    for kind in ("stardist", "unet", "care"):
        packages[kind] = export_package(root / kind, root / f"{kind}.zip", authors=AUTHORS, citation=CITATION,
                                        normalize=NORMALIZE, test_input=raw, metrics={"f1": 0.5},
                                        data={"name": "synthetic nuclei", "description": "simulated time-lapse"})
    packages["classifier"] = export_package(root / "classifier", root / "classifier.zip", authors=AUTHORS,
                                            test_input=patches[0], license="MIT")
    return packages, patches




@pytest.mark.slow
def test_every_learner_exports_a_package_bioimageio_spec_validates(trained):
    assert set(trained["packages"]) >= {"stardist", "unet", "care", "classifier"}
    if N2V_PYTHON.exists():
        assert "n2v" in trained["packages"]
    for kind, report in trained["spec"].items():
        assert report["status"] == "valid-format", (kind, report)  # "passed" needs bioimageio.core's tests
        assert report["format_version"].startswith("0.5"), report
        assert not report["errors"], (kind, report)
        assert [w["msg"] for w in report["warnings"]] == [NO_MAINTAINER], (kind, report)
    for kind, package in trained["packages"].items():
        rdf = _rdf(package)
        names = set(zipfile.ZipFile(package).namelist())
        assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
        assert rdf["authors"][0]["name"] == "Ada Lovelace" and rdf["config"]["snakescope"]["kind"] == kind
        assert "tensorflow_saved_model_bundle" in rdf["weights"]
        readme = zipfile.ZipFile(package).read("README.md").decode()
        assert "## Validation" in readme and "## Training data" in readme
    care = _rdf(trained["packages"]["care"])
    assert care["cite"][0]["doi"] == "10.5281/zenodo.1234567" and care["license"] == "CC-BY-4.0"
    assert care["config"]["snakescope"]["metrics"]["f1"] == 0.5
    assert "training.best_val_loss" in care["config"]["snakescope"]["metrics"]
    assert care["inputs"][0]["preprocessing"][1]["id"] == "scale_range"
    stardist = _rdf(trained["packages"]["stardist"])
    assert stardist["outputs"][0]["postprocessing"][0]["id"] == "stardist_postprocessing"
    assert stardist["config"]["stardist"]["weights"] in {a["source"] for a in stardist["attachments"]}
    assert _rdf(trained["packages"]["classifier"])["outputs"][0]["axes"][1]["channel_names"] == ["bright", "dim"]


@pytest.mark.slow
def test_bioimageio_core_runs_the_packages_as_the_workflow_predicts(trained):
    """bioimageio.core (TensorFlow 2.15, Keras 2) runs the SavedModels; its model test
    reproduces the test outputs and its prediction equals the workflow's."""
    core = trained["core"]
    if not core:
        pytest.skip("bioimageio.core runs in the n2v environment, which is not built")
    for kind in ("care", "unet", "classifier", "n2v"):
        assert core[kind]["status"] == "passed", (kind, core[kind])
        package = trained["packages"][kind]
        predicted = np.load(f"{package}.core.npy")
        np.testing.assert_allclose(predicted, _tensor(package, "test_output.npy"), rtol=1e-4, atol=1e-4)
    # StarDist: core runs the network (its NMS needs the stardist package, absent there);
    # its probability and distances equal the workflow's network output (distances at least
    # 1e-3, as StarDist's prediction clamps them).
    from snakescope.segmentation.stardist import load_model

    package = trained["packages"]["stardist"]
    assert "No module named 'stardist'" in " ".join(core["stardist"]["failures"]), core["stardist"]
    model = load_model(trained["root"] / "stardist")
    x = _normalized(_tensor(package, "test_input.npy"))
    prob, dist = model.keras_model.predict(x, verbose=0)
    np.testing.assert_allclose(np.load(f"{package}.core_raw.npy"), np.concatenate([prob, np.maximum(dist, 1e-3)], -1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_package_test_outputs_are_the_workflows_predictions(trained):
    """The test output of each package is what the workflow's own loaders predict."""
    from snakescope.classification.predict import load_classifier
    from snakescope.restoration import load_model as load_restoration
    from snakescope.segmentation import load_model

    root, packages = trained["root"], trained["packages"]
    x = _normalized(_tensor(packages["stardist"], "test_input.npy"))[0, ..., 0]
    labels, _ = load_model(root / "stardist").predict_instances(x, axes="YX", show_tile_progress=False)
    expected = _tensor(packages["stardist"], "test_output.npy")[0, ..., 0]
    np.testing.assert_array_equal(labels, expected)
    assert expected.max() > 0, "the tiny StarDist model found no object in the test input"
    unet = load_model(root / "unet")
    np.testing.assert_allclose(unet.predict_probabilities(x, block_shape=None),
                               _tensor(packages["unet"], "test_output.npy")[0], rtol=1e-5, atol=1e-6)
    care = load_restoration(root / "care", "care").predict_fn()
    np.testing.assert_allclose(care(_normalized(_tensor(packages["care"], "test_input.npy"))[..., 0]),
                               _tensor(packages["care"], "test_output.npy")[..., 0], rtol=1e-5, atol=1e-6)
    clf = load_classifier(root / "classifier")
    np.testing.assert_allclose(clf.predict_raw(trained["patches"][:1]),
                               _tensor(packages["classifier"], "test_output.npy"), rtol=1e-5, atol=1e-6)
    if trained["n2v"] is not None:
        assert trained["n2v"]["test_output_is_workflow"] < 1e-5


@pytest.mark.slow
def test_native_keras_weights_load_and_predict_the_same(trained):
    import keras

    package = trained["packages"]["care"]
    folder = trained["root"] / "keras_v3"
    folder.mkdir()
    zipfile.ZipFile(package).extract("weights.keras", folder)
    model = keras.models.load_model(folder / "weights.keras")
    x = _normalized(_tensor(package, "test_input.npy"))
    np.testing.assert_allclose(model.predict(x, verbose=0), _tensor(package, "test_output.npy"), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_import_gives_model_folders_the_workflow_uses(trained, tmp_path):
    """Own packages come back as the same model; StarDist (config.stardist and its weights
    file) and CARE/N2V (their config.json and a SavedModel only) packages as others write them
    become model folders that predict alike and fine-tune."""
    from snakescope.restoration import load_model as load_restoration
    from snakescope.restoration import train_care
    from snakescope.segmentation import load_model
    from snakescope.training.harness import read_metadata

    root, packages = trained["root"], trained["packages"]
    assert {kind: package_kind(p) for kind, p in packages.items()} == {kind: kind for kind in packages}
    x = _normalized(_tensor(packages["stardist"], "test_input.npy"))[0, ..., 0]
    original, _ = load_model(root / "stardist").predict_instances(x, axes="YX", show_tile_progress=False)
    for name, package in (("own", packages["stardist"]),
                          ("zoo", as_third_party_package(packages["stardist"], tmp_path / "sd.zip",
                                                         attachments=["weights_best.h5"]))):
        folder = import_package(package, tmp_path / f"stardist_{name}")
        labels, _ = load_model(folder).predict_instances(x, axes="YX", show_tile_progress=False)
        np.testing.assert_array_equal(labels, original)
        assert read_metadata(folder)["kind"] == "stardist" and read_metadata(folder)["imported"]["name"]
    unet = import_package(packages["unet"], tmp_path / "unet")
    np.testing.assert_array_equal(load_model(unet).predict_probabilities(x, block_shape=None),
                                  load_model(root / "unet").predict_probabilities(x, block_shape=None))

    xc = _normalized(_tensor(packages["care"], "test_input.npy"))[..., 0]
    expected = load_restoration(root / "care", "care").predict_fn()(xc)
    third_party = as_third_party_package(packages["care"], tmp_path / "care_tp.zip", attachments=["config.json"])
    assert set(_rdf(third_party)["weights"]) == {"tensorflow_saved_model_bundle"} and package_kind(third_party) == "care"
    for name, package in (("own", packages["care"]), ("saved_model", third_party)):
        folder = import_package(package, tmp_path / f"care_{name}")
        np.testing.assert_allclose(load_restoration(folder, "care").predict_fn()(xc), expected, rtol=1e-6, atol=1e-6)
    assert read_metadata(tmp_path / "care_saved_model")["imported"]["weights_from"] == "tensorflow_saved_model_bundle"
    settings = defaults().restoration.care.replace(patch_shape=[32, 32], epochs=1, steps_per_epoch=1, batch_size=4,
                                                   unet_depth=1, unet_n_first=8, n_patches=32)
    meta = train_care(str(root / "noisy.ome.zarr"), str(root / "clean.ome.zarr"), tmp_path / "tuned", settings,
                      seed=1, parent=tmp_path / "care_saved_model")
    assert meta["parent"] == str(tmp_path / "care_saved_model")

    n2v = trained["n2v"]
    if n2v is not None:
        assert n2v["own_import_diff"] == 0.0 and n2v["third_party_diff"] < 1e-6, n2v
        assert n2v["third_party_meta"]["weights_from"] == "tensorflow_saved_model_bundle"


@pytest.mark.slow
def test_import_names_the_package_and_why_it_cannot_be_used(trained, tmp_path):
    with pytest.raises(InputError, match="not found"):
        import_package(tmp_path / "absent.zip", tmp_path / "m1")
    (tmp_path / "junk.zip").write_text("not a zip")
    with pytest.raises(InputError, match="neither a folder nor a zip"):
        import_package(tmp_path / "junk.zip", tmp_path / "m2")
    # a package of another kind of model (here: the U-Net as a package without snakescope's config)
    other = as_third_party_package(trained["packages"]["unet"], tmp_path / "other.zip")
    with pytest.raises(InputError, match=r"other\.zip: package 'snakescope three-class U-Net 2D unet' is not one "
                                         r"snakescope can use"):
        import_package(other, tmp_path / "m3")
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(trained["packages"]["care"]).extractall(folder)
    (folder / "weights_best.h5").unlink()
    with pytest.raises(InputError, match="lacks the file 'weights_best.h5'"):
        import_package(folder, tmp_path / "m4")
    assert not (tmp_path / "m4").exists() and not list(tmp_path.glob("m4.partial-*"))
    with pytest.raises(InputError, match="publication.authors"):
        export_package(trained["root"] / "care", tmp_path / "x.zip", authors=[])
    with pytest.raises(InputError, match=r"citation\[0\]: needs a text and a doi or url"):
        export_package(trained["root"] / "care", tmp_path / "x.zip", authors=AUTHORS, citation=[{"text": "a"}])


# ---------------------------------------------------------------------------------------
# Tracks


@pytest.fixture(scope="module")
def tracks():
    """Tracks of a synthetic time-lapse with divisions, and one detection removed from the
    middle of a track so that a gap is closed."""
    from snakescope.synthetic import make_timelapse
    from snakescope.tracking.detections import detections_from_labels
    from snakescope.tracking.linking import link

    sample = make_timelapse(ndim=2, n_frames=12, n_cells=8, division_probability=0.1, seed=4)
    detections = detections_from_labels(sample.labels, refine="none", voxel_size=sample.voxel_size)
    first = detections[detections["label"] == 1]
    detections = detections.drop(index=first.index[len(first) // 2]).reset_index(drop=True)
    return link(detections, defaults().tracking.replace(max_distance=6.0, max_gap=2), voxel_size=sample.voxel_size)


def test_tracks_open_in_napari_and_geff(tracks, tmp_path):
    assert tracks.n_divisions >= 1
    lineage = tracks.lineage
    closed_gaps = int((lineage.loc[lineage["parent"] > 0, "parent"].value_counts() == 1).sum())
    assert closed_gaps >= 1
    n_links = len(tracks.table) - tracks.n_tracks + int((lineage["parent"] > 0).sum())

    csv, graph = write_napari_tracks(tracks, tmp_path / "tracks_napari.csv")
    assert graph.name == "tracks_napari_graph.json"
    data, parents = read_napari_tracks(csv)
    expected, expected_graph = tracks.napari()
    np.testing.assert_allclose(data[:, 2:], expected[:, 2:] * np.asarray(tracks.voxel_size))  # micrometres
    assert parents == expected_graph
    path = write_geff(tracks, tmp_path / "tracks.geff", time_interval=30.0)
    report = check_interop({"--napari-tracks": [csv], "--geff": [path]})
    napari, geff = report[str(csv)], report[str(path)]
    assert "error" not in napari, napari
    assert napari["n_points"] == len(tracks.table) and napari["n_tracks"] == tracks.n_tracks
    assert napari["graph"] == {str(k): v for k, v in expected_graph.items()}

    assert "error" not in geff, geff
    assert geff["n_nodes"] == len(tracks.table) and geff["n_edges"] == n_links
    assert geff["n_divisions"] == tracks.n_divisions
    assert geff["axes"] == [["t", "time", "frame"], ["y", "space", "micrometer"], ["x", "space", "micrometer"]]
    assert {"t", "y", "x", "label", "track_id", "tracklet_id", "lineage_id"} <= set(geff["node_props"])
    row = tracks.table.iloc[0]
    node = geff["nodes"][str(int(row["detection"]))]
    assert node["y"] == pytest.approx(row["y"] * tracks.voxel_size[0]) and node["t"] == row["t"]
    assert len({n["tracklet_id"] for n in geff["nodes"].values()}) == tracks.n_tracks - closed_gaps
