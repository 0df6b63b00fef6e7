"""The steps behind scripts/*.py: each turns parsed arguments into one package call."""

from __future__ import annotations

import json
from pathlib import Path

from snakescope.pipeline import cli
from snakescope.io.atomic import write_json


def ingest_arguments(p):
    p.add_argument("--sample", type=cli.json_arg, required=True, help="the sample's row as JSON")
    p.add_argument("--ingest-settings", type=cli.json_arg, default={}, help="the config's ingest section as JSON")
    p.add_argument("--settings", type=cli.json_arg, default={}, help="the config's normalize section as JSON")
    p.add_argument("--image", required=True, help="the OME-Zarr to write the exact pixel values to")
    p.add_argument("--out", required=True, help="the normalized OME-Zarr")
    p.add_argument("--stats", required=True, help="the normalization statistics (JSON)")


def ingest_step(args):
    """TIFF -> exact OME-Zarr -> normalized OME-Zarr: one job per image, since Snakemake's
    planning time grows with the number of jobs (profiles/slurm/README.md, Scale)."""
    from snakescope.ingest.convert import ingest

    s, cfg = args.sample, args.ingest_settings
    ingest(s["image"], s.get("axes"), args.image, name=s["sample_id"], voxel_size=s.get("voxel_size"),
           chunks=cfg.get("chunks"), pyramid_levels=cfg.get("pyramid_levels", "auto"),
           pyramid_method=cfg.get("pyramid_method", "nearest"),
           compression=cfg.get("compression", "lz4"), threads=args.threads)
    normalize_step(args)


def normalize_step(args):
    """args.image (OME-Zarr) -> args.out normalized, args.stats; settings from args.settings
    (normalize section) and args.ingest_settings (storage)."""
    from snakescope.ingest.normalize import normalize

    cfg, ing = args.settings, args.ingest_settings
    normalize(args.image, args.out, args.stats, method=cfg.get("method", "percentile"),
              low=cfg.get("low", 1.0), high=cfg.get("high", 99.8), scope=cfg.get("scope", "channel"),
              mask_value=cfg.get("mask_value", 0), clip=cfg.get("clip", False),
              compression=ing.get("compression", "lz4"), pyramid_levels=ing.get("pyramid_levels", "auto"),
              pyramid_method=ing.get("pyramid_method", "nearest"), threads=args.threads)


# ---- restoration: the N2V steps run in the n2v environment (TF 2.15, numpy 1.26), so the
# imports stay inside the functions and only snakescope.restore is needed there.


def prepare_target_arguments(p):
    p.add_argument("--sample", type=cli.json_arg, required=True, help="the sample's row as JSON")
    p.add_argument("--image", required=True, help="the sample's ingested image, for the shape check")
    p.add_argument("--settings", type=cli.json_arg, default={}, help="the config's normalize section")
    p.add_argument("--ingest-settings", type=cli.json_arg, default={})
    p.add_argument("--out", required=True)
    p.add_argument("--stats", required=True)


def prepare_target_step(args):
    """Ingest and normalize a sample's clean target like its image; check the shapes match."""
    import tempfile

    from snakescope.io import ngff
    from snakescope.errors import InputError
    from snakescope.ingest.convert import ingest

    s, ing = args.sample, args.ingest_settings
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = s.get("axes") or None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".target-") as tmp:
        raw = Path(tmp) / "target.ome.zarr"

        def run(axes_):
            ingest(s["target"], axes_, raw, name=f"{s['sample_id']} target", voxel_size=s.get("voxel_size"),
                   chunks=ing.get("chunks"), pyramid_levels=ing.get("pyramid_levels", "auto"),
                   pyramid_method=ing.get("pyramid_method", "nearest"),
                   compression=ing.get("compression", "lz4"), threads=args.threads)

        try:
            run(axes)
        except InputError:
            if not axes or "C" not in axes:
                raise
            run(axes.replace("C", ""))  # a one-channel target of a multi-channel image
        image, target = ngff.read_image(args.image), ngff.read_image(raw)
        strip = lambda im: {a: n for a, n in zip(im.axes, im.shape) if a != "c"}  # noqa: E731
        if strip(image) != strip(target):
            raise InputError(s["target"], f"the clean target of sample {s['sample_id']} has shape {strip(target)}, "
                                          f"its image {s['image']} has {strip(image)}: they must match (channels aside)")
        args.image = str(raw)
        normalize_step(args)


