"""bioimage.io model packages (model spec 0.5, a zip with ``rdf.yaml``): every model folder
the workflow trains written as one (:func:`export_package`), and local packages of StarDist,
N2V and CARE models (or snakescope's own) turned into the workflow's model folders
(:func:`import_package`), which its loaders and fine-tuning then use as their own.

A package holds the network's weights (a TensorFlow SavedModel, plus the native ``.keras``
file under Keras 3: :mod:`snakescope.exchange.weights`), a test input and the workflow's
prediction of it as test output, sample tensors (TIFF), a cover image, README.md (usage,
training data, training, the metrics the workflow measured, citations), the authors,
citations and license given, and the model folder's own files as attachments
(``config.json``, ``weights_best.h5``, ``snakescope.json``, ``thresholds.json``,
``training.csv``/``.png``) so that snakescope imports its own packages exactly.

The rdf is written with plain Python (no bioimageio.spec in the main environment); the tests
validate every package with bioimageio.spec and run them with bioimageio.core
(tests/interop_check.py). Export runs where the learner's network loads: the main
environment for StarDist, U-Net, CARE and the classifier, the n2v one for N2V; so does
import (N2V packages need n2v to build the network). Nothing is ever downloaded: a file
referenced by URL must be in the package under its file name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.exchange.documents import (authors_list, citation_list, collect_metrics, input_tensor, output_tensor,
                                           package_name, write_cover, write_readme)
from snakescope.exchange.learners import KINDS, Exportable, apply_normalization, exportable, normalization_steps
from snakescope.exchange.weights import transfer_weights, write_weights, zip_folder
from snakescope.io.atomic import atomic_path, write_json
from snakescope.training.harness import CONFIG, METADATA, WEIGHTS_BEST, read_metadata, save_weights

__all__ = ["FORMAT_VERSION", "export_package", "import_package", "package_kind", "read_package"]

#: The model spec version written (the current release, read by bioimageio.spec 0.5.12 and 0.5.14).
FORMAT_VERSION = "0.5.14"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


# ---------------------------------------------------------------------------------------
# Export


def export_package(model_dir, zip_path, *, authors, citation=None, description: str | None = None,
                   license: str = "CC-BY-4.0", data: dict | None = None, metrics: dict | None = None,
                   test_input: np.ndarray | None = None, normalize=None, name: str | None = None) -> Path:
    """Write the model folder ``model_dir`` as a bioimage.io model package ``zip_path``.

    The learner comes from its snakescope.json (``kind``). ``authors``: names or mappings
    (name, affiliation, email, github_user, orcid); ``citation``: the paper(s) to cite
    (``{text, doi}``/``{text, url}`` entries or DOI strings; the method's own papers are
    added); ``license``: an SPDX identifier; ``data``: the training data's description
    (shown with the training images snakescope.json lists); ``metrics``: numbers the
    workflow measured (e.g. the evaluation's F1 or PSNR; flattened, added to those in
    snakescope.json). ``test_input``: a raw image (2D/3D; the classifier: a patch
    ``(*spatial, channels)``) cropped to a size the network takes, default a synthetic
    one; ``normalize``: the config's ``normalize`` section, stated as the package's
    preprocessing so the package takes raw images (None: the input is the normalized image).
    The zip appears atomically. Returns its path.
    """
    folder, zip_path = Path(model_dir), Path(zip_path)
    people, cite = authors_list(authors), citation_list(citation)
    item = exportable(folder)
    meta = read_metadata(folder)
    raw = _test_input(item, test_input, folder)
    for axis, (full, declared) in item.halo_reduced.items():
        item.usage += (f" A tiled prediction needs {full} px of context along {axis} (the declared halo is {declared}, "
                       "limited by the test input's size).")
    output = np.asarray(item.predict(raw if item.own_normalization else apply_normalization(raw, normalize)))
    output = output.astype(item.output["dtype"])
    spatial_axes = list(item.spatial)
    normalization = [] if item.own_normalization else normalization_steps(normalize, spatial_axes)
    title = item.title
    name = package_name(name or f"snakescope {title} {folder.name}")
    description = description or f"{title} trained with the snakescope workflow."
    with tempfile.TemporaryDirectory() as stage:
        stage = Path(stage)
        np.save(stage / "test_input.npy", raw)
        np.save(stage / "test_output.npy", output)
        import tifffile

        tifffile.imwrite(stage / "sample_input.tif", raw)
        tifffile.imwrite(stage / "sample_output.tif", output)
        write_cover(stage / "cover.png", item, raw, output)
        weights = write_weights(item.network, stage)
        for attachment in item.attachments:
            shutil.copyfile(folder / attachment, stage / attachment)
        measured = collect_metrics(meta, metrics)
        all_cite = cite + [c for c in item.cite if c not in cite]
        write_readme(stage / "README.md", item, name=name, description=description, meta=meta, metrics=measured,
                     data=data, normalization=_normalization_text(item, normalize), cite=all_cite,
                     reproduced="The package's test output is the workflow's own prediction of its test input.")
        files = {path.name: {"source": path.name, "sha256": _sha256(path)} for path in stage.iterdir()}
        for entry in weights.values():
            entry["sha256"] = files[entry["source"]]["sha256"]
        rdf = {
            "format_version": FORMAT_VERSION, "type": "model", "name": name, "description": description,
            "authors": people, "cite": all_cite, "license": license,
            "tags": sorted({*item.tags, f"{item.ndim}d", "tensorflow", "snakescope"}),
            "documentation": files["README.md"], "covers": [files["cover.png"]],
            "inputs": [input_tensor(item, normalization + item.preprocessing, files,
                                    "raw image" if normalization or item.own_normalization else "normalized image")],
            "outputs": [output_tensor(item, files)],
            "weights": weights,
            "attachments": [files[a] for a in item.attachments],
            "config": _config(item, folder, meta, measured, data, normalize),
        }
        if data and data.get("id"):
            rdf["training_data"] = {"id": str(data["id"])}
        _write_yaml(stage / "rdf.yaml", rdf)
        with atomic_path(zip_path) as tmp:
            zip_folder(stage, tmp)
    return zip_path


def _test_input(item: Exportable, given, where: Path) -> np.ndarray:
    """The test input as a batch ``(1, *spatial, channel)`` float32, cropped centrally to a
    shape the network takes."""
    n_channels = len(item.input_channels)
    if given is None:
        shape = [low if not step else max(low, 32 if axis == "z" else 96) for axis, (low, step)
                 in zip(item.spatial, item.sizes)]
        given = _synthetic(shape, n_channels)
    array = np.asarray(given, dtype=np.float32)
    if array.ndim == item.ndim:
        array = array[..., None]
    if array.ndim != item.ndim + 1 or array.shape[-1] != n_channels:
        raise InputError(where, f"the test input has shape {array.shape}; the network takes {item.ndim}D images "
                                f"of {n_channels} channel(s)")
    shape = item.fit_input_shape(array.shape[:-1], where)
    start = [(n - s) // 2 for n, s in zip(array.shape, shape)]
    crop = tuple(slice(a, a + s) for a, s in zip(start, shape))
    return np.ascontiguousarray(array[crop])[None]


def _synthetic(shape, n_channels: int) -> np.ndarray:
    """Bright blobs on a dim noisy background (seeded), as a stand-in for a real image."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    spots = np.zeros(shape, np.float32)
    n = max(4, int(np.prod(shape) / 400))
    spots[tuple(rng.integers(0, s, n) for s in shape)] = 1.0
    blobs = ndimage.gaussian_filter(spots, 3.0)
    image = 100 + 900 * blobs / max(float(blobs.max()), 1e-9) + rng.normal(0, 10, shape)
    return np.repeat(image[..., None], n_channels, axis=-1).astype(np.float32)


