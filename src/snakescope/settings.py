"""The config and the samples sheet: validated against their JSON schemas, all problems at
once, and handed to the code as typed, read-only settings.

Snakemake's own ``validate`` stops at the first error; a facility editing a sheet of 300 rows
wants every problem listed in one go, each naming the key or the row, and nothing run.

The schema (``workflow/schemas/config.schema.yaml``) is the only place defaults live:
validation fills them in, and :class:`Config` turns the result into nested frozen
dataclasses (``config.segmentation.stardist.epochs``). Package functions take these section
objects; :func:`defaults` gives the schema's defaults for tests and library use
(``defaults().restoration.n2v.replace(epochs=2)``). tests/test_config.py checks that every
dataclass field is a schema property with a default and the other way round.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
import csv
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from snakescope.io.formats import is_vendor_file
from snakescope.io.tiff import expand_image_path

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"
SHEET_COLUMNS = ("sample_id", "image", "axes", "voxel_size", "time_interval", "channel", "scene",
                 "labels", "types", "boxes", "tracks", "points", "target", "class_truth")


class ConfigError(ValueError):
    """Every problem found in the config and the samples sheet."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        text = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem{'s' * (len(problems) != 1)}); nothing was run:\n{text}")


@dataclass
class Sample:
    sample_id: str
    image: str
    axes: str | None
    voxel_size: dict = field(default_factory=dict)
    channel: int = 0
    labels: str | None = None
    tracks: str | None = None
    points: str | None = None
    target: str | None = None
    class_truth: str | None = None
    scene: str | None = None
    types: str | None = None
    boxes: str | None = None

    def spatial_ndim(self) -> int:
        """2 or 3, from the axes (or, where the sheet leaves them out, the file's metadata)."""
        axes = self.axes
        if not axes:
            from snakescope.io.formats import open_image

            try:
                axes = open_image(self.image, None, self.scene).axes
            except Exception:  # the ingest job reports the real problem
                return 2
        return 3 if "Z" in axes.upper() else 2

    def input_files(self) -> list[str]:
        """Every file this sample reads (for provenance checksums and rerun triggers)."""
        files = [str(p) for p in expand_image_path(self.image)]
        for extra in (self.labels, self.types, self.boxes, self.points, self.target, self.class_truth):
            if extra:
                files += [str(p) for p in expand_image_path(extra)]
        if self.tracks:
            files += [str(p) for p in sorted(Path(self.tracks).glob("*")) if p.is_file()]
        return files