def train_restoration_arguments(p):
    p.add_argument("--method", choices=["n2v", "care"], required=True)
    p.add_argument("--ndim", type=int, choices=[2, 3], required=True)
    p.add_argument("--sources", type=cli.json_arg, required=True, help="[{sample, image, channel, target}] as JSON")
    p.add_argument("--settings", type=cli.json_arg, required=True, help="the config's restoration section")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("--curve", required=True, help="where the training curve is copied for the report")


def train_restoration_step(args):
    from snakescope.restoration import restore
    from snakescope.errors import InputError

    if not args.sources:
        raise InputError(args.out, f"no samples to train a {args.ndim}D {args.method.upper()} model on "
                                   "(restoration.train_samples; CARE needs samples with a target)")
    settings = {**args.settings.get(args.method, {}), "seed": args.seed}
    yx, depth = settings.pop("patch_shape", None), settings.pop("patch_depth", 16)
    if yx:
        settings["patch_shape"] = [depth, *yx] if args.ndim == 3 else list(yx)
    elif args.ndim == 3:
        settings["patch_shape"] = [depth, 64, 64]
    images = [restore.as_source(src["image"], src.get("channel"), src["sample"]) for src in args.sources]
    if args.method == "n2v":
        restore.train_n2v(images, args.out, ndim=args.ndim, threads=args.threads, **settings)
    else:
        targets = [src["target"] for src in args.sources]
        restore.train_care(images, targets, args.out, ndim=args.ndim, threads=args.threads, **settings)
    copy_for_report(Path(args.out) / "training.png", args.curve)


def restore_arguments(p):
    p.add_argument("--method", choices=["n2v", "care"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--settings", type=cli.json_arg, default={}, help="the config's restoration section")
    p.add_argument("--ingest-settings", type=cli.json_arg, default={})
    p.add_argument("--out", required=True)


def restore_step(args):
    from snakescope.restoration import restore
    ing = args.ingest_settings
    restore.predict(args.model, args.method, args.image, args.out, channel=args.channel,
                    block_shape=args.settings.get("block_shape"), compression=ing.get("compression", "lz4"),
                    pyramid_levels=ing.get("pyramid_levels", "auto"), threads=args.threads)


def evaluate_restoration_arguments(p):
    p.add_argument("--image", required=True, help="the restoration's input (normalized image)")
    p.add_argument("--restored", required=True)
    p.add_argument("--target", required=True, help="the normalized clean target")
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--sample", required=True)
    p.add_argument("--out", required=True)


def evaluate_restoration_step(args):
    import pandas as pd

    from snakescope.restoration import restore
    from snakescope.io.atomic import atomic_path

    metrics = restore.restoration_metrics(args.image, args.restored, args.target, channel=args.channel)
    with atomic_path(args.out) as tmp:
        pd.DataFrame([{"sample": args.sample, **metrics}]).to_csv(tmp, index=False)


def qc_restoration_arguments(p):
    p.add_argument("--image", required=True)
    p.add_argument("--restored", required=True)
    p.add_argument("--target", help="the normalized clean target, when the sample has one")
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)


def qc_restoration_step(args):
    from snakescope.report.qc import restoration_before_after

    restoration_before_after(args.image, args.restored, args.out, target_path=args.target, channel=args.channel,
                             title=args.title)


def provenance_arguments(p):
    p.add_argument("--sample", type=cli.json_arg, required=True)
    p.add_argument("--config", type=Path, required=True, help="the resolved config (JSON file)")
    p.add_argument("--inputs", nargs="*", default=[])
    p.add_argument("--repo", required=True)
    p.add_argument("--out", required=True)


def provenance_step(args):
    from snakescope.report.provenance import record

    config = json.loads(args.config.read_text())
    write_json(args.out, record(args.sample, config, args.inputs, args.repo))


def workflow_config_arguments(p):
    p.add_argument("--config", type=cli.json_arg, required=True, help="the resolved config as JSON")
    p.add_argument("--out", required=True)


def workflow_config_step(args):
    write_json(args.out, args.config)


def summary_arguments(p):
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True)