def _normalization_text(item: Exportable, normalize) -> str:
    if item.own_normalization:
        return "Raw intensities; the model normalizes each patch itself."
    if normalize is None:
        return ("The image normalized as the workflow's `normalize` stage does before the model (the package "
                "declares no normalization).")
    if normalize.method == "percentile":
        return (f"Raw intensities: the preprocessing scales each image between its {normalize.low:g} and "
                f"{normalize.high:g} percentiles{', clipped to [0, 1]' if normalize.clip else ''}, as the "
                "workflow's normalization did for training.")
    return "Raw intensities: the preprocessing standardizes each image (zero mean, unit variance), as in training."


def _config(item: Exportable, folder: Path, meta: dict, metrics: dict, data, normalize) -> dict:
    from snakescope import __version__

    own = dict(item.config.get("snakescope", {}))
    own.update({"kind": item.kind, "ndim": item.ndim, "version": __version__, "model_files": list(item.attachments),
                "model_name": folder.name, "metrics": metrics,
                "normalize": None if normalize is None else normalize.to_dict()})
    if item.halo_reduced:
        own["receptive_field"] = {axis: full for axis, (full, _) in item.halo_reduced.items()}
    if data:
        own["training_data"] = data
    training = meta.get("training") or {}
    own["training"] = {k: training.get(k) for k in ("epochs_run", "steps_run", "best_epoch", "stopped_by")}
    config = {k: v for k, v in item.config.items() if k != "snakescope"}
    config["snakescope"] = own
    if item.training:
        config["bioimageio"] = {"training": item.training}
    return json.loads(json.dumps(config, default=str))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_yaml(path: Path, data: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------------------------------
# Reading and import


class Package:
    """A local bioimage.io package (zip or folder): its rdf and its files by name."""

    def __init__(self, source):
        self.source = Path(source)
        if not self.source.exists():
            raise InputError(self.source, "bioimage.io package not found (nothing is downloaded)")
        if self.source.is_dir():
            self._names = {p.relative_to(self.source).as_posix() for p in self.source.rglob("*") if p.is_file()}
            self._zip = None
        elif zipfile.is_zipfile(self.source):
            self._zip = zipfile.ZipFile(self.source)
            self._names = set(self._zip.namelist())
        else:
            raise InputError(self.source, "is neither a folder nor a zip: not a bioimage.io package")
        rdf_name = next((n for n in RDF_NAMES if n in self._names), None) or next(
            (n for n in sorted(self._names) if n.endswith(".bioimageio.yaml") and "/" not in n), None)
        if rdf_name is None:
            raise InputError(self.source, "has no rdf.yaml (or bioimageio.yaml): not a bioimage.io package")
        import yaml

        try:
            self.rdf = yaml.safe_load(self.read(rdf_name))
        except yaml.YAMLError as exc:
            raise InputError(f"{self.source}/{rdf_name}", f"is not valid YAML ({exc})") from None
        if not isinstance(self.rdf, dict) or self.rdf.get("type") != "model":
            raise InputError(self.source, "is not a bioimage.io model package (rdf type is not 'model')")

    def read(self, name) -> bytes:
        """A file of the package; one referenced by URL by its file name (never downloaded)."""
        name = str(name.get("source") if isinstance(name, dict) else name)
        if "://" in name:
            name = name.rstrip("/").rsplit("/", 1)[-1]
        if name not in self._names:
            raise InputError(self.source, f"lacks the file {name!r} its rdf refers to (nothing is downloaded)")
        return self._zip.read(name) if self._zip is not None else (self.source / name).read_bytes()

    def attachments(self) -> list[str]:
        """File names of the attachments (spec 0.5 list, or 0.4 ``files``)."""
        found = self.rdf.get("attachments") or []
        if isinstance(found, dict):
            found = found.get("files") or []
        names = []
        for entry in found:
            source = str(entry.get("source") if isinstance(entry, dict) else entry)
            names.append(source.rstrip("/").rsplit("/", 1)[-1])
        return names

    def json_attachment(self, name: str) -> dict | None:
        return json.loads(self.read(name)) if name in self.attachments() and name in self._names else None


def read_package(source) -> Package:
    """A local bioimage.io package (zip or folder with rdf.yaml), checked to be a model."""
    return Package(source)


def package_kind(source) -> str:
    """The learner of a local package (``stardist``, ``n2v``, ``care``; for snakescope's own
    packages also ``unet`` or ``classifier``), read from its rdf without TensorFlow, e.g. to
    import an N2V package in the n2v environment. InputError as :func:`import_package`."""
    package = read_package(source)
    kind = _package_kind(package)
    return package.rdf["config"]["snakescope"]["kind"] if kind == "snakescope" else kind


def _package_kind(package: Package) -> str:
    config = package.rdf.get("config") or {}
    own = config.get("snakescope") or {}
    if own.get("kind") in KINDS and own.get("model_files"):
        return "snakescope"
    if config.get("stardist"):
        return "stardist"
    network = package.json_attachment(CONFIG)
    if network is not None:
        if any(str(k).startswith("n2v_") for k in network):
            return "n2v"
        if {"n_dim", "axes", "unet_n_depth"} <= set(network):
            return "care"
    name = package.rdf.get("name", "?")
    raise InputError(package.source, f"package {name!r} is not one snakescope can use: only StarDist packages "
                                     "(config.stardist), N2V and CARE packages (their CSBDeep/N2V config.json "
                                     "attached) and snakescope's own packages can be imported")


def import_package(source, out_dir) -> Path:
    """Turn a local bioimage.io package (zip or folder) of a StarDist, N2V or CARE model, or
    one snakescope wrote, into the workflow's model folder ``out_dir`` (config.json,
    weights_best.h5, snakescope.json recording where it came from, StarDist's
    thresholds.json; an existing ``out_dir`` is replaced), so the workflow predicts with it
    and fine-tunes it as its own.

    N2V packages are imported in the n2v environment (n2v builds the network the weights
    are loaded into). InputError naming the package when it cannot be used. The folder
    appears atomically. Returns its path.
    """
    package = read_package(source)
    kind = _package_kind(package)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if kind == "snakescope":
            meta = _import_own(package, tmp)
        else:
            meta = {"stardist": _import_stardist, "n2v": _import_csbdeep, "care": _import_csbdeep}[kind](
                package, tmp, kind)
        meta["imported"] = {"source": str(Path(source).resolve()), "name": package.rdf.get("name"),
                            "format_version": package.rdf.get("format_version"),
                            "authors": package.rdf.get("authors"), "cite": package.rdf.get("cite"),
                            "license": package.rdf.get("license"), **meta.get("imported", {})}
        write_json(tmp / METADATA, meta)
    return out_dir


def _import_own(package: Package, folder: Path) -> dict:
    own = package.rdf["config"]["snakescope"]
    for name in own["model_files"]:
        (folder / name).write_bytes(package.read(name))
    meta = read_metadata(folder)
    return meta or {"format": "snakescope-model/1", "kind": own["kind"], "ndim": own.get("ndim")}


def _new_metadata(kind: str, ndim: int) -> dict:
    return {"format": "snakescope-model/1", "kind": kind, "ndim": int(ndim), "seed": None, "settings": {},
            "data": {}, "training": {}, "parent": None}


def _import_stardist(package: Package, folder: Path, kind: str) -> dict:
    section = package.rdf["config"]["stardist"]
    config = section.get("config")
    if not isinstance(config, dict) or "n_dim" not in config:
        raise InputError(package.source, "config.stardist has no StarDist configuration (config.stardist.config)")
    write_json(folder / CONFIG, config)
    if section.get("thresholds"):
        write_json(folder / "thresholds.json", section["thresholds"])
    weights = str(section.get("weights") or "")
    how = "attached Keras weights"
    if weights and weights in package.attachments():
        (folder / WEIGHTS_BEST).write_bytes(package.read(weights))
    else:
        from stardist.models import StarDist2D, StarDist3D

        model = (StarDist3D if config["n_dim"] == 3 else StarDist2D)(None, name=folder.name, basedir=str(folder.parent))
        how = transfer_weights(model.keras_model, package.rdf.get("weights") or {}, package.read, str(package.source))
        save_weights(model.keras_model, folder / WEIGHTS_BEST)
    meta = _new_metadata("stardist", config["n_dim"])
    meta["thresholds"] = section.get("thresholds")
    meta["imported"] = {"weights_from": how}
    return meta


def _import_csbdeep(package: Package, folder: Path, kind: str) -> dict:
    """An N2V or CARE network built from the attached config.json, the package's weights
    loaded into it and saved as weights_best.h5."""
    import contextlib
    import sys
    import warnings

    config = package.json_attachment(CONFIG)
    write_json(folder / CONFIG, config)
    if kind == "n2v":
        from snakescope.restoration.models import import_n2v

        cls, _ = import_n2v()
    else:
        from csbdeep.models import CARE as cls
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            model = cls(None, name=folder.name, basedir=str(folder.parent))
    except Exception as exc:  # noqa: BLE001 - the configuration is the package's
        raise InputError(package.source, f"its {CONFIG} is not a loadable {kind.upper()} configuration "
                                         f"({type(exc).__name__}: {exc})") from None
    how = transfer_weights(model.keras_model, package.rdf.get("weights") or {}, package.read, str(package.source))
    save_weights(model.keras_model, folder / WEIGHTS_BEST)
    meta = _new_metadata(kind, config["n_dim"])
    meta["imported"] = {"weights_from": how}
    return meta
