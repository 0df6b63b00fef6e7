"""The steps behind scripts/*.py: each turns parsed arguments into one package call."""

from __future__ import annotations

import json
from pathlib import Path

from . import cli
from .atomic import write_json


def ingest_arguments(p):
    p.add_argument("--sample", type=cli.json_arg, required=True, help="the sample's row as JSON")
    p.add_argument("--settings", type=cli.json_arg, default={}, help="the config's ingest section as JSON")
    p.add_argument("--out", required=True)


def ingest_step(args):
    from .ingest import ingest

    s, cfg = args.sample, args.settings
    ingest(s["image"], s.get("axes"), args.out, name=s["sample_id"], voxel_size=s.get("voxel_size"),
           chunks=cfg.get("chunks"), pyramid_levels=cfg.get("pyramid_levels", "auto"),
           pyramid_method=cfg.get("pyramid_method", "nearest"),
           compression=cfg.get("compression", "lz4"), threads=args.threads)


def normalize_arguments(p):
    p.add_argument("--image", required=True)
    p.add_argument("--settings", type=cli.json_arg, default={})
    p.add_argument("--ingest-settings", type=cli.json_arg, default={})
    p.add_argument("--out", required=True)
    p.add_argument("--stats", required=True)


def normalize_step(args):
    from .normalize import normalize

    cfg, ing = args.settings, args.ingest_settings
    normalize(args.image, args.out, args.stats, method=cfg.get("method", "percentile"),
              low=cfg.get("low", 1.0), high=cfg.get("high", 99.8), scope=cfg.get("scope", "channel"),
              mask_value=cfg.get("mask_value", 0), clip=cfg.get("clip", False),
              compression=ing.get("compression", "lz4"), pyramid_levels=ing.get("pyramid_levels", "auto"),
              pyramid_method=ing.get("pyramid_method", "nearest"), threads=args.threads)


def provenance_arguments(p):
    p.add_argument("--sample", type=cli.json_arg, required=True)
    p.add_argument("--config", type=cli.json_arg, required=True)
    p.add_argument("--inputs", nargs="*", default=[])
    p.add_argument("--repo", required=True)
    p.add_argument("--out", required=True)


def provenance_step(args):
    from .provenance import record

    write_json(args.out, record(args.sample, args.config, args.inputs, args.repo))


def summary_arguments(p):
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True)