def summary_step(args):
    from snakescope.report.summary import summarize

    text = summarize(args.samples, Path(args.results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from snakescope.io.atomic import write_text

    write_text(args.out, text)
    print(text)


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def copy_for_report(source: Path, dest: str | None) -> None:
    """Copy a figure of a model folder to its own report output (atomically): a report file
    nested inside a directory output would be created before the folder is complete."""
    import shutil

    from snakescope.io.atomic import atomic_path

    if dest:
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)


def _training_arguments(p, annotation: str, section: str):
    """Arguments shared by every training step: its samples, settings, split, seed, output."""
    p.add_argument("--sources", type=cli.json_arg, required=True, help=f"[{{sample, image, {annotation}, channel}}] as JSON")
    p.add_argument("--settings", type=cli.json_arg, required=True, help=f"the config's {section} section")
    p.add_argument("--split", required=True, help="split file: reused when it exists")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("--curve", help="where to copy the training curve PNG (for the report)")


def train_unet_arguments(p):
    _training_arguments(p, "labels", "segmentation")


def train_stardist_arguments(p):
    _training_arguments(p, "labels", "segmentation")


def _training_pairs(args):
    from snakescope.segmentation import stardist as segment
    from snakescope.training.splits import make_or_load_split

    pairs = {}
    for src in args.sources:
        pairs.update(segment.load_pairs(segment.TrainingSource(**src)))
    split = make_or_load_split(pairs, args.split, args.settings.get("validation_fraction", 0.15), args.seed)
    return pairs, split


def train_unet_step(args):
    from snakescope.segmentation import unet
    pairs, split = _training_pairs(args)
    ndim = next(iter(pairs.values()))[0].ndim
    cfg = dict(args.settings.get("unet", {}))
    if ndim == 3:
        cfg.update(args.settings.get("unet_3d", {}))
    unet.train_unet(pairs, args.out, split={"train": split["train"], "validation": split["validation"]},
                    architecture=cfg.get("architecture"), patch_shape=cfg.get("patch_size"),
                    batch_size=cfg.get("batch_size", 8), epochs=cfg.get("epochs", 50),
                    steps_per_epoch=cfg.get("steps_per_epoch", 50), learning_rate=cfg.get("learning_rate", 3e-4),
                    patience=cfg.get("patience", 10), augment=cfg.get("augment", True), seed=args.seed)
    copy_for_report(Path(args.out) / "history.png", args.curve)


def train_stardist_step(args):
    from snakescope.segmentation import stardist as segment
    cfg = args.settings
    pairs, split = _training_pairs(args)
    ndim = next(iter(pairs.values()))[0].ndim
    sd = dict(cfg.get("stardist", {}))
    if ndim == 3:
        sd["patch_size"] = [32, 96, 96]
        sd.update(cfg.get("stardist_3d", {}))
    segment.train_stardist(
        pairs, args.out, split=split, n_rays=sd.get("n_rays", 32), grid=sd.get("grid"),
        patch_size=sd.get("patch_size", [256, 256]),
        epochs=sd.get("epochs", 100), steps_per_epoch=sd.get("steps_per_epoch", 100),
        batch_size=sd.get("batch_size", 4), learning_rate=sd.get("learning_rate", 3e-4),
        patience=sd.get("patience", 20), unet_n_depth=sd.get("unet_n_depth", 3),
        augment=sd.get("augment", True), seed=args.seed)
    copy_for_report(Path(args.out) / "history.png", args.curve)


def segment_arguments(p):
    p.add_argument("--part", type=int, help="with --n-parts: segment this share of the blocks (0-based)")
    p.add_argument("--n-parts", type=int, help="the number of parts the sample's segmentation is scattered into")
    p.add_argument("--parts", nargs="*", default=[], help="join these part arrays instead of predicting")
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--settings", type=cli.json_arg, required=True)
    p.add_argument("--out", required=True)


def segment_step(args):
    from snakescope.segmentation import stardist as segment
    cfg = args.settings
    if cfg.get("method") == "unet":
        segment.predict_unet(args.model, args.image, args.out, channel=args.channel,
                             block_size=min(1024, cfg.get("block_size", 2048)))  # bounds U-Net activations
        return
    if args.parts:
        segment.gather_stardist_parts(args.parts, args.image, args.out, channel=args.channel)
        return
    settings = dict(channel=args.channel, prob_thresh=cfg.get("prob_thresh"), nms_thresh=cfg.get("nms_thresh"),
                    block_size=cfg.get("block_size", 2048), min_overlap=cfg.get("min_overlap", 64),
                    context=cfg.get("context"))
    if args.n_parts:
        segment.predict_stardist_part(args.model, args.image, args.out, part=args.part, n_parts=args.n_parts,
                                      **settings)
    else:
        segment.predict_stardist(args.model, args.image, args.out, **settings)


def measure_arguments(p):
    p.add_argument("--labels", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--out", required=True)


def measure_step(args):
    from snakescope.segmentation.measure import measure

    measure(args.labels, args.image, args.out, channel=args.channel)


def qc_overlay_arguments(p):
    p.add_argument("--image", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)


def qc_overlay_step(args):
    from snakescope.report.qc import segmentation_overlay

    segmentation_overlay(args.image, args.labels, args.out, channel=args.channel, title=args.title)


def evaluate_segmentation_arguments(p):
    p.add_argument("--labels", required=True, help="predicted labels.ome.zarr")
    p.add_argument("--truth", required=True, help="ground-truth labels (TIFF or glob)")
    p.add_argument("--sample", required=True)
    p.add_argument("--out", required=True)
    _class_output_arguments(p)


def _class_output_arguments(p):
    """Outputs of the U-Net's pixel-class scores (all three, or none)."""
    p.add_argument("--class-confusion", help="U-Net: pixel-class confusion matrix (CSV of counts)")
    p.add_argument("--class-metrics", help="U-Net: per-class IoU, Dice, precision, recall (CSV)")
    p.add_argument("--class-plot", help="U-Net: the confusion matrix as PNG")


def _class_outputs(args) -> bool:
    given = [args.class_confusion, args.class_metrics, args.class_plot]
    if any(given) and not all(given):
        raise SystemExit("--class-confusion, --class-metrics and --class-plot go together")
    return all(given)


def evaluate_segmentation_step(args):
    from snakescope.evaluation import instances as evaluate
    from snakescope.io.atomic import atomic_path
    from snakescope.io.labels import read_labels, read_labels_image

    pred = read_labels_image(args.labels)
    truth = read_labels(args.truth, pred.shape, f"sample {args.sample} ({args.labels})")
    if _class_outputs(args):  # U-Net: its class map against the classes of the true labels
        from snakescope.segmentation import unet
        from snakescope.io.labels import read_class_map

        classes = read_class_map(args.labels)
        cm = unet.class_confusion(truth, classes.data, time_axis=0 if "t" in classes.axes else None,
                                  where=args.truth, pred_where=args.labels)
        evaluate.write_class_scores({args.sample: cm}, unet.CLASS_NAMES, args.class_confusion, args.class_metrics,
                                    args.class_plot, title=f"U-Net pixel classes: {args.sample}", total_name=None)
    if "t" in pred.axes:
        per_frame = {f"t{t}": evaluate.instance_metrics(truth[t], pred.data[t], where=args.labels)
                     for t in range(pred.shape[0])}
        table = evaluate.summarize(per_frame)
    else:
        table = evaluate.instance_metrics(truth, pred.data[...], where=args.labels)
    table.insert(0, "sample", args.sample)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)


def gather_metrics_arguments(p):
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--kind", choices=["segmentation", "tracking", "classification", "restoration"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--class-inputs", nargs="*", default=[],
                   help="segmentation: per-sample U-Net class_confusion.csv files, added up into the --class-* outputs")
    _class_output_arguments(p)


