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