def summary_step(args):
    from .summary import summarize

    text = summarize(args.samples, Path(args.results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from .atomic import write_text

    write_text(args.out, text)
    print(text)


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _training_arguments(p, annotation: str, section: str):
    """Arguments shared by every training step: its samples, settings, split, seed, output."""
    p.add_argument("--sources", type=cli.json_arg, required=True, help=f"[{{sample, image, {annotation}, channel}}] as JSON")
    p.add_argument("--settings", type=cli.json_arg, required=True, help=f"the config's {section} section")
    p.add_argument("--split", required=True, help="split file: reused when it exists")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)


def train_unet_arguments(p):
    _training_arguments(p, "labels", "segmentation")


def train_stardist_arguments(p):
    _training_arguments(p, "labels", "segmentation")


def _training_pairs(args):
    from . import segment
    from .splits import make_or_load_split

    pairs = {}
    for src in args.sources:
        pairs.update(segment.load_pairs(segment.TrainingSource(**src)))
    split = make_or_load_split(pairs, args.split, args.settings.get("validation_fraction", 0.15), args.seed)
    return pairs, split


def train_unet_step(args):
    from . import unet

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


def train_stardist_step(args):
    from . import segment

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


def segment_arguments(p):
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--settings", type=cli.json_arg, required=True)
    p.add_argument("--out", required=True)


def segment_step(args):
    from . import segment

    cfg = args.settings
    if cfg.get("method") == "unet":
        segment.predict_unet(args.model, args.image, args.out, channel=args.channel,
                             block_size=cfg.get("block_size", 1024))
        return
    segment.predict_stardist(args.model, args.image, args.out, channel=args.channel,
                             prob_thresh=cfg.get("prob_thresh"), nms_thresh=cfg.get("nms_thresh"),
                             block_size=cfg.get("block_size", 1024), min_overlap=cfg.get("min_overlap", 64),
                             context=cfg.get("context"))


def measure_arguments(p):
    p.add_argument("--labels", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--out", required=True)


def measure_step(args):
    from .measure import measure

    measure(args.labels, args.image, args.out, channel=args.channel)


def qc_overlay_arguments(p):
    p.add_argument("--image", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)


def qc_overlay_step(args):
    from .qc import segmentation_overlay

    segmentation_overlay(args.image, args.labels, args.out, channel=args.channel, title=args.title)


def evaluate_segmentation_arguments(p):
    p.add_argument("--labels", required=True, help="predicted labels.ome.zarr")
    p.add_argument("--truth", required=True, help="ground-truth labels (TIFF or glob)")
    p.add_argument("--sample", required=True)
    p.add_argument("--out", required=True)


def evaluate_segmentation_step(args):
    from . import evaluate
    from .atomic import atomic_path
    from .segment import read_labels, read_labels_image

    pred = read_labels_image(args.labels)
    truth = read_labels(args.truth, pred.shape, f"sample {args.sample} ({args.labels})")
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
    p.add_argument("--kind", choices=["segmentation", "tracking"], required=True)
    p.add_argument("--out", required=True)


def gather_metrics_step(args):
    """Per-sample metrics plus the sum over samples (counts added, ratios recomputed)."""
    import pandas as pd

    from .atomic import atomic_path

    if args.kind == "segmentation":
        from . import evaluate

        tables = {Path(p).parent.name: pd.read_csv(p) for p in args.inputs}
        total = evaluate.summarize({k: t.drop(columns=["sample"]) for k, t in tables.items()})
        total.insert(0, "sample", "ALL")
        result = pd.concat([*tables.values(), total], ignore_index=True)
    else:
        from .ctc import summarize_metrics

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
    from . import ngff
    from .atomic import atomic_path
    from .ctc import write_ctc_result
    from .errors import InputError
    from .frames import ChannelStack
    from .qc import track_plot
    from .segment import read_labels_image
    from .tracking import detections_from_labels, link, summarize_tracks, track_statistics

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
    from .ctc import evaluate_ctc

    write_json(args.out, evaluate_ctc(args.result, args.truth))


def train_classifier_arguments(p):
    _training_arguments(p, "points", "classification")


def train_classifier_step(args):
    import numpy as np

    from . import classify, ngff

    cfg = args.settings
    patches, labels, ids = [], [], []
    for src in args.sources:
        image = ngff.read_image(src["image"])
        spatial = [a for a in image.axes if a in "zyx"]
        size = ([cfg.get("patch_size_z", 8)] if "z" in spatial else []) + list(cfg.get("patch_size", [32, 32]))
        channels = [src["channel"]] if "c" in image.axes else None
        p, lab, i, _ = classify.patches_from_annotations(image.data, image.axes, src["points"], size,
                                                         cfg.get("time_window", 0), channels=channels)
        patches.append(p)
        labels += lab
        ids += [f"{src['sample']}:{k}" for k in i]
    classify.train_classifier(
        np.concatenate(patches), labels, args.out, epochs=cfg.get("epochs", 100), batch_size=cfg.get("batch_size", 32),
        learning_rate=cfg.get("learning_rate", 1e-3), imbalance=cfg.get("imbalance", "weights"),
        augment=cfg.get("augment", True), patience=cfg.get("patience", 10), seed=args.seed,
        split_path=args.split, ids=ids, fractions=tuple(cfg.get("split_fractions", (0.7, 0.15, 0.15))))


def classify_arguments(p):
    p.add_argument("--objects", required=True, help="measurements.parquet")
    p.add_argument("--image", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--model", default="none", help="classifier folder; none = no classification")
    p.add_argument("--out", required=True)


def classify_step(args):
    import pandas as pd

    from . import classify, ngff
    from .atomic import atomic_path

    objects = pd.read_parquet(args.objects)
    if args.model not in ("", "none") and len(objects):
        image = ngff.read_image(args.image)
        channels = [args.channel] if "c" in image.axes else None
        objects = classify.classify_objects(args.model, image.data, image.axes, objects, channels=channels)
    with atomic_path(args.out) as tmp:
        objects.to_parquet(tmp, index=False)