def gather_metrics_step(args):
    """Per-sample metrics plus the sum over samples (counts added, ratios recomputed)."""
    import pandas as pd

    from snakescope.io.atomic import atomic_path

    if args.kind == "segmentation":
        from snakescope.evaluation import instances as evaluate
        tables = {Path(p).parent.name: pd.read_csv(p) for p in args.inputs}
        total = evaluate.summarize({k: t.drop(columns=["sample"]) for k, t in tables.items()})
        total.insert(0, "sample", "ALL")
        result = pd.concat([*tables.values(), total], ignore_index=True)
        if _class_outputs(args):  # U-Net pixel classes: confusion counts added, then scored
            from snakescope.segmentation.unet import CLASS_NAMES

            matrices = {Path(p).parent.name: evaluate.read_confusion(p, CLASS_NAMES) for p in args.class_inputs}
            evaluate.write_class_scores(matrices, CLASS_NAMES, args.class_confusion, args.class_metrics, args.class_plot,
                                        title=f"U-Net pixel classes: {len(matrices)} samples summed")
    elif args.kind == "restoration":
        tables = [pd.read_csv(p) for p in args.inputs]
        result = pd.concat(tables, ignore_index=True)
        mean = result.drop(columns=["sample", "data_range_rule"]).mean(numeric_only=True)
        mean["n_voxels"] = result["n_voxels"].sum()
        result = pd.concat([result, pd.DataFrame([{"sample": "ALL", "data_range_rule": "mean over samples",
                                                   **mean.to_dict()}])], ignore_index=True)
    elif args.kind == "classification":
        from snakescope.classification.classify import pool_classification_metrics

        # class names as text ("NA" is a class name here, not a missing value)
        tables = {Path(p).parent.name: pd.read_csv(p, dtype={"sample": str, "class_name": str}, keep_default_na=False,
                                                   na_values={c: [""] for c in ("precision", "recall", "f1", "accuracy",
                                                                                "balanced_accuracy", "macro_f1")})
                  for p in args.inputs}
        result = pool_classification_metrics(tables)
    else:
        from snakescope.tracking.ctc import summarize_metrics

        per_sample = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in args.inputs}
        summary = summarize_metrics(per_sample)
        rows = [{"sample": k, **{m: v for m, v in d.items() if not isinstance(v, (dict, list))}} for k, d in per_sample.items()]
        rows.append({"sample": "ALL", **{m: v for m, v in summary["pooled"].items() if not isinstance(v, (dict, list))}})
        result = pd.DataFrame(rows)
    with atomic_path(args.out) as tmp:
        result.to_csv(tmp, index=False)


