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


def train_stardist_arguments(p):
    p.add_argument("--sources", type=cli.json_arg, required=True, help="[{sample, image, labels, channel}] as JSON")
    p.add_argument("--settings", type=cli.json_arg, required=True, help="the config's segmentation section")
    p.add_argument("--split", required=True, help="split file: reused when it exists")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)


def train_stardist_step(args):
    from . import segment
    from .splits import make_or_load_split

    cfg = args.settings
    pairs = {}
    for src in args.sources:
        pairs.update(segment.load_pairs(segment.TrainingSource(**src)))
    split = make_or_load_split(pairs, args.split, cfg.get("validation_fraction", 0.15), args.seed)
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
