"""Run in .venv/n2v (bioimageio.core 0.11 with TensorFlow 2.15), never imported by the tests:
``python interop_core.py OUT.json PACKAGE.zip...`` runs bioimageio.core's own model test
(reproducing the test output from the test input) and core's prediction of the test input on
each package, and writes, per package, the test's status and failures and the prediction
(``<package>.core.npy``; where core cannot run the postprocessing here, StarDist's, also the
network's output before it, ``<package>.core_raw.npy``).

Two shims make bioimageio.core 0.11 run here at all (tests/interop.py explains both):
pydantic comes from .venv/check (PYTHONPATH; bioimageio.spec 0.5.12 fails on the n2v
lock's pydantic 2.14), and Keras 3's ``TFSMLayer``, with which core loads SavedModels under
TensorFlow 2 (Keras 2.15 lacks it), is provided on top of ``tf.saved_model.load``.

:func:`as_third_party_package` (plain Python, imported by the tests in both environments)
rewrites a snakescope package into the layout other exporters write.
"""

import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np


def as_third_party_package(package, out, *, attachments=(), weights=("tensorflow_saved_model_bundle",)):
    """A copy of a snakescope package ``package`` at ``out`` as StarDist's, n2v's or CSBDeep's
    exporters write it: no ``config.snakescope``, only the given ``attachments`` (e.g. the
    N2V/CSBDeep ``config.json``) and ``weights`` formats. Returns ``out``."""
    import yaml

    with zipfile.ZipFile(package) as source:
        rdf = yaml.safe_load(source.read("rdf.yaml"))
        rdf["config"].pop("snakescope", None)
        rdf["attachments"] = [a for a in rdf.get("attachments", []) if a["source"] in attachments]
        rdf["weights"] = {k: v for k, v in rdf["weights"].items() if k in weights}
        for entry in rdf["weights"].values():
            if entry.get("parent") not in rdf["weights"]:
                entry.pop("parent", None)
        keep = {"rdf.yaml"} | set(attachments) | {v["source"] for v in rdf["weights"].values()}
        keep |= {n for n in source.namelist() if n.endswith((".npy", ".tif", ".png", ".md"))}
        with zipfile.ZipFile(out, "w") as target:
            for name in source.namelist():
                if name in keep:
                    data = yaml.safe_dump(rdf, sort_keys=False).encode() if name == "rdf.yaml" else source.read(name)
                    target.writestr(name, data)
    return out


def install_tfsm_layer() -> bool:
    """Keras 3's ``keras.layers.TFSMLayer(path, call_endpoint)`` for Keras 2: calls the
    SavedModel's signature and returns its dict of outputs, as core 0.11 expects."""
    import tensorflow as tf

    if hasattr(tf.keras.layers, "TFSMLayer"):
        return False

    loaded = {}  # core loads the weights again for each of its tests

    class TFSMLayer:
        def __init__(self, filepath, call_endpoint="serve"):
            key = (str(filepath), Path(filepath, "saved_model.pb").stat().st_mtime_ns)
            if key not in loaded:
                loaded[key] = tf.saved_model.load(str(filepath))
            self._loaded = loaded[key]
            if call_endpoint not in self._loaded.signatures:
                raise ValueError(f"no signature {call_endpoint!r} in {filepath}")
            self._fn = self._loaded.signatures[call_endpoint]
            self._names = list(self._fn.structured_input_signature[1])

        def __call__(self, *inputs):
            return self._fn(**dict(zip(self._names, inputs)))

    tf.keras.layers.TFSMLayer = TFSMLayer
    return True


def check(package: str) -> dict:
    """Core's model test of ``package`` and its prediction of the test input, whole (as the
    test reproduces the test output: without core's padding of the input by the output halo,
    which would mirror the borders and change the normalization statistics)."""
    from bioimageio.core import create_prediction_pipeline, load_description, test_model
    from bioimageio.core.digest_spec import get_test_input_sample

    result = {}
    try:
        summary = test_model(package, weight_format="tensorflow_saved_model_bundle")
        result["status"] = summary.status
        result["failures"] = [f"{d.name}: " + "; ".join(str(e.msg)[:300] for e in d.errors)
                              for d in summary.details if d.status == "failed"]
    except Exception as exc:  # noqa: BLE001
        result["status"] = f"{type(exc).__name__}: {exc}"[:500]
    descr = load_description(package)
    output = str(descr.outputs[0].id)
    # the raw network output too where core cannot run the postprocessing here
    raw = any(p.id == "stardist_postprocessing" for out in descr.outputs for p in out.postprocessing)
    for name, skip in (("core", False), ("core_raw", True)):
        if skip and not raw:
            continue
        try:
            with create_prediction_pipeline(descr, weight_format="tensorflow_saved_model_bundle") as pipeline:
                sample = pipeline.predict_sample_without_blocking(
                    get_test_input_sample(descr), skip_postprocessing=skip, skip_input_padding=True,
                    skip_output_cropping=True)
            array = sample.members[output].data.to_numpy()
            np.save(f"{package}.{name}.npy", array)
            result[name] = list(array.shape)
        except Exception as exc:  # noqa: BLE001
            result[name] = f"{type(exc).__name__}: {exc}"[:500]
    return result


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    shimmed = install_tfsm_layer()
    out = {"tfsm_layer_shim": shimmed, "packages": {p: check(p) for p in sys.argv[2:]}}
    Path(sys.argv[1]).write_text(json.dumps(out))