def track_arguments(p):
    p.add_argument("--labels", required=True)
    p.add_argument("--image", required=True, help="the analysed image (intensity for sub-pixel refinement)")
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--sample", required=True)
    p.add_argument("--settings", type=cli.json_arg, required=True, help="the config's tracking section")
    p.add_argument("--out-dir", required=True, help="CTC result folder")
    p.add_argument("--table", required=True, help="napari tracks table (CSV)")
    p.add_argument("--stats", required=True, help="per-track statistics (CSV)")
    p.add_argument("--plot", required=True)


def track_step(args):
    from snakescope.io import ngff
    from snakescope.io.atomic import atomic_path
    from snakescope.tracking.ctc import write_ctc_result
    from snakescope.errors import InputError
    from snakescope.io.frames import ChannelStack
    from snakescope.report.qc import track_plot
    from snakescope.io.labels import read_labels_image
    from snakescope.tracking.linking import detections_from_labels, link, summarize_tracks, track_statistics

    cfg = args.settings
    labels = read_labels_image(args.labels)
    if "t" not in labels.axes:
        raise InputError(f"sample {args.sample}", f"no time axis (axes {labels.axes}): tracking needs a time-lapse")
    image = ngff.read_image(args.image)
    voxel = [labels.voxel_size[a] for a in labels.axes if a in "zyx"]
    intensity = ChannelStack(image.data, image.axes, args.channel) if cfg.get("refine", "none") != "none" else None
    detections = detections_from_labels(labels.data, intensity, voxel_size=voxel, refine=cfg.get("refine", "none"),
                                        axes=labels.axes.upper(), source=args.labels)
    tracks = link(detections, max_distance=cfg["max_distance"], max_gap=cfg.get("max_gap", 2),
                  gap_max_distance=cfg.get("gap_max_distance"), divisions=cfg.get("divisions", True),
                  division_max_distance=cfg.get("division_max_distance"), voxel_size=voxel, source=args.sample)
    write_ctc_result(labels.data, tracks, args.out_dir, source=args.labels)
    stats = track_statistics(tracks, time_interval=labels.voxel_size.get("t"))
    with atomic_path(args.table) as tmp:
        tracks.table.to_csv(tmp, index=False)
    with atomic_path(args.stats) as tmp:
        stats.to_csv(tmp, index=False)
    track_plot(tracks, args.plot, title=f"{args.sample}: {tracks.n_tracks} tracks, {tracks.n_divisions} divisions",
               summary=summarize_tracks(stats))


def evaluate_tracking_arguments(p):
    p.add_argument("--result", required=True)
    p.add_argument("--truth", required=True, help="CTC ground-truth folder (man_track.txt + masks)")
    p.add_argument("--out", required=True)


def evaluate_tracking_step(args):
    from snakescope.tracking.ctc import evaluate_ctc

    write_json(args.out, evaluate_ctc(args.result, args.truth))


