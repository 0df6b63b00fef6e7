"""Network weights in the formats of the bioimage.io spec, written from and read back into
the workflow's Keras models, under Keras 3 (main environment) as under Keras 2 (n2v).

Written (:func:`write_weights`): a TensorFlow SavedModel (``tensorflow_saved_model_bundle``,
zipped, what StarDist's, CSBDeep's and n2v's own exports write and TensorFlow of any 2.x
version loads without the network's code) and, under Keras 3, the native ``.keras`` file
(``keras_v3``, the original the SavedModel was converted from).

Read (:func:`transfer_weights`): the weights of a package's network into a freshly built
network of the same architecture (a StarDist, CARE or N2V model built from its
configuration), from a full-model Keras HDF5 file or a SavedModel's variables.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from snakescope.errors import InputError

__all__ = ["keras_major", "transfer_weights", "write_weights", "zip_folder"]


def keras_major() -> int:
    """3 in the main environment, 2 in the n2v one (TensorFlow 2.15's Keras)."""
    import keras

    return int(keras.__version__.split(".")[0])


def zip_folder(folder: Path, zip_path: Path) -> None:
    """Every file of ``folder``, relative to it, into ``zip_path`` (sorted: reproducible order)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())


def write_weights(network, folder: Path, *, stem: str = "weights") -> dict:
    """Write ``network`` into ``folder``; return the spec's ``weights`` entries (file names
    relative to ``folder``)."""
    import tensorflow as tf

    version = tf.__version__
    saved = folder / f"{stem}_saved_model"
    if keras_major() == 3:
        network.export(str(saved), format="tf_saved_model", verbose=False)
    else:
        tf.keras.models.save_model(network, str(saved), save_format="tf", include_optimizer=False)
    bundle = folder / f"{stem}_tf_saved_model.zip"
    zip_folder(saved, bundle)
    shutil.rmtree(saved)
    entries = {"tensorflow_saved_model_bundle": {"source": bundle.name, "tensorflow_version": version}}
    if keras_major() == 3:
        import keras

        native = folder / f"{stem}.keras"
        network.save(str(native))
        entries = {"keras_v3": {"source": native.name, "keras_version": keras.__version__,
                                "backend": ["tensorflow", version]},
                   "tensorflow_saved_model_bundle": {**entries["tensorflow_saved_model_bundle"],
                                                     "parent": "keras_v3",
                                                     "comment": "exported from the Keras 3 model"}}
    return entries


def transfer_weights(target, weights: dict, read, where: str) -> str:
    """Load the package's weights into ``target`` (a Keras model of the same architecture).

    ``weights``: the rdf's ``weights`` section; ``read(name) -> bytes`` reads a package file.
    Tries a full-model Keras HDF5 file, then the SavedModel's variables (matched by name,
    else in order, every shape checked). Returns the format used; InputError naming
    ``where`` when none fits.
    """
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        entry = weights.get("keras_hdf5")
        if entry:
            path = tmp / "model.h5"
            path.write_bytes(read(_source(entry)))
            try:
                target.load_weights(str(path))
                return "keras_hdf5"
            except Exception as exc:  # noqa: BLE001 - try the next format
                problems.append(f"keras_hdf5: {type(exc).__name__}: {exc}"[:300])
        entry = weights.get("tensorflow_saved_model_bundle")
        if entry:
            bundle = tmp / "bundle.zip"
            bundle.write_bytes(read(_source(entry)))
            folder = tmp / "saved_model"
            with zipfile.ZipFile(bundle) as archive:
                archive.extractall(folder)
            roots = [p.parent for p in folder.rglob("saved_model.pb")]
            try:
                if not roots:
                    raise ValueError("no saved_model.pb in the bundle")
                _from_saved_model(target, roots[0])
                return "tensorflow_saved_model_bundle"
            except Exception as exc:  # noqa: BLE001 - reported together
                problems.append(f"tensorflow_saved_model_bundle: {type(exc).__name__}: {exc}"[:300])
    formats = ", ".join(k for k, v in weights.items() if v) or "none"
    detail = "; ".join(problems) or f"it has only {formats} weights"
    raise InputError(where, f"no weights fit the network built from its configuration ({detail})")


def _source(entry: dict) -> str:
    return str(entry["source"] if isinstance(entry, dict) else entry)


def _from_saved_model(target, folder: Path) -> None:
    import tensorflow as tf

    variables = list(tf.saved_model.load(str(folder)).variables)
    wanted = list(target.weights)
    if len(variables) != len(wanted):
        raise ValueError(f"{len(variables)} variables for {len(wanted)} weights")

    def key(name: str) -> str:
        return name.split(":")[0]

    by_name = {key(v.name): v for v in variables}
    names = [key(getattr(w, "path", None) or w.name) for w in wanted]
    if len(by_name) == len(variables) and all(n in by_name for n in names):
        chosen = [by_name[n] for n in names]
    else:  # layer names differ between sessions: the tracking order is the layer order
        chosen = variables
    values = [np.asarray(v.numpy()) for v in chosen]
    for w, v in zip(wanted, values):
        if tuple(w.shape) != v.shape:
            raise ValueError(f"weight {getattr(w, 'path', w.name)} has shape {tuple(w.shape)}, the package's {v.shape}")
    target.set_weights(values)