def load_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def _validator(schema: dict):
    """A Draft 2020-12 validator that also fills in defaults (the jsonschema FAQ recipe)."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _path_of(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict, where: str = "config") -> tuple[dict, list[str]]:
    """Return the config with defaults filled in, and its problems (empty when valid)."""
    config = copy.deepcopy(config or {})
    problems = [f"{where}: key '{_path_of(e)}': {e.message}" for e in _validator(load_schema("config")).iter_errors(config)
                if not _n2v_key_in_care(e)]
    norm = config.get("normalize", {})
    if isinstance(norm, dict) and isinstance(norm.get("low"), (int, float)) and isinstance(norm.get("high"), (int, float)):
        if norm["low"] >= norm["high"]:
            problems.append(f"{where}: key 'normalize.low' ({norm['low']}) must be below 'normalize.high' ({norm['high']})")
    restoration = config.get("restoration", {})
    if isinstance(restoration, dict) and isinstance(restoration.get("care"), dict):
        n2v_only = sorted(set(restoration["care"]) & N2V_ONLY_KEYS)
        if n2v_only:
            problems.append(f"{where}: key 'restoration.care': {', '.join(n2v_only)} only apply to N2V (the n2v section)")
    problems += _sweep_problems(config, where)
    return config, sorted(problems)


#: Where each learner's training settings live in the config (section, subsection or None).
SWEEP_SECTIONS = {"stardist": ("segmentation", "stardist"), "unet": ("segmentation", "unet"),
                  "n2v": ("restoration", "n2v"), "care": ("restoration", "care"), "classifier": ("classification", None)}
#: Classification keys that are not training settings (nothing to sweep).
CLASSIFIER_NOT_SWEPT = ("enabled", "model_2d", "model_3d", "fine_tune", "patch_folder_2d", "patch_folder_3d")
#: Learners with a validation F1 (sweep.metric val_f1).
F1_LEARNERS = ("stardist", "unet")


def sweep_settings(learner: str) -> tuple[str, ...]:
    """The training settings of ``learner`` a sweep may vary."""
    cls = {"stardist": StarDistTraining, "unet": UNetTraining, "n2v": N2VTraining, "care": CARETraining,
           "classifier": Classification}[learner]
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in CLASSIFIER_NOT_SWEPT)


def _sweep_problems(config: dict, where: str) -> list[str]:
    """Each swept key is a training setting of its model's learner, each value one that
    setting takes (checked by the schema, as if written in the learner's section)."""
    sweep = config.get("sweep")
    models = sweep.get("models") if isinstance(sweep, dict) else None
    if not isinstance(models, dict):
        return []
    validator, problems = None, []
    for model, values in models.items():
        learner = model.rsplit("_", 1)[0]
        if learner not in SWEEP_SECTIONS or not isinstance(values, dict):
            continue  # the schema reported it
        if sweep.get("metric") == "val_f1" and learner not in F1_LEARNERS:
            problems.append(f"{where}: key 'sweep.metric': val_f1 is scored for {' and '.join(F1_LEARNERS)} only, "
                            f"not {model} (use val_loss)")
        section, sub = SWEEP_SECTIONS[learner]
        known = sweep_settings(learner)
        for key, options in values.items():
            head, _, rest = key.partition(".")
            if head not in known or (rest and head != "architecture") or "." in rest:
                problems.append(f"{where}: key 'sweep.models.{model}.{key}': not a training setting of {learner} "
                                f"(one of: {', '.join(known)}{'; architecture.<key>' if learner == 'unet' else ''})")
                continue
            for value in options if isinstance(options, list) else []:
                trial = {rest: value} if rest else value
                trial = {section: {sub: {head: trial}} if sub else {head: trial}}
                validator = validator or _validator(load_schema("config"))
                problems += [f"{where}: key 'sweep.models.{model}.{key}': value {value!r}: {e.message}"
                             for e in validator.iter_errors(trial)]
    return problems


def _n2v_key_in_care(error) -> bool:
    """The schema's 'additional property' error for an N2V-only key in restoration.care,
    which validate_config reports in words instead."""
    return (list(error.absolute_path) == ["restoration", "care"] and error.validator == "additionalProperties"
            and isinstance(error.instance, dict) and bool(set(error.instance) & N2V_ONLY_KEYS))


def read_sheet(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of a TSV sheet as dicts of non-empty stripped strings, and structural problems."""
    path = Path(path)
    if not path.exists():
        return [], [f"{path}: samples sheet not found"]
    with open(path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: Excel's byte-order mark
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    problems = []
    unknown = [c for c in (reader.fieldnames or []) if c not in SHEET_COLUMNS]
    if unknown:
        problems.append(f"{path}: unknown column(s) {', '.join(unknown)} (known: {', '.join(SHEET_COLUMNS)})")
    rows = []
    for row in reader:
        if None in row:
            problems.append(f"{path} row {len(rows) + 1}: more cells than columns (a tab too many?)")
        rows.append({k: v.strip() for k, v in row.items() if k and v is not None and v.strip()})
    if not rows:
        problems.append(f"{path}: no samples")
    return rows, problems


def _spatial(axes: str) -> str:
    return "".join(a for a in "ZYX" if a in axes.upper())


def _row_problems(row: dict) -> list[str]:
    problems = []
    axes = row.get("axes", "").upper()
    if axes:
        if len(set(axes)) != len(axes):
            problems.append(f"axes '{row['axes']}': a letter appears twice")
        elif not {"Y", "X"} <= set(axes):
            problems.append(f"axes '{row['axes']}': Y and X are required")
    if "voxel_size" in row and axes:
        n = len(row["voxel_size"].split(","))
        if n not in (1, len(_spatial(axes))):
            problems.append(f"voxel_size '{row['voxel_size']}': {n} values for the {len(_spatial(axes))} spatial axes {_spatial(axes)} (give one per axis in z,y,x order, or one for all)")
    if int(row.get("channel", "0") or 0) > 0 and axes and "C" not in axes:
        problems.append(f"channel {row['channel']}: the axes '{row['axes']}' have no C")
    if "voxel_size" in row and any(float(v) <= 0 for v in row["voxel_size"].split(",")):
        problems.append(f"voxel_size '{row['voxel_size']}': every size must be above 0 micrometres")
    if "time_interval" in row and float(row["time_interval"]) <= 0:
        problems.append(f"time_interval '{row['time_interval']}': must be above 0 seconds")
    if "scene" in row and not is_vendor_file(row["image"]):
        problems.append(f"scene '{row['scene']}': only CZI, ND2 and LIF images have scenes")
    return problems


class RowCheck:
    """A fast yes/no for sheet rows, compiled from the sheet schema: a sheet of 100,000 rows
    through jsonschema takes most of a dry run, while almost every row is valid. Rows it
    rejects go through jsonschema for the exact messages. Supports exactly the keywords the
    sheet schema uses (tests/test_config.py checks it agrees with jsonschema)."""

    SUPPORTED = {"type", "pattern", "minLength", "not", "description"}

    def __init__(self, schema: dict):
        import re

        self.required = set(schema.get("required", []))
        self.known = set(schema["properties"])
        self.checks = {}
        for name, prop in schema["properties"].items():
            unsupported = set(prop) - self.SUPPORTED
            if unsupported or prop.get("type", "string") != "string" or set(prop.get("not", {})) - {"enum"}:
                raise ValueError(f"RowCheck cannot compile sheet column {name!r} ({sorted(unsupported)})")
            pattern = re.compile(prop["pattern"]) if "pattern" in prop else None
            self.checks[name] = (pattern, prop.get("minLength", 0), set(prop.get("not", {}).get("enum", [])))

    def __call__(self, row: dict) -> bool:
        if not self.required <= row.keys() or not row.keys() <= self.known:
            return False
        for name, value in row.items():
            pattern, min_length, forbidden = self.checks[name]
            if not isinstance(value, str) or len(value) < min_length or value in forbidden:
                return False
            if pattern is not None and not pattern.search(value):
                return False
        return True


def _sheet_error(error, schema: dict) -> str:
    """A schema error about a sheet cell in words: a pattern mismatch names what the column
    takes (its description) rather than printing the regular expression."""
    column = _path_of(error)
    if error.validator == "pattern" and error.absolute_path:
        described = schema["properties"].get(column, {}).get("description", "")
        return f"column '{column}': {error.instance!r} is not valid here ({described})"
    if error.validator == "not" and column == "sample_id":
        return f"column 'sample_id': {error.instance!r} is taken by the workflow's own results folder; rename the sample"
    return f"column '{column}': {error.message}" if error.absolute_path else error.message


#: Config keys naming a folder the user provides (pretrained models, ready patches).
FOLDER_KEYS = ("restoration.model_2d", "restoration.model_3d", "segmentation.model_2d", "segmentation.model_3d",
               "classification.model_2d", "classification.model_3d", "classification.patch_folder_2d",
               "classification.patch_folder_3d", "detection.model_2d")


def _folder_problems(config: dict, where: str) -> list[str]:
    """Folders given in the config exist and hold something: checked with the config, before
    anything runs, rather than one sample at a time after ingest."""
    problems = []
    for key in FOLDER_KEYS:
        section, name = key.split(".")
        value = config.get(section, {}).get(name) if isinstance(config.get(section), dict) else None
        if not isinstance(value, str):
            continue
        folder = Path(value)
        if folder.is_file() and folder.suffix == ".zip" and key.endswith(("_2d", "_3d")) and "patch" not in key:
            continue  # a bioimage.io model package (zip), imported when a job first uses it
        if not folder.is_dir():
            problems.append(f"{where}: key '{key}': folder {value} does not exist")
        elif not any(folder.iterdir()):
            problems.append(f"{where}: key '{key}': folder {value} is empty")
    return problems


def to_sample(row: dict) -> Sample:
    axes = row.get("axes", "").upper() or None
    # no voxel_size: the file's metadata (OME-TIFF, CZI, ND2, LIF) says it at ingest, else 1
    sizes = [float(v) for v in row["voxel_size"].split(",")] if "voxel_size" in row else []
    spatial = _spatial(axes).lower() if axes else "zyx"
    if len(sizes) == 1:
        voxel = {a: sizes[0] for a in spatial}
    else:
        voxel = dict(zip(spatial, sizes))
    if "time_interval" in row:
        voxel["t"] = float(row["time_interval"])
    return Sample(
        sample_id=row["sample_id"], image=row["image"], axes=axes, voxel_size=voxel,
        channel=int(row.get("channel", 0)), labels=row.get("labels"), tracks=row.get("tracks"),
        points=row.get("points"), target=row.get("target"), class_truth=row.get("class_truth"),
        scene=row.get("scene"), types=row.get("types"), boxes=row.get("boxes"),
    )


def load(config: dict, config_name: str = "config") -> tuple[dict, dict[str, Sample], list[str]]:
    """Validate config and samples sheet; return (config, samples by id, warnings).

    Raises ConfigError listing every problem. Missing data files are warnings, not errors:
    the sample's ingest job then fails with the file named, and others go on (--keep-going).
    """
    config, problems = validate_config(config, config_name)
    problems += _folder_problems(config, config_name)
    sheet = config.get("samples", "config/samples.tsv")
    rows, sheet_problems = read_sheet(sheet)
    problems += sheet_problems
    sheet_schema = load_schema("samples")
    validator, quick = _validator(sheet_schema), RowCheck(sheet_schema)
    samples: dict[str, Sample] = {}
    warnings = []
    for number, row in enumerate(rows, start=1):
        label = f"{sheet} row {number}" + (f" (sample '{row['sample_id']}')" if "sample_id" in row else "")
        errors = [] if quick(row) else [_sheet_error(e, sheet_schema) for e in validator.iter_errors(row)]
        errors += [] if errors else _row_problems(row)
        if not errors and row["sample_id"] in samples:
            errors.append(f"sample_id '{row['sample_id']}' is used twice")
        problems += [f"{label}: {e}" for e in errors]
        if errors:
            continue
        sample = to_sample(row)
        samples[sample.sample_id] = sample
        files = expand_image_path(sample.image)
        if not files or not all(p.exists() for p in files):
            warnings.append(f"{label}: image {sample.image} not found; its jobs will fail, the other samples go on")
    for key in ("restoration.train_samples", "restoration.samples", "segmentation.train_samples"):
        section, name = key.split(".")
        chosen = config.get(section, {}).get(name, "all")
        unknown = sorted(set(chosen) - set(samples)) if isinstance(chosen, list) and not sheet_problems else []
        if unknown:
            problems.append(f"{config_name}: key '{key}': no sample {', '.join(map(repr, unknown))} in {sheet}")
    scatter = config.get("segmentation", {}).get("scatter", {})
    if isinstance(scatter, dict) and scatter:
        unknown = sorted(set(scatter) - set(samples))
        if unknown and not sheet_problems:
            problems.append(f"{config_name}: key 'segmentation.scatter': no sample {', '.join(map(repr, unknown))} in {sheet}")
        if config.get("segmentation", {}).get("method") == "unet":
            problems.append(f"{config_name}: key 'segmentation.scatter': only StarDist predictions can be scattered (method is unet)")
    if problems:
        raise ConfigError(problems)
    return config, samples, warnings


# ---------------------------------------------------------------------------------------
# Typed settings: one frozen dataclass per schema section, fields in schema order.


class Section:
    """A read-only section of the validated config (a frozen dataclass)."""

    @classmethod
    def from_dict(cls, data: dict):
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value, kind = data[f.name], hints[f.name]
            if isinstance(kind, type) and issubclass(kind, Section):
                value = kind.from_dict(value)
            values[f.name] = value
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ingest(Section):
    chunks: dict
    pyramid_levels: int | str
    pyramid_method: str
    compression: str


@dataclass(frozen=True)
class Normalize(Section):
    method: str
    low: float
    high: float
    scope: str
    mask_value: float | None
    clip: bool


@dataclass(frozen=True)
class FineTune(Section):
    """How a given model is trained further on the user's annotated samples."""

    enabled: bool
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    time_limit: float | None


@dataclass(frozen=True)
class FineTuneEncoder(FineTune):
    freeze_encoder: bool


@dataclass(frozen=True)
class CARETraining(Section):
    patch_shape: list
    patch_depth: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    patience: int
    validation_fraction: float
    n_patches: int | None
    unet_depth: int
    unet_kern_size: int
    unet_n_first: int
    loss: str
    augment: bool
    time_limit: float | None

    def patch_for(self, ndim: int) -> tuple[int, ...]:
        """The training patch of a 2D or 3D model: (y, x) or (patch_depth, y, x)."""
        return tuple(([self.patch_depth] if ndim == 3 else []) + list(self.patch_shape))


@dataclass(frozen=True)
class N2VTraining(CARETraining):
    n2v_perc_pix: float
    manipulator: str
    neighborhood_radius: int
    batch_norm: bool
    blurpool: bool
    skip_skipone: bool
    struct_mask: list | None


#: Keys of the restoration settings that only Noise2Void has.
N2V_ONLY_KEYS = frozenset(f.name for f in dataclasses.fields(N2VTraining)) - {
    f.name for f in dataclasses.fields(CARETraining)}


@dataclass(frozen=True)
class Restoration(Section):
    method: str
    model_2d: str | None
    model_3d: str | None
    train_samples: str | list
    samples: str | list
    block_shape: dict | None
    tta: bool
    fine_tune: FineTune
    n2v: N2VTraining
    care: CARETraining

    def training(self, method: str | None = None) -> CARETraining:
        """The training settings of ``method`` (default: the configured one)."""
        return getattr(self, method or self.method)


@dataclass(frozen=True)
class StarDistTraining(Section):
    n_rays: int
    grid: list | None
    patch_size: list
    unet_n_depth: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    patience: int
    augment: bool
    time_limit: float | None


@dataclass(frozen=True)
class UNetTraining(Section):
    architecture: dict
    patch_size: list
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    patience: int
    augment: bool
    time_limit: float | None
    types: list


@dataclass(frozen=True)
class Segmentation(Section):
    method: str
    model_2d: str | None
    model_3d: str | None
    train_samples: str | list
    split_dir: str
    validation_fraction: float
    prob_thresh: float | None
    nms_thresh: float | None
    block_size: int
    min_overlap: int
    context: int | None
    rescale: str | bool
    scatter: dict
    fine_tune: FineTuneEncoder
    stardist: StarDistTraining
    stardist_3d: dict
    unet: UNetTraining
    unet_3d: dict

    def stardist_for(self, ndim: int) -> StarDistTraining:
        """StarDist training settings of a 2D or 3D model (3D: stardist_3d overrides)."""
        return self.stardist.replace(**self.stardist_3d) if ndim == 3 else self.stardist

    def unet_for(self, ndim: int) -> UNetTraining:
        """U-Net training settings of a 2D or 3D model (3D: unet_3d overrides, architecture
        keys one by one)."""
        if ndim != 3:
            return self.unet
        overrides = dict(self.unet_3d)
        overrides["architecture"] = {**self.unet.architecture, **overrides.get("architecture", {})}
        return self.unet.replace(**overrides)


@dataclass(frozen=True)
class Classification(Section):
    enabled: bool
    model_2d: str | None
    model_3d: str | None
    fine_tune: FineTuneEncoder
    patch_folder_2d: str | None
    patch_folder_3d: str | None
    patch_size: list
    patch_size_z: int
    time_window: int
    epochs: int
    batch_size: int
    learning_rate: float
    imbalance: str
    augment: bool
    patience: int
    time_limit: float | None
    split_fractions: list


@dataclass(frozen=True)
class Tracking(Section):
    enabled: bool
    max_distance: float
    max_gap: int
    gap_max_distance: float | None
    divisions: bool
    division_max_distance: float | None
    refine: str


@dataclass(frozen=True)
class Detection(Section):
    """Boxes of segmented objects, and the box detector (snakescope.detection)."""

    export_boxes: bool
    enabled: bool
    model_2d: str | None
    class_names: list
    architecture: dict
    patch_size: list
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    patience: int
    augment: bool
    time_limit: float | None
    score_thresh: float | None
    nms_iou: float
    block_size: int


@dataclass(frozen=True)
class Sweep(Section):
    """Grid search: {model: {setting: [values]}} and the metric that picks the best
    (snakescope.training.sweep)."""

    metric: str
    models: dict


@dataclass(frozen=True)
class Publication(Section):
    authors: list
    citation: list
    license: str
    description: str | None
    training_data: str | None


@dataclass(frozen=True)
class Batching(Section):
    max_samples: int
    max_gb: float


@dataclass(frozen=True)
class LocalEnvs(Section):
    imaging: str
    tensorflow: str
    n2v: str


@dataclass(frozen=True)
class Resources(Section):
    threads: int
    mem_mb: int
    runtime: int
    retries: int


@dataclass(frozen=True)
class Config(Section):
    samples: str
    seed: int
    ingest: Ingest
    normalize: Normalize
    restoration: Restoration
    segmentation: Segmentation
    classification: Classification
    tracking: Tracking
    detection: Detection
    sweep: Sweep
    publication: Publication
    batching: Batching
    local_envs: LocalEnvs
    container: str | None
    resources: Resources


@functools.cache
def defaults() -> Config:
    """The schema's defaults as a :class:`Config`."""
    config, problems = validate_config({})
    assert not problems, problems
    return Config.from_dict(config)