def train_classifier_arguments(p):
    _training_arguments(p, "points", "classification")
    p.add_argument("--ndim", choices=["2d", "3d"], required=True, help="dimensionality of the model's patches")
    p.add_argument("--patch-folder", default="none", help="ready patches, one subfolder per class; none = points only")
    p.add_argument("--confusion", help="where to copy the held-out confusion matrix PNG (for the report)")


def train_classifier_step(args):
    import numpy as np

    from snakescope.classification import classify

    from snakescope.io import ngff
    from snakescope.errors import InputError

    cfg = args.settings
    time_window = int(cfg.get("time_window", 0))
    size = ([cfg.get("patch_size_z", 8)] if args.ndim == "3d" else []) + list(cfg.get("patch_size", [32, 32]))
    patches, labels, ids, sources = [], [], [], []
    for src in args.sources:
        image = ngff.read_image(src["image"])
        channels = [src["channel"]] if "c" in image.axes else None
        p, lab, i, table = classify.patches_from_annotations(image.data, image.axes, src["points"], size,
                                                             time_window, channels=channels)
        patches.append(p)
        labels += lab
        ids += [f"{src['sample']}:{k}" for k in i]
        sources += table["source"].astype(str).tolist()
    if args.patch_folder not in ("", "none"):
        p, lab, i, files = classify.training_patches_from_folder(
            args.patch_folder, int(args.ndim[0]), 2 * time_window + 1, spatial_shape=size if patches else None)
        patches.append(p)
        labels += lab
        ids += i
        sources += files
    if not patches:
        raise InputError("classification", f"no {args.ndim} training data: no sample with points and no patch folder")
    classify.train_classifier(
        np.concatenate(patches), labels, args.out, epochs=cfg.get("epochs", 100), batch_size=cfg.get("batch_size", 32),
        learning_rate=cfg.get("learning_rate", 1e-3), imbalance=cfg.get("imbalance", "weights"),
        augment=cfg.get("augment", True), patience=cfg.get("patience", 10), seed=args.seed,
        split_path=args.split, ids=ids, sources=sources, time_window=time_window,
        fractions=tuple(cfg.get("split_fractions", (0.7, 0.15, 0.15))))
    if args.confusion:
        classify.write_training_confusion(args.out, args.confusion)


def evaluate_classification_arguments(p):
    p.add_argument("--truth", required=True, help="the sample's class_truth entry: napari point CSVs (a file or a glob)")
    p.add_argument("--labels", required=True, help="predicted labels.ome.zarr")
    p.add_argument("--objects", required=True, help="classified objects.parquet")
    p.add_argument("--model", required=True, help="the classifier folder (its class names)")
    p.add_argument("--sample", required=True)
    p.add_argument("--out", required=True, help="metrics CSV")
    p.add_argument("--plot", required=True, help="confusion matrix PNG")


def evaluate_classification_step(args):
    """Truth points -> the objects under them -> per-class metrics and a confusion matrix."""
    import pandas as pd

    from snakescope.classification import classify
    from snakescope.io.atomic import atomic_path
    from snakescope.io.labels import read_labels_image

    class_names = classify.classifier_class_names(args.model)
    labels = read_labels_image(args.labels)
    truth = classify.read_point_annotations(args.truth, labels.axes, class_names=class_names, image_shape=labels.shape)
    matched = classify.match_points_to_objects(truth, labels.data, labels.axes, pd.read_parquet(args.objects))
    table, matrix = classify.object_class_metrics(matched, class_names)
    table.insert(0, "sample", args.sample)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    classify.plot_object_confusion(matrix, class_names, table, args.plot, title=args.sample)


def classify_arguments(p):
    p.add_argument("--objects", required=True, help="measurements.parquet")
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--model", default="none", help="classifier folder; none = no classification")
    p.add_argument("--out", required=True)


def classify_step(args):
    import pandas as pd

    from snakescope.classification import classify

    from snakescope.io import ngff
    from snakescope.io.atomic import atomic_path

    objects = pd.read_parquet(args.objects)
    if args.model not in ("", "none") and len(objects):
        image = ngff.read_image(args.image)
        channels = [args.channel] if "c" in image.axes else None
        objects = classify.classify_objects(args.model, image.data, image.axes, objects, channels=channels)
    with atomic_path(args.out) as tmp:
        objects.to_parquet(tmp, index=False)
